// The allowlist: parsing of allowlist files (format version 1) and the matcher.
// Pure: no I/O. Lookup costs one hash probe per label of the query name, whatever the
// size of the list.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace dnsward {

/// One port of a ports= key: a protocol (IPPROTO_TCP or IPPROTO_UDP) and a port.
struct PortSpec {
  uint8_t proto = 6;  ///< IPPROTO_TCP (6) or IPPROTO_UDP (17)
  uint16_t port = 0;  ///< 1 to 65535
  bool operator==(const PortSpec&) const = default;
  /// "22" for TCP, "123/udp" for UDP: the form ports= takes.
  std::string text() const { return std::to_string(port) + (proto == 17 ? "/udp" : ""); }
};
/// At most this many ports in one ports= value.
inline constexpr std::size_t kMaxEntryPorts = 16;

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
  /// sni=any: connections to this entry's addresses need not name a bound name (the first-
  /// flight guard lets any first flight through), for clients that send no server_name.
  bool sni_any = false;
  /// ports=: with --sni-guard, the ports (beyond the guarded ones) this entry's addresses
  /// are opened on; empty: the guarded ports only. Without the guard it changes nothing.
  std::vector<PortSpec> ports;
  /// For wildcard entries: the query types allowed below it (types=; default A, AAAA,
  /// CNAME, HTTPS, SVCB) and the distinct names allowed per minute (budget=; 0: no limit).
  /// Names under a wildcard are a channel to whoever runs that zone: these limit it.
  std::vector<uint16_t> types;
  uint32_t budget = 0;
  /// From the shipped default list (zones/default.allow): justified upstream, not custom.
  bool shipped = false;
  std::string where() const { return source + ":" + std::to_string(line); }
};

/// The kinds of value an allowlist key takes; each kind has one validator
/// (check_key_value), shared by the parser, `check` and the tests.
enum class KeyKind : uint8_t {
  Text,       ///< any text but the empty one
  Date,       ///< YYYY-MM-DD, a day that exists
  YesNo,      ///< yes or no
  TypeList,   ///< RR types separated by commas: mnemonics or TYPEnnn (RFC 3597)
  PerMinute,  ///< a number of names per minute, 1 to 9999999
  Any,        ///< the word `any` alone
  PortList,   ///< ports separated by commas: N (TCP) or N/udp, 1 to 65535, each once, at most 16
};

/// One allowlist key, declared once: the parser, `check`, `explain`, the ready-to-fill lines
/// of `report` and the error messages all read kAllowlistKeys, and a test holds it equal to
/// the README's key list.
struct AllowlistKey {
  std::string_view name;
  KeyKind kind;
  std::string_view meaning;   ///< what the value says, for messages and help
  bool justification;         ///< every custom entry must carry it
  std::string Entry::*text;   ///< where a Text or Date value is kept; null for the others
};

/// Every key of format version 1. The justification keys come first, in the order they are
/// reported and written in ready-to-fill lines.
inline constexpr AllowlistKey kAllowlistKeys[] = {
    {"owner", KeyKind::Text, "who needs it", true, &Entry::owner},
    {"why", KeyKind::Text, "why the sandbox needs it", true, &Entry::why},
    {"data", KeyKind::Text, "what data flows over the connection", true, &Entry::data},
    {"unreachable", KeyKind::Text, "what breaks without it", true, &Entry::unreachable},
    {"reviewed", KeyKind::Date, "when it was last reviewed", true, &Entry::reviewed},
    {"expires", KeyKind::Date, "when it is no longer needed", false, &Entry::expires},
    {"private", KeyKind::YesNo, "whether it may vouch for special-purpose addresses", false, nullptr},
    {"types", KeyKind::TypeList, "the query types allowed below a wildcard", false, nullptr},
    {"budget", KeyKind::PerMinute, "distinct names a minute allowed below a wildcard", false, nullptr},
    {"sni", KeyKind::Any, "with --sni-guard, any first flight may reach its addresses", false, nullptr},
    {"ports", KeyKind::PortList, "with --sni-guard, the other ports its addresses are opened on", false, nullptr},
};

/// How many keys keep their value as text (Text and Date kinds).
inline constexpr std::size_t kTextKeyCount = [] {
  std::size_t n = 0;
  for (const auto& k : kAllowlistKeys) n += k.text != nullptr;
  return n;
}();

/// The key of that name, or null.
const AllowlistKey* find_allowlist_key(std::string_view name);
/// Checks a value for a key of that kind; false with the reason ("reviewed=2026-13-01 is not
/// a date of the form YYYY-MM-DD") if it is not a valid one. Types and budgets are parsed
/// into them when given, and so are ports.
bool check_key_value(const AllowlistKey& key, std::string_view value, std::string& reason,
                     std::vector<uint16_t>* types = nullptr, uint32_t* budget = nullptr,
                     std::vector<PortSpec>* ports = nullptr);
/// ports as a ports= value: "22,9418,123/udp".
std::string ports_text(const std::vector<PortSpec>& ports);
/// The known keys as "owner, why, ..., budget", for messages.
std::string allowlist_key_names();
/// A ready-to-fill allowlist line for name: every justification key with an empty value,
/// and reviewed= set to reviewed (may be empty).
std::string fill_in_line(std::string_view name, std::string_view reviewed);

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
  bool sni_any(std::size_t i) const { return entries_[i].flags & kSniAny; }
  bool is_wildcard(std::size_t i) const { return entries_[i].kind != uint8_t(Entry::Kind::Exact); }
  /// May a query of this type go out under entry i? Exact entries allow every type.
  bool allows_type(std::size_t i, uint16_t qtype) const;
  /// Entry i's budget of distinct names per minute (0: none).
  uint32_t budget(std::size_t i) const;
  /// Entry i's ports= (empty: none given).
  const std::vector<PortSpec>& ports(std::size_t i) const;
  /// The first entry with exactly this pattern, or -1.
  int32_t find_pattern(std::string_view pattern) const;
  /// A short version of the loaded policy: 8 hex digits of a hash over every entry's
  /// pattern and keys, so logs and denials can say which list decided.
  const std::string& version() const { return version_; }

 private:
  static constexpr uint8_t kPrivate = 1, kShipped = 2, kSniAny = 4;
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
    /// Values of the Text and Date keys, in the order of kAllowlistKeys.
    std::array<std::string, kTextKeyCount> text;
    std::vector<uint16_t> types;  // empty: the default set
    uint32_t budget = 0;
    std::vector<PortSpec> ports;  // ports=; empty: none
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
