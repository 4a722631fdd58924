// Is the ruleset in force? `dnsward nft-rules` marks what it prints (a comment on its output
// chain naming the ruleset's id and rule count, a comment on each rule naming its place) and
// `dnsward serve` reads its table back from the kernel and judges it by those marks: sets
// that no hooked chain with policy drop uses filter nothing, and a ruleset that failed to
// load (`nft -f` loads all or nothing) leaves exactly that. Rule bodies are known by their
// comments, not parsed back; only the lookups of dnsward's sets are read from them. The
// table is judged whole: its flags, its two sets' flags, and that it holds no chain but the
// marked one (another chain of its own could rewrite what the filter let through). With
// --sni-guard `nft-rules` prints four chains in-guest, each marked with its place ("...
// chain=k/4", kGuestChains): output and input, which read dnsward's verdicts, and before
// each, guard_output and guard_input, which clear every packet's verdict bits and queue.
//
// Host mode (`nft-rules --host`) prints four chains (five with --sni-guard: guard_forward),
// each marked with its place among them ("... chain=k/4", "k/5"), and two more sets: the
// sandboxes' (interface . guest address) pairs.
// judge_host_ruleset judges that table the same way: by its marks, its sets' kernel types
// and flags, and the lookups its rules make.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace dnsward {

/// The comment `nft-rules` puts on its chain: "dnsward ruleset id=<16 hex> rules=<N>", and
/// " guard=on" after it when printed with --sni-guard.
std::string ruleset_chain_comment(uint64_t id, std::size_t rules, bool guard = false);
/// The comment `nft-rules` puts on rule i (0-based) of n: "dnsward <i>/<n> id=<16 hex>".
std::string ruleset_rule_comment(uint64_t id, std::size_t i, std::size_t n);
/// Host mode, chain k (0-based) of m: "dnsward ruleset id=<16 hex> rules=<N> chain=<k>/<m>",
/// with " guard=on" before " chain=" on the forward chain of a ruleset printed with --sni-guard.
std::string ruleset_chain_comment(uint64_t id, std::size_t rules, std::size_t k, std::size_t m,
                                  bool guard = false);
/// Host mode, rule i of n in chain k of m: "dnsward <i>/<n> id=<16 hex> chain=<k>/<m>".
std::string ruleset_rule_comment(uint64_t id, std::size_t i, std::size_t n, std::size_t k, std::size_t m);

/// A chain comment read back: the ruleset's id and how many rules it printed in the chain;
/// in host mode also the chain's place (chains = 0 in a single-VM mark, which has none).
struct ChainMark {
  uint64_t id = 0;
  std::size_t rules = 0;
  std::size_t chain = 0, chains = 0;
  bool guard = false;  ///< printed with --sni-guard (" guard=on" after the rule count)
};
std::optional<ChainMark> parse_chain_comment(std::string_view comment);
/// A rule comment read back: its place, its chain's size and the ruleset's id (and in host
/// mode its chain's place; chains = 0 without one).
struct RuleMark {
  uint64_t id = 0;
  std::size_t index = 0, rules = 0;
  std::size_t chain = 0, chains = 0;
};
std::optional<RuleMark> parse_rule_comment(std::string_view comment);

/// The ruleset's id: FNV-1a 64 over the lines of the table as printed (from `table F T {` to
/// its closing brace: the sets' declarations, the chain's type line, each rule without its
/// comment), leading tabs, blank lines, `#` notes and the marks left out, each followed by
/// '\n'. Names one ruleset text (family, names, set sizes, addresses, options).
uint64_t ruleset_id(const std::vector<std::string>& lines);

/// A name read from the kernel (a chain's), fit to print among `key=value` fields: letters,
/// digits and `_ . - /` as they are, every other byte as \xNN, at most 64 bytes shown (then
/// "..."). A chain named `output rules=13` cannot pass for fields of its own.
std::string shown_name(std::string_view name);

/// The comment in an nftables userdata blob (NFTNL_CHAIN_USERDATA, NFTNL_RULE_USERDATA), as
/// nft writes it: TLVs of one type byte and one length byte, the comment being type 0 with
/// its terminating NUL. "" when there is none or the blob is malformed.
std::string userdata_comment(const void* data, std::size_t len);

