// Usage counters and their state file; the policy version; explain's lines.
#include <doctest/doctest.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <fstream>

#include "dnsward/explain.hpp"
#include "dnsward/usage.hpp"

using namespace dnsward;

TEST_CASE("counters keep count, first and last use") {
  Usage u;
  u.allowed("pypi.org", 100);
  u.allowed("pypi.org", 250);
  u.denied("evil.example", 300);
  u.would_deny("new.example", 400);
  const auto& r = u.entries().at("pypi.org");
  CHECK(r.count == 2);
  CHECK(r.first == 100);
  CHECK(r.last == 250);
  CHECK(u.denied().at("evil.example").count == 1);
  CHECK(u.would_deny().at("new.example").last == 400);
}

TEST_CASE("the state file round-trips, and any damage is recognised") {
  Usage u;
  u.allowed("pypi.org", 100);
  u.denied("evil.example", 300);
  u.denied("evil.example", 301);
  u.would_deny("new.example", 400);
  const std::string text = u.serialize();
  Usage back;
  std::string err;
  REQUIRE_MESSAGE(Usage::parse(text, back, err), err);
  CHECK(back.serialize() == text);
  CHECK(back.denied().at("evil.example").count == 2);

  const struct { std::string text; const char* says; } damaged[] = {
      {text.substr(0, text.size() - 5), "newline"},              // cut mid-line
      {text.substr(0, text.rfind("end")), "no end line"},        // cut before the end line
      {text + "entry\tx\t1\t1\t1\n", "after the end line"},
      {"entry\tx\t1\t1\n" "end\t1\n", "not a record"},
      {"entry\tx\tone\t1\t1\n" "end\t1\n", "not a record"},
      {"entry\tx\t1\t5\t1\n" "end\t1\n", "not a record"},          // first after last
      {"bogus\tx\t1\t1\t1\n" "end\t1\n", "unknown kind"},
      {"entry\tx\t1\t1\t1\n" "end\t2\n", "counts 2 records"},
  };
  for (const auto& d : damaged) {
    CAPTURE(d.says);
    Usage x;
    std::string e;
    CHECK_FALSE(Usage::parse(d.text, x, e));
    CHECK(e.find(d.says) != std::string::npos);
  }
}

TEST_CASE("save is atomic and load reports missing and corrupt files") {
  char dir[] = "/tmp/dnsward-usage-XXXXXX";
  REQUIRE(mkdtemp(dir));
  const std::string path = std::string(dir) + "/state";
  Usage u, back;
  std::string err;
  CHECK(Usage::load(path, back, err) == Usage::Load::Missing);
  u.allowed("a.example", 1);
  REQUIRE(u.save(path, err));
  CHECK(Usage::load(path, back, err) == Usage::Load::Ok);
  CHECK(back.entries().at("a.example").count == 1);
  std::ofstream(path) << "garbage\n";
  CHECK(Usage::load(path, back, err) == Usage::Load::Corrupt);
  CHECK(err.find(path) != std::string::npos);
  std::remove(path.c_str());
  std::remove(dir);
}

TEST_CASE("denied names are bounded: the least recently seen are forgotten first") {
  Usage u(10);
  for (int i = 0; i < 10; ++i) u.denied(fmt::format("n{}", i), 100 + i);
  u.denied("n9", 500);
  u.denied("fresh", 600);
  CHECK(u.denied().size() == 10);
  CHECK(u.denied().count("n0") == 0);  // the oldest went
  CHECK(u.denied().count("n9") == 1);
  CHECK(u.denied().count("fresh") == 1);
}

TEST_CASE("the policy version depends on the entries, not on order or comments") {
  std::vector<std::string> e;
  const Policy a = Policy::parse({{"a", "x.example why=\"1\"\ny.example\n", false}}, e);
  const Policy b = Policy::parse({{"b", "# comment\ny.example\n\nx.example   why=1\n", false}}, e);
  const Policy c = Policy::parse({{"c", "x.example why=2\ny.example\n", false}}, e);
  REQUIRE(e.empty());
  CHECK(a.version().size() == 8);
  CHECK(a.version() == b.version());
  CHECK(a.version() != c.version());
}

TEST_CASE("explain names the deciding entry, its place and its justification") {
  std::vector<std::string> e;
  const Policy p = Policy::parse(
      {{"t.allow", "# x\n*.pypi.org owner=ml why=\"pip\" data=d unreachable=u reviewed=2026-11-01\n", false}}, e);
  REQUIRE(e.empty());
  auto lines = explain_lines(p, "Files.PyPI.org.");
  CHECK(lines[0] == "files.pypi.org: allowed by '*.pypi.org' at t.allow:2");
  CHECK(lines[1] == "  owner: ml");
  CHECK(lines[2] == "  why: pip");
  CHECK(lines.back() == "policy " + p.version());
  lines = explain_lines(p, "evil.example");
  CHECK(lines[0] == "evil.example: denied (NXDOMAIN): no allowlist entry matches it");
  const Policy git = Policy::parse({{"t.allow", "git.example ports=22,123/udp why=git\n", false}}, e);
  REQUIRE(e.empty());
  const auto gl = explain_lines(git, "git.example");
  CHECK(std::find(gl.begin(), gl.end(),
                  "  ports=22,123/udp: with --sni-guard, its addresses are open on these ports too "
                  "(without the guard every port is)") != gl.end());
  lines = explain_lines(p, "pypi.org");
  CHECK(lines[0].find("denied (NODATA)") != std::string::npos);
  lines = explain_lines(p, "a..b");
  CHECK(lines[0].find("not a valid domain name") != std::string::npos);
}
