// The option table: command line, config file, bounds, defaults, --help, the README table,
// the loop check, and `nft-rules`, which takes its options from the same table, and the
// marks its ruleset carries for `serve` to read back (ruleset_check.hpp).
#include <doctest/doctest.h>

#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>

#include "dnsward/config.hpp"
#include "dnsward/log.hpp"
#include "dnsward/nft_rules.hpp"
#include "dnsward/ruleset_check.hpp"
#include "dnsward/vouch_ledger.hpp"

using namespace dnsward;

namespace {
std::string write_temp(const std::string& text) {
  char path[] = "/tmp/dnsward-test-XXXXXX";
  const int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  close(fd);
  std::ofstream(path) << text;
  return path;
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ",") + x;
  return s;
}
std::string join(const std::vector<Endpoint>& v) {
  std::string s;
  for (const auto& e : v) s += (s.empty() ? "" : ",") + e.text;
  return s;
}

// Each option's value in a ServeConfig, read from the member its name promises and written
// as a user would write it. Written here by hand, apart from the table's field pointers and
// value lists, so that a table entry pointing at the wrong member or mapping a name to the
// wrong enumerator shows.
const std::map<std::string, std::function<std::string(const ServeConfig&)>>& readers() {
  static const std::map<std::string, std::function<std::string(const ServeConfig&)>> r = {
      {"config", [](const ServeConfig&) { return std::string(); }},  // read, not kept
      {"listen", [](const ServeConfig& c) { return join(c.listen); }},
      {"upstream", [](const ServeConfig& c) { return join(c.upstreams); }},
      {"allowlist", [](const ServeConfig& c) { return join(c.allowlists); }},
      {"allow", [](const ServeConfig& c) { return join(c.nft_allow); }},
      {"no-nft", [](const ServeConfig& c) { return std::string(c.no_nft ? "true" : "false"); }},
      {"require-ruleset", [](const ServeConfig& c) { return std::string(c.require_ruleset ? "true" : "false"); }},
      {"negative-ttl", [](const ServeConfig& c) { return std::to_string(c.negative_ttl); }},
      {"udp-payload", [](const ServeConfig& c) { return std::to_string(c.udp_payload); }},
      {"upstream-timeout", [](const ServeConfig& c) { return std::to_string(c.upstream_timeout_ms); }},
      {"upstream-tries", [](const ServeConfig& c) { return std::to_string(c.upstream_tries); }},
      {"max-inflight", [](const ServeConfig& c) { return std::to_string(c.max_inflight); }},
      {"tcp-max-connections", [](const ServeConfig& c) { return std::to_string(c.tcp_max_connections); }},
      {"tcp-idle-timeout", [](const ServeConfig& c) { return std::to_string(c.tcp_idle_timeout_ms); }},
      {"tcp-max-pipelined", [](const ServeConfig& c) { return std::to_string(c.tcp_max_pipelined); }},
      {"log-level",
       [](const ServeConfig& c) {
         switch (c.log_level) {
           case LogLevel::Debug: return std::string("debug");
           case LogLevel::Info: return std::string("info");
           case LogLevel::Warn: return std::string("warn");
           case LogLevel::Error: return std::string("error");
         }
         return std::string("?");
       }},
      {"log-format",
       [](const ServeConfig& c) { return std::string(c.log_format == log::Format::Json ? "json" : "logfmt"); }},
      {"nft-family",
       [](const ServeConfig& c) {
         switch (static_cast<uint16_t>(c.nft_family)) {
           case NFPROTO_INET: return std::string("inet");
           case NFPROTO_IPV4: return std::string("ip");
           case NFPROTO_IPV6: return std::string("ip6");
         }
         return std::string("?");
       }},
      {"nft-table", [](const ServeConfig& c) { return c.nft_table; }},
      {"nft-set4", [](const ServeConfig& c) { return c.nft_set4; }},
      {"nft-set6", [](const ServeConfig& c) { return c.nft_set6; }},
      {"nft-set-size", [](const ServeConfig& c) { return std::to_string(c.nft_set_size); }},
      {"nft-refresh",
       [](const ServeConfig& c) {
         switch (c.nft_refresh) {
           case RefreshMode::Auto: return std::string("auto");
           case RefreshMode::Update: return std::string("update");
           case RefreshMode::Replace: return std::string("replace");
         }
         return std::string("?");
       }},
      {"min-ttl", [](const ServeConfig& c) { return std::to_string(c.min_ttl); }},
      {"max-ttl", [](const ServeConfig& c) { return std::to_string(c.max_ttl); }},
      {"grace", [](const ServeConfig& c) { return std::to_string(c.grace); }},
      {"mode",
       [](const ServeConfig& c) {
         // Both members must agree: the pipeline reads `audit`, the logs `mode`.
         const std::string m = c.audit ? "audit" : "enforce";
         return m == c.mode ? m : "audit=" + std::to_string(c.audit) + " mode=" + c.mode;
       }},
      {"state", [](const ServeConfig& c) { return c.state; }},
      {"state-interval", [](const ServeConfig& c) { return std::to_string(c.state_interval); }},
      {"state-max-names", [](const ServeConfig& c) { return std::to_string(c.state_max_names); }},
      {"metrics-listen", [](const ServeConfig& c) { return c.metrics_listen; }},
      {"metrics-file", [](const ServeConfig& c) { return c.metrics_file; }},
      {"metrics-interval", [](const ServeConfig& c) { return std::to_string(c.metrics_interval); }},
      {"user", [](const ServeConfig& c) { return c.user; }},
      {"cache-size", [](const ServeConfig& c) { return std::to_string(c.cache_size); }},
      {"cache-bytes", [](const ServeConfig& c) { return std::to_string(c.cache_bytes); }},
      {"max-answer-addresses", [](const ServeConfig& c) { return std::to_string(c.max_answer_addresses); }},
      {"host", [](const ServeConfig& c) { return std::string(c.host ? "true" : "false"); }},
      {"sandbox-ifaces", [](const ServeConfig& c) { return c.sandbox_ifaces; }},
      {"host-mark", [](const ServeConfig& c) { return std::to_string(c.host_mark_bit); }},
      {"control", [](const ServeConfig& c) { return c.control; }},
      {"control-group", [](const ServeConfig& c) { return c.control_group; }},
      {"sandboxes", [](const ServeConfig& c) { return c.sandboxes_dir; }},
      {"host-set-size", [](const ServeConfig& c) { return std::to_string(c.host_set_size); }},
      {"sandbox-max-elements", [](const ServeConfig& c) { return std::to_string(c.sandbox_max_elements); }},
      {"sandbox-max-inflight", [](const ServeConfig& c) { return std::to_string(c.sandbox_max_inflight); }},
      {"sandbox-max-tcp", [](const ServeConfig& c) { return std::to_string(c.sandbox_max_tcp); }},
      {"sandbox-state-names", [](const ServeConfig& c) { return std::to_string(c.sandbox_state_names); }},
      {"max-names-per-element", [](const ServeConfig& c) { return std::to_string(c.max_names_per_element); }},
      {"sni-guard", [](const ServeConfig& c) { return std::string(c.sni_guard ? "true" : "false"); }},
      {"sni-ports", [](const ServeConfig& c) { return join(c.sni_ports); }},
      {"http-ports", [](const ServeConfig& c) { return join(c.http_ports); }},
      {"queue-num", [](const ServeConfig& c) { return std::to_string(c.queue_num); }},
      {"queue-maxlen", [](const ServeConfig& c) { return std::to_string(c.queue_maxlen); }},
      {"queue-backend",
       [](const ServeConfig& c) { return std::string(c.queue_backend == QueueBackend::Nft ? "nft" : "xt"); }},
      {"guard-marks", [](const ServeConfig& c) { return c.guard_marks; }},
      {"first-flight-timeout", [](const ServeConfig& c) { return std::to_string(c.first_flight_timeout_ms); }},
      {"print",
       [](const ServeConfig& c) {
         switch (c.print) {
           case RulesFormat::Nft: return std::string("nft");
           case RulesFormat::Iptables: return std::string("iptables");
           case RulesFormat::Ip6tables: return std::string("ip6tables");
         }
         return std::string("?");
       }},
  };
  return r;
}

std::string read_option(const ServeConfig& c, const OptionSpec& o) {
  const auto it = readers().find(o.name);
  REQUIRE_MESSAGE(it != readers().end(), "the test has no reader for --", o.name);
  return it->second(c);
}

// Two valid values of an option, both unlike its default and unlike each other where the
// option has room for that (an enum of two names gets its default as the second).
std::pair<std::string, std::string> samples(const OptionSpec& o) {
  static const std::map<std::string, std::pair<std::string, std::string>> text = {
      {"listen", {"127.0.0.1:5301", "[::1]:5302"}},
      {"upstream", {"192.0.2.1", "192.0.2.2:5353"}},
      {"allowlist", {"/a.allow", "/b.allow"}},
      {"allow", {"192.0.2.0/24", "2001:db8::/32"}},
      {"nft-table", {"t_a", "t_b"}},
      {"nft-set4", {"s4_a", "s4_b"}},
      {"nft-set6", {"s6_a", "s6_b"}},
      {"state", {"/tmp/state-a", "/tmp/state-b"}},
      {"metrics-listen", {"127.0.0.1:9101", "127.0.0.1:9102"}},
      {"metrics-file", {"/tmp/metrics-a", "/tmp/metrics-b"}},
      {"user", {"nobody", "root"}},
      {"sandbox-ifaces", {"vm*", "tap0"}},
      {"control", {"/tmp/control-a", "/tmp/control-b"}},
      {"control-group", {"adm", "nogroup"}},
      {"sandboxes", {"/tmp/sandboxes-a", "/tmp/sandboxes-b"}},
      {"sni-ports", {"8443", "4443"}},
      {"http-ports", {"8080", "8000"}},
      {"guard-marks", {"0x00000007", "0x70000000"}},
  };
  switch (o.kind) {
    case OptionKind::Flag: return {"false", "true"};
    case OptionKind::Int: {
      const long def = std::stol(o.def);
      return {std::to_string(def > o.min ? def - 1 : def + 2), std::to_string(def < o.max ? def + 1 : def - 2)};
    }
    case OptionKind::Enum: {
      std::vector<std::string> others;
      for (const auto& v : o.values)
        if (v.name != std::string(o.def)) others.push_back(v.name);
      REQUIRE(!others.empty());
      return {others[0], others.size() > 1 ? others[1] : std::string(o.def)};
    }
    case OptionKind::Text:
    case OptionKind::List: {
      const auto it = text.find(o.name);
      REQUIRE_MESSAGE(it != text.end(), "the test has no sample values for --", o.name);
      return it->second;
    }
  }
  return {};
}

