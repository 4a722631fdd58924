// Dropping privilege after start-up: everything that needs root (port 53, the netlink
// socket, the nftables table) is done first; then dnsward becomes an unprivileged user that
// keeps only CAP_NET_ADMIN, which the nftables hook needs for every answer.
#pragma once
#include <string>

namespace dnsward {

/// What drop_privileges() did, for the start-up log.
struct DropResult {
  bool ok = true;
  bool dropped = false;   ///< we were root and are now `user`
  std::string message;    ///< an error, or a warning when nothing could be dropped
};

/// As root: switch to `user` (its uid, gid, no supplementary groups), keep only
/// CAP_NET_ADMIN (if keep_net_admin) in the permitted, effective and bounding sets, and set
/// PR_SET_NO_NEW_PRIVS. user_explicit: the operator named the user, so a missing one is an
/// error rather than a warning. Not root (started with ambient or file capabilities):
/// everything but CAP_NET_ADMIN is given up all the same.
DropResult drop_privileges(const std::string& user, bool user_explicit, bool keep_net_admin);

}  // namespace dnsward
