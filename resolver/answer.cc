#include "dnsward/answer.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>

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

AnswerScan scan_answer(const uint8_t* ans, std::size_t len, const uint8_t* qname_lc,
                       std::size_t qname_len, bool allow_private) {
  AnswerScan s;
  if (len < kHeaderSize) return s;
  s.rcode = get16(ans + 2) & flag::RCODE_MASK;
  const uint16_t qd = get16(ans + 4), an = get16(ans + 6), ns = get16(ans + 8);
  Reader r(ans, len, kHeaderSize);
  for (uint16_t i = 0; i < qd; ++i)
    if (!read_name(r) || !r.skip(4)) return s;

  std::vector<Rr> rrs(std::size_t(an) + ns);
  auto in_answer = [&](const Rr& rr) { return &rr < rrs.data() + an; };
  uint32_t min_answer_ttl = UINT32_MAX;
  int64_t negative_ttl = -1;
  for (Rr& rr : rrs) {
    if (!read_rr(r, rr)) return s;
    s.ttl_offsets.push_back(uint32_t(rr.ttl_at));
    // RFC 2181 8: a TTL with the top bit set is treated as zero.
    if (rr.ttl & 0x80000000u) rr.ttl = 0;
    if (in_answer(rr)) min_answer_ttl = std::min(min_answer_ttl, rr.ttl);
    if (!in_answer(rr) && rr.type == type::SOA && rr.rdlen >= 20)
      negative_ttl = std::min<int64_t>(rr.ttl, get32(ans + rr.rdata + rr.rdlen - 4));
  }

  // The CNAME chain from the query name, bounded, in the answer section only.
  std::vector<std::basic_string<uint8_t>> chain;
  chain.emplace_back(qname_lc, qname_len);
  for (int link = 0; link < kMaxChain; ++link) {
    const auto& tail = chain.back();
    bool advanced = false;
    for (const Rr& rr : rrs) {
      if (!in_answer(rr) || rr.type != type::CNAME) continue;
      if (rr.owner_len != tail.size() || std::memcmp(rr.owner, tail.data(), tail.size()) != 0)
        continue;
      Reader t(ans, rr.rdata + rr.rdlen, rr.rdata);
      uint8_t target[kMaxNameWire];
      std::size_t target_len = 0;
      if (!read_name(t, target, &target_len)) return s;
      if (std::find(chain.begin(), chain.end(),
                    std::basic_string<uint8_t>(target, target_len)) != chain.end())
        break;  // a CNAME loop: stop here
      chain.emplace_back(target, target_len);
      advanced = true;
      break;
    }
    if (!advanced) break;
  }
  auto on_chain = [&chain](const Rr& rr) {
    for (const auto& n : chain)
      if (n.size() == rr.owner_len && std::memcmp(n.data(), rr.owner, n.size()) == 0) return true;
    return false;
  };

  for (std::size_t i = 0; i < rrs.size(); ++i) {
    const Rr& rr = rrs[i];
    std::vector<IpAddr> addrs;
    if (rr.type == type::A || rr.type == type::AAAA) {
      const std::size_t want = rr.type == type::A ? 4 : 16;
      if (rr.rdlen != want) return s;
      addrs.push_back(rr.type == type::A ? IpAddr::v4(ans + rr.rdata) : IpAddr::v6(ans + rr.rdata));
    } else if (rr.type == type::SVCB || rr.type == type::HTTPS) {
      // RFC 9460 2.2: priority, target name, then key/length/value parameters. Hints are
      // addresses a client may connect to without an A/AAAA lookup: vouch or drop them.
      Reader p(ans, rr.rdata + rr.rdlen, rr.rdata);
      uint16_t prio;
      if (!p.u16(prio) || !read_name(p)) return s;
      while (p.remaining() > 0) {
        uint16_t key, vlen;
        if (!p.u16(key) || !p.u16(vlen) || p.remaining() < vlen) return s;
        const uint8_t* v = ans + p.pos();
        if (key == 4 /*ipv4hint*/ || key == 6 /*ipv6hint*/) {
          const std::size_t step = key == 4 ? 4 : 16;
          if (vlen % step != 0) return s;
          for (std::size_t k = 0; k < vlen; k += step)
            addrs.push_back(key == 4 ? IpAddr::v4(v + k) : IpAddr::v6(v + k));
        }
        p.skip(vlen);
      }
      if (addrs.empty()) continue;  // no hints: nothing to vouch, nothing to hide
    } else {
      continue;
    }
    if (!in_answer(rr) || !on_chain(rr)) {
      s.drop.push_back(uint16_t(i));
      continue;
    }
    const bool special = std::any_of(addrs.begin(), addrs.end(), is_special_purpose);
    if (special && !allow_private) {
      s.drop.push_back(uint16_t(i));
      ++s.dropped_special;
      continue;
    }
    for (const IpAddr& a : addrs) s.vouch.push_back({a, rr.ttl});
  }

  if (s.rcode == rcode::NOERROR && an > 0) s.cache_ttl = min_answer_ttl;
  else if (s.rcode == rcode::NXDOMAIN || (s.rcode == rcode::NOERROR && an == 0)) s.cache_ttl = negative_ttl;
  s.ok = true;
  return s;
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
                     std::vector<uint8_t>& out) {
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
  for (uint32_t i = 0; i < uint32_t(an) + ns; ++i) {
    if (!read_rr(r, rr)) return false;
    if (std::find(drop.begin(), drop.end(), uint16_t(i)) != drop.end()) continue;
    ++kept[i < an ? 0 : 1];
    w.bytes(rr.owner, rr.owner_len);
    w.u16(rr.type);
    w.u16(rr.klass);
    w.u32(rr.ttl);
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