std::vector<const OptionSpec*> options_of(unsigned command) {
  std::vector<const OptionSpec*> v;
  for (const auto& o : option_table())
    if (o.commands & command) v.push_back(&o);
  return v;
}

// A resolv.conf for the tests: what `serve` falls back to without --upstream.
const std::string& test_resolv_conf() {
  static const struct File {
    std::string path = write_temp("search x\nnameserver 192.0.2.1\nnameserver ::1\n");
    ~File() { std::remove(path.c_str()); }
  } file;
  return file.path;
}

std::string strip(std::string s, const char* chars) {
  std::string out;
  for (char c : s)
    if (!std::strchr(chars, c)) out += c;
  return out;
}

// The names in one set and not the other, for a failure message.
std::string difference(const std::set<std::string>& a, const std::set<std::string>& b) {
  std::string d;
  for (const auto& x : a)
    if (!b.count(x)) d += " only-left:" + x;
  for (const auto& x : b)
    if (!a.count(x)) d += " only-right:" + x;
  return d;
}

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(' ');
  return b == std::string::npos ? "" : s.substr(b, s.find_last_not_of(' ') - b + 1);
}

// README.md's text between a heading and the next heading of its level or above.
std::string readme_section(const std::string& heading) {
  std::ifstream in(DNSWARD_TEST_DATA "/../../README.md");
  REQUIRE(in);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  const auto start = text.find("\n" + heading + "\n");
  REQUIRE_MESSAGE(start != std::string::npos, "README.md has no section ", heading);
  const std::string level = heading.substr(0, heading.find(' ') + 1);
  auto end = text.find("\n#", start + heading.size() + 1);
  while (end != std::string::npos && text.compare(end + 1, level.size(), level) != 0 &&
         text.compare(end + 1, level.size() - 1, level.substr(1)) != 0)
    end = text.find("\n#", end + 1);
  return text.substr(start, end == std::string::npos ? std::string::npos : end - start);
}
}  // namespace

TEST_CASE("command-line options reach the config, with defaults for the rest") {
  const auto r = parse_serve_config({"--listen", "127.0.0.1:5300", "--listen", "[::1]:5300",
                                     "--upstream", "127.0.0.2:53", "--upstream-timeout", "700",
                                     "--no-nft"});
  REQUIRE_MESSAGE(r.config, r.error);
  CHECK(r.config->listen.size() == 2);
  CHECK(r.config->listen[1].family() == AF_INET6);
  CHECK(r.config->listen[1].port() == 5300);
  CHECK(r.config->upstreams.size() == 1);
  CHECK(r.config->upstream_timeout_ms == 700);
  CHECK(r.config->no_nft);
  CHECK(r.config->negative_ttl == 30);
  CHECK(r.config->udp_payload == 1232);
}

TEST_CASE("with no options every field holds exactly the option table's default") {
  const auto r = parse_serve_config({}, test_resolv_conf());
  REQUIRE_MESSAGE(r.config, r.error);
  const ServeConfig plain;  // what a ServeConfig starts as, before any parsing
  std::set<std::string> table_names, reader_names;
  for (const auto& o : option_table()) {
    const std::string opt_name = o.name;
    CAPTURE(opt_name);
    table_names.insert(o.name);
    std::string expected;
    if (o.def) expected = o.def;
    else if (o.kind == OptionKind::Flag) expected = "false";
    else if (std::string(o.name) == "upstream") expected = "192.0.2.1,::1";  // resolv.conf's
    CHECK(read_option(*r.config, o) == expected);
    if (std::string(o.name) != "upstream") CHECK(read_option(plain, o) == expected);
  }
  for (const auto& [name, reader] : readers()) reader_names.insert(name);
  CHECK_MESSAGE(table_names == reader_names, difference(table_names, reader_names));  // the walk above covered every ServeConfig option
  CHECK_FALSE(r.config->user_explicit);
  CHECK(r.config->upstream_source == test_resolv_conf());
}

TEST_CASE("every Int option takes its bounds exactly and refuses one beyond, naming them") {
  for (const OptionSpec* o : options_of(kServe)) {
    if (o->kind != OptionKind::Int) continue;
    const std::string opt_name = o->name;
    CAPTURE(opt_name);
    // min-ttl may not exceed max-ttl: widen the other one so each bound can be tried alone.
    auto with = [&](long v) {
      std::vector<std::string> args = {"--upstream", "192.0.2.1", fmt::format("--{}", o->name), std::to_string(v)};
      if (opt_name == "min-ttl") args.insert(args.end(), {"--max-ttl", "604800"});
      if (opt_name == "max-ttl") args.insert(args.end(), {"--min-ttl", "1"});
      return parse_serve_config(args);
    };
    for (long v : {o->min, o->max}) {
      const auto r = with(v);
      REQUIRE_MESSAGE(r.config, r.error);
      CHECK(read_option(*r.config, *o) == std::to_string(v));  // stored whole, not truncated
    }
    for (long v : {o->min - 1, o->max + 1}) {
      const auto r = with(v);
      CHECK_FALSE(r.config);
      CHECK(r.error == fmt::format("--{} {}: must be between {} and {}", o->name, v, o->min, o->max));
    }
  }
}

TEST_CASE("every Enum option stores each of its names as that value and refuses others") {
  for (const OptionSpec* o : options_of(kServe)) {
    if (o->kind != OptionKind::Enum) continue;
    const std::string opt_name = o->name;
    CAPTURE(opt_name);
    std::string names;
    for (const auto& v : o->values) {
      const auto r = parse_serve_config({"--upstream", "192.0.2.1", fmt::format("--{}", o->name), v.name});
      REQUIRE_MESSAGE(r.config, r.error);
      CHECK(read_option(*r.config, *o) == v.name);
      CHECK(option_value_name(o->name, v.value) == v.name);
      names += (names.empty() ? "" : ", ") + std::string(v.name);
    }
    const auto r = parse_serve_config({"--upstream", "192.0.2.1", fmt::format("--{}", o->name), "bogus"});
    CHECK_FALSE(r.config);
    CHECK(r.error == fmt::format("--{} bogus: must be one of {}", o->name, names));
  }
}

TEST_CASE("the nft family enum carries the kernel's NFPROTO numbers") {
  CHECK(static_cast<uint16_t>(NftFamily::Inet) == NFPROTO_INET);
  CHECK(static_cast<uint16_t>(NftFamily::Ip) == NFPROTO_IPV4);
  CHECK(static_cast<uint16_t>(NftFamily::Ip6) == NFPROTO_IPV6);
  const auto r = parse_serve_config({"--upstream", "192.0.2.1", "--nft-family", "ip6"});
  REQUIRE_MESSAGE(r.config, r.error);
  CHECK(r.config->nft_family == NftFamily::Ip6);
}

TEST_CASE("every option is accepted in a config file as key = value") {
  for (const OptionSpec* o : options_of(kServe)) {
    if (std::string(o->name) == "config") continue;  // a config file cannot name another
    const std::string opt_name = o->name;
    CAPTURE(opt_name);
    const std::string value = samples(*o).first;
    const std::string f = write_temp(fmt::format("# one option\n{} = {}\n", o->name, value));
    const auto r = parse_serve_config({"--config", f}, test_resolv_conf());
    std::remove(f.c_str());
    REQUIRE_MESSAGE(r.config, r.error);
    CHECK(read_option(*r.config, *o) == value);
  }
}

TEST_CASE("a config file takes the same names as key = value lines") {
  const std::string f = write_temp(
      "# dnsward config\nlisten = 127.0.0.1:5301\nupstream = 127.0.0.3:5353\n"
      "upstream = 127.0.0.4\nnegative-ttl = 5  # short\n  no-nft = true\nuser = nobody\n");
  const auto r = parse_serve_config({"--config", f});
  std::remove(f.c_str());
  REQUIRE_MESSAGE(r.config, r.error);
  CHECK(r.config->listen[0].port() == 5301);
  REQUIRE(r.config->upstreams.size() == 2);
  CHECK(r.config->upstreams[0].port() == 5353);
  CHECK(r.config->upstreams[1].port() == 53);
  CHECK(r.config->negative_ttl == 5);
  CHECK(r.config->no_nft);
  CHECK(r.config->user_explicit);  // from the file counts as given
}

TEST_CASE("command-line values win over config-file values; list values add up, command line first") {
  for (const OptionSpec* o : options_of(kServe)) {
    if (std::string(o->name) == "config") continue;
    const std::string opt_name = o->name;
    CAPTURE(opt_name);
    const auto [in_file, on_line] = samples(*o);
    const std::string f = write_temp(fmt::format("{} = {}\n", o->name, in_file));
    std::vector<std::string> args = {"--config", f, fmt::format("--{}", o->name)};
    if (o->kind != OptionKind::Flag) args.push_back(on_line);
    // --host listens on wildcard addresses only (where the host ruleset redirects DNS).
    if (opt_name == "host") args.insert(args.end(), {"--listen", "0.0.0.0:5353"});
    const auto r = parse_serve_config(args, test_resolv_conf());
    std::remove(f.c_str());
    REQUIRE_MESSAGE(r.config, r.error);
    if (o->kind == OptionKind::List) CHECK(read_option(*r.config, *o) == on_line + "," + in_file);
    else CHECK(read_option(*r.config, *o) == on_line);  // a flag: the file's false loses to --no-nft
  }
}

