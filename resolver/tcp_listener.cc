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
    bool marked = false;
    std::string tenant;
    if (cfg_.host) {
      // The mark prerouting set on packets from sandbox interfaces, kept by the accepted
      // socket (net.ipv4.tcp_fwmark_accept): the pipeline trusts the source only with it.
      uint32_t mark = 0;
      socklen_t ml = sizeof mark;
      marked = getsockopt(fd, SOL_SOCKET, SO_MARK, &mark, &ml) == 0 && (mark >> cfg_.host_mark_bit) & 1u;
      ClientAddr who;
      who.peer = peer;
      who.peer_len = plen;
      if (tenant_of_) tenant = tenant_of_(who.peer_addr());
      // One sandbox's connections: at its cap its own longest-idle one gives way, or the
      // new one is refused; never another sandbox's.
      if (per_tenant_[tenant] >= cfg_.sandbox_max_tcp && !evict_one(peer, plen, &tenant)) {
        close(fd);
        log::debug("event=tcp-refused reason=sandbox-max-tcp client={}", who.peer_text());
        continue;
      }
    }
    if (conns_.size() >= cfg_.tcp_max_connections &&
        !evict_one(peer, plen, cfg_.host ? &tenant : nullptr) && !(cfg_.host && evict_from_largest(peer, plen, tenant))) {
      close(fd);  // every connection has a query in progress: refuse at once
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
    c->client.marked = marked;
    c->tenant = tenant;
    if (cfg_.host) ++per_tenant_[tenant];
    const uint64_t id = c->id;
    loop_.watch(fd, EPOLLIN, [this, id](uint32_t ev) { on_event(id, ev); });
    Conn& ref = *c;
    ref.lru_pos = lru_.insert(lru_.end(), id);
    conns_.emplace(id, std::move(c));
    touch(ref);
  }
}

bool TcpListener::evict_one(const sockaddr_storage& newcomer, socklen_t len, const std::string* tenant) {
  // RFC 7766 6.2.3: a server may close idle connections, and should when it is under
  // resource pressure. Closing the longest-idle one that owes nothing means idle or slow
  // (byte-dripping) clients can never hold every slot and deny TCP service. lru_ is in
  // order of last activity, so the first that qualifies is the victim; the walk passes
  // only connections with a query in progress and is bounded by tcp-max-connections.
  for (const uint64_t id : lru_) {
    Conn& v = *conns_.at(id);
    if (v.forwarded > 0 || v.out_off < v.out.size() || v.in_input) continue;
    if (tenant && v.tenant != *tenant) continue;  // never another sandbox's slot
    ClientAddr who;
    who.peer = newcomer;
    who.peer_len = len;
    log::debug("event=tcp-evict client={} idle_ms={} for={} reason=max-connections",
               v.client.peer_text(), loop_.now_ms() - v.last_active_ms, who.peer_text());
    close_conn(id, nullptr);
    return true;
  }
  return false;
}

bool TcpListener::evict_from_largest(const sockaddr_storage& newcomer, socklen_t len, const std::string& tenant) {
  // At the global cap, with no idle connection of its own: a sandbox holding more connections
  // than the newcomer's would after it is admitted gives up its longest-idle one. Without
  // this, a few sandboxes at their own cap would keep every other out of TCP; with it, none
  // loses a connection to one that holds as many as it does.
  const std::string* largest = nullptr;
  uint32_t most = 0;
  for (const auto& [t, n] : per_tenant_)
    if (n > most) {
      most = n;
      largest = &t;
    }
  const auto mine = per_tenant_.find(tenant);
  const uint32_t have = mine == per_tenant_.end() ? 0 : mine->second;
  if (!largest || *largest == tenant || most <= have + 1) return false;
  const std::string victim = *largest;  // a copy: eviction may erase its map entry
  return evict_one(newcomer, len, &victim);
}

void TcpListener::touch(Conn& c) {
  // Activity is a complete query or a reply: the connection becomes the most recently
  // active, and its idle timer starts again. Bytes dripped without completing a message
  // are not activity, so a slow-loris is closed (or evicted) like an idle client.
  c.last_active_ms = loop_.now_ms();
  lru_.splice(lru_.end(), lru_, c.lru_pos);
  restart_idle(c);
}

void TcpListener::restart_idle(Conn& c) {
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
    restart_idle(c);  // waiting on the upstream, not on the client
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
  // Never re-entered for one connection: a reply delivered while the loop below runs (a
  // callback that came back at once) only records it, and this loop goes on.
  if (c.in_input) return true;
  c.in_input = true;
  const uint64_t id = c.id;
  std::vector<uint8_t> msg;
  // RFC 7766 8: every message carries a two-byte length; several may arrive in one segment
  // and one may span several segments.
  while (c.in.size() - c.in_off >= 2 && c.forwarded < cfg_.tcp_max_pipelined) {
    const std::size_t len = std::size_t(c.in[c.in_off]) << 8 | c.in[c.in_off + 1];
    if (c.in.size() - c.in_off - 2 < len) break;
    // Consumed before the pipeline sees it: nothing it calls can read this message again.
    const auto first = c.in.begin() + std::ptrdiff_t(c.in_off + 2);
    msg.assign(first, first + std::ptrdiff_t(len));
    c.in_off += 2 + len;
    // Counted as in progress while the pipeline has it, so a reply that came back before
    // on_query returned finds it to close; uncounted again unless it went upstream.
    ++c.forwarded;
    const Verdict v = pipeline_.on_query(msg.data(), len, c.client, *this);
    if (!conns_.count(id)) return false;  // closed while delivering
    if (v != Verdict::Forwarded) --c.forwarded;
    touch(c);
  }
  c.in.erase(c.in.begin(), c.in.begin() + std::ptrdiff_t(c.in_off));
  c.in_off = 0;
  c.in_input = false;
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
    if (was_forwarded) touch(c);  // an immediate reply: process_input touches for its query
    if (!write_some(c)) return;
  }
  // Not forwarded: an immediate reply, inside process_input. Forwarded but process_input
  // is running for this connection (a reply that came back at once): its loop goes on and
  // its caller updates the events. Either way, nothing more to do here.
  if (!was_forwarded || c.in_input) return;
  // Messages read before a pause may wait in our buffer: take them up again.
  if (c.in.size() > c.in_off && c.forwarded < cfg_.tcp_max_pipelined && !process_input(c)) return;
  if (!finish_if_done(c)) return;
  update_events(c);
}

void TcpListener::close_conn(uint64_t id, const char* why) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  Conn& c = *it->second;
  if (why) log::debug("event=tcp-close client={} reason={}", c.client.peer_text(), why);
  if (c.idle) loop_.cancel(c.idle);
  lru_.erase(c.lru_pos);
  if (cfg_.host) {
    const auto t = per_tenant_.find(c.tenant);
    if (t != per_tenant_.end() && --t->second == 0) per_tenant_.erase(t);
  }
  loop_.unwatch(c.fd);
  close(c.fd);
  conns_.erase(it);
}

}  // namespace dnsward
