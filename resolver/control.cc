// The control socket's server side: a Unix stream socket on the event loop, the peer
// checked with SO_PEERCRED before anything it sends is read, one JSON request per line.
#include "dnsward/control.hpp"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <stdexcept>
#include <vector>

#include "dnsward/json.hpp"

namespace dnsward {
namespace {

constexpr std::size_t kMaxConns = 64;
constexpr std::size_t kReadChunk = 64 * 1024;

std::string errno_text(int e) { return std::strerror(e); }

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw std::runtime_error("--control " + path + ": " + what);
}

std::string error_reply(const std::string& why) {
  std::string r = "{\"ok\":false,\"error\":";
  json::append_quoted(r, why);
  return r + "}";
}

// The group's gid, from the group database (getgrnam_r, its buffer grown on ERANGE).
bool lookup_group(const std::string& name, gid_t& gid) {
  std::vector<char> buf(1024);
  for (;;) {
    group g{}, *res = nullptr;
    const int e = getgrnam_r(name.c_str(), &g, buf.data(), buf.size(), &res);
    if (e == ERANGE && buf.size() < (1u << 20)) {
      buf.resize(buf.size() * 2);
      continue;
    }
    if (e != 0 || res == nullptr) return false;
    gid = g.gr_gid;
    return true;
  }
}

// Whether uid's groups in the database (its primary group and the supplementary ones,
// getgrouplist) include gid.
bool user_in_group(uid_t uid, gid_t gid) {
  std::vector<char> buf(1024);
  passwd pw{}, *res = nullptr;
  for (;;) {
    const int e = getpwuid_r(uid, &pw, buf.data(), buf.size(), &res);
    if (e == ERANGE && buf.size() < (1u << 20)) {
      buf.resize(buf.size() * 2);
      continue;
    }
    if (e != 0 || res == nullptr) return false;
    break;
  }
  int n = 32;
  std::vector<gid_t> groups(static_cast<std::size_t>(n));
  for (int tries = 0; tries < 8; ++tries) {
    int got = n;
    if (getgrouplist(pw.pw_name, pw.pw_gid, groups.data(), &got) >= 0) {
      for (int i = 0; i < got; ++i)
        if (groups[std::size_t(i)] == gid) return true;
      return false;
    }
    n = got > n ? got : n * 2;  // -1: got holds the number needed
    groups.resize(std::size_t(n));
  }
  return false;
}

}  // namespace

struct ControlServer::Conn {
  int fd = -1;
  std::string in;    ///< bytes read, not yet a complete line
  std::string out;   ///< reply bytes the socket has not taken yet
  bool eof = false;  ///< the peer is done sending
  bool closing = false;  ///< close once out is written
};

