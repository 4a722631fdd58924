// The upstream forwarder: a c-ares channel bridged into the event loop. It sends raw,
// already-built queries (ares_send) and hands back raw answers; it makes no DNS decisions.
#pragma once
#include <ares.h>

#include <cstdint>
#include <functional>

#include "dnsward/config.hpp"
#include "dnsward/event_loop.hpp"

namespace dnsward {

class Upstream {
 public:
  /// Called once per send(): status is an ARES_* code; answer is valid only during the call.
  using OnAnswer = std::function<void(uint64_t token, int status, const uint8_t* answer,
                                      std::size_t len)>;

  Upstream(EventLoop& loop, const ServeConfig& cfg, OnAnswer on_answer);
  ~Upstream();  ///< answers every query still pending with ARES_EDESTRUCTION
  Upstream(const Upstream&) = delete;
  Upstream& operator=(const Upstream&) = delete;

  /// Sends a query. on_answer may run before send() returns (c-ares calls back at once on
  /// some errors), so the caller must have registered the query before calling.
  void send(const uint8_t* query, std::size_t len, uint64_t token);

  /// Longest time c-ares can take before it calls back for a query: every server tried
  /// upstream-tries times, the timeout doubling after each round (c-ares 1.18 ares_process.c).
  uint64_t worst_case_ms() const { return worst_case_ms_; }

 private:
  static void on_sock_state(void* self, ares_socket_t fd, int readable, int writable);
  static void on_ares_answer(void* arg, int status, int timeouts, unsigned char* abuf, int alen);
  void rearm_timer();

  EventLoop& loop_;
  OnAnswer on_answer_;
  ares_channel channel_ = nullptr;
  EventLoop::TimerId timer_ = 0;
  uint64_t worst_case_ms_ = 0;
};

}  // namespace dnsward
