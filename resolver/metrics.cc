#include "dnsward/metrics.hpp"
#include "dnsward/nfqueue.hpp"
#include "dnsward/sni_guard.hpp"

#include <dlfcn.h>
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
#include <type_traits>
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

enum class Type { Counter, Gauge, Histogram, Info };

const char* type_name(Type t) {
  switch (t) {
    case Type::Counter: return "counter";
    case Type::Gauge: return "gauge";
    case Type::Histogram: return "histogram";
    case Type::Info: return "gauge";
  }
  return "untyped";
}

/// One row of DNSWARD_METRICS, with how to render its value from a snapshot.
struct Row {
  const char* name;
  Type type;
  const char* labels;  // exposition syntax, or ""; for Info rows, the label's name
  bool stats;
  const char* help;
  std::function<void(const Row&, const MetricsSnapshot&, std::string&)> render;
};

void sample(std::string& out, const char* name, const char* labels, const std::string& value) {
  if (*labels) out += fmt::format("{}{{{}}} {}\n", name, labels, value);
  else out += fmt::format("{} {}\n", name, value);
}

/// Label values written as the text format wants them (backslash, quote, newline escaped).
std::string label_value(const std::string& v) {
  std::string out;
  for (char ch : v) {
    if (ch == '\\' || ch == '"') out += '\\', out += ch;
    else if (ch == '\n') out += "\\n";
    else out += ch;
  }
  return out;
}

void histogram(std::string& out, const char* name, const Histogram& h) {
  uint64_t cum = 0;
  for (int i = 0; i < Histogram::kBuckets; ++i) {
    cum += h.counts[i];
    out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, Histogram::kBounds[i], cum);
  }
  out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", name, h.count, name,
                     h.sum, name, h.count);
}

// The table's rows as data, each with the renderer of its kind.
#define DNSWARD_ROW_COUNTER_(member_, name_, labels_, stats_, help_)                         \
  {name_, Type::Counter, labels_, stats_, help_,                                              \
   [](const Row& r, const MetricsSnapshot& m, std::string& out) {                             \
     sample(out, r.name, r.labels, std::to_string(m.counters.member_));                       \
   }},
#define DNSWARD_ROW_READING_(member_, type_, name_, labels_, stats_, help_, expr_)            \
  {name_, Type::type_, labels_, stats_, help_,                                                \
   [](const Row& r, const MetricsSnapshot& m, std::string& out) {                             \
     sample(out, r.name, r.labels, fmt::format("{}", m.member_));                             \
   }},
#define DNSWARD_ROW_HISTOGRAM_(member_, name_, help_, expr_)                                   \
  {name_, Type::Histogram, "", false, help_,                                                  \
   [](const Row& r, const MetricsSnapshot& m, std::string& out) { histogram(out, r.name, m.member_); }},
#define DNSWARD_ROW_INFO_(member_, name_, label_, help_, expr_)                                \
  {name_, Type::Info, label_, false, help_,                                                   \
   [](const Row& r, const MetricsSnapshot& m, std::string& out) {                             \
     out += fmt::format("{}{{{}=\"{}\"}} 1\n", r.name, r.labels, label_value(m.member_));     \
   }},

const std::vector<Row>& rows() {
  static const std::vector<Row> t = {DNSWARD_METRICS(DNSWARD_ROW_COUNTER_, DNSWARD_ROW_READING_,
                                                     DNSWARD_ROW_HISTOGRAM_, DNSWARD_ROW_INFO_)};
  return t;
}

}  // namespace

MetricsSnapshot take_snapshot(const MetricsSources& s) {
  MetricsSnapshot m;
  m.counters = s.pipeline->counters();
#define DNSWARD_READ_(member_, type_, name_, labels_, stats_, help_, expr_) m.member_ = double(expr_);
#define DNSWARD_READ_INFO_(member_, name_, label_, help_, expr_) m.member_ = (expr_);
#define DNSWARD_READ_HISTOGRAM_(member_, name_, help_, expr_) m.member_ = (expr_);
  DNSWARD_METRICS(DNSWARD_METRICS_NONE_, DNSWARD_READ_, DNSWARD_READ_HISTOGRAM_, DNSWARD_READ_INFO_)
  return m;
}

std::string render_metrics(const MetricsSnapshot& m) {
  // A family's samples must be together, after its one HELP and TYPE (text format 0.0.4), so
  // each name is rendered once, at its first row, with every row of that name.
  std::string out;
  const auto& t = rows();
  for (std::size_t i = 0; i < t.size(); ++i) {
    bool first = true;
    for (std::size_t j = 0; j < i && first; ++j) first = std::strcmp(t[j].name, t[i].name) != 0;
    if (!first) continue;
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", t[i].name, t[i].help, t[i].name, type_name(t[i].type));
    for (std::size_t j = i; j < t.size(); ++j)
      if (std::strcmp(t[j].name, t[i].name) == 0) t[j].render(t[j], m, out);
  }
  return out;
}

std::string render_metrics(const MetricsSources& s) { return render_metrics(take_snapshot(s)); }

