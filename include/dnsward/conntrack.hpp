// Conntrack entries of a sandbox's guest addresses, read and deleted through ctnetlink
// (NFNL_SUBSYS_CTNETLINK) with libmnl: when a sandbox is removed, the flows its guest
// opened must go with it, so that a VM that later reuses the address inherits no live flow.
//
// Each call opens its own netlink socket and closes it before returning: no state is kept
// between calls (sandbox removal is rare, and a fresh socket has no stale answers queued).
// The calls block (a dump of a large table takes time: about a second per million entries);
// every wait for the kernel is bounded.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

#include "dnsward/answer.hpp"

namespace dnsward {

/// Deletes every conntrack entry (all zones, both families) whose original direction's
/// source is one of addrs. Returns false with err if the table could not be read or an
/// entry could not be deleted (an entry gone meanwhile, ENOENT, is not an error). deleted:
/// entries deleted. An empty addrs deletes nothing and does not touch the kernel.
bool forget_flows_from(const std::vector<IpAddr>& addrs, std::size_t& deleted, std::string& err);

/// Counts entries whose original source is one of addrs (tests, `ctl show`).
bool count_flows_from(const std::vector<IpAddr>& addrs, std::size_t& count, std::string& err);

/// The most entries one forget_flows_from() call collects from a dump before deleting
/// them; with more matches it deletes in rounds (at most kConntrackMaxRounds), each after a
/// fresh dump (also when a delete found no entry: the next dump confirms it is gone).
/// Bounds the memory a call holds (about 100 bytes per entry).
inline constexpr std::size_t kConntrackRoundEntries = 65536;
inline constexpr int kConntrackMaxRounds = 16;

}  // namespace dnsward