ControlServer::ControlServer(EventLoop& loop, const std::string& path, const std::string& group,
                             ControlHandler& handler)
    : loop_(loop), path_(path), handler_(handler) {
  if (!group.empty()) {
    if (!lookup_group(group, gid_)) throw std::runtime_error("--control-group " + group + ": no such group");
    has_group_ = true;
  }
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof sa.sun_path) fail(path, "a socket path is 1 to 107 bytes");
  std::memcpy(sa.sun_path, path.data(), path.size());

  // The parent directory (/run/dnsward) is made only when it is missing, never changed.
  const auto slash = path.rfind('/');
  if (slash != std::string::npos && slash > 0) {
    const std::string dir = path.substr(0, slash);
    struct stat ds {};
    if (stat(dir.c_str(), &ds) != 0) {
      if (errno != ENOENT || (mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST))
        fail(path, "cannot create its directory " + dir + ": " + errno_text(errno));
    } else if (!S_ISDIR(ds.st_mode)) {
      fail(path, dir + " is not a directory");
    }
  }

  // A socket left by a dnsward that died is replaced; one that answers belongs to a running
  // dnsward and is not. Any other kind of file is someone else's: never removed.
  struct stat st {};
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) fail(path, "exists and is not a socket: refusing to replace it");
    const int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (probe < 0) fail(path, "socket: " + errno_text(errno));
    const int rc = connect(probe, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
    const int e = errno;
    close(probe);
    if (rc == 0 || e == EAGAIN) fail(path, "a running process is listening on it");
    if (e != ECONNREFUSED) fail(path, "cannot tell whether it is in use: " + errno_text(e));
    if (unlink(path.c_str()) != 0 && errno != ENOENT) fail(path, "cannot remove the stale socket: " + errno_text(errno));
  } else if (errno != ENOENT) {
    fail(path, errno_text(errno));
  }

  fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd_ < 0) fail(path, "socket: " + errno_text(errno));
  // bind() creates the file with 0777 & ~umask: a umask of 0117 makes it 0660 from the
  // start, so it is never, even for a moment, open to more than owner and group.
  const mode_t old_mask = umask(0117);
  const int brc = bind(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
  const int berr = errno;
  umask(old_mask);
  auto give_up = [this](const std::string& why) {
    close(fd_);
    fd_ = -1;
    fail(path_, why);
  };
  if (brc != 0) give_up("bind: " + errno_text(berr));
  if (chown(path.c_str(), 0, gid_) != 0) {
    const int e = errno;
    unlink(path.c_str());
    give_up("chown root:" + std::to_string(gid_) + ": " + errno_text(e));
  }
  if (chmod(path.c_str(), 0660) != 0 || listen(fd_, 64) != 0) {
    const int e = errno;
    unlink(path.c_str());
    give_up(errno_text(e));
  }
  struct stat mine {};
  if (stat(path.c_str(), &mine) == 0) {
    ino_ = mine.st_ino;
    dev_ = mine.st_dev;
  }
  loop_.watch(fd_, EPOLLIN, [this](uint32_t) {
    try {
      on_accept();
    } catch (...) {  // nothing may leave a loop callback; the next event tries again
    }
  });
}

ControlServer::~ControlServer() {
  while (!conns_.empty()) close_conn(conns_.begin()->first);
  if (fd_ >= 0) {
    loop_.unwatch(fd_);
    close(fd_);
    // Unlink the path only while it is still our socket (a successor may have replaced it).
    struct stat st {};
    if (stat(path_.c_str(), &st) == 0 && st.st_ino == ino_ && st.st_dev == dev_) unlink(path_.c_str());
  }
}

bool ControlServer::peer_allowed(int fd, std::string& why) const {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    why = "cannot read the peer's credentials";
    return false;
  }
  if (cred.uid == 0) return true;
  if (has_group_ && (cred.gid == gid_ || user_in_group(cred.uid, gid_))) return true;
  why = "uid " + std::to_string(cred.uid) + " may not use the control socket: it needs root" +
        (has_group_ ? " or group " + std::to_string(gid_) : std::string(" (no --control-group is set)"));
  return false;
}

void ControlServer::on_accept() {
  // Bounded per pass, so a flood of connections cannot keep the loop here.
  for (int n = 0; n < 64; ++n) {
    const int c = accept4(fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (c < 0) return;  // EAGAIN, or an aborted connection: nothing to do
    if (conns_.size() >= kMaxConns) {
      ++dropped_conns_;
      close(c);
      continue;
    }
    std::string why;
    if (!peer_allowed(c, why)) {
      ++refused_peers_;
      const std::string r = error_reply(why) + "\n";
      (void)!send(c, r.data(), r.size(), MSG_NOSIGNAL | MSG_DONTWAIT);  // best effort
      close(c);
      continue;
    }
    try {
      auto conn = std::make_unique<Conn>();
      conn->fd = c;
      conns_.emplace(c, std::move(conn));
      loop_.watch(c, EPOLLIN, [this, c](uint32_t ev) { on_event(c, ev); });
    } catch (const std::exception&) {
      conns_.erase(c);
      close(c);
    }
  }
}

void ControlServer::on_event(int fd, uint32_t events) {
  try {
    auto it = conns_.find(fd);
    if (it == conns_.end()) return;
    Conn& c = *it->second;
    // A reply waiting: write it (on EPOLLOUT, or on HUP/ERR so that the failed send closes
    // the connection instead of the event firing forever).
    if (!c.out.empty() && (events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) && !flush(c)) return;
    if (!c.out.empty()) return;  // no room yet; nothing is read while a reply waits
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
      on_readable(fd);
    } else {
      serve_lines(fd);  // the reply went out: serve the lines already read
    }
  } catch (...) {
    close_conn(fd);
  }
}

