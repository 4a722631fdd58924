// The answer cache: upstream answers as dnsward relays them (dropped records gone, TTLs
// clamped), keyed by the question, served until their TTL runs out (negative answers per
// RFC 2308 5), least recently used evicted first. Every hit goes through the same vouch
// stage as an upstream answer, so cache and firewall sets stay consistent by construction.
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
  uint64_t stored_ms = 0;
  uint32_t ttl = 0;                   ///< seconds it may be served
  uint32_t dropped_special = 0;
};

class AnswerCache {
 public:
  explicit AnswerCache(std::size_t max_entries) : max_(max_entries) {}

  /// The key: lower-cased name, type, class, and the DO and CD bits (they change answers),
  /// written into buf (kMaxKey bytes); returns its length. No heap on the hit path.
  static constexpr std::size_t kMaxKey = wire::kMaxNameWire + 5;
  static std::size_t key(const Query& q, char* buf);

  /// A live entry, or null (an expired one is removed).
  const CacheEntry* find(std::string_view key, uint64_t now_ms);
  void store(std::string key, CacheEntry e);
  void clear() { map_.clear(); lru_.clear(); }
  std::size_t size() const { return map_.size(); }
  uint64_t hits() const { return hits_; }
  uint64_t misses() const { return misses_; }

 private:
  struct Slot {
    CacheEntry entry;
    std::list<std::string>::iterator lru;
  };
  std::size_t max_;
  struct Hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  std::unordered_map<std::string, Slot, Hash, std::equal_to<>> map_;
  std::list<std::string> lru_;  // front: most recently used
  uint64_t hits_ = 0, misses_ = 0;
};

}  // namespace dnsward
