// The matcher, table-driven in the manner of CoreDNS's acl_test.go, including the traps
// other resolvers shipped: label boundaries (Unbound matched anytext1domain.com against
// domain.com until 2023), case, trailing dots, wildcard apexes.
#include <unistd.h>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "dnsward/allowlist_files.hpp"
#include "dnsward/policy.hpp"

using dnsward::Match;
using dnsward::Policy;
using V = Match::Verdict;

namespace {
Policy load(const std::string& text, std::vector<std::string>* errs = nullptr) {
  std::vector<std::string> e;
  Policy p = Policy::parse({{"t.allow", text}}, e);
  if (errs) *errs = e;
  else REQUIRE_MESSAGE(e.empty(), (e.empty() ? "" : e.front()));
  return p;
}
const char* name(V v) { return v == V::Allow ? "Allow" : v == V::Ancestor ? "Ancestor" : "Deny"; }
}  // namespace

TEST_CASE("patterns match whole labels, case-insensitively, with or without a trailing dot") {
  const Policy p = load(
      "example.com\n"
      "*.one.test\n"
      "**.many.test\n"
      "Sub.Mixed.TEST.\n"
      "www.allowed.test   # trailing comment\n");
  const struct { const char* name; V verdict; } cases[] = {
      {"example.com", V::Allow},
      {"EXAMPLE.com.", V::Allow},
      {"eXaMpLe.CoM", V::Allow},
      {"www.example.com", V::Deny},        // exact entries cover no subdomain
      {"anytext1example.com", V::Deny},    // not a label boundary
      {"notexample.com", V::Deny},
      {"example.com.evil", V::Deny},
      {"example.co", V::Deny},
      {"xample.com", V::Deny},
      {"com", V::Ancestor},                // NODATA, not NXDOMAIN (RFC 8020)
      {".", V::Ancestor},
      {"a.one.test", V::Allow},
      {"A.ONE.TEST.", V::Allow},
      {"a.b.one.test", V::Deny},           // "*." is exactly one label
      {"one.test", V::Ancestor},           // never the apex
      {"xone.test", V::Deny},
      {"a.many.test", V::Allow},
      {"a.b.c.many.test", V::Allow},       // "**." is one or more labels
      {"many.test", V::Ancestor},
      {"a.manyx.test", V::Deny},
      {"sub.mixed.test", V::Allow},
      {"mixed.test", V::Ancestor},
      {"www.allowed.test", V::Allow},
      {"allowed.test", V::Ancestor},
      {"test", V::Ancestor},
      {"x.allowed.test", V::Deny},
      {"wwwallowed.test", V::Deny},
      {"org", V::Deny},
      {"examp1e.com", V::Deny},            // lookalikes
      {"exarnple.com", V::Deny},
      {"example.com-evil.net", V::Deny},
      {"example-com.net", V::Deny},
      {"xn--exmple-cua.com", V::Deny},     // punycode of a homoglyph
      {"www.allowed.test.attacker.net", V::Deny},
  };
  for (const auto& c : cases) {
    CAPTURE(c.name);
    CHECK(name(p.match_text(c.name).verdict) == std::string(name(c.verdict)));
  }
}

TEST_CASE("the most specific entry decides: exact, then *., then the longest **.") {
  const Policy p = load(
      "**.example.com\n"
      "**.deep.example.com\n"
      "*.deep.example.com\n"
      "x.deep.example.com\n");
  auto pattern = [&](const char* n) {
    const Match m = p.match_text(n);
    REQUIRE(m.verdict == V::Allow);
    return p.entry(std::size_t(m.entry)).pattern;
  };
  CHECK(pattern("x.deep.example.com") == "x.deep.example.com");
  CHECK(pattern("y.deep.example.com") == "*.deep.example.com");
  CHECK(pattern("a.y.deep.example.com") == "**.deep.example.com");
  CHECK(pattern("deep.example.com") == "**.example.com");
}