void ControlServer::on_readable(int fd) {
  auto it = conns_.find(fd);
  if (it == conns_.end()) return;
  Conn& c = *it->second;
  char buf[kReadChunk];
  const ssize_t n = recv(fd, buf, sizeof buf, 0);
  if (n < 0) {
    if (errno == EAGAIN || errno == EINTR) return;
    close_conn(fd);
    return;
  }
  if (n == 0) {
    c.eof = true;
  } else {
    c.in.append(buf, std::size_t(n));
  }
  serve_lines(fd);
}

void ControlServer::serve_lines(int fd) {
  auto it = conns_.find(fd);
  if (it == conns_.end()) return;
  Conn& c = *it->second;
  // One request at a time: the next line is read only once the reply to this one is fully
  // written, so a client that sends many requests and reads nothing holds at most one
  // reply here, and its requests wait in its own socket buffer.
  while (c.out.empty() && !c.closing) {
    const auto nl = c.in.find('\n');
    std::string line;
    if (nl != std::string::npos) {
      if (nl > kMaxCtlLine) {
        c.out = error_reply("request longer than 2 MiB") + "\n";
        c.closing = true;
        break;
      }
      line = c.in.substr(0, nl);
      c.in.erase(0, nl + 1);
    } else if (c.in.size() > kMaxCtlLine) {
      // No newline within the bound: the rest of the line is not read, the connection ends.
      c.out = error_reply("request longer than 2 MiB") + "\n";
      c.closing = true;
      break;
    } else if (c.eof) {
      if (c.in.empty()) {
        c.closing = true;
        break;
      }
      line = std::move(c.in);  // a last line without its newline is still a request
      c.in.clear();
    } else {
      break;  // wait for the rest of the line
    }
    CtlRequest req;
    std::string err;
    if (!parse_ctl_request(line, req, err)) {
      c.out = error_reply(err) + "\n";
    } else {
      ++requests_;
      try {
        c.out = handler_.handle(req) + "\n";
      } catch (const std::exception& e) {
        c.out = error_reply(std::string("internal error: ") + e.what()) + "\n";
      } catch (...) {
        c.out = error_reply("internal error") + "\n";
      }
    }
    if (!flush(c)) return;  // closed
  }
  if (c.out.empty() && c.closing) {
    close_conn(fd);
    return;
  }
  // Writing: wait for EPOLLOUT only; reading: wait for EPOLLIN (unless the peer is done).
  if (!c.out.empty()) {
    loop_.modify(fd, EPOLLOUT);
  } else if (c.eof) {
    close_conn(fd);
  } else {
    loop_.modify(fd, EPOLLIN);
  }
}

bool ControlServer::flush(Conn& c) {
  const int fd = c.fd;
  while (!c.out.empty()) {
    const ssize_t n = send(fd, c.out.data(), c.out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        loop_.modify(fd, EPOLLOUT);
        return true;
      }
      close_conn(fd);  // EPIPE, ECONNRESET: the peer is gone
      return false;
    }
    c.out.erase(0, std::size_t(n));
  }
  if (c.closing) {
    close_conn(fd);
    return false;
  }
  return true;
}

void ControlServer::close_conn(int fd) {
  auto it = conns_.find(fd);
  if (it == conns_.end()) return;
  loop_.unwatch(fd);
  close(fd);
  conns_.erase(it);
}

}  // namespace dnsward
