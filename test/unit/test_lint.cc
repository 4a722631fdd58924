// The linter's rules, table-driven, with Debian's Public Suffix List read through libpsl
// (package publicsuffix) and a newer list given as a file.
#include <doctest/doctest.h>

#include <string>

#include "dnsward/dates.hpp"
#include "dnsward/lint.hpp"

using namespace dnsward;

namespace {
const char* kJust = " owner=team why=x data=y unreachable=z reviewed=2026-11-01";

std::vector<Finding> run(const std::string& text, const PublicSuffixList& psl, bool strict = false) {
  std::vector<std::string> errs;
  const Policy p = Policy::parse({{"t.allow", text, false}}, errs);
  REQUIRE(errs.empty());
  LintOptions o;
  o.today = "2026-11-27";
  o.strict = strict;
  return lint(p, psl, o);
}

bool has(const std::vector<Finding>& fs, bool error, const std::string& text) {
  for (const auto& f : fs)
    if (f.error == error && f.message.find(text) != std::string::npos) return true;
  return false;
}

const PublicSuffixList& debian() {
  static std::unique_ptr<PublicSuffixList> p = [] {
    std::string err;
    auto l = PublicSuffixList::load("", err);
    REQUIRE_MESSAGE(l, err);
    return l;
  }();
  return *p;
}
}  // namespace

TEST_CASE("wildcards at or above public suffixes are refused, narrow ones pass") {
  const struct { const char* pattern; bool broad; } cases[] = {
      {"*.amazonaws.com", true},      // not a suffix itself, but the PSL has entries below
      {"**.amazonaws.com", true},
      {"*.s3.amazonaws.com", true},   // a suffix
      {"*.github.io", true},
      {"*.com", true},
      {"**.org", true},
      {"*.githubusercontent.com", true},
      {"*.pypi.org", false},
      {"**.crates.io", false},
      {"*.github.com", false},
      {"amazonaws.com", false},       // exact names are one name, whatever their suffix
      {"github.io", false},
  };
  for (const auto& c : cases) {
    CAPTURE(c.pattern);
    const auto fs = run(std::string(c.pattern) + kJust, debian());
    CHECK(has(fs, true, "too broad") == c.broad);
  }
}

TEST_CASE("a newer list given with --psl knows suffixes Debian's 2023 list predates") {
  std::string err;
  const auto newer = PublicSuffixList::load(DNSWARD_TEST_DATA "/newer_psl.dat", err);
  REQUIRE_MESSAGE(newer, err);
  const auto with_newer = run(std::string("*.blob.core.windows.net") + kJust, *newer);
  CHECK(has(with_newer, true, "blob.core.windows.net is a public suffix"));
  const auto with_debian = run(std::string("*.blob.core.windows.net") + kJust, debian());
  CHECK(has(with_debian, false, "below the registrable domain windows.net"));
  std::string err2;
  CHECK_FALSE(PublicSuffixList::load("/nonexistent.dat", err2));
  CHECK_FALSE(err2.empty());
}

TEST_CASE("encrypted DNS resolvers are refused, directly or through a wildcard") {
  CHECK(has(run(std::string("dns.google") + kJust, debian()), true, "DNS-over-HTTPS/TLS"));
  CHECK(has(run(std::string("*.cloudflare-dns.com") + kJust, debian()), true, "mozilla.cloudflare-dns.com"));
  CHECK_FALSE(has(run(std::string("pypi.org") + kJust, debian()), true, "DNS-over-HTTPS/TLS"));
}

TEST_CASE("custom entries need their justification; shipped ones do not") {
  auto fs = run("pypi.org owner=a why=b\n", debian());
  CHECK(has(fs, true, "lacks its justification: data, unreachable, reviewed"));
  std::vector<std::string> errs;
  const Policy shipped = Policy::parse({{"default.allow", "pypi.org\n", true}}, errs);
  LintOptions o;
  o.today = "2026-11-27";
  CHECK(lint(shipped, debian(), o).empty());
  fs = run("intranet.example private=yes owner=a data=b unreachable=c reviewed=2026-11-01\n", debian());
  CHECK(has(fs, true, "private=yes: its why must name the internal endpoint"));
  fs = run("git.example ports=22,123/udp owner=a data=b unreachable=c reviewed=2026-11-01\n", debian());
  CHECK(has(fs, true, "'git.example' has ports=22,123/udp: its why must say what the sandbox reaches on those ports"));
  fs = run(std::string("git.example ports=22") + kJust + "\n", debian());
  CHECK_FALSE(has(fs, true, "has ports="));
}