TEST_CASE("entries carry their file, line and justification") {
  const Policy p = load(
      "# comment\n\n"
      "pypi.org owner=ml-team why=\"pip install\" data=\"package names\" "
      "unreachable=\"no packages\" reviewed=2024-02-29 expires=2027-01-01\n");
  REQUIRE(p.size() == 1);
  const auto e = p.entry(0);
  CHECK(e.source == "t.allow");
  CHECK(e.line == 3);
  CHECK(e.owner == "ml-team");
  CHECK(e.why == "pip install");
  CHECK(e.data == "package names");
  CHECK(e.unreachable == "no packages");
  CHECK(e.reviewed == "2024-02-29");
  CHECK(e.expires == "2027-01-01");
}

TEST_CASE("bad lines are reported as FILE:LINE: reason, and nothing else is lost") {
  const struct { const char* line; const char* reason; } cases[] = {
      {"*", "would allow every name"},
      {"**", "would allow every name"},
      {"*.", "would allow every name"},
      {"ex*.com", "only as the whole first label"},
      {"a.*.com", "only as the whole first label"},
      {"*.*.com", "only as the whole first label"},
      {"***.com", "only as the whole first label"},
      {"b\xc3\xbc" "cher.de", "punycode"},
      {"a..com", "empty label"},
      {"-bad.com", "starts or ends with '-'"},
      {"bad-.com", "starts or ends with '-'"},
      {"a_b!.com", "invalid character"},
      {"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.com", "longer than 63"},
      {"example.com foo=bar", "unknown key 'foo'"},
      {"example.com owner", "expected key=value"},
      {"example.com =x", "expected key=value"},
      {"example.com owner=", "empty value"},
      {"example.com owner=a owner=b", "given twice"},
      {"example.com reviewed=2026-13-01", "not a date"},
      {"example.com reviewed=2026-02-29", "not a date"},
      {"example.com expires=26-01-01", "not a date"},
      {"example.com why=\"unterminated", "unterminated double quote"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.line);
    std::vector<std::string> errs;
    const Policy p = load(std::string("ok.example\n") + c.line + "\n", &errs);
    REQUIRE(errs.size() == 1);
    CHECK(errs[0].rfind("t.allow:2: ", 0) == 0);
    CHECK(errs[0].find(c.reason) != std::string::npos);
    CHECK(p.match_text("ok.example").verdict == V::Allow);  // the good line still loaded
  }
  std::string long_name;
  for (int i = 0; i < 5; ++i) long_name += std::string(60, 'a') + ".";
  std::vector<std::string> errs;
  load(long_name + "com\n", &errs);
  REQUIRE(errs.size() == 1);
  CHECK(errs[0].find("longer than 255") != std::string::npos);
}

TEST_CASE("a '#' inside quotes is text, outside it starts a comment") {
  const Policy p = load("a.example why=\"issue #12\" # owner=ignored\n");
  REQUIRE(p.size() == 1);
  CHECK(p.entry(0).why == "issue #12");
  CHECK(p.entry(0).owner.empty());
}

TEST_CASE("a 100,000-entry list answers exactly: the last entry, one past it, and their ancestor") {
  std::string text;
  for (int i = 0; i < 100000; ++i) text += "host" + std::to_string(i) + ".bulk.test\n";
  const Policy p = load(text);
  CHECK(p.match_text("host99999.bulk.test").verdict == V::Allow);
  CHECK(p.match_text("host100000.bulk.test").verdict == V::Deny);
  CHECK(p.match_text("bulk.test").verdict == V::Ancestor);
}

TEST_CASE("entries are found again by their pattern, and patterns are rebuilt from the trie") {
  const Policy p = load("a.example\n*.b.example\n**.b.example\nA.Example\n");
  CHECK(p.find_pattern("a.example") == 0);   // the first of two identical entries
  CHECK(p.find_pattern("*.b.example") == 1);
  CHECK(p.find_pattern("**.b.example") == 2);
  CHECK(p.find_pattern("b.example") == -1);
  CHECK(p.find_pattern("*.a.example") == -1);
  CHECK(p.pattern(1) == "*.b.example");
  CHECK(p.pattern(3) == "a.example");
  CHECK(p.entry(2).kind == dnsward::Entry::Kind::AnyLabels);
  CHECK(p.entry(3).line == 4);
}

