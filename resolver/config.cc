#include "dnsward/config.hpp"

#include <arpa/inet.h>
#include <ifaddrs.h>

#include <boost/program_options.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <type_traits>

#include "dnsward/log.hpp"
#include "dnsward/vouch_ledger.hpp"

namespace po = boost::program_options;

namespace dnsward {
namespace {

using K = OptionKind;
constexpr unsigned kBoth = kServe | kNftRules;

// Words nft 1.0.6 (Debian 12) reads as keywords where `nft-rules` prints a table or set
// name (`table inet NAME`, `set NAME`, `@NAME`), so that the printed ruleset would not load;
// quoting does not help in 1.0.6. Measured, not guessed: every word of nftables' scanner
// (src/scanner.l) and every identifier in libnftables.so.1 was tried in each of the three
// positions with the real `nft -c` (test/data/nft_words.txt; e2e_options checks that none
// of them is both accepted here and refused by nft). Sorted, for binary_search.
constexpr std::string_view kNftKeywords[] = {
      "accept", "add", "ah", "all", "and", "arp", "bridge", "cgroup", "chain", "comment",
      "comp", "constant", "continue", "counter", "cpu", "create", "ct", "day", "dccp", "define",
      "delete", "describe", "device", "devices", "dnat", "drop", "dst", "dup", "dynamic", "ecn",
      "element", "elements", "eq", "esp", "ether", "exists", "expires", "export", "exthdr",
      "fib", "flags", "flow", "flowtable", "flush", "frag", "fwd", "ge", "get", "goto", "gt",
      "handle", "hbh", "hook", "hour", "ibriport", "ibrname", "icmp", "icmpv6", "igmp", "iif",
      "iifgroup", "iifname", "iiftype", "import", "include", "index", "inet", "insert",
      "interval", "ip", "ip6", "ipsec", "jhash", "jump", "le", "limit", "list", "ll", "log",
      "lshift", "lt", "map", "mark", "masquerade", "meta", "meter", "mh", "missing", "monitor",
      "ne", "netdev", "nftrace", "nh", "not", "notrack", "numgen", "obriport", "obrname",
      "offload", "oif", "oifgroup", "oifname", "oiftype", "or", "osf", "pkttype", "policy",
      "position", "priority", "queue", "quota", "random", "redefine", "redirect", "reject",
      "rename", "replace", "reset", "return", "rshift", "rt", "rt0", "rt2", "rtclassid", "rule",
      "ruleset", "sctp", "secmark", "set", "size", "skgid", "skuid", "snat", "socket", "srh",
      "symhash", "synproxy", "table", "tcp", "th", "time", "timeout", "tproxy", "type",
      "typeof", "udp", "udplite", "undefine", "update", "vlan", "vmap", "xor", "xt",
};

/// nftables names as `serve` has always accepted them: a letter or '_', then letters,
/// digits and '_', shorter than 64. nft's scanner reads such a word as one name, so
/// `nft-rules` can print it unquoted (nft has no quoting for names), and nothing that could
/// end a statement (space, brace, ';', newline) gets into a ruleset; nor does a keyword.
std::string check_nft_name(const OptionSpec&, const std::string& name) {
  const bool ok = !name.empty() && name.size() < 64 &&
                  (std::isalpha(static_cast<unsigned char>(name[0])) || name[0] == '_') &&
                  std::all_of(name.begin(), name.end(), [](char ch) {
                    return std::isalnum(static_cast<unsigned char>(ch)) || ch == '_';
                  });
  if (!ok) return "not an nftables name (a letter or '_', then letters, digits, '_'; at most 63)";
  if (std::binary_search(std::begin(kNftKeywords), std::end(kNftKeywords), std::string_view(name)))
    return "an nft keyword: the ruleset `nft-rules` prints would not load (choose another name)";
  return "";
}

/// An interface name, or a prefix and '*', as nft's iifname matches them: printed in double
/// quotes, so only the characters interface names use (no quote, space or backslash).
std::string check_iface_pattern(const OptionSpec&, const std::string& s) {
  const std::string_view stem = !s.empty() && s.back() == '*' ? std::string_view(s).substr(0, s.size() - 1)
                                                               : std::string_view(s);
  const bool ok = !stem.empty() && stem.size() < 16 &&
                  std::all_of(stem.begin(), stem.end(), [](char ch) {
                    return std::isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == '-' || ch == '.';
                  });
  return ok ? "" : "expected an interface name or prefix with '*' (letters, digits, '_', '-', '.'; at most 15)";
}

/// A user name: `nft-rules` prints it in double quotes (meta skuid "NAME").
std::string check_user(const OptionSpec&, const std::string& user) {
  const bool ok = !user.empty() && std::none_of(user.begin(), user.end(), [](char ch) {
    const auto u = static_cast<unsigned char>(ch);
    return ch == '"' || ch == '\\' || std::isspace(u) || std::iscntrl(u);
  });
  return ok ? "" : "not a user name";
}

/// An IPv4 or IPv6 address, optionally with a prefix length.
std::string check_cidr(const OptionSpec&, const std::string& s) {
  const auto slash = s.find('/');
  const std::string host = s.substr(0, slash);
  uint8_t buf[16];
  const bool v4 = inet_pton(AF_INET, host.c_str(), buf) == 1;
  const bool v6 = !v4 && inet_pton(AF_INET6, host.c_str(), buf) == 1;
  bool ok = v4 || v6;
  if (ok && slash != std::string::npos) {
    const std::string len = s.substr(slash + 1);
    ok = !len.empty() && len.size() <= 3 && len.find_first_not_of("0123456789") == std::string::npos &&
         std::stoi(len) <= (v4 ? 32 : 128);
  }
  return ok ? "" : "expected an address or CIDR";
}

/// A TCP port, 1..65535.
std::string check_port(const OptionSpec&, const std::string& s) {
  unsigned n = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
  return !s.empty() && ec == std::errc() && end == s.data() + s.size() && n >= 1 && n <= 65535
             ? ""
             : "expected a port (1..65535)";
}

/// --guard-marks: hex, exactly three bits set.
std::string check_guard_marks(const OptionSpec&, const std::string& s) {
  return guard_mark_bits(s) ? "" : "expected a hex mask with exactly three bits set (0x00e00000)";
}

// The table. Order is the order of --help. `def` is parsed like a user's value, so a
// default that its own checks would refuse fails every ServeConfig (and the unit tests).
const std::vector<OptionSpec>& table() {
  static const std::vector<OptionSpec> t = {
      {.name = "config", .kind = K::Text, .commands = kServe, .metavar = "FILE",
       .help = "read options from FILE: one 'key = value' per line, same names as here, '#' comments",
       .def = nullptr},
      {.name = "listen", .kind = K::List, .commands = kBoth, .metavar = "ADDR:PORT",
       .help = "address to serve DNS on, UDP and TCP; IPv6 as [::1]:53", .def = "127.0.0.1:53",
       .field = &ServeConfig::listen},
      {.name = "upstream", .kind = K::List, .commands = kBoth, .metavar = "ADDR[:PORT]",
       .help = "DNS server that answers allowed names; several fail over in order", .def = nullptr,
       .shown = "the nameservers of /etc/resolv.conf", .field = &ServeConfig::upstreams,
       .default_port = 53},
      {.name = "allowlist", .kind = K::List, .commands = kServe, .metavar = "FILE",
       .help = "allowlist file; the entries of all files are merged", .def = nullptr,
       .shown = "the embedded zones/default.allow", .field = &ServeConfig::allowlists},
      {.name = "no-nft", .kind = K::Flag, .commands = kServe, .metavar = "",
       .help = "run without the nftables hook: answers are not vouched for in the firewall",
       .def = nullptr, .field = &ServeConfig::no_nft},
      {.name = "require-ruleset", .kind = K::Flag, .commands = kServe, .metavar = "",
       .help = "while dnsward's ruleset (`nft-rules`) is not in force in its table, answer every "
               "query but the CH TXT diagnostics with SERVFAIL and EDE 14 Not Ready",
       .def = nullptr, .field = &ServeConfig::require_ruleset},
      {.name = "negative-ttl", .kind = K::Int, .commands = kServe, .metavar = "SECONDS",
       .help = "TTL of the SOA in denials: how long stubs cache a denial (RFC 2308)", .def = "30",
       .min = 0, .max = 86400, .field = &ServeConfig::negative_ttl},
      {.name = "udp-payload", .kind = K::Int, .commands = kServe, .metavar = "BYTES",
       .help = "largest UDP reply we send and the EDNS size we advertise (DNS flag day 2020)",
       .def = "1232", .min = 512, .max = 4096, .field = &ServeConfig::udp_payload},
      {.name = "upstream-timeout", .kind = K::Int, .commands = kServe, .metavar = "MS",
       .help = "first per-try timeout of an upstream query; c-ares doubles it on later rounds",
       .def = "1000", .min = 50, .max = 30000, .field = &ServeConfig::upstream_timeout_ms},
      {.name = "upstream-tries", .kind = K::Int, .commands = kServe, .metavar = "N",
       .help = "rounds over the upstream list before the client gets SERVFAIL", .def = "2",
       .min = 1, .max = 5, .field = &ServeConfig::upstream_tries},
      {.name = "max-inflight", .kind = K::Int, .commands = kServe, .metavar = "N",
       .help = "upstream queries in flight; beyond it clients get SERVFAIL at once", .def = "4096",
       .min = 1, .max = 60000, .field = &ServeConfig::max_inflight},
      {.name = "tcp-max-connections", .kind = K::Int, .commands = kServe, .metavar = "N",
       .help = "concurrent TCP clients; at the cap the longest-idle connection with nothing pending "
               "gives way (RFC 7766 6.2.3), and a new one is refused only if every connection is busy",
       .def = "256", .min = 1, .max = 65536, .field = &ServeConfig::tcp_max_connections},
      {.name = "tcp-idle-timeout", .kind = K::Int, .commands = kServe, .metavar = "MS",
       .help = "close a TCP connection with no complete query and nothing pending for this long "
               "(RFC 7766 6.2.3)",
       .def = "10000", .min = 100, .max = 3600000, .field = &ServeConfig::tcp_idle_timeout_ms},
      {.name = "tcp-max-pipelined", .kind = K::Int, .commands = kServe, .metavar = "N",
       .help = "queries in progress per TCP connection; reading pauses beyond it", .def = "32",
       .min = 1, .max = 1024, .field = &ServeConfig::tcp_max_pipelined},
      {.name = "log-level", .kind = K::Enum, .commands = kServe, .metavar = "LEVEL",
       .help = "debug logs every decision; info logs start, stop, reloads and upstream failures",
       .def = "info",
       .values = {{"debug", int(LogLevel::Debug)}, {"info", int(LogLevel::Info)},
                  {"warn", int(LogLevel::Warn)}, {"error", int(LogLevel::Error)}},
       .field = &ServeConfig::log_level},
      {.name = "log-format", .kind = K::Enum, .commands = kServe, .metavar = "FORMAT",
       .help = "logfmt (key=value) or json: one line per event on stderr", .def = "logfmt",
       .values = {{"logfmt", int(log::Format::Logfmt)}, {"json", int(log::Format::Json)}},
       .field = &ServeConfig::log_format},
      {.name = "nft-family", .kind = K::Enum, .commands = kBoth, .metavar = "FAMILY",
       .help = "nftables family of dnsward's table", .def = "inet",
       .values = {{"inet", NFPROTO_INET}, {"ip", NFPROTO_IPV4}, {"ip6", NFPROTO_IPV6}},
       .field = &ServeConfig::nft_family},
      {.name = "nft-table", .kind = K::Text, .commands = kBoth, .metavar = "NAME",
       .help = "nftables table that holds the sets (created if missing)", .def = "dnsward",
       .check = check_nft_name, .field = &ServeConfig::nft_table},
      {.name = "nft-set4", .kind = K::Text, .commands = kBoth, .metavar = "NAME",
       .help = "set of vouched IPv4 addresses (type ipv4_addr, flags timeout); with --sni-guard also "
               "NAME_ports, the ports= elements (ipv4_addr . inet_proto . inet_service)", .def = "allowed4",
       .check = check_nft_name, .field = &ServeConfig::nft_set4},
      {.name = "nft-set6", .kind = K::Text, .commands = kBoth, .metavar = "NAME",
       .help = "set of vouched IPv6 addresses (type ipv6_addr, flags timeout); with --sni-guard also "
               "NAME_ports, the ports= elements (ipv6_addr . inet_proto . inet_service)", .def = "allowed6",
       .check = check_nft_name, .field = &ServeConfig::nft_set6},
      {.name = "nft-set-size", .kind = K::Int, .commands = kBoth, .metavar = "N",
       .help = "size of each set when dnsward creates it; a full set fails the answer (SERVFAIL)",
       .def = "65536", .min = 1024, .max = 16777216, .field = &ServeConfig::nft_set_size},
      {.name = "nft-refresh", .kind = K::Enum, .commands = kServe, .metavar = "MODE",
       .help = "how an element's timeout is extended: auto probes the kernel, update is in place "
               "(kernel 6.12+), replace is delete+add",
       .def = "auto",
       .values = {{"auto", int(RefreshMode::Auto)}, {"update", int(RefreshMode::Update)},
                  {"replace", int(RefreshMode::Replace)}},
       .field = &ServeConfig::nft_refresh},
      {.name = "allow", .kind = K::List, .commands = kNftRules, .metavar = "CIDR",
       .help = "address or CIDR the ruleset always lets through", .def = nullptr,
       .check = check_cidr, .field = &ServeConfig::nft_allow},
      {.name = "min-ttl", .kind = K::Int, .commands = kServe, .metavar = "SECONDS",
       .help = "shortest element timeout before grace, whatever the answer's TTL (0 would mean forever)",
       .def = "30", .min = 1, .max = 86400, .field = &ServeConfig::min_ttl},
      {.name = "max-ttl", .kind = K::Int, .commands = kServe, .metavar = "SECONDS",
       .help = "longest element timeout before grace; TTLs sent to clients are lowered to it",
       .def = "3600", .min = 1, .max = 604800, .field = &ServeConfig::max_ttl},
      {.name = "grace", .kind = K::Int, .commands = kServe, .metavar = "SECONDS",
       .help = "added to every element timeout, so a client that uses an address until its TTL "
               "ends still gets through",
       .def = "30", .min = 1, .max = 3600, .field = &ServeConfig::grace},
      {.name = "mode", .kind = K::Enum, .commands = kServe, .metavar = "MODE",
       .help = "enforce denies names off the list; audit forwards every name, vouches its "
               "addresses, and logs and counts what enforce would deny",
       .def = "enforce", .values = {{"enforce", 0}, {"audit", 1}}, .field = &ServeConfig::audit,
       .name_field = &ServeConfig::mode},
      {.name = "state", .kind = K::Text, .commands = kServe, .metavar = "FILE",
       .help = "keep usage counts (per entry, per denied name) in FILE, written atomically every "
               "--state-interval and on SIGTERM",
       .def = nullptr, .field = &ServeConfig::state},
      {.name = "state-interval", .kind = K::Int, .commands = kServe, .metavar = "SECONDS",
       .help = "how often the state file is written", .def = "60", .min = 1, .max = 86400,
       .field = &ServeConfig::state_interval},
      {.name = "state-max-names", .kind = K::Int, .commands = kServe, .metavar = "N",
       .help = "denied (and would-deny) names kept in the state, least recently seen dropped "
               "first: bounds the state file",
       .def = "10000", .min = 1, .max = 1000000, .field = &ServeConfig::state_max_names},
      {.name = "metrics-listen", .kind = K::Text, .commands = kServe, .metavar = "ADDR:PORT",
       .help = "serve Prometheus metrics at http://ADDR:PORT/metrics (loopback only)",
       .def = nullptr, .field = &ServeConfig::metrics_listen},
      {.name = "metrics-file", .kind = K::Text, .commands = kServe, .metavar = "FILE",
       .help = "write the same metrics to FILE atomically every --metrics-interval "
               "(node_exporter's textfile collector)",
       .def = nullptr, .field = &ServeConfig::metrics_file},
      {.name = "metrics-interval", .kind = K::Int, .commands = kServe, .metavar = "SECONDS",
       .help = "how often --metrics-file is written", .def = "15", .min = 1, .max = 3600,
       .field = &ServeConfig::metrics_interval},
      {.name = "user", .kind = K::Text, .commands = kBoth, .metavar = "NAME",
       .help = "after binding its sockets and opening netlink as root, run as this user keeping "
               "only CAP_NET_ADMIN; the ruleset lets only this user reach the upstreams",
       .def = "dnsward", .shown = "dnsward, if it exists", .check = check_user,
       .field = &ServeConfig::user},
      {.name = "cache-size", .kind = K::Int, .commands = kServe, .metavar = "N",
       .help = "answers kept in the cache (0 turns it off)", .def = "10000", .min = 0,
       .max = 10000000, .field = &ServeConfig::cache_size},
      {.name = "cache-bytes", .kind = K::Int, .commands = kServe, .metavar = "BYTES",
       .help = "bytes of answers the cache may hold (32 MiB by default), least recently used "
               "evicted first: one hostile zone's 64 KiB answers cannot fill memory",
       .def = "33554432", .min = 0, .max = 1l << 31, .field = &ServeConfig::cache_bytes},
      {.name = "max-answer-addresses", .kind = K::Int, .commands = kServe, .metavar = "N",
       .help = "addresses one answer may vouch for; records (and HTTPS/SVCB hints) beyond it are "
               "removed from the reply, with an EDE",
       .def = "64", .min = 1, .max = 4096, .field = &ServeConfig::max_answer_addresses},
      {.name = "host", .kind = K::Flag, .commands = kBoth, .metavar = "",
       .help = "host mode: one dnsward on the host serves many sandboxes (microVMs on taps), each "
               "identified by its source address and held to its own allowlist; sandboxes are "
               "registered over --control, and the sets are keyed by guest and destination",
       .def = nullptr, .field = &ServeConfig::host},
      {.name = "sandbox-ifaces", .kind = K::Text, .commands = kBoth, .metavar = "PATTERN",
       .help = "host mode: the sandboxes' host interfaces as nft's iifname matches them (a name, "
               "or a prefix and '*'); the host ruleset touches only traffic from them",
       .def = "tap*", .check = check_iface_pattern, .field = &ServeConfig::sandbox_ifaces},
      {.name = "host-mark", .kind = K::Int, .commands = kBoth, .metavar = "BIT",
       .help = "host mode: the packet-mark bit the host ruleset sets on traffic from sandbox "
               "interfaces, read back from accepted DNS-over-TCP sockets (tcp_fwmark_accept)",
       .def = "20", .min = 0, .max = 31, .field = &ServeConfig::host_mark_bit},
      {.name = "control", .kind = K::Text, .commands = kServe | kCtl, .metavar = "PATH",
       .help = "host mode: the control socket (mode 0660, owner root, group --control-group) "
               "where sandboxes are added, changed and removed",
       .def = "/run/dnsward/control", .field = &ServeConfig::control},
      {.name = "control-group", .kind = K::Text, .commands = kServe, .metavar = "GROUP",
       .help = "host mode: the group that may use the control socket besides root",
       .def = nullptr, .shown = "none: root only", .check = check_user, .field = &ServeConfig::control_group},
      {.name = "sandboxes", .kind = K::Text, .commands = kServe, .metavar = "DIR",
       .help = "host mode: keep each registration in DIR (one file per sandbox, written "
               "atomically) and restore them at start",
       .def = nullptr, .shown = "none: registrations last until dnsward stops", .field = &ServeConfig::sandboxes_dir},
      {.name = "host-set-size", .kind = K::Int, .commands = kBoth, .metavar = "N",
       .help = "host mode: size of each (guest . destination) set when dnsward creates it: "
               "10,000 sandboxes of about 100 addresses",
       .def = "1048576", .min = 1024, .max = 16777216, .field = &ServeConfig::host_set_size},
      {.name = "sandbox-max-elements", .kind = K::Int, .commands = kServe, .metavar = "N",
       .help = "host mode: vouched (guest . destination) elements one sandbox may hold; an answer "
               "beyond it gets SERVFAIL, as from a full set",
       .def = "4096", .min = 1, .max = 1048576, .field = &ServeConfig::sandbox_max_elements},
      {.name = "sandbox-max-inflight", .kind = K::Int, .commands = kServe, .metavar = "N",
       .help = "host mode: one sandbox's queries in flight upstream; beyond it it gets SERVFAIL",
       .def = "64", .min = 1, .max = 60000, .field = &ServeConfig::sandbox_max_inflight},
      {.name = "sandbox-max-tcp", .kind = K::Int, .commands = kServe, .metavar = "N",
       .help = "host mode: one sandbox's TCP connections; at the cap its own longest-idle one "
               "gives way, never another sandbox's",
       .def = "8", .min = 1, .max = 65536, .field = &ServeConfig::sandbox_max_tcp},
      {.name = "sandbox-state-names", .kind = K::Int, .commands = kServe, .metavar = "N",
       .help = "host mode: denied (and would-deny) names kept per sandbox in its usage counts",
       .def = "1000", .min = 1, .max = 1000000, .field = &ServeConfig::sandbox_state_names},
      {.name = "max-names-per-element", .kind = K::Int, .commands = kServe, .metavar = "N",
       .help = "names bound to one vouched element (the query names and CNAME chains whose answers "
               "vouched for it, which --sni-guard checks connections against); an answer that "
               "would bind more gets SERVFAIL, as from a full set",
       .def = "32", .min = 1, .max = 1024, .field = &ServeConfig::max_names_per_element},
      {.name = "sni-guard", .kind = K::Flag, .commands = kBoth, .metavar = "",
       .help = "hold each new TCP connection to a vouched address on --sni-ports/--http-ports until "
               "its first flight, and reset it unless the TLS server_name (or HTTP Host) is a name "
               "that resolved to that address (nfqueue); the ruleset rejects QUIC (UDP 443)",
       .def = nullptr, .field = &ServeConfig::sni_guard},
      {.name = "sni-ports", .kind = K::List, .commands = kBoth, .metavar = "PORT",
       .help = "with --sni-guard: TCP ports whose first flight must be a TLS ClientHello naming a "
               "bound name",
       .def = "443", .check = check_port, .field = &ServeConfig::sni_ports},
      {.name = "http-ports", .kind = K::List, .commands = kBoth, .metavar = "PORT",
       .help = "with --sni-guard: TCP ports whose first flight must be a plain HTTP request with "
               "the Host of a bound name",
       .def = "80", .check = check_port, .field = &ServeConfig::http_ports},
      {.name = "queue-num", .kind = K::Int, .commands = kBoth, .metavar = "N",
       .help = "with --sni-guard: the netfilter queue first flights are sent to", .def = "53",
       .min = 0, .max = 65535, .field = &ServeConfig::queue_num},
      {.name = "queue-maxlen", .kind = K::Int, .commands = kServe, .metavar = "N",
       .help = "with --sni-guard: packets the kernel may hold for dnsward (beyond it they are "
               "dropped, never passed), and connections dnsward follows at once",
       .def = "4096", .min = 64, .max = 1048576, .field = &ServeConfig::queue_maxlen},
      {.name = "queue-backend", .kind = K::Enum, .commands = kBoth, .metavar = "BACKEND",
       .help = "with --sni-guard: nft queues with nftables' own queue expression (nft_queue); xt "
               "with the xt NFQUEUE target through iptables-nft, for kernels built without nft_queue",
       .def = "nft", .values = {{"nft", int(QueueBackend::Nft)}, {"xt", int(QueueBackend::Xt)}},
       .field = &ServeConfig::queue_backend},
      {.name = "guard-marks", .kind = K::Text, .commands = kBoth, .metavar = "MASK",
       .help = "with --sni-guard: three packet- and conntrack-mark bits (hex), lowest first: "
               "judged this packet, connection allowed, connection rejected",
       .def = "0x00e00000", .check = check_guard_marks, .field = &ServeConfig::guard_marks},
      {.name = "first-flight-timeout", .kind = K::Int, .commands = kServe, .metavar = "MS",
       .help = "with --sni-guard: how long a connection may wait for its whole first flight "
               "before it is reset",
       .def = "10000", .min = 100, .max = 600000, .field = &ServeConfig::first_flight_timeout_ms},
      {.name = "print", .kind = K::Enum, .commands = kNftRules, .metavar = "FORMAT",
       .help = "nft prints the ruleset for `nft -f`; iptables and ip6tables print the xt queue of "
               "--sni-guard --queue-backend xt for iptables-nft-restore --noflush",
       .def = "nft",
       .values = {{"nft", int(RulesFormat::Nft)}, {"iptables", int(RulesFormat::Iptables)},
                  {"ip6tables", int(RulesFormat::Ip6tables)}},
       .field = &ServeConfig::print},
  };
  return t;
}

std::string join_values(const OptionSpec& o, const char* sep) {
  std::string s;
  for (const auto& v : o.values) s += (s.empty() ? "" : sep) + std::string(v.name);
  return s;
}

/// Empties the field an option fills, so that nothing is left uninitialised.
void reset(const OptionSpec& o, ServeConfig& c) {
  std::visit(
      [&](auto f) {
        if constexpr (!std::is_same_v<decltype(f), std::monostate>) c.*f = {};
      },
      o.field);
}

/// Stores one value as a user wrote it (command line, config file or the table's default)
/// into c; lists append. Returns "" or why the value is refused.
std::string apply(const OptionSpec& o, const std::string& v, ServeConfig& c) {
  if (o.check) {
    auto why = o.check(o, v);
    if (!why.empty()) return why;
  }
  switch (o.kind) {
    case K::Flag: {
      bool on;
      if (v == "true" || v == "yes" || v == "on" || v == "1") on = true;
      else if (v == "false" || v == "no" || v == "off" || v == "0") on = false;
      else return "expected true or false";
      c.*std::get<bool ServeConfig::*>(o.field) = on;
      return "";
    }
    case K::Int: {
      long n = 0;
      const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
      if (v.empty() || ec != std::errc() || end != v.data() + v.size()) return "not a number";
      if (n < o.min || n > o.max) return fmt::format("must be between {} and {}", o.min, o.max);
      std::visit(
          [&](auto f) {
            if constexpr (!std::is_same_v<decltype(f), std::monostate>) {
              using T = std::remove_reference_t<decltype(c.*f)>;
              if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) c.*f = static_cast<T>(n);
            }
          },
          o.field);
      return "";
    }
    case K::Text:
      if (auto f = std::get_if<std::string ServeConfig::*>(&o.field)) c.*(*f) = v;
      return "";
    case K::Enum: {
      const auto it = std::find_if(o.values.begin(), o.values.end(),
                                   [&](const EnumValue& e) { return v == e.name; });
      if (it == o.values.end()) return "must be one of " + join_values(o, ", ");
      std::visit(
          [&](auto f) {
            if constexpr (!std::is_same_v<decltype(f), std::monostate>) {
              using T = std::remove_reference_t<decltype(c.*f)>;
              if constexpr (std::is_enum_v<T> || std::is_same_v<T, bool>) c.*f = static_cast<T>(it->value);
            }
          },
          o.field);
      if (o.name_field) c.*o.name_field = it->name;
      return "";
    }
    case K::List:
      if (auto f = std::get_if<std::vector<std::string> ServeConfig::*>(&o.field)) (c.*(*f)).push_back(v);
      if (auto f = std::get_if<std::vector<Endpoint> ServeConfig::*>(&o.field)) {
        const auto e = parse_endpoint(v, o.default_port ? std::optional<uint16_t>(o.default_port) : std::nullopt);
        if (!e) return o.default_port ? "expected ADDR, ADDR:PORT or [IPV6]:PORT" : "expected ADDR:PORT or [IPV6]:PORT";
        (c.*(*f)).push_back(*e);
      }
      return "";
  }
  return "";
}

/// One value of an option and where it was written: "" for the command line, or FILE:LINE.
struct Given {
  std::string value;
  std::string where;
};

std::string refusal(const OptionSpec& o, const Given& g, const std::string& why) {
  if (g.where.empty()) return fmt::format("--{} {}: {}", o.name, g.value, why);
  return fmt::format("{}: {} = {}: {}", g.where, o.name, g.value, why);
}

po::options_description describe(unsigned command) {
  po::options_description desc;
  desc.add_options()("help,h", "");
  for (const auto& o : table()) {
    if (!(o.commands & command)) continue;
    // Every value is taken as text and converted by apply(), the same code that reads the
    // config file and the defaults, so a value means the same thing wherever it is written.
    if (o.kind == K::Flag) desc.add_options()(o.name, po::bool_switch(), "");
    else if (o.kind == K::List) desc.add_options()(o.name, po::value<std::vector<std::string>>()->composing(), "");
    else desc.add_options()(o.name, po::value<std::string>(), "");
  }
  return desc;
}

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r") - b + 1);
}

