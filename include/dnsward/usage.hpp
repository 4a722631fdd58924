// What the policy is used for: queries per allowlist entry (first and last use), and per
// denied (or, in audit mode, would-be-denied) name. Kept in memory, persisted to a state
// file with atomic writes, read back at start so a restart loses nothing.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>

namespace dnsward {

struct UsageRecord {
  uint64_t count = 0;
  int64_t first = 0;  ///< unix seconds
  int64_t last = 0;
};

class Usage {
 public:
  using Table = std::unordered_map<std::string, UsageRecord>;

  /// Names kept per table (denied, would-deny); beyond it the least recently seen go.
  explicit Usage(std::size_t max_names = 10000) : max_names_(max_names) {}

  void allowed(const std::string& pattern, int64_t now) { bump(entries_, pattern, now); }
  void denied(const std::string& name, int64_t now) { bump_bounded(denied_, name, now); }
  void would_deny(const std::string& name, int64_t now) { bump_bounded(would_deny_, name, now); }

  const Table& entries() const { return entries_; }
  const Table& denied() const { return denied_; }
  const Table& would_deny() const { return would_deny_; }

  /// The state file's text (format version 1, tab-separated, closed by an "end" line that
  /// counts the records, so a truncated file is recognised).
  std::string serialize() const;
  /// Strict: any malformed line makes the whole text corrupt (err says where).
  static bool parse(std::string_view text, Usage& out, std::string& err);

  enum class Load { Ok, Missing, Corrupt };
  static Load load(const std::string& path, Usage& out, std::string& err);
  /// Writes PATH.tmp, fsyncs it, renames it over PATH: a crash leaves the old or the new.
  bool save(const std::string& path, std::string& err) const;

 private:
  static void bump(Table& t, const std::string& key, int64_t now);
  void bump_bounded(Table& t, const std::string& key, int64_t now);
  std::size_t max_names_;
  Table entries_, denied_, would_deny_;
};

}  // namespace dnsward
