// Metrics: one table of every metric (DNSWARD_METRICS below) from which the query counters,
// the Prometheus text exposition and SIGUSR1's event=stats line are all generated, so a
// metric has one name everywhere. The exposition is served on a loopback HTTP port
// (libmicrohttpd, loaded only when --metrics-listen is given) and/or written atomically to a
// file for node_exporter's textfile collector.
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

// The table. Its rows, in exposition order (rows of one name form one family and are rendered
// together, as the text format requires of a family's samples):
//
//   COUNTER(member, name, labels, stats, help)
//       a field of struct Counters that the pipeline increments (++counters_.received)
//   READING(member, type, name, labels, stats, help, expr)
//       a value read from the running parts at render time: expr is evaluated with
//       `const MetricsSources& s` in scope; type is Counter or Gauge
//   HISTOGRAM(member, name, help, expr)
//       a Histogram; expr (with `s` in scope) yields a const Histogram&
//   INFO(member, name, label, help, expr)
//       a gauge of value 1 whose one label carries a string; expr yields it
//
// name is the Prometheus name; labels are in exposition syntax (verdict="denied") or "";
// stats says whether SIGUSR1's event=stats line carries it (under the same name, see
// stats_line()); help is the family's HELP text, given on its first row and "" on the others.
#define DNSWARD_METRICS(COUNTER, READING, HISTOGRAM, INFO)                                          \
  COUNTER(received, "dnsward_queries_total", "verdict=\"received\"", true,                        \
          "Queries received, by what became of them.")                                             \
  COUNTER(denied, "dnsward_queries_total", "verdict=\"denied\"", true, "")                         \
  COUNTER(ancestor_nodata, "dnsward_queries_total", "verdict=\"nodata_ancestor\"", true, "")       \
  COUNTER(would_deny, "dnsward_queries_total", "verdict=\"would_deny\"", true, "")                 \
  COUNTER(forwarded, "dnsward_queries_total", "verdict=\"forwarded\"", true, "")                   \
  COUNTER(cache_hits, "dnsward_queries_total", "verdict=\"cache_hit\"", true, "")                  \
  COUNTER(localhost, "dnsward_queries_total", "verdict=\"localhost\"", false, "")                  \
  COUNTER(any_minimal, "dnsward_queries_total", "verdict=\"any_minimal\"", false, "")              \
  COUNTER(chaos_why, "dnsward_queries_total", "verdict=\"chaos_why\"", false, "")                  \
  COUNTER(chaos_status, "dnsward_queries_total", "verdict=\"chaos_status\"", false, "")            \
  COUNTER(not_ready, "dnsward_queries_total", "verdict=\"not_ready\"", true, "")                   \
  COUNTER(formerr, "dnsward_queries_total", "verdict=\"formerr\"", false, "")                      \
  COUNTER(notimp, "dnsward_queries_total", "verdict=\"notimp\"", false, "")                        \
  COUNTER(refused, "dnsward_queries_total", "verdict=\"refused\"", false, "")                      \
  COUNTER(badvers, "dnsward_queries_total", "verdict=\"badvers\"", false, "")                      \
  COUNTER(filtered_type, "dnsward_queries_total", "verdict=\"filtered_type\"", false, "")          \
  COUNTER(over_budget, "dnsward_queries_total", "verdict=\"over_budget\"", false, "")              \
  COUNTER(overload, "dnsward_queries_total", "verdict=\"overload\"", true, "")                     \
  COUNTER(dropped, "dnsward_queries_total", "verdict=\"dropped\"", false, "")                      \
  COUNTER(unknown_source, "dnsward_queries_total", "verdict=\"unknown_source\"", true, "")         \
  COUNTER(sandbox_capped, "dnsward_sandbox_capped_total", "", true,                                \
          "Host mode: queries a sandbox's own caps refused (elements, queries in flight).")       \
  COUNTER(upstream_answers, "dnsward_upstream_answers_total", "", false,                           \
          "Answers received from the upstream.")                                                   \
  COUNTER(upstream_failures, "dnsward_upstream_failures_total", "", true,                          \
          "Upstream timeouts, errors and unusable answers (the client got SERVFAIL).")             \
  READING(inflight, Gauge, "dnsward_upstream_inflight", "", true,                                  \
          "Queries waiting for the upstream.", s.pipeline->inflight())                             \
  COUNTER(truncated, "dnsward_truncated_total", "", false, "UDP answers sent truncated (TC=1).")   \
  COUNTER(vouched_answers, "dnsward_answers_vouched_total", "", true,                              \
          "Answers whose addresses were put in the nftables sets before the reply.")               \
  COUNTER(vouch_failures, "dnsward_vouch_failures_total", "", true,                                \
          "Answers withheld (SERVFAIL) because the sets could not be updated.")                    \
  COUNTER(names_capped, "dnsward_vouch_refused_total", "reason=\"names_full\"", true,              \
          "Answers withheld (SERVFAIL) before vouching, by reason: names_full, an address "        \
          "would be bound to more than --max-names-per-element names.")                           \
  COUNTER(special_dropped, "dnsward_special_addresses_dropped_total", "", false,                   \
          "Records with special-purpose addresses removed from answers.")                          \
  READING(netlink_batches, Counter, "dnsward_netlink_batches_total", "", false,                    \
          "Netlink batches sent to nftables.", (s.nft ? s.nft->batches() : 0))                     \
  READING(nft_external_changes, Counter, "dnsward_nft_external_changes_total", "", false,          \
          "Times someone else changed dnsward's table or sets.",                                   \
          (s.nft ? s.nft->external_changes() : 0))                                                 \
  READING(nft_known, Gauge, "dnsward_nft_elements_known", "", true,                                \
          "Set elements dnsward added and believes still held (its view of the sets).",           \
          (s.nft ? s.nft->known() : 0))                                                            \
  READING(cache_entries, Gauge, "dnsward_cache_entries", "", true, "Answers in the cache.",        \
          s.pipeline->cache_size())                                                                \
  COUNTER(capped_answers, "dnsward_answers_capped_total", "", false,                               \
          "Answers that carried more addresses than --max-answer-addresses (the extra records "   \
          "were removed).")                                                                        \
  COUNTER(capped_addresses, "dnsward_capped_addresses_total", "", false,                           \
          "Addresses removed from answers by --max-answer-addresses.")                             \
  READING(nft_held4, Gauge, "dnsward_nft_set_elements", "family=\"ipv4\"", false,                  \
          "Elements dnsward knows each set holds (from its own adds and dumps of the kernel's "   \
          "sets).",                                                                                \
          (s.nft ? s.nft->held(AF_INET, mono_ms()) : 0))                                           \
  READING(nft_held6, Gauge, "dnsward_nft_set_elements", "family=\"ipv6\"", false, "",              \
          (s.nft ? s.nft->held(AF_INET6, mono_ms()) : 0))                                          \
  READING(nft_size4, Gauge, "dnsward_nft_set_size", "family=\"ipv4\"", false,                      \
          "Each set's declared size (0: none; a full set fails answers closed).",                  \
          (s.nft ? s.nft->size_of(AF_INET) : 0))                                                   \
  READING(nft_size6, Gauge, "dnsward_nft_set_size", "family=\"ipv6\"", false, "",                  \
          (s.nft ? s.nft->size_of(AF_INET6) : 0))                                                  \
  READING(ruleset_in_force, Gauge, "dnsward_ruleset_in_force", "", true,                           \
          "1 while the ruleset of `dnsward nft-rules` is in force in dnsward's table (a base "     \
          "chain on the output hook, policy drop, holding exactly its rules); 0 otherwise, and "   \
          "with --no-nft.",                                                                        \
          (s.nft && s.nft->ruleset().in_force() ? 1 : 0))                                          \
  READING(nft_foreign_set_rules, Counter, "dnsward_nft_foreign_set_rules_total", "", false,        \
          "Rules seen that change dnsward's sets from the packet path (changes dnsward cannot "   \
          "see).",                                                                                 \
          (s.nft ? s.nft->foreign_set_rules() : 0))                                                \
  COUNTER(revoke_failures, "dnsward_revoke_failures_total", "", false,                             \
          "Revocations the kernel refused (the addresses may still be held).")                     \
  COUNTER(reloads_ok, "dnsward_reloads_total", "result=\"ok\"", true, "Policy reloads (SIGHUP).")  \
  COUNTER(reloads_failed, "dnsward_reloads_total", "result=\"failed\"", true, "")                  \
  COUNTER(revoked, "dnsward_revoked_addresses_total", "", false,                                   \
          "Addresses deleted from the sets because a reload removed their entries.")               \
  READING(guard_allowed, Counter, "dnsward_first_flights_total", "verdict=\"allowed\"", true,        \
          "Connections on guarded ports judged by --sni-guard: allowed (a bound name), or rejected " \
          "(reset; a TCP Fast Open SYN or one past --queue-maxlen dropped) by reason.",         \
          (s.guard ? s.guard->counts().allowed : 0))                                               \
  READING(guard_mismatch, Counter, "dnsward_first_flights_total", "verdict=\"rejected\",reason=\"mismatch\"", \
          false, "", (s.guard ? s.guard->counts().mismatch : 0))                                  \
  READING(guard_no_name, Counter, "dnsward_first_flights_total", "verdict=\"rejected\",reason=\"no_name\"", \
          false, "", (s.guard ? s.guard->counts().no_name : 0))                                  \
  READING(guard_not_tls, Counter, "dnsward_first_flights_total", "verdict=\"rejected\",reason=\"not_tls\"", \
          false, "", (s.guard ? s.guard->counts().not_tls : 0))                                  \
  READING(guard_not_http, Counter, "dnsward_first_flights_total", "verdict=\"rejected\",reason=\"not_http\"", \
          false, "", (s.guard ? s.guard->counts().not_http : 0))                                  \
  READING(guard_malformed, Counter, "dnsward_first_flights_total", "verdict=\"rejected\",reason=\"malformed\"", \
          false, "", (s.guard ? s.guard->counts().malformed : 0))                                  \
  READING(guard_too_large, Counter, "dnsward_first_flights_total", "verdict=\"rejected\",reason=\"too_large\"", \
          false, "", (s.guard ? s.guard->counts().too_large : 0))                                  \
  READING(guard_conflict, Counter, "dnsward_first_flights_total", "verdict=\"rejected\",reason=\"conflict\"", \
          false, "", (s.guard ? s.guard->counts().conflict : 0))                                  \
  READING(guard_timeout, Counter, "dnsward_first_flights_total", "verdict=\"rejected\",reason=\"timeout\"", \
          false, "", (s.guard ? s.guard->counts().timeout : 0))                                  \
  READING(guard_no_state, Counter, "dnsward_first_flights_total", "verdict=\"rejected\",reason=\"no_state\"", \
          false, "", (s.guard ? s.guard->counts().no_state : 0))                                  \
  READING(guard_tfo, Counter, "dnsward_first_flights_total", "verdict=\"rejected\",reason=\"tfo\"", \
          false, "", (s.guard ? s.guard->counts().tfo : 0))                                  \
  READING(guard_full, Counter, "dnsward_first_flights_total", "verdict=\"rejected\",reason=\"full\"", \
          false, "", (s.guard ? s.guard->counts().full : 0))                                  \
  READING(guard_urgent, Counter, "dnsward_first_flights_total", "verdict=\"rejected\",reason=\"urgent\"", \
          false, "", (s.guard ? s.guard->counts().urgent : 0))                                    \
  READING(guard_checksum, Counter, "dnsward_first_flights_total", "verdict=\"rejected\",reason=\"checksum\"", \
          false, "", (s.guard ? s.guard->counts().checksum : 0))                                  \
  READING(guard_packets, Counter, "dnsward_guard_packets_total", "", false,                       \
          "Packets the first-flight guard's queue handed to dnsward.",                            \
          (s.guard ? s.guard->counts().packets : 0))                                               \
  READING(guard_overruns, Counter, "dnsward_guard_queue_overruns_total", "", false,               \
          "Times the kernel dropped queued packets because dnsward read too slowly (ENOBUFS).",   \
          (s.queue ? s.queue->overruns() : 0))                                                     \
  READING(policy_entries, Gauge, "dnsward_policy_entries", "", false,                              \
          "Entries of the policy in force.", s.pipeline->policy().size())                          \
  READING(start_time, Gauge, "dnsward_start_time_seconds", "", false,                              \
          "When dnsward started (unix time).", s.start_unix)                                       \
  INFO(policy_version, "dnsward_policy_info", "version",                                           \
       "The policy in force; its version is the one in logs and EDE texts.",                       \
       s.pipeline->policy().version())                                                             \
  HISTOGRAM(upstream_latency, "dnsward_upstream_latency_seconds",                                  \
            "Time from forwarding a query to its upstream answer.",                                \
            s.pipeline->upstream_latency())                                                        \
  HISTOGRAM(vouch_latency, "dnsward_vouch_latency_seconds",                                        \
            "Time to put an answer's addresses in the sets (netlink batch and ACK).",              \
            s.pipeline->vouch_latency())