/// Reads a config file's "key = value" lines into `given`, checking each value as it goes
/// (so a bad line is reported with its line number even when the command line overrides
/// it). Returns "" or the first error, "FILE:LINE: reason".
std::string read_config_file(const std::string& path, unsigned command,
                             std::map<std::string, std::vector<Given>>& given) {
  std::ifstream in(path);
  if (!in) return fmt::format("--config {}: cannot open: {}", path, std::strerror(errno));
  ServeConfig scratch;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    const std::string where = fmt::format("{}:{}", path, n);
    // A NUL would cut the value short where it is used (an address, a path) while the
    // whole line was checked: refuse it, as any control byte other than tab and CR.
    if (std::any_of(line.begin(), line.end(), [](char ch) {
          return std::iscntrl(static_cast<unsigned char>(ch)) && ch != '\t' && ch != '\r';
        }))
      return fmt::format("{}: control character in the line", where);
    line = trim(line.substr(0, line.find('#')));
    if (line.empty()) continue;
    const auto eq = line.find('=');
    if (eq == std::string::npos) return fmt::format("{}: expected 'key = value'", where);
    const std::string key = trim(line.substr(0, eq));
    const Given g{trim(line.substr(eq + 1)), where};
    const OptionSpec* o = find_option(key);
    if (!o || !(o->commands & command)) return fmt::format("{}: unknown option '{}'", where, key.substr(0, 80));
    if (key == "config") return fmt::format("{}: a config file cannot name another", where);
    auto& seen = given[key];
    if (o->kind != K::List && !seen.empty())
      return fmt::format("{}: {} given twice (first at {})", where, key, seen.front().where);
    const auto why = apply(*o, g.value, scratch);
    if (!why.empty()) return refusal(*o, g, why);
    seen.push_back(g);
  }
  if (in.bad()) return fmt::format("--config {}: cannot read: {}", path, std::strerror(errno));
  return "";
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

