// The clock and timers of unit tests, replays and fuzz targets: time moves only when a test
// says so, and timers run in deadline order on the way.
#pragma once
#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <utility>

#include "dnsward/clock.hpp"

namespace dnsward::testing {

class FakeTimers : public Timers {
 public:
  explicit FakeTimers(uint64_t start_ms = 59000) : now_(start_ms) {}
  uint64_t now_ms() const override { return now_; }
  uint64_t now_ns() const override { return now_ * 1000000u; }
  TimerId after(uint64_t ms, std::function<void()> fn) override {
    const TimerId id = next_++;
    timers_.emplace(std::make_pair(now_ + ms, id), std::move(fn));
    return id;
  }
  void cancel(TimerId id) override {
    for (auto it = timers_.begin(); it != timers_.end(); ++it)
      if (it->first.second == id) {
        timers_.erase(it);
        return;
      }
  }
  /// Moves the clock, running every timer that falls due on the way, in deadline order.
  void advance(uint64_t ms) {
    const uint64_t end = now_ + ms;
    while (!timers_.empty() && timers_.begin()->first.first <= end) {
      auto it = timers_.begin();
      now_ = std::max(now_, it->first.first);
      auto fn = std::move(it->second);
      timers_.erase(it);
      fn();
    }
    now_ = end;
  }
  std::size_t armed() const { return timers_.size(); }
  uint64_t now_;

 private:
  std::map<std::pair<uint64_t, TimerId>, std::function<void()>> timers_;
  TimerId next_ = 1;
};

}  // namespace dnsward::testing