TEST_CASE("reviews older than 90 days warn, or fail with --strict; past expiry fails") {
  const std::string old = "a.example owner=a why=b data=c unreachable=d reviewed=2026-08-01\n";
  CHECK(has(run(old, debian()), false, "last reviewed 118 days ago"));
  CHECK(has(run(old, debian(), true), true, "last reviewed 118 days ago"));
  const std::string recent = "a.example owner=a why=b data=c unreachable=d reviewed=2026-09-01\n";
  CHECK(run(recent, debian(), true).empty());
  CHECK(has(run(std::string("a.example expires=2026-11-26") + kJust, debian()), true, "expired on 2026-11-26"));
  CHECK(run(std::string("a.example expires=2026-11-27") + kJust, debian()).empty());
}

TEST_CASE("duplicates and exact names covered by wildcards are warned about") {
  const auto fs = run(std::string("*.pypi.org") + kJust + "\nfiles.pypi.org" + kJust +
                      "\na.b.crates.io" + kJust + "\n**.crates.io" + kJust + "\npypi.org" + kJust +
                      "\npypi.org" + kJust + "\n", debian());
  CHECK(has(fs, false, "'files.pypi.org' is already covered by '*.pypi.org' at t.allow:1"));
  CHECK(has(fs, false, "'a.b.crates.io' is already covered by '**.crates.io' at t.allow:4"));
  CHECK(has(fs, false, "'pypi.org' duplicates t.allow:5"));
  CHECK_FALSE(has(fs, false, "'pypi.org' is already covered"));  // the apex is not covered
}

TEST_CASE("dates: days between two days, across leap years") {
  long d = 0;
  REQUIRE(days_between("2024-02-28", "2024-03-01", d));
  CHECK(d == 2);
  REQUIRE(days_between("2026-11-27", "2026-08-29", d));
  CHECK(d == -90);
  CHECK_FALSE(days_between("2026-13-01", "2026-01-01", d));
  CHECK_FALSE(days_between("2026-02-30", "2026-03-01", d));  // the same dates the parser takes
}

TEST_CASE("dates: one parser and formatter, exact both ways for every day of five centuries") {
  CHECK(date::parse_day("1970-01-01") == 0);
  CHECK(date::parse_day("2000-02-29") == 11016);
  CHECK(date::format_day(11016) == "2000-02-29");
  for (const char* bad : {"2026-02-29", "2100-02-29", "2026-04-31", "2026-00-10", "2026-01-00",
                          "2026-1-01", "2026-01-01 ", "26-01-01", "2026/01/01", "+026-01-01", ""}) {
    CAPTURE(bad);
    CHECK_FALSE(date::parse_day(bad));
  }
  const int64_t from = *date::parse_day("1900-01-01"), to = *date::parse_day("2399-12-31");
  for (int64_t d = from; d <= to; ++d)
    if (date::parse_day(date::format_day(d)) != d) FAIL_CHECK("day " << d);
  CHECK(date::format_time(0) == "1970-01-01 00:00:00Z");
  CHECK(date::format_time(-1) == "1969-12-31 23:59:59Z");
  CHECK(date::format_time(951868799) == "2000-02-29 23:59:59Z");
  CHECK(date::format_timestamp_ms(1764547200123) == "2025-12-01T00:00:00.123Z");
  CHECK(date::format_timestamp_ms(-1) == "1969-12-31T23:59:59.999Z");
}

TEST_CASE("--strict makes every warning an error and changes nothing else") {
  // One list that draws every kind of warning the linter has: a wildcard below a
  // registrable domain (no newer list given), a stale review, a review in the future, a
  // duplicate and an exact name a wildcard covers.
  const std::string text = std::string("*.blob.core.windows.net") + kJust +
                           "\nold.example owner=a why=b data=c unreachable=d reviewed=2026-08-01" +
                           "\nsoon.example owner=a why=b data=c unreachable=d reviewed=2026-12-01" +
                           "\ndup.example" + kJust + "\ndup.example" + kJust +
                           "\n*.pypi.org" + kJust + "\nfiles.pypi.org" + kJust + "\n";
  const auto lax = run(text, debian());
  const auto strict = run(text, debian(), true);
  REQUIRE(lax.size() == 5);
  for (const auto& f : lax) {
    CAPTURE(f.message);
    CHECK_FALSE(f.error);
  }
  REQUIRE(strict.size() == lax.size());
  for (std::size_t i = 0; i < lax.size(); ++i) {
    CAPTURE(lax[i].message);
    CHECK(strict[i].error);
    CHECK(strict[i].where == lax[i].where);
    CHECK(strict[i].message == lax[i].message);
  }
}