ServeConfig::ServeConfig() {
  for (const auto& o : table()) {
    reset(o, *this);
    if (!o.def) continue;
    const auto why = apply(o, o.def, *this);
    if (!why.empty()) throw std::logic_error(fmt::format("default of --{} {}: {}", o.name, o.def, why));
  }
}

const std::vector<OptionSpec>& option_table() { return table(); }

const OptionSpec* find_option(std::string_view name) {
  for (const auto& o : table())
    if (name == o.name) return &o;
  return nullptr;
}

std::string shown_default(const OptionSpec& o) {
  if (o.shown) return o.shown;
  if (o.def) return o.def;
  return o.kind == K::Flag ? "off" : "none";
}

std::optional<GuardMarks> guard_mark_bits(std::string_view text) {
  if (text.size() < 3 || text.size() > 10 || text[0] != '0' || (text[1] != 'x' && text[1] != 'X'))
    return std::nullopt;
  uint32_t v = 0;
  const auto [end, ec] = std::from_chars(text.data() + 2, text.data() + text.size(), v, 16);
  if (ec != std::errc() || end != text.data() + text.size() || __builtin_popcount(v) != 3) return std::nullopt;
  GuardMarks m{};
  m.seen = v & -v;
  v &= v - 1;
  m.allowed = v & -v;
  v &= v - 1;
  m.rejected = v;
  return m;
}