/// One rule of a chain, as the kernel holds it.
struct RuleSeen {
  uint64_t handle = 0;
  std::string comment;               ///< "" without one
  std::vector<std::string> lookups;  ///< sets the rule looks addresses up in (not `!= @set`)
  std::vector<std::string> negated_lookups;  ///< sets it looks up inverted (`!= @set`)
};

/// One chain of dnsward's table, as the kernel holds it.
struct ChainSeen {
  std::string name;
  bool base = false;          ///< has a hook (a base chain); a regular chain sees no packet
  uint32_t hook = 0;          ///< NF_INET_* when base
  uint32_t policy = 1;        ///< NF_DROP (0) or NF_ACCEPT (1), when base
  int32_t priority = 0;       ///< the hook priority, when base
  std::string type;           ///< "filter", "route", "nat", when base
  std::string comment;        ///< "" without one
  std::vector<RuleSeen> rules;  ///< in the order the kernel evaluates them
  /// Rules counted but not read: those beyond what the chain's mark declares (a chain with
  /// more rules than its mark is not in force, whatever they hold).
  std::size_t unread_rules = 0;
};

/// A set's NFT_SET_* flags as nft names them ("interval, timeout"; "none" for 0; an
/// unknown bit as 0xNN).
std::string set_flags_text(uint32_t flags);
/// Whether a set with these flags is what dnsward fills: `flags timeout` and no other.
bool set_flags_ok(uint32_t flags);

/// One of dnsward's two sets, as the kernel holds it.
struct SetSeen {
  bool exists = false;
  uint32_t flags = 0;     ///< NFT_SET_*: dnsward's sets have NFT_SET_TIMEOUT and nothing else
  uint32_t key_type = 0;  ///< nftables datatype (7 ipv4_addr, 8 ipv6_addr; kKeyType* below)
  uint32_t key_len = 0;
};

/// The key types and lengths the kernel holds (NFTA_SET_KEY_TYPE, NFTA_SET_KEY_LEN) for the
/// sets dnsward declares, as nft 1.0.6 declares them: measured by loading `nft-rules
/// --host` in a namespace (6.18 kernel) and reading the sets back with libnftnl. A
/// concatenation's type is its fields' types, each shifted in by 6 bits (nft datatype.h,
/// CONCAT_TYPE_BITS) — ipv4_addr 7, ipv6_addr 8, ifname 41 — and its length the fields'
/// lengths, each rounded up to 4 bytes (an ifname is 16).
inline constexpr uint32_t kKeyTypeV4 = 7, kKeyLenV4 = 4;                 ///< ipv4_addr
inline constexpr uint32_t kKeyTypeV6 = 8, kKeyLenV6 = 16;                ///< ipv6_addr
inline constexpr uint32_t kKeyTypeV4V4 = (7u << 6) | 7u, kKeyLenV4V4 = 8;    ///< ipv4_addr . ipv4_addr (455)
inline constexpr uint32_t kKeyTypeV6V6 = (8u << 6) | 8u, kKeyLenV6V6 = 32;   ///< ipv6_addr . ipv6_addr (520)
inline constexpr uint32_t kKeyTypeIfV4 = (41u << 6) | 7u, kKeyLenIfV4 = 20;  ///< ifname . ipv4_addr (2631)
inline constexpr uint32_t kKeyTypeIfV6 = (41u << 6) | 8u, kKeyLenIfV6 = 32;  ///< ifname . ipv6_addr (2632)
/// ports= (--sni-guard): address . inet_proto (12) . inet_service (13).
inline constexpr uint32_t kKeyTypeV4Port = (((7u << 6) | 12u) << 6) | 13u, kKeyLenV4Port = 12;
inline constexpr uint32_t kKeyTypeV6Port = (((8u << 6) | 12u) << 6) | 13u, kKeyLenV6Port = 24;
/// Host mode's: guest . destination . inet_proto . inet_service.
inline constexpr uint32_t kKeyTypeV4V4Port = (((kKeyTypeV4V4 << 6) | 12u) << 6) | 13u, kKeyLenV4V4Port = 16;
inline constexpr uint32_t kKeyTypeV6V6Port = (((kKeyTypeV6V6 << 6) | 12u) << 6) | 13u, kKeyLenV6V6Port = 40;