TEST_CASE("a bad config file is reported as FILE:LINE: reason") {
  const struct {
    const char* text;
    int line;
    const char* says;
  } cases[] = {
      {"# ok\nlisten = 127.0.0.1:5301\nbogus = 1\n", 3, "unknown option 'bogus'"},
      {"negative-ttl = 99999\n", 1, "negative-ttl = 99999: must be between 0 and 86400"},
      {"\n\nlog-level = loud\n", 3, "log-level = loud: must be one of debug, info, warn, error"},
      {"udp-payload = 12x\n", 1, "udp-payload = 12x: not a number"},
      {"no-nft = maybe\n", 1, "no-nft = maybe: expected true or false"},
      {"listen\n", 1, "expected 'key = value'"},
      {"grace = 5\ngrace = 6\n", 2, "grace given twice"},
      {"nft-table = a b\n", 1, "nft-table = a b: not an nftables name"},
      {"config = /etc/other.conf\n", 1, "a config file cannot name another"},
      {"allow = 192.0.2.0/24\n", 1, "unknown option 'allow'"},  // nft-rules only
      {"listen = 127.0.0.1:53\nbogus%value% = 1\n", 2, "unknown option 'bogus%value%'"},
  };
  for (const auto& c : cases) {
    const std::string text = c.text;
    CAPTURE(text);
    const std::string f = write_temp(c.text);
    // The command line overriding a bad value does not hide it.
    const auto r = parse_serve_config({"--config", f, "--upstream", "192.0.2.1", "--negative-ttl", "3"});
    std::remove(f.c_str());
    CHECK_FALSE(r.config);
    CHECK(r.error.rfind(fmt::format("{}:{}: ", f, c.line), 0) == 0);
    CHECK(r.error.find(c.says) != std::string::npos);
    CHECK(r.error.find('\n') == std::string::npos);
  }
}

TEST_CASE("a NUL or another control byte in a config line is refused with FILE:LINE") {
  // A NUL would cut "127.0.0.1\0junk:5353" to 127.0.0.1 where the value is used.
  std::string text = "upstream = 192.0.2.1\nlisten = 127.0.0.1";
  text += '\0';
  text += "junk:5353\n";
  const std::string f = write_temp(text);
  const auto r = parse_serve_config({"--config", f});
  std::remove(f.c_str());
  CHECK_FALSE(r.config);
  CHECK(r.error == fmt::format("{}:2: control character in the line", f));
}

TEST_CASE("bad options and values give a one-line error naming them") {
  const struct { std::vector<std::string> args; const char* says; } cases[] = {
      {{"--bogus"}, "bogus"},
      {{"--upstream-timeout", "10", "--upstream", "127.0.0.2"}, "--upstream-timeout 10: must be between"},
      {{"--udp-payload", "abc", "--upstream", "127.0.0.2"}, "--udp-payload abc: not a number"},
      {{"--listen", "127.0.0.1", "--upstream", "127.0.0.2"}, "--listen 127.0.0.1"},
      {{"--listen", "[::1]:99999", "--upstream", "127.0.0.2"}, "--listen [::1]:99999"},
      {{"--listen", "127.0.0.1:53", "--listen", "127.0.0.1:53", "--upstream", "127.0.0.2"}, "--listen 127.0.0.1:53: given twice"},
      {{"--upstream", "not-an-ip"}, "--upstream not-an-ip"},
      {{"--log-level", "loud", "--upstream", "127.0.0.2"}, "--log-level loud"},
      {{"--nft-set4", "x", "--nft-set6", "x", "--upstream", "127.0.0.2"}, "must name different sets"},
      {{"--min-ttl", "100", "--max-ttl", "50", "--upstream", "127.0.0.2"}, "--min-ttl 100 is above --max-ttl 50"},
      {{"--user", "a b", "--upstream", "127.0.0.2"}, "--user a b: not a user name"},
      {{"--allow", "192.0.2.0/24", "--upstream", "127.0.0.2"}, "unrecognised option '--allow'"},  // nft-rules only
      {{"--upstream-t", "700", "--upstream", "127.0.0.2"}, "unrecognised option '--upstream-t'"},  // no guessing
      {{"--config", "/nonexistent/dnsward.conf"}, "cannot open"},
      {{"extra-positional"}, ""},
  };
  for (const auto& c : cases) {
    const std::string says = c.says;
    CAPTURE(says);
    const auto r = parse_serve_config(c.args);
    CHECK_FALSE(r.config);
    CHECK(r.error.find(c.says) != std::string::npos);
    CHECK(r.error.find('\n') == std::string::npos);
  }
}

TEST_CASE("an upstream that is our own listen address is a forwarding loop") {
  auto r = parse_serve_config({"--listen", "127.0.0.1:5302", "--upstream", "127.0.0.1:5302"});
  CHECK_FALSE(r.config);
  CHECK(r.error.find("forwarding loop") != std::string::npos);
  r = parse_serve_config({"--listen", "0.0.0.0:5302", "--upstream", "127.0.0.9:5302"});
  CHECK_FALSE(r.config);
  CHECK(r.error.find("forwarding loop") != std::string::npos);
  r = parse_serve_config({"--listen", "127.0.0.1:5302", "--upstream", "127.0.0.1:5303"});
  CHECK(r.config);
}

TEST_CASE("without --upstream the nameservers of resolv.conf are used") {
  const std::string f = write_temp("search x\nnameserver 192.0.2.1\nnameserver ::1\n");
  const auto r = parse_serve_config({}, f);
  REQUIRE_MESSAGE(r.config, r.error);
  CHECK(r.config->upstreams.size() == 2);
  CHECK(r.config->upstream_source == f);
  const std::string empty = write_temp("search x\n");
  const auto r2 = parse_serve_config({}, empty);
  CHECK_FALSE(r2.config);
  CHECK(r2.error.find("names no nameserver") != std::string::npos);
  std::remove(f.c_str());
  std::remove(empty.c_str());
}

// The option lines of a --help text, by option name.
std::map<std::string, std::string> help_lines(const std::string& help) {
  std::map<std::string, std::string> lines;
  std::istringstream in(help);
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("  --", 0) == 0) lines[line.substr(4, line.find(' ', 4) - 4)] = line;
  return lines;
}

void check_help_walks_the_table(const std::string& help, unsigned command) {
  auto lines = help_lines(help);
  CHECK(lines.erase("help") == 1);
  std::set<std::string> listed, declared;
  for (const auto& [name, line] : lines) listed.insert(name);
  for (const OptionSpec* o : options_of(command)) {
    const std::string opt_name = o->name;
    CAPTURE(opt_name);
    declared.insert(o->name);
    const std::string& line = lines[o->name];
    CHECK(line.rfind(fmt::format("  --{}{}{} ", o->name, *o->metavar ? " " : "", o->metavar), 0) == 0);
    CHECK(line.find(fmt::format("default: {}", shown_default(*o))) != std::string::npos);
    if (o->kind == OptionKind::Int) CHECK(line.find(fmt::format("{}..{}", o->min, o->max)) != std::string::npos);
    if (o->kind == OptionKind::Enum) {
      std::string names;
      for (const auto& v : o->values) names += (names.empty() ? "" : ", ") + std::string(v.name);
      CHECK(line.find("one of: " + names + ";") != std::string::npos);
    }
  }
  CHECK_MESSAGE(listed == declared, difference(listed, declared));
}

TEST_CASE("serve --help lists exactly the table's serve options, each with its default") {
  check_help_walks_the_table(serve_help(), kServe);
  CHECK(serve_help().find("  --upstream-timeout MS") != std::string::npos);
  CHECK(serve_help().find("50..30000") != std::string::npos);
}

TEST_CASE("nft-rules --help lists exactly the table's nft-rules options, each with its default") {
  check_help_walks_the_table(nft_rules_help(), kNftRules);
  for (const char* shared : {"listen", "upstream", "user", "nft-family", "nft-table", "nft-set4",
                             "nft-set6", "nft-set-size", "allow"})
    CHECK(help_lines(nft_rules_help()).count(shared) == 1);
}

TEST_CASE("README's option table lists exactly the table's serve options, with the same defaults") {
  const std::string section = readme_section("## Command line");
  std::map<std::string, std::pair<std::string, std::string>> rows;  // name -> (option cell, default cell)
  std::istringstream in(section);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("| `--", 0) != 0) continue;
    std::vector<std::string> cells;
    std::size_t pos = 1;
    for (std::size_t bar; cells.size() < 2 && (bar = line.find(" | ", pos)) != std::string::npos; pos = bar + 3)
      cells.push_back(trim(line.substr(pos, bar - pos)));
    REQUIRE_MESSAGE(cells.size() == 2, line);
    const std::string opt = strip(cells[0], "`");
    const std::string name = opt.substr(2, opt.find(' ') == std::string::npos ? std::string::npos : opt.find(' ') - 2);
    CHECK_MESSAGE(rows.count(name) == 0, "listed twice: ", name);
    rows[name] = {opt, strip(cells[1], "`")};
  }
  std::set<std::string> documented, declared;
  for (const auto& [name, row] : rows) documented.insert(name);
  for (const OptionSpec* o : options_of(kServe)) {
    const std::string opt_name = o->name;
    CAPTURE(opt_name);
    declared.insert(o->name);
    if (!rows.count(o->name)) continue;  // reported by the set comparison below
    const auto& [opt, def] = rows[o->name];
    CHECK(opt == fmt::format("--{}{}{}", o->name, *o->metavar ? " " : "", o->metavar));
    std::string expected = shown_default(*o);
    if (o->kind == OptionKind::Int) expected += fmt::format(" ({}..{})", o->min, o->max);
    CHECK(def == expected);
  }
  CHECK_MESSAGE(documented == declared, difference(documented, declared));
}

TEST_CASE("README's nft-rules synopsis names exactly the table's nft-rules options") {
  const std::string section = readme_section("### The ruleset: `dnsward nft-rules`");
  const std::string synopsis = section.substr(0, section.find("\n\n", section.find("dnsward nft-rules [")));
  std::set<std::string> documented, declared;
  for (auto p = synopsis.find("[--"); p != std::string::npos; p = synopsis.find("[--", p + 1))
    documented.insert(synopsis.substr(p + 3, synopsis.find_first_of(" ]", p + 3) - p - 3));
  for (const OptionSpec* o : options_of(kNftRules)) declared.insert(o->name);
  CHECK_MESSAGE(documented == declared, difference(documented, declared));
}

TEST_CASE("--require-ruleset is refused with --no-nft: without the hook there is no ruleset to require") {
  const auto r = parse_serve_config({"--upstream", "192.0.2.1", "--require-ruleset", "--no-nft"});
  CHECK_FALSE(r.config);
  CHECK(r.error.find("--require-ruleset needs the nftables hook") == 0);
  const auto ok = parse_serve_config({"--upstream", "192.0.2.1", "--require-ruleset"});
  REQUIRE_MESSAGE(ok.config, ok.error);
  CHECK(ok.config->require_ruleset);
}

TEST_CASE("a '%' in options is refused before Boost's error formatting loops on it (fuzzing)") {
  const auto r = parse_serve_config({"--max-infm-ptod%original_token%ime", "x"});
  CHECK_FALSE(r.config);
  CHECK(r.error.find("'%' is not allowed") != std::string::npos);
}

