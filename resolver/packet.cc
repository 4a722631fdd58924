#include "dnsward/packet.hpp"

#include <algorithm>
#include <cstring>

namespace dnsward {
using namespace wire;

namespace {

constexpr std::size_t kOptFixed = 11;     // root owner, type, class, ttl, rdlength
constexpr std::size_t kMaxEdeText = 300;  // keep our own EDE texts well inside 512 bytes
constexpr std::size_t kMaxRelayedEde = 512;

// Flags of a reply we write ourselves: QR, the client's RD and CD copied (RFC 1035 4.1.1,
// RFC 4035 3.2.2), RA because we offer recursion through the upstream.
uint16_t reply_flags(const Query& q, uint16_t rcode, bool authoritative) {
  uint16_t f = flag::QR | flag::RA | (q.flags & (flag::RD | flag::CD)) | (rcode & 0x0f);
  if (authoritative) f |= flag::AA;
  return f;
}

void write_header(Writer& w, uint16_t id, uint16_t flags, uint16_t qd, uint16_t an,
                  uint16_t ns, uint16_t ar) {
  w.u16(id); w.u16(flags); w.u16(qd); w.u16(an); w.u16(ns); w.u16(ar);
}

void write_question(Writer& w, const Query& q) {
  w.bytes(q.qname, q.qname_len);  // as received: 0x20 letter case intact
  w.u16(q.qtype);
  w.u16(q.qclass);
}

// RFC 6891 6.1.3: the upper 8 bits of the extended RCODE travel in the OPT TTL; the DO bit
// of the query is copied into the response (RFC 3225 3).
void write_opt(Writer& w, const Query& q, const ReplyOptions& o, uint16_t rcode, uint16_t ede,
               std::string_view text) {
  w.u8(0);
  w.u16(type::OPT);
  w.u16(o.our_udp_size);
  w.u32(uint32_t((rcode >> 4) & 0xff) << 24 | (q.edns_do ? 0x8000u : 0u));
  if (ede == edns::kNoEde) {
    w.u16(0);
    return;
  }
  text = text.substr(0, kMaxEdeText);
  w.u16(uint16_t(4 + 2 + text.size()));
  w.u16(edns::OPT_EDE);
  w.u16(uint16_t(2 + text.size()));
  w.u16(ede);
  w.bytes(text.data(), text.size());
}

// The synthetic SOA owns the root: every name is below it, so caches accept it for the
// negative answer of any name (RFC 2308 3). .invalid names (RFC 6761 6.4) cannot collide.
void write_soa(Writer& w, const ReplyOptions& o) {
  w.u8(0);
  w.u16(type::SOA);
  w.u16(klass::IN);
  w.u32(o.negative_ttl);
  const std::size_t rdlen_at = w.len();
  w.u16(0);
  const std::size_t start = w.len();
  w.text_name("dnsward.invalid");
  w.text_name("hostmaster.dnsward.invalid");
  w.u32(1);       // serial
  w.u32(3600);    // refresh
  w.u32(600);     // retry
  w.u32(86400);   // expire
  w.u32(o.negative_ttl);  // minimum: the negative TTL (RFC 2308 4)
  w.patch16(rdlen_at, uint16_t(w.len() - start));
}

std::size_t finish(const Writer& w) { return w.ok() ? w.len() : 0; }

}  // namespace

std::size_t Query::udp_limit(std::size_t our_max) const {
  if (!has_edns) return 512;
  return std::min<std::size_t>(std::max<std::size_t>(edns_udp_size, 512), our_max);
}

ParseStatus parse_query(const uint8_t* pkt, std::size_t len, Query& q) {
  if (len < kHeaderSize) return ParseStatus::Drop;
  q.id = get16(pkt);
  q.flags = get16(pkt + 2);
  if (q.flags & flag::QR) return ParseStatus::Drop;  // answering a response invites loops
  if ((q.flags & flag::OPCODE_MASK) != 0) return ParseStatus::NotImp;
  const uint16_t qd = get16(pkt + 4), an = get16(pkt + 6), ns = get16(pkt + 8),
                 ar = get16(pkt + 10);
  if (qd != 1 || an != 0 || ns != 0) return ParseStatus::FormErr;

  // The question name is read without following pointers: in a query it is the first name,
  // and a pointer could only refer to the header or to itself (RFC 1035 4.1.4).
  Reader r(pkt, len, kHeaderSize);
  std::size_t n = 0;
  for (;;) {
    uint8_t l;
    if (!r.u8(l)) return ParseStatus::FormErr;
    if (l & 0xC0) return ParseStatus::FormErr;
    if (n + 1u + l > kMaxNameWire) return ParseStatus::FormErr;
    q.qname[n] = q.qname_lc[n] = l;
    ++n;
    if (l == 0) break;
    if (r.remaining() < l) return ParseStatus::FormErr;
    const uint8_t* src = pkt + r.pos();
    for (std::size_t i = 0; i < l; ++i) {
      q.qname[n + i] = src[i];
      q.qname_lc[n + i] = lower(src[i]);
    }
    n += l;
    r.skip(l);
  }
  q.qname_len = n;
  if (!r.u16(q.qtype) || !r.u16(q.qclass)) return ParseStatus::FormErr;

  q.has_edns = false;
  Rr rr;
  for (uint16_t i = 0; i < ar; ++i) {
    // Other records (a TSIG, say) are checked for shape, never forwarded.
    if (!read_rr(r, rr)) return ParseStatus::FormErr;
    if (rr.type == type::OPT) {
      // RFC 6891 6.1.1: one OPT at most, owned by the root.
      if (q.has_edns || rr.owner_len != 1) return ParseStatus::FormErr;
      Reader opts(pkt, rr.rdata + rr.rdlen, rr.rdata);
      while (opts.remaining() > 0) {
        uint16_t code, olen;
        if (!opts.u16(code) || !opts.u16(olen) || !opts.skip(olen)) return ParseStatus::FormErr;
      }
      q.has_edns = true;
      q.edns_udp_size = rr.klass;
      q.edns_version = uint8_t(rr.ttl >> 16);
      q.edns_do = (rr.ttl & 0x8000) != 0;
    }
  }
  if (r.remaining() != 0) return ParseStatus::FormErr;  // trailing garbage
  return ParseStatus::Ok;
}

std::size_t build_header_error(const uint8_t* pkt, std::size_t len, uint16_t rcode,
                               uint8_t* out, std::size_t cap) {
  if (len < 4) return 0;
  Writer w(out, cap);
  const uint16_t f = get16(pkt + 2);
  write_header(w, get16(pkt),
               uint16_t(flag::QR | (f & (flag::OPCODE_MASK | flag::RD)) | (rcode & 0x0f)), 0,
               0, 0, 0);
  return finish(w);
}

std::size_t build_rcode(const Query& q, uint16_t rcode, const ReplyOptions& o, uint8_t* out,
                        std::size_t cap, uint16_t ede, std::string_view ede_text) {
  Writer w(out, cap);
  write_header(w, q.id, reply_flags(q, rcode, false), 1, 0, 0, q.has_edns ? 1 : 0);
  write_question(w, q);
  if (q.has_edns) write_opt(w, q, o, rcode, ede, ede_text);
  return finish(w);
}

std::size_t build_negative(const Query& q, uint16_t rcode, const ReplyOptions& o, uint8_t* out,
                           std::size_t cap, uint16_t ede, std::string_view ede_text) {
  Writer w(out, cap);
  write_header(w, q.id, reply_flags(q, rcode, true), 1, 0, 1, q.has_edns ? 1 : 0);
  write_question(w, q);
  write_soa(w, o);
  if (q.has_edns) write_opt(w, q, o, rcode, ede, ede_text);
  return finish(w);
}

bool is_localhost(const uint8_t* name_lc, std::size_t len) {
  static constexpr uint8_t kLocalhost[] = {9, 'l', 'o', 'c', 'a', 'l', 'h', 'o', 's', 't', 0};
  constexpr std::size_t n = sizeof kLocalhost;
  if (len < n) return false;
  std::size_t i = 0;  // the suffix must start on a label boundary
  while (i < len - n) i += 1u + name_lc[i];
  return i == len - n && std::memcmp(name_lc + i, kLocalhost, n) == 0;
}

std::size_t build_localhost(const Query& q, const ReplyOptions& o, uint8_t* out,
                            std::size_t cap) {
  const bool a = q.qtype == type::A, aaaa = q.qtype == type::AAAA;
  if (!a && !aaaa) return build_negative(q, rcode::NOERROR, o, out, cap);
  Writer w(out, cap);
  write_header(w, q.id, reply_flags(q, rcode::NOERROR, true), 1, 1, 0, q.has_edns ? 1 : 0);
  write_question(w, q);
  w.u16(0xC000 | kHeaderSize);  // owner: pointer to the question name
  w.u16(q.qtype);
  w.u16(klass::IN);
  w.u32(86400);
  if (a) {
    static constexpr uint8_t lo4[4] = {127, 0, 0, 1};
    w.u16(4);
    w.bytes(lo4, 4);
  } else {
    static constexpr uint8_t lo6[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    w.u16(16);
    w.bytes(lo6, 16);
  }
  if (q.has_edns) write_opt(w, q, o, rcode::NOERROR, edns::kNoEde, {});
  return finish(w);
}

std::size_t build_txt(const Query& q, const std::vector<std::string>& lines,
                      const ReplyOptions& o, uint8_t* out, std::size_t cap) {
  Writer w(out, cap);
  write_header(w, q.id, reply_flags(q, rcode::NOERROR, true), 1, uint16_t(lines.size()), 0,
               q.has_edns ? 1 : 0);
  write_question(w, q);
  for (const auto& line : lines) {
    w.u16(0xC000 | kHeaderSize);
    w.u16(type::TXT);
    w.u16(q.qclass);
    w.u32(0);
    const std::size_t rdlen_at = w.len();
    w.u16(0);
    const std::size_t start = w.len();
    std::string_view rest = line;
    do {  // RFC 1035 3.3.14: character-strings of at most 255 bytes
      const std::string_view part = rest.substr(0, 255);
      w.u8(uint8_t(part.size()));
      w.bytes(part.data(), part.size());
      rest.remove_prefix(part.size());
    } while (!rest.empty());
    w.patch16(rdlen_at, uint16_t(w.len() - start));
  }
  if (q.has_edns) write_opt(w, q, o, rcode::NOERROR, edns::kNoEde, {});
  return finish(w);
}

std::size_t build_any_hinfo(const Query& q, const ReplyOptions& o, uint8_t* out,
                            std::size_t cap) {
  Writer w(out, cap);
  write_header(w, q.id, reply_flags(q, rcode::NOERROR, false), 1, 1, 0, q.has_edns ? 1 : 0);
  write_question(w, q);
  w.u16(0xC000 | kHeaderSize);
  w.u16(type::HINFO);
  w.u16(q.qclass);
  w.u32(3600);
  w.u16(9);  // two character-strings: "RFC8482" and ""
  w.u8(7);
  w.bytes("RFC8482", 7);
  w.u8(0);
  if (q.has_edns) write_opt(w, q, o, rcode::NOERROR, edns::kNoEde, {});
  return finish(w);
}

std::size_t build_upstream_query(const Query& q, uint16_t upstream_id, uint16_t payload,
                                 uint8_t* out, std::size_t cap, bool with_opt,
                                 const uint8_t* qname_sent) {
  Writer w(out, cap);
  write_header(w, upstream_id, q.flags & (flag::RD | flag::CD | flag::AD), 1, 0, 0,
               with_opt ? 1 : 0);
  if (qname_sent) {
    w.bytes(qname_sent, q.qname_len);
    w.u16(q.qtype);
    w.u16(q.qclass);
  } else {
    write_question(w, q);
  }
  if (with_opt) {
    w.u8(0);
    w.u16(type::OPT);
    w.u16(payload);
    w.u32(q.edns_do ? 0x8000u : 0u);
    w.u16(0);
  }
  return finish(w);
}

void randomize_case(const uint8_t* name, std::size_t len, const uint8_t* random, uint8_t* out) {
  std::size_t i = 0;
  while (i < len) {
    const std::size_t l = name[i];
    out[i] = name[i];  // a length byte
    if (l == 0 || i + 1 + l > len) {
      std::memcpy(out + i + 1, name + i + 1, len - i - 1);
      return;
    }
    for (std::size_t k = i + 1; k <= i + l; ++k) {
      const uint8_t c = name[k];
      const bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
      out[k] = letter ? uint8_t((random[k] & 1) ? (c & ~0x20) : (c | 0x20)) : c;
    }
    i += 1 + l;
  }
}

bool question_case_matches(const uint8_t* ans, std::size_t len, const uint8_t* qname_sent,
                           std::size_t qname_len) {
  if (len < kHeaderSize || get16(ans + 4) == 0) return true;
  return len >= kHeaderSize + qname_len && std::memcmp(ans + kHeaderSize, qname_sent, qname_len) == 0;
}

bool is_edns_formerr(const uint8_t* ans, std::size_t len) {
  if (len < kHeaderSize || (get16(ans + 2) & flag::RCODE_MASK) != rcode::FORMERR) return false;
  Reader r(ans, len, kHeaderSize);
  const uint32_t records = uint32_t(get16(ans + 6)) + get16(ans + 8) + get16(ans + 10);
  for (uint16_t i = 0; i < get16(ans + 4); ++i)
    if (!read_name(r) || !r.skip(4)) return true;
  Rr rr;
  for (uint32_t i = 0; i < records; ++i) {
    if (!read_rr(r, rr)) return true;  // unreadable after the header: no OPT we could see
    if (rr.type == type::OPT) return false;
  }
  return true;
}

RelayStatus check_answer(const Query& q, uint16_t upstream_id, const uint8_t* ans,
                         std::size_t ans_len) {
  if (ans_len < kHeaderSize) return RelayStatus::Malformed;
  const uint16_t uflags = get16(ans + 2);
  if (get16(ans) != upstream_id || !(uflags & flag::QR)) return RelayStatus::Mismatch;
  const uint16_t qd = get16(ans + 4), an = get16(ans + 6), ns = get16(ans + 8);
  if (qd == 0) return an == 0 && ns == 0 ? RelayStatus::Ok : RelayStatus::Malformed;
  if (qd != 1) return RelayStatus::Malformed;
  Reader r(ans, ans_len, kHeaderSize);
  uint8_t name[kMaxNameWire];
  std::size_t name_len = 0;
  uint16_t qtype, qclass;
  if (!read_name(r, name, &name_len) || !r.u16(qtype) || !r.u16(qclass))
    return RelayStatus::Malformed;
  // read_name refuses a compressed first name, so an equal name has our question's length
  // and every compression pointer in the answer stays valid once our bytes replace it.
  if (name_len != q.qname_len || std::memcmp(name, q.qname_lc, name_len) != 0 ||
      qtype != q.qtype || qclass != q.qclass || r.pos() != kHeaderSize + q.qname_len + 4)
    return RelayStatus::Mismatch;
  return RelayStatus::Ok;
}

RelayStatus relay_answer(const Query& q, uint16_t upstream_id, const uint8_t* ans,
                         std::size_t ans_len, std::size_t limit, const ReplyOptions& o,
                         uint8_t* out, std::size_t cap, std::size_t& out_len,
                         uint16_t extra_ede, std::string_view extra_text) {
  out_len = 0;
  const RelayStatus checked = check_answer(q, upstream_id, ans, ans_len);
  if (checked != RelayStatus::Ok) return checked;
  return relay_checked_answer(q, ans, ans_len, limit, o, out, cap, out_len, extra_ede, extra_text);
}

RelayStatus relay_checked_answer(const Query& q, const uint8_t* ans, std::size_t ans_len,
                                 std::size_t limit, const ReplyOptions& o, uint8_t* out,
                                 std::size_t cap, std::size_t& out_len, uint16_t extra_ede,
                                 std::string_view extra_text) {
  out_len = 0;
  // The walk below relies on check_answer's structure (one question, ours, uncompressed);
  // that much is re-checked here, cheaply, so this function is safe on any input. Only the
  // ID is not: a cached answer has none to compare.
  if (ans_len < kHeaderSize) return RelayStatus::Malformed;
  if (check_answer(q, get16(ans), ans, ans_len) != RelayStatus::Ok) return RelayStatus::Malformed;
  const uint16_t uflags = get16(ans + 2);
  const uint16_t qd = get16(ans + 4), an = get16(ans + 6), ns = get16(ans + 8),
                 ar = get16(ans + 10);
  if (qd == 0) {
    // Some servers omit the question in errors (FORMERR, REFUSED): relay the RCODE alone.
    const std::size_t n = build_rcode(q, uflags & 0x0f, o, out, cap);
    out_len = n;
    return n ? RelayStatus::Ok : RelayStatus::Malformed;
  }
  Reader r(ans, ans_len, kHeaderSize + q.qname_len + 4);
  const std::size_t question_end = r.pos();

  Rr rr;
  for (uint32_t i = 0; i < uint32_t(an) + ns; ++i)
    if (!read_rr(r, rr)) return RelayStatus::Malformed;
  const std::size_t sections_end = r.pos();

  // The additional section is never relayed: it is optional (RFC 2181 9 lets us omit it
  // without TC) and its addresses (glue) would reach the client without being vouched for.
  // Only the upstream's OPT is read from it, for the extended RCODE and EDE options.
  uint8_t ext_rcode = 0;
  std::size_t opt_rdata = 0, opt_rdlen = 0;
  for (uint16_t i = 0; i < ar; ++i) {
    if (!read_rr(r, rr)) return RelayStatus::Malformed;
    if (rr.type == type::OPT) {
      if (rr.owner_len != 1) return RelayStatus::Malformed;
      ext_rcode = uint8_t(rr.ttl >> 24);
      opt_rdata = rr.rdata;
      opt_rdlen = rr.rdlen;
      break;
    }
  }
  const uint16_t full_rcode = uint16_t(ext_rcode) << 4 | (uflags & 0x0f);
  if (ext_rcode != 0 && !q.has_edns) return RelayStatus::Unrelayable;

  // The upstream's Extended DNS Errors are relayed (they explain its SERVFAILs); cookies,
  // padding and other hop-by-hop options are not.
  std::size_t ede_bytes = 0;
  uint8_t ede_buf[kMaxRelayedEde];
  if (q.has_edns && opt_rdlen > 0) {
    Reader opts(ans, opt_rdata + opt_rdlen, opt_rdata);
    uint16_t code, olen;
    while (opts.u16(code) && opts.u16(olen) && opts.remaining() >= olen) {
      if (code == edns::OPT_EDE && olen >= 2 && ede_bytes + 4u + olen <= sizeof ede_buf) {
        put16(ede_buf + ede_bytes, code);
        put16(ede_buf + ede_bytes + 2, olen);
        std::memcpy(ede_buf + ede_bytes + 4, ans + opts.pos(), olen);
        ede_bytes += 4u + olen;
      }
      opts.skip(olen);
    }
  }
  if (q.has_edns && extra_ede != edns::kNoEde) {
    extra_text = extra_text.substr(0, kMaxEdeText);
    if (ede_bytes + 6 + extra_text.size() <= sizeof ede_buf) {
      put16(ede_buf + ede_bytes, edns::OPT_EDE);
      put16(ede_buf + ede_bytes + 2, uint16_t(2 + extra_text.size()));
      put16(ede_buf + ede_bytes + 4, extra_ede);
      std::memcpy(ede_buf + ede_bytes + 6, extra_text.data(), extra_text.size());
      ede_bytes += 6 + extra_text.size();
    }
  }
  const std::size_t opt_size = q.has_edns ? kOptFixed + ede_bytes : 0;

  const bool truncate = sections_end + opt_size > limit;

  Writer w(out, cap);
  // RD is the client's; RA is set because dnsward offers recursion through its upstream
  // even when that upstream is an authoritative server; AA is cleared because dnsward is
  // not the authority for what it relays (and will serve it from its cache).
  uint16_t f = uint16_t((uflags & ~(flag::RD | flag::OPCODE_MASK | flag::AA | flag::TC)) |
                        (q.flags & flag::RD) | flag::RA);
  if ((uflags & flag::TC) || truncate) f |= flag::TC;  // RFC 2181 9: records did not fit
  const uint16_t opt_count = q.has_edns ? 1 : 0;
  if (truncate) write_header(w, q.id, f, 1, 0, 0, opt_count);
  else write_header(w, q.id, f, 1, an, ns, opt_count);
  write_question(w, q);
  if (!truncate) w.bytes(ans + question_end, sections_end - question_end);
  if (q.has_edns) {
    w.u8(0);
    w.u16(type::OPT);
    w.u16(o.our_udp_size);
    w.u32(uint32_t(full_rcode >> 4) << 24 | (q.edns_do ? 0x8000u : 0u));
    w.u16(uint16_t(ede_bytes));
    w.bytes(ede_buf, ede_bytes);
  }
  if (!w.ok()) return RelayStatus::Malformed;
  out_len = w.len();
  return RelayStatus::Ok;
}

}  // namespace dnsward
