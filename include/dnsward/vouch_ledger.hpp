// The vouch ledger: for every address dnsward vouched for, the expiry the kernel holds, the
// expiry promised to clients, the allowlist entries (by pattern) that vouched for it and the
// names it was answered for. It decides what each answer must send to the kernel, and how a
// refused batch is retried (commit_changes). Pure: no I/O; the kernel is behind ElementPort,
// so tests drive it with a fake kernel.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "dnsward/answer.hpp"

namespace dnsward {

/// How an existing element's timeout is extended.
enum class RefreshMode {
  Auto,     ///< probe the kernel at start and pick one of the two below
  Update,   ///< re-add with NFTA_SET_ELEM_EXPIRATION: updates in place (kernel 6.12+)
  Replace,  ///< delete + add in one batch (older kernels, e.g. Debian 12's 6.1)
};

/// A set element's key: the destination address and, in host mode, the guest it is opened
/// for (the host's sets are keyed `guest . destination`, so sandbox A's answer opens nothing
/// for sandbox B). guest.family is 0 in single-VM mode. With a port (ports= under
/// --sni-guard), the element of the port sets: (guest .) destination . protocol . port.
struct SetKey {
  IpAddr guest;
  IpAddr addr;
  uint8_t proto = 0;  ///< IPPROTO_TCP or IPPROTO_UDP with a port; 0 without
  uint16_t port = 0;  ///< 0: the address element (the address sets)
  SetKey() = default;
  SetKey(const IpAddr& a) : addr(a) {}  // NOLINT: single-VM mode's key is the address
  SetKey(const IpAddr& g, const IpAddr& a, uint8_t pr = 0, uint16_t po = 0)
      : guest(g), addr(a), proto(pr), port(po) {}
  bool operator==(const SetKey& o) const {
    return guest == o.guest && addr == o.addr && proto == o.proto && port == o.port;
  }
  /// An element of the port sets (ports=), not of the address sets.
  bool ported() const { return port != 0; }
  /// "ADDR", or "GUEST>ADDR" in host mode (the ledger file's and the logs' form), followed
  /// by "@tcp/PORT" or "@udp/PORT" for a port element.
  std::string text() const;
  static bool parse(std::string_view s, SetKey& out);
};
struct SetKeyHash {
  std::size_t operator()(const SetKey& k) const {
    return (IpAddrHash{}(k.addr) * 31u + (k.guest.family ? IpAddrHash{}(k.guest) : 0u)) * 31u +
           (std::size_t(k.proto) << 16 | k.port);
  }
};

/// One address to vouch for and the element timeout it needs.
struct VouchItem {
  VouchItem() = default;
  VouchItem(const IpAddr& a, uint32_t t, const IpAddr& g = {}) : addr(a), timeout_s(t), guest(g) {}
  IpAddr addr;
  uint32_t timeout_s = 0;  ///< never 0: nftables reads 0 as "never expires"
  IpAddr guest;            ///< host mode: the guest it is opened for
  uint8_t proto = 0;       ///< ports=: the port element's protocol (see SetKey)
  uint16_t port = 0;       ///< ports=: its port; 0: the address element
  SetKey key() const { return {guest, addr, proto, port}; }
};

/// Who vouched: the deciding entry's pattern (empty in audit mode for a name no entry
/// allows), the name that was answered (for logs and audit), and the names its answer's
/// CNAME chain followed (AnswerScan::chain, the query name first; null: the name alone).
/// Every item is bound to name and to each chain name.
struct Provenance {
  std::string_view pattern;
  std::string_view name;
  const std::vector<std::string>* chain = nullptr;
};

/// Calls fn for each name who binds: who.name, then its chain (unnormalised, maybe twice).
template <typename Fn>
void for_each_bound_name(const Provenance& who, Fn&& fn) {
  fn(who.name);
  if (who.chain)
    for (const std::string& n : *who.chain) fn(std::string_view(n));
}

/// One element change, as the kernel sees it.
enum class ElemOp : uint8_t {
  Add,      ///< NEWSETELEM, create or (Update mode, with expiration) refresh in place
  AddExcl,  ///< NEWSETELEM with NLM_F_EXCL: EEXIST tells us the kernel holds it already
  /// The same, for an element the kernel may hold at least as long as needed (longer than
  /// dnsward would set, or for ever): on EEXIST the element is read, and left as it is if
  /// it lives long enough, else replaced.
  AddIfMissing,
  Del,      ///< DELSETELEM: ENOENT tells us it is gone already
};
struct ElemChange {
  ElemChange() = default;
  ElemChange(ElemOp o, const IpAddr& a, uint64_t t = 0, const IpAddr& g = {})
      : op(o), addr(a), timeout_ms(t), guest(g) {}
  ElemChange(ElemOp o, const SetKey& k, uint64_t t)
      : op(o), addr(k.addr), timeout_ms(t), guest(k.guest), proto(k.proto), port(k.port) {}
  ElemOp op = ElemOp::Add;
  IpAddr addr;
  uint64_t timeout_ms = 0;  ///< for adds
  IpAddr guest;             ///< host mode: the guest half of the key
  uint8_t proto = 0;        ///< a port element's (SetKey)
  uint16_t port = 0;
  SetKey key() const { return {guest, addr, proto, port}; }
};
/// One netlink message: elements of one family, one operation, one kind of set (the
/// address sets, or the port sets of ports=).
struct ElemMsg {
  ElemOp op;
  uint8_t family;
  std::vector<ElemChange> elems;
  bool ported = false;
};

/// The kernel side of commit_changes: sends msgs as ONE nftables batch (a transaction, all
/// or nothing) and fills results[i] with the errno of msgs[i] (0: accepted). Returns false
/// with err if the batch could not be sent or its answers not read.
class ElementPort {
 public:
  virtual ~ElementPort() = default;
  virtual bool transact(const std::vector<ElemMsg>& msgs, std::vector<int>& results,
                        std::string& err) = 0;
  /// Reads one element: whether the kernel holds it and for how long (ms; kNoExpiry for
  /// an element without a timeout). Returns false if it could not be read.
  virtual bool element_left(const SetKey& k, bool& exists, uint64_t& left_ms, std::string& err) = 0;
  /// Whether Add carries an expiration (Update mode refreshes in place with it).
  bool with_expiration = false;
};

/// Elements per netlink message. One IPv6 element with timeout and expiration is about 60
/// bytes: 128 keep a message far below the 16-bit length of its element-list nest (65,535
/// bytes, which wraps silently) and below half of the batch buffer (libmnl's contract).
inline constexpr std::size_t kElemsPerMsg = 128;
/// Changes per batch: even one message per change (about 120 bytes with headers, as after a
/// split) for 256 of them stays below the 64 KiB batch limit.
inline constexpr std::size_t kChangesPerBatch = 256;

/// What became of each change given to commit_changes.
enum class ChangeResult : uint8_t {
  Done,
  AlreadyGone,  ///< a delete of an element that was gone already
  AlreadyHeld,  ///< an AddIfMissing of an element the kernel holds long enough: left as it is
  Failed
};

/// Commits changes to the kernel in batches of at most kChangesPerBatch, each batch all or
/// nothing. A refused batch is resent without what made it fail, found by the sequence
/// number of the refused message: a message of several elements is split into one message
/// per element; then a delete refused with ENOENT is dropped (the element is gone already),
/// an exclusive add refused with EEXIST becomes delete + add (the kernel held the element:
/// on kernels before 6.12 a plain re-add would leave its old timeout). Any other error
/// fails the batch (errno_out). A Del directly followed by an Add of the same address is
/// kept in the same batch. Returns false if any batch failed; failed then names the
/// address the kernel refused (when it was one address).
/// held_left gets, for each add, how long the kernel holds the element afterwards: the
/// timeout written, or what it said when read (AlreadyHeld; kNoExpiry: for ever).
bool commit_changes(ElementPort& port, const std::vector<ElemChange>& changes,
                    std::vector<ChangeResult>& results, std::string& err, int& errno_out,
                    SetKey* failed = nullptr, std::vector<uint64_t>* held_left = nullptr);

/// Groups changes into messages: one per (operation, set) run (the family's address set, or its
/// port set for port elements), at most kElemsPerMsg elements each; changes whose index is in
/// alone get a message of their own. Deletes come first, so that in one batch a delete + add
/// replaces an element.
std::vector<ElemMsg> pack_messages(const std::vector<ElemChange>& changes,
                                   const std::vector<bool>& alone,
                                   std::vector<std::vector<std::size_t>>* origin = nullptr);

struct LedgerRecord {
  uint64_t kernel_ms = 0;    ///< expiry the kernel holds (monotonic ms); 0: not held
  uint64_t promised_ms = 0;  ///< the latest expiry an answer relied on
  /// What kernel_ms was before the view was last forgotten: the kernel may still hold the
  /// element that long (a dump is positional and can miss elements, so its silence never
  /// clears this; time does).
  uint64_t prior_ms = 0;
  uint32_t written = 0;      ///< the view epoch of dnsward's last change to this element
  std::vector<uint32_t> patterns;  ///< interned patterns of the entries that vouched
  bool audit = false;        ///< vouched in audit mode for a name no entry allowed
  /// The names it is bound to: the query names and CNAME chain names of the answers that
  /// vouched for it, lower-case, without trailing dot, each once, comma-separated (names
  /// in text form hold no comma). Never cut short: a dropped name would make the SNI guard
  /// reset a legitimate connection. The pipeline bounds it instead, refusing (SERVFAIL) an
  /// answer that would bind more than --max-names-per-element names (would_overflow_names),
  /// so a hostile wildcard zone answering under thousands of names cannot grow it without
  /// bound; only a ledger file written under a larger cap holds more.
  std::string names;
};

/// What the guard logs as the name of a first flight an sni=any entry let through. Never a
/// bound name: sni=any is asked of the policy in force (BoundNames::any), and a "*" from an
/// answer (a hostile upstream's CNAME to `*.`) is not bound.
inline constexpr std::string_view kAnyName = "*";

/// Calls fn for each name in LedgerRecord::names.
template <typename Fn>
void for_each_name(std::string_view names, Fn&& fn) {
  while (!names.empty()) {
    const auto comma = names.find(',');
    fn(names.substr(0, comma));
    if (comma == std::string_view::npos) break;
    names.remove_prefix(comma + 1);
  }
}

/// What the policy in force says of an entry (by pattern) that vouched for an element.
enum class Voucher : uint8_t {
  Gone,           ///< no longer listed: its elements go unless another voucher keeps them
  Listed,         ///< listed: keeps its elements, except special-purpose addresses
  ListedPrivate,  ///< listed with private=yes: keeps every element it vouched for
};
/// Judges a voucher by its pattern, for the guest the element was opened for (family 0 in
/// single-VM mode; in host mode each sandbox's own policy judges). Called once per
/// (guest, pattern) per revocation.
using VoucherJudge = std::function<Voucher(const IpAddr& guest, std::string_view pattern)>;
/// Whether an element vouched in audit mode for a name stays, for that guest.
using AuditJudge = std::function<bool(const IpAddr& guest, std::string_view name)>;
/// Whether the entry (by pattern) that vouched for a port element, listed still, still
/// names its port in ports=: a reload that takes a port away revokes its elements.
using PortJudge = std::function<bool(const IpAddr& guest, std::string_view pattern, uint8_t proto,
                                     uint16_t port)>;

/// Expiry value for an element the kernel holds without a timeout.
inline constexpr uint64_t kNoExpiry = UINT64_MAX;

class VouchLedger {
 public:
  /// The longest element timeout dnsward gives (max-ttl + grace): promises read back from a
  /// ledger file, and expiries a reread found, never make an element live longer.
  void set_max_timeout_ms(uint64_t ms) { max_timeout_ms_ = ms; }

