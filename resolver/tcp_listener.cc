#include <fcntl.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <system_error>

#include "dnsward/log.hpp"
#include "dnsward/transport.hpp"

namespace dnsward {

namespace {
// Replies queued for a client that does not read. Beyond this the client is not keeping
// up with its own pipeline and the connection is closed (RFC 7766 6.2.3 lets us).
constexpr std::size_t kMaxQueuedOut = 256 * 1024;
}  // namespace

TcpListener::TcpListener(EventLoop& loop, Pipeline& pipeline, const Endpoint& ep,
                         const ServeConfig& cfg)
    : loop_(loop), pipeline_(pipeline), cfg_(cfg) {
  fd_ = socket(ep.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd_ < 0) throw std::system_error(errno, std::generic_category(), "tcp socket " + ep.text);
  const int one = 1;
  setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (ep.family() == AF_INET6) setsockopt(fd_, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  if (bind(fd_, reinterpret_cast<const sockaddr*>(&ep.addr), ep.len) < 0 || listen(fd_, 128) < 0) {
    const int e = errno;
    close(fd_);
    throw std::system_error(e, std::generic_category(), "bind tcp " + ep.text);
  }
  loop_.watch(fd_, EPOLLIN, [this](uint32_t) { on_accept(); });
}

TcpListener::~TcpListener() {
  while (!conns_.empty()) close_conn(conns_.begin()->first, nullptr);
  loop_.unwatch(fd_);
  close(fd_);
}

void TcpListener::on_accept() {
  for (int i = 0; i < 64; ++i) {
    sockaddr_storage peer{};
    socklen_t plen = sizeof peer;
    const int fd = accept4(fd_, reinterpret_cast<sockaddr*>(&peer), &plen,
                           SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED)
        log::warn("event=tcp-accept-error error={}", log::quote(std::strerror(errno)));
      return;
    }
    if (conns_.size() >= cfg_.tcp_max_connections) {
      close(fd);  // at the cap: refuse at once rather than let it wait unserved
      log::debug("event=tcp-refused reason=max-connections");
      continue;
    }
    const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    auto c = std::make_unique<Conn>();
    c->fd = fd;
    c->id = next_id_++;
    c->client.transport = ClientAddr::Transport::Tcp;
    c->client.tcp_conn = c->id;
    c->client.peer = peer;
    c->client.peer_len = plen;
    const uint64_t id = c->id;
    loop_.watch(fd, EPOLLIN, [this, id](uint32_t ev) { on_event(id, ev); });
    Conn& ref = *c;
    conns_.emplace(id, std::move(c));
    touch(ref);
  }
}

void TcpListener::touch(Conn& c) {
  // The idle timer restarts only on a complete query or reply, so a slow-loris that drips
  // a byte at a time is closed like an idle client.
  if (c.idle) loop_.cancel(c.idle);
  const uint64_t id = c.id;
  c.idle = loop_.after(cfg_.tcp_idle_timeout_ms, [this, id] { on_idle(id); });
}

void TcpListener::on_idle(uint64_t id) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  Conn& c = *it->second;
  c.idle = 0;
  if (c.forwarded > 0 && c.out.size() == c.out_off) {
    touch(c);  // waiting on the upstream, not on the client
    return;
  }
  close_conn(id, c.out.size() > c.out_off ? "client-not-reading" : "idle");
}

void TcpListener::on_event(uint64_t id, uint32_t events) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  Conn& c = *it->second;
  if ((events & (EPOLLHUP | EPOLLERR)) && !c.reading) {
    close_conn(id, "hangup");  // level-triggered HUP would otherwise repeat for ever
    return;
  }
  if ((events & EPOLLOUT) && (!write_some(c) || !finish_if_done(c))) return;
  if ((events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && c.reading && !read_some(c)) return;
  update_events(c);
}

