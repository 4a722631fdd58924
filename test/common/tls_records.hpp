// TLS records and ClientHellos built byte by byte for unit tests (RFC 8446 4.1.2, 5.1): the
// cases real clients' captures do not cover.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace dnsward::testing {

using TlsBytes = std::vector<uint8_t>;

inline void put16(TlsBytes& b, std::size_t v) {
  b.push_back(uint8_t(v >> 8));
  b.push_back(uint8_t(v));
}

struct Ext {
  uint16_t type;
  TlsBytes data;
};

inline Ext sni_ext(const std::string& host) {
  Ext e{0, {}};
  put16(e.data, host.size() + 3);
  e.data.push_back(0);
  put16(e.data, host.size());
  e.data.insert(e.data.end(), host.begin(), host.end());
  return e;
}

// A ClientHello handshake message (RFC 8446 4.1.2) with the given extensions.
inline TlsBytes hello_message(const std::vector<Ext>& exts) {
  TlsBytes body{1, 0, 0, 0};  // msg_type client_hello, uint24 length filled in below
  put16(body, 0x0303);
  for (int i = 0; i < 32; ++i) body.push_back(uint8_t(i));
  body.push_back(32);
  for (int i = 0; i < 32; ++i) body.push_back(uint8_t(0xa0 + i));
  put16(body, 4);
  put16(body, 0x1301);
  put16(body, 0x1302);
  body.push_back(1);
  body.push_back(0);
  TlsBytes ext;
  for (const Ext& e : exts) {
    put16(ext, e.type);
    put16(ext, e.data.size());
    ext.insert(ext.end(), e.data.begin(), e.data.end());
  }
  put16(body, ext.size());
  body.insert(body.end(), ext.begin(), ext.end());
  const std::size_t n = body.size() - 4;
  body[1] = uint8_t(n >> 16);
  body[2] = uint8_t(n >> 8);
  body[3] = uint8_t(n);
  return body;
}

// Wraps a handshake message in TLS records of at most `frag` bytes each.
inline TlsBytes records(const TlsBytes& msg, std::size_t frag = 16384) {
  TlsBytes out;
  for (std::size_t off = 0; off < msg.size(); off += frag) {
    const std::size_t n = std::min(frag, msg.size() - off);
    out.push_back(0x16);
    put16(out, 0x0301);
    put16(out, n);
    out.insert(out.end(), msg.begin() + long(off), msg.begin() + long(off + n));
  }
  return out;
}

// The server's answer to a TLS 1.3 ClientHello, as its first record (RFC 8446 4.1.3): a
// ServerHello, or with retry a HelloRetryRequest (a ServerHello whose random is SHA-256 of
// "HelloRetryRequest"), each with a session id echo, TLS_AES_128_GCM_SHA256 and a
// supported_versions extension saying TLS 1.3.
inline TlsBytes server_hello(bool retry) {
  static constexpr uint8_t kHrr[32] = {0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c,
                                       0x02, 0x1e, 0x65, 0xb8, 0x91, 0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb,
                                       0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c};
  TlsBytes body{2, 0, 0, 0};
  put16(body, 0x0303);
  for (int i = 0; i < 32; ++i) body.push_back(retry ? kHrr[i] : uint8_t(0x40 + i));
  body.push_back(32);
  for (int i = 0; i < 32; ++i) body.push_back(uint8_t(0xa0 + i));
  put16(body, 0x1301);
  body.push_back(0);
  put16(body, 6);
  put16(body, 43);  // supported_versions
  put16(body, 2);
  put16(body, 0x0304);
  const std::size_t n = body.size() - 4;
  body[1] = uint8_t(n >> 16);
  body[2] = uint8_t(n >> 8);
  body[3] = uint8_t(n);
  TlsBytes out{0x16, 0x03, 0x03};
  put16(out, body.size());
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

}  // namespace dnsward::testing
