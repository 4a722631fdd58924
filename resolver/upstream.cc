#include "dnsward/upstream.hpp"

#include <sys/epoll.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "dnsward/log.hpp"

namespace dnsward {
namespace {
struct SendContext {
  Upstream* self;
  void* chan;  // Upstream::Channel*
  uint64_t token;
};
// NOCHECKRESP: relay SERVFAIL/REFUSED as they are instead of retrying them away.
// EDNS: accept UDP answers up to our payload size (without it 1.18 drops answers over 512
// bytes and refetches them over TCP). Our queries always end in a plain OPT, which keeps
// 1.18's FORMERR fallback safe.
constexpr int kFlags = ARES_FLAG_NOCHECKRESP | ARES_FLAG_EDNS | ARES_FLAG_NOSEARCH | ARES_FLAG_NOALIASES;
}  // namespace

Upstream::Upstream(EventLoop& loop, const ServeConfig& cfg, OnAnswer on_answer)
    : loop_(loop), cfg_(cfg), on_answer_(std::move(on_answer)) {
  if (!on_answer_) on_answer_ = [](uint64_t, int, const uint8_t*, std::size_t) {};
  static const int lib = ares_library_init(ARES_LIB_INIT_ALL);
  if (lib != ARES_SUCCESS) throw std::runtime_error(ares_strerror(lib));
  current_ = make_channel();

  const uint64_t n = cfg.upstreams.size();
  for (uint64_t attempt = 0; attempt < n * cfg.upstream_tries; ++attempt)
    worst_case_ms_ += uint64_t(cfg.upstream_timeout_ms) << (attempt / n);
}

std::unique_ptr<Upstream::Channel> Upstream::make_channel() {
  auto chan = std::make_unique<Channel>();
  chan->owner = this;
  ares_options opts{};
  const int mask = ARES_OPT_FLAGS | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_SOCK_STATE_CB |
                   ARES_OPT_EDNSPSZ | ARES_OPT_RESOLVCONF | ARES_OPT_LOOKUPS | ARES_OPT_DOMAINS;
  opts.flags = kFlags;
  opts.timeout = int(cfg_.upstream_timeout_ms);
  opts.tries = int(cfg_.upstream_tries);
  opts.sock_state_cb = &Upstream::on_sock_state;
  opts.sock_state_cb_data = chan.get();  // each channel's sockets are processed on it
  opts.ednspsz = cfg_.udp_payload;
  // Never read the machine's resolv.conf for servers or options: ours are set below.
  opts.resolvconf_path = const_cast<char*>("/dev/null");
  opts.lookups = const_cast<char*>("b");
  opts.domains = nullptr;
  opts.ndomains = 0;
  const int rc = ares_init_options(&chan->ch, &opts, mask);
  if (rc != ARES_SUCCESS) throw std::runtime_error(std::string("ares_init_options: ") + ares_strerror(rc));

  std::vector<ares_addr_port_node> nodes(cfg_.upstreams.size());
  for (std::size_t i = 0; i < cfg_.upstreams.size(); ++i) {
    const Endpoint& e = cfg_.upstreams[i];
    auto& n = nodes[i];
    n.next = i + 1 < nodes.size() ? &nodes[i + 1] : nullptr;
    n.family = e.family();
    if (e.family() == AF_INET)
      std::memcpy(&n.addr.addr4, &reinterpret_cast<const sockaddr_in*>(&e.addr)->sin_addr, 4);
    else
      std::memcpy(&n.addr.addr6, &reinterpret_cast<const sockaddr_in6*>(&e.addr)->sin6_addr, 16);
    n.udp_port = n.tcp_port = e.port();
  }
  const int src = ares_set_servers_ports(chan->ch, nodes.data());
  if (src != ARES_SUCCESS) {
    ares_destroy(chan->ch);
    throw std::runtime_error(std::string("ares_set_servers_ports: ") + ares_strerror(src));
  }
  return chan;
}

void Upstream::set_receiver(OnAnswer on_answer) { on_answer_ = std::move(on_answer); }

void Upstream::stop() {
  on_answer_ = [](uint64_t, int, const uint8_t*, std::size_t) {};
  teardown();
}

Upstream::~Upstream() { teardown(); }

void Upstream::teardown() {
  if (destroying_) return;
  destroying_ = true;
  if (timer_) loop_.cancel(timer_);
  if (defer_timer_) loop_.cancel(defer_timer_);
  timer_ = defer_timer_ = 0;
  // ares_destroy calls back every pending query with ARES_EDESTRUCTION (at once: the
  // loop will not run again for us), then answers queued from inside ares_send go out.
  for (auto& d : draining_) ares_destroy(d->ch);
  draining_.clear();
  if (current_) ares_destroy(current_->ch);
  current_.reset();
  while (!deferred_.empty()) {
    Deferred d = std::move(deferred_.front());
    deferred_.pop_front();
    on_answer_(d.token, d.status, d.has_answer ? d.answer.data() : nullptr, d.answer.size());
  }
}

void Upstream::send(const uint8_t* query, std::size_t len, uint64_t token) {
  if (destroying_) {  // no channel left to send on
    on_answer_(token, ARES_EDESTRUCTION, nullptr, 0);
    return;
  }
  Channel* chan = current_.get();
  auto* ctx = new SendContext{this, chan, token};
  ++chan->pending;
  // c-ares 1.18 calls back from inside ares_send when it cannot send at all (no route,
  // EPERM, ECONNREFUSED, no descriptors): the flag makes on_ares_answer queue that answer
  // for the event loop, so no caller ever sees its reply delivered during its own send().
  in_send_ = true;
  ares_send(chan->ch, query, int(len), &Upstream::on_ares_answer, ctx);
  in_send_ = false;
  rearm_timer();
}

void Upstream::on_ares_answer(void* arg, int status, int /*timeouts*/, unsigned char* abuf,
                              int alen) {
  auto* ctx = static_cast<SendContext*>(arg);
  Upstream* self = ctx->self;
  const uint64_t token = ctx->token;
  --static_cast<Channel*>(ctx->chan)->pending;
  delete ctx;
  const std::size_t len = abuf && alen > 0 ? std::size_t(alen) : 0;
  if (self->in_send_ && !self->destroying_) {
    // abuf belongs to c-ares and is gone after we return: keep a copy.
    Deferred d{token, status, abuf != nullptr, {}};
    if (len) d.answer.assign(abuf, abuf + len);
    self->deferred_.push_back(std::move(d));
    if (!self->defer_timer_) self->defer_timer_ = self->loop_.after(0, [self] { self->run_deferred(); });
    return;
  }
  // The answer just processed may have cost the channel its EDNS flag: switch before the
  // callback sends more queries (a retry, or TCP messages taken up again).
  if (!self->destroying_) self->check_edns();
  self->on_answer_(token, status, abuf, len);
}

void Upstream::run_deferred() {
  defer_timer_ = 0;
  // Only what was queued so far: a callback that sends again and fails at once queues a
  // new answer for the next timer, so this loop is bounded.
  std::deque<Deferred> batch;
  batch.swap(deferred_);
  for (Deferred& d : batch)
    on_answer_(d.token, d.status, d.has_answer ? d.answer.data() : nullptr, d.answer.size());
}

void Upstream::on_sock_state(void* data, ares_socket_t fd, int readable, int writable) {
  auto* chan = static_cast<Channel*>(data);
  Upstream* self = chan->owner;
  if (!readable && !writable) {
    self->loop_.unwatch(fd);  // c-ares closes fd right after this call
    return;
  }
  const uint32_t ev = (readable ? EPOLLIN : 0u) | (writable ? EPOLLOUT : 0u);
  // The channel outlives this watch: ares_destroy closes its sockets through this callback
  // (unwatching them) before the Channel is freed.
  self->loop_.watch(fd, ev, [self, chan, fd](uint32_t got) {
    // HUP and ERR count as readable so c-ares sees the failure on its next read.
    const bool r = got & (EPOLLIN | EPOLLHUP | EPOLLERR);
    const bool w = got & EPOLLOUT;
    ares_process_fd(chan->ch, r ? fd : ARES_SOCKET_BAD, w ? fd : ARES_SOCKET_BAD);
    self->after_processing();
  });
}

void Upstream::after_processing() {
  check_edns();
  reap_drained();
  rearm_timer();
}

void Upstream::check_edns() {
  // Also runs inside ares_process_fd (from a callback): it only reads the channel's options
  // and moves it to draining_; channels are destroyed only in reap_drained().
  // c-ares 1.18 clears ARES_FLAG_EDNS for the whole channel after one FORMERR without OPT
  // (ares_process.c, process_answer); from then on every UDP answer over 512 bytes is
  // refetched over TCP, which fails against UDP-only upstreams. There is no per-query
  // switch and no setter: read the flags back and, if EDNS is gone, send new queries on a
  // fresh channel with the original options while the old one drains.
  ares_options o{};
  int mask = 0;
  if (ares_save_options(current_->ch, &o, &mask) != ARES_SUCCESS) return;
  const bool lost = (mask & ARES_OPT_FLAGS) && !(o.flags & ARES_FLAG_EDNS);
  ares_destroy_options(&o);
  if (!lost) return;
  std::unique_ptr<Channel> fresh;
  try {
    fresh = make_channel();
  } catch (const std::exception& e) {
    log::error("event=upstream-channel-error error={}", log::quote(e.what()));
    return;  // keep the old channel: degraded (TCP for large answers), not broken
  }
  log::info("event=upstream-edns-reset pending={} msg={}", current_->pending,
            log::quote("an upstream answered FORMERR to EDNS; c-ares turned EDNS off for its "
                       "channel, so new queries go to a fresh one"));
  draining_.push_back(std::move(current_));
  current_ = std::move(fresh);
}

void Upstream::reap_drained() {
  // Called only after ares_process_fd has returned, never from inside a c-ares callback,
  // so destroying a channel here cannot pull it from under c-ares.
  for (auto it = draining_.begin(); it != draining_.end();) {
    if ((*it)->pending == 0) {
      ares_destroy((*it)->ch);  // no queries: no callbacks; its sockets are unwatched
      it = draining_.erase(it);
    } else {
      ++it;
    }
  }
}

void Upstream::rearm_timer() {
  if (timer_) {
    loop_.cancel(timer_);
    timer_ = 0;
  }
  bool any = false;
  uint64_t ms = 0;
  auto consider = [&](const Channel& c) {
    timeval tv{};
    if (!ares_timeout(c.ch, nullptr, &tv)) return;  // nothing pending there
    const uint64_t t = uint64_t(tv.tv_sec) * 1000u + uint64_t(tv.tv_usec + 999) / 1000u;
    ms = any ? std::min(ms, t) : t;
    any = true;
  };
  if (current_) consider(*current_);
  for (const auto& d : draining_) consider(*d);
  if (!any) return;
  timer_ = loop_.after(ms, [this] {
    timer_ = 0;
    // Timeouts are processed on every channel; each handles only its own due queries.
    ares_process_fd(current_->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    for (std::size_t i = 0; i < draining_.size(); ++i)
      ares_process_fd(draining_[i]->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    after_processing();
  });
}

}  // namespace dnsward
