// libFuzzer: an upstream answer to a fixed question (www.example.com A) through the path
// the pipeline takes: prepare_answer (checks, scan, rebuild without dropped records, TTL
// clamp), then relay_answer to the client over UDP (512) and TCP (65535). The oracle is
// dnsward's promise: every address that reaches a client was vouched for. An independent
// walker reads each relayed reply and traps unless every A/AAAA address and every
// SVCB/HTTPS ipv4hint/ipv6hint in any section is in the vouch list, with a TTL no longer
// than the vouched one; the vouch list holds each address once, at most max_addresses of
// them, and no special-purpose address unless the entry allows private ones; and with
// strip_ech (--sni-guard) no SVCB/HTTPS record in it carries an ech parameter.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "dnsward/answer.hpp"
#include "dnsward/packet.hpp"

using namespace dnsward;

namespace {

constexpr uint32_t kMaxTtl = 3600;

uint16_t rd16(const uint8_t* p) { return uint16_t(p[0] << 8 | p[1]); }
uint32_t rd32(const uint8_t* p) {
  return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3];
}

// Skips a name as a client's parser would find its end: labels up to a root byte or a
// compression pointer, which is not followed (where it points does not move the end).
bool skip_name(const uint8_t* m, std::size_t n, std::size_t& pos) {
  for (;;) {
    if (pos >= n) return false;
    const uint8_t l = m[pos];
    if ((l & 0xC0) == 0xC0) {
      if (n - pos < 2) return false;
      pos += 2;
      return true;
    }
    if (l & 0xC0) return false;
    if (n - pos < 1u + l) return false;
    pos += 1u + l;
    if (l == 0) return true;
  }
}

// The vouched TTL of a, or -1 if a is not in the vouch list.
int64_t vouched_ttl(const std::vector<VouchAddr>& vouch, const IpAddr& a) {
  for (const VouchAddr& v : vouch)
    if (v.addr == a) return v.ttl;
  return -1;
}

// An address the client can reach, in a record with this TTL: it must have been vouched
// for at least that long (TTLs with the top bit set read as 0, RFC 2181 8).
void must_be_vouched(const std::vector<VouchAddr>& vouch, const IpAddr& a, uint32_t ttl) {
  if (ttl & 0x80000000u) ttl = 0;
  const int64_t v = vouched_ttl(vouch, a);
  if (v < 0 || ttl > uint32_t(v) || ttl > kMaxTtl) __builtin_trap();
}

// Walks a reply as sent to the client, every section, and checks every address in it.
// With strip_ech (the guard on), no SVCB/HTTPS record may carry an ech parameter (key 5).
void check_relayed(const uint8_t* m, std::size_t n, const std::vector<VouchAddr>& vouch, bool strip_ech) {
  if (n < 12) __builtin_trap();
  const uint16_t qd = rd16(m + 4);
  const uint32_t records = uint32_t(rd16(m + 6)) + rd16(m + 8) + rd16(m + 10);
  std::size_t pos = 12;
  for (uint16_t i = 0; i < qd; ++i) {
    if (!skip_name(m, n, pos) || n - pos < 4) __builtin_trap();
    pos += 4;
  }
  for (uint32_t i = 0; i < records; ++i) {
    if (!skip_name(m, n, pos) || n - pos < 10) __builtin_trap();
    const uint16_t type = rd16(m + pos);
    const uint32_t ttl = rd32(m + pos + 4);
    const std::size_t rdlen = rd16(m + pos + 8);
    pos += 10;
    if (n - pos < rdlen) __builtin_trap();
    const uint8_t* rd = m + pos;
    if (type == 1 || type == 28) {  // A, AAAA
      if (rdlen != (type == 1 ? 4u : 16u)) __builtin_trap();  // the scan refuses these
      must_be_vouched(vouch, type == 1 ? IpAddr::v4(rd) : IpAddr::v6(rd), ttl);
    } else if (type == 64 || type == 65) {  // SVCB, HTTPS (RFC 9460 2.2)
      std::size_t p = 2;
      if (rdlen < 2 || !skip_name(rd, rdlen, p)) __builtin_trap();
      while (p < rdlen) {
        if (rdlen - p < 4) __builtin_trap();
        const uint16_t key = rd16(rd + p), vlen = rd16(rd + p + 2);
        p += 4;
        if (rdlen - p < vlen) __builtin_trap();
        if (strip_ech && key == 5) __builtin_trap();
        if (key == 4 || key == 6) {  // ipv4hint, ipv6hint
          const std::size_t step = key == 4 ? 4 : 16;
          if (vlen % step) __builtin_trap();
          for (std::size_t k = 0; k < vlen; k += step)
            must_be_vouched(vouch, key == 4 ? IpAddr::v4(rd + p + k) : IpAddr::v6(rd + p + k), ttl);
        }
        p += vlen;
      }
    }
    pos += rdlen;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  static uint8_t out[65536];
  static const uint8_t query[] = {0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1,
                                  3, 'w', 'w', 'w', 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e',
                                  3, 'c', 'o', 'm', 0, 0, 1, 0, 1,
                                  0, 0, 41, 4, 208, 0, 0, 0, 0, 0, 0};
  Query q;
  if (parse_query(query, sizeof query, q) != ParseStatus::Ok) __builtin_trap();
  const uint16_t id = size >= 2 ? uint16_t(data[0] << 8 | data[1]) : 0;
  (void)is_edns_formerr(data, size);

  PrepareOptions o;
  o.allow_private = size & 1;
  o.max_addresses = 1 + (size % 8);
  o.max_ttl = kMaxTtl;
  o.strip_ech = size & 2;
  const PreparedAnswer p = prepare_answer(q, id, data, size, o);
  if (p.status != PrepareStatus::Ok) {
    if (!p.msg.empty() || !p.scan.vouch.empty()) __builtin_trap();  // nothing leaves a failure
    return 0;
  }
  const std::vector<VouchAddr>& vouch = p.scan.vouch;
  if (!p.scan.ok || !p.scan.drop.empty() || vouch.size() > o.max_addresses) __builtin_trap();
  for (std::size_t i = 0; i < vouch.size(); ++i) {
    if (!o.allow_private && is_special_purpose(vouch[i].addr)) __builtin_trap();
    for (std::size_t j = 0; j < i; ++j)
      if (vouch[j].addr == vouch[i].addr) __builtin_trap();  // each address once
  }
  // As the pipeline relays: a UDP client without room (with dnsward's own EDE) and a TCP one.
  for (const std::size_t limit : {std::size_t(512), std::size_t(65535)}) {
    std::size_t n = 0;
    const RelayStatus rs = relay_answer(q, id, p.msg.data(), p.msg.size(), limit, ReplyOptions{},
                                        out, sizeof out, n, limit == 512 ? 15 : wire::edns::kNoEde, "x");
    if (rs == RelayStatus::Ok) check_relayed(out, n, vouch, o.strip_ech);
  }
  return 0;
}
