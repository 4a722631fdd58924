// Options are declared once, in one table (name, kind, default, bounds or values, help,
// check, the ServeConfig field it fills, the commands that take it), which serves the
// command line, the config file (the same names as "key = value"), --help of `serve` and
// `nft-rules`, the checks and the README test. Defaults live in that table only:
// ServeConfig() applies them. parse_serve_config() validates and normalises the options
// into an immutable ServeConfig.
#pragma once
#include <netinet/in.h>
#include <sys/socket.h>
// After <netinet/in.h>: the kernel's headers then leave the libc's definitions alone.
#include <linux/netfilter.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace dnsward {

/// The port set of ports= (--sni-guard) next to an address set: "<set>_ports".
inline std::string ports_set_name(const std::string& set) { return set + "_ports"; }

/// A socket address with the text it was written as.
struct Endpoint {
  sockaddr_storage addr{};
  socklen_t len = 0;
  std::string text;
  int family() const { return addr.ss_family; }
  uint16_t port() const;
  bool same_address(const Endpoint& o) const;  ///< same family, IP and port
  bool is_wildcard() const;                     ///< 0.0.0.0 or ::
};

/// Parses "ADDR:PORT", "[V6]:PORT", or, with a default port, "ADDR" / "V6" / "[V6]".
std::optional<Endpoint> parse_endpoint(const std::string& s, std::optional<uint16_t> default_port);

/// Log verbosity.
enum class LogLevel { Debug, Info, Warn, Error };

// Declared where they are used (log.hpp, vouch_ledger.hpp); named here so that ServeConfig
// can hold them typed without pulling those headers (log.hpp includes this one).
namespace log {
enum class Format;
}
enum class RefreshMode;

/// The nftables family of dnsward's table, as the kernel numbers it (NFPROTO_*).
enum class NftFamily : uint16_t {
  Inet = NFPROTO_INET,
  Ip = NFPROTO_IPV4,
  Ip6 = NFPROTO_IPV6,
};

/// How first flights reach dnsward (--queue-backend): nftables' own `queue` expression, or
/// the xt NFQUEUE target loaded through iptables-nft (kernels built without nft_queue).
enum class QueueBackend : uint8_t { Nft, Xt };
/// What `nft-rules` prints (--print): the nft ruleset, or the xt queue's iptables-restore text.
enum class RulesFormat : uint8_t { Nft, Iptables, Ip6tables };

/// Everything `dnsward serve` (and `nft-rules`) needs, validated. Option fields have no
/// initialisers: the constructor applies the option table's defaults, the only place they
/// are written.
struct ServeConfig {
  ServeConfig();

  std::vector<Endpoint> listen;
  std::vector<Endpoint> upstreams;
  std::vector<std::string> allowlists;  ///< empty: the embedded default list
  bool no_nft;
  bool require_ruleset;  ///< SERVFAIL (EDE 14) while the ruleset is not in force
  uint32_t negative_ttl;
  uint16_t udp_payload;
  uint32_t upstream_timeout_ms;
  uint32_t upstream_tries;
  uint32_t max_inflight;
  uint32_t tcp_max_connections;
  uint32_t tcp_idle_timeout_ms;
  uint32_t tcp_max_pipelined;
  LogLevel log_level;
  log::Format log_format;
  std::string upstream_source;  ///< "--upstream" or "/etc/resolv.conf", for the banner

  // The nftables hook (and the ruleset `nft-rules` prints).
  NftFamily nft_family;
  std::string nft_table;
  std::string nft_set4;
  std::string nft_set6;
  uint32_t nft_set_size;
  RefreshMode nft_refresh;
  std::vector<std::string> nft_allow;  ///< nft-rules --allow: CIDRs always reachable
  // Element timeout = clamp(TTL, min_ttl, max_ttl) + grace; reply TTLs are lowered to max_ttl.
  uint32_t min_ttl;
  uint32_t max_ttl;
  uint32_t grace;
  uint32_t cache_size;
  uint32_t cache_bytes;           ///< bytes of answers the cache may hold
  uint32_t max_answer_addresses;  ///< addresses one answer may vouch for

  // The policy lifecycle.
  std::string mode;  ///< "enforce" or "audit" (the --mode value's name, for logs)
  bool audit;        ///< --mode audit: forward everything, log what would be denied
  std::string state;           ///< usage state file ("": not kept)
  std::string user;            ///< the user to drop to after start-up (as root)
  std::string metrics_listen;  ///< loopback ADDR:PORT for GET /metrics ("": none)
  std::string metrics_file;    ///< textfile-collector file ("": none)
  uint32_t metrics_interval;
  bool user_explicit = false;  ///< --user was given (not an option: how user was set)
  uint32_t state_interval;
  uint32_t state_max_names;  ///< denied (and would-deny) names kept in the state

  // Host mode: one dnsward on the host, many sandboxes (sandbox.hpp).
  bool host;                    ///< --host
  std::string sandbox_ifaces;   ///< nft iifname pattern of the sandboxes' interfaces ("tap*")
  uint32_t host_mark_bit;       ///< the packet-mark bit prerouting sets on sandbox traffic
  std::string control;          ///< the control socket's path
  std::string control_group;    ///< group allowed on the control socket besides root ("": none)
  std::string sandboxes_dir;    ///< where registrations persist ("": not kept)
  uint32_t host_set_size;       ///< the concatenated sets' size in host mode
  uint32_t sandbox_max_elements;
  uint32_t sandbox_max_inflight;
  uint32_t sandbox_max_tcp;
  uint32_t sandbox_state_names;

