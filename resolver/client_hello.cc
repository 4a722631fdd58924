// First-flight parsers: the TLS ClientHello (RFC 8446 4.1.2 over records of RFC 8446 5.1)
// and a plain HTTP/1.x request head (RFC 9112). Every length comes from the network: each
// one is checked against what is really there before anything is read.
#include "dnsward/client_hello.hpp"

#include <array>
#include <cstring>

namespace dnsward {

namespace {

// TLS constants (RFC 8446 4, 4.2; RFC 6066 3; RFC 7301 3.1; draft-ietf-tls-esni 6.1).
constexpr uint8_t kContentHandshake = 22;  // RFC 8446 5.1 ContentType.handshake
constexpr uint8_t kHandshakeClientHello = 1;
constexpr std::size_t kRecordHeader = 5;
constexpr std::size_t kMaxFragment = 16384;  // RFC 8446 5.1: length MUST NOT exceed 2^14
constexpr uint16_t kExtServerName = 0;
constexpr uint16_t kExtAlpn = 16;
constexpr uint16_t kExtPreSharedKey = 41;
constexpr uint16_t kExtEarlyData = 42;
constexpr uint16_t kExtSupportedVersions = 43;
constexpr uint16_t kExtEch = 0xfe0d;
constexpr std::size_t kMaxHostName = 255;
// Extensions in one ClientHello: our bound (real clients send about 20), so the duplicate
// check below is over a fixed array.
constexpr std::size_t kMaxExtensions = 64;

// The handshake stream: the fragments of up to kMaxClientHelloRecords records, read as one
// byte sequence (RFC 8446 5.1: a handshake message may span records). Reads are bounded by
// `end`, a logical offset the caller narrows to the vector or message being parsed.
class HsCursor {
 public:
  HsCursor(const std::array<const uint8_t*, kMaxClientHelloRecords>& frag,
           const std::array<std::size_t, kMaxClientHelloRecords>& frag_len, std::size_t nfrag,
           std::size_t end)
      : frag_(frag), frag_len_(frag_len), nfrag_(nfrag), end_(end) {}

  std::size_t pos() const { return pos_; }
  std::size_t left() const { return end_ - pos_; }
  std::size_t end() const { return end_; }
  void set_end(std::size_t e) { end_ = e; }

  bool u8(uint8_t& v) {
    if (left() < 1) return false;
    v = at(pos_++);
    return true;
  }
  bool u16(uint16_t& v) {
    uint8_t a = 0, b = 0;
    if (left() < 2) return false;
    u8(a);
    u8(b);
    v = uint16_t((a << 8) | b);
    return true;
  }
  bool u24(uint32_t& v) {
    uint8_t a = 0, b = 0, c = 0;
    if (left() < 3) return false;
    u8(a);
    u8(b);
    u8(c);
    v = (uint32_t(a) << 16) | (uint32_t(b) << 8) | c;
    return true;
  }
  bool skip(std::size_t n) {
    if (left() < n) return false;
    pos_ += n;
    return true;
  }

 private:
  // The caller guarantees i < the sum of the fragment lengths (end_ never exceeds it).
  uint8_t at(std::size_t i) const {
    for (std::size_t f = 0; f < nfrag_; ++f) {
      if (i < frag_len_[f]) return frag_[f][i];
      i -= frag_len_[f];
    }
    return 0;  // unreachable while end_ <= total
  }

