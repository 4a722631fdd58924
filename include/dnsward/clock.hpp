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

}  // namespace dnsward
