// libFuzzer: an upstream answer to a fixed question (www.example.com A), through every
// function that reads answers: the checks, the walker that picks addresses to vouch for,
// the rebuild without dropped records, the relay to the client, the EDNS FORMERR test.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "dnsward/answer.hpp"
#include "dnsward/packet.hpp"

using namespace dnsward;

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
  if (check_answer(q, id, data, size) != RelayStatus::Ok) return 0;
  const AnswerScan s = scan_answer(data, size, q.qname_lc, q.qname_len, size & 1);
  std::vector<uint8_t> msg(data, data + size);
  if (s.ok) {
    if (!s.drop.empty()) {
      std::vector<uint8_t> rebuilt;
      if (rebuild_without(data, size, s.drop, rebuilt)) {
        const AnswerScan again = scan_answer(rebuilt.data(), rebuilt.size(), q.qname_lc, q.qname_len, size & 1);
        // Whatever was dropped once is gone: a rebuilt answer never needs dropping again.
        if (again.ok && !again.drop.empty()) __builtin_trap();
        msg = rebuilt;
      }
    }
    const AnswerScan t = scan_answer(msg.data(), msg.size(), q.qname_lc, q.qname_len, size & 1);
    if (t.ok) rewrite_ttls(msg.data(), t.ttl_offsets, 3600, 5);
  }
  std::size_t n = 0;
  relay_answer(q, id, msg.data(), msg.size(), 512, ReplyOptions{}, out, sizeof out, n, 15, "x");
  relay_answer(q, id, msg.data(), msg.size(), 65535, ReplyOptions{}, out, sizeof out, n);
  return 0;
}
