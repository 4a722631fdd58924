// The judge of the xt queue's rules (queue_rules.hpp): what serve --queue-backend xt refuses
// to start without.
#include <doctest/doctest.h>

#include "dnsward/queue_rules.hpp"

using namespace dnsward;

namespace {
/// The rules `nft-rules --sni-guard --queue-backend xt --print iptables` loads (queue 53).
std::vector<XtRuleSeen> printed(const std::string& hook = "OUTPUT") {
  std::vector<XtRuleSeen> r;
  r.push_back({hook, kXtGuardChain});
  for (int i = 0; i < 3; ++i) r.push_back({kXtGuardChain, ""});  // the CONNMARK rules
  r.push_back({kXtGuardChain, "", true, 53});
  r.push_back({kXtGuardChain, "", true, 53});
  return r;
}
}  // namespace

TEST_CASE("the xt queue as printed is loaded; each missing or changed part is named") {
  CHECK(judge_xt_queue(printed(), "OUTPUT", 53) == "");
  CHECK(judge_xt_queue(printed("FORWARD"), "FORWARD", 53) == "");
  CHECK(judge_xt_queue({}, "OUTPUT", 53) ==
        "chain DNSWARD_GUARD has 0 NFQUEUE rules to queue 53 (the SYN's and the payload's are needed)");
  auto r = printed();
  r.erase(r.begin());
  CHECK(judge_xt_queue(r, "OUTPUT", 53) == "chain OUTPUT has no jump to DNSWARD_GUARD");
  CHECK(judge_xt_queue(printed("FORWARD"), "OUTPUT", 53) == "chain OUTPUT has no jump to DNSWARD_GUARD");
  r = printed();
  r.pop_back();
  CHECK(judge_xt_queue(r, "OUTPUT", 53) ==
        "chain DNSWARD_GUARD has 1 NFQUEUE rule to queue 53 (the SYN's and the payload's are needed)");
  CHECK(judge_xt_queue(printed(), "OUTPUT", 54) == "chain DNSWARD_GUARD queues to 53, not --queue-num 54");
  r = printed();
  r.back().bypass = true;
  CHECK(judge_xt_queue(r, "OUTPUT", 53) == "chain DNSWARD_GUARD queues with --queue-bypass (fail open)");
  // An NFQUEUE elsewhere (another chain of mangle) is not the guard's.
  r = printed();
  r[4].chain = r[5].chain = "OTHER";
  CHECK(judge_xt_queue(r, "OUTPUT", 53).find("has 0 NFQUEUE rules") != std::string::npos);
}
