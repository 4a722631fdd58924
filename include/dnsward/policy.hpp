// The allowlist: parsing of allowlist files (format version 1) and the matcher.
// Pure: no I/O. Lookup costs one hash probe per label of the query name, whatever the
// size of the list.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace dnsward {

/// One allowlist line.
struct Entry {
  enum class Kind : uint8_t {
    Exact,      ///< "example.com": that name only
    OneLabel,   ///< "*.example.com": exactly one more label, never the apex
    AnyLabels,  ///< "**.example.com": one or more labels, never the apex
  };
  std::string pattern;  ///< normalised: lower case, no trailing dot
  Kind kind = Kind::Exact;
  std::string source;   ///< file name, for FILE:LINE messages
  uint32_t line = 0;
  std::string owner, why, data, unreachable, reviewed, expires;
  /// private=yes: addresses of this entry's answers may be special-purpose ones (RFC 1918,
  /// loopback, ...), which dnsward otherwise refuses to vouch for (DNS rebinding).
  bool allow_private = false;
  /// For wildcard entries: the query types allowed below it (types=; default A, AAAA,
  /// CNAME, HTTPS, SVCB) and the distinct names allowed per minute (budget=; 0: no limit).
  /// Names under a wildcard are a channel to whoever runs that zone: these limit it.
  std::vector<uint16_t> types;
  uint32_t budget = 0;
  /// From the shipped default list (zones/default.allow): justified upstream, not custom.
  bool shipped = false;
  std::string where() const { return source + ":" + std::to_string(line); }
};

/// The justification keys every custom entry must carry, in the order they are reported.
inline constexpr const char* kJustificationKeys[] = {"owner", "why", "data", "unreachable",
                                                     "reviewed"};
/// The justification keys an entry lacks (empty for shipped entries): for private=yes the
/// `why` must also say what internal endpoint the sandbox reaches through it.
std::vector<std::string> missing_justification(const Entry& e);

/// The matcher's answer for a name.
struct Match {
  enum class Verdict : uint8_t {
    Allow,     ///< an entry matches: forward
    Ancestor,  ///< no entry matches, but entries exist below: NODATA, not NXDOMAIN (RFC 8020)
    Deny,      ///< nothing matches and nothing lies below: NXDOMAIN
  };
  Verdict verdict = Verdict::Deny;
  int32_t entry = -1;  ///< index into Policy::entries() when Allow
};

/// One allowlist text and the name its messages carry.
struct PolicySource {
  std::string name;
  std::string text;
  bool shipped = false;  ///< the embedded default list, or a file identical to it
};

/// The parsed allowlists, compact enough for a million entries: a trie of labels (each
/// node its parent, its own label and its exact entry) behind one open-addressing hash table
/// keyed by (parent, label), plus 16 bytes per entry; justification text is kept only for
/// entries that have some.
class Policy {
 public:
  /// Parses every source; each problem is appended to errors as "FILE:LINE: reason". The
  /// policy is usable only if errors stayed empty.
  static Policy parse(const std::vector<PolicySource>& sources, std::vector<std::string>& errors);

  /// Verdict for a lower-cased, uncompressed wire name including its root byte: one hash
  /// probe per label, whatever the size of the list. The most specific entry wins: exact,
  /// then "*.", then the "**." with the longest suffix.
  Match match(const uint8_t* name_lc, std::size_t len) const;
  /// Convenience for tests and tools: the same for a presentation-form name.
  Match match_text(std::string_view name) const;

  std::size_t size() const { return entries_.size(); }
  /// Entry i in full (pattern, place, justification): for tools, not the query path.
  Entry entry(std::size_t i) const;
  /// Entry i's pattern, e.g. "*.example.com".
  std::string pattern(std::size_t i) const;
  bool allow_private(std::size_t i) const { return entries_[i].flags & kPrivate; }
  bool is_wildcard(std::size_t i) const { return entries_[i].kind != uint8_t(Entry::Kind::Exact); }
  /// May a query of this type go out under entry i? Exact entries allow every type.
  bool allows_type(std::size_t i, uint16_t qtype) const;
  /// Entry i's budget of distinct names per minute (0: none).
  uint32_t budget(std::size_t i) const;
  /// The first entry with exactly this pattern, or -1.
  int32_t find_pattern(std::string_view pattern) const;
  /// A short version of the loaded policy: 8 hex digits of a hash over every entry's
  /// pattern and keys, so logs and denials can say which list decided.
  const std::string& version() const { return version_; }

 private:
  static constexpr uint8_t kPrivate = 1, kShipped = 2;
  static constexpr uint32_t kNone = UINT32_MAX;
  static constexpr uint32_t kWildBit = 0x80000000u;  // in Node::label: node has wildcards
  struct Node {
    uint32_t parent;
    uint32_t label;  ///< offset of [length][bytes] in labels_, | kWildBit
    uint32_t exact;  ///< entry index or kNone
  };
  struct Wild {
    uint32_t one = kNone, many = kNone;
  };
  struct Rec {  // 16 bytes an entry
    uint32_t node;
    uint32_t line;
    uint32_t meta;  ///< index into meta_, or kNone
    uint16_t source;
    uint8_t kind;
    uint8_t flags;
  };
  struct Meta {
    std::string owner, why, data, unreachable, reviewed, expires;
    std::vector<uint16_t> types;  // empty: the default set
    uint32_t budget = 0;
  };

  uint32_t find_child(uint32_t parent, const uint8_t* label, std::size_t len) const;
  uint32_t add_child(uint32_t parent, const uint8_t* label, std::size_t len);
  void grow();
  /// The node of a lower-cased wire name (without wildcard prefix), creating it if asked.
  uint32_t walk(const uint8_t* wire, std::size_t len, bool create);

  std::vector<Node> nodes_;
  std::vector<uint8_t> labels_;
  std::vector<uint32_t> slots_;  // node index + 1; 0 is empty
  std::unordered_map<uint32_t, Wild> wild_;
  std::vector<Rec> entries_;
  std::vector<Meta> meta_;
  std::vector<std::string> sources_;
  std::string version_ = "00000000";
};

/// Converts "a.example.com" / "A.Example.COM." to lower-cased wire form with root byte.
/// Returns false if it is not a valid name (empty label, label > 63, name > 255).
bool text_to_wire(std::string_view text, std::string& wire);

}  // namespace dnsward
