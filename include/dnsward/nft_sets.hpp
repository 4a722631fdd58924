// dnsward's nftables sets: their schema (the table and two timeout sets, checked or created
// at start), the events that tell of changes by others, dumps of what the kernel holds, and
// the element writer that the vouch ledger drives. Every answer's addresses go in through
// vouch() and are ACKed by the kernel before the caller may reply. It also watches whether
// the ruleset of `dnsward nft-rules` is in force in its table (ruleset_check.hpp), at start
// and after every transaction that touches the table's chains or rules.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "dnsward/answer.hpp"
#include "dnsward/config.hpp"
#include "dnsward/netlink_batch.hpp"
#include "dnsward/ports.hpp"
#include "dnsward/ruleset_check.hpp"
#include "dnsward/vouch_ledger.hpp"

struct mnl_socket;
struct nlmsghdr;

namespace dnsward {

/// Where the addresses go.
struct NftTarget {
  uint16_t family = uint16_t(NftFamily::Inet);  ///< NFPROTO_* (config.hpp's NftFamily)
  std::string table = "dnsward";
  std::string set4 = "allowed4";
  std::string set6 = "allowed6";
  uint32_t set_size = 65536;  ///< the sets' size when dnsward creates them
  uint32_t max_timeout_s = 3630;  ///< the longest element timeout (max-ttl + grace)
  /// Host mode: set4/set6 are keyed `guest . destination` (ipv4_addr . ipv4_addr and
  /// ipv6_addr . ipv6_addr), and sbx4/sbx6 (ifname . address) hold the registered pairs of
  /// tap and guest address that the host ruleset's anti-spoofing lets through.
  bool host = false;
  std::string sbx4 = "sandboxes4";
  std::string sbx6 = "sandboxes6";
  /// --sni-guard: the ruleset in force must be one printed with it (its chain's mark says
  /// guard=on; in host mode its forward chain's), or guarded connections would pass unjudged.
  bool guard = false;
  /// --sni-guard: the port sets of ports= (ports_set_name(set4/set6)), keyed (guest .)
  /// destination . protocol . port, checked or created next to the address sets and
  /// filled with the port elements of entries that have ports=. Empty: none.
  std::string ports4, ports6;
  bool ports() const { return !ports4.empty(); }
};

/// Fault-injection hooks for NftSets' three netlink sockets (see NetlinkFaults), for tests
/// against the real kernel; null: none. Installed before the constructor's first netlink
/// message, so the schema check and the refresh-mode probe go through them too.
struct NftFaults {
  NetlinkFaults* batches = nullptr;  ///< batches, gets and the probe
  NetlinkFaults* dumps = nullptr;    ///< rereads of the sets
  NetlinkFaults* events = nullptr;   ///< nftables notifications
};

class NftError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class NftSets : public ElementPort, public SetWriter, public RulesetWatch {
 public:
  /// Opens netlink, checks or creates the table and sets, probes the refresh mode, reads
  /// what the sets hold and judges the ruleset. Throws NftError with a message for the
  /// operator (no CAP_NET_ADMIN, wrong set type, `update` forced on a kernel without it...).
  NftSets(NftTarget target, RefreshMode mode);
  /// The same, with fault-injection hooks on its sockets (tests only).
  NftSets(NftTarget target, RefreshMode mode, NftFaults faults);
  ~NftSets() override;
  NftSets(const NftSets&) = delete;
  NftSets& operator=(const NftSets&) = delete;

  /// Makes the kernel hold every item at least its timeout (and never less than an earlier
  /// answer promised), waiting for the kernel's answer. Items held long enough already cost
  /// nothing. Returns false (with err) if any address could not be added: the caller must
  /// then not send the answer.
  bool vouch(const std::vector<VouchItem>& items, uint64_t now_ms, const Provenance& who,
             std::string& err) override;

  /// Deletes every element the kernel holds whose vouchers are all rejected by keep (see
  /// VouchLedger::revocations); an element that is gone already never hides the others.
  RevokeOutcome revoke_unless(const VoucherJudge& keep, const AuditJudge& keep_audit,
                              uint64_t now_ms, const PortJudge& keep_port = {}) override;

  /// The event socket, for the event loop; call on_events() when it is readable.
  int event_fd() const;
  /// Reads nftables events; on a change to our table by anyone else (or lost events),
  /// rereads what the sets hold and recreates what is missing, and judges the ruleset again
  /// at the end of each transaction that touched the table's chains or rules. Called by
  /// vouch() first too.
  void on_events();

