// libFuzzer: the query parser and every reply built from what it accepted.
#include <cstddef>
#include <cstdint>

#include "dnsward/packet.hpp"

using namespace dnsward;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  static uint8_t out[65536];
  Query q;
  const ParseStatus s = parse_query(data, size, q);
  build_header_error(data, size, wire::rcode::FORMERR, out, sizeof out);
  if (s != ParseStatus::Ok) return 0;
  const ReplyOptions o;
  build_negative(q, wire::rcode::NXDOMAIN, o, out, sizeof out, wire::edns::EDE_BLOCKED, "text");
  build_rcode(q, wire::rcode::BADVERS, o, out, sizeof out);
  build_localhost(q, o, out, sizeof out);
  build_any_hinfo(q, o, out, sizeof out);
  build_txt(q, {"a", std::string(300, 'x')}, o, out, sizeof out);
  build_upstream_query(q, 7, 1232, out, sizeof out, size & 1);
  (void)q.qname_text();
  (void)q.udp_limit(1232);
  return 0;
}
