#include "dnsward/config.hpp"

#include <arpa/inet.h>
#include <ifaddrs.h>

#include <boost/program_options.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <fstream>
#include <sstream>
#include <variant>

namespace po = boost::program_options;

namespace dnsward {
namespace {

enum class Kind { Flag, Int, Text, List };

/// One option, declared once. Scalars name their ServeConfig field; text and list options
/// are converted by parse_serve_config() because they need parsing of their own.
struct OptionSpec {
  const char* name;
  Kind kind;
  const char* metavar;
  const char* help;
  const char* default_text;  // shown in --help
  long def = 0, min = 0, max = 0;
  std::variant<std::monostate, bool ServeConfig::*, uint32_t ServeConfig::*,
               uint16_t ServeConfig::*, std::string ServeConfig::*> field = {};
};

const std::vector<OptionSpec>& serve_options() {
  static const std::vector<OptionSpec> table = {
      {"config", Kind::Text, "FILE", "read options from FILE: one 'key = value' per line, same names as here, '#' comments", "none"},
      {"listen", Kind::List, "ADDR:PORT", "address to serve DNS on, UDP and TCP; IPv6 as [::1]:53", "127.0.0.1:53"},
      {"upstream", Kind::List, "ADDR[:PORT]", "DNS server that answers allowed names; several fail over in order", "the nameservers of /etc/resolv.conf"},
      {"allowlist", Kind::List, "FILE", "allowlist file; the entries of all files are merged", "the embedded zones/default.allow"},
      {"no-nft", Kind::Flag, "", "run without the nftables hook: answers are not vouched for in the firewall", "off", 0, 0, 1, &ServeConfig::no_nft},
      {"negative-ttl", Kind::Int, "SECONDS", "TTL of the SOA in denials: how long stubs cache a denial (RFC 2308)", "30", 30, 0, 86400, &ServeConfig::negative_ttl},
      {"udp-payload", Kind::Int, "BYTES", "largest UDP reply we send and the EDNS size we advertise (DNS flag day 2020)", "1232", 1232, 512, 4096, &ServeConfig::udp_payload},
      {"upstream-timeout", Kind::Int, "MS", "first per-try timeout of an upstream query; c-ares doubles it on later rounds", "1000", 1000, 50, 30000, &ServeConfig::upstream_timeout_ms},
      {"upstream-tries", Kind::Int, "N", "rounds over the upstream list before the client gets SERVFAIL", "2", 2, 1, 5, &ServeConfig::upstream_tries},
      {"max-inflight", Kind::Int, "N", "upstream queries in flight; beyond it clients get SERVFAIL at once", "4096", 4096, 1, 60000, &ServeConfig::max_inflight},
      {"tcp-max-connections", Kind::Int, "N", "concurrent TCP clients; at the cap the longest-idle connection with nothing pending gives way (RFC 7766 6.2.3), and a new one is refused only if every connection is busy", "256", 256, 1, 65536, &ServeConfig::tcp_max_connections},
      {"tcp-idle-timeout", Kind::Int, "MS", "close a TCP connection with no complete query and nothing pending for this long (RFC 7766 6.2.3)", "10000", 10000, 100, 3600000, &ServeConfig::tcp_idle_timeout_ms},
      {"tcp-max-pipelined", Kind::Int, "N", "queries in progress per TCP connection; reading pauses beyond it", "32", 32, 1, 1024, &ServeConfig::tcp_max_pipelined},
      {"log-level", Kind::Text, "LEVEL", "debug, info, warn or error", "info"},
      {"log-format", Kind::Text, "FORMAT", "logfmt (key=value) or json: one line per event on stderr", "logfmt", 0, 0, 0, &ServeConfig::log_format},
      {"nft-family", Kind::Text, "FAMILY", "nftables family of dnsward's table: inet, ip or ip6", "inet", 0, 0, 0, &ServeConfig::nft_family},
      {"nft-table", Kind::Text, "NAME", "nftables table that holds the sets (created if missing)", "dnsward", 0, 0, 0, &ServeConfig::nft_table},
      {"nft-set4", Kind::Text, "NAME", "set of vouched IPv4 addresses (type ipv4_addr, flags timeout)", "allowed4", 0, 0, 0, &ServeConfig::nft_set4},
      {"nft-set6", Kind::Text, "NAME", "set of vouched IPv6 addresses (type ipv6_addr, flags timeout)", "allowed6", 0, 0, 0, &ServeConfig::nft_set6},
      {"nft-set-size", Kind::Int, "N", "size of each set when dnsward creates it; a full set fails the answer (SERVFAIL)", "65536", 65536, 1024, 16777216, &ServeConfig::nft_set_size},
      {"nft-refresh", Kind::Text, "MODE", "how an element's timeout is extended: auto (probe the kernel), update (in place, kernel 6.12+) or replace (delete+add)", "auto", 0, 0, 0, &ServeConfig::nft_refresh},
      {"min-ttl", Kind::Int, "SECONDS", "shortest element timeout before grace, whatever the answer's TTL (0 would mean forever)", "30", 30, 1, 86400, &ServeConfig::min_ttl},
      {"max-ttl", Kind::Int, "SECONDS", "longest element timeout before grace; TTLs sent to clients are lowered to it", "3600", 3600, 1, 604800, &ServeConfig::max_ttl},
      {"grace", Kind::Int, "SECONDS", "added to every element timeout, so a client that uses an address until its TTL ends still gets through", "30", 30, 1, 3600, &ServeConfig::grace},
      {"mode", Kind::Text, "MODE", "enforce (deny names off the list) or audit (forward every name, vouch its addresses, log and count what enforce would deny)", "enforce", 0, 0, 0, &ServeConfig::mode},
      {"state", Kind::Text, "FILE", "keep usage counts (per entry, per denied name) in FILE, written atomically every --state-interval and on SIGTERM", "none", 0, 0, 0, &ServeConfig::state},
      {"state-interval", Kind::Int, "SECONDS", "how often the state file is written", "60", 60, 1, 86400, &ServeConfig::state_interval},
      {"state-max-names", Kind::Int, "N", "denied names (and would-deny names) kept in the state, least recently seen dropped first: bounds the state file", "10000", 10000, 1, 1000000, &ServeConfig::state_max_names},
      {"metrics-listen", Kind::Text, "ADDR:PORT", "serve Prometheus metrics at http://ADDR:PORT/metrics (loopback only)", "none", 0, 0, 0, &ServeConfig::metrics_listen},
      {"metrics-file", Kind::Text, "FILE", "write the same metrics to FILE atomically every --metrics-interval (node_exporter's textfile collector)", "none", 0, 0, 0, &ServeConfig::metrics_file},
      {"metrics-interval", Kind::Int, "SECONDS", "how often --metrics-file is written", "15", 15, 1, 3600, &ServeConfig::metrics_interval},
      {"user", Kind::Text, "NAME", "after binding its sockets and opening netlink as root, run as this user keeping only CAP_NET_ADMIN (no other capability, no new privileges)", "dnsward, if that user exists", 0, 0, 0, &ServeConfig::user},
      {"cache-size", Kind::Int, "N", "answers kept in the cache (0 turns it off)", "10000", 10000, 0, 10000000, &ServeConfig::cache_size},
      {"cache-bytes", Kind::Int, "BYTES", "bytes of answers the cache may hold, least recently used evicted first: one hostile zone's 64 KiB answers cannot fill memory", "33554432 (32 MiB)", 32l << 20, 0, 1l << 31, &ServeConfig::cache_bytes},
      {"max-answer-addresses", Kind::Int, "N", "addresses one answer may vouch for; records (and HTTPS/SVCB hints) beyond it are removed from the reply, with an EDE", "64", 64, 1, 4096, &ServeConfig::max_answer_addresses},
  };
  return table;
}

po::options_description describe() {
  po::options_description desc;
  desc.add_options()("help,h", "");
  for (const auto& o : serve_options()) {
    switch (o.kind) {
      case Kind::Flag: desc.add_options()(o.name, po::bool_switch(), ""); break;
      case Kind::Int: desc.add_options()(o.name, po::value<long>(), ""); break;
      case Kind::Text: desc.add_options()(o.name, po::value<std::string>(), ""); break;
      case Kind::List:
        desc.add_options()(o.name, po::value<std::vector<std::string>>()->composing(), "");
        break;
    }
  }
  return desc;
}

std::vector<Endpoint> resolv_conf_servers(const std::string& path) {
  std::vector<Endpoint> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string key, addr;
    if (ls >> key >> addr && key == "nameserver")
      if (auto e = parse_endpoint(addr, 53)) out.push_back(*e);
  }
  return out;
}

bool is_local_address(const Endpoint& e) {
  if (e.family() == AF_INET) {
    const auto* s = reinterpret_cast<const sockaddr_in*>(&e.addr);
    if ((ntohl(s->sin_addr.s_addr) >> 24) == 127) return true;
  } else if (e.family() == AF_INET6) {
    const auto* s = reinterpret_cast<const sockaddr_in6*>(&e.addr);
    if (IN6_IS_ADDR_LOOPBACK(&s->sin6_addr)) return true;
  }
  ifaddrs* ifs = nullptr;
  if (getifaddrs(&ifs) != 0) return false;
  bool local = false;
  for (ifaddrs* i = ifs; i && !local; i = i->ifa_next) {
    if (!i->ifa_addr || i->ifa_addr->sa_family != e.family()) continue;
    if (e.family() == AF_INET)
      local = reinterpret_cast<sockaddr_in*>(i->ifa_addr)->sin_addr.s_addr ==
              reinterpret_cast<const sockaddr_in*>(&e.addr)->sin_addr.s_addr;
    else
      local = std::memcmp(&reinterpret_cast<sockaddr_in6*>(i->ifa_addr)->sin6_addr,
                          &reinterpret_cast<const sockaddr_in6*>(&e.addr)->sin6_addr, 16) == 0;
  }
  freeifaddrs(ifs);
  return local;
}

}  // namespace