std::vector<uint16_t> port_numbers(const std::vector<std::string>& ports) {
  std::vector<uint16_t> out;
  for (const auto& p : ports) {
    unsigned n = 0;
    std::from_chars(p.data(), p.data() + p.size(), n);
    if (std::find(out.begin(), out.end(), uint16_t(n)) == out.end()) out.push_back(uint16_t(n));
  }
  return out;
}

std::string_view option_value_name(std::string_view option, int value) {
  if (const OptionSpec* o = find_option(option))
    for (const auto& v : o->values)
      if (v.value == value) return v.name;
  return "?";
}

std::string options_help(unsigned command) {
  std::string h;
  for (const auto& o : table()) {
    if (!(o.commands & command)) continue;
    const std::string flag = fmt::format("--{}{}{}", o.name, *o.metavar ? " " : "", o.metavar);
    std::string extra;
    if (o.kind == K::Enum) extra = "one of: " + join_values(o, ", ") + "; ";
    extra += "default: " + shown_default(o);
    if (o.kind == K::Int) extra += fmt::format("; {}..{}", o.min, o.max);
    if (o.kind == K::List) extra += "; repeatable";
    h += fmt::format("  {:<28} {} ({})\n", flag, o.help, extra);
  }
  h += fmt::format("  {:<28} {}\n", "--help", "show this help");
  return h;
}

