#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <system_error>

#include "dnsward/log.hpp"
#include "dnsward/transport.hpp"

namespace dnsward {

namespace {
constexpr int kBatch = 64;  // datagrams per wake-up before other fds get a turn
}

UdpListener::UdpListener(EventLoop& loop, Pipeline& pipeline, const Endpoint& ep)
    : loop_(loop), pipeline_(pipeline), buf_(65536) {
  fd_ = socket(ep.family(), SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd_ < 0) throw std::system_error(errno, std::generic_category(), "udp socket " + ep.text);
  const int one = 1;
  setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (ep.family() == AF_INET6) setsockopt(fd_, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  wildcard_ = ep.is_wildcard();
  if (wildcard_) {
    if (ep.family() == AF_INET) setsockopt(fd_, IPPROTO_IP, IP_PKTINFO, &one, sizeof one);
    else setsockopt(fd_, IPPROTO_IPV6, IPV6_RECVPKTINFO, &one, sizeof one);
  }
  if (bind(fd_, reinterpret_cast<const sockaddr*>(&ep.addr), ep.len) < 0) {
    const int e = errno;
    close(fd_);
    throw std::system_error(e, std::generic_category(), "bind udp " + ep.text);
  }
  loop_.watch(fd_, EPOLLIN, [this](uint32_t) { on_readable(); });
}

UdpListener::~UdpListener() {
  loop_.unwatch(fd_);
  close(fd_);
}

uint16_t UdpListener::bound_port() const {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  getsockname(fd_, reinterpret_cast<sockaddr*>(&ss), &len);
  return ss.ss_family == AF_INET ? ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port)
                                 : ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
}

void UdpListener::on_readable() {
  for (int i = 0; i < kBatch; ++i) {
    ClientAddr from;
    from.transport = ClientAddr::Transport::Udp;
    from.udp_fd = fd_;
    iovec iov{buf_.data(), buf_.size()};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(in6_pktinfo))];
    msghdr msg{};
    msg.msg_name = &from.peer;
    msg.msg_namelen = sizeof from.peer;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    const ssize_t n = recvmsg(fd_, &msg, 0);
    if (n < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
        log::warn("event=udp-recv-error error={}", log::quote(std::strerror(errno)));
      return;
    }
    from.peer_len = msg.msg_namelen;
    if (msg.msg_flags & MSG_TRUNC) continue;  // larger than any DNS message: not DNS
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
        std::memcpy(&from.local4, CMSG_DATA(c), sizeof from.local4);
        from.has_local = true;
      } else if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO) {
        std::memcpy(&from.local6, CMSG_DATA(c), sizeof from.local6);
        from.has_local = true;
      }
    }
    pipeline_.on_query(buf_.data(), std::size_t(n), from, *this);
  }
}

void UdpListener::deliver(const ClientAddr& to, const uint8_t* data, std::size_t len, bool) {
  if (len == 0) return;
  iovec iov{const_cast<uint8_t*>(data), len};
  msghdr msg{};
  msg.msg_name = const_cast<sockaddr_storage*>(&to.peer);
  msg.msg_namelen = to.peer_len;
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(in6_pktinfo))] = {};
  if (wildcard_ && to.has_local) {
    // Answer from the address the query was sent to, or the client drops the reply.
    msg.msg_control = control;
    cmsghdr* c = reinterpret_cast<cmsghdr*>(control);
    if (to.peer.ss_family == AF_INET) {
      in_pktinfo pi{};
      pi.ipi_spec_dst = to.local4.ipi_addr;
      c->cmsg_level = IPPROTO_IP;
      c->cmsg_type = IP_PKTINFO;
      c->cmsg_len = CMSG_LEN(sizeof pi);
      std::memcpy(CMSG_DATA(c), &pi, sizeof pi);
      msg.msg_controllen = CMSG_SPACE(sizeof pi);
    } else {
      in6_pktinfo pi = to.local6;
      c->cmsg_level = IPPROTO_IPV6;
      c->cmsg_type = IPV6_PKTINFO;
      c->cmsg_len = CMSG_LEN(sizeof pi);
      std::memcpy(CMSG_DATA(c), &pi, sizeof pi);
      msg.msg_controllen = CMSG_SPACE(sizeof pi);
    }
  }
  if (sendmsg(to.udp_fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
    log::debug("event=udp-send-error client={} error={}", to.peer_text(), log::quote(std::strerror(errno)));
}

}  // namespace dnsward
