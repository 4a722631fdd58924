// The monotonic clock, in one place: timers, deadlines and latency histograms all read it;
// and Timers, the interface through which the pipeline reads time (tests advance a fake one).
#pragma once
#include <time.h>

#include <cstdint>
#include <functional>

namespace dnsward {

inline uint64_t mono_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000u + uint64_t(ts.tv_nsec);
}

inline uint64_t mono_ms() { return mono_ns() / 1000000u; }

/// Wall-clock milliseconds since the epoch: only for what must survive a restart.
inline int64_t wall_ms() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return int64_t(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

/// Time and one-shot timers. The event loop is the real one; tests advance a fake one.
class Timers {
 public:
  using TimerId = uint64_t;
  virtual ~Timers() = default;
  /// Monotonic milliseconds, as of the current loop pass.
  virtual uint64_t now_ms() const = 0;
  /// Monotonic nanoseconds, read now (latency histograms).
  virtual uint64_t now_ns() const = 0;
  /// Runs fn once, after ms milliseconds. Returns an id for cancel().
  virtual TimerId after(uint64_t ms, std::function<void()> fn) = 0;
  virtual void cancel(TimerId id) = 0;
};

}  // namespace dnsward