  /// The changes that make the kernel hold every item at least timeout_s from now_ms, and
  /// never less than what an earlier answer promised; items the kernel holds long enough
  /// cost nothing. Duplicate addresses count once, with the longest timeout. effective_ms
  /// gets, per change, the expiry it gives the element.
  std::vector<ElemChange> plan(const std::vector<VouchItem>& items, uint64_t now_ms,
                               RefreshMode mode, std::vector<uint64_t>& effective_ms) const;
  /// Records what commit_changes did for a plan, and the provenance of every item: its
  /// pattern, and every name who binds (whatever their number: check would_overflow_names
  /// first).
  void committed(const std::vector<VouchItem>& items, const std::vector<ElemChange>& changes,
                 const std::vector<uint64_t>& effective_ms,
                 const std::vector<ChangeResult>& results, const Provenance& who,
                 uint64_t now_ms, const std::vector<uint64_t>* held_left = nullptr);
  /// Forgets what the kernel was believed to hold (provenance and promises stay), then
  /// records what a dump of the sets found: (address, expiry in ms from now or kNoExpiry).
  void reset_kernel(const std::vector<std::pair<SetKey, uint64_t>>& held, uint64_t now_ms);
  /// The same in steps, for a dump read a little at a time. forget_kernel(): every element
  /// counts as missing (safe: it is added exclusively, and replaced if the kernel has it,
  /// never shorter than the kernel held it before), and revocations still delete what the
  /// kernel may hold. merge_held(): an element the dump shows; at_ms is when the dump was
  /// asked for, so the expiry is never later than the kernel's. A dump is no snapshot: an
  /// element dnsward added or deleted since forget_kernel() keeps what dnsward did.
  /// reread_done(): the dump is complete; what it showed is held (what it did not show is
  /// treated as missing for answers, but revocations still cover it until its prior expiry).
  void forget_kernel();
  void merge_held(const SetKey& k, uint64_t left_ms, uint64_t at_ms);
  void reread_done();
  /// The reread failed: the view stays forgotten (and the prior expiries kept) until the next.
  void reread_failed() { rereading_ = false; }
  /// Deletes to send to revoke every held element none of whose vouchers keep(pattern)
  /// keeps (a Listed entry keeps no special-purpose address: a reload that takes private=yes
  /// away revokes them); audit-vouched elements are kept if keep_audit(name) holds for one of their
  /// names. Elements without provenance (not vouched by this ledger) are kept.
  /// A port element stays only through a voucher that keeps it and keep_port (when given)
  /// still names its port.
  std::vector<ElemChange> revocations(const VoucherJudge& keep, const AuditJudge& keep_audit,
                                      uint64_t now_ms, const PortJudge& keep_port = {}) const;
  /// Deletes for every element held (or maybe held) for one of guests: a sandbox removed.
  std::vector<ElemChange> removals_of(const std::vector<IpAddr>& guests, uint64_t now_ms) const;
  /// The guests (host mode) that have records.
  std::vector<IpAddr> guests() const {
    std::vector<IpAddr> out;
    for (const auto& g : per_guest_) out.push_back(g.first);
    return out;
  }
  /// Records (held, maybe held or promised) for a guest: what its element cap counts.
  std::size_t count_of(const IpAddr& guest) const;
  /// How many of items' keys the ledger has no record of: the elements they would add.
  std::size_t unknown(const std::vector<VouchItem>& items) const;
  /// Calls fn(key, record) for every record of guest (`ctl show`).
  void for_each_of(const IpAddr& guest, const std::function<void(const SetKey&, const LedgerRecord&)>& fn) const;
  /// Records the outcome of revocations.
  void revoked(const std::vector<ElemChange>& dels, const std::vector<ChangeResult>& results);
  /// Drops records that are neither held nor promised any more.
  void expire(uint64_t now_ms);

