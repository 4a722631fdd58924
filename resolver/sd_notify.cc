#include "dnsward/sd_notify.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>

namespace dnsward {

bool notify_socket_address(std::string_view value, sockaddr_un& addr, socklen_t& len) {
  std::memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  // sd_notify(3): "If the first character of $NOTIFY_SOCKET is "/" or "@", the string is
  // understood as an AF_UNIX or Linux abstract namespace socket (respectively)". An abstract
  // name has no terminating NUL: its length is the address length (unix(7)).
  if (value.size() < 2 || (value[0] != '/' && value[0] != '@')) return false;
  const bool abstract = value[0] == '@';
  if (value.size() + (abstract ? 0 : 1) > sizeof addr.sun_path) return false;
  std::memcpy(addr.sun_path, value.data(), value.size());
  if (abstract) addr.sun_path[0] = '\0';
  len = socklen_t(offsetof(sockaddr_un, sun_path) + value.size() + (abstract ? 0 : 1));
  return true;
}

int sd_notify(std::string_view state) {
  const char* env = std::getenv("NOTIFY_SOCKET");
  if (!env || !*env) return 0;
  sockaddr_un addr;
  socklen_t len = 0;
  if (!notify_socket_address(env, addr, len)) return -EINVAL;
  // One socket per message, as libsystemd does: nothing is held open between calls, and the
  // send happens with the credentials of the moment (after the privilege drop, the socket
  // must be writable by dnsward's user, as systemd's /run/systemd/notify is).
  const int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  const ssize_t n = sendto(fd, state.data(), state.size(), MSG_NOSIGNAL,
                           reinterpret_cast<const sockaddr*>(&addr), len);
  const int err = errno;
  close(fd);
  if (n < 0) return -err;
  return n == ssize_t(state.size()) ? 1 : -EMSGSIZE;
}

}  // namespace dnsward
