// Unit tests: the answer cache's two bounds (entries and bytes), LRU order, expiry.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "dnsward/cache.hpp"

using namespace dnsward;

namespace {

// An entry whose message is msg_bytes long, with one TTL offset and one vouched address.
CacheEntry entry(std::size_t msg_bytes, uint32_t ttl = 300) {
  CacheEntry e;
  e.msg.assign(msg_bytes, 0xab);
  e.ttl_offsets = {20};
  e.vouch.push_back({IpAddr{}, ttl});
  e.ttl = ttl;
  return e;
}

// Every key is 4 bytes, so every entry(n) costs the same as every other entry(n).
std::string k(int i) { return "key" + std::to_string(i); }

}  // namespace

TEST_CASE("an entry costs its key, message, TTL offsets, vouch list and chain names") {
  CHECK(AnswerCache::cost("key1", entry(1000)) == 4 + 1000 + 4 + sizeof(VouchAddr));
  CacheEntry e = entry(1000);
  e.chain = {"a.test", "cdn.test"};
  CHECK(AnswerCache::cost("key1", e) == 4 + 1000 + 4 + sizeof(VouchAddr) + 2 * sizeof(std::string) + 14);
}

TEST_CASE("the byte bound holds exactly: entries are evicted until the new one fits") {
  const std::size_t c = AnswerCache::cost(k(0), entry(1000));
  AnswerCache cache(100, 3 * c);
  for (int i = 0; i < 3; ++i) cache.store(k(i), entry(1000));
  CHECK(cache.size() == 3);
  CHECK(cache.bytes() == 3 * c);  // exactly at the bound: nothing evicted
  cache.store(k(3), entry(1000));
  CHECK(cache.size() == 3);
  CHECK(cache.bytes() == 3 * c);
  CHECK(cache.find(k(0), 0) == nullptr);  // the oldest went
  CHECK(cache.find(k(3), 0) != nullptr);

  AnswerCache tight(100, 3 * c - 1);  // one byte short of three
  for (int i = 0; i < 3; ++i) tight.store(k(i), entry(1000));
  CHECK(tight.size() == 2);
  CHECK(tight.bytes() == 2 * c);
}

TEST_CASE("a large entry evicts as many least recently used entries as it needs") {
  const std::size_t small = AnswerCache::cost(k(0), entry(100));
  AnswerCache cache(100, 10 * small);
  for (int i = 0; i < 10; ++i) cache.store(k(i), entry(100));
  REQUIRE(cache.bytes() == 10 * small);
  const std::size_t big = AnswerCache::cost(k(99), entry(4 * small));
  cache.store(k(99), entry(4 * small));
  CHECK(cache.bytes() <= 10 * small);
  CHECK(cache.bytes() == big + (cache.size() - 1) * small);
  CHECK(cache.find(k(0), 0) == nullptr);
  CHECK(cache.find(k(9), 0) != nullptr);
}

TEST_CASE("eviction is least recently used: a hit protects an entry") {
  const std::size_t c = AnswerCache::cost(k(0), entry(500));
  AnswerCache cache(100, 3 * c);
  for (int i = 0; i < 3; ++i) cache.store(k(i), entry(500));
  REQUIRE(cache.find(k(0), 0) != nullptr);  // k0 is now the most recently used
  cache.store(k(3), entry(500));
  CHECK(cache.find(k(1), 0) == nullptr);  // k1 was the least recently used
  CHECK(cache.find(k(0), 0) != nullptr);
  CHECK(cache.find(k(2), 0) != nullptr);
  CHECK(cache.find(k(3), 0) != nullptr);
}

TEST_CASE("an entry larger than the byte bound is not stored, and replaces nothing stale") {
  const std::size_t c = AnswerCache::cost(k(0), entry(1000));
  AnswerCache cache(100, c);
  cache.store(k(0), entry(1000));
  REQUIRE(cache.size() == 1);
  cache.store(k(1), entry(1001));  // one byte over: must not evict k0 for nothing
  CHECK(cache.size() == 1);
  CHECK(cache.find(k(1), 0) == nullptr);
  CHECK(cache.find(k(0), 0) != nullptr);
  cache.store(k(0), entry(1001));  // a newer answer under k0 that does not fit: k0 goes
  CHECK(cache.size() == 0);
  CHECK(cache.bytes() == 0);

  AnswerCache off(100, 0);
  off.store(k(0), entry(1));
  CHECK(off.size() == 0);
}

TEST_CASE("the entry bound still holds when bytes are plentiful") {
  AnswerCache cache(2, 1u << 30);
  for (int i = 0; i < 3; ++i) cache.store(k(i), entry(100));
  CHECK(cache.size() == 2);
  CHECK(cache.find(k(0), 0) == nullptr);
  CHECK(cache.bytes() == 2 * AnswerCache::cost(k(0), entry(100)));
  AnswerCache off(0, 1u << 30);
  off.store(k(0), entry(100));
  CHECK(off.size() == 0);
}

TEST_CASE("replacing an entry updates the byte count") {
  AnswerCache cache(100, 1u << 20);
  cache.store(k(0), entry(100));
  cache.store(k(1), entry(100));
  cache.store(k(0), entry(3000));
  CHECK(cache.size() == 2);
  CHECK(cache.bytes() == AnswerCache::cost(k(0), entry(3000)) + AnswerCache::cost(k(1), entry(100)));
  cache.store(k(0), entry(10));
  CHECK(cache.bytes() == AnswerCache::cost(k(0), entry(10)) + AnswerCache::cost(k(1), entry(100)));
}

TEST_CASE("a replacement that grows an entry evicts others to keep the byte bound") {
  const std::size_t c = AnswerCache::cost(k(0), entry(1000));
  AnswerCache cache(100, 3 * c);
  for (int i = 0; i < 3; ++i) cache.store(k(i), entry(1000));
  cache.store(k(2), entry(2000));
  CHECK(cache.bytes() <= 3 * c);
  CHECK(cache.find(k(2), 0) != nullptr);
  CHECK(cache.find(k(0), 0) == nullptr);
  CHECK(cache.find(k(1), 0) != nullptr);
}

TEST_CASE("an expired entry is removed on lookup and its bytes released") {
  AnswerCache cache(100, 1u << 20);
  cache.store(k(0), entry(100, 10));
  CHECK(cache.find(k(0), 9'999) != nullptr);
  CHECK(cache.find(k(0), 10'000) == nullptr);
  CHECK(cache.size() == 0);
  CHECK(cache.bytes() == 0);
  cache.store(k(1), entry(100, 0));  // TTL 0: never stored
  CHECK(cache.size() == 0);
}

TEST_CASE("clear empties the cache and its byte count") {
  AnswerCache cache(100, 1u << 20);
  cache.store(k(0), entry(100));
  cache.clear();
  CHECK(cache.size() == 0);
  CHECK(cache.bytes() == 0);
  CHECK(cache.find(k(0), 0) == nullptr);
}
