// The upstream forwarder: a c-ares channel bridged into the event loop. It sends raw,
// already-built queries (ares_send) and hands back raw answers; it makes no DNS decisions.
#pragma once
#include <ares.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <vector>

#include "dnsward/config.hpp"
#include "dnsward/event_loop.hpp"
#include "dnsward/ports.hpp"

namespace dnsward {

class Upstream : public UpstreamPort {
 public:
  /// on_answer: where answers go (or set_receiver() later).
  Upstream(EventLoop& loop, const ServeConfig& cfg, OnAnswer on_answer = nullptr);
  /// Answers every query still pending (ARES_EDESTRUCTION from c-ares, or the answer that
  /// was queued); a send() from one of those callbacks is answered ARES_EDESTRUCTION at once.
  ~Upstream() override;
  Upstream(const Upstream&) = delete;
  Upstream& operator=(const Upstream&) = delete;

  /// Sends a query. on_answer never runs before send() returns: when c-ares calls back
  /// from inside ares_send (no route, EPERM, ECONNREFUSED, no descriptors...), the answer
  /// is queued and handed over from the event loop, on a zero-delay timer.
  void send(const uint8_t* query, std::size_t len, uint64_t token) override;
  void set_receiver(OnAnswer on_answer) override;
  /// Forgets the receiver, then tears the channels down (no callback reaches anyone).
  void stop() override;

  /// Longest time c-ares can take before it calls back for a query: every server tried
  /// upstream-tries times, the timeout doubling after each round (c-ares 1.18 ares_process.c).
  uint64_t worst_case_ms() const override { return worst_case_ms_; }

 private:
  /// One c-ares channel. A channel that lost ARES_FLAG_EDNS is replaced for new queries and
  /// kept, draining, until the queries already sent on it have been called back.
  struct Channel {
    Upstream* owner = nullptr;
    ares_channel ch = nullptr;
    std::size_t pending = 0;  ///< sent on it and not yet called back
  };
  /// A callback c-ares made from inside ares_send, waiting for the event loop.
  struct Deferred {
    uint64_t token;
    int status;
    bool has_answer;
    std::vector<uint8_t> answer;
  };

  void teardown();  ///< destroys the channels, answering what is pending (EDESTRUCTION)
  std::unique_ptr<Channel> make_channel();  ///< throws std::runtime_error
  static void on_sock_state(void* chan, ares_socket_t fd, int readable, int writable);
  static void on_ares_answer(void* arg, int status, int timeouts, unsigned char* abuf, int alen);
  void after_processing();  ///< after c-ares ran: EDNS check, drained channels, timer
  void check_edns();
  void reap_drained();
  void run_deferred();
  void rearm_timer();

  EventLoop& loop_;
  const ServeConfig& cfg_;
  OnAnswer on_answer_;
  std::unique_ptr<Channel> current_;                // where new queries go
  std::vector<std::unique_ptr<Channel>> draining_;  // replaced, with queries still pending
  EventLoop::TimerId timer_ = 0;
  uint64_t worst_case_ms_ = 0;
  bool in_send_ = false;     // inside ares_send: callbacks are deferred
  bool destroying_ = false;  // inside ~Upstream: callbacks go out at once
  std::deque<Deferred> deferred_;
  EventLoop::TimerId defer_timer_ = 0;
};

}  // namespace dnsward
