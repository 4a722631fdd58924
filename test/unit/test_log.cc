// Log lines are built from fields: the call site's format string gives the keys, each
// argument is one value, and only then is the line written as logfmt or JSON. Hostile values
// (a name holding quotes, '=', a newline and a fake " key=value") must stay one field each in
// both formats. No JSON parser is among the C++ dependencies, so JSON lines are compared with
// exact expected strings; logfmt lines are also read back with a small logfmt reader.
#include <doctest/doctest.h>

#include <string>
#include <utility>
#include <vector>

#include "dnsward/json.hpp"
#include "dnsward/log.hpp"

using namespace dnsward;
using log::Field;
using Fields = std::vector<Field>;

namespace {
// A name as an attacker may register it: a quote, an '=', a newline and what looks like
// another field.
const std::string kHostile = "evil\" = \n x key=value";

// Reads a logfmt line back into (key, value) pairs: bare values end at a space, quoted ones
// at the closing quote, with \" \\ and \xNN undone. Anything else fails the test.
Fields read_logfmt(const std::string& line) {
  Fields out;
  std::size_t i = 0;
  while (i < line.size()) {
    const std::size_t eq = line.find('=', i);
    REQUIRE(eq != std::string::npos);
    Field f{line.substr(i, eq - i), ""};
    REQUIRE(f.key.find_first_of(" \"") == std::string::npos);
    i = eq + 1;
    if (i < line.size() && line[i] == '"') {
      for (++i;; ++i) {
        REQUIRE(i < line.size());
        if (line[i] == '"') break;
        if (line[i] == '\\') {
          REQUIRE(i + 1 < line.size());
          if (line[i + 1] == 'x') {
            REQUIRE(i + 3 < line.size());
            f.value += char(std::stoi(line.substr(i + 2, 2), nullptr, 16));
            i += 3;
          } else {
            f.value += line[++i];
          }
        } else {
          f.value += line[i];
        }
      }
      ++i;
      REQUIRE((i == line.size() || line[i] == ' '));
    } else {
      const std::size_t sp = line.find(' ', i);
      f.value = line.substr(i, sp == std::string::npos ? std::string::npos : sp - i);
      i = sp == std::string::npos ? line.size() : sp;
    }
    out.push_back(std::move(f));
    if (i < line.size()) ++i;  // the space
  }
  return out;
}

// Captures what log::write emits, at a fixed time, and puts the defaults back.
struct Capture {
  static inline std::vector<std::string> lines;
  Capture(log::Format f) {
    lines.clear();
    log::sink = [](std::string_view l) { lines.emplace_back(l); };
    log::now_ms = [] { return int64_t(1764547200123); };  // 2025-12-01T00:00:00.123Z
    log::format = f;
    log::policy_version = "0f470a93";
  }
  ~Capture() {
    log::sink = saved_sink;
    log::now_ms = saved_now;
    log::format = log::Format::Logfmt;
    log::policy_version.clear();
  }
  decltype(log::sink) saved_sink = log::sink;
  decltype(log::now_ms) saved_now = log::now_ms;
};
}  // namespace

TEST_CASE("a hostile name is exactly one field: the fields, the logfmt line and the JSON line") {
  const Fields f = log::make_fields("event=denied name={} type={} client={}", log::quote(kHostile),
                                    "A", std::string("192.0.2.1:53"));
  CHECK(f == Fields{{"event", "denied"}, {"name", kHostile}, {"type", "A"}, {"client", "192.0.2.1:53"}});

  const std::string logfmt = log::render(log::Format::Logfmt, LogLevel::Debug, "T", f, "0f470a93");
  CHECK(logfmt ==
        "ts=T level=debug event=denied name=\"evil\\\" = \\x0a x key=value\" type=A "
        "client=192.0.2.1:53 policy=0f470a93");
  CHECK(logfmt.find('\n') == std::string::npos);  // one event, one line
  CHECK(read_logfmt(logfmt) == Fields{{"ts", "T"}, {"level", "debug"}, {"event", "denied"},
                                      {"name", kHostile}, {"type", "A"},
                                      {"client", "192.0.2.1:53"}, {"policy", "0f470a93"}});

  const std::string json = log::render(log::Format::Json, LogLevel::Debug, "T", f, "0f470a93");
  CHECK(json ==
        "{\"ts\":\"T\",\"level\":\"debug\",\"event\":\"denied\","
        "\"name\":\"evil\\\" = \\n x key=value\",\"type\":\"A\",\"client\":\"192.0.2.1:53\","
        "\"policy\":\"0f470a93\"}");
}