TEST_CASE("nft-rules takes the nft group, listen, upstream and user from the table, with serve's defaults") {
  const auto serve = parse_serve_config({}, test_resolv_conf());
  const auto rules = parse_nft_rules({}, test_resolv_conf());
  REQUIRE_MESSAGE(serve.config, serve.error);
  REQUIRE_MESSAGE(rules.config, rules.error);
  for (const OptionSpec* o : options_of(kNftRules)) {
    const std::string opt_name = o->name;
    CAPTURE(opt_name);
    CHECK(read_option(*rules.config, *o) == read_option(*serve.config, *o));
  }
  // Options of one command only are refused by the other.
  CHECK(parse_nft_rules({"--cache-size", "5"}).error.find("cache-size") != std::string::npos);
  CHECK_FALSE(parse_nft_rules({"--config", "/dev/null"}).config);
  CHECK(parse_nft_rules({"--allow", "192.0.2.0/24"}, test_resolv_conf()).config);
}

TEST_CASE("nft-rules refuses a name that would inject nftables statements, naming the option") {
  for (const char* opt : {"--nft-table", "--nft-set4", "--nft-set6"}) {
    const std::string option = opt;
    CAPTURE(option);
    const auto r = parse_nft_rules({opt, "x { } ; flush ruleset ; table inet y"}, test_resolv_conf());
    CHECK_FALSE(r.config);
    CHECK(r.error.rfind(fmt::format("{} x {{ }} ; flush ruleset ; table inet y: not an nftables name", opt), 0) == 0);
  }
  const auto u = parse_nft_rules({"--user", "x\" accept ; flush ruleset ; \""}, test_resolv_conf());
  CHECK_FALSE(u.config);
  CHECK(u.error.find("--user") == 0);
}

TEST_CASE("nft-rules refuses an address its table's family cannot see") {
  const struct { std::vector<std::string> args; const char* says; } cases[] = {
      {{"--nft-family", "ip", "--listen", "[::1]:53"}, "--listen [::1]:53: an IPv6 address, but a table of --nft-family ip sees only IPv4"},
      {{"--nft-family", "ip", "--upstream", "2001:db8::53"}, "--upstream 2001:db8::53: an IPv6 address"},
      {{"--nft-family", "ip", "--allow", "2001:db8::/32"}, "--allow 2001:db8::/32: an IPv6 address"},
      {{"--nft-family", "ip6", "--upstream", "192.0.2.53"}, "--upstream 192.0.2.53: an IPv4 address, but a table of --nft-family ip6 sees only IPv6"},
      {{"--nft-family", "ip6", "--allow", "192.0.2.0/24"}, "--allow 192.0.2.0/24: an IPv4 address"},
  };
  for (const auto& c : cases) {
    const std::string says = c.says;
    CAPTURE(says);
    auto args = c.args;
    if (c.args[1] == "ip6" && std::find(args.begin(), args.end(), "--listen") == args.end())
      args.insert(args.end(), {"--listen", "[::1]:53"});
    const auto r = parse_nft_rules(args, test_resolv_conf());
    CHECK_FALSE(r.config);
    CHECK(r.error.rfind(c.says, 0) == 0);
  }
  // resolv.conf's servers of the other family are left out, not refused.
  const auto r = parse_nft_rules({"--nft-family", "ip"}, test_resolv_conf());
  REQUIRE_MESSAGE(r.config, r.error);
  CHECK(join(r.config->upstreams) == "192.0.2.1");
}

TEST_CASE("the ruleset has the table, sets and rules of its family only") {
  const struct {
    const char* family;
    std::vector<std::string> args;
    std::vector<std::string> has, lacks;
  } cases[] = {
      {"inet", {"--upstream", "192.0.2.53", "--upstream", "[2001:db8::53]", "--allow", "2001:db8::/32"},
       {"table inet dnsward\ndelete table inet dnsward\n", "table inet dnsward {", "set allowed4 {", "set allowed6 {",
        "ip daddr @allowed4 accept", "ip6 daddr @allowed6 accept", "icmpv6 type",
        "meta skuid \"dnsward\" ip daddr 192.0.2.53 udp dport 53 accept",
        "meta skuid \"dnsward\" ip6 daddr 2001:db8::53 tcp dport 53 accept",
        "ip6 daddr 2001:db8::/32 accept", "reject with icmpx type admin-prohibited"},
       {"table ip ", "table ip6 "}},
      {"ip", {"--upstream", "192.0.2.53", "--nft-table", "fw", "--nft-set4", "v4", "--allow", "192.0.2.0/24"},
       {"table ip fw\ndelete table ip fw\n", "table ip fw {", "set v4 {", "ip daddr @v4 accept",
        "ip daddr 127.0.0.1 udp dport 53 accept", "ip daddr 192.0.2.0/24 accept",
        "reject with icmp type admin-prohibited"},
       {"inet", "ipv6_addr", "ip6 ", "icmpv6", "icmpx", "allowed6"}},
      {"ip6", {"--upstream", "[2001:db8::53]:5353", "--listen", "[::1]:53", "--nft-set6", "v6"},
       {"table ip6 dnsward\ndelete table ip6 dnsward\n", "set v6 {", "ip6 daddr @v6 accept",
        "ip6 daddr ::1 tcp dport 53 accept", "ip6 daddr 2001:db8::53 udp dport 5353 accept", "icmpv6 type",
        "reject with icmpv6 type admin-prohibited"},
       {"inet", "ipv4_addr", "ip daddr", "icmpx", "icmp type", "allowed4"}},
  };
  for (const auto& c : cases) {
    const std::string family = c.family;
    CAPTURE(family);
    auto args = c.args;
    args.insert(args.end(), {"--nft-family", c.family});
    const auto r = parse_nft_rules(args, test_resolv_conf());
    REQUIRE_MESSAGE(r.config, r.error);
    const std::string rules = render_nft_rules(*r.config);
    for (const auto& h : c.has) CHECK_MESSAGE(rules.find(h) != std::string::npos, h);
    for (const auto& l : c.lacks) CHECK_MESSAGE(rules.find(l) == std::string::npos, l);
  }
}

namespace {
/// The ruleset nft-rules prints for args, as text.
std::string rendered(std::vector<std::string> args) {
  const auto r = parse_nft_rules(args, test_resolv_conf());
  REQUIRE_MESSAGE(r.config, r.error);
  return render_nft_rules(*r.config);
}

/// The lines of a chain's body (the output chain's unless named), trimmed of tabs.
std::vector<std::string> chain_lines(const std::string& rules, const std::string& chain = "output") {
  std::vector<std::string> out;
  const auto at = rules.find("\tchain " + chain + " {");
  REQUIRE(at != std::string::npos);
  std::istringstream in(rules.substr(at));
  std::string line;
  std::getline(in, line);
  while (std::getline(in, line) && line != "\t}") {
    const auto first = line.find_first_not_of('\t');
    out.push_back(first == std::string::npos ? "" : line.substr(first));
  }
  return out;
}
}  // namespace

TEST_CASE("the ruleset's chain names its id and rule count, and every rule its place, as serve reads them") {
  for (const char* family : {"inet", "ip", "ip6"}) {
    const std::string fam = family;
    CAPTURE(fam);
    std::vector<std::string> args = {"--nft-family", family, "--upstream",
                                     fam == "ip6" ? "[2001:db8::53]" : "192.0.2.53", "--allow",
                                     fam == "ip6" ? "2001:db8::/32" : "192.0.2.0/24"};
    if (fam == "ip6") args.insert(args.end(), {"--listen", "[::1]:53"});
    const std::string text = rendered(args);
    const std::vector<std::string> lines = chain_lines(text);
    REQUIRE(lines.size() > 3);
    CHECK(lines[0] == "type filter hook output priority filter; policy drop;");
    REQUIRE(lines[1].rfind("comment \"", 0) == 0);
    const auto mark = parse_chain_comment(lines[1].substr(9, lines[1].size() - 10));
    REQUIRE(mark);
    // Every rule, and nothing else, carries "dnsward i/N id=...", numbered in order.
    std::size_t rules = 0;
    for (std::size_t i = 2; i < lines.size(); ++i) {
      const std::string& l = lines[i];
      if (l.empty() || l[0] == '#') continue;
      const auto at = l.rfind(" comment \"");
      REQUIRE_MESSAGE(at != std::string::npos, l);
      const auto m = parse_rule_comment(l.substr(at + 10, l.size() - at - 11));
      REQUIRE_MESSAGE(m, l);
      CHECK(m->index == rules);
      CHECK(m->rules == mark->rules);
      CHECK(m->id == mark->id);
      ++rules;
    }
    CHECK(rules == mark->rules);
    // The id is the hash of the table's lines as printed, from `table F T {` to its closing
    // brace, without leading tabs, blank lines, notes and the marks (the chain's comment
    // line, each rule's comment): the sets' declarations are part of it.
    std::vector<std::string> hashed;
    std::istringstream in(text.substr(text.find(fmt::format("table {} dnsward {{", fam))));
    for (std::string l; std::getline(in, l);) {
      l.erase(0, l.find_first_not_of('\t') == std::string::npos ? l.size() : l.find_first_not_of('\t'));
      if (l.empty() || l[0] == '#' || l.rfind("comment \"", 0) == 0) continue;
      const auto at = l.rfind(" comment \"dnsward ");
      hashed.push_back(at == std::string::npos ? l : l.substr(0, at));
    }
    REQUIRE(hashed.size() > 8);
    CHECK(std::find(hashed.begin(), hashed.end(), "flags timeout") != hashed.end());
    CHECK(hashed.back() == "}");
    CHECK(ruleset_id(hashed) == mark->id);
  }
}

TEST_CASE("the ruleset's id changes with any line of its table, options included") {
  const std::vector<std::string> base = {"--upstream", "192.0.2.53"};
  auto id_of = [](const std::vector<std::string>& args) {
    const std::vector<std::string> lines = chain_lines(rendered(args));
    return parse_chain_comment(lines.at(1).substr(9, lines.at(1).size() - 10)).value().id;
  };
  const uint64_t id = id_of(base);
  CHECK(id_of(base) == id);
  CHECK(id_of({"--upstream", "192.0.2.54"}) != id);
  CHECK(id_of({"--upstream", "192.0.2.53", "--allow", "192.0.2.0/24"}) != id);
  CHECK(id_of({"--upstream", "192.0.2.53", "--user", "root"}) != id);
  // The sets' declarations and the names are part of the text the id names.
  CHECK(id_of({"--upstream", "192.0.2.53", "--nft-set-size", "2048"}) != id);
  CHECK(id_of({"--upstream", "192.0.2.53", "--nft-set4", "v4"}) != id);
  CHECK(id_of({"--upstream", "192.0.2.53", "--nft-table", "fw"}) != id);
}