uint16_t Endpoint::port() const {
  if (family() == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in*>(&addr)->sin_port);
  return ntohs(reinterpret_cast<const sockaddr_in6*>(&addr)->sin6_port);
}

bool Endpoint::same_address(const Endpoint& o) const {
  if (family() != o.family() || port() != o.port()) return false;
  if (family() == AF_INET)
    return reinterpret_cast<const sockaddr_in*>(&addr)->sin_addr.s_addr ==
           reinterpret_cast<const sockaddr_in*>(&o.addr)->sin_addr.s_addr;
  return std::memcmp(&reinterpret_cast<const sockaddr_in6*>(&addr)->sin6_addr,
                     &reinterpret_cast<const sockaddr_in6*>(&o.addr)->sin6_addr, 16) == 0;
}

bool Endpoint::is_wildcard() const {
  if (family() == AF_INET)
    return reinterpret_cast<const sockaddr_in*>(&addr)->sin_addr.s_addr == INADDR_ANY;
  return IN6_IS_ADDR_UNSPECIFIED(&reinterpret_cast<const sockaddr_in6*>(&addr)->sin6_addr);
}

std::optional<Endpoint> parse_endpoint(const std::string& s, std::optional<uint16_t> default_port) {
  std::string host = s, port;
  if (!s.empty() && s.front() == '[') {
    const auto close = s.find(']');
    if (close == std::string::npos) return std::nullopt;
    host = s.substr(1, close - 1);
    if (close + 1 < s.size()) {
      if (s[close + 1] != ':') return std::nullopt;
      port = s.substr(close + 2);
      if (port.empty()) return std::nullopt;
    }
  } else if (std::count(s.begin(), s.end(), ':') == 1) {
    host = s.substr(0, s.find(':'));
    port = s.substr(s.find(':') + 1);
    if (port.empty()) return std::nullopt;
  }
  long p = -1;
  if (!port.empty()) {
    if (port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos)
      return std::nullopt;
    p = std::stol(port);
    if (p < 1 || p > 65535) return std::nullopt;
  } else if (default_port) {
    p = *default_port;
  } else {
    return std::nullopt;
  }
  Endpoint e;
  e.text = s;
  auto* v4 = reinterpret_cast<sockaddr_in*>(&e.addr);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&e.addr);
  if (inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(uint16_t(p));
    e.len = sizeof(sockaddr_in);
  } else if (inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(uint16_t(p));
    e.len = sizeof(sockaddr_in6);
  } else {
    return std::nullopt;
  }
  return e;
}