  /// The ruleset's state as last judged (for metrics; reads no event).
  const RulesetStatus& ruleset() const { return ruleset_; }
  /// The same, after reading the events already queued (RulesetWatch, for the pipeline).
  const RulesetStatus& ruleset_now() override;
  /// Times the ruleset was read and judged (once at start, once per transaction after).
  uint64_t ruleset_checks() const { return ruleset_checks_; }
  /// Rules parsed by the last read of the ruleset (a table of many chains has none read).
  uint64_t ruleset_rules_read() const { return rules_read_; }

  /// The dump socket, for the event loop; call on_dump_readable() when it is readable. A
  /// reread of the sets after a change by someone else is read a little per loop pass, so
  /// a large set never stalls the loop (70,000 elements take about 170 ms to read).
  int dump_fd() const { return dump_.fd(); }
  void on_dump_readable();
  bool rereading() const { return dump_stage_ != 0; }

  /// Periodic upkeep: forgets expired elements, warns when a set is 80% full.
  void maintain(uint64_t now_ms);

  RefreshMode mode() const { return mode_; }
  VouchLedger& ledger() { return ledger_; }
  const VouchLedger& ledger() const { return ledger_; }
  std::size_t known() const { return ledger_.size(); }
  uint64_t batches() const { return nl_.batches(); }
  uint64_t external_changes() const { return external_changes_; }
  /// Rules seen that change dnsward's sets from the packet path (see check_rule).
  uint64_t foreign_set_rules() const { return foreign_set_rules_; }
  /// Elements held in the IPv4 (AF_INET) or IPv6 set, as dnsward knows them.
  std::size_t held(uint8_t family, uint64_t now_ms) const { return ledger_.held(family, now_ms); }
  /// The set's declared size (0: none, the kernel sets no limit).
  uint32_t size_of(uint8_t family) const;

  // ElementPort
  bool transact(const std::vector<ElemMsg>& msgs, std::vector<int>& results,
                std::string& err) override;
  bool element_left(const SetKey& k, bool& exists, uint64_t& left_ms, std::string& err) override;

  /// Asks the ledger (VouchLedger::would_overflow_names).
  bool would_overflow_names(const std::vector<VouchItem>& items, const Provenance& who,
                            std::size_t cap, uint64_t now_ms, SetKey& which,
                            std::size_t& bound) const override {
    return ledger_.would_overflow_names(items, who, cap, now_ms, &which, &bound);
  }

  // SetWriter, host mode
  std::size_t elements_of(const IpAddr& guest) const override { return ledger_.count_of(guest); }
  std::size_t would_add(const std::vector<VouchItem>& items) const override { return ledger_.unknown(items); }

  /// Host mode: adds (or deletes) the anti-spoofing pairs (iface . addr) of a sandbox, ACKed,
  /// in one batch. A delete of a pair that is gone already is not an error.
  bool set_pairs(const std::string& iface, const std::vector<IpAddr>& addrs, bool add,
                 std::string& err);
  /// Host mode: every pair the kernel's sandbox sets hold.
  bool list_pairs(std::vector<std::pair<std::string, IpAddr>>& out, std::string& err);
  /// Host mode: every guest address the ledger holds elements (or maybe-held ones) for.
  std::vector<IpAddr> guests() const;
  /// Host mode: adds many pairs (interface, address) in as few batches as fit (a restore).
  bool add_pairs(const std::vector<std::pair<std::string, IpAddr>>& pairs, std::string& err);
  /// Host mode: called when someone else deleted anti-spoofing pairs (or their sets or the
  /// table): the registry puts every registered sandbox's pairs back.
  void on_pairs_lost(std::function<void()> f) { on_pairs_lost_ = std::move(f); }
  /// Host mode: deletes every element opened for guests (a sandbox removed), ACKed.
  RevokeOutcome remove_guests(const std::vector<IpAddr>& guests, uint64_t now_ms);