TEST_CASE("the ruleset lets IPv6 work on a link: neighbour discovery at hop limit 255, a host's MLD reports on the link only") {
  const std::string inet = rendered({"--upstream", "192.0.2.53"});
  // ND at hop limit 255 (RFC 4861 7.1.1, 7.1.2: the receiver drops it otherwise), to any
  // destination (neighbour unreachability detection probes a global next hop by unicast).
  CHECK(inet.find("\t\ticmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } "
                  "ip6 hoplimit 255 accept comment") != std::string::npos);
  // The MLD a host sends: MLDv1 report and done (RFC 2710), the MLDv2 report (RFC 3810),
  // from a link-local address or :: (RFC 3590), to a link-scope group, at hop limit 1. No
  // query (type 130, what routers send), no report to a global group or a unicast address.
  CHECK(inet.find("\t\ticmpv6 type { mld-listener-report, mld-listener-done, mld2-listener-report } "
                  "ip6 saddr { fe80::/10, :: } ip6 daddr ff02::/16 ip6 hoplimit 1 accept comment") !=
        std::string::npos);
  CHECK(inet.find("mld-listener-query") == std::string::npos);
  // Exactly these two ICMPv6 rules: nothing else lets ICMPv6 out.
  std::size_t icmpv6 = 0;
  for (const auto& l : chain_lines(inet)) icmpv6 += l.rfind("icmpv6 ", 0) == 0;
  CHECK(icmpv6 == 2);
  const std::string ip6 = rendered({"--nft-family", "ip6", "--listen", "[::1]:53", "--upstream", "[2001:db8::53]"});
  CHECK(ip6.find("mld2-listener-report } ip6 saddr { fe80::/10, :: } ip6 daddr ff02::/16 ip6 hoplimit 1 accept") !=
        std::string::npos);
  CHECK(ip6.find("nd-router-solicit } ip6 hoplimit 255 accept") != std::string::npos);
  const std::string ip = rendered({"--nft-family", "ip", "--upstream", "192.0.2.53"});
  CHECK(ip.find("mld") == std::string::npos);
  CHECK(ip.find("nd-neighbor") == std::string::npos);
}

TEST_CASE("ruleset comments are read strictly: a near miss is no mark") {
  CHECK(parse_chain_comment(ruleset_chain_comment(0x0123456789abcdefull, 14)).value().rules == 14);
  CHECK(parse_chain_comment("dnsward ruleset id=0123456789abcdef rules=14").value().id == 0x0123456789abcdefull);
  for (const char* bad : {"", "dnsward ruleset id=0123456789abcde rules=14", "dnsward ruleset id=0123456789ABCDEF rules=14",
                          "dnsward ruleset id=0123456789abcdef rules=", "dnsward ruleset id=0123456789abcdef rules=14 ",
                          "xdnsward ruleset id=0123456789abcdef rules=14"}) {
    const std::string comment = bad;
    CAPTURE(comment);
    CHECK_FALSE(parse_chain_comment(bad));
  }
  const auto m = parse_rule_comment(ruleset_rule_comment(0xfeedull, 3, 14));
  REQUIRE(m);
  CHECK(m->index == 3);
  CHECK(m->rules == 14);
  CHECK(m->id == 0xfeedull);
  for (const char* bad : {"dnsward 14/14 id=000000000000feed", "dnsward 3/14", "dnsward 3/14 id=feed",
                          "dnsward -1/14 id=000000000000feed", "dnsward 3 / 14 id=000000000000feed"}) {
    const std::string comment = bad;
    CAPTURE(comment);
    CHECK_FALSE(parse_rule_comment(bad));
  }
}

TEST_CASE("a comment is read from nftables userdata as nft writes it, and hostile lengths are refused") {
  // What `nft add rule ... comment "hi"` stores: type 0 (comment), length 3, "hi\0".
  const uint8_t plain[] = {0, 3, 'h', 'i', 0};
  CHECK(userdata_comment(plain, sizeof plain) == "hi");
  // Another TLV first (nft stores more types for sets), then the comment.
  const uint8_t later[] = {1, 1, 7, 0, 3, 'h', 'i', 0};
  CHECK(userdata_comment(later, sizeof later) == "hi");
  const uint8_t overrun[] = {0, 9, 'h', 'i', 0};  // says 9 bytes, has 3
  CHECK(userdata_comment(overrun, sizeof overrun).empty());
  const uint8_t unterminated[] = {0, 2, 'h', 'i'};
  CHECK(userdata_comment(unterminated, sizeof unterminated).empty());
  const uint8_t none[] = {1, 1, 7};
  CHECK(userdata_comment(none, sizeof none).empty());
  CHECK(userdata_comment(nullptr, 0).empty());
  CHECK(userdata_comment(plain, 1).empty());
}

namespace {
/// dnsward's table as the kernel holds it when the ruleset of `nft-rules` is loaded: one
/// base chain with the marks, its rules looking up both sets, the sets of flags timeout.
TableSeen table_in_force(uint64_t id = 0xabcdef0123456789ull, std::size_t n = 4) {
  TableSeen t;
  t.exists = true;
  t.set4 = {true, 0x10, 7, 4};  // NFT_SET_TIMEOUT, ipv4_addr
  t.set6 = {true, 0x10, 8, 16};
  ChainSeen c;
  c.name = "output";
  c.base = true;
  c.hook = 3;    // NF_INET_LOCAL_OUT
  c.policy = 0;  // NF_DROP
  c.type = "filter";
  c.comment = ruleset_chain_comment(id, n);
  for (std::size_t i = 0; i < n; ++i) {
    RuleSeen r;
    r.handle = 10 + i;
    r.comment = ruleset_rule_comment(id, i, n);
    if (i == 1) r.lookups = {"allowed4"};
    if (i == 2) r.lookups = {"allowed6"};
    c.rules.push_back(r);
  }
  t.chains.push_back(c);
  return t;
}

/// The table as the kernel holds it when `nft-rules --sni-guard` is loaded: table_in_force's
/// output chain marked as chain 0 of 4 with guard=on; the input chain, chain 1 of 4 (3
/// rules); and the guard chains guard_output and guard_input at priority -175, chains 2 and 3
/// of 4 (2 rules each).
TableSeen guarded_in_force(uint64_t id = 0xabcdef0123456789ull) {
  TableSeen t = table_in_force(id);
  ChainSeen& out = t.chains[0];
  out.comment = ruleset_chain_comment(id, out.rules.size(), kGuestChainOutput, kGuestGuardChains, true);
  for (std::size_t i = 0; i < out.rules.size(); ++i)
    out.rules[i].comment = ruleset_rule_comment(id, i, out.rules.size(), kGuestChainOutput, kGuestGuardChains);
  for (const auto& [k, n] : {std::pair{kGuestChainInput, std::size_t(3)}, std::pair{kGuestChainGuardOutput, std::size_t(2)},
                             std::pair{kGuestChainGuardInput, std::size_t(2)}}) {
    ChainSeen in;
    in.name = kGuestChains[k].name;
    in.base = true;
    in.hook = kGuestChains[k].hook;
    in.priority = kGuestChains[k].prio;
    in.policy = 1;  // NF_ACCEPT
    in.type = "filter";
    in.comment = ruleset_chain_comment(id, n, k, kGuestGuardChains, true);
    for (std::size_t i = 0; i < n; ++i) {
      RuleSeen r;
      r.handle = 20 + 10 * k + i;
      r.comment = ruleset_rule_comment(id, i, n, k, kGuestGuardChains);
      in.rules.push_back(r);
    }
    t.chains.push_back(in);
  }
  return t;
}

RulesetExpectation inet_dnsward() {
  RulesetExpectation e;
  e.family = "inet";
  e.table = "dnsward";
  e.set4 = "allowed4";
  e.set6 = "allowed6";
  return e;
}
}  // namespace

TEST_CASE("judge: the table nft-rules loads is in force; a set with any flag but timeout is not") {
  const RulesetExpectation e = inet_dnsward();
  REQUIRE_MESSAGE(judge_ruleset(table_in_force(), e).in_force(), judge_ruleset(table_in_force(), e).reason);
  // `flags interval, timeout`: each address dnsward adds becomes a range to the top.
  const struct {
    uint32_t flags;
    const char* says;
  } cases[] = {
      {0x14, "has flags interval, timeout where dnsward needs flags timeout alone"},
      {0x18, "has flags map, timeout"},
      {0x30, "has flags timeout, dynamic"},
      {0x90, "has flags timeout, concat"},
      {0x110, "has flags timeout, expr"},
      {0x12, "has flags constant, timeout"},
      {0x11, "has flags anonymous, timeout"},
      {0x50, "has flags timeout, object"},
      {0x0, "has flags none"},
      {0x1010, "has flags timeout, 0x1000"},
  };
  for (const auto& c : cases) {
    for (const bool v6 : {false, true}) {
      const std::string says = c.says;
      CAPTURE(says);
      CAPTURE(v6);
      TableSeen t = table_in_force();
      (v6 ? t.set6 : t.set4).flags = c.flags;
      const RulesetStatus r = judge_ruleset(t, e);
      CHECK(r.state == RulesetStatus::State::NotInForce);
      CHECK_MESSAGE(r.reason.find(std::string("set ") + (v6 ? "allowed6" : "allowed4") + " of table inet dnsward " + c.says) !=
                        std::string::npos,
                    r.reason);
    }
  }
  // Another key type is not dnsward's set either; a set the family needs must exist.
  TableSeen t = table_in_force();
  t.set4.key_type = 8;
  CHECK(judge_ruleset(t, e).reason.find("set allowed4 of table inet dnsward is of another type") != std::string::npos);
  t = table_in_force();
  t.set6.exists = false;
  CHECK(judge_ruleset(t, e).reason.find("set allowed6 of table inet dnsward does not exist") != std::string::npos);
  // In an ip table allowed6 is not looked up: absent is fine, but one of another kind is not.
  RulesetExpectation ip = e;
  ip.family = "ip";
  ip.need6 = false;
  t = table_in_force();
  t.chains[0].rules[2].lookups.clear();
  t.set6.exists = false;
  CHECK_MESSAGE(judge_ruleset(t, ip).in_force(), judge_ruleset(t, ip).reason);
  t.set6 = {true, 0x14, 8, 16};
  CHECK_FALSE(judge_ruleset(t, ip).in_force());
}

