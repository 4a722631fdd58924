#include "dnsward/upstream.hpp"

#include <sys/epoll.h>

#include <cstring>
#include <stdexcept>
#include <vector>

#include "dnsward/log.hpp"

namespace dnsward {
namespace {
struct SendContext {
  Upstream* self;
  uint64_t token;
  Upstream::OnAnswer* on_answer;
};
}  // namespace

Upstream::Upstream(EventLoop& loop, const ServeConfig& cfg, OnAnswer on_answer)
    : loop_(loop), on_answer_(std::move(on_answer)) {
  static const int lib = ares_library_init(ARES_LIB_INIT_ALL);
  if (lib != ARES_SUCCESS) throw std::runtime_error(ares_strerror(lib));

  ares_options opts{};
  int mask = ARES_OPT_FLAGS | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_SOCK_STATE_CB |
             ARES_OPT_EDNSPSZ | ARES_OPT_RESOLVCONF | ARES_OPT_LOOKUPS | ARES_OPT_DOMAINS;
  // NOCHECKRESP: relay SERVFAIL/REFUSED as they are instead of retrying them away.
  // EDNS: accept UDP answers up to our payload size (without it 1.18 drops answers over 512
  // bytes). Our queries always end in a plain OPT, which keeps 1.18's FORMERR fallback safe.
  opts.flags = ARES_FLAG_NOCHECKRESP | ARES_FLAG_EDNS | ARES_FLAG_NOSEARCH | ARES_FLAG_NOALIASES;
  opts.timeout = int(cfg.upstream_timeout_ms);
  opts.tries = int(cfg.upstream_tries);
  opts.sock_state_cb = &Upstream::on_sock_state;
  opts.sock_state_cb_data = this;
  opts.ednspsz = cfg.udp_payload;
  // Never read the machine's resolv.conf for servers or options: ours are set below.
  opts.resolvconf_path = const_cast<char*>("/dev/null");
  opts.lookups = const_cast<char*>("b");
  opts.domains = nullptr;
  opts.ndomains = 0;
  const int rc = ares_init_options(&channel_, &opts, mask);
  if (rc != ARES_SUCCESS) throw std::runtime_error(std::string("ares_init_options: ") + ares_strerror(rc));

  std::vector<ares_addr_port_node> nodes(cfg.upstreams.size());
  for (std::size_t i = 0; i < cfg.upstreams.size(); ++i) {
    const Endpoint& e = cfg.upstreams[i];
    auto& n = nodes[i];
    n.next = i + 1 < nodes.size() ? &nodes[i + 1] : nullptr;
    n.family = e.family();
    if (e.family() == AF_INET)
      std::memcpy(&n.addr.addr4, &reinterpret_cast<const sockaddr_in*>(&e.addr)->sin_addr, 4);
    else
      std::memcpy(&n.addr.addr6, &reinterpret_cast<const sockaddr_in6*>(&e.addr)->sin6_addr, 16);
    n.udp_port = n.tcp_port = e.port();
  }
  const int src = ares_set_servers_ports(channel_, nodes.data());
  if (src != ARES_SUCCESS) throw std::runtime_error(std::string("ares_set_servers_ports: ") + ares_strerror(src));

  const uint64_t n = cfg.upstreams.size();
  for (uint64_t attempt = 0; attempt < n * cfg.upstream_tries; ++attempt)
    worst_case_ms_ += uint64_t(cfg.upstream_timeout_ms) << (attempt / n);
}

Upstream::~Upstream() {
  if (timer_) loop_.cancel(timer_);
  if (channel_) ares_destroy(channel_);  // calls back every pending query with EDESTRUCTION
}

void Upstream::send(const uint8_t* query, std::size_t len, uint64_t token) {
  auto* ctx = new SendContext{this, token, &on_answer_};
  ares_send(channel_, query, int(len), &Upstream::on_ares_answer, ctx);
  rearm_timer();
}

void Upstream::on_ares_answer(void* arg, int status, int /*timeouts*/, unsigned char* abuf,
                              int alen) {
  auto* ctx = static_cast<SendContext*>(arg);
  const uint64_t token = ctx->token;
  OnAnswer& cb = *ctx->on_answer;
  delete ctx;
  cb(token, status, abuf, abuf && alen > 0 ? std::size_t(alen) : 0);
}

void Upstream::on_sock_state(void* data, ares_socket_t fd, int readable, int writable) {
  auto* self = static_cast<Upstream*>(data);
  if (!readable && !writable) {
    self->loop_.unwatch(fd);  // c-ares closes fd right after this call
    return;
  }
  const uint32_t ev = (readable ? EPOLLIN : 0u) | (writable ? EPOLLOUT : 0u);
  self->loop_.watch(fd, ev, [self, fd](uint32_t got) {
    // HUP and ERR count as readable so c-ares sees the failure on its next read.
    const bool r = got & (EPOLLIN | EPOLLHUP | EPOLLERR);
    const bool w = got & EPOLLOUT;
    ares_process_fd(self->channel_, r ? fd : ARES_SOCKET_BAD, w ? fd : ARES_SOCKET_BAD);
    self->rearm_timer();
  });
}

void Upstream::rearm_timer() {
  if (timer_) {
    loop_.cancel(timer_);
    timer_ = 0;
  }
  timeval tv{};
  if (!ares_timeout(channel_, nullptr, &tv)) return;  // nothing pending
  const uint64_t ms = uint64_t(tv.tv_sec) * 1000u + uint64_t(tv.tv_usec + 999) / 1000u;
  timer_ = loop_.after(ms, [this] {
    timer_ = 0;
    ares_process_fd(channel_, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    rearm_timer();
  });
}

}  // namespace dnsward
