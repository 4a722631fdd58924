#include "dnsward/metrics.hpp"

#include <microhttpd.h>
#include <sys/socket.h>
#include <sys/epoll.h>

#include <fmt/format.h>

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <functional>
#include <stdexcept>
#include <vector>

#include "dnsward/clock.hpp"
#include "dnsward/config.hpp"
#include "dnsward/event_loop.hpp"
#include "dnsward/nft_sets.hpp"
#include "dnsward/pipeline.hpp"

namespace dnsward {

void Histogram::observe(double seconds) {
  int i = 0;
  while (i < kBuckets && seconds > kBounds[i]) ++i;
  ++counts[i];
  ++count;
  sum += seconds;
}

namespace {

enum class Type { Counter, Gauge };

/// One metric: declared once, here, with how to read it.
struct Metric {
  const char* name;
  Type type;
  const char* help;
  const char* labels;  // e.g. verdict="denied", or ""
  std::function<double(const MetricsSources&)> read;
};

const Counters& c(const MetricsSources& s) { return s.pipeline->counters(); }

const std::vector<Metric>& table() {
  static const std::vector<Metric> t = {
      {"dnsward_queries_total", Type::Counter, "Queries received, by what became of them.", "verdict=\"received\"", [](auto& s) { return double(c(s).received); }},
      {"dnsward_queries_total", Type::Counter, "", "verdict=\"denied\"", [](auto& s) { return double(c(s).denied); }},
      {"dnsward_queries_total", Type::Counter, "", "verdict=\"nodata_ancestor\"", [](auto& s) { return double(c(s).ancestor_nodata); }},
      {"dnsward_queries_total", Type::Counter, "", "verdict=\"would_deny\"", [](auto& s) { return double(c(s).would_deny); }},
      {"dnsward_queries_total", Type::Counter, "", "verdict=\"forwarded\"", [](auto& s) { return double(c(s).forwarded); }},
      {"dnsward_queries_total", Type::Counter, "", "verdict=\"cache_hit\"", [](auto& s) { return double(c(s).cache_hits); }},
      {"dnsward_queries_total", Type::Counter, "", "verdict=\"localhost\"", [](auto& s) { return double(c(s).localhost); }},
      {"dnsward_queries_total", Type::Counter, "", "verdict=\"any_minimal\"", [](auto& s) { return double(c(s).any_minimal); }},
      {"dnsward_queries_total", Type::Counter, "", "verdict=\"chaos_why\"", [](auto& s) { return double(c(s).chaos_why); }},
      {"dnsward_queries_total", Type::Counter, "", "verdict=\"formerr\"", [](auto& s) { return double(c(s).formerr); }},
      {"dnsward_queries_total", Type::Counter, "", "verdict=\"notimp\"", [](auto& s) { return double(c(s).notimp); }},
      {"dnsward_queries_total", Type::Counter, "", "verdict=\"refused\"", [](auto& s) { return double(c(s).refused); }},
      {"dnsward_queries_total", Type::Counter, "", "verdict=\"badvers\"", [](auto& s) { return double(c(s).badvers); }},
      {"dnsward_queries_total", Type::Counter, "", "verdict=\"filtered_type\"", [](auto& s) { return double(c(s).filtered_type); }},
      {"dnsward_queries_total", Type::Counter, "", "verdict=\"over_budget\"", [](auto& s) { return double(c(s).over_budget); }},
      {"dnsward_queries_total", Type::Counter, "", "verdict=\"overload\"", [](auto& s) { return double(c(s).overload); }},
      {"dnsward_queries_total", Type::Counter, "", "verdict=\"dropped\"", [](auto& s) { return double(c(s).dropped); }},
      {"dnsward_upstream_answers_total", Type::Counter, "Answers received from the upstream.", "", [](auto& s) { return double(c(s).upstream_answers); }},
      {"dnsward_upstream_failures_total", Type::Counter, "Upstream timeouts, errors and unusable answers (the client got SERVFAIL).", "", [](auto& s) { return double(c(s).upstream_failures); }},
      {"dnsward_upstream_inflight", Type::Gauge, "Queries waiting for the upstream.", "", [](auto& s) { return double(s.pipeline->inflight()); }},
      {"dnsward_truncated_total", Type::Counter, "UDP answers sent truncated (TC=1).", "", [](auto& s) { return double(c(s).truncated); }},
      {"dnsward_answers_vouched_total", Type::Counter, "Answers whose addresses were put in the nftables sets before the reply.", "", [](auto& s) { return double(c(s).vouched_answers); }},
      {"dnsward_vouch_failures_total", Type::Counter, "Answers withheld (SERVFAIL) because the sets could not be updated.", "", [](auto& s) { return double(c(s).vouch_failures); }},
      {"dnsward_special_addresses_dropped_total", Type::Counter, "Records with special-purpose addresses removed from answers.", "", [](auto& s) { return double(c(s).special_dropped); }},
      {"dnsward_netlink_batches_total", Type::Counter, "Netlink batches sent to nftables.", "", [](auto& s) { return s.nft ? double(s.nft->batches()) : 0.0; }},
      {"dnsward_nft_external_changes_total", Type::Counter, "Times someone else changed dnsward's table or sets.", "", [](auto& s) { return s.nft ? double(s.nft->external_changes()) : 0.0; }},
      {"dnsward_nft_elements_known", Type::Gauge, "Set elements dnsward added and believes still held (its view of the sets).", "", [](auto& s) { return s.nft ? double(s.nft->known()) : 0.0; }},
      {"dnsward_cache_entries", Type::Gauge, "Answers in the cache.", "", [](auto& s) { return double(s.pipeline->cache_size()); }},
      {"dnsward_answers_capped_total", Type::Counter, "Answers that carried more addresses than --max-answer-addresses (the extra records were removed).", "", [](auto& s) { return double(c(s).capped_answers); }},
      {"dnsward_capped_addresses_total", Type::Counter, "Addresses removed from answers by --max-answer-addresses.", "", [](auto& s) { return double(c(s).capped_addresses); }},
      {"dnsward_nft_set_elements", Type::Gauge, "Elements dnsward knows each set holds (from its own adds and dumps of the kernel's sets).", "family=\"ipv4\"", [](auto& s) { return s.nft ? double(s.nft->held(AF_INET, mono_ms())) : 0.0; }},
      {"dnsward_nft_set_elements", Type::Gauge, "", "family=\"ipv6\"", [](auto& s) { return s.nft ? double(s.nft->held(AF_INET6, mono_ms())) : 0.0; }},
      {"dnsward_nft_set_size", Type::Gauge, "Each set's declared size (0: none; a full set fails answers closed).", "family=\"ipv4\"", [](auto& s) { return s.nft ? double(s.nft->size_of(AF_INET)) : 0.0; }},
      {"dnsward_nft_set_size", Type::Gauge, "", "family=\"ipv6\"", [](auto& s) { return s.nft ? double(s.nft->size_of(AF_INET6)) : 0.0; }},
      {"dnsward_nft_foreign_set_rules_total", Type::Counter, "Rules seen that change dnsward's sets from the packet path (changes dnsward cannot see).", "", [](auto& s) { return s.nft ? double(s.nft->foreign_set_rules()) : 0.0; }},
      {"dnsward_revoke_failures_total", Type::Counter, "Revocations the kernel refused (the addresses may still be held).", "", [](auto& s) { return double(c(s).revoke_failures); }},
      {"dnsward_reloads_total", Type::Counter, "Policy reloads (SIGHUP).", "result=\"ok\"", [](auto& s) { return double(c(s).reloads_ok); }},
      {"dnsward_reloads_total", Type::Counter, "", "result=\"failed\"", [](auto& s) { return double(c(s).reloads_failed); }},
      {"dnsward_revoked_addresses_total", Type::Counter, "Addresses deleted from the sets because a reload removed their entries.", "", [](auto& s) { return double(c(s).revoked); }},
      {"dnsward_policy_entries", Type::Gauge, "Entries of the policy in force.", "", [](auto& s) { return double(s.pipeline->policy().size()); }},
      {"dnsward_start_time_seconds", Type::Gauge, "When dnsward started (unix time).", "", [](auto& s) { return double(s.start_unix); }},
  };
  return t;
}

void histogram(std::string& out, const char* name, const char* help, const Histogram& h) {
  out += fmt::format("# HELP {} {}\n# TYPE {} histogram\n", name, help, name);
  uint64_t cum = 0;
  for (int i = 0; i < Histogram::kBuckets; ++i) {
    cum += h.counts[i];
    out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, Histogram::kBounds[i], cum);
  }
  out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", name, h.count, name,
                     h.sum, name, h.count);
}

}  // namespace