std::string serve_help() {
  std::string h =
      "usage: dnsward serve [OPTION]...\n\n"
      "Serve DNS: names on the allowlist are forwarded upstream, all others get NXDOMAIN\n"
      "with an Extended DNS Error (RFC 8914, code 15 Blocked).\n\nOptions:\n";
  for (const auto& o : serve_options()) {
    std::string flag = fmt::format("--{}{}{}", o.name, *o.metavar ? " " : "", o.metavar);
    std::string extra = fmt::format("default: {}", o.default_text);
    if (o.kind == Kind::Int) extra += fmt::format("; {}..{}", o.min, o.max);
    if (o.kind == Kind::List) extra += "; repeatable";
    h += fmt::format("  {:<28} {} ({})\n", flag, o.help, extra);
  }
  h += fmt::format("  {:<28} {}\n", "--help", "show this help");
  return h;
}

ParseOutcome parse_serve_config(const std::vector<std::string>& args, const std::string& resolv_conf) {
  ParseOutcome out;
  const po::options_description desc = describe();
  po::variables_map vm;
  // Boost.Program_options 1.74 builds its error messages by replacing %placeholders% in
  // the offending text, and loops for ever when that text holds one itself (found by
  // fuzzing). No dnsward option needs a '%', so refuse it before Boost sees it.
  for (const auto& a : args)
    if (a.find('%') != std::string::npos) {
      out.error = fmt::format("'{}': '%' is not allowed in options", a.substr(0, 80));
      return out;
    }
  try {
    po::store(po::command_line_parser(args).options(desc).positional({}).run(), vm);
    if (vm.count("help")) {
      out.help_shown = true;
      return out;
    }
    if (vm.count("config")) {
      const auto path = vm["config"].as<std::string>();
      std::ifstream file(path);
      if (!file) {
        out.error = fmt::format("--config {}: cannot open: {}", path, std::strerror(errno));
        return out;
      }
      std::ostringstream text;
      text << file.rdbuf();
      if (text.str().find('%') != std::string::npos) {
        out.error = fmt::format("--config {}: '%' is not allowed in options", path);
        return out;
      }
      std::istringstream in(text.str());
      try {
        po::store(po::parse_config_file(in, desc), vm);
      } catch (const po::error& e) {
        out.error = fmt::format("--config {}: {}", path, e.what());
        return out;
      }
    }
    po::notify(vm);
  } catch (const po::error& e) {
    out.error = e.what();
    return out;
  }

  ServeConfig c;
  for (const auto& o : serve_options()) {
    if (o.kind == Kind::Int) {
      long v = vm.count(o.name) ? vm[o.name].as<long>() : o.def;
      if (v < o.min || v > o.max) {
        out.error = fmt::format("--{} {}: must be between {} and {}", o.name, v, o.min, o.max);
        return out;
      }
      if (auto f = std::get_if<uint32_t ServeConfig::*>(&o.field)) c.*(*f) = uint32_t(v);
      if (auto f = std::get_if<uint16_t ServeConfig::*>(&o.field)) c.*(*f) = uint16_t(v);
    } else if (o.kind == Kind::Text) {
      if (auto f = std::get_if<std::string ServeConfig::*>(&o.field))
        if (vm.count(o.name)) c.*(*f) = vm[o.name].as<std::string>();
    } else if (o.kind == Kind::Flag) {
      if (auto f = std::get_if<bool ServeConfig::*>(&o.field))
        c.*(*f) = vm.count(o.name) && vm[o.name].as<bool>();
    }
  }
  auto list = [&](const char* name) {
    return vm.count(name) ? vm[name].as<std::vector<std::string>>() : std::vector<std::string>{};
  };

  if (vm.count("log-level")) {
    const auto l = vm["log-level"].as<std::string>();
    if (l == "debug") c.log_level = LogLevel::Debug;
    else if (l == "info") c.log_level = LogLevel::Info;
    else if (l == "warn") c.log_level = LogLevel::Warn;
    else if (l == "error") c.log_level = LogLevel::Error;
    else {
      out.error = fmt::format("--log-level {}: must be debug, info, warn or error", l);
      return out;
    }
  }

  if (c.nft_family == "inet") c.nft_family_code = 1;       // NFPROTO_INET
  else if (c.nft_family == "ip") c.nft_family_code = 2;    // NFPROTO_IPV4
  else if (c.nft_family == "ip6") c.nft_family_code = 10;  // NFPROTO_IPV6
  else {
    out.error = fmt::format("--nft-family {}: must be inet, ip or ip6", c.nft_family);
    return out;
  }
  for (const auto& [opt, name] : {std::pair{"nft-table", c.nft_table}, std::pair{"nft-set4", c.nft_set4},
                                   std::pair{"nft-set6", c.nft_set6}}) {
    // nftables identifiers: a letter or underscore, then letters, digits, underscores.
    const bool ok = !name.empty() && name.size() < 64 &&
                    (std::isalpha(static_cast<unsigned char>(name[0])) || name[0] == '_') &&
                    std::all_of(name.begin(), name.end(), [](char ch) {
                      return std::isalnum(static_cast<unsigned char>(ch)) || ch == '_';
                    });
    if (!ok) {
      out.error = fmt::format("--{} {}: not an nftables name (letters, digits, '_')", opt, name);
      return out;
    }
  }
  if (c.nft_set4 == c.nft_set6) {
    out.error = "--nft-set4 and --nft-set6 must name different sets";
    return out;
  }
  if (c.nft_refresh != "auto" && c.nft_refresh != "update" && c.nft_refresh != "replace") {
    out.error = fmt::format("--nft-refresh {}: must be auto, update or replace", c.nft_refresh);
    return out;
  }
  if (c.log_format != "logfmt" && c.log_format != "json") {
    out.error = fmt::format("--log-format {}: must be logfmt or json", c.log_format);
    return out;
  }
  if (c.mode != "enforce" && c.mode != "audit") {
    out.error = fmt::format("--mode {}: must be enforce or audit", c.mode);
    return out;
  }
  c.audit = c.mode == "audit";
  c.user_explicit = vm.count("user") != 0;
  if (c.min_ttl > c.max_ttl) {
    out.error = fmt::format("--min-ttl {} is above --max-ttl {}", c.min_ttl, c.max_ttl);
    return out;
  }

  auto listens = list("listen");
  if (listens.empty()) listens = {"127.0.0.1:53"};
  for (const auto& s : listens) {
    auto e = parse_endpoint(s, std::nullopt);
    if (!e) {
      out.error = fmt::format("--listen {}: expected ADDR:PORT or [IPV6]:PORT", s);
      return out;
    }
    for (const auto& prev : c.listen)
      if (prev.same_address(*e)) {
        out.error = fmt::format("--listen {}: given twice", s);
        return out;
      }
    c.listen.push_back(*e);
  }

  const auto ups = list("upstream");
  c.upstream_source = ups.empty() ? resolv_conf : "--upstream";
  for (const auto& s : ups) {
    auto e = parse_endpoint(s, 53);
    if (!e) {
      out.error = fmt::format("--upstream {}: expected ADDR, ADDR:PORT or [IPV6]:PORT", s);
      return out;
    }
    c.upstreams.push_back(*e);
  }
  if (c.upstreams.empty()) c.upstreams = resolv_conf_servers(resolv_conf);
  if (c.upstreams.empty()) {
    out.error = fmt::format("no --upstream given and {} names no nameserver", resolv_conf);
    return out;
  }

  // A forwarding loop: our own listen address as upstream would send every allowed query
  // back to ourselves until the in-flight cap is exhausted.
  for (const auto& u : c.upstreams)
    for (const auto& l : c.listen)
      if (u.same_address(l) || (l.is_wildcard() && l.family() == u.family() &&
                                l.port() == u.port() && is_local_address(u))) {
        out.error = fmt::format("upstream {} (from {}) is dnsward's own listen address {}: "
                                "that is a forwarding loop",
                                u.text, c.upstream_source, l.text);
        return out;
      }

  c.allowlists = list("allowlist");
  out.config = std::move(c);
  return out;
}

}  // namespace dnsward