/// dnsward's table, as the kernel holds it.
struct TableSeen {
  bool exists = false;
  /// NFT_TABLE_F_*: `nft-rules` sets none. dormant: none of its base chains is registered;
  /// owner: the table goes, with no event, when the process that made it exits.
  uint32_t flags = 0;
  std::vector<ChainSeen> chains;
  SetSeen set4, set6;
  /// With --sni-guard: the port sets of ports= (read only when expected).
  SetSeen ports4, ports6;
  /// Host mode: the sandboxes' (interface . guest address) sets (kSandboxSet4, kSandboxSet6).
  SetSeen sbx4, sbx6;
};

/// What the judge needs to know of serve's configuration.
struct RulesetExpectation {
  std::string family;  ///< "inet", "ip" or "ip6", for messages
  std::string table;
  std::string set4, set6;
  bool need4 = true, need6 = true;  ///< the family's table sees IPv4 / IPv6
  bool guard = false;  ///< serve --sni-guard: the chain must be marked guard=on
  /// With --sni-guard: the port sets of ports=, judged like set4/set6 (type address .
  /// inet_proto . inet_service, flags timeout alone, looked up); empty: none expected.
  std::string ports4, ports6;
};

/// Whether dnsward's ruleset is in force, and why not.
struct RulesetStatus {
  enum class State : uint8_t {
    NotChecked,  ///< --no-nft: there is no ruleset to check
    InForce,
    NotInForce,
  };
  State state = State::NotChecked;
  std::string reason;  ///< why not in force (or not checked)
  std::string id;      ///< 16 hex digits of the marked chain's id, when one was found
  std::string chain;   ///< the marked chain(s) judged, comma-separated
  std::size_t rules = 0;
  bool in_force() const { return state == State::InForce; }
  /// "in-force", "not-in-force" or "not-checked": the word logs and the status answer use.
  std::string_view word() const;
  bool operator==(const RulesetStatus&) const = default;
};

/// Judges a table read from the kernel: in force when the table has no flags (neither
/// dormant nor owned by a process), each of its sets that exists (each the family needs
/// must) is of its address type with `flags timeout` and no other flag (an interval set
/// turns one address into a range up to the top of the address space), the table holds
/// exactly one chain, and that chain carries the chain comment, is a base chain of type
/// filter on the output hook with policy drop, holds exactly the marked rules in order (no
/// other rule), and looks up each set the family needs. A ruleset printed with --sni-guard
/// holds exactly the four chains of kGuestChains, of one id, each marked with its place: the
/// output chain judged as above, each other a base chain of its type on its hook holding
/// exactly its marked rules (their policy is accept, and not judged); with the guard every
/// chain's priority is judged too, as the guard's verdicts depend on their order. The output
/// chain's mark says guard=on exactly when e.guard. Pure.
RulesetStatus judge_ruleset(const TableSeen& t, const RulesetExpectation& e);

/// One of the chains `nft-rules` prints where it prints more than one (host mode; in-guest
/// with --sni-guard), in the order of their marks (chain=k/m).
struct HostChain {
  const char* name;
  const char* type;      ///< "filter" or "nat"
  uint32_t hook;         ///< NF_INET_*
  const char* priority;  ///< as nft names it
  int32_t prio;          ///< the same, as the kernel holds it
  /// Whether the judge checks prio: for the guard's chains and those after them, whose order
  /// against each other and against iptables' mangle (-150) decides whose mark a rule reads.
  bool prio_judged;
};

/// The first-flight guard's chains run at this priority: after conntrack (-200: their rules
/// read and set the conntrack mark) and before everything that queues or reads a verdict:
/// iptables-nft's mangle chains (-150), where --queue-backend xt queues, and the filter
/// chains (0), where the verdicts move into the conntrack mark. dnsward's verdict is
/// NF_ACCEPT, which goes on at the next hook entry: so a packet reaches the filter chain with
/// verdict bits only if dnsward gave them (nfqueue.cc).
inline constexpr int32_t kGuardChainPrio = -175;

