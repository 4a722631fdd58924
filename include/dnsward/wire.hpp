// Bounds-checked reading and writing of DNS wire format (RFC 1035 section 4).
// Every length read from a packet is treated as hostile: readers never move past the end,
// writers never past their capacity, and both report failure instead of throwing.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace dnsward::wire {

inline constexpr std::size_t kHeaderSize = 12;
inline constexpr std::size_t kMaxNameWire = 255;  // RFC 1035 2.3.4, including the root byte
inline constexpr std::size_t kMaxLabel = 63;
inline constexpr std::size_t kMaxMessage = 65535;

namespace type {
inline constexpr uint16_t A = 1, NS = 2, CNAME = 5, SOA = 6, PTR = 12, HINFO = 13, MX = 15,
                          TXT = 16, AAAA = 28, SRV = 33, NAPTR = 35, OPT = 41, DS = 43,
                          RRSIG = 46, NSEC = 47, DNSKEY = 48, NSEC3 = 50, TLSA = 52, SVCB = 64,
                          HTTPS = 65, TKEY = 249, TSIG = 250, IXFR = 251, AXFR = 252,
                          MAILB = 253, MAILA = 254, ANY = 255, CAA = 257;

/// The one table of RR type mnemonics (logs, `types=`, tests): a type's mnemonic, or null
/// if the table does not name it.
const char* mnemonic(uint16_t t);
/// A type as text: its mnemonic, else RFC 3597's generic "TYPEnnn" (e.g. "TYPE99").
std::string text(uint16_t t);
/// A mnemonic of the table or "TYPEnnn" (RFC 3597 5), either in any letter case, to its
/// number; false for anything else, and for type 0 (reserved, RFC 6895 3.1).
bool from_text(std::string_view s, uint16_t& t);
}  // namespace type
namespace klass {
inline constexpr uint16_t IN = 1, CH = 3, NONE = 254, ANY = 255;
}
namespace rcode {
inline constexpr uint16_t NOERROR = 0, FORMERR = 1, SERVFAIL = 2, NXDOMAIN = 3, NOTIMP = 4,
                          REFUSED = 5, BADVERS = 16;  // BADVERS needs the OPT's extended bits
}
namespace flag {  // bits of the second 16-bit header word
inline constexpr uint16_t QR = 0x8000, AA = 0x0400, TC = 0x0200, RD = 0x0100, RA = 0x0080,
                          AD = 0x0020, CD = 0x0010;
inline constexpr uint16_t OPCODE_MASK = 0x7800, RCODE_MASK = 0x000f;
}
namespace edns {
inline constexpr uint16_t OPT_EDE = 15;  // RFC 8914
/// "No Extended DNS Error": the default of every ede parameter. 65535 lies in the private
/// use range of INFO-CODEs (RFC 8914 5.2), so no standard code is shadowed by it.
inline constexpr uint16_t kNoEde = 0xffff;
inline constexpr uint16_t EDE_OTHER = 0, EDE_PROHIBITED = 18, EDE_BLOCKED = 15,
                          EDE_NOT_READY = 14, EDE_FILTERED = 17, EDE_NETWORK_ERROR = 23,
                          EDE_NO_REACHABLE_AUTHORITY = 22, EDE_NOT_SUPPORTED = 21;
}

inline uint16_t get16(const uint8_t* p) { return uint16_t(uint16_t(p[0]) << 8 | p[1]); }
inline uint32_t get32(const uint8_t* p) {
  return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3];
}
inline void put16(uint8_t* p, uint16_t v) { p[0] = uint8_t(v >> 8); p[1] = uint8_t(v); }
inline void put32(uint8_t* p, uint32_t v) {
  p[0] = uint8_t(v >> 24); p[1] = uint8_t(v >> 16); p[2] = uint8_t(v >> 8); p[3] = uint8_t(v);
}
inline uint8_t lower(uint8_t c) { return (c >= 'A' && c <= 'Z') ? uint8_t(c | 0x20) : c; }