  // The first-flight guard (--sni-guard): connections must name a name bound to their
  // destination (sni_guard.hpp).
  uint32_t max_names_per_element;  ///< names one vouched element may be bound to
  bool sni_guard;
  std::vector<std::string> sni_ports;   ///< TLS ports, as given (checked 1..65535)
  std::vector<std::string> http_ports;  ///< plain HTTP ports
  uint32_t queue_num;
  uint32_t queue_maxlen;
  QueueBackend queue_backend;
  std::string guard_marks;  ///< three mark bits, hex (guard_mark_bits() reads them)
  uint32_t first_flight_timeout_ms;
  RulesFormat print;  ///< nft-rules --print
};

/// --guard-marks read: the three bits, lowest first. nullopt unless exactly three are set.
struct GuardMarks {
  uint32_t seen, allowed, rejected;
  uint32_t mask() const { return seen | allowed | rejected; }
};
std::optional<GuardMarks> guard_mark_bits(std::string_view text);
/// A port list option's values as numbers (checked by the option table).
std::vector<uint16_t> port_numbers(const std::vector<std::string>& ports);

/// What an option's value is.
enum class OptionKind {
  Flag,  ///< present or not; in a config file true/false, yes/no, on/off, 1/0
  Int,   ///< a decimal number within [min, max]
  Text,  ///< a string, optionally checked
  Enum,  ///< one name of `values`
  List,  ///< repeatable; config-file and command-line values add up
};

/// The commands that take an option (a bit mask).
enum OptionCommand : unsigned {
  kServe = 1u << 0,
  kNftRules = 1u << 1,
  kCtl = 1u << 2,  ///< `dnsward ctl`, the control socket's client
};

/// One value of an enumerated option: its name and the enum value it stands for.
struct EnumValue {
  const char* name;
  int value;
};

/// One option, declared once.
struct OptionSpec {
  /// The ServeConfig member the option fills (monostate: none, e.g. --config).
  using Field = std::variant<std::monostate, bool ServeConfig::*, uint16_t ServeConfig::*,
                             uint32_t ServeConfig::*, std::string ServeConfig::*,
                             std::vector<std::string> ServeConfig::*,
                             std::vector<Endpoint> ServeConfig::*, LogLevel ServeConfig::*,
                             log::Format ServeConfig::*, RefreshMode ServeConfig::*,
                             NftFamily ServeConfig::*, QueueBackend ServeConfig::*,
                             RulesFormat ServeConfig::*>;
  /// Extra check of one value (of a Text or List option): "" or why it is refused.
  using Check = std::string (*)(const OptionSpec&, const std::string& value);

  const char* name;
  OptionKind kind;
  unsigned commands;    ///< OptionCommand bits
  const char* metavar;  ///< "" for flags
  const char* help;
  /// The default, written as a user would write it and parsed like one; nullptr: no value
  /// (a flag that is off, an empty text or list, or a default computed at parse time).
  const char* def;
  /// The default as --help and README.md show it, when `def` alone does not say it.
  const char* shown = nullptr;
  long min = 0, max = 0;          ///< Int bounds
  std::vector<EnumValue> values = {};  ///< Enum names and values
  Check check = nullptr;
  Field field = {};
  /// An Enum whose value's name is also kept as text (--mode's name for the logs).
  std::string ServeConfig::* name_field = nullptr;
  /// List of endpoints: the port of "ADDR" without one (0: a port is required).
  uint16_t default_port = 0;
};

/// The option table, read-only: what tests, --help and nft-rules walk.
const std::vector<OptionSpec>& option_table();

/// The option named `name` (without "--"), or nullptr.
const OptionSpec* find_option(std::string_view name);

/// The default as --help and README.md show it ("none" when there is none).
std::string shown_default(const OptionSpec& o);

/// The name of an enumerated option's value, from the table ("?" if unknown).
std::string_view option_value_name(std::string_view option, int value);
template <class E>
std::string_view option_value_name(std::string_view option, E value) {
  return option_value_name(option, static_cast<int>(value));
}

/// The option lines of a command's --help (OptionCommand bit), generated from the table.
std::string options_help(unsigned command);

/// Outcome of parsing: a config, or a one-line error (exit 2), or help was asked for (exit 0).
struct ParseOutcome {
  std::optional<ServeConfig> config;
  std::string error;
  bool help_shown = false;
};

/// Parses `dnsward serve` arguments (argv after "serve"), the config file they name, and
/// the defaults; checks bounds and refuses an upstream that is one of our listen addresses.
/// resolv_conf is read only when no upstream is given.
ParseOutcome parse_serve_config(const std::vector<std::string>& args,
                                const std::string& resolv_conf = "/etc/resolv.conf");

/// Parses the arguments of another command (an OptionCommand bit) against the same table:
/// only that command's options are accepted; the rest of the config keeps its defaults.
/// The checks that involve several options of the nft group run here too.
ParseOutcome parse_command_options(unsigned command, const std::vector<std::string>& args,
                                   const std::string& resolv_conf = "/etc/resolv.conf");

/// The --help text of `dnsward serve`, generated from the option table.
std::string serve_help();

}  // namespace dnsward
