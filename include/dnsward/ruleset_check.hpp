// Is the ruleset in force? `dnsward nft-rules` marks what it prints (a comment on its output
// chain naming the ruleset's id and rule count, a comment on each rule naming its place) and
// `dnsward serve` reads its table back from the kernel and judges it by those marks: sets
// that no hooked chain with policy drop uses filter nothing, and a ruleset that failed to
// load (`nft -f` loads all or nothing) leaves exactly that. Rule bodies are known by their
// comments, not parsed back; only the lookups of dnsward's sets are read from them.
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

/// The ruleset's id: FNV-1a 64 over the chain's type line and each rule as printed, without
/// its comment, each followed by '\n'. Names one ruleset text (options, sets, addresses).
uint64_t ruleset_id(const std::vector<std::string>& lines);

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
};

/// dnsward's table, as the kernel holds it.
struct TableSeen {
  bool exists = false;
  bool dormant = false;  ///< `flags dormant`: none of its base chains is registered
  std::vector<ChainSeen> chains;
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

/// Judges a table read from the kernel: in force when some chain carries the chain comment,
/// is a base chain of type filter on the output hook with policy drop (in a table that is
/// not dormant), holds exactly the marked rules in order (no other rule), and looks up
/// each set the family needs. Pure.
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
