#include "dnsward/answer.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>
#include <unordered_map>
#include <unordered_set>

#include "dnsward/wire.hpp"

namespace dnsward {
using namespace wire;

bool IpAddr::operator==(const IpAddr& o) const {
  return family == o.family && std::memcmp(bytes, o.bytes, size()) == 0;
}

std::size_t IpAddrHash::operator()(const IpAddr& a) const {
  uint64_t h = 1469598103934665603ull ^ a.family;  // FNV-1a
  for (std::size_t i = 0; i < a.size(); ++i) h = (h ^ a.bytes[i]) * 1099511628211ull;
  return std::size_t(h);
}

std::string IpAddr::text() const {
  char buf[INET6_ADDRSTRLEN] = "?";
  inet_ntop(family, bytes, buf, sizeof buf);
  return buf;
}

IpAddr IpAddr::v4(const uint8_t* p) {
  IpAddr a;
  a.family = AF_INET;
  std::memcpy(a.bytes, p, 4);
  return a;
}

IpAddr IpAddr::v6(const uint8_t* p) {
  IpAddr a;
  a.family = AF_INET6;
  std::memcpy(a.bytes, p, 16);
  return a;
}

bool IpAddr::parse(const std::string& s, IpAddr& out) {
  out = IpAddr{};
  if (inet_pton(AF_INET, s.c_str(), out.bytes) == 1) {
    out.family = AF_INET;
    return true;
  }
  if (inet_pton(AF_INET6, s.c_str(), out.bytes) == 1) {
    out.family = AF_INET6;
    return true;
  }
  return false;
}

namespace {

bool special_v4(const uint8_t* b) {
  return b[0] == 0                                  // "this network", unspecified
         || b[0] == 10                              // RFC 1918
         || b[0] == 127                             // loopback
         || (b[0] == 100 && (b[1] & 0xC0) == 64)    // 100.64/10 CGNAT (RFC 6598)
         || (b[0] == 169 && b[1] == 254)            // link-local, 169.254.169.254 metadata
         || (b[0] == 172 && (b[1] & 0xF0) == 16)    // RFC 1918
         || (b[0] == 192 && b[1] == 168)            // RFC 1918
         || (b[0] == 192 && b[1] == 0 && b[2] == 0) // IETF protocol assignments (RFC 6890)
         || b[0] >= 224;                            // multicast, reserved, broadcast
}

}  // namespace

bool is_special_purpose(const IpAddr& a) {
  if (a.family == AF_INET) return special_v4(a.bytes);
  const uint8_t* b = a.bytes;
  static constexpr uint8_t zero[16] = {};
  if (std::memcmp(b, zero, 15) == 0 && b[15] <= 1) return true;          // :: and ::1
  if (b[0] == 0xff) return true;                                          // multicast
  if (b[0] == 0xfe && (b[1] & 0xC0) == 0x80) return true;                 // fe80::/10
  if (b[0] == 0xfe && (b[1] & 0xC0) == 0xC0) return true;                 // fec0::/10
  if ((b[0] & 0xFE) == 0xfc) return true;                                 // fc00::/7 ULA
  // Forms that embed an IPv4 address: judge the IPv4 address.
  static constexpr uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  static constexpr uint8_t nat64[12] = {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
  if (std::memcmp(b, mapped, 12) == 0 || std::memcmp(b, nat64, 12) == 0 ||
      std::memcmp(b, zero, 12) == 0)                                      // ::a.b.c.d
    return special_v4(b + 12);
  if (b[0] == 0 && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b && b[4] == 0 && b[5] == 1)
    return true;                                                          // 64:ff9b:1::/48 local NAT64
  if (b[0] == 0x20 && b[1] == 0x02) return special_v4(b + 2);             // 6to4
  return false;
}

namespace {

// Every resource record takes at least 11 bytes: a root owner, type, class, TTL, RDLENGTH.
constexpr std::size_t kMinRr = 11;

uint64_t name_hash(const uint8_t* name, std::size_t len) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (std::size_t i = 0; i < len; ++i) h = (h ^ name[i]) * 1099511628211ull;
  return h;
}

// A lower-cased uncompressed wire name and its hash, for cheap comparisons.
struct Name {
  std::basic_string<uint8_t> wire;
  uint64_t hash = 0;
  Name(const uint8_t* n, std::size_t len) : wire(n, len), hash(name_hash(n, len)) {}
};

// A record as scan_answer keeps it: where its owner is and that owner's hash, not a copy
// (a copy is 255 bytes a record, and an answer can hold thousands).
struct Rec {
  std::size_t owner_at = 0;  // offset of the owner name, possibly compressed
  uint64_t owner_hash = 0;
  std::size_t rdata = 0, rdlen = 0;
  uint32_t ttl = 0;
  uint16_t type = 0;
};

// True if rec's owner is n. The hash is only a filter: an attacker can collide FNV, so
// equal hashes are confirmed on the bytes.
bool owner_is(const uint8_t* ans, std::size_t len, const Rec& rec, const Name& n) {
  if (rec.owner_hash != n.hash) return false;
  Reader r(ans, len, rec.owner_at);
  uint8_t owner[kMaxNameWire];
  std::size_t owner_len = 0;
  return read_name(r, owner, &owner_len) && owner_len == n.wire.size() &&
         std::memcmp(owner, n.wire.data(), owner_len) == 0;
}

// Appends the addresses rec carries (A/AAAA data, SVCB/HTTPS hints) to addrs. False if the
// record is malformed, which makes the whole answer unusable.
bool addresses_of(const uint8_t* ans, const Rec& rec, std::vector<IpAddr>& addrs) {
  if (rec.type == type::A || rec.type == type::AAAA) {
    if (rec.rdlen != (rec.type == type::A ? 4u : 16u)) return false;
    addrs.push_back(rec.type == type::A ? IpAddr::v4(ans + rec.rdata) : IpAddr::v6(ans + rec.rdata));
    return true;
  }
  if (rec.type != type::SVCB && rec.type != type::HTTPS) return true;
  // RFC 9460 2.2: priority, target name, then key/length/value parameters. Hints are
  // addresses a client may connect to without an A/AAAA lookup: vouch or drop them.
  Reader p(ans, rec.rdata + rec.rdlen, rec.rdata);
  uint16_t prio;
  if (!p.u16(prio) || !read_name(p)) return false;
  while (p.remaining() > 0) {
    uint16_t key, vlen;
    if (!p.u16(key) || !p.u16(vlen) || p.remaining() < vlen) return false;
    const uint8_t* v = ans + p.pos();
    if (key == 4 /*ipv4hint*/ || key == 6 /*ipv6hint*/) {
      const std::size_t step = key == 4 ? 4 : 16;
      if (vlen % step != 0) return false;
      for (std::size_t k = 0; k < vlen; k += step)
        addrs.push_back(key == 4 ? IpAddr::v4(v + k) : IpAddr::v6(v + k));
    }
    p.skip(vlen);
  }
  return true;
}

// RFC 9460 14.3.2: SvcParamKey 5 is "ech", 0 "mandatory". Whether rec (SVCB/HTTPS, already
// walked by addresses_of) carries ech, and whether its mandatory key lists it.
constexpr uint16_t kSvcMandatory = 0, kSvcEch = 5;
void ech_of(const uint8_t* ans, const Rec& rec, bool& has, bool& mandatory) {
  has = mandatory = false;
  if (rec.type != type::SVCB && rec.type != type::HTTPS) return;
  Reader p(ans, rec.rdata + rec.rdlen, rec.rdata);
  uint16_t prio;
  if (!p.u16(prio) || !read_name(p)) return;
  while (p.remaining() > 0) {
    uint16_t key, vlen;
    if (!p.u16(key) || !p.u16(vlen) || p.remaining() < vlen) return;
    if (key == kSvcEch) has = true;
    if (key == kSvcMandatory)
      for (std::size_t k = 0; k + 2 <= vlen; k += 2) mandatory = mandatory || get16(ans + p.pos() + k) == kSvcEch;
    p.skip(vlen);
  }
}

}  // namespace

AnswerScan scan_answer(const uint8_t* ans, std::size_t len, const uint8_t* qname_lc,
                       std::size_t qname_len, bool allow_private, std::size_t max_addresses) {
  AnswerScan s;
  if (len < kHeaderSize) return s;
  s.rcode = get16(ans + 2) & flag::RCODE_MASK;
  const uint16_t qd = get16(ans + 4), an = get16(ans + 6), ns = get16(ans + 8);
  Reader r(ans, len, kHeaderSize);
  for (uint16_t i = 0; i < qd; ++i)
    if (!read_name(r) || !r.skip(4)) return s;

  // The counts are the sender's claim: refuse one the rest of the message cannot hold
  // before reserving anything for it (65535 + 65535 records is megabytes).
  const std::size_t count = std::size_t(an) + ns;
  if (count > r.remaining() / kMinRr) return s;
  std::vector<Rec> rrs;
  rrs.reserve(count);
  s.ttl_offsets.reserve(count);
  uint32_t min_answer_ttl = UINT32_MAX;
  int64_t negative_ttl = -1;
  Rr rr;
  for (std::size_t i = 0; i < count; ++i) {
    const std::size_t owner_at = r.pos();
    if (!read_rr(r, rr)) return s;
    s.ttl_offsets.push_back(uint32_t(rr.ttl_at));
    // RFC 2181 8: a TTL with the top bit set is treated as zero.
    if (rr.ttl & 0x80000000u) rr.ttl = 0;
    if (i < an) min_answer_ttl = std::min(min_answer_ttl, rr.ttl);
    if (i >= an && rr.type == type::SOA && rr.rdlen >= 20)
      negative_ttl = std::min<int64_t>(rr.ttl, get32(ans + rr.rdata + rr.rdlen - 4));
    rrs.push_back({owner_at, name_hash(rr.owner, rr.owner_len), rr.rdata, rr.rdlen, rr.ttl, rr.type});
  }

  // The CNAME chain from the query name, bounded, in the answer section only.
  std::vector<Name> chain;
  chain.emplace_back(qname_lc, qname_len);
  for (int link = 0; link < kMaxChain; ++link) {
    bool advanced = false;
    for (std::size_t i = 0; i < an; ++i) {
      const Rec& rec = rrs[i];
      if (rec.type != type::CNAME || !owner_is(ans, len, rec, chain.back())) continue;
      Reader t(ans, rec.rdata + rec.rdlen, rec.rdata);
      uint8_t target[kMaxNameWire];
      std::size_t target_len = 0;
      if (!read_name(t, target, &target_len)) return s;
      const Name next(target, target_len);
      if (std::any_of(chain.begin(), chain.end(), [&](const Name& n) { return n.wire == next.wire; }))
        break;  // a CNAME loop: stop here
      chain.push_back(next);
      advanced = true;
      break;
    }
    if (!advanced) break;
  }
  s.chain.reserve(chain.size());
  for (const Name& n : chain) s.chain.push_back(name_to_text(n.wire.data(), n.wire.size()));
  auto on_chain = [&](const Rec& rec) {
    return std::any_of(chain.begin(), chain.end(), [&](const Name& n) { return owner_is(ans, len, rec, n); });
  };

  // Where each vouched address sits in s.vouch: an address is vouched once, and counts
  // once against the cap however many records carry it.
  std::unordered_map<IpAddr, std::size_t, IpAddrHash> vouched;
  std::unordered_set<IpAddr, IpAddrHash> fresh;
  std::vector<IpAddr> addrs;
  for (std::size_t i = 0; i < rrs.size(); ++i) {
    const Rec& rec = rrs[i];
    addrs.clear();
    if (!addresses_of(ans, rec, addrs)) return s;
    bool ech = false, ech_mandatory = false;
    ech_of(ans, rec, ech, ech_mandatory);
    if (ech) s.ech.push_back(uint16_t(i));
    if (ech_mandatory) s.ech_mandatory.push_back(uint16_t(i));
    if (addrs.empty()) continue;  // no addresses (or SVCB without hints): nothing to hide
    if (i >= an || !on_chain(rec)) {
      s.drop.push_back(uint16_t(i));
      ++s.dropped_off_chain;
      continue;
    }
    if (!allow_private && std::any_of(addrs.begin(), addrs.end(), is_special_purpose)) {
      s.drop.push_back(uint16_t(i));
      ++s.dropped_special;
      continue;
    }
    // The address cap: a record whose new addresses do not all fit goes whole, never in
    // part, because its addresses must not reach the client unvouched. An SVCB/HTTPS
    // record dropped this way costs the client only an A/AAAA lookup (RFC 9460 7.3: hints
    // are optional). Counting stops just past the budget, so a record with thousands of
    // hints costs little.
    const std::size_t budget = max_addresses > vouched.size() ? max_addresses - vouched.size() : 0;
    fresh.clear();
    for (const IpAddr& a : addrs) {
      if (vouched.count(a) == 0) fresh.insert(a);
      if (fresh.size() > budget) break;
    }
    if (fresh.size() > budget) {
      s.drop.push_back(uint16_t(i));
      ++s.dropped_over_cap;
      s.addresses_over_cap += uint32_t(addrs.size());
      continue;
    }
    for (const IpAddr& a : addrs) {
      const auto [it, added] = vouched.try_emplace(a, s.vouch.size());
      if (added) s.vouch.push_back({a, rec.ttl});
      else s.vouch[it->second].ttl = std::max(s.vouch[it->second].ttl, rec.ttl);
    }
  }

  if (s.rcode == rcode::NOERROR && an > 0) s.cache_ttl = min_answer_ttl;
  else if (s.rcode == rcode::NXDOMAIN || (s.rcode == rcode::NOERROR && an == 0)) s.cache_ttl = negative_ttl;
  s.ok = true;
  return s;
}

PreparedAnswer prepare_answer(const Query& q, uint16_t upstream_id, const uint8_t* ans,
                              std::size_t len, const PrepareOptions& o) {
  PreparedAnswer p;
  // Nothing is taken from an answer to another question (c-ares checks this too).
  const RelayStatus checked = check_answer(q, upstream_id, ans, len);
  if (checked != RelayStatus::Ok) {
    p.status = checked == RelayStatus::Mismatch ? PrepareStatus::Mismatch : PrepareStatus::Malformed;
    return p;
  }
  AnswerScan first = scan_answer(ans, len, q.qname_lc, q.qname_len, o.allow_private, o.max_addresses);
  if (!first.ok) return p;  // Malformed
  p.dropped_special = first.dropped_special;
  p.dropped_over_cap = first.dropped_over_cap;
  p.addresses_over_cap = first.addresses_over_cap;
  p.dropped_off_chain = first.dropped_off_chain;
  // With the guard on, no ech parameter reaches a client: a record that makes it mandatory
  // cannot be used without it (RFC 9460 8) and goes whole; the others lose the parameter
  // and stay usable (their hints, alpn and port still apply). Clients then send the
  // server_name in the clear, where the guard reads it.
  std::vector<uint16_t> strip;
  if (o.strip_ech) {
    for (const uint16_t i : first.ech_mandatory)
      if (std::find(first.drop.begin(), first.drop.end(), i) == first.drop.end()) {
        first.drop.push_back(i);
        ++p.dropped_ech;
      }
    for (const uint16_t i : first.ech)
      if (std::find(first.drop.begin(), first.drop.end(), i) == first.drop.end()) strip.push_back(i);
    p.ech_stripped = uint32_t(strip.size());
  }
  if (first.drop.empty() && strip.empty()) {
    p.msg.assign(ans, ans + len);
    p.scan = std::move(first);
  } else {
    // Records that must not reach the client: rebuilt without them, then read again to find
    // the TTLs in the new layout. A rebuilt answer that would still drop something is not
    // what was scanned, and is refused rather than relayed.
    if (!rebuild_without(ans, len, first.drop, p.msg, strip)) {
      p.msg.clear();
      p.status = PrepareStatus::RebuildFailed;
      return p;
    }
    p.msg.shrink_to_fit();  // rebuild_without writes into a 64 KiB buffer
    p.scan = scan_answer(p.msg.data(), p.msg.size(), q.qname_lc, q.qname_len, o.allow_private,
                         o.max_addresses);
    if (!p.scan.ok || !p.scan.drop.empty() || (o.strip_ech && !p.scan.ech.empty())) {
      p.msg.clear();
      p.status = PrepareStatus::RebuildFailed;
      return p;
    }
  }
  // No client keeps a record longer than max-ttl: the set holds addresses that long (+grace).
  rewrite_ttls(p.msg.data(), p.scan.ttl_offsets, o.max_ttl, 0);
  for (VouchAddr& v : p.scan.vouch) v.ttl = std::min(v.ttl, o.max_ttl);
  p.status = PrepareStatus::Ok;
  return p;
}

void rewrite_ttls(uint8_t* msg, const std::vector<uint32_t>& offsets, uint32_t max_ttl,
                  uint32_t age) {
  for (uint32_t off : offsets) {
    uint32_t ttl = get32(msg + off);
    if (ttl & 0x80000000u) ttl = 0;
    ttl = std::min(ttl, max_ttl);
    put32(msg + off, ttl > age ? ttl - age : 0);
  }
}

namespace {
// RFC 3597 4: compression is allowed only in the RDATA of these RFC 1035 types; every other
// type's RDATA is copied byte for byte, pointers being forbidden there.
int compressed_names_in(uint16_t t, std::size_t& fixed_before, std::size_t& fixed_after) {
  fixed_before = fixed_after = 0;
  switch (t) {
    case 2: case 3: case 4: case 5: case 7: case 8: case 9: case 12:  // NS MD MF CNAME MB MG MR PTR
      return 1;
    case 6:  // SOA: mname, rname, five 32-bit numbers
      fixed_after = 20;
      return 2;
    case 14:  // MINFO
      return 2;
    case 15:  // MX: preference, exchange
      fixed_before = 2;
      return 1;
    default:
      return 0;
  }
}
}  // namespace

bool rebuild_without(const uint8_t* ans, std::size_t len, const std::vector<uint16_t>& drop,
                     std::vector<uint8_t>& out, const std::vector<uint16_t>& strip_ech) {
  // Every name is written uncompressed, so no pointer can refer to a record that is gone.
  if (len < kHeaderSize) return false;
  out.assign(kMaxMessage, 0);
  Writer w(out.data(), out.size());
  Reader r(ans, len, kHeaderSize);
  const uint16_t qd = get16(ans + 4), an = get16(ans + 6), ns = get16(ans + 8), ar = get16(ans + 10);
  w.bytes(ans, 4);
  w.u16(qd);
  w.u16(0);  // counts patched below
  w.u16(0);
  w.u16(0);
  uint8_t name[kMaxNameWire];
  std::size_t name_len = 0;
  for (uint16_t i = 0; i < qd; ++i) {
    uint16_t t, c;
    if (!read_name(r, name, &name_len) || !r.u16(t) || !r.u16(c)) return false;
    const std::size_t at = w.len();
    w.bytes(name, name_len);
    if (w.ok() && i == 0) std::memcpy(out.data() + at, ans + at, name_len);  // keep its case
    w.u16(t);
    w.u16(c);
  }
  uint16_t kept[2] = {0, 0};
  Rr rr;
  // Sorted once: a hostile answer can list thousands of records to drop.
  std::vector<uint16_t> dropped(drop);
  std::sort(dropped.begin(), dropped.end());
  for (uint32_t i = 0; i < uint32_t(an) + ns; ++i) {
    if (!read_rr(r, rr)) return false;
    if (std::binary_search(dropped.begin(), dropped.end(), uint16_t(i))) continue;
    ++kept[i < an ? 0 : 1];
    w.bytes(rr.owner, rr.owner_len);
    w.u16(rr.type);
    w.u16(rr.klass);
    w.u32(rr.ttl);
    if ((rr.type == type::SVCB || rr.type == type::HTTPS) &&
        std::find(strip_ech.begin(), strip_ech.end(), uint16_t(i)) != strip_ech.end()) {
      // Priority, target name (never compressed, RFC 9460 2.2; written out in full anyway),
      // then every parameter but ech, in the order given (which must be ascending).
      const std::size_t rdlen_at = w.len();
      w.u16(0);
      const std::size_t start = w.len();
      Reader d(ans, rr.rdata + rr.rdlen, rr.rdata);
      uint16_t prio;
      if (!d.u16(prio) || !read_name(d, name, &name_len)) return false;
      w.u16(prio);
      w.bytes(name, name_len);
      while (d.remaining() > 0) {
        uint16_t key, vlen;
        if (!d.u16(key) || !d.u16(vlen) || d.remaining() < vlen) return false;
        if (key != kSvcEch) {
          w.u16(key);
          w.u16(vlen);
          w.bytes(ans + d.pos(), vlen);
        }
        d.skip(vlen);
      }
      w.patch16(rdlen_at, uint16_t(w.len() - start));
      continue;
    }
    std::size_t before, after;
    const int names = compressed_names_in(rr.type, before, after);
    if (names == 0) {
      w.u16(uint16_t(rr.rdlen));
      w.bytes(ans + rr.rdata, rr.rdlen);
      continue;
    }
    const std::size_t rdlen_at = w.len();
    w.u16(0);
    const std::size_t start = w.len();
    Reader d(ans, rr.rdata + rr.rdlen, rr.rdata);
    if (!d.skip(before)) return false;
    w.bytes(ans + rr.rdata, before);
    for (int k = 0; k < names; ++k) {
      if (!read_name(d, name, &name_len)) return false;
      w.bytes(name, name_len);
    }
    if (d.remaining() != after) return false;
    w.bytes(ans + d.pos(), after);
    w.patch16(rdlen_at, uint16_t(w.len() - start));
  }
  // The additional section is never relayed, but its OPT carries the extended RCODE and
  // the upstream's EDE options: keep that record alone.
  uint16_t opt = 0;
  for (uint16_t i = 0; i < ar; ++i) {
    if (!read_rr(r, rr)) return false;
    if (rr.type == type::OPT && rr.owner_len == 1 && opt == 0) {
      w.u8(0);
      w.bytes(ans + rr.ttl_at - 4, 10 + rr.rdlen);  // type, class, TTL, RDLENGTH, RDATA
      opt = 1;
    }
  }
  if (!w.ok()) return false;
  put16(out.data() + 6, kept[0]);
  put16(out.data() + 8, kept[1]);
  put16(out.data() + 10, opt);
  out.resize(w.len());
  return true;
}

}  // namespace dnsward