 private:
  bool ensure(std::string& err);
  /// The set an element of this family goes to: the address set, or with a port the port set.
  const std::string& set_of(uint8_t family, bool ported) const {
    return ported ? (family == AF_INET ? t_.ports4 : t_.ports6) : (family == AF_INET ? t_.set4 : t_.set6);
  }
  /// The set stage k (1 to 4) of a reread dumps: set4, set6, ports4, ports6.
  const std::string& stage_set(int k) const { return set_of(k % 2 ? AF_INET : AF_INET6, k > 2); }
  /// Deletes dels (from the ledger's revocations or removals) and records the outcome.
  RevokeOutcome delete_elements(const std::vector<ElemChange>& dels);
  /// The message that adds (or deletes) one anti-spoofing pair.
  NetlinkSocket::Msg pair_msg(const std::string& iface, const IpAddr& a, bool add);
  /// want_flags: a set of vouched elements (`flags timeout` and no other); false: a plain set
  /// of anti-spoofing pairs (no flags).
  bool check_set(const std::string& name, uint32_t key_type, uint32_t key_len, bool& exists,
                 uint32_t& size, std::string& err, bool want_flags = true);
  enum class Probe : uint8_t { Yes, No, Failed };
  /// Whether the kernel updates an element's timeout in place (6.12+), tried on a scratch
  /// set; Failed (err set) when the probe could not tell.
  Probe probe_update(std::string& err);
  /// Reads every element of both sets into the ledger, waiting for the whole dump (at start).
  bool reload_view(std::string& err);
  /// Forgets what the kernel holds and starts a dump of both sets.
  bool start_reread(std::string& err);
  bool start_stage(std::string& err);
  /// Reads at most max_reads datagrams of the dump; done when both sets have been read.
  bool reread_step(int max_reads, bool& done, std::string& err);
  std::string full_message(uint8_t family) const;
  /// Warns once when a set passes 80% of its declared size (at most one count a second).
  void check_fill(uint64_t now_ms, bool force);

  NftTarget t_;
  RefreshMode mode_;
  NetlinkSocket nl_;    // batches and checks, answered at once
  NetlinkSocket dump_;  // dumps of the sets, read as they come
  int dump_stage_ = 0;  // 0: none; 1: reading set4; 2: set6; 3: ports4; 4: ports6 (stage_set)
  uint64_t dump_started_ms_ = 0;  // the reread
  uint64_t stage_started_ms_ = 0;  // the dump of the set being read
  // Another change came while a dump was being read: the rest of that dump is stale (and a
  // netlink socket runs one dump at a time: a second request would get EBUSY), so it is
  // read to its end unmerged, then a fresh reread starts.
  bool reread_again_ = false;
  bool reread_retry_ = false;  // the last reread failed: maintain() tries again
  /// Looks for rules that change dnsward's sets from the packet path (nft `update @set`,
  /// `delete @set`): those changes send no event, so dnsward could not see them.
  void check_rule(const nlmsghdr* h, const char* when);
  void check_rules();
  /// What on_events() does when someone else changed the sets or the table.
  void on_sets_changed(bool lost, bool recreate);
  /// Whether an event is a change to our table, its chains or its rules (by anyone).
  bool touches_ruleset(const nlmsghdr* h, uint16_t msg) const;
  /// Reads our table, its chains and their rules from the kernel.
  bool read_ruleset(TableSeen& seen, std::string& err);
  /// Reads and judges the ruleset; logs when its state changes.
  void check_ruleset();
  struct SocketCloser {
    void operator()(mnl_socket* s) const;
  };
  std::unique_ptr<mnl_socket, SocketCloser> events_;  // NFNLGRP_NFTABLES notifications
  NetlinkFaults* event_faults_ = nullptr;
  std::function<void()> on_pairs_lost_;
  VouchLedger ledger_;
  uint32_t size4_ = 0, size6_ = 0;
  bool warned_full_[2] = {false, false};
  uint64_t last_fill_check_ms_ = 0;
  uint64_t external_changes_ = 0;
  uint64_t foreign_set_rules_ = 0;
  RulesetStatus ruleset_;          // NotChecked until the first judgement
  bool ruleset_dirty_ = false;     // the table's chains or rules changed; their transaction's end not seen
  bool ruleset_retry_ = false;     // the last read failed: maintain() tries again
  uint64_t ruleset_checks_ = 0;
  uint64_t rules_read_ = 0;
  /// Why a set is not what dnsward fills (another type, without timeout, with another
  /// flag), as the last check_set found it; "" when both are. vouch() refuses meanwhile.
  std::string schema_err_;
};

}  // namespace dnsward