std::string stats_line(const MetricsSnapshot& m) {
  std::string out;
  for (const Row& r : rows()) {
    if (!r.stats) continue;
    std::string one;
    r.render(r, m, one);  // "name{labels} value\n", exactly the exposition's sample
    one.pop_back();
    const std::size_t sp = one.rfind(' ');
    std::string key = one.substr(0, sp);
    // logfmt keys hold no '=' or '"' (and log.cc's JSON form copies keys verbatim).
    std::string safe;
    for (char ch : key)
      if (ch == '=') safe += ':';
      else if (ch != '"') safe += ch;
    out += fmt::format("{}{}={}", out.empty() ? "" : " ", safe, one.substr(sp + 1));
  }
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

// libmicrohttpd, resolved with dlopen by the first MetricsServer. Linked, it would map itself
// and gnutls, p11-kit, nettle, hogweed, gmp and tasn1 into every dnsward, about 2 MB of RSS
// that only --metrics-listen uses (issue 10). The header gives the types; the soname is the
// ABI that header describes (Debian 12's libmicrohttpd12).
constexpr const char* kMhdSoname = "libmicrohttpd.so.12";

struct Mhd {
  decltype(&MHD_start_daemon) start_daemon;
  decltype(&MHD_stop_daemon) stop_daemon;
  decltype(&MHD_get_daemon_info) get_daemon_info;
  decltype(&MHD_run) run;
  decltype(&MHD_get_timeout) get_timeout;
  decltype(&MHD_create_response_from_buffer) create_response_from_buffer;
  decltype(&MHD_add_response_header) add_response_header;
  decltype(&MHD_queue_response) queue_response;
  decltype(&MHD_destroy_response) destroy_response;
};

/// The library, loaded once; throws std::runtime_error naming the soname if it cannot be.
const Mhd& mhd() {
  static const Mhd lib = [] {
    void* h = dlopen(kMhdSoname, RTLD_NOW | RTLD_LOCAL);
    if (!h)
      throw std::runtime_error(fmt::format("--metrics-listen needs {} (Debian package libmicrohttpd12): {}",
                                           kMhdSoname, dlerror()));
    auto sym = [h](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(h, name));
      if (!fn) throw std::runtime_error(fmt::format("--metrics-listen: {} has no {}", kMhdSoname, name));
    };
    Mhd m{};
    sym(m.start_daemon, "MHD_start_daemon");
    sym(m.stop_daemon, "MHD_stop_daemon");
    sym(m.get_daemon_info, "MHD_get_daemon_info");
    sym(m.run, "MHD_run");
    sym(m.get_timeout, "MHD_get_timeout");
    sym(m.create_response_from_buffer, "MHD_create_response_from_buffer");
    sym(m.add_response_header, "MHD_add_response_header");
    sym(m.queue_response, "MHD_queue_response");
    sym(m.destroy_response, "MHD_destroy_response");
    return m;  // never dlclose()d: the process keeps it as long as it serves metrics
  }();
  return lib;
}

MHD_Result on_request(void* cls, MHD_Connection* conn, const char* url, const char* method,
                      const char*, const char*, size_t*, void**) {
  const Mhd& lib = mhd();
  const auto* sources = static_cast<const MetricsSources*>(cls);
  const bool get = std::strcmp(method, "GET") == 0 || std::strcmp(method, "HEAD") == 0;
  const bool metrics = std::strcmp(url, "/metrics") == 0;
  const std::string body = !get ? "method not allowed\n" : metrics ? render_metrics(*sources) : "not found: try /metrics\n";
  MHD_Response* r = lib.create_response_from_buffer(body.size(), const_cast<char*>(body.data()),
                                                    MHD_RESPMEM_MUST_COPY);
  lib.add_response_header(r, "Content-Type", metrics && get ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain");
  const MHD_Result q = lib.queue_response(conn, !get ? MHD_HTTP_METHOD_NOT_ALLOWED : metrics ? MHD_HTTP_OK : MHD_HTTP_NOT_FOUND, r);
  lib.destroy_response(r);
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
  const Mhd& lib = mhd();
  const unsigned flags = MHD_USE_EPOLL | (ep->family() == AF_INET6 ? MHD_USE_IPv6 : 0);
  daemon_ = lib.start_daemon(flags, ep->port(), nullptr, nullptr, &on_request, &sources_,
                             MHD_OPTION_SOCK_ADDR, reinterpret_cast<const sockaddr*>(&ep->addr),
                             MHD_OPTION_CONNECTION_TIMEOUT, 10u, MHD_OPTION_CONNECTION_LIMIT, 16u,
                             MHD_OPTION_END);
  if (!daemon_) throw std::runtime_error("--metrics-listen " + listen + ": cannot serve there");
  epoll_fd_ = lib.get_daemon_info(daemon_, MHD_DAEMON_INFO_EPOLL_FD)->epoll_fd;
  loop_.watch(epoll_fd_, EPOLLIN, [this](uint32_t) { run(); });
  run();
}

MetricsServer::~MetricsServer() {
  if (timer_) loop_.cancel(timer_);
  loop_.unwatch(epoll_fd_);
  mhd().stop_daemon(daemon_);
}

void MetricsServer::run() {
  const Mhd& lib = mhd();
  lib.run(daemon_);
  if (timer_) loop_.cancel(timer_);
  timer_ = 0;
  MHD_UNSIGNED_LONG_LONG ms = 0;
  if (lib.get_timeout(daemon_, &ms) == MHD_YES)
    timer_ = loop_.after(ms, [this] {
      timer_ = 0;
      run();
    });
}

}  // namespace dnsward