TEST_CASE("judge: any other chain in dnsward's table, whatever its hook, takes the ruleset out of force") {
  const RulesetExpectation e = inet_dnsward();
  for (const bool base : {true, false}) {
    CAPTURE(base);
    TableSeen t = table_in_force();
    ChainSeen rewrite;
    rewrite.name = "post";
    rewrite.base = base;
    rewrite.hook = 4;  // NF_INET_POST_ROUTING
    rewrite.type = "filter";
    rewrite.policy = 1;
    t.chains.push_back(rewrite);
    const RulesetStatus r = judge_ruleset(t, e);
    CHECK(r.state == RulesetStatus::State::NotInForce);
    CHECK_MESSAGE(r.reason.find("table inet dnsward holds 2 chains where `nft-rules` prints one (output); "
                                "besides it: post") != std::string::npos,
                  r.reason);
    CHECK(r.id == "abcdef0123456789");  // the marked chain's, still named
  }
  // Thousands of chains: named five at most.
  TableSeen t = table_in_force();
  for (int i = 0; i < 2000; ++i) {
    ChainSeen c;
    c.name = "c" + std::to_string(i);
    t.chains.push_back(c);
  }
  const RulesetStatus r = judge_ruleset(t, e);
  CHECK(r.reason.find("holds 2001 chains") != std::string::npos);
  CHECK(r.reason.find("c0, c1, c2, c3, c4, ...") != std::string::npos);
  CHECK(r.reason.find("c5") == std::string::npos);
}

TEST_CASE("judge: a table with flags owner (or any flag) is not in force") {
  const RulesetExpectation e = inet_dnsward();
  TableSeen t = table_in_force();
  t.flags = 0x2;  // NFT_TABLE_F_OWNER
  RulesetStatus r = judge_ruleset(t, e);
  CHECK(r.state == RulesetStatus::State::NotInForce);
  CHECK_MESSAGE(r.reason.find("is owned by the process that loaded it (flags owner)") != std::string::npos, r.reason);
  t.flags = 0x6;  // owner, persist
  CHECK(judge_ruleset(t, e).reason.find("(flags owner, persist)") != std::string::npos);
  t.flags = 0x1;
  CHECK(judge_ruleset(t, e).reason.find("is dormant") != std::string::npos);
  t.flags = 0x8;
  CHECK(judge_ruleset(t, e).reason.find("has flags 0x8") != std::string::npos);
}

TEST_CASE("judge: rules counted beyond the mark's count take it out of force, unread") {
  const RulesetExpectation e = inet_dnsward();
  TableSeen t = table_in_force();
  t.chains[0].unread_rules = 100000;
  const RulesetStatus r = judge_ruleset(t, e);
  CHECK(r.state == RulesetStatus::State::NotInForce);
  CHECK(r.reason.find("chain output holds 100004 rules where its comment declares 4") != std::string::npos);
}

TEST_CASE("judge: a chain's name is shown escaped, so it cannot pass for fields of the status answer") {
  const RulesetExpectation e = inet_dnsward();
  TableSeen t = table_in_force();
  t.chains[0].name = "output rules=13 chain=output table=inet dnsward\n\"x\"";
  RulesetStatus r = judge_ruleset(t, e);
  REQUIRE_MESSAGE(r.in_force(), r.reason);  // the name is not judged, only shown
  CHECK(r.chain == "output\\x20rules\\x3d13\\x20chain\\x3doutput\\x20table\\x3dinet\\x20dnsward\\x0a\\x22x\\x22");
  CHECK(r.chain.find(' ') == std::string::npos);
  CHECK(r.chain.find('=') == std::string::npos);
  t.chains[0].policy = 1;
  r = judge_ruleset(t, e);
  CHECK(r.reason.rfind("chain output\\x20rules\\x3d13", 0) == 0);
  CHECK(shown_name(std::string(100, 'a')) == std::string(64, 'a') + "...");
  CHECK(shown_name("output_2.x-y/z") == "output_2.x-y/z");
}

TEST_CASE("judge: serve --sni-guard needs a ruleset printed with it, and serve without it one printed without") {
  RulesetExpectation e = inet_dnsward();
  const TableSeen plain = table_in_force();
  const TableSeen guarded = guarded_in_force();
  REQUIRE(parse_chain_comment(guarded.chains[0].comment)->guard);
  CHECK(judge_ruleset(plain, e).in_force());
  CHECK(judge_ruleset(guarded, e).reason.find("printed with --sni-guard, but serve runs without it") !=
        std::string::npos);
  e.guard = true;
  const RulesetStatus s = judge_ruleset(guarded, e);
  CHECK_MESSAGE(s.in_force(), s.reason);
  CHECK(s.chain == "output,input,guard_output,guard_input");  // each chain named, the rules of all counted
  CHECK(s.rules == 11);
  CHECK(s.id == "abcdef0123456789");
  CHECK(judge_ruleset(plain, e).reason.find("printed without --sni-guard") != std::string::npos);
  CHECK_FALSE(judge_ruleset(plain, e).in_force());
}

TEST_CASE("judge: with --sni-guard the input chain, where the server's packets are queued, must be there as printed") {
  RulesetExpectation e = inet_dnsward();
  e.guard = true;
  REQUIRE(judge_ruleset(guarded_in_force(), e).in_force());
  auto input_mark = [](const TableSeen& t) { return parse_chain_comment(t.chains[1].comment).value(); };
  const struct {
    const char* what;
    std::function<void(TableSeen&)> change;
    std::string says;
  } cases[] = {
      {"the input chain deleted", [](TableSeen& t) { t.chains.erase(t.chains.begin() + 1); },
       "table inet dnsward holds no chain marked as chain 1 of 4 (the input chain, type filter on the input hook): "
       "the ruleset is not whole"},
      {"the guard_input chain deleted", [](TableSeen& t) { t.chains.pop_back(); },
       "table inet dnsward holds no chain marked as chain 3 of 4 (the guard_input chain, type filter on the input "
       "hook): the ruleset is not whole"},
      {"the output chain deleted", [](TableSeen& t) { t.chains.erase(t.chains.begin()); },
       "table inet dnsward holds no chain marked as chain 0 of 4 (the output chain, type filter on the output hook): "
       "the ruleset is not whole"},
      {"the input chain unmarked", [](TableSeen& t) { t.chains[1].comment.clear(); },
       "table inet dnsward holds no chain marked as chain 1 of 4"},
      // Without a guard chain, a verdict mark a packet's sender set reaches the chains that
      // read verdicts: the clear before the queue is part of the ruleset.
      {"the guard_output chain deleted", [](TableSeen& t) { t.chains.erase(t.chains.begin() + 2); },
       "table inet dnsward holds no chain marked as chain 2 of 4 (the guard_output chain, type filter on the output "
       "hook): the ruleset is not whole"},
      {"the guard_output chain after the filter chain", [](TableSeen& t) { t.chains[2].priority = 10; },
       "chain guard_output (chain 2 of 4) is at priority 10, not -175 (mangle - 25)"},
      {"the guard_input chain after iptables' mangle", [](TableSeen& t) { t.chains[3].priority = -140; },
       "chain guard_input (chain 3 of 4) is at priority -140, not -175 (mangle - 25)"},
      {"the output chain before the guard chains", [](TableSeen& t) { t.chains[0].priority = -180; },
       "chain output (chain 0 of 4) is at priority -180, not 0 (filter)"},
      {"the input chain before iptables' mangle", [](TableSeen& t) { t.chains[1].priority = -160; },
       "chain input (chain 1 of 4) is at priority -160, not 0 (filter)"},
      {"a rule of the guard_output chain deleted",
       [](TableSeen& t) { t.chains[2].rules.erase(t.chains[2].rules.begin()); },
       "rule 0 of chain guard_output (handle 41, comment \"dnsward 1/2 id=abcdef0123456789 chain=2/4\") is not the "
       "rule"},
      {"the guard_input chain on the output hook", [](TableSeen& t) { t.chains[3].hook = 3; },
       "chain guard_input (chain 3 of 4) is on the output hook, not input"},
      {"the input chain marked as the output's place",
       [&](TableSeen& t) {
         const ChainMark m = input_mark(t);
         t.chains[1].comment = ruleset_chain_comment(m.id, m.rules, kGuestChainOutput, kGuestGuardChains, true);
       },
       "table inet dnsward holds no chain marked as chain 1 of 4"},
      {"the input chain on another hook", [](TableSeen& t) { t.chains[1].hook = 0; },
       "chain input (chain 1 of 4) is on the prerouting hook, not input"},
      {"the input chain unhooked", [](TableSeen& t) { t.chains[1].base = false; },
       "chain input (chain 1 of 4) is not a base chain (no hook): its rules see no packet"},
      {"the input chain of another type", [](TableSeen& t) { t.chains[1].type = "route"; },
       "chain input (chain 1 of 4) is of type route, not filter"},
      {"a rule of the input chain deleted", [](TableSeen& t) { t.chains[1].rules.erase(t.chains[1].rules.begin()); },
       "rule 0 of chain input (handle 31, comment \"dnsward 1/3 id=abcdef0123456789 chain=1/4\") is not the rule"},
      {"a rule appended to the input chain",
       [](TableSeen& t) {
         RuleSeen r;
         r.handle = 99;
         t.chains[1].rules.push_back(r);
       },
       "chain input holds 4 rules where its comment declares 3"},
      {"the input chain of another load",
       [&](TableSeen& t) { t.chains[1] = guarded_in_force(0x1111111111111111ull).chains[1]; },
       "chains output and input of table inet dnsward carry marks of two rulesets (ids abcdef0123456789 and "
       "1111111111111111): it holds parts of two loads"},
      {"a third chain",
       [](TableSeen& t) {
         ChainSeen post;
         post.name = "post";
         t.chains.push_back(post);
       },
       "table inet dnsward holds 5 chains where `nft-rules --sni-guard` prints 4 "
       "(output,input,guard_output,guard_input); besides them: post"},
      // What `nft-rules --sni-guard` printed while dnsward's verdict was NF_REPEAT: output and
      // input, read where they queued, with no chain clearing the verdict bits before.
      {"a ruleset printed for NF_REPEAT verdicts",
       [](TableSeen& t) {
         t.chains.resize(2);
         for (ChainSeen& ch : t.chains) {
           const ChainMark m = parse_chain_comment(ch.comment).value();
           ch.comment = ruleset_chain_comment(m.id, m.rules, m.chain, kGuestGuardChainsRepeat, true);
           for (std::size_t i = 0; i < ch.rules.size(); ++i)
             ch.rules[i].comment = ruleset_rule_comment(m.id, i, m.rules, m.chain, kGuestGuardChainsRepeat);
         }
       },
       "chain output is marked as chain 0 of 2: the ruleset was printed by an older `nft-rules --sni-guard`, whose "
       "chains read dnsward's verdict where it queued (NF_REPEAT)"},
      // What `nft-rules --sni-guard` printed before the server's packets were queued: the
      // output chain alone, marked guard=on without a place.
      {"an older guarded ruleset",
       [](TableSeen& t) {
         t = table_in_force();
         t.chains[0].comment = ruleset_chain_comment(0xabcdef0123456789ull, 4, true);
       },
       "chain output is marked guard=on, but not as chain 0 of 4: the ruleset was printed by an older `nft-rules "
       "--sni-guard`, which queues none of the server's packets (print it again)"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.what);
    TableSeen t = guarded_in_force();
    c.change(t);
    const RulesetStatus r = judge_ruleset(t, e);
    CHECK(r.state == RulesetStatus::State::NotInForce);
    CHECK_MESSAGE(r.reason.find(c.says) != std::string::npos, r.reason);
  }
  // Two places without guard=on are not what nft-rules prints, whatever serve runs with.
  TableSeen t = guarded_in_force();
  for (ChainSeen& ch : t.chains) {
    const ChainMark m = parse_chain_comment(ch.comment).value();
    ch.comment = ruleset_chain_comment(m.id, m.rules, m.chain, m.chains, false);
  }
  CHECK(judge_ruleset(t, inet_dnsward()).reason ==
        "chain output carries the mark of a host ruleset (`nft-rules --host`), chain 0 of 4, or of an in-guest one "
        "without guard=on, which `nft-rules` does not print");
  // The input chain's policy is not judged (accept as printed; drop cuts the guest off, it
  // opens nothing), nor are its lookups (the xt backend's input chain makes none).
  t = guarded_in_force();
  t.chains[1].policy = 0;
  CHECK(judge_ruleset(t, e).in_force());
}