#define DNSWARD_METRICS_NONE_(...)
#define DNSWARD_METRICS_COUNTER_FIELD_(member, ...) uint64_t member = 0;
#define DNSWARD_METRICS_READING_FIELD_(member, ...) double member = 0;
#define DNSWARD_METRICS_HISTOGRAM_FIELD_(member, ...) Histogram member;
#define DNSWARD_METRICS_INFO_FIELD_(member, ...) std::string member;

/// Query counters, one per COUNTER row of the table; the pipeline increments them.
struct Counters {
  DNSWARD_METRICS(DNSWARD_METRICS_COUNTER_FIELD_, DNSWARD_METRICS_NONE_, DNSWARD_METRICS_NONE_,
                  DNSWARD_METRICS_NONE_)
};

/// Every value of the table at one moment: what the exposition and the stats line render.
struct MetricsSnapshot {
  Counters counters;
  DNSWARD_METRICS(DNSWARD_METRICS_NONE_, DNSWARD_METRICS_READING_FIELD_,
                  DNSWARD_METRICS_HISTOGRAM_FIELD_, DNSWARD_METRICS_INFO_FIELD_)
};

class Pipeline;
class NftSets;
class SniGuard;
class NfQueue;
class EventLoop;

/// Everything the metrics table reads.
struct MetricsSources {
  const Pipeline* pipeline = nullptr;
  const NftSets* nft = nullptr;  ///< null with --no-nft
  uint64_t start_unix = 0;
  const SniGuard* guard = nullptr;  ///< null without --sni-guard
  const NfQueue* queue = nullptr;
};

