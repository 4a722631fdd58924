// Options are declared once, in one table (name, type, default, bounds, help), which serves
// the command line, the config file (the same names as "key = value") and --help.
// parse_serve_config() validates and normalises them into an immutable ServeConfig.
#pragma once
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace dnsward {

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

/// Everything `dnsward serve` needs, validated.
struct ServeConfig {
  std::vector<Endpoint> listen;
  std::vector<Endpoint> upstreams;
  std::vector<std::string> allowlists;  ///< empty: the embedded default list
  bool no_nft = false;
  uint32_t negative_ttl = 30;
  uint16_t udp_payload = 1232;
  uint32_t upstream_timeout_ms = 1000;
  uint32_t upstream_tries = 2;
  uint32_t max_inflight = 4096;
  uint32_t tcp_max_connections = 256;
  uint32_t tcp_idle_timeout_ms = 10000;
  uint32_t tcp_max_pipelined = 32;
  LogLevel log_level = LogLevel::Info;
  std::string log_format = "logfmt";
  std::string upstream_source;  ///< "--upstream" or "/etc/resolv.conf", for the banner

  // The nftables hook.
  std::string nft_family = "inet";
  uint16_t nft_family_code = 1;  ///< NFPROTO_* of nft_family
  std::string nft_table = "dnsward";
  std::string nft_set4 = "allowed4";
  std::string nft_set6 = "allowed6";
  uint32_t nft_set_size = 65536;
  std::string nft_refresh = "auto";
  // Element timeout = clamp(TTL, min_ttl, max_ttl) + grace; reply TTLs are lowered to max_ttl.
  uint32_t min_ttl = 30;
  uint32_t max_ttl = 3600;
  uint32_t grace = 30;
  uint32_t cache_size = 10000;
  uint32_t cache_bytes = 32u << 20;       ///< bytes of answers the cache may hold
  uint32_t max_answer_addresses = 64;     ///< addresses one answer may vouch for

  // The policy lifecycle.
  std::string mode = "enforce";  ///< or "audit": forward everything, log what would be denied
  bool audit = false;
  std::string state;             ///< usage state file ("": not kept)
  std::string user = "dnsward";  ///< the user to drop to after start-up (as root)
  std::string metrics_listen;    ///< loopback ADDR:PORT for GET /metrics ("": none)
  std::string metrics_file;      ///< textfile-collector file ("": none)
  uint32_t metrics_interval = 15;
  bool user_explicit = false;    ///< --user was given
  uint32_t state_interval = 60;
  uint32_t state_max_names = 10000;  ///< denied (and would-deny) names kept in the state
};

/// Outcome of parsing: a config, or a one-line error (exit 2), or help was printed (exit 0).
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

/// The --help text of `dnsward serve`, generated from the option table.
std::string serve_help();

}  // namespace dnsward
