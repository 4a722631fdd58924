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

std::size_t AnswerCache::cost(std::string_view key, const CacheEntry& e) {
  std::size_t c = key.size() + e.msg.size() + e.ttl_offsets.size() * sizeof(uint32_t) +
                  e.vouch.size() * sizeof(VouchAddr) + e.chain.size() * sizeof(std::string);
  for (const std::string& n : e.chain) c += n.size();
  return c;
}

void AnswerCache::erase(Map::iterator it) {
  bytes_ -= it->second.cost;
  lru_.erase(it->second.lru);
  map_.erase(it);
}

const CacheEntry* AnswerCache::find(std::string_view key, uint64_t now_ms) {
  auto it = map_.find(key);
  if (it == map_.end()) {
    ++misses_;
    return nullptr;
  }
  if (now_ms >= it->second.entry.stored_ms + uint64_t(it->second.entry.ttl) * 1000u) {
    erase(it);
    ++misses_;
    return nullptr;
  }
  lru_.splice(lru_.begin(), lru_, it->second.lru);
  ++hits_;
  return &it->second.entry;
}

void AnswerCache::store(std::string key, CacheEntry e) {
  auto it = map_.find(key);
  const std::size_t c = cost(key, e);
  if (max_entries_ == 0 || e.ttl == 0 || c > max_bytes_) {
    if (it != map_.end()) erase(it);  // this newer answer supersedes it
    return;
  }
  // What cost() counts is what the heap holds: no spare capacity (a rebuilt message may
  // sit in a 64 KiB buffer).
  e.msg.shrink_to_fit();
  e.ttl_offsets.shrink_to_fit();
  e.vouch.shrink_to_fit();
  if (it != map_.end()) {
    bytes_ = bytes_ - it->second.cost + c;
    it->second.entry = std::move(e);
    it->second.cost = c;
    lru_.splice(lru_.begin(), lru_, it->second.lru);
  } else {
    while (!lru_.empty() && map_.size() >= max_entries_) erase(map_.find(*lru_.back()));
    it = map_.emplace(std::move(key), Slot{std::move(e), {}, c}).first;
    lru_.push_front(&it->first);
    it->second.lru = lru_.begin();
    bytes_ += c;
  }
  // Least recently used out until the bytes fit. The entry just stored is at the front and
  // fits alone, so it is never the one evicted.
  while (bytes_ > max_bytes_ && lru_.size() > 1) erase(map_.find(*lru_.back()));
}

}  // namespace dnsward
