// The pipeline driven without sockets: each scenario in test/replay/ is named after what it
// proves. replay.hpp describes the format.
#include <doctest/doctest.h>

#include <dirent.h>

#include <set>
#include <string>

#include "replay.hpp"

namespace {

const std::string kDir = DNSWARD_REPLAY_DIR;

// Every scenario file must be run by one of the cases below.
const std::set<std::string> kScenarios = {
    "reload_judges_answer_in_flight.rpl", "reload_empties_cache.rpl",
    "reload_private_entry_removed.rpl",   "budget_sliding_window.rpl",
    "audit_mode_vouches.rpl",             "vouch_failure_withholds_answer.rpl",
    "ttl_bounds.rpl",                     "upstream_overdue.rpl",
    "upstream_retries.rpl",               "udp_payload_truncates.rpl",
    "local_answers.rpl",                  "screen_protocol.rpl",
    "policy_verdicts.rpl",                "overload.rpl",
    "reload_private_revoked.rpl",         "sweep_timer_is_one.rpl",
    "require_ruleset.rpl",                "status_answer.rpl",
    "status_without_nft.rpl",             "require_ruleset_no_retry.rpl",
    "require_ruleset_after_vouch.rpl",    "names_full_withholds_answer.rpl",
    "cache_hit_binds_chain.rpl",          "ports_guard_vouches_port_elements.rpl",
    "ports_without_guard_open_nothing_more.rpl", "reload_ports_revoked.rpl",
};

void play(const std::string& name) {
  REQUIRE(kScenarios.count(name) == 1);
  dnsward::replay::run(kDir + "/" + name);
}

}  // namespace

TEST_CASE("replay: every scenario file is run by a test case") {
  std::set<std::string> files;
  DIR* d = opendir(kDir.c_str());
  REQUIRE(d != nullptr);
  while (dirent* e = readdir(d)) {
    const std::string n = e->d_name;
    if (n.size() > 4 && n.compare(n.size() - 4, 4, ".rpl") == 0) files.insert(n);
  }
  closedir(d);
  CHECK(files == kScenarios);
}

TEST_CASE("replay: an answer in flight during a reload is judged by the new policy") {
  play("reload_judges_answer_in_flight.rpl");
}
TEST_CASE("replay: a reload empties the cache") { play("reload_empties_cache.rpl"); }
TEST_CASE("replay: a reload that drops private=yes removes private addresses from answers in flight") {
  play("reload_private_entry_removed.rpl");
}
TEST_CASE("replay: budget= counts distinct names in a sliding 60 s window") {
  play("budget_sliding_window.rpl");
}
TEST_CASE("replay: audit mode forwards and vouches for what it would deny") {
  play("audit_mode_vouches.rpl");
}
TEST_CASE("replay: a refused vouch withholds the answer and caches nothing") {
  play("vouch_failure_withholds_answer.rpl");
}
TEST_CASE("replay: element timeouts are the clamped TTL plus grace, and cache hits renew them") {
  play("ttl_bounds.rpl");
}
TEST_CASE("replay: an upstream that never answers gets the client SERVFAIL in bounded time") {
  play("upstream_overdue.rpl");
}
TEST_CASE("replay: no-EDNS and letter-case mismatches are asked again, and nothing is taken from a mismatch") {
  play("upstream_retries.rpl");
}
TEST_CASE("replay: --udp-payload truncates UDP replies, TCP gets them whole") {
  play("udp_payload_truncates.rpl");
}
TEST_CASE("replay: localhost, why. and ANY are answered locally, denied ANY is denied") {
  play("local_answers.rpl");
}
TEST_CASE("replay: protocol errors are answered before the policy, responses never") {
  play("screen_protocol.rpl");
}
TEST_CASE("replay: unlisted names get NXDOMAIN, ancestors NODATA, filtered types EDE 17") {
  play("policy_verdicts.rpl");
}
TEST_CASE("replay: beyond --max-inflight clients get SERVFAIL at once") { play("overload.rpl"); }
TEST_CASE("replay: a reload that takes private=yes away revokes the special-purpose addresses") {
  play("reload_private_revoked.rpl");
}
TEST_CASE("replay: a query resumed from inside the overdue sweep starts no second sweep") {
  play("sweep_timer_is_one.rpl");
}
TEST_CASE("replay: --require-ruleset answers SERVFAIL with EDE 14 while the ruleset is not in force, diagnostics excepted") {
  play("require_ruleset.rpl");
}
TEST_CASE("replay: --require-ruleset sends no retry upstream once the ruleset is out of force") {
  play("require_ruleset_no_retry.rpl");
}
TEST_CASE("replay: --require-ruleset asks again after the vouch, which may judge the ruleset anew") {
  play("require_ruleset_after_vouch.rpl");
}
TEST_CASE("replay: CH TXT status.dnsward tells the ruleset's state, --require-ruleset, the policy and the mode") {
  play("status_answer.rpl");
}
TEST_CASE("replay: with --no-nft the status answer says the ruleset is not checked") {
  play("status_without_nft.rpl");
}
TEST_CASE("replay: an answer that would bind an address to more than --max-names-per-element names is withheld, and nothing is vouched") {
  play("names_full_withholds_answer.rpl");
}
TEST_CASE("replay: a cache hit binds the same query and CNAME chain names as the upstream answer") {
  play("cache_hit_binds_chain.rpl");
}
TEST_CASE("replay: with --sni-guard an entry's ports= elements are vouched with its addresses, before the answer, or it is withheld") {
  play("ports_guard_vouches_port_elements.rpl");
}
TEST_CASE("replay: without --sni-guard ports= vouches no port element") {
  play("ports_without_guard_open_nothing_more.rpl");
}
TEST_CASE("replay: a reload revokes the port elements of ports it no longer names, and of entries gone") {
  play("reload_ports_revoked.rpl");
}
