// Is the first-flight guard's xt queue loaded? With --queue-backend xt (kernels whose nftables
// has no queue expression) the queue lives in iptables-nft's mangle table, outside the nft
// ruleset that `dnsward serve` judges by its marks (ruleset_check.hpp): without it nothing is
// queued and the ruleset's backstop drops every guarded connection's payload, so connections
// hang. serve reads the mangle table of each family it filters at start and refuses to run
// without the rules `nft-rules --print iptables|ip6tables` prints: the hook chain (OUTPUT
// in-guest, FORWARD in host mode) jumping to DNSWARD_GUARD, which queues to --queue-num with
// no bypass.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace dnsward {

inline constexpr const char* kXtGuardChain = "DNSWARD_GUARD";

/// One rule of table mangle as the kernel holds it, reduced to what the judge reads.
struct XtRuleSeen {
  std::string chain;
  std::string jump;  ///< the chain it jumps to (immediate verdict NFT_JUMP), "" for none
  bool nfqueue = false;   ///< its target is xt NFQUEUE
  uint16_t queue_num = 0;
  bool bypass = false;    ///< NFQUEUE --queue-bypass (revision 2 and later)
};

/// "" when rules hold the hook chain's jump to DNSWARD_GUARD and DNSWARD_GUARD queues to
/// queue_num, at least twice (SYNs and payload), never with bypass; else why not.
std::string judge_xt_queue(const std::vector<XtRuleSeen>& rules, const std::string& hook_chain, uint16_t queue_num);

/// Reads table mangle of family (NFPROTO_IPV4 or NFPROTO_IPV6) from the kernel: false with
/// err set when it cannot be read. A family without that table gives no rules.
bool read_xt_mangle(uint8_t family, std::vector<XtRuleSeen>& out, std::string& err);

}  // namespace dnsward