/// Forward-only reader; every read checks the remaining length first.
class Reader {
 public:
  Reader(const uint8_t* data, std::size_t size, std::size_t pos = 0)
      : data_(data), size_(size), pos_(pos <= size ? pos : size) {}
  bool u8(uint8_t& v) { if (remaining() < 1) return false; v = data_[pos_++]; return true; }
  bool u16(uint16_t& v) { if (remaining() < 2) return false; v = get16(data_ + pos_); pos_ += 2; return true; }
  bool u32(uint32_t& v) { if (remaining() < 4) return false; v = get32(data_ + pos_); pos_ += 4; return true; }
  bool skip(std::size_t n) { if (remaining() < n) return false; pos_ += n; return true; }
  bool seek(std::size_t p) { if (p > size_) return false; pos_ = p; return true; }
  std::size_t remaining() const { return size_ - pos_; }
  std::size_t pos() const { return pos_; }
  const uint8_t* data() const { return data_; }
  std::size_t size() const { return size_; }

 private:
  const uint8_t* data_;
  std::size_t size_;
  std::size_t pos_;
};

/// Appends into a caller-owned buffer; once an append does not fit, ok() stays false.
class Writer {
 public:
  Writer(uint8_t* buf, std::size_t cap) : buf_(buf), cap_(cap) {}
  void u8(uint8_t v) { if (room(1)) buf_[len_++] = v; }
  void u16(uint16_t v) { if (room(2)) { put16(buf_ + len_, v); len_ += 2; } }
  void u32(uint32_t v) { if (room(4)) { put32(buf_ + len_, v); len_ += 4; } }
  void bytes(const void* p, std::size_t n) { if (room(n)) { std::memcpy(buf_ + len_, p, n); len_ += n; } }
  /// Writes a presentation-form name ("a.b.c", no escapes) as uncompressed wire format.
  void text_name(const char* name);
  void patch16(std::size_t at, uint16_t v) { if (ok_ && at + 2 <= len_) put16(buf_ + at, v); }
  std::size_t len() const { return len_; }
  bool ok() const { return ok_; }
  uint8_t* buf() const { return buf_; }

 private:
  bool room(std::size_t n) {
    if (!ok_ || cap_ - len_ < n) { ok_ = false; return false; }
    return true;
  }
  uint8_t* buf_;
  std::size_t cap_;
  std::size_t len_ = 0;
  bool ok_ = true;
};

/// Reads a possibly compressed name at r's position and advances r past it.
/// Pointers must point strictly backwards and at or after the header (so loops and
/// forward references are impossible); label types 0x40/0x80 are refused. When out is
/// given, the uncompressed lower-cased wire name (with its root byte) is written there and
/// its length to out_len. Returns false on any malformation.
bool read_name(Reader& r, uint8_t* out = nullptr, std::size_t* out_len = nullptr);

/// A resource record's fixed fields, as read_rr() found them.
struct Rr {
  uint8_t owner[kMaxNameWire];  ///< lower-cased, uncompressed, with root byte
  std::size_t owner_len = 0;
  uint16_t type = 0, klass = 0;
  uint32_t ttl = 0;
  std::size_t ttl_at = 0;  ///< offset of the TTL field, for rewriting it in place
  std::size_t rdata = 0, rdlen = 0;
};

/// Reads one resource record at r's position (owner, type, class, TTL, RDLENGTH) and moves
/// past its RDATA, which must lie within the message. The one place records are walked.
bool read_rr(Reader& r, Rr& rr);

/// Formats a wire name (uncompressed, with root byte) as text for logs and EDE texts:
/// "a.example.com", "." for the root, bytes outside [-_a-z0-9A-Z] escaped as \DDD.
std::string name_to_text(const uint8_t* wire, std::size_t len);
/// The same into buf (at most cap bytes, cut there); returns the length written. No heap.
std::size_t name_to_text(const uint8_t* wire, std::size_t len, char* buf, std::size_t cap);

}  // namespace dnsward::wire