TEST_CASE("wildcard entries allow only the types a sandbox connects with, unless types= says") {
  const Policy p = load("*.cdn.example\n**.api.example types=A,TXT,type99 budget=5\nexact.example\n");
  CHECK(p.allows_type(0, 1));     // A
  CHECK(p.allows_type(0, 28));    // AAAA
  CHECK(p.allows_type(0, 65));    // HTTPS
  CHECK_FALSE(p.allows_type(0, 16));  // TXT: a channel out
  CHECK(p.allows_type(1, 16));
  CHECK(p.allows_type(1, 99));
  CHECK_FALSE(p.allows_type(1, 28));
  CHECK(p.allows_type(2, 16));    // exact names are not limited
  CHECK(p.budget(1) == 5);
  CHECK(p.budget(0) == 0);
  CHECK(p.entry(1).types == std::vector<uint16_t>{1, 16, 99});
  std::vector<std::string> errs;
  load("*.x.example types=A,BOGUS\n*.y.example budget=0\n*.z.example budget=lots\n", &errs);
  REQUIRE(errs.size() == 3);
  CHECK(errs[0].find("unknown type 'BOGUS'") != std::string::npos);
  CHECK(errs[1].find("budget=0") != std::string::npos);
}

TEST_CASE("a malformed wire name is denied without reading past its end (found by fuzzing)") {
  const Policy p = load("example.com\n");
  const uint8_t runs_past[] = {7, 'e', 'x', 'a'};                // label longer than the bytes
  const uint8_t no_root[] = {7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 3, 'c', 'o', 'm'};
  const uint8_t too_long_label[] = {70, 'a', 0};
  CHECK(p.match(runs_past, sizeof runs_past).verdict == Match::Verdict::Deny);
  CHECK(p.match(no_root, sizeof no_root).verdict == Match::Verdict::Deny);
  CHECK(p.match(too_long_label, sizeof too_long_label).verdict == Match::Verdict::Deny);
  const uint8_t ok[] = {7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 3, 'c', 'o', 'm', 0};
  CHECK(p.match(ok, sizeof ok).verdict == Match::Verdict::Allow);
}

// ---- the allowlist key table ----

namespace {
// A value the parser must take for a key of this kind, and one it must refuse. A switch
// without a default: a new kind fails to compile cleanly (-Wswitch) until it is given both.
struct Samples {
  std::string valid, invalid;
  const char* reason;  // the start of the refusal, {0} the key's name
};
Samples samples(dnsward::KeyKind k) {
  using K = dnsward::KeyKind;
  switch (k) {
    case K::Text: return {"\"some text\"", "", "key '{0}' has an empty value"};  // only empty is bad
    case K::Date: return {"2024-02-29", "2026-02-29", "{0}=2026-02-29 is not a date of the form YYYY-MM-DD"};
    case K::YesNo: return {"yes", "maybe", "{0}=maybe: must be yes or no"};
    case K::TypeList: return {"A,TXT,type99", "A,BOGUS", "{0}: unknown type 'BOGUS'"};
    case K::PerMinute: return {"5", "0", "{0}=0: must be a number of names per minute"};
    case K::Any: return {"any", "all", "{0}=all: the only value is any"};
    case K::PortList: return {"22,9418,123/udp", "22,70000", "{0}: port 70000 is out of range (1 to 65535)"};
  }
  return {};
}

// The key table of README.md's "Allowlist format" section: (key, required) per row.
std::vector<std::pair<std::string, bool>> readme_keys() {
  std::ifstream in(DNSWARD_TEST_DATA "/../../README.md");
  REQUIRE(in);
  std::vector<std::pair<std::string, bool>> rows;
  bool in_section = false, in_table = false;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("## ", 0) == 0) in_section = line.rfind("## Allowlist format", 0) == 0;
    // The section's other table lists patterns: only the one headed "| key |" is read.
    if (in_section && line.rfind("| key |", 0) == 0) in_table = true;
    else if (line.rfind("|", 0) != 0) in_table = false;
    if (!in_section || !in_table || line.rfind("| `", 0) != 0) continue;
    std::vector<std::string> cols;
    std::stringstream ss(line.substr(1));
    for (std::string c; std::getline(ss, c, '|');) cols.push_back(c);
    REQUIRE(cols.size() == 4);
    std::string key = cols[0];
    std::erase_if(key, [](char c) { return c == '`' || c == ' '; });
    const bool required = cols[2].find("required") != std::string::npos;
    rows.emplace_back(key, required);
  }
  return rows;
}
}  // namespace