std::string serve_help() {
  return "usage: dnsward serve [OPTION]...\n\n"
         "Serve DNS: names on the allowlist are forwarded upstream, all others get NXDOMAIN\n"
         "with an Extended DNS Error (RFC 8914, code 15 Blocked).\n\nOptions:\n" +
         options_help(kServe);
}

ParseOutcome parse_command_options(unsigned command, const std::vector<std::string>& args,
                                   const std::string& resolv_conf) {
  ParseOutcome out;
  // Boost.Program_options 1.74 builds its error messages by replacing %placeholders% in
  // the offending text, and loops for ever when that text holds one itself (found by
  // fuzzing). No dnsward option needs a '%', so refuse it before Boost sees it. Config
  // files never reach Boost.
  for (const auto& a : args)
    if (a.find('%') != std::string::npos) {
      out.error = fmt::format("'{}': '%' is not allowed in options", a.substr(0, 80));
      return out;
    }
  po::variables_map vm;
  try {
    // No guessing of abbreviations: `nft-rules --allow` is an option of its own, and would
    // otherwise be taken for `serve --allowlist`. An option is the name in the table.
    const auto style = po::command_line_style::default_style & ~po::command_line_style::allow_guessing;
    po::store(po::command_line_parser(args).options(describe(command)).style(style).positional({}).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    out.error = e.what();
    return out;
  }
  if (vm.count("help")) {
    out.help_shown = true;
    return out;
  }

  // What was given for each option: the command line first, then the config file.
  std::map<std::string, std::vector<Given>> file;
  if (vm.count("config")) {
    out.error = read_config_file(vm["config"].as<std::string>(), command, file);
    if (!out.error.empty()) return out;
  }
  ServeConfig c;  // the table's defaults
  for (const auto& o : table()) {
    if (!(o.commands & command) || std::holds_alternative<std::monostate>(o.field)) continue;
    std::vector<Given> given;
    if (o.kind == K::Flag) {
      if (vm[o.name].as<bool>()) given.push_back({"true", ""});
    } else if (o.kind == K::List) {
      if (vm.count(o.name))
        for (const auto& v : vm[o.name].as<std::vector<std::string>>()) given.push_back({v, ""});
    } else if (vm.count(o.name)) {
      given.push_back({vm[o.name].as<std::string>(), ""});
    }
    // A single value on the command line wins over the file's; list values add up, the
    // command line's first (as Boost's composing values always did).
    if (const auto it = file.find(o.name); it != file.end() && (o.kind == K::List || given.empty()))
      given.insert(given.end(), it->second.begin(), it->second.end());
    if (given.empty()) continue;
    if (o.kind == K::List) reset(o, c);  // given values replace the default list
    for (const auto& g : given) {
      const auto why = apply(o, g.value, c);
      if (!why.empty()) {
        out.error = refusal(o, g, why);
        return out;
      }
    }
  }
  c.user_explicit = vm.count("user") || file.count("user");

  if (c.sni_guard) {
    const auto marks = guard_mark_bits(c.guard_marks);
    // Host mode: prerouting ORs --host-mark into every sandbox packet's mark, which the
    // guard's queue rules read as "judged" if the bits were shared.
    if (c.host && (marks->mask() >> c.host_mark_bit) & 1u) {
      out.error = fmt::format("--guard-marks {} includes bit {} of --host-mark: the guard's marks "
                              "need bits of their own", c.guard_marks, c.host_mark_bit);
      return out;
    }
    for (const auto& p : c.http_ports)
      if (std::find(c.sni_ports.begin(), c.sni_ports.end(), p) != c.sni_ports.end()) {
        out.error = fmt::format("port {} is in both --sni-ports and --http-ports: a port's first "
                                "flight is either TLS or plain HTTP", p);
        return out;
      }
    if (c.no_nft && (command & kServe)) {
      out.error = "--sni-guard needs the nftables hook: the names it checks are those of the vouched "
                  "elements (without it, --no-nft, there are none)";
      return out;
    }
  }

  if (c.nft_set4 == c.nft_set6) {
    out.error = "--nft-set4 and --nft-set6 must name different sets";
    return out;
  }
  if (c.sni_guard && (ports_set_name(c.nft_set4) == c.nft_set6 || ports_set_name(c.nft_set6) == c.nft_set4)) {
    // The port sets of ports= are named after the address sets: one would be the other.
    out.error = fmt::format("--nft-set4 {} and --nft-set6 {}: with --sni-guard each has a port set named "
                            "after it (<set>_ports), which must not be the other", c.nft_set4, c.nft_set6);
    return out;
  }
  for (std::size_t i = 0; i < c.listen.size(); ++i)
    for (std::size_t j = 0; j < i; ++j)
      if (c.listen[j].same_address(c.listen[i])) {
        out.error = fmt::format("--listen {}: given twice", c.listen[i].text);
        return out;
      }
  c.upstream_source = c.upstreams.empty() ? resolv_conf : "--upstream";
  if (c.upstreams.empty()) c.upstreams = resolv_conf_servers(resolv_conf);

  if (command & kServe) {
    if (c.require_ruleset && c.no_nft) {
      out.error = "--require-ruleset needs the nftables hook: without it (--no-nft) there is no "
                  "ruleset to check";
      return out;
    }
    if (c.host && c.no_nft) {
      out.error = "--host needs the nftables hook: the host enforces each sandbox's policy in its "
                  "sets (without it, --no-nft, nothing would be enforced)";
      return out;
    }
    if (c.host)
      for (const auto& l : c.listen)
        if (!l.is_wildcard()) {
          // The host ruleset redirects each sandbox's DNS to the address of the interface it
          // came in on (nft `redirect`): only a wildcard socket receives them all.
          out.error = fmt::format("--host listens on wildcard addresses (0.0.0.0:PORT, [::]:PORT), "
                                  "where the host ruleset redirects sandboxes' DNS; not {}", l.text);
          return out;
        }
    if (c.min_ttl > c.max_ttl) {
      out.error = fmt::format("--min-ttl {} is above --max-ttl {}", c.min_ttl, c.max_ttl);
      return out;
    }
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
  }
  out.config = std::move(c);
  return out;
}

ParseOutcome parse_serve_config(const std::vector<std::string>& args, const std::string& resolv_conf) {
  return parse_command_options(kServe, args, resolv_conf);
}

}  // namespace dnsward