  const std::array<const uint8_t*, kMaxClientHelloRecords>& frag_;
  const std::array<std::size_t, kMaxClientHelloRecords>& frag_len_;
  std::size_t nfrag_;
  std::size_t end_;
  std::size_t pos_ = 0;
};

ClientHelloResult status(FlightStatus s) {
  ClientHelloResult r;
  r.status = s;
  return r;
}

ClientHelloResult need_more(std::size_t n) {
  ClientHelloResult r;
  r.status = FlightStatus::NeedMore;
  r.need = n == 0 ? 1 : n;
  return r;
}

// A record header's version: RFC 8446 5.1 has legacy_record_version 0x0303, or 0x0301 for an
// initial ClientHello "for compatibility purposes"; SSL 3.0 to TLS 1.2 stacks write 0x0300 to
// 0x0303. Anything but major 3 and minor 0..4 is another protocol.
bool plausible_record_version(uint8_t major, uint8_t minor) { return major == 3 && minor <= 4; }

bool host_char(uint8_t c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '.';
}

char lower(uint8_t c) { return (c >= 'A' && c <= 'Z') ? char(c - 'A' + 'a') : char(c); }

// RFC 6066 3: HostName is a DNS hostname in ASCII, "without a trailing dot". We also refuse
// empty labels and anything outside letters, digits, '-' and '.' (no '_', no IDN in UTF-8, no
// IPv6 literal): the names it is compared with are DNS names, so nothing else can match, and
// a name the guard cannot compare byte for byte is one it must not pass.
bool valid_host(const std::string& h) {
  if (h.empty() || h.size() > kMaxHostName) return false;
  if (h.front() == '.' || h.back() == '.') return false;
  for (std::size_t i = 0; i < h.size(); ++i) {
    if (!host_char(uint8_t(h[i]))) return false;
    if (h[i] == '.' && i + 1 < h.size() && h[i + 1] == '.') return false;
  }
  return true;
}

// RFC 6066 3 server_name: ServerNameList server_name_list<1..2^16-1>, each entry
// NameType name_type; select (name_type) { case host_name: HostName; } with
// HostName<1..2^16-1>. "The ServerNameList MUST NOT contain more than one name of the same
// name_type." Only host_name (0) was ever defined, and an entry of an unknown type has no
// known length, so (like OpenSSL's tls_parse_ctos_server_name) the list must hold exactly one
// entry, a host_name: anything else is Malformed, never "no SNI".
FlightStatus parse_server_name(HsCursor& c, ClientHelloResult& r) {
  uint16_t list_len = 0;
  if (!c.u16(list_len) || list_len != c.left() || list_len == 0) return FlightStatus::Malformed;
  uint8_t type = 0;
  uint16_t name_len = 0;
  if (!c.u8(type) || type != 0) return FlightStatus::Malformed;
  if (!c.u16(name_len) || name_len != c.left()) return FlightStatus::Malformed;  // one entry
  if (name_len == 0 || name_len > kMaxHostName) return FlightStatus::Malformed;
  std::string name;
  name.reserve(name_len);
  for (uint16_t i = 0; i < name_len; ++i) {
    uint8_t b = 0;
    c.u8(b);  // name_len == c.left(): cannot fail
    if (!host_char(b)) return FlightStatus::Malformed;
    name.push_back(lower(b));
  }
  if (!valid_host(name)) return FlightStatus::Malformed;
  r.has_sni = true;
  r.sni = std::move(name);
  return FlightStatus::Complete;
}

// RFC 7301 3.1: ProtocolName<1..2^8-1>; ProtocolNameList protocol_name_list<2..2^16-1>.
// "Empty strings MUST NOT be included and byte strings MUST NOT be truncated." We keep at most
// kMaxAlpnProtocols names (our bound, not the RFC's): more is TooLarge.
FlightStatus parse_alpn(HsCursor& c, ClientHelloResult& r) {
  uint16_t list_len = 0;
  if (!c.u16(list_len) || list_len != c.left() || list_len < 2) return FlightStatus::Malformed;
  while (c.left() > 0) {
    uint8_t n = 0;
    if (!c.u8(n) || n == 0 || n > c.left()) return FlightStatus::Malformed;
    if (r.alpn.size() == kMaxAlpnProtocols) return FlightStatus::TooLarge;
    std::string p;
    p.reserve(n);
    for (uint8_t i = 0; i < n; ++i) {
      uint8_t b = 0;
      c.u8(b);
      p.push_back(char(b));
    }
    r.alpn.push_back(std::move(p));
  }
  return FlightStatus::Complete;
}

// RFC 8446 4.2.1: in a ClientHello, ProtocolVersion versions<2..254> (so an even length).
FlightStatus parse_supported_versions(HsCursor& c, ClientHelloResult& r) {
  uint8_t n = 0;
  if (!c.u8(n) || n != c.left() || n < 2 || n % 2 != 0) return FlightStatus::Malformed;
  while (c.left() > 0) {
    uint16_t v = 0;
    c.u16(v);
    if (v == 0x0304) r.offers_tls13 = true;  // GREASE values (RFC 8701) are simply skipped
  }
  return FlightStatus::Complete;
}

// RFC 8446 4.1.2: the ClientHello body, from legacy_version to the end of extensions.
FlightStatus parse_body(HsCursor& c, ClientHelloResult& r) {
  // legacy_version: 0x0303 from TLS 1.3 clients ("MUST be set to 0x0303"); a TLS 1.0..1.2
  // client writes its highest version there. Major must be 3.
  if (!c.u16(r.legacy_version) || (r.legacy_version >> 8) != 3) return FlightStatus::Malformed;
  if (!c.skip(32)) return FlightStatus::Malformed;  // Random random
  // opaque legacy_session_id<0..32>
  uint8_t sid_len = 0;
  if (!c.u8(sid_len) || sid_len > 32 || !c.skip(sid_len)) return FlightStatus::Malformed;
  // CipherSuite cipher_suites<2..2^16-2>: two-byte suites, at least one.
  uint16_t cs_len = 0;
  if (!c.u16(cs_len) || cs_len < 2 || cs_len % 2 != 0 || !c.skip(cs_len))
    return FlightStatus::Malformed;
  // opaque legacy_compression_methods<1..2^8-1>
  uint8_t cm_len = 0;
  if (!c.u8(cm_len) || cm_len < 1 || !c.skip(cm_len)) return FlightStatus::Malformed;
  // Extension extensions<8..2^16-1> (RFC 8446); a TLS 1.2 ClientHello may omit the field
  // entirely (RFC 5246 7.4.1.2), which means no extensions and so no SNI.
  if (c.left() == 0) return FlightStatus::Complete;
  uint16_t ext_total = 0;
  if (!c.u16(ext_total) || ext_total != c.left()) return FlightStatus::Malformed;
  const std::size_t body_end = c.end();
  std::array<uint16_t, kMaxExtensions> seen{};
  std::size_t nseen = 0;
  bool seen_psk = false;
  while (c.left() > 0) {
    uint16_t type = 0, len = 0;
    if (!c.u16(type) || !c.u16(len) || len > c.left()) return FlightStatus::Malformed;
    // RFC 8446 4.2: "There MUST NOT be more than one extension of the same type in a given
    // extension block." A second server_name could be the one a server honours; for the
    // others, a duplicate means the lengths were not what the client meant.
    for (std::size_t i = 0; i < nseen; ++i)
      if (seen[i] == type) return FlightStatus::Malformed;
    if (nseen == kMaxExtensions) return FlightStatus::TooLarge;
    seen[nseen++] = type;
    // RFC 8446 4.2.11: pre_shared_key "MUST be the last extension in the ClientHello".
    if (seen_psk) return FlightStatus::Malformed;
    const std::size_t ext_end = c.pos() + len;
    c.set_end(ext_end);
    FlightStatus s = FlightStatus::Complete;
    switch (type) {
      case kExtServerName:
        s = parse_server_name(c, r);
        break;
      case kExtAlpn:
        s = parse_alpn(c, r);
        break;
      case kExtSupportedVersions:
        s = parse_supported_versions(c, r);
        break;
      case kExtEarlyData:
        // RFC 8446 4.2.10: in a ClientHello, extension_data is empty.
        if (len != 0) return FlightStatus::Malformed;
        r.has_early_data = true;
        break;
      case kExtEch:
        // draft-ietf-tls-esni 5: the outer ClientHello carries encrypted_client_hello; its
        // server_name is the public name, and that outer name is what the guard judges.
        r.has_ech = true;
        break;
      case kExtPreSharedKey:
        seen_psk = true;
        break;
      default:
        break;
    }
    if (s != FlightStatus::Complete) return s;
    c.set_end(body_end);
    if (c.pos() > ext_end || !c.skip(ext_end - c.pos())) return FlightStatus::Malformed;
  }
  return FlightStatus::Complete;
}

}  // namespace

ClientHelloResult parse_client_hello(const uint8_t* data, std::size_t len) {
  std::array<const uint8_t*, kMaxClientHelloRecords> frag{};
  std::array<std::size_t, kMaxClientHelloRecords> frag_len{};
  std::size_t nfrag = 0;
  std::size_t hs_have = 0;  // handshake bytes in complete records
  std::size_t hs_need = 0;  // 4 + the ClientHello's length, once its header is in
  std::size_t pos = 0;
  while (hs_need == 0 || hs_have < hs_need) {
    const std::size_t rest = len - pos;  // received bytes not yet in a complete record
    // Record header (RFC 8446 5.1): ContentType type; ProtocolVersion legacy_record_version;
    // uint16 length. Check what has arrived of it, byte by byte, so a prefix is judged the
    // same as the whole.
    if (rest >= 1 && data[pos] != kContentHandshake) {
      // The first byte of the connection decides whether this is TLS at all; after that,
      // RFC 8446 5.1: "Handshake messages MUST NOT be interleaved with other record types."
      return status(nfrag == 0 ? FlightStatus::NotTls : FlightStatus::Malformed);
    }
    if (rest >= 3 && !plausible_record_version(data[pos + 1], data[pos + 2]))
      return status(nfrag == 0 ? FlightStatus::NotTls : FlightStatus::Malformed);
    if (rest >= 2 && data[pos + 1] != 3)
      return status(nfrag == 0 ? FlightStatus::NotTls : FlightStatus::Malformed);
    // A ninth record before the ClientHello ends: no real client splits it this finely.
    if (nfrag == kMaxClientHelloRecords) return status(FlightStatus::TooLarge);
    // Handshake bytes known to be missing beyond this record (each further record costs a
    // header too): `need` is a lower bound, never more than the whole message still needs.
    std::size_t after = 0;
    if (rest < kRecordHeader) {
      if (hs_need > hs_have) after = hs_need - hs_have;
      return need_more(kRecordHeader - rest + (after > 0 ? after : 1));
    }
    const std::size_t rec_len = (std::size_t(data[pos + 3]) << 8) | data[pos + 4];
    // RFC 8446 5.1: "Implementations MUST NOT send zero-length fragments of Handshake types",
    // and a fragment over 2^14 bytes is a record_overflow.
    if (rec_len == 0 || rec_len > kMaxFragment) return status(FlightStatus::Malformed);
    const std::size_t have = rest - kRecordHeader;
    if (have < rec_len) {
      if (hs_need > hs_have + rec_len) after = kRecordHeader + (hs_need - hs_have - rec_len);
      return need_more(rec_len - have + after);
    }
    frag[nfrag] = data + pos + kRecordHeader;
    frag_len[nfrag] = rec_len;
    ++nfrag;
    hs_have += rec_len;
    pos += kRecordHeader + rec_len;
    if (hs_need == 0 && hs_have >= 4) {
      // RFC 8446 4: Handshake { HandshakeType msg_type; uint24 length; ... }. The client's
      // first message is its ClientHello (4.1.2); anything else is not a first flight.
      HsCursor h(frag, frag_len, nfrag, hs_have);
      uint8_t type = 0;
      uint32_t body_len = 0;
      h.u8(type);
      h.u24(body_len);
      if (type != kHandshakeClientHello) return status(FlightStatus::Malformed);
      if (body_len > kMaxClientHelloBody) return status(FlightStatus::TooLarge);
      hs_need = 4 + std::size_t(body_len);
    }
  }
  ClientHelloResult r;
  HsCursor c(frag, frag_len, nfrag, hs_need);
  c.skip(4);
  // Bytes after the ClientHello in its last record belong to whatever follows it (RFC 8446
  // 5.1 lets messages share a record); they are not read.
  const FlightStatus s = parse_body(c, r);
  if (s != FlightStatus::Complete) return status(s);
  r.status = FlightStatus::Complete;
  r.hello_end = pos;
  r.trailing = hs_have - hs_need;
  return r;
}

namespace {

HttpHostResult http_status(FlightStatus s) {
  HttpHostResult r;
  r.status = s;
  return r;
}

bool tchar(uint8_t c) {
  // RFC 9110 5.6.2 token characters.
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  switch (c) {
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+': case '-':
    case '.': case '^': case '_': case '`': case '|': case '~':
      return true;
    default:
      return false;
  }
}

bool iequals(const uint8_t* p, std::size_t n, const char* lit) {
  std::size_t i = 0;
  for (; lit[i] != 0; ++i)
    if (i >= n || lower(p[i]) != lit[i]) return false;
  return i == n;
}

// Host = uri-host [ ":" port ] (RFC 9110 7.2). We accept only a reg-name of letters, digits,
// '-' and '.' and an optional decimal port: an IP literal or anything else is not a name the
// guard can compare with the names that resolved, so it is Malformed (fail closed).
bool parse_host_value(const uint8_t* v, std::size_t n, std::string& host) {
  std::size_t colon = n;
  for (std::size_t i = 0; i < n; ++i)
    if (v[i] == ':') {
      colon = i;
      break;
    }
  if (colon < n) {
    const std::size_t plen = n - colon - 1;
    if (plen == 0 || plen > 5) return false;
    for (std::size_t i = colon + 1; i < n; ++i)
      if (v[i] < '0' || v[i] > '9') return false;
  }
  host.clear();
  for (std::size_t i = 0; i < colon; ++i) {
    if (!host_char(v[i])) return false;
    host.push_back(lower(v[i]));
  }
  return valid_host(host);
}

}  // namespace

HttpHostResult parse_http_host(const uint8_t* data, std::size_t len) {
  // Request line (RFC 9112 3): method SP request-target SP HTTP-version CRLF. The method is a
  // token; real ones are upper-case letters, so the first bytes already tell HTTP from not.
  constexpr std::size_t kMaxMethod = 16;
  std::size_t i = 0;
  for (; i < len && data[i] != ' '; ++i)
    if (data[i] < 'A' || data[i] > 'Z' || i >= kMaxMethod) return http_status(FlightStatus::NotHttp);
  if (i == len) return http_status(FlightStatus::NeedMore);
  if (i == 0) return http_status(FlightStatus::NotHttp);
  // Find the end of the head: an empty line. RFC 9112 2.2 lets a recipient accept a bare LF
  // as a line terminator; we do, with or without the CR.
  std::size_t line_start = 0;
  bool request_line = true;
  bool seen_host = false;
  HttpHostResult r;
  for (std::size_t p = 0; p < len; ++p) {
    if (p >= kMaxHttpHead) return http_status(FlightStatus::TooLarge);
    // RFC 9112 2.2: a bare CR must be refused or replaced, and servers differ on which (one
    // that ends the line there would read a Host hidden behind it, the review's attack);
    // control characters other than HTAB have no place in a head either (RFC 9110 5.5).
    if (data[p] == '\r' && p + 1 < len && data[p + 1] != '\n') return http_status(FlightStatus::Malformed);
    if ((data[p] < 0x20 && data[p] != '\t' && data[p] != '\r' && data[p] != '\n') || data[p] == 0x7f)
      return http_status(FlightStatus::Malformed);
    if (data[p] != '\n') continue;
    std::size_t end = p;  // exclusive, without CR
    if (end > line_start && data[end - 1] == '\r') --end;
    const uint8_t* line = data + line_start;
    const std::size_t n = end - line_start;
    line_start = p + 1;
    if (request_line) {
      request_line = false;
      // method SP request-target SP HTTP/1.x: exactly two spaces.
      std::size_t sp1 = n, sp2 = n;
      for (std::size_t k = 0; k < n; ++k)
        if (line[k] == ' ') {
          if (sp1 == n) sp1 = k;
          else if (sp2 == n) sp2 = k;
          else return http_status(FlightStatus::Malformed);
        }
      if (sp2 == n || sp2 == sp1 + 1) return http_status(FlightStatus::Malformed);
      const uint8_t* ver = line + sp2 + 1;
      const std::size_t vlen = n - sp2 - 1;
      if (vlen != 8 || std::memcmp(ver, "HTTP/1.", 7) != 0 || ver[7] < '0' || ver[7] > '9')
        return http_status(FlightStatus::NotHttp);  // HTTP/2's preface, HTTP/0.9 or worse
      // RFC 9112 3.2.2: with an absolute-form target the server uses the target's authority
      // and ignores Host, so a Host check alone would be bypassed; authority-form is CONNECT,
      // a proxy's business. Only origin-form ('/...') and asterisk-form ('*') are judged.
      const uint8_t t0 = line[sp1 + 1];
      if (t0 != '/' && !(t0 == '*' && sp2 == sp1 + 2)) return http_status(FlightStatus::Malformed);
      continue;
    }
    if (n == 0) {
      // The blank line: the head is complete. RFC 9112 3.2: a request without Host, or with
      // more than one, is answered 400 by a server; the guard refuses it too.
      if (!seen_host) return http_status(FlightStatus::Malformed);
      r.status = FlightStatus::Complete;
      r.head_end = p + 1;
      return r;
    }
    // field-line = field-name ":" OWS field-value OWS (RFC 9112 5). A line starting with
    // whitespace is obs-fold, which a server must reject or replace (5.2): we reject.
    std::size_t colon = 0;
    while (colon < n && tchar(line[colon])) ++colon;
    // No whitespace between name and colon (RFC 9112 5.1: MUST be rejected with 400).
    if (colon == 0 || colon == n || line[colon] != ':') return http_status(FlightStatus::Malformed);
    if (!iequals(line, colon, "host")) continue;
    if (seen_host) return http_status(FlightStatus::Malformed);
    seen_host = true;
    std::size_t vb = colon + 1, ve = n;
    while (vb < ve && (line[vb] == ' ' || line[vb] == '\t')) ++vb;
    while (ve > vb && (line[ve - 1] == ' ' || line[ve - 1] == '\t')) --ve;
    if (!parse_host_value(line + vb, ve - vb, r.host)) return http_status(FlightStatus::Malformed);
  }
  if (len >= kMaxHttpHead) return http_status(FlightStatus::TooLarge);
  return http_status(FlightStatus::NeedMore);
}

const char* flight_status_name(FlightStatus s) {
  switch (s) {
    case FlightStatus::Complete: return "complete";
    case FlightStatus::NeedMore: return "need-more";
    case FlightStatus::NotTls: return "not-tls";
    case FlightStatus::NotHttp: return "not-http";
    case FlightStatus::Malformed: return "malformed";
    case FlightStatus::TooLarge: return "too-large";
  }
  return "?";
}

}  // namespace dnsward
