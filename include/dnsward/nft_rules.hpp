// `dnsward nft-rules`: prints the default-deny egress ruleset for a sandbox whose only
// resolver is dnsward, declaring the same table and sets that `dnsward serve` fills. Its
// options are the option table's (config.hpp): the nft group, --listen, --upstream and
// --user are the very options `serve` takes, with the same defaults and checks.
// With --host it prints the host ruleset instead: one table on the host enforcing every
// sandbox's vouched (guest . destination) pairs on traffic from the sandboxes' taps.
#pragma once
#include <string>
#include <vector>

#include "dnsward/config.hpp"
#include "dnsward/queue_rules.hpp"

namespace dnsward {

/// Parses `dnsward nft-rules` arguments (argv after "nft-rules") against the option table,
/// and checks that every address given fits --nft-family (an `ip` table sees no IPv6).
/// Nameservers taken from resolv_conf that do not fit are left out.
ParseOutcome parse_nft_rules(const std::vector<std::string>& args,
                             const std::string& resolv_conf = "/etc/resolv.conf");

/// The sets of (interface . guest address) pairs of registered sandboxes that the host
/// ruleset declares and dnsward fills: a packet from a sandbox interface whose pair is not
/// in them is dropped before anything else sees it.
inline constexpr const char* kSandboxSet4 = "sandboxes4";
inline constexpr const char* kSandboxSet6 = "sandboxes6";

/// The ruleset for c's nft group, listen addresses, upstreams, user and --allow CIDRs, as
/// `nft -f` reads it; with c.host the host ruleset (render_host_rules). Pure.
/// Whether a table of this family sees traffic of the address family (AF_INET/AF_INET6).
bool sees(NftFamily f, int af);
std::string render_nft_rules(const ServeConfig& c);

/// The first-flight guard's queue for --queue-backend xt, as iptables-restore reads it (af
/// AF_INET: iptables, AF_INET6: ip6tables): a chain in table mangle (priority -150, between
/// the nft ruleset's guard chains and its filter chains, which move dnsward's verdict marks
/// into the conntrack mark) that queues the client's payload and the server's packets of
/// undecided connections on guarded ports, jumped to as xt_guard_jumps(c) says.
/// Pure.
std::string render_xt_rules(const ServeConfig& c, int af);

/// The jumps into DNSWARD_GUARD that render_xt_rules prints and `serve` requires
/// (judge_xt_queue): in-guest from OUTPUT (the client's packets) and from INPUT, not from lo
/// (the server's); with c.host from FORWARD, in on c.sandbox_ifaces (the client's), and out
/// to them, not in on them (the server's).
std::vector<XtJump> xt_guard_jumps(const ServeConfig& c);

/// The host ruleset (`nft-rules --host`): table inet c.nft_table with the vouched sets
/// c.nft_set4/6 keyed by (guest . destination), the sandbox sets kSandboxSet4/6 keyed by
/// (interface . guest address), and the chains of kHostChains (ruleset_check.hpp), touching
/// only traffic that arrives on c.sandbox_ifaces. With c.sni_guard the forward chain holds
/// the first-flight guard's rules for vouched (guest . destination) pairs that read its
/// verdicts, and a fifth chain, guard_forward (kHostChainGuard), those before its queue. Pure.
std::string render_host_rules(const ServeConfig& c);

/// The destinations the host ruleset rejects from sandboxes whatever was vouched for, as
/// nft CIDRs of address family af (AF_INET, AF_INET6): the special-purpose addresses
/// dnsward never vouches for (is_special_purpose in answer.hpp), with the IPv4-mapped,
/// IPv4-compatible, NAT64 and 6to4 forms of the IPv4 ones.
std::vector<std::string> special_destinations(int af);
/// What the host ruleset rejects from sandboxes even when vouched for: "this network",
/// loopback, link-local (cloud metadata), multicast and reserved, and their IPv6 forms. The
/// rest of special_destinations is reachable only through a vouched pair (private=yes).
std::vector<std::string> never_destinations(int af);

/// The --help text of `dnsward nft-rules`, its options generated from the option table.
std::string nft_rules_help();

/// Runs the subcommand; returns the exit code.
int nft_rules_main(const std::vector<std::string>& args);

}  // namespace dnsward