TEST_CASE("the key table is exactly README's key list, in the same order, with the same required keys") {
  std::vector<std::pair<std::string, bool>> table;
  for (const auto& k : dnsward::kAllowlistKeys) table.emplace_back(std::string(k.name), k.justification);
  const auto readme = readme_keys();
  CHECK(readme.size() == table.size());
  // Both ways: every README row is a table key and every table key a README row.
  for (const auto& row : readme) {
    CAPTURE(row.first);
    CHECK(std::find(table.begin(), table.end(), row) != table.end());
  }
  for (const auto& key : table) {
    CAPTURE(key.first);
    CHECK(std::find(readme.begin(), readme.end(), key) != readme.end());
  }
  CHECK(readme == table);
}

TEST_CASE("every key of the table is accepted with a valid value and kept") {
  for (const auto& k : dnsward::kAllowlistKeys) {
    CAPTURE(k.name);
    const Samples s = samples(k.kind);
    const Policy p = load(fmt::format("*.ok.example {}={}\n", k.name, s.valid));
    REQUIRE(p.size() == 1);
    const auto e = p.entry(0);
    using K = dnsward::KeyKind;
    switch (k.kind) {
      case K::Text: CHECK(e.*k.text == "some text"); break;
      case K::Date: CHECK(e.*k.text == s.valid); break;
      case K::YesNo: CHECK(e.allow_private); break;
      case K::TypeList: CHECK(e.types == std::vector<uint16_t>{1, 16, 99}); break;
      case K::PerMinute: CHECK(e.budget == 5); break;
      case K::Any: CHECK(e.sni_any); break;
      case K::PortList:
        CHECK(e.ports == std::vector<dnsward::PortSpec>{{6, 22}, {6, 9418}, {17, 123}});
        CHECK(p.ports(0) == e.ports);
        break;
    }
  }
}

TEST_CASE("every key of the table is refused with FILE:LINE: reason for an invalid, empty or repeated value") {
  for (const auto& k : dnsward::kAllowlistKeys) {
    CAPTURE(k.name);
    const Samples s = samples(k.kind);
    const struct { std::string rest, reason; } cases[] = {
        {fmt::format("{}={}", k.name, s.invalid), fmt::format(fmt::runtime(s.reason), k.name)},
        {fmt::format("{}=", k.name), fmt::format("key '{}' has an empty value", k.name)},
        {fmt::format("{0}={1} {0}={1}", k.name, s.valid), fmt::format("key '{}' given twice", k.name)},
    };
    for (const auto& c : cases) {
      CAPTURE(c.rest);
      std::vector<std::string> errs;
      const Policy p = load("ok.example\n*.bad.example " + c.rest + "\n", &errs);
      REQUIRE(errs.size() == 1);
      CHECK(errs[0].rfind("t.allow:2: " + c.reason, 0) == 0);
      CHECK(p.size() == 1);  // the bad line is not loaded, the good one is
    }
  }
}

TEST_CASE("an unknown key's message names exactly the keys of the table") {
  std::vector<std::string> errs;
  load("a.example colour=red\n", &errs);
  REQUIRE(errs.size() == 1);
  std::string known;
  for (const auto& k : dnsward::kAllowlistKeys) known += (known.empty() ? "" : ", ") + std::string(k.name);
  CHECK(errs[0] == "t.allow:1: unknown key 'colour' (known: " + known + ")");
}

TEST_CASE("missing justification lists exactly the table's required keys, in its order") {
  const Policy p = load("a.example\nb.example owner=x reviewed=2026-01-01\n");
  std::vector<std::string> required;
  for (const auto& k : dnsward::kAllowlistKeys)
    if (k.justification) required.emplace_back(k.name);
  CHECK(dnsward::missing_justification(p.entry(0)) == required);
  CHECK(dnsward::missing_justification(p.entry(1)) ==
        std::vector<std::string>{"why", "data", "unreachable"});
  CHECK(dnsward::fill_in_line("n.example", "2026-01-02") ==
        "n.example owner=\"\" why=\"\" data=\"\" unreachable=\"\" reviewed=2026-01-02");
}

