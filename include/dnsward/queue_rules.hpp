// Is the first-flight guard's xt queue loaded? With --queue-backend xt (kernels whose nftables
// has no queue expression) the queue lives in iptables-nft's mangle table, outside the nft
// ruleset that `dnsward serve` judges by its marks (ruleset_check.hpp): without it nothing is
// queued and the ruleset's backstop drops every guarded connection's payload, so connections
// hang. serve reads the mangle table of each family it filters at start and refuses to run
// without the rules `nft-rules --print iptables|ip6tables` prints: the hook chains jumping to
// DNSWARD_GUARD (in-guest OUTPUT for the client's packets and INPUT, not from lo, for the
// server's; in host mode FORWARD from the sandboxes' interfaces and FORWARD to them), which
// queues to --queue-num with no bypass.
#pragma once
#include <cstddef>
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
  bool connmark = false;  ///< its target is xt CONNMARK (an older print's verdict rules)
  /// The interfaces it matches (-i, -o) as xt_iface_text spells them; "" for none.
  std::string in, out;
};

/// A jump into DNSWARD_GUARD as `nft-rules --print iptables` adds it: its hook chain, the
/// interfaces it matches as xt_iface_text spells them, and which packets it takes there (the
/// server's, --ctdir REPLY, or the client's, --ctdir ORIGINAL).
struct XtJump {
  std::string chain, in, out;
  bool reply = false;
};

/// The NFQUEUE rules DNSWARD_GUARD holds at least: the client's payload, and the server's
/// SYN-ACK, payload (TLS ports) and every packet (HTTP ports).
inline constexpr std::size_t kXtGuardQueues = 4;

/// An interface name as an iptables-nft rule compares it (NFTA_CMP_DATA after `meta load
/// iifname/oifname`), as iptables spells it: a name with its NUL is exact ("lo"), one
/// without is a prefix ("tap+"); "!" before it when the comparison is `!=`.
std::string xt_iface_text(const void* data, std::size_t len, bool negated);

/// How iptables spells j's interface matches: "! -i lo", "! -i tap+ -o tap+"; "" for none.
std::string xt_iface_options(const XtJump& j);

/// "" when rules hold each of jumps (its chain and interfaces; the direction is not read)
/// and DNSWARD_GUARD queues to queue_num at least kXtGuardQueues times, never with bypass,
/// and holds no CONNMARK rule (an older print's, which moved the verdict where it queued, for
/// NF_REPEAT); else why not.
std::string judge_xt_queue(const std::vector<XtRuleSeen>& rules, const std::vector<XtJump>& jumps, uint16_t queue_num);

/// Reads table mangle of family (NFPROTO_IPV4 or NFPROTO_IPV6) from the kernel: false with
/// err set when it cannot be read. A family without that table gives no rules.
bool read_xt_mangle(uint8_t family, std::vector<XtRuleSeen>& out, std::string& err);

}  // namespace dnsward