std::string render_metrics(const MetricsSources& s) {
  std::string out;
  const char* last = "";
  for (const Metric& m : table()) {
    if (std::strcmp(m.name, last) != 0) {
      out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", m.name, m.help, m.name,
                         m.type == Type::Counter ? "counter" : "gauge");
      last = m.name;
    }
    const double v = m.read(s);
    if (*m.labels) out += fmt::format("{}{{{}}} {}\n", m.name, m.labels, v);
    else out += fmt::format("{} {}\n", m.name, v);
  }
  out += fmt::format("# HELP dnsward_policy_info The policy in force; its version is the one in logs and EDE texts.\n"
                     "# TYPE dnsward_policy_info gauge\ndnsward_policy_info{{version=\"{}\"}} 1\n",
                     s.pipeline->policy().version());
  histogram(out, "dnsward_upstream_latency_seconds", "Time from forwarding a query to its upstream answer.",
            s.pipeline->upstream_latency());
  histogram(out, "dnsward_vouch_latency_seconds", "Time to put an answer's addresses in the sets (netlink batch and ACK).",
            s.pipeline->vouch_latency());
  return out;
}

bool write_metrics_file(const std::string& path, const MetricsSources& s, std::string& err) {
  // The same atomic write as the state file: node_exporter never reads half a file.
  const std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "w");
  if (!f) {
    err = tmp + ": " + std::strerror(errno);
    return false;
  }
  const std::string text = render_metrics(s);
  const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size() && std::fflush(f) == 0 &&
                  fsync(fileno(f)) == 0;
  std::fclose(f);
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    err = path + ": " + std::strerror(errno);
    std::remove(tmp.c_str());
    return false;
  }
  return true;
}

