#include "dnsward/cache.hpp"

#include <cstring>

namespace dnsward {

std::size_t AnswerCache::key(const Query& q, char* buf) {
  std::memcpy(buf, q.qname_lc, q.qname_len);
  std::size_t n = q.qname_len;
  buf[n++] = char(q.qtype >> 8);
  buf[n++] = char(q.qtype);
  buf[n++] = char(q.qclass >> 8);
  buf[n++] = char(q.qclass);
  buf[n++] = char((q.edns_do ? 1 : 0) | ((q.flags & wire::flag::CD) ? 2 : 0));
  return n;
}

const CacheEntry* AnswerCache::find(std::string_view key, uint64_t now_ms) {
  auto it = map_.find(key);
  if (it == map_.end()) {
    ++misses_;
    return nullptr;
  }
  if (now_ms >= it->second.entry.stored_ms + uint64_t(it->second.entry.ttl) * 1000u) {
    lru_.erase(it->second.lru);
    map_.erase(it);
    ++misses_;
    return nullptr;
  }
  lru_.splice(lru_.begin(), lru_, it->second.lru);
  ++hits_;
  return &it->second.entry;
}

void AnswerCache::store(std::string key, CacheEntry e) {
  if (max_ == 0 || e.ttl == 0) return;
  auto it = map_.find(key);
  if (it != map_.end()) {
    it->second.entry = std::move(e);
    lru_.splice(lru_.begin(), lru_, it->second.lru);
    return;
  }
  while (map_.size() >= max_ && !lru_.empty()) {
    map_.erase(lru_.back());
    lru_.pop_back();
  }
  lru_.push_front(key);
  map_.emplace(std::move(key), Slot{std::move(e), lru_.begin()});
}

}  // namespace dnsward