  /// Whether binding who's names to items would leave an element (one held, maybe held or
  /// promised at now_ms) bound to more than cap names. An element bound to more already (a
  /// ledger file written under a larger cap) overflows whatever the names: answers for it
  /// fail closed until it expires. which gets the element and bound the names it has.
  bool would_overflow_names(const std::vector<VouchItem>& items, const Provenance& who,
                            std::size_t cap, uint64_t now_ms, SetKey* which = nullptr,
                            std::size_t* bound = nullptr) const;
  /// Whether k is held or promised at now_ms and bound to name (any letter case, a trailing
  /// dot ignored; in text form, as wire::name_to_text writes it): what the SNI guard asks.
  bool bound(const SetKey& k, std::string_view name, uint64_t now_ms) const;

  const LedgerRecord* find(const SetKey& k) const;
  const LedgerRecord* find(const IpAddr& a) const { return find(SetKey{{}, a}); }
  std::size_t size() const { return records_.size(); }
  /// Address elements held per family (AF_INET, AF_INET6) as of now (port elements not).
  std::size_t held(uint8_t family, uint64_t now_ms) const;
  std::string_view pattern(uint32_t id) const { return patterns_[id]; }

  /// The ledger file's text (version 1): one line per record with provenance, expiries as
  /// unix milliseconds (wall_now_ms is the wall clock at now_ms), closed by "end COUNT".
  std::string serialize(uint64_t now_ms, int64_t wall_now_ms) const;
  /// Reads a ledger file's text into provenance and promises, keyed to the monotonic clock
  /// (kernel expiries are not taken from it: only a dump tells them). Strict: any bad line
  /// makes the whole text corrupt, with err saying which.
  bool merge_saved(std::string_view text, uint64_t now_ms, int64_t wall_now_ms, std::string& err);