TEST_CASE("nft-rules --sni-guard: every queue rule judges only packets of undecided connections, each side in its own chain") {
  // The rules the queue's verdicts depend on, as printed (the xt backend is what this
  // machine's kernel runs; the nft one runs in the 6.1 guest): a queue rule without the
  // direction or the verdict-bits condition would queue the other side's packets or judged
  // connections; without the backstop, unjudged payload would leave; QUIC is rejected on the
  // TLS ports only. dnsward's verdict is NF_ACCEPT: each hook's guard chain clears the
  // verdict bits and queues, the filter chain after it reads the verdicts.
  auto rules = [](std::vector<std::string> args) {
    const ParseOutcome r = parse_nft_rules(args, test_resolv_conf());
    REQUIRE_MESSAGE(r.config, r.error);
    return std::pair{render_nft_rules(*r.config), *r.config};
  };
  auto body = [](const std::string& line) { return line.substr(0, line.rfind(" comment \"dnsward ")); };
  auto bodies = [&](const std::string& text, const std::string& chain) {
    std::vector<std::string> out;
    for (const auto& l : chain_lines(text, chain))
      if (!l.empty() && l[0] != '#' && l.rfind("type ", 0) != 0 && l.rfind("comment ", 0) != 0) out.push_back(body(l));
    return out;
  };
  const auto [nft, c] = rules({"--sni-guard"});
  const std::string clear = "meta mark & 0x00e00000 != 0 counter meta mark set meta mark & 0xff1fffff";
  // The client's side, before the queue (guard_output, priority -175): every packet's verdict
  // bits cleared first; the SYN rules, the drops of invalid packets, picked-up connections,
  // Fast Open SYNs and urgent pointers; the queue last (NF_ACCEPT goes on to the next chain).
  // Queued by the conntrack mark the SYN set (guarded: both verdict bits), not by the sets,
  // whose element may expire while the connection is open (the sixth review); its plain SYN
  // not (the server's SYN-ACK says where its stream starts).
  const std::string guarded = "ct mark & 0x00c00000 == 0x00c00000";
  CHECK(chain_lines(nft, "guard_output").at(0) == "type filter hook output priority mangle - 25; policy accept;");
  CHECK(bodies(nft, "guard_output") ==
        std::vector<std::string>{
            clear,
            "tcp dport { 443, 80 } ct state invalid,untracked counter drop",
            "tcp dport { 443, 80 } ct direction original tcp flags & (syn | ack) == syn ct mark & 0x00c00000 != 0 ct "
            "mark set ct mark & 0xffdfffff | 0x00c00000",
            "tcp dport { 443, 80 } ct direction original tcp flags & (syn | ack) == syn ip daddr @allowed4 ct mark set "
            "ct mark | 0x00c00000",
            "tcp dport { 443, 80 } ct direction original tcp flags & (syn | ack) == syn ip6 daddr @allowed6 ct mark set "
            "ct mark | 0x00c00000",
            // A connection's end marks its entry closed (the judged bit); the client's data on a
            // closed entry is reset (a SYN cookie would open a server's connection on it).
            "tcp dport { 443, 80 } ct direction original tcp flags rst ct mark & 0x00c00000 != 0 ct mark set ct mark | "
            "0x00200000",
            "tcp dport { 443, 80 } ct direction original ct mark & 0x00200000 != 0 @ih,0,8 0-255 counter reject with "
            "tcp reset",
            "tcp dport { 443, 80 } ct mark & 0x00c00000 == 0 ip daddr @allowed4 counter drop",
            "tcp dport { 443, 80 } ct mark & 0x00c00000 == 0 ip6 daddr @allowed6 counter drop",
            "tcp dport { 443, 80 } ct direction original tcp flags & (syn | ack) == syn @ih,0,8 0-255 counter drop",
            "tcp dport { 443, 80 } ct direction original " + guarded + " tcp flags urg counter drop",
            "tcp dport { 443, 80 } ct direction original " + guarded + " @ih,0,8 0-255 queue num 53"});
  CHECK(nft.find("tcp flags syn ip daddr") == std::string::npos);
  CHECK(nft.find("socket mark") == std::string::npos);  // the clear covers a marked socket
  CHECK(nft.find("ct mark set ct mark & 0xff3fffff comment") == std::string::npos);  // never downgraded
  // The client's side, after the queue (output, priority filter): the verdict moves first
  // (only of TCP packets conntrack does not call related), then the reset of a rejected
  // connection, the backstop and QUIC's reject, before any accept.
  const auto out = bodies(nft, "output");
  REQUIRE(out.size() > 6);
  CHECK(std::vector<std::string>(out.begin(), out.begin() + 6) ==
        std::vector<std::string>{
            "meta l4proto tcp ct state != related ct direction original " + guarded +
                " meta mark & 0x00c00000 == 0x00400000 ct mark set ct mark & 0xff3fffff | 0x00400000",
            "meta l4proto tcp ct state != related ct direction original " + guarded +
                " meta mark & 0x00c00000 == 0x00800000 ct mark set ct mark & 0xff3fffff | 0x00800000",
            "tcp dport { 443, 80 } ct direction original ct mark & 0x00c00000 == 0x00800000 counter log prefix "
            "\"dnsward-sni-reject: \" reject with tcp reset",
            "tcp dport { 443, 80 } ct direction original " + guarded +
                " meta mark & 0x00c00000 != 0x00c00000 @ih,0,8 0-255 counter drop",
            "udp dport { 443 } ip daddr @allowed4 counter reject", "udp dport { 443 } ip6 daddr @allowed6 counter reject"});
  CHECK(out.at(6) == "ct direction original ct state established,related accept");
  for (const auto& l : out) CHECK(l.find(" queue ") == std::string::npos);
  // The server's side, before the queue (guard_input): cleared, then from a vouched address
  // not on lo, of an undecided connection: on TLS ports the SYN-ACK and payload, on HTTP
  // ports every packet. After it (input): the mark rules, then a rejected connection's
  // server packets dropped.
  CHECK(chain_lines(nft, "guard_input").at(0) == "type filter hook input priority mangle - 25; policy accept;");
  const std::string reply = "ct direction reply " + guarded + " ";
  const std::string closing = "iif != \"lo\" tcp sport { 443, 80 } ct direction reply tcp flags & (fin | rst) != 0 ct "
                              "mark & 0x00c00000 != 0 ct mark set ct mark | 0x00200000";
  CHECK(bodies(nft, "guard_input") == std::vector<std::string>{
                                          clear,
                                          closing,
                                          "iif != \"lo\" tcp sport { 443 } " + reply + "tcp flags syn queue num 53",
                                          "iif != \"lo\" tcp sport { 443 } " + reply + "@ih,0,8 0-255 queue num 53",
                                          "iif != \"lo\" tcp sport { 80 } " + reply + "queue num 53"});
  CHECK(bodies(nft, "input") ==
        std::vector<std::string>{
            "meta l4proto tcp ct state != related iif != \"lo\" " + reply +
                "meta mark & 0x00c00000 == 0x00400000 ct mark set ct mark & 0xff3fffff | 0x00400000",
            "meta l4proto tcp ct state != related iif != \"lo\" " + reply +
                "meta mark & 0x00c00000 == 0x00800000 ct mark set ct mark & 0xff3fffff | 0x00800000",
            "iif != \"lo\" tcp sport { 443, 80 } ct direction reply ct mark & 0x00c00000 == 0x00800000 counter drop"});
  CHECK(chain_lines(nft, "input").at(0) == "type filter hook input priority filter; policy accept;");
  for (const std::string& chain : {"output", "input", "guard_output", "guard_input"})
    for (const auto& l : chain_lines(nft, chain))
      if (l.find(" queue ") != std::string::npos && l[0] != '#') CHECK(l.find("bypass") == std::string::npos);
  // The options reach every chain: ports, marks, queue; a family's table its own family.
  const std::string other = rules({"--sni-guard", "--sni-ports", "8443", "--http-ports", "8080", "--queue-num", "7",
                                   "--guard-marks", "0x07000000", "--nft-family", "ip"})
                                .first;
  CHECK(other.find("iif != \"lo\" tcp sport { 8080 } ct direction reply ct mark & 0x06000000 == 0x06000000 queue num 7 "
                   "comment") != std::string::npos);
  CHECK(other.find("tcp dport { 8443, 8080 } ct direction original tcp flags & (syn | ack) == syn ip daddr @allowed4 ct "
                   "mark set ct mark | 0x06000000 comment") != std::string::npos);
  CHECK(other.find("iif != \"lo\" tcp sport { 8443, 8080 } ct direction reply ct mark & 0x06000000 == 0x04000000 "
                   "counter drop comment") != std::string::npos);
  CHECK(other.find("meta mark & 0x07000000 != 0 counter meta mark set meta mark & 0xf8ffffff comment") !=
        std::string::npos);
  CHECK(other.find("ip6 saddr") == std::string::npos);
  // Without the guard, one chain and nothing of it.
  const std::string plain = rules({}).first;
  CHECK(plain.find("chain input") == std::string::npos);
  CHECK(plain.find("chain guard_") == std::string::npos);
  CHECK(plain.find("ct mark") == std::string::npos);
  CHECK(plain.find("meta mark") == std::string::npos);

  // --queue-backend xt: the same chains and rules but the queues, which are iptables' (in
  // mangle at -150, between the guard chains and the filter chains); the mark rules are
  // nft's now, in the filter chains, and iptables holds no CONNMARK rule.
  const auto [xt_nft, xc] = rules({"--sni-guard", "--queue-backend", "xt"});
  CHECK(xt_nft.find(" queue num") == std::string::npos);
  auto without_queues = [&](const std::string& text, const std::string& chain) {
    std::vector<std::string> v = bodies(text, chain);
    std::erase_if(v, [](const std::string& l) { return l.find(" queue num ") != std::string::npos; });
    return v;
  };
  for (const std::string& chain : {"output", "input", "guard_output", "guard_input"}) {
    CAPTURE(chain);
    CHECK(bodies(xt_nft, chain) == without_queues(nft, chain));
  }
  CHECK(bodies(xt_nft, "guard_input") == std::vector<std::string>{clear, closing});
  for (const int af : {AF_INET, AF_INET6}) {
    CAPTURE(af);
    const std::string xt = render_xt_rules(xc, af);
    const std::string u32 = af == AF_INET ? "-m u32 --u32 \"0>>22&0x3C@12>>26&0x3C@0&0x0=0\" "
                                          : "-m u32 --u32 \"52>>26&0x3C@40&0x0=0\" ";
    const std::string undecided = "-m connmark --mark 0xc00000/0xc00000 -j NFQUEUE --queue-num 53";
    std::vector<std::string> nfq;
    std::istringstream x(xt);
    for (std::string line; std::getline(x, line);)
      if (line.find("-j NFQUEUE") != std::string::npos) nfq.push_back(line);
    CHECK(nfq == std::vector<std::string>{
                     "-A DNSWARD_GUARD -p tcp -m multiport --dports 443,80 " + u32 + "-m conntrack --ctdir ORIGINAL " + undecided,
                     "-A DNSWARD_GUARD -p tcp -m multiport --sports 443 --tcp-flags SYN SYN -m conntrack --ctdir REPLY " + undecided,
                     "-A DNSWARD_GUARD -p tcp -m multiport --sports 443 " + u32 + "-m conntrack --ctdir REPLY " + undecided,
                     "-A DNSWARD_GUARD -p tcp -m multiport --sports 80 -m conntrack --ctdir REPLY " + undecided});
    CHECK(xt.find("CONNMARK") == std::string::npos);  // the verdicts move in nft's filter chains
    CHECK(xt.find("-m mark") == std::string::npos);   // nothing here reads a packet mark
    // Each hook's jump takes its own side's packets; the server's never from lo.
    CHECK(xt.find("\n-I OUTPUT -m conntrack --ctdir ORIGINAL -j DNSWARD_GUARD\n"
                  "-I INPUT ! -i lo -m conntrack --ctdir REPLY -j DNSWARD_GUARD\nCOMMIT\n") != std::string::npos);
  }
}

