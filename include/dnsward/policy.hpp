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

class Policy {
 public:
  /// Parses every source; each problem is appended to errors as "FILE:LINE: reason". The
  /// policy is usable only if errors stayed empty.
  static Policy parse(const std::vector<PolicySource>& sources, std::vector<std::string>& errors);

  /// Verdict for a lower-cased, uncompressed wire name including its root byte. The most
  /// specific entry wins: exact, then "*.", then the longest "**." suffix.
  Match match(const uint8_t* name_lc, std::size_t len) const;
  /// Convenience for tests and tools: the same for a presentation-form name.
  Match match_text(std::string_view name) const;

  const std::vector<Entry>& entries() const { return entries_; }
  /// A short version of the loaded policy: 8 hex digits of a hash over every entry's
  /// pattern and keys, so logs and denials can say which list decided.
  const std::string& version() const { return version_; }
  /// True if some entry has exactly this pattern.
  bool has_pattern(const std::string& pattern) const;

 private:
  struct Node {
    int32_t exact = -1, one = -1, many = -1;
    bool ancestor = false;  ///< some entry matches names strictly below this one
  };
  struct Hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  void add(Entry e, const std::string& key);
  const Node* find(const uint8_t* p, std::size_t n) const;

  std::vector<Entry> entries_;
  std::string version_ = "00000000";
  std::unordered_map<std::string, Node, Hash, std::equal_to<>> nodes_;  // key: wire suffix
};

/// Converts "a.example.com" / "A.Example.COM." to lower-cased wire form with root byte.
/// Returns false if it is not a valid name (empty label, label > 63, name > 255).
bool text_to_wire(std::string_view text, std::string& wire);

}  // namespace dnsward