/// The host ruleset's chains: anti-spoofing and the mark before conntrack; DNS redirected
/// to dnsward; what reaches the host itself; what is forwarded; with --sni-guard (the fifth
/// place, printed only with it), the guard's chain on the forward hook before the queue.
inline constexpr HostChain kHostChains[] = {
    {"prerouting", "filter", 0 /* NF_INET_PRE_ROUTING */, "raw", -300, false},
    {"dns_redirect", "nat", 0 /* NF_INET_PRE_ROUTING */, "dstnat", -100, false},
    {"input", "filter", 1 /* NF_INET_LOCAL_IN */, "filter", 0, false},
    {"forward", "filter", 2 /* NF_INET_FORWARD */, "filter", 0, true},
    {"guard_forward", "filter", 2 /* NF_INET_FORWARD */, "mangle - 25", kGuardChainPrio, true},
};
inline constexpr std::size_t kHostChainPrerouting = 0, kHostChainRedirect = 1, kHostChainInput = 2,
                             kHostChainForward = 3, kHostChainGuard = 4, kHostChainCount = 4,
                             kHostGuardChainCount = 5;

/// The chains `nft-rules --sni-guard` prints in-guest: the output chain (policy drop) and
/// the input chain (policy accept), where dnsward's verdicts on the client's and the
/// server's packets move into the conntrack mark (the output hook never sees the server's);
/// and before each, at kGuardChainPrio, guard_output and guard_input, which clear every
/// packet's verdict bits and hold what must come before the queue (the queue itself on the
/// nft backend). Without the guard the output chain alone, marked without a place.
inline constexpr HostChain kGuestChains[] = {
    {"output", "filter", 3 /* NF_INET_LOCAL_OUT */, "filter", 0, true},
    {"input", "filter", 1 /* NF_INET_LOCAL_IN */, "filter", 0, true},
    {"guard_output", "filter", 3 /* NF_INET_LOCAL_OUT */, "mangle - 25", kGuardChainPrio, true},
    {"guard_input", "filter", 1 /* NF_INET_LOCAL_IN */, "mangle - 25", kGuardChainPrio, true},
};
inline constexpr std::size_t kGuestChainOutput = 0, kGuestChainInput = 1, kGuestChainGuardOutput = 2,
                             kGuestChainGuardInput = 3, kGuestGuardChains = 4;
/// The chains an older `nft-rules --sni-guard` printed in-guest (output and input, for
/// dnsward's NF_REPEAT verdicts): recognised only to say so.
inline constexpr std::size_t kGuestGuardChainsRepeat = 2;

/// What the host judge needs to know of serve's configuration (family inet always).
struct HostRulesetExpectation {
  std::string table;
  std::string set4, set6;  ///< the (guest . destination) sets dnsward fills
  std::string sbx4, sbx6;  ///< the (interface . guest address) sets of registered sandboxes
  bool guard = false;      ///< serve --sni-guard: the forward chain must be marked guard=on
  /// With --sni-guard: the (guest . destination . protocol . port) sets of ports=, judged
  /// like set4/set6 and looked up by forward; empty: none expected.
  std::string ports4, ports6;
};

/// Judges the host table read from the kernel: in force when the table has no flags; the
/// vouched sets are (address . address) sets with flags timeout alone and the sandbox sets
/// (ifname . address) sets with no flag at all (an interval set would make one registered
/// pair a range of interfaces and addresses); the table holds exactly the four marked
/// chains of kHostChains, of one ruleset id, each a base chain of its type on its hook,
/// each holding exactly its marked rules in order; the forward chain looks up both
/// vouched sets and the prerouting chain both sandbox sets inverted (anti-spoofing); the
/// forward chain's mark says guard=on exactly when e.guard (as in the single-VM judge).
/// Policies and priorities are not judged: every chain's policy is accept (the host's other
/// traffic passes; the sandboxes' ends in a reject rule), and rule bodies, priorities
/// included, are known by the marks alone, as in the single-VM judge. Pure.
RulesetStatus judge_host_ruleset(const TableSeen& t, const HostRulesetExpectation& e);

/// Where the pipeline learns the ruleset's state (the real one: NftSets).
class RulesetWatch {
 public:
  virtual ~RulesetWatch() = default;
  /// The state now: events already queued are read first, so a ruleset removed before a
  /// query arrived is seen by that query.
  virtual const RulesetStatus& ruleset_now() = 0;
};

}  // namespace dnsward
