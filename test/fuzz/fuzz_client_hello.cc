// libFuzzer: the first-flight parsers (TLS ClientHello, HTTP request head). Oracles beyond
// crashes and sanitizer reports: both parsers are deterministic; a Complete ClientHello's SNI
// is [a-z0-9.-]{1,255} without a trailing dot, and every prefix of the input that ends before
// the end of its last record is NeedMore with a `need` that does not overshoot that end (each
// prefix copied to a buffer of exactly its length, so ASan sees any read past it); the same
// for a Complete HTTP head and its Host.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

#include "dnsward/client_hello.hpp"

using namespace dnsward;

namespace {

void require(bool ok) {
  if (!ok) __builtin_trap();
}

bool same(const ClientHelloResult& a, const ClientHelloResult& b) {
  return a.status == b.status && a.need == b.need && a.hello_end == b.hello_end &&
         a.legacy_version == b.legacy_version && a.offers_tls13 == b.offers_tls13 &&
         a.has_sni == b.has_sni && a.sni == b.sni && a.has_ech == b.has_ech &&
         a.has_early_data == b.has_early_data && a.alpn == b.alpn;
}

bool good_name(const std::string& s) {
  if (s.empty() || s.size() > 255 || s.back() == '.') return false;
  for (char c : s)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.')) return false;
  return true;
}

// Which prefixes to check: all of them for a short input; for a long one the first and last
// 64, every record boundary's neighbourhood is covered by those plus a stride (checking all
// of a 16 KiB input's prefixes would cost seconds per input).
bool check_prefix(std::size_t p, std::size_t end) {
  if (end <= 1024) return true;
  return p < 64 || p + 64 >= end || p % 37 == 0;
}

template <typename Parse>
auto parse_copy(Parse parse, const uint8_t* data, std::size_t p) {
  std::unique_ptr<uint8_t[]> buf(new uint8_t[p == 0 ? 1 : p]);
  if (p > 0) std::memcpy(buf.get(), data, p);
  return parse(buf.get(), p);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  const ClientHelloResult r = parse_client_hello(data, size);
  require(same(r, parse_client_hello(data, size)));
  if (r.status == FlightStatus::NeedMore) require(r.need >= 1);
  if (r.status == FlightStatus::Complete) {
    require(r.hello_end >= 5 + 4 + 41 && r.hello_end <= size);
    require(r.has_sni == !r.sni.empty());
    if (r.has_sni) require(good_name(r.sni));
    require(r.alpn.size() <= kMaxAlpnProtocols);
    // The whole ClientHello alone parses the same.
    require(same(r, parse_copy(parse_client_hello, data, r.hello_end)));
    for (std::size_t p = 0; p < r.hello_end; ++p) {
      if (!check_prefix(p, r.hello_end)) continue;
      const ClientHelloResult q = parse_copy(parse_client_hello, data, p);
      require(q.status == FlightStatus::NeedMore);
      require(q.need >= 1 && p + q.need <= r.hello_end);
    }
  }

  const HttpHostResult h = parse_http_host(data, size);
  const HttpHostResult h2 = parse_http_host(data, size);
  require(h.status == h2.status && h.host == h2.host && h.head_end == h2.head_end);
  if (h.status == FlightStatus::Complete) {
    require(good_name(h.host));
    require(h.head_end <= size && h.head_end <= kMaxHttpHead);
    for (std::size_t p = 0; p < h.head_end; ++p) {
      if (!check_prefix(p, h.head_end)) continue;
      require(parse_copy(parse_http_host, data, p).status == FlightStatus::NeedMore);
    }
  }
  return 0;
}