/// Reads every value of the table from the running parts.
MetricsSnapshot take_snapshot(const MetricsSources& s);

/// The exposition, in the Prometheus text format (version 0.0.4).
std::string render_metrics(const MetricsSnapshot& m);
std::string render_metrics(const MetricsSources& s);

/// SIGUSR1's line (after "event=stats "): the rows marked stats, as logfmt pairs keyed by
/// their exposition sample, with the labels' quotes and '=' (which logfmt keys cannot hold)
/// written as ':': dnsward_queries_total{verdict="denied"} 2 is
/// dnsward_queries_total{verdict:denied}=2.
std::string stats_line(const MetricsSnapshot& m);

/// Writes the exposition to path atomically (write, fsync, rename).
bool write_metrics_file(const std::string& path, const MetricsSources& s, std::string& err);

/// GET /metrics on a loopback address, with libmicrohttpd in our event loop. libmicrohttpd
/// (and the TLS stack it links: gnutls, nettle, gmp, p11-kit...) is loaded with dlopen by
/// the first MetricsServer, so a dnsward without --metrics-listen never maps it.
class MetricsServer {
 public:
  /// listen: "127.0.0.1:9153" or "[::1]:9153"; loopback only. Throws std::runtime_error,
  /// also when libmicrohttpd cannot be loaded.
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