TEST_CASE("log::info writes exactly the line built from fields, in either format") {
  {
    Capture c(log::Format::Json);
    log::info("event=upstream-failed name={} error={} ms={}", log::quote(kHostile),
              log::quote("timeout = \"no answer\""), 1500);
    REQUIRE(Capture::lines.size() == 1);
    CHECK(Capture::lines[0] ==
          "{\"ts\":\"2025-12-01T00:00:00.123Z\",\"level\":\"info\",\"event\":\"upstream-failed\","
          "\"name\":\"evil\\\" = \\n x key=value\",\"error\":\"timeout = \\\"no answer\\\"\","
          "\"ms\":\"1500\",\"policy\":\"0f470a93\"}");
  }
  {
    Capture c(log::Format::Logfmt);
    log::info("event=upstream-failed name={} error={} ms={}", log::quote(kHostile),
              log::quote("timeout = \"no answer\""), 1500);
    REQUIRE(Capture::lines.size() == 1);
    CHECK(Capture::lines[0] ==
          "ts=2025-12-01T00:00:00.123Z level=info event=upstream-failed "
          "name=\"evil\\\" = \\x0a x key=value\" error=\"timeout = \\\"no answer\\\"\" ms=1500 "
          "policy=0f470a93");
    CHECK(read_logfmt(Capture::lines[0]) ==
          Fields{{"ts", "2025-12-01T00:00:00.123Z"}, {"level", "info"}, {"event", "upstream-failed"},
                 {"name", kHostile}, {"error", "timeout = \"no answer\""}, {"ms", "1500"},
                 {"policy", "0f470a93"}});
  }
}

TEST_CASE("a value with spaces or '=' is one field even when the call site did not quote it") {
  const Fields f = log::make_fields("event=reload-failed error={} entries={}",
                                    std::string("t.allow:3: unknown key 'x=y'"), 12);
  CHECK(f == Fields{{"event", "reload-failed"}, {"error", "t.allow:3: unknown key 'x=y'"}, {"entries", "12"}});
  CHECK(log::render(log::Format::Logfmt, LogLevel::Error, "T", f, "") ==
        "ts=T level=error event=reload-failed error=\"t.allow:3: unknown key 'x=y'\" entries=12");
  // Each character that would end or split a bare logfmt value, alone, gets the value quoted.
  const struct { std::string value, logfmt; } cases[] = {
      {"a=b", "\"a=b\""}, {"a b", "\"a b\""}, {"a\"b", "\"a\\\"b\""}, {"a\\b", "\"a\\\\b\""},
      {"a\nb", "\"a\\x0ab\""}, {"a\x7f", "\"a\\x7f\""}, {"", "\"\""}, {"plain.example", "plain.example"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.value);
    const std::string line = log::render(log::Format::Logfmt, LogLevel::Info, "T", {{"v", c.value}}, "");
    CHECK(line == "ts=T level=info v=" + c.logfmt);
    CHECK(read_logfmt(line).back() == Field{"v", c.value});
  }
}

TEST_CASE("format specs, literal pairs, text around a value and escaped braces are kept") {
  CHECK(log::make_fields("event=tcp-refused reason=max-connections") ==
        Fields{{"event", "tcp-refused"}, {"reason", "max-connections"}});
  CHECK(log::make_fields("ratio={:.2f} id={:04x} for={}ms", 0.5, 255, 30) ==
        Fields{{"ratio", "0.50"}, {"id", "00ff"}, {"for", "30ms"}});
  CHECK(log::make_fields("set={{{}}}", "a") == Fields{{"set", "{a}"}});
}

TEST_CASE("a bare {} after a pair joins it, a bare {} of its own word is a trusted fragment") {
  // main.cc's "table={} {}" (family and table): one field.
  CHECK(log::make_fields("event=nft table={} {} set4={}", "inet", "dnsward", "allowed4") ==
        Fields{{"event", "nft"}, {"table", "inet dnsward"}, {"set4", "allowed4"}});
  // main.cc's "event=stats {}": the stats line, key=value words built from the metrics table.
  CHECK(log::make_fields("event=stats {}", std::string("received=3 denied=1")) ==
        Fields{{"event", "stats"}, {"received", "3"}, {"denied", "1"}});
}

TEST_CASE("log::quote formats as its logfmt form outside a log call") {
  CHECK(fmt::format("{}", log::quote("plain")) == "plain");
  CHECK(fmt::format("{}", log::quote("a b")) == "\"a b\"");
  CHECK(fmt::format("{}", log::quote("")) == "\"\"");
  CHECK(std::string(log::quote("x\\y")) == "\"x\\\\y\"");
}

TEST_CASE("the JSON escaper: exact output for quotes, backslashes, control bytes, UTF-8 and invalid bytes") {
  CHECK(json::quoted("") == "\"\"");
  CHECK(json::quoted("a\"b\\c") == "\"a\\\"b\\\\c\"");
  CHECK(json::quoted("\n\t\r") == "\"\\n\\t\\r\"");
  CHECK(json::quoted(std::string("\x00\x01\x1f\x7f", 4)) == "\"\\u0000\\u0001\\u001f\\u007f\"");
  CHECK(json::quoted("b\xc3\xbc" "cher \xe2\x82\xac \xf0\x9f\x98\x80") ==
        "\"b\xc3\xbc" "cher \xe2\x82\xac \xf0\x9f\x98\x80\"");  // valid UTF-8 as it is
  CHECK(json::quoted("\xff") == "\"\\u00ff\"");                 // never valid
  CHECK(json::quoted("\xc3") == "\"\\u00c3\"");                 // cut short
  CHECK(json::quoted("\xc0\xaf") == "\"\\u00c0\\u00af\"");      // overlong '/'
  CHECK(json::quoted("\xed\xa0\x80") == "\"\\u00ed\\u00a0\\u0080\"");  // a surrogate
}