 private:
  uint32_t intern(std::string_view pattern);
  /// Appends name (normalised) to r's names unless it is there already.
  static void add_name(LedgerRecord& r, std::string_view name);
  /// who's names, normalised (lower-case, no trailing dot), each once; names a ledger file
  /// could not hold (empty, or with a byte name_to_text never writes) are left out.
  static std::vector<std::string> names_of(const Provenance& who);
  /// The record of k, made if missing (and counted for its guest).
  LedgerRecord& record(const SetKey& k);
  void erase(const SetKey& k);
  std::unordered_map<SetKey, LedgerRecord, SetKeyHash> records_;
  std::unordered_map<IpAddr, uint32_t, IpAddrHash> per_guest_;  // records per guest (host mode)
  uint64_t max_timeout_ms_ = (604800ull + 3600ull) * 1000u;  // the options' bounds
  uint32_t epoch_ = 1;      // bumped by forget_kernel()
  bool rereading_ = false;  // between forget_kernel() and reread_done()
  std::vector<std::string> patterns_;
  struct TextHash {  // lookups by string_view, without building a string per answer
    using is_transparent = void;
    std::size_t operator()(std::string_view v) const { return std::hash<std::string_view>{}(v); }
  };
  std::unordered_map<std::string, uint32_t, TextHash, std::equal_to<>> pattern_ids_;
};

}  // namespace dnsward
