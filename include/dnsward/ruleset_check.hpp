// Is the ruleset in force? `dnsward nft-rules` marks what it prints (a comment on its output
// chain naming the ruleset's id and rule count, a comment on each rule naming its place) and
// `dnsward serve` reads its table back from the kernel and judges it by those marks: sets
// that no hooked chain with policy drop uses filter nothing, and a ruleset that failed to
// load (`nft -f` loads all or nothing) leaves exactly that. Rule bodies are known by their
// comments, not parsed back; only the lookups of dnsward's sets are read from them. The
// table is judged whole: its flags, its two sets' flags, and that it holds no chain but the
// marked one (another chain of its own could rewrite what the filter let through).
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace dnsward {

/// The comment `nft-rules` puts on its chain: "dnsward ruleset id=<16 hex> rules=<N>".
std::string ruleset_chain_comment(uint64_t id, std::size_t rules);
/// The comment `nft-rules` puts on rule i (0-based) of n: "dnsward <i>/<n> id=<16 hex>".
std::string ruleset_rule_comment(uint64_t id, std::size_t i, std::size_t n);

/// A chain comment read back: the ruleset's id and how many rules it printed.
struct ChainMark {
  uint64_t id = 0;
  std::size_t rules = 0;
};
std::optional<ChainMark> parse_chain_comment(std::string_view comment);
/// A rule comment read back: its place, its ruleset's size and id.
struct RuleMark {
  uint64_t id = 0;
  std::size_t index = 0, rules = 0;
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
};

/// One chain of dnsward's table, as the kernel holds it.
struct ChainSeen {
  std::string name;
  bool base = false;          ///< has a hook (a base chain); a regular chain sees no packet
  uint32_t hook = 0;          ///< NF_INET_* when base
  uint32_t policy = 1;        ///< NF_DROP (0) or NF_ACCEPT (1), when base
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
  uint32_t key_type = 0;  ///< nftables datatype (7 ipv4_addr, 8 ipv6_addr)
  uint32_t key_len = 0;
};

/// dnsward's table, as the kernel holds it.
struct TableSeen {
  bool exists = false;
  /// NFT_TABLE_F_*: `nft-rules` sets none. dormant: none of its base chains is registered;
  /// owner: the table goes, with no event, when the process that made it exits.
  uint32_t flags = 0;
  std::vector<ChainSeen> chains;
  SetSeen set4, set6;
};

/// What the judge needs to know of serve's configuration.
struct RulesetExpectation {
  std::string family;  ///< "inet", "ip" or "ip6", for messages
  std::string table;
  std::string set4, set6;
  bool need4 = true, need6 = true;  ///< the family's table sees IPv4 / IPv6
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
  std::string chain;   ///< the marked chain judged
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
/// other rule), and looks up each set the family needs. Pure.
RulesetStatus judge_ruleset(const TableSeen& t, const RulesetExpectation& e);

/// Where the pipeline learns the ruleset's state (the real one: NftSets).
class RulesetWatch {
 public:
  virtual ~RulesetWatch() = default;
  /// The state now: events already queued are read first, so a ruleset removed before a
  /// query arrived is seen by that query.
  virtual const RulesetStatus& ruleset_now() = 0;
};

}  // namespace dnsward
