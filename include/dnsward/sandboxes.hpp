// The sandboxes of host mode (`dnsward serve --host`): who each is (its guest addresses and
// tap), the policy it is held to, and everything the pipeline keeps per sandbox (usage
// counts, budget windows, queries in flight, counters). A query's sandbox is found by its
// source address, which the host ruleset's anti-spoofing makes trustworthy (only a
// registered tap . address pair gets past prerouting), and by its arrival interface
// (IP_PKTINFO) for UDP or the packet mark on the accepted socket for TCP.
// Policies are shared: sandboxes with the same sources (the same files' texts, the same
// inline entries) hold one Policy, loaded once.
#pragma once
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "dnsward/answer.hpp"
#include "dnsward/policy.hpp"
#include "dnsward/sandbox_spec.hpp"
#include "dnsward/usage.hpp"

namespace dnsward {

/// Distinct names asked under one budgeted entry in the budget window: when each was first
/// asked, oldest first, and the same as a set.
struct BudgetWindow {
  std::deque<std::pair<uint64_t, std::string>> first_asked;
  std::unordered_set<std::string> names;
};

/// One registered sandbox. Shared (std::shared_ptr) with the queries it has in flight: a
/// sandbox removed while a query is upstream is marked gone, and its answer vouches nothing.
struct Sandbox {
  SandboxSpec spec;
  std::shared_ptr<const Policy> policy;
  std::string sources;        ///< what its policy was read from, for messages
  Usage usage;
  std::unordered_map<uint32_t, BudgetWindow> budgets;  ///< by entry index of policy
  bool gone = false;          ///< removed (or replaced): nothing more is vouched for it
  unsigned ifindex = 0;       ///< spec.iface's index when last seen (0: not yet)
  uint32_t inflight = 0;      ///< its queries upstream
  /// counts.queries when its usage was last written: an idle sandbox's is never written
  /// (10,000 fsyncs at each save would stall the loop for tens of seconds).
  uint64_t saved_at = 0;
  struct Counts {
    uint64_t queries = 0, allowed = 0, denied = 0, forwarded = 0, cached = 0, vouched = 0,
             refused_caps = 0;
  } counts;
  explicit Sandbox(std::size_t state_names) : usage(state_names) {}
};

class Sandboxes {
 public:
  explicit Sandboxes(std::size_t state_names) : state_names_(state_names) {}

  /// The sandbox a guest address belongs to, or null.
  std::shared_ptr<Sandbox> by_addr(const IpAddr& a) const;
  std::shared_ptr<Sandbox> by_id(const std::string& id) const;
  const std::map<std::string, std::shared_ptr<Sandbox>>& all() const { return by_id_; }
  std::size_t size() const { return by_id_.size(); }

  /// The policy for spec's sources (the embedded default list unless spec says not, its
  /// files, its inline entries), shared with every sandbox of the same sources; null with
  /// errors ("FILE:LINE: reason") if any source is unreadable or invalid.
  /// files: the allowlist files' texts already read (a restore of 10,000 sandboxes sharing
  /// three files reads each once); null: read them now (a change may have been made).
  std::shared_ptr<const Policy> policy_for(const SandboxSpec& spec, std::vector<std::string>& errors,
                                           std::unordered_map<std::string, PolicySource>* files = nullptr);

  /// "" if spec may be registered (again, under its id): its addresses and its interface
  /// belong to no other sandbox. Else the one-line reason.
  std::string conflicts(const SandboxSpec& spec) const;
  /// Registers spec with its policy, replacing a sandbox of the same id (which is marked
  /// gone; its usage counts carry over). Returns the new one.
  std::shared_ptr<Sandbox> put(const SandboxSpec& spec, std::shared_ptr<const Policy> policy);
  /// Unregisters id (marked gone); null if there was none.
  std::shared_ptr<Sandbox> erase(const std::string& id);
  /// Policies loaded and still in use (by sandboxes or in-flight queries).
  std::size_t policies() const;

 private:
  std::size_t state_names_;
  std::map<std::string, std::shared_ptr<Sandbox>> by_id_;
  std::unordered_map<IpAddr, std::shared_ptr<Sandbox>, IpAddrHash> by_addr_;
  std::unordered_map<std::string, std::string> by_iface_;  // interface -> sandbox id
  /// Loaded policies by their sources' key; weak, so a policy no sandbox uses goes.
  std::unordered_map<std::string, std::weak_ptr<const Policy>> cache_;
};

}  // namespace dnsward