TEST_CASE("nft-rules --sni-guard opens a vouched address on the guarded ports and its ports= elements only") {
  // Without the guard, every port of a vouched address, as before ports= existed.
  const std::string plain = rendered({});
  CHECK(plain.find("_ports") == std::string::npos);
  auto has_rule = [](const std::vector<std::string>& lines, const std::string& body) {
    return std::any_of(lines.begin(), lines.end(),
                       [&](const std::string& l) { return l.rfind(body + " comment \"dnsward ", 0) == 0; });
  };
  auto index_of = [](const std::vector<std::string>& lines, const std::string& body) {
    for (std::size_t i = 0; i < lines.size(); ++i)
      if (lines[i].rfind(body + " comment \"dnsward ", 0) == 0) return i;
    FAIL("no rule " << body);
    return lines.size();
  };
  const auto pl = chain_lines(plain);
  CHECK(has_rule(pl, "ip daddr @allowed4 accept"));
  CHECK(has_rule(pl, "ip6 daddr @allowed6 accept"));

  const std::string guarded = rendered({"--sni-guard"});
  for (const auto& set : {std::pair{"allowed4_ports", "ipv4_addr"}, std::pair{"allowed6_ports", "ipv6_addr"}}) {
    CAPTURE(set.first);
    CHECK(guarded.find(fmt::format("\tset {} {{\n\t\ttype {} . inet_proto . inet_service\n\t\tflags timeout\n\t\tsize 65536\n",
                                   set.first, set.second)) != std::string::npos);
  }
  const auto gl = chain_lines(guarded);
  CHECK_FALSE(has_rule(gl, "ip daddr @allowed4 accept"));  // no longer every port
  CHECK_FALSE(has_rule(gl, "ip6 daddr @allowed6 accept"));
  CHECK(has_rule(gl, "ip daddr @allowed4 tcp dport { 443, 80 } accept"));
  CHECK(has_rule(gl, "ip6 daddr @allowed6 tcp dport { 443, 80 } accept"));
  CHECK(has_rule(gl, "ip daddr @allowed4 ip daddr . meta l4proto . th dport @allowed4_ports accept"));
  CHECK(has_rule(gl, "ip6 daddr @allowed6 ip6 daddr . meta l4proto . th dport @allowed6_ports accept"));
  // After the guard's rules: a port element never opens a guarded port (nor QUIC) unjudged.
  const std::size_t ports4 = index_of(gl, "ip daddr @allowed4 ip daddr . meta l4proto . th dport @allowed4_ports accept");
  CHECK(index_of(gl, "udp dport { 443 } ip daddr @allowed4 counter reject") < ports4);
  CHECK(index_of(gl, "tcp dport { 443, 80 } ct direction original ct mark & 0x00c00000 == 0x00800000 counter log "
                     "prefix \"dnsward-sni-reject: \" reject with tcp reset") < ports4);
  CHECK(index_of(gl, "tcp dport { 443, 80 } ct direction original ct mark & 0x00c00000 == 0x00c00000 meta mark & "
                     "0x00c00000 != 0x00c00000 @ih,0,8 0-255 counter drop") < ports4);

  // The guarded ports are the options'; the set names follow --nft-set4/6; a family's table
  // declares its own family's port set only.
  const auto ol = chain_lines(rendered({"--sni-guard", "--sni-ports", "8443", "--http-ports", "8080", "--nft-family",
                                        "ip", "--nft-set4", "v4"}));
  CHECK(has_rule(ol, "ip daddr @v4 tcp dport { 8443, 8080 } accept"));
  CHECK(has_rule(ol, "ip daddr @v4 ip daddr . meta l4proto . th dport @v4_ports accept"));
  const std::string ip_only = rendered({"--sni-guard", "--nft-family", "ip"});
  CHECK(ip_only.find("allowed6_ports") == std::string::npos);

  // A port set named after one address set must not be the other address set.
  const auto clash = parse_nft_rules({"--sni-guard", "--nft-set4", "a", "--nft-set6", "a_ports"}, test_resolv_conf());
  CHECK_FALSE(clash.config);
  CHECK(clash.error == "--nft-set4 a and --nft-set6 a_ports: with --sni-guard each has a port set named after it "
                       "(<set>_ports), which must not be the other");
  CHECK(parse_nft_rules({"--nft-set4", "a", "--nft-set6", "a_ports"}, test_resolv_conf()).config);
}

TEST_CASE("judge: with --sni-guard the port sets of ports= are judged like the address sets") {
  RulesetExpectation e = inet_dnsward();
  e.ports4 = "allowed4_ports";
  e.ports6 = "allowed6_ports";
  auto guarded = [] {
    TableSeen t = table_in_force();
    t.ports4 = {true, 0x10, kKeyTypeV4Port, kKeyLenV4Port};
    t.ports6 = {true, 0x10, kKeyTypeV6Port, kKeyLenV6Port};
    t.chains[0].rules[1].lookups.push_back("allowed4_ports");
    t.chains[0].rules[2].lookups.push_back("allowed6_ports");
    return t;
  };
  // The marks say guard=on where serve runs with it: judged apart (their own test case).
  e.guard = false;
  REQUIRE_MESSAGE(judge_ruleset(guarded(), e).in_force(), judge_ruleset(guarded(), e).reason);
  TableSeen t = guarded();
  t.ports4.flags = 0x14;  // interval: an element would open ranges of addresses and ports
  CHECK(judge_ruleset(t, e).reason.find("set allowed4_ports of table inet dnsward has flags interval, timeout") !=
        std::string::npos);
  t = guarded();
  t.ports6.key_type = kKeyTypeV6;
  CHECK(judge_ruleset(t, e).reason.find("set allowed6_ports of table inet dnsward is of another type than ipv6_addr . "
                                        "inet_proto . inet_service") != std::string::npos);
  t = guarded();
  t.ports4.exists = false;
  CHECK(judge_ruleset(t, e).reason.find("set allowed4_ports of table inet dnsward does not exist") != std::string::npos);
  t = guarded();
  t.chains[0].rules[2].lookups = {"allowed6"};
  CHECK(judge_ruleset(t, e).reason.find("no rule of chain output looks up set allowed6_ports") != std::string::npos);
  // Without ports expected (no --sni-guard), the port sets are not judged.
  t = guarded();
  t.ports4.flags = 0x14;
  CHECK(judge_ruleset(t, inet_dnsward()).in_force());
  CHECK(judge_ruleset(table_in_force(), inet_dnsward()).in_force());
}