TEST_CASE("an allowlist path that is a directory is an error, not an empty list") {
  char dir[] = "/tmp/dnsward-allow-XXXXXX";
  REQUIRE(mkdtemp(dir) != nullptr);
  std::vector<std::string> errors;
  // A directory opens and reads as nothing: loaded, it would be a list denying every name,
  // and a reload would put it in force.
  CHECK(dnsward::load_policy({dir}, errors) == nullptr);
  REQUIRE(errors.size() == 1);
  CHECK(errors[0] == std::string(dir) + ": cannot read: not a file");
  rmdir(dir);
}

TEST_CASE("ports= refuses a bad port list with FILE:LINE: reason, and loads a good one") {
  std::string seventeen, sixteen;
  for (int i = 1; i <= 17; ++i) (i <= 16 ? sixteen : seventeen) += fmt::format("{}{}", i == 1 ? "" : ",", 1000 + i);
  seventeen = sixteen + seventeen;
  const struct { std::string value, reason; } bad[] = {
      {"0", "ports: port 0 is out of range (1 to 65535)"},
      {"65536", "ports: port 65536 is out of range (1 to 65535)"},
      {"99999", "ports: port 99999 is out of range (1 to 65535)"},
      {"123456", "ports: '123456' is not a port (N for TCP, N/udp for UDP, N from 1 to 65535)"},
      {"ssh", "ports: 'ssh' is not a port (N for TCP, N/udp for UDP, N from 1 to 65535)"},
      {"-22", "ports: '-22' is not a port (N for TCP, N/udp for UDP, N from 1 to 65535)"},
      {"+22", "ports: '+22' is not a port (N for TCP, N/udp for UDP, N from 1 to 65535)"},
      {"22,,23", "ports: '' is not a port (N for TCP, N/udp for UDP, N from 1 to 65535)"},
      {"22,", "ports: '' is not a port (N for TCP, N/udp for UDP, N from 1 to 65535)"},
      {"/udp", "ports: '/udp' is not a port (N for TCP, N/udp for UDP, N from 1 to 65535)"},
      {"22-25", "ports: '22-25' is not a port (N for TCP, N/udp for UDP, N from 1 to 65535)"},
      {"22/sctp", "ports: '22/sctp' names no protocol dnsward opens (N for TCP, N/udp for UDP)"},
      {"22/UDP", "ports: '22/UDP' names no protocol dnsward opens (N for TCP, N/udp for UDP)"},
      {"22,22", "ports: 22 given twice"},
      {"22,22/tcp", "ports: 22 given twice"},
      {"123/udp,123/udp", "ports: 123/udp given twice"},
      {seventeen, "ports: more than 16 ports; give the sandbox's service an address of its own instead"},
  };
  for (const auto& c : bad) {
    CAPTURE(c.value);
    std::vector<std::string> errs;
    const Policy p = load("ok.example\ngit.example ports=" + c.value + " why=git\n", &errs);
    REQUIRE(errs.size() == 1);
    CHECK(errs[0] == "t.allow:2: " + c.reason);
    CHECK(p.size() == 1);
  }
  // The limits themselves, and one port under both protocols, are fine.
  const Policy p = load("a.example ports=1,65535,22,22/udp,9418/tcp\nb.example ports=" + sixteen + "\n");
  CHECK(p.entry(0).ports == std::vector<dnsward::PortSpec>{{6, 1}, {6, 65535}, {6, 22}, {17, 22}, {6, 9418}});
  CHECK(dnsward::ports_text(p.entry(0).ports) == "1,65535,22,22/udp,9418");
  CHECK(p.ports(1).size() == 16);
}

TEST_CASE("ports= changes the list's version only through the entries that have it") {
  const std::string rest = "b.example owner=o why=w\n";
  const Policy without = load("a.example\n" + rest);
  const Policy with = load("a.example ports=22\n" + rest);
  const Policy other = load("a.example ports=2222\n" + rest);
  CHECK(with.version() != without.version());
  CHECK(other.version() != with.version());
  // An entry without ports= hashes as before the key existed (pinned: lists' versions,
  // which logs and denials carry, stay what they were).
  CHECK(without.version() == load("b.example owner=o why=w\na.example\n").version());
  CHECK(load("a.example\n").version() == "0c549b93");
  CHECK(load("a.example why=w\n").version() == "754f5c53");
}
