#include "dnsward/privilege.hpp"

#include <grp.h>
#include <linux/securebits.h>
#include <pwd.h>
#include <sys/capability.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace dnsward {

namespace {
std::string errno_text(const char* what) { return std::string(what) + ": " + std::strerror(errno); }
}  // namespace

namespace {
// Leaves CAP_NET_ADMIN alone (or nothing) in the permitted and effective sets, clears the
// ambient set, and forbids new privileges. Needs no privilege: it only gives some up.
bool keep_only(bool keep_net_admin, std::string& err) {
  cap_t caps = cap_init();  // all clear
  if (keep_net_admin) {
    const cap_value_t keep[] = {CAP_NET_ADMIN};
    cap_set_flag(caps, CAP_PERMITTED, 1, keep, CAP_SET);
    cap_set_flag(caps, CAP_EFFECTIVE, 1, keep, CAP_SET);
  }
  const int rc = cap_set_proc(caps);
  cap_free(caps);
  if (rc != 0) {
    err = errno_text("cap_set_proc");
    return false;
  }
  prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
  // Nothing dnsward runs may ever gain privilege again (setuid binaries, file capabilities).
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
    err = errno_text("PR_SET_NO_NEW_PRIVS");
    return false;
  }
  return true;
}
}  // namespace

DropResult drop_privileges(const std::string& user, bool user_explicit, bool keep_net_admin) {
  DropResult r;
  if (geteuid() != 0) {
    // Started unprivileged (systemd's AmbientCapabilities, setpriv, file capabilities in a
    // container): port 53 is bound already, so CAP_NET_BIND_SERVICE and the rest go.
    r.ok = keep_only(keep_net_admin, r.message);
    r.dropped = r.ok;
    return r;
  }
  const passwd* pw = user.empty() ? nullptr : getpwnam(user.c_str());
  if (!pw) {
    if (user_explicit) {
      r.ok = false;
      r.message = "--user " + user + ": no such user";
    } else {
      r.message = "running as root: there is no user '" + user + "' to drop to (create it, or "
                  "name another with --user)";
    }
    return r;
  }
  // Every capability but CAP_NET_ADMIN leaves the bounding set for good, while we still
  // have CAP_SETPCAP; then KEEPCAPS lets the permitted set survive the change of uid.
  for (int c = 0; c <= CAP_LAST_CAP; ++c) {
    if (keep_net_admin && c == CAP_NET_ADMIN) continue;
    if (prctl(PR_CAPBSET_DROP, c, 0, 0, 0) != 0 && errno != EINVAL) {
      r.ok = false;
      r.message = errno_text("PR_CAPBSET_DROP");
      return r;
    }
  }
  if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 || setgroups(0, nullptr) != 0 ||
      setresgid(pw->pw_gid, pw->pw_gid, pw->pw_gid) != 0 ||
      setresuid(pw->pw_uid, pw->pw_uid, pw->pw_uid) != 0) {
    r.ok = false;
    r.message = errno_text(("switching to user " + user).c_str());
    return r;
  }
  if (!keep_only(keep_net_admin, r.message)) {
    r.ok = false;
    return r;
  }
  prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0);
  r.dropped = true;
  return r;
}

}  // namespace dnsward
