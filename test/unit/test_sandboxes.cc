// The host-mode registry: who a source address belongs to, and policies shared by sources.
#include <doctest/doctest.h>

#include <unistd.h>

#include <cstdio>
#include <fstream>

#include "dnsward/sandboxes.hpp"

using namespace dnsward;

namespace {
IpAddr ip(const char* s) {
  IpAddr a;
  REQUIRE(IpAddr::parse(s, a));
  return a;
}

SandboxSpec spec(const char* id, const char* addr, std::vector<std::string> lists, std::string text = "") {
  SandboxSpec s;
  s.id = id;
  s.addrs = {ip(addr)};
  s.iface = "tap0";
  s.allowlists = std::move(lists);
  s.allowlist_text = std::move(text);
  s.default_list = false;
  return s;
}

std::string temp_list(const char* text) {
  char path[] = "/tmp/dnsward-sbx-XXXXXX";
  const int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  close(fd);
  std::ofstream(path) << text;
  return path;
}
}  // namespace

TEST_CASE("sandboxes with the same allowlist files share one policy, loaded once; other files get another") {
  const std::string a = temp_list("one.test why=x\n"), b = temp_list("two.test why=y\n");
  Sandboxes r(100);
  std::vector<std::string> errors;
  const auto p1 = r.policy_for(spec("s1", "100.64.1.2", {a}), errors);
  const auto p2 = r.policy_for(spec("s2", "100.64.2.2", {a}), errors);
  const auto p3 = r.policy_for(spec("s3", "100.64.3.2", {b}), errors);
  REQUIRE(errors.empty());
  CHECK(p1 == p2);  // the same object: parsed once
  CHECK(p1 != p3);
  CHECK(p1->version() != p3->version());
  r.put(spec("s1", "100.64.1.2", {a}), p1);
  r.put(spec("s3", "100.64.3.2", {b}), p3);
  CHECK(r.policies() == 2);
  std::remove(a.c_str());
  std::remove(b.c_str());
}

TEST_CASE("a missing allowlist file is an error naming it, and no policy") {
  Sandboxes r(100);
  std::vector<std::string> errors;
  CHECK_FALSE(r.policy_for(spec("s1", "100.64.1.2", {"/nonexistent/x.allow"}), errors));
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].find("/nonexistent/x.allow: cannot open") == 0);
}

TEST_CASE("an invalid inline entry is reported as the sandbox's inline source with its line") {
  Sandboxes r(100);
  std::vector<std::string> errors;
  CHECK_FALSE(r.policy_for(spec("s1", "100.64.1.2", {}, "ok.test why=x\nbad..name why=y\n"), errors));
  REQUIRE_FALSE(errors.empty());
  CHECK(errors[0].find("sandbox s1 inline:2:") == 0);
}

TEST_CASE("a source address belongs to exactly one sandbox; another sandbox claiming it conflicts") {
  Sandboxes r(100);
  std::vector<std::string> errors;
  const auto p = r.policy_for(spec("s1", "100.64.1.2", {}, "one.test why=x\n"), errors);
  REQUIRE(p);
  r.put(spec("s1", "100.64.1.2", {}, "one.test why=x\n"), p);
  REQUIRE(r.by_addr(ip("100.64.1.2")));
  CHECK(r.by_addr(ip("100.64.1.2"))->spec.id == "s1");
  CHECK_FALSE(r.by_addr(ip("100.64.1.3")));
  SandboxSpec other = spec("s2", "100.64.1.2", {});
  other.iface = "tap1";
  CHECK(r.conflicts(other) == "address 100.64.1.2 is registered to sandbox s1");
  CHECK(r.conflicts(spec("s1", "100.64.1.2", {})).empty());  // itself, changed
}

TEST_CASE("an interface belongs to one sandbox: a second sandbox on it could send from the first's address") {
  Sandboxes r(100);
  std::vector<std::string> errors;
  const auto p = r.policy_for(spec("s1", "100.64.1.2", {}, "one.test why=x\n"), errors);
  r.put(spec("s1", "100.64.1.2", {}, "one.test why=x\n"), p);  // on tap0
  CHECK(r.conflicts(spec("s2", "100.64.9.9", {})).rfind("interface tap0 is registered to sandbox s1", 0) == 0);
  r.erase("s1");
  CHECK(r.conflicts(spec("s2", "100.64.9.9", {})).empty());  // free again once s1 is gone
  // Loopback: the host's own processes, no guest; sandboxes may share it.
  SandboxSpec a = spec("l1", "100.64.5.1", {}), b = spec("l2", "100.64.5.2", {});
  a.iface = b.iface = "lo";
  r.put(a, p);
  CHECK(r.conflicts(b).empty());
}

TEST_CASE("replacing or removing a sandbox marks the old one gone, so its queries in flight vouch nothing") {
  Sandboxes r(100);
  std::vector<std::string> errors;
  const auto p = r.policy_for(spec("s1", "100.64.1.2", {}, "one.test why=x\n"), errors);
  const auto first = r.put(spec("s1", "100.64.1.2", {}, "one.test why=x\n"), p);
  first->usage.allowed("one.test", 1);
  const auto second = r.put(spec("s1", "100.64.9.2", {}, "one.test why=x\n"), p);
  CHECK(first->gone);
  CHECK_FALSE(second->gone);
  CHECK(second->usage.entries().size() == 1);  // usage carries over a change
  CHECK_FALSE(r.by_addr(ip("100.64.1.2")));     // the old address is free again
  CHECK(r.by_addr(ip("100.64.9.2")) == second);
  const auto removed = r.erase("s1");
  CHECK(removed == second);
  CHECK(second->gone);
  CHECK_FALSE(r.by_addr(ip("100.64.9.2")));
  CHECK(r.size() == 0);
  CHECK_FALSE(r.erase("s1"));
}