bool TcpListener::read_some(Conn& c) {
  uint8_t buf[16384];
  const ssize_t n = recv(c.fd, buf, sizeof buf, 0);
  if (n == 0) {
    // The client half-closed: answer what it already asked, then close.
    c.eof = true;
    c.reading = false;
  } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
    close_conn(c.id, "read-error");
    return false;
  } else if (n > 0) {
    c.in.insert(c.in.end(), buf, buf + n);
  }
  return process_input(c);
}

bool TcpListener::process_input(Conn& c) {
  const uint64_t id = c.id;
  std::size_t off = 0;
  // RFC 7766 8: every message carries a two-byte length; several may arrive in one segment
  // and one may span several segments.
  while (c.in.size() - off >= 2 && c.forwarded < cfg_.tcp_max_pipelined) {
    const std::size_t len = std::size_t(c.in[off]) << 8 | c.in[off + 1];
    if (c.in.size() - off - 2 < len) break;
    const Verdict v = pipeline_.on_query(c.in.data() + off + 2, len, c.client, *this);
    if (!conns_.count(id)) return false;  // closed while delivering
    off += 2 + len;
    if (v == Verdict::Forwarded) ++c.forwarded;
    touch(c);
  }
  c.in.erase(c.in.begin(), c.in.begin() + std::ptrdiff_t(off));
  return finish_if_done(c);
}

bool TcpListener::finish_if_done(Conn& c) {
  if (c.eof && c.forwarded == 0 && c.out_off == c.out.size()) {
    close_conn(c.id, nullptr);
    return false;
  }
  return true;
}

bool TcpListener::write_some(Conn& c) {
  while (c.out_off < c.out.size()) {
    const ssize_t n = send(c.fd, c.out.data() + c.out_off, c.out.size() - c.out_off,
                           MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return true;
      close_conn(c.id, "write-error");
      return false;
    }
    c.out_off += std::size_t(n);
  }
  c.out.clear();
  c.out_off = 0;
  return true;
}

void TcpListener::update_events(Conn& c) {
  // Back-pressure: with tcp-max-pipelined queries upstream, further messages wait in the
  // kernel's buffer until answers come back.
  const bool want_read = !c.eof && c.forwarded < cfg_.tcp_max_pipelined;
  const uint32_t ev = (want_read ? EPOLLIN : 0u) | (c.out.size() > c.out_off ? EPOLLOUT : 0u);
  if (ev != c.events) {
    loop_.modify(c.fd, ev);
    c.events = ev;
  }
  c.reading = want_read;
}

void TcpListener::deliver(const ClientAddr& to, const uint8_t* data, std::size_t len,
                          bool was_forwarded) {
  auto it = conns_.find(to.tcp_conn);
  if (it == conns_.end()) return;  // the client went away meanwhile
  Conn& c = *it->second;
  if (was_forwarded && c.forwarded > 0) --c.forwarded;
  if (len > 0) {
    if (c.out.size() - c.out_off + len + 2 > kMaxQueuedOut) {
      close_conn(c.id, "client-not-reading");
      return;
    }
    c.out.push_back(uint8_t(len >> 8));
    c.out.push_back(uint8_t(len));
    c.out.insert(c.out.end(), data, data + len);
    if (!write_some(c)) return;
  }
  if (!was_forwarded) return;  // inside process_input, which updates the events itself
  // Messages read before a pause may wait in our buffer: take them up again.
  if (!c.in.empty() && c.forwarded < cfg_.tcp_max_pipelined && !process_input(c)) return;
  if (!finish_if_done(c)) return;
  update_events(c);
}

void TcpListener::close_conn(uint64_t id, const char* why) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  Conn& c = *it->second;
  if (why) log::debug("event=tcp-close client={} reason={}", c.client.peer_text(), why);
  if (c.idle) loop_.cancel(c.idle);
  loop_.unwatch(c.fd);
  close(c.fd);
  conns_.erase(it);
}

}  // namespace dnsward
