// The answer cache: upstream answers as dnsward relays them (dropped records gone, TTLs
// clamped), keyed by the question, served until their TTL runs out (negative answers per
// RFC 2308 5), least recently used evicted first. Every hit goes through the same vouch
// stage as an upstream answer, so cache and firewall sets stay consistent by construction.
// Bounded by entries and by bytes.
#pragma once
#include <cstdint>
#include <list>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "dnsward/answer.hpp"
#include "dnsward/packet.hpp"

namespace dnsward {

struct CacheEntry {
  std::vector<uint8_t> msg;           ///< the upstream answer, normalised, upstream ID in it
  std::vector<uint32_t> ttl_offsets;  ///< where its TTLs are, for ageing
  std::vector<VouchAddr> vouch;       ///< addresses and their TTLs at storage time
  std::vector<std::string> chain;     ///< the CNAME chain's names: a hit binds them too
  uint64_t stored_ms = 0;
  uint32_t ttl = 0;                   ///< seconds it may be served
  uint32_t dropped_special = 0;       ///< records removed as special-purpose, for the EDE
  uint32_t dropped_over_cap = 0;      ///< records removed by the address cap, for the EDE
};

/// Bounded twice: by entries, and by bytes, because one hostile zone can fill 10,000
/// entries with 64 KiB answers (650 MB). Least recently used entries go first until both
/// bounds hold.
class AnswerCache {
 public:
  /// The --cache-bytes default.
  static constexpr std::size_t kDefaultMaxBytes = std::size_t(32) << 20;

  /// At most max_entries answers holding at most max_bytes (as cost() counts them);
  /// 0 in either turns the cache off.
  explicit AnswerCache(std::size_t max_entries, std::size_t max_bytes = kDefaultMaxBytes)
      : max_entries_(max_entries), max_bytes_(max_bytes) {}

  /// The key: lower-cased name, type, class, and the DO and CD bits (they change answers),
  /// written into buf (kMaxKey bytes); returns its length. No heap on the hit path.
  static constexpr std::size_t kMaxKey = wire::kMaxNameWire + 5;
  static std::size_t key(const Query& q, char* buf);

  /// What an entry counts against max_bytes: its key, message, TTL offsets, vouch list and
  /// chain names.
  static std::size_t cost(std::string_view key, const CacheEntry& e);

  /// A live entry, or null (an expired one is removed).
  const CacheEntry* find(std::string_view key, uint64_t now_ms);
  /// Stores (or replaces) an entry, evicting the least recently used until both bounds
  /// hold. An entry with TTL 0 or costing more than max_bytes is not stored, and the
  /// older answer under its key is forgotten.
  void store(std::string key, CacheEntry e);
  void clear() { map_.clear(); lru_.clear(); bytes_ = 0; }
  std::size_t size() const { return map_.size(); }
  /// The sum of cost() over the entries held; never above max_bytes.
  std::size_t bytes() const { return bytes_; }
  uint64_t hits() const { return hits_; }
  uint64_t misses() const { return misses_; }

 private:
  struct Slot {
    CacheEntry entry;
    std::list<const std::string*>::iterator lru;
    std::size_t cost = 0;
  };
  struct Hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  using Map = std::unordered_map<std::string, Slot, Hash, std::equal_to<>>;
  void erase(Map::iterator it);

  std::size_t max_entries_;
  std::size_t max_bytes_;
  std::size_t bytes_ = 0;
  Map map_;
  std::list<const std::string*> lru_;  // the map's keys (nodes do not move); front: most recent
  uint64_t hits_ = 0, misses_ = 0;
};

}  // namespace dnsward
