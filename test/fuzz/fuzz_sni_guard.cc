// libFuzzer: the first-flight guard (sni_guard.hpp) fed one connection's packets as a client
// might write them: SYNs (with or without a Fast Open payload), segments at any offset and of
// any content, resets, and time passing. The oracle is the guard's promise, checked against
// what the server would receive (the payload of every packet not dropped or rejected):
// - no packet with payload is ever passed unjudged (a Pass verdict for payload);
// - whenever bytes were delivered up to the connection's Allow (after all verdicts of one
//   packet are given), those from
//   the flight's start agree wherever two packets overlap and begin with a whole
//   ClientHello (port 443) or HTTP head (port 80) that names a bound name, with nothing
//   after the ClientHello in its record and no 0-RTT offered with TLS 1.3;
// - and, as a TLS 1.3 server that sent a HelloRetryRequest would read them (RFC 8446
//   4.1.4): past any change_cipher_spec records, a handshake record that begins a second
//   ClientHello, once whole, names the first one's name;
// - every packet gets exactly one verdict, in the end (the deadline rejects what waits);
// - the connection is allowed for good only once a segment acknowledged the server's data;
// - no segment with urgent data (which the server's kernel takes out of the stream) passes
//   before the connection is allowed.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <netinet/in.h>

#include "dnsward/client_hello.hpp"
#include "dnsward/sni_guard.hpp"
#include "../common/fake_timers.hpp"

using namespace dnsward;

namespace {

void require(bool ok) {
  if (!ok) __builtin_trap();
}

using Clock = testing::FakeTimers;

class Names : public BoundNames {
 public:
  bool known(const SetKey&) const override { return true; }
  bool bound(const SetKey&, std::string_view name, uint64_t) const override {
    return name == "allowed.example" || name == "x.test";
  }
  bool any(const SetKey&, uint64_t) const override { return false; }
  std::string names(const SetKey&) const override { return "allowed.example,x.test"; }
};

constexpr uint32_t kIsn = 999;  // the flight starts at 1000
constexpr uint32_t kServerIsn = 7000;  // an acknowledgment past 7001: the server answered

struct Sent {
  bool syn = false, urg = false;
  uint32_t seq = 0;
  uint32_t ack = kServerIsn + 1;  ///< the client's acknowledgment number
  bool new_epoch = false;  ///< a SYN sent after the last connection ended
  std::vector<uint8_t> payload;
};

class Oracle : public VerdictPort {
 public:
  void verdict(uint32_t id, GuardVerdict v, uint32_t) override {
    require(id < sent.size());
    require(given.insert(id).second);  // one verdict per packet
    const Sent& s = sent[id];
    // A SYN that is not dropped after the last connection ended starts another: what was
    // delivered on that one is not this one's stream.
    if (s.syn && s.new_epoch && v != GuardVerdict::Drop) new_stream();
    if (!s.payload.empty()) require(v != GuardVerdict::Pass);
    if (v == GuardVerdict::Reject) ended = true;  // the ruleset resets the connection
    if (v == GuardVerdict::Drop || v == GuardVerdict::Reject) return;
    // Urgent data leaves the server's stream: what the guard judged would not be what it
    // reads, so none may pass before the first flight is allowed.
    if (s.urg && !checked) urgent_delivered = true;
    // Delivered to the server: its bytes, by offset from the flight's start.
    const uint32_t off = s.seq + (s.syn ? 1 : 0) - (kIsn + 1);
    for (std::size_t i = 0; i < s.payload.size(); ++i) delivered.emplace_back(off + uint32_t(i), s.payload[i]);
    if (v == GuardVerdict::Allow) {
      // Allowed for good (the kernel queues nothing more of the connection) only once the
      // server answered: before, the packets judged may have been lost past the guard and
      // the client's resend may say something else (the third review).
      require(answered_sent());
      allowed = true;
      ended = true;  // a later SYN opens another connection
    }
    if (!s.payload.empty()) fresh = true;
  }
  /// After each packet and each passage of time: the verdicts of one decision come together
  /// (held packets in the order they came, so later bytes may come first), and the server
  /// gets them together.
  void settle() {
    if (allowed && !checked) {
      checked = true;
      require(!urgent_delivered);
    }
    // Up to the verdict that allows the connection: after it the kernel queues nothing more
    // of it (here, late packets get Allow unread), and what the client sends is its own.
    if (fresh && !after_allow) {
      fresh = false;
      check_delivered();
      after_allow = allowed;
    }
  }
  void check_delivered() {
    std::map<uint32_t, uint8_t> bytes;
    uint32_t first_conflict = UINT32_MAX;  // where two delivered packets disagree, first
    for (const auto& [off, b] : delivered) {
      const auto [it, fresh] = bytes.emplace(off, b);
      if (!fresh && it->second != b) first_conflict = std::min(first_conflict, off);
    }
    std::vector<uint8_t> stream;
    for (uint32_t o = 0; bytes.count(o); ++o) stream.push_back(bytes[o]);
    Names n;
    // The bytes judged (the ClientHello, a second one, the HTTP head): the server may have
    // read either copy of a byte two packets disagree on, so none may be among them. Past
    // them the bytes are the client's own.
    std::size_t judged = 0;
    if (port == 443) {
      const ClientHelloResult r = parse_client_hello(stream.data(), stream.size());
      require(r.status == FlightStatus::Complete && r.has_sni && n.bound({}, r.sni, 0) && r.trailing == 0);
      judged = r.hello_end;
      if (r.offers_tls13) {
        require(!r.has_early_data);
        std::size_t pos = r.hello_end;
        while (stream.size() - pos >= 6 && stream[pos] == 20 && stream[pos + 3] == 0 && stream[pos + 4] == 1)
          pos += 6;  // change_cipher_spec records, which a lenient server skips
        if (stream.size() - pos >= 6 && stream[pos] == 22 && stream[pos + 5] == 1) {
          const ClientHelloResult second = parse_client_hello(stream.data() + pos, stream.size() - pos);
          if (second.status == FlightStatus::Complete) {
            require(second.has_sni && second.sni == r.sni);
            judged = pos + second.hello_end;
          } else {
            judged = stream.size();  // a second ClientHello begun: all of it so far
          }
        }
      }
    } else {
      const HttpHostResult r = parse_http_host(stream.data(), stream.size());
      require(r.status == FlightStatus::Complete && n.bound({}, r.host, 0));
      judged = r.head_end;
    }
    require(first_conflict >= judged);  // overlapping packets agree on the bytes judged
  }
  bool answered_sent() const {
    for (const Sent& x : sent)
      if (!x.syn && !x.payload.empty() && x.ack != kServerIsn + 1) return true;
    return false;
  }
  std::vector<Sent> sent;
  std::set<uint32_t> given;
  std::vector<std::pair<uint32_t, uint8_t>> delivered;
  /// A new connection on the same ports (a SYN after a reset or a final verdict): what was
  /// delivered on the last one is not this one's stream.
  void new_stream() {
    delivered.clear();
    ended = allowed = checked = urgent_delivered = fresh = after_allow = false;
  }
  bool allowed = false, checked = false, urgent_delivered = false, fresh = false, after_allow = false;
  bool ended = false;  ///< reset or finally judged since the last SYN
  uint16_t port = 443;
};

std::vector<uint8_t> packet(uint16_t dport, const Sent& s, bool rst) {
  std::vector<uint8_t> p(40 + s.payload.size());
  const std::size_t total = p.size();
  p[0] = 0x45;
  p[2] = uint8_t(total >> 8);
  p[3] = uint8_t(total);
  p[8] = 64;
  p[9] = IPPROTO_TCP;
  const uint8_t src[4] = {10, 0, 0, 2}, dst[4] = {198, 51, 100, 7};
  std::memcpy(&p[12], src, 4);
  std::memcpy(&p[16], dst, 4);
  uint8_t* t = &p[20];
  t[0] = 0x9c;
  t[1] = 0x40;
  t[2] = uint8_t(dport >> 8);
  t[3] = uint8_t(dport);
  t[4] = uint8_t(s.seq >> 24);
  t[5] = uint8_t(s.seq >> 16);
  t[6] = uint8_t(s.seq >> 8);
  t[7] = uint8_t(s.seq);
  if (!s.syn) {
    t[8] = uint8_t(s.ack >> 24);
    t[9] = uint8_t(s.ack >> 16);
    t[10] = uint8_t(s.ack >> 8);
    t[11] = uint8_t(s.ack);
  }
  t[12] = 5 << 4;
  t[13] = uint8_t((s.syn ? 0x02 : 0x10) | (rst ? 0x04 : 0) | (s.urg ? 0x20 : 0));
  if (!s.payload.empty()) std::memcpy(t + 20, s.payload.data(), s.payload.size());
  return p;
}

}  // namespace