namespace {
MHD_Result on_request(void* cls, MHD_Connection* conn, const char* url, const char* method,
                      const char*, const char*, size_t*, void**) {
  const auto* sources = static_cast<const MetricsSources*>(cls);
  const bool get = std::strcmp(method, "GET") == 0 || std::strcmp(method, "HEAD") == 0;
  const bool metrics = std::strcmp(url, "/metrics") == 0;
  const std::string body = !get ? "method not allowed\n" : metrics ? render_metrics(*sources) : "not found: try /metrics\n";
  MHD_Response* r = MHD_create_response_from_buffer(body.size(), const_cast<char*>(body.data()),
                                                    MHD_RESPMEM_MUST_COPY);
  MHD_add_response_header(r, "Content-Type", metrics && get ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain");
  const MHD_Result q = MHD_queue_response(conn, !get ? MHD_HTTP_METHOD_NOT_ALLOWED : metrics ? MHD_HTTP_OK : MHD_HTTP_NOT_FOUND, r);
  MHD_destroy_response(r);
  return q;
}
}  // namespace

MetricsServer::MetricsServer(EventLoop& loop, const std::string& listen, const MetricsSources& sources)
    : loop_(loop), sources_(sources) {
  auto ep = parse_endpoint(listen, std::nullopt);
  if (!ep) throw std::runtime_error("--metrics-listen " + listen + ": expected ADDR:PORT");
  const bool loopback =
      ep->family() == AF_INET
          ? (ntohl(reinterpret_cast<const sockaddr_in*>(&ep->addr)->sin_addr.s_addr) >> 24) == 127
          : IN6_IS_ADDR_LOOPBACK(&reinterpret_cast<const sockaddr_in6*>(&ep->addr)->sin6_addr);
  if (!loopback)
    throw std::runtime_error("--metrics-listen " + listen + ": metrics are served on loopback only");
  const unsigned flags = MHD_USE_EPOLL | (ep->family() == AF_INET6 ? MHD_USE_IPv6 : 0);
  daemon_ = MHD_start_daemon(flags, ep->port(), nullptr, nullptr, &on_request, &sources_,
                             MHD_OPTION_SOCK_ADDR, reinterpret_cast<const sockaddr*>(&ep->addr),
                             MHD_OPTION_CONNECTION_TIMEOUT, 10u, MHD_OPTION_CONNECTION_LIMIT, 16u,
                             MHD_OPTION_END);
  if (!daemon_) throw std::runtime_error("--metrics-listen " + listen + ": cannot serve there");
  epoll_fd_ = MHD_get_daemon_info(daemon_, MHD_DAEMON_INFO_EPOLL_FD)->epoll_fd;
  loop_.watch(epoll_fd_, EPOLLIN, [this](uint32_t) { run(); });
  run();
}

MetricsServer::~MetricsServer() {
  if (timer_) loop_.cancel(timer_);
  loop_.unwatch(epoll_fd_);
  MHD_stop_daemon(daemon_);
}

void MetricsServer::run() {
  MHD_run(daemon_);
  if (timer_) loop_.cancel(timer_);
  timer_ = 0;
  MHD_UNSIGNED_LONG_LONG ms = 0;
  if (MHD_get_timeout(daemon_, &ms) == MHD_YES)
    timer_ = loop_.after(ms, [this] {
      timer_ = 0;
      run();
    });
}

}  // namespace dnsward
