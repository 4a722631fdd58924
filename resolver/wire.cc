#include "dnsward/wire.hpp"

#include <fmt/format.h>

#include <charconv>

namespace dnsward::wire {

namespace type {
namespace {
struct Named {
  uint16_t code;
  const char* name;
};
// Sorted by number. Names from the IANA "Resource Record (RR) TYPEs" registry.
constexpr Named kTypes[] = {
    {A, "A"},         {NS, "NS"},         {CNAME, "CNAME"}, {SOA, "SOA"},     {PTR, "PTR"},
    {HINFO, "HINFO"}, {MX, "MX"},         {TXT, "TXT"},     {AAAA, "AAAA"},   {SRV, "SRV"},
    {NAPTR, "NAPTR"}, {OPT, "OPT"},       {DS, "DS"},       {RRSIG, "RRSIG"}, {NSEC, "NSEC"},
    {DNSKEY, "DNSKEY"}, {NSEC3, "NSEC3"}, {TLSA, "TLSA"},   {SVCB, "SVCB"},   {HTTPS, "HTTPS"},
    {TKEY, "TKEY"},   {TSIG, "TSIG"},     {IXFR, "IXFR"},   {AXFR, "AXFR"},   {MAILB, "MAILB"},
    {MAILA, "MAILA"}, {ANY, "ANY"},       {CAA, "CAA"},
};

bool iequal(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (lower(uint8_t(a[i])) != lower(uint8_t(b[i]))) return false;
  return true;
}
}  // namespace

const char* mnemonic(uint16_t t) {
  for (const auto& n : kTypes)
    if (n.code == t) return n.name;
  return nullptr;
}

std::string text(uint16_t t) {
  const char* n = mnemonic(t);
  return n ? std::string(n) : fmt::format("TYPE{}", t);
}

bool from_text(std::string_view s, uint16_t& t) {
  for (const auto& n : kTypes)
    if (iequal(s, n.name)) {
      t = n.code;
      return true;
    }
  if (s.size() < 5 || !iequal(s.substr(0, 4), "TYPE")) return false;
  const std::string_view digits = s.substr(4);
  unsigned v = 0;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
  // from_chars takes no sign or space, so only decimal digits get here; 0 is reserved.
  if (ec != std::errc() || end != digits.data() + digits.size() || v == 0 || v > 65535)
    return false;
  t = uint16_t(v);
  return true;
}
}  // namespace type

void Writer::text_name(const char* name) {
  // Callers pass fixed, known-good names ("dnsward.invalid"); "" or "." is the root.
  const char* p = name;
  while (*p) {
    const char* dot = std::strchr(p, '.');
    std::size_t n = dot ? std::size_t(dot - p) : std::strlen(p);
    if (n == 0 || n > kMaxLabel) { ok_ = false; return; }
    u8(uint8_t(n));
    bytes(p, n);
    if (!dot) break;
    p = dot + 1;
  }
  u8(0);
}

bool read_name(Reader& r, uint8_t* out, std::size_t* out_len) {
  const uint8_t* d = r.data();
  const std::size_t size = r.size();
  std::size_t pos = r.pos();
  std::size_t resume = 0;     // where the reader continues after a compressed name
  std::size_t limit = pos;    // every pointer must land strictly before this (RFC 1035
                              // 4.1.4: pointers refer to prior occurrences), which makes
                              // loops impossible: each jump lands earlier than the last
  std::size_t total = 0;
  for (;;) {
    if (pos >= size) return false;
    const uint8_t len = d[pos];
    if ((len & 0xC0) == 0xC0) {
      if (size - pos < 2) return false;
      const std::size_t target = std::size_t(len & 0x3F) << 8 | d[pos + 1];
      if (target < kHeaderSize || target >= limit || target >= pos) return false;
      if (resume == 0) resume = pos + 2;
      pos = limit = target;
      continue;
    }
    if (len & 0xC0) return false;  // 0x40 / 0x80 label types are obsolete (RFC 6891 5)
    if (total + 1u + len > kMaxNameWire) return false;
    if (len == 0) {
      if (out) out[total] = 0;
      ++total;
      ++pos;
      break;
    }
    if (size - pos - 1 < len) return false;
    if (out) {
      out[total] = len;
      for (std::size_t i = 0; i < len; ++i) out[total + 1 + i] = lower(d[pos + 1 + i]);
    }
    total += 1u + len;
    pos += 1u + len;
  }
  if (out_len) *out_len = total;
  return r.seek(resume ? resume : pos);
}

bool read_rr(Reader& r, Rr& rr) {
  uint16_t rdlen;
  if (!read_name(r, rr.owner, &rr.owner_len) || !r.u16(rr.type) || !r.u16(rr.klass)) return false;
  rr.ttl_at = r.pos();
  if (!r.u32(rr.ttl) || !r.u16(rdlen)) return false;
  rr.rdata = r.pos();
  rr.rdlen = rdlen;
  return r.skip(rdlen);
}

std::size_t name_to_text(const uint8_t* wire, std::size_t len, char* buf, std::size_t cap) {
  std::size_t n = 0;
  auto put = [&](char c) {
    if (n < cap) buf[n++] = c;
  };
  std::size_t i = 0;
  while (i < len && wire[i] != 0) {
    const std::size_t l = wire[i];
    if (i + 1 + l > len) break;
    if (i != 0) put('.');
    for (std::size_t k = 0; k < l; ++k) {
      const uint8_t c = wire[i + 1 + k];
      const bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                         (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '*';
      if (plain) {
        put(char(c));
      } else {  // RFC 1035 5.1: \DDD for bytes that are not plain
        put('\\');
        put(char('0' + c / 100));
        put(char('0' + c / 10 % 10));
        put(char('0' + c % 10));
      }
    }
    i += 1 + l;
  }
  if (n == 0) put('.');
  return n;
}

std::string name_to_text(const uint8_t* wire, std::size_t len) {
  char buf[4 * kMaxNameWire];
  return std::string(buf, name_to_text(wire, len, buf, sizeof buf));
}

}  // namespace dnsward::wire
