// The monotonic clock, in one place: timers, deadlines and latency histograms all read it.
#pragma once
#include <time.h>

#include <cstdint>

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

}  // namespace dnsward