// Input: one byte choosing the port (odd: 80), then operations: a tag byte, and for data a
// 16-bit offset (from 256 before the flight's start), a 16-bit length and the payload. A
// data tag's 0x20 bit: the segment acknowledges data from the server (it answered).
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  Oracle oracle;
  oracle.port = (data[0] & 1) ? 80 : 443;
  Clock clock;
  Names names;
  GuardOptions o;
  o.sni_ports = {443};
  o.http_ports = {80};
  o.marks = {1, 2, 4};
  o.max_flows = 4;
  o.timeout_ms = 10000;
  {
    SniGuard guard(o, names, oracle, clock);
    std::size_t i = 1;
    int ops = 0;
    while (i < size && ops++ < 64) {
      const uint8_t tag = data[i++];
      Sent s;
      bool rst = false;
      switch (tag % 5) {
        case 0:  // a SYN
          s.syn = true;
          s.seq = kIsn;
          s.new_epoch = oracle.ended || guard.flows() == 0;  // (forgotten at a deadline)
          break;
        case 1:  // time passes
          clock.advance(uint64_t(tag) * 100);
          oracle.settle();
          continue;
        case 2:  // a reset
          rst = true;
          s.seq = kIsn + 1;
          oracle.ended = true;
          break;
        default: {  // a segment (tag % 5 == 4 with the SYN flag: Fast Open)
          if (i + 4 > size) return 0;
          const uint32_t off = uint32_t(data[i]) << 8 | data[i + 1];
          std::size_t len = std::size_t(data[i + 2]) << 8 | data[i + 3];
          i += 4;
          len = std::min(len, size - i);
          s.syn = tag % 5 == 4 && (tag & 0x80);
          s.new_epoch = s.syn && (oracle.ended || guard.flows() == 0);
          s.urg = tag & 0x40;
          if (tag & 0x20) s.ack = kServerIsn + 1 + 500;  // sent after the server answered
          s.seq = s.syn ? kIsn : kIsn + 1 + off - 256;
          s.payload.assign(data + i, data + i + len);
          i += len;
        }
      }
      const uint32_t id = uint32_t(oracle.sent.size());
      oracle.sent.push_back(s);
      const std::vector<uint8_t> p = packet(oracle.port, s, rst);
      guard.on_packet(id, 0, p.data(), p.size(), true);
      oracle.settle();
    }
    clock.advance(3600 * 1000);  // every deadline passes
    // Every packet got its verdict: none is left waiting in the queue for ever.
    require(oracle.given.size() == oracle.sent.size());
  }
  return 0;
}
