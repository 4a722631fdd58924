// Metrics: one table of every metric (name, type, help, how to read it) rendered in the
// Prometheus text format, served on a loopback HTTP port (libmicrohttpd, driven by our
// event loop) and/or written atomically to a file for node_exporter's textfile collector.
#pragma once
#include <cstdint>
#include <string>

struct MHD_Daemon;

namespace dnsward {

/// A latency histogram with fixed buckets, in seconds.
struct Histogram {
  static constexpr double kBounds[] = {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                       0.01,    0.025,  0.05,    0.1,    0.25,  0.5,    1.0,
                                       2.5,     5.0};
  static constexpr int kBuckets = sizeof kBounds / sizeof kBounds[0];
  uint64_t counts[kBuckets + 1] = {};  // the last: above every bound
  uint64_t count = 0;
  double sum = 0;
  void observe(double seconds);
};

/// Query counters, read by the metrics table.
struct Counters {
  uint64_t received = 0, dropped = 0, formerr = 0, notimp = 0, refused = 0, badvers = 0,
           denied = 0, ancestor_nodata = 0, localhost = 0, any_minimal = 0, forwarded = 0,
           upstream_answers = 0, upstream_failures = 0, overload = 0, truncated = 0,
           cache_hits = 0, vouched_answers = 0, vouch_failures = 0, special_dropped = 0,
           would_deny = 0, chaos_why = 0, reloads_ok = 0, reloads_failed = 0, revoked = 0,
           filtered_type = 0, over_budget = 0, capped_answers = 0, capped_addresses = 0,
           revoke_failures = 0;
};

class Pipeline;
class NftSets;
class EventLoop;

/// Everything the metrics table reads.
struct MetricsSources {
  const Pipeline* pipeline = nullptr;
  const NftSets* nft = nullptr;  ///< null with --no-nft
  uint64_t start_unix = 0;
};

/// The exposition, in the Prometheus text format (version 0.0.4).
std::string render_metrics(const MetricsSources& s);

/// Writes the exposition to path atomically (write, fsync, rename).
bool write_metrics_file(const std::string& path, const MetricsSources& s, std::string& err);

/// GET /metrics on a loopback address, with libmicrohttpd in our event loop.
class MetricsServer {
 public:
  /// listen: "127.0.0.1:9153" or "[::1]:9153"; loopback only. Throws std::runtime_error.
  MetricsServer(EventLoop& loop, const std::string& listen, const MetricsSources& sources);
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

 private:
  void run();
  EventLoop& loop_;
  MetricsSources sources_;
  ::MHD_Daemon* daemon_ = nullptr;
  int epoll_fd_ = -1;
  uint64_t timer_ = 0;
};

}  // namespace dnsward
