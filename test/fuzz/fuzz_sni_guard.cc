// libFuzzer: the first-flight guard (sni_guard.hpp) fed one connection's packets both ways,
// the client's as untrusted code with a raw socket might write them (SYNs with or without a
// Fast Open payload, segments at any offset, of any content, with any acknowledgment number,
// urgent or not, resets), and the server's as an honest TCP and TLS (or HTTP) server would
// answer them. Any client packet may be discarded by the server after the guard passed it
// (an old timestamp, RFC 7323 5.3; a TTL of 1): the attacker's choice, one bit per packet.
//
// The model server keeps the bytes it took, by offset from the stream's start, in two
// variants (the first copy of a byte kept, or the last copy before it is read in order),
// acknowledges what it holds in order, and reads the first ClientHello (or HTTP head) once
// whole; it answers with a ServerHello, a HelloRetryRequest (after which it reads a second
// ClientHello, RFC 8446 4.1.4), or an alert. The oracle is the guard's promise, checked
// against what the server reads:
// - while a connection is not allowed for good, a whole first ClientHello the server holds
//   names a bound name, with nothing after it in its record and no 0-RTT offered; after a
//   HelloRetryRequest, a whole second ClientHello names the same; a whole HTTP head names a
//   bound host;
// - a connection is allowed for good only once the server holds all of that (and, after a
//   ClientHello offering TLS 1.3, has answered it with a ServerHello);
// - no client packet with payload is passed unjudged: one given no verdict bit (Pass, a late
//   packet of an allowed connection) goes on only if the conntrack mark says allowed by
//   then, as the ruleset's backstop drops it otherwise;
// - no urgent data reaches the server before the connection is allowed;
// - every packet queued gets exactly one verdict, in the end (the deadline rejects what
//   waits).
// Packets go through a model of the ruleset (World::queued): what it does not queue never
// reaches the guard (a plain SYN, a reset, the server's bare ACKs on a TLS port), and a
// client's urgent pointer on a connection without a verdict is dropped. A verdict goes on
// (NF_ACCEPT) to the chain after the queue, which moves it into the conntrack mark and
// resets a rejected connection (World::verdict); the real ruleset drops a client's urgent
// segment before its queue, which this model queues all the same (its payload reaches the
// guard, a harder case than the ruleset lets through: the guard's own urgent check stays
// exercised).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <netinet/in.h>

#include "dnsward/client_hello.hpp"
#include "dnsward/sni_guard.hpp"
#include "../common/fake_timers.hpp"
#include "../common/tls_records.hpp"

using namespace dnsward;

namespace {

void require(bool ok) {
  if (!ok) __builtin_trap();
}

using Clock = testing::FakeTimers;
using Bytes = std::vector<uint8_t>;

class Names : public BoundNames {
 public:
  bool known(const SetKey&) const override { return true; }
  bool bound(const SetKey&, std::string_view name, uint64_t) const override {
    return name == "allowed.example" || name == "x.test";
  }
  bool any(const SetKey&, uint64_t) const override { return false; }
  std::string names(const SetKey&) const override { return "allowed.example,x.test"; }
};

constexpr uint32_t kIsn = 999;  // the client's stream starts at 1000

struct Sent {
  bool from_server = false;
  bool syn = false, ack = true, urg = false, rst = false;
  bool discarded = false;  ///< the server drops it after the guard (a client packet)
  uint32_t seq = 0, ack_seq = 0;
  Bytes payload;
};

/// What the server holds of the client's stream: bytes by offset from its start.
struct Stream {
  bool keep_first = true;
  std::map<uint32_t, uint8_t> bytes;
  std::size_t in_order = 0;  ///< bytes [0, in_order) held in order: read, never replaced
  void take(uint32_t off, const Bytes& p) {
    for (std::size_t i = 0; i < p.size(); ++i) {
      const uint32_t o = off + uint32_t(i);
      if (o >= (1u << 31) || o < in_order) continue;  // before the start, or old: dropped
      if (keep_first) bytes.emplace(o, p[i]);
      else bytes[o] = p[i];
    }
    while (bytes.count(uint32_t(in_order))) ++in_order;
  }
  Bytes read() const {
    Bytes r;
    for (std::size_t o = 0; o < in_order; ++o) r.push_back(bytes.at(uint32_t(o)));
    return r;
  }
};

enum class Tls { wait_hello, sent_retry, done };

class World : public VerdictPort {
 public:
  explicit World(uint16_t p) : port(p) {
    streams[1].keep_first = false;
  }
  void verdict(uint32_t id, GuardVerdict v, uint32_t) override {
    require(id < sent.size());
    require(given.insert(id).second);  // one verdict per packet
    const Sent& s = sent[id];
    if (v == GuardVerdict::Drop) return;
    // The backstop after the queue: client payload without both verdict bits on a
    // connection the conntrack mark does not call allowed never leaves.
    if (!s.from_server && !s.payload.empty() && v == GuardVerdict::Pass && ct != Ct::allowed) return;
    if (v == GuardVerdict::Allow && ct != Ct::allowed && !allowed) {
      // Allowed for good: the kernel queues nothing more of the connection. The server must
      // hold the flight judged, and have answered a TLS 1.3 ClientHello with a ServerHello.
      require(state != State::none && confirmed());
      allowed = true;
    }
    // The ruleset moves the verdict into the conntrack mark (Watch and Pass: none).
    if (v == GuardVerdict::Allow) ct = Ct::allowed;
    if (v == GuardVerdict::Reject) ct = Ct::rejected;
    deliver(s);
  }
  /// A packet through the ruleset, as nft-rules --sni-guard writes it: a client's SYN clears
  /// the verdict from the conntrack mark; packets of connections without a verdict are
  /// queued (the client's with payload, a Fast Open SYN's too; the server's SYN-ACK and
  /// data, and on port 80 every packet of the server's); a rejected connection's packets
  /// are reset (the client's) or dropped (the server's); the rest pass.
  bool queued(const Sent& s) {
    if (!s.from_server && s.syn) ct = Ct::none;  // to a vouched destination: guarded, undecided
    if (ct != Ct::none) return false;
    if (!s.from_server) return !s.payload.empty();
    return s.syn || !s.payload.empty() || port == 80;
  }
  /// The packet reaches the other end (unless the ruleset rejects it).
  void deliver(const Sent& s) {
    if (ct == Ct::rejected) return;  // reset or dropped by the ruleset
    if (s.from_server) {
      if (s.syn && state == State::syn_received) state = State::established;  // the client got it
      return;
    }
    if (s.discarded) return;  // dropped past the guard, or by the server's TCP
    if (s.rst) {
      ended = true;
      return;
    }
    if (s.syn && (state == State::none || ended)) {
      new_connection();
      client_isn = s.seq;
    }
    if (state == State::none || ended) return;  // no connection: the server answers with a reset
    // Before the client has the SYN-ACK it cannot acknowledge the server's ISN, and the
    // server takes no data without that (RFC 9293 3.10.7.3); only a Fast Open SYN's.
    if (state != State::established && !s.syn) return;
    if (s.urg && !allowed) urgent_delivered = true;
    const uint32_t off = s.seq + (s.syn ? 1 : 0) - (client_isn + 1);
    if (s.syn) return;  // no Fast Open SYN gets this far (the ruleset drops them): no data
    for (Stream& st : streams) st.take(off, s.payload);
  }
  void new_connection() {
    ++epoch;
    state = State::syn_received;
    for (Stream& st : streams) {
      Stream fresh;
      fresh.keep_first = st.keep_first;
      st = std::move(fresh);
    }
    ended = allowed = urgent_delivered = false;
    tls = Tls::wait_hello;
    srv_sent = 0;
    first_sni.clear();
    tls13 = false;
  }
  uint32_t server_isn() const { return 7000 + epoch * 100000; }
  uint32_t acked() const { return client_isn + 1 + uint32_t(streams[0].in_order); }

  /// The oracle over what the server reads, after each step, while the connection is not
  /// allowed for good (after it the bytes that matter were read and acknowledged).
  void check() {
    if (ended || allowed || state == State::none) return;
    require(!urgent_delivered);
    for (const Stream& st : streams) {
      const Bytes d = st.read();
      Names n;
      if (port == 443) {
        const ClientHelloResult r = parse_client_hello(d.data(), d.size());
        if (r.status != FlightStatus::Complete) continue;
        require(r.has_sni && n.bound({}, r.sni, 0) && r.trailing == 0 && !(r.offers_tls13 && r.has_early_data));
        if (tls == Tls::wait_hello) continue;
        std::size_t pos = r.hello_end;
        while (d.size() - pos >= 6 && d[pos] == 20 && d[pos + 3] == 0 && d[pos + 4] == 1) pos += 6;
        if (d.size() - pos >= 6 && d[pos] == 22 && d[pos + 5] == 1) {
          const ClientHelloResult second = parse_client_hello(d.data() + pos, d.size() - pos);
          if (second.status == FlightStatus::Complete) require(second.has_sni && second.sni == r.sni);
        }
      } else {
        const HttpHostResult r = parse_http_host(d.data(), d.size());
        if (r.status == FlightStatus::Complete) require(n.bound({}, r.host, 0));
      }
    }
  }
  /// Whether the server holds what a final Allow needs.
  bool confirmed() const {
    for (const Stream& st : streams) {
      const Bytes d = st.read();
      Names n;
      if (port == 443) {
        const ClientHelloResult r = parse_client_hello(d.data(), d.size());
        if (r.status != FlightStatus::Complete || !r.has_sni || !n.bound({}, r.sni, 0)) return false;
        if (r.offers_tls13 && tls != Tls::done) return false;
      } else {
        const HttpHostResult r = parse_http_host(d.data(), d.size());
        if (r.status != FlightStatus::Complete || !n.bound({}, r.host, 0)) return false;
      }
    }
    return true;
  }
  /// The server's answer to what it read, as an honest server gives it (empty: a bare ACK).
  Bytes answer(uint8_t variant) {
    const Bytes d = streams[0].read();
    if (port == 80) {
      if (variant % 4 == 3 || parse_http_host(d.data(), d.size()).status != FlightStatus::Complete) return {};
      const std::string ok = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
      return Bytes(ok.begin(), ok.end());
    }
    const ClientHelloResult r = parse_client_hello(d.data(), d.size());
    if (variant % 4 == 3 || r.status != FlightStatus::Complete) return {};
    if (tls == Tls::wait_hello) {
      first_sni = r.sni;
      tls13 = r.offers_tls13;
      if (variant % 4 == 2) {
        ended = true;  // an alert, and the server closes
        return {21, 3, 3, 0, 2, 2, 40};
      }
      if (variant % 4 == 1 && r.offers_tls13) {
        tls = Tls::sent_retry;
        return testing::server_hello(true);
      }
      tls = Tls::done;
      return testing::server_hello(false);
    }
    if (tls == Tls::sent_retry) {
      std::size_t pos = r.hello_end;
      while (d.size() - pos >= 6 && d[pos] == 20 && d[pos + 3] == 0 && d[pos + 4] == 1) pos += 6;
      if (d.size() - pos < 6 || parse_client_hello(d.data() + pos, d.size() - pos).status != FlightStatus::Complete)
        return {};
      tls = Tls::done;
      return testing::server_hello(false);
    }
    return {};
  }

  enum class State { none, syn_received, established } state = State::none;
  uint16_t port;
  std::vector<Sent> sent;
  std::set<uint32_t> given;
  Stream streams[2];
  uint32_t epoch = 0;
  uint32_t client_isn = kIsn;  ///< the ISN of the SYN the server took
  uint32_t srv_sent = 0;  ///< bytes the server sent on this connection
  /// ended: the server's connection is gone (a reset it took, or its alert); allowed: the
  /// connection was allowed for good (after it, what the client sends is its own).
  bool ended = false, allowed = false, urgent_delivered = false;
  enum class Ct { none, allowed, rejected } ct = Ct::none;  ///< the conntrack mark's verdict
  Tls tls = Tls::wait_hello;
  std::string first_sni;
  bool tls13 = false;
};

Bytes packet(uint16_t port, const Sent& s) {
  Bytes p(40 + s.payload.size());
  const std::size_t total = p.size();
  p[0] = 0x45;
  p[2] = uint8_t(total >> 8);
  p[3] = uint8_t(total);
  p[8] = 64;
  p[9] = IPPROTO_TCP;
  const uint8_t client[4] = {10, 0, 0, 2}, server[4] = {198, 51, 100, 7};
  std::memcpy(&p[12], s.from_server ? server : client, 4);
  std::memcpy(&p[16], s.from_server ? client : server, 4);
  uint8_t* t = &p[20];
  const uint16_t cport = 40000, sport = s.from_server ? port : cport, dport = s.from_server ? cport : port;
  t[0] = uint8_t(sport >> 8);
  t[1] = uint8_t(sport);
  t[2] = uint8_t(dport >> 8);
  t[3] = uint8_t(dport);
  for (int i = 0; i < 4; ++i) {
    t[4 + i] = uint8_t(s.seq >> (24 - 8 * i));
    t[8 + i] = s.ack ? uint8_t(s.ack_seq >> (24 - 8 * i)) : 0;
  }
  t[12] = 5 << 4;
  t[13] = uint8_t((s.syn ? 0x02 : 0) | (s.ack ? 0x10 : 0) | (s.rst ? 0x04 : 0) | (s.urg ? 0x20 : 0));
  if (!s.payload.empty()) std::memcpy(t + 20, s.payload.data(), s.payload.size());
  return p;
}

}  // namespace

// Input: one byte (bit 0: port 80, else 443), then
// operations, each a tag byte whose low three bits say which:
//   0 a client SYN; 1 time passes; 2 a client reset; 3 the server's SYN-ACK;
//   4 the server answers (one more byte: 0 ServerHello, 1 HelloRetryRequest, 2 alert, 3 a
//     bare ACK, in its low two bits; the rest, a split point into two segments);
//   5-7 a client segment: a 16-bit offset (from 256 before the stream's start), a 16-bit
//     length, then the payload; tag bit 0x20 with 7: a Fast Open SYN carrying it.
// Tag bit 0x80: the server discards the client's packet; 0x40: urgent; 0x08: the client's
// acknowledgment number is another (a raw socket's forgery); 0x10 with a SYN: its ISN is
// 100 before the usual one.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  World w((data[0] & 1) ? 80 : 443);
  Clock clock;
  Names names;
  GuardOptions o;
  o.sni_ports = {443};
  o.http_ports = {80};
  o.marks = {1, 2, 4};
  o.max_flows = 4;
  o.timeout_ms = 10000;
  {
    SniGuard guard(o, names, w, clock);
    std::size_t i = 1;
    int ops = 0;
    auto through = [&](const Sent& s) {  // the ruleset, then the guard if it queues it
      const uint32_t id = uint32_t(w.sent.size());
      w.sent.push_back(s);
      if (w.queued(s)) {
        const Bytes p = packet(w.port, s);
        guard.on_packet(id, 0, p.data(), p.size(), true);
        require(guard.check_use());  // what each tenant holds agrees with the flows
      } else {
        w.given.insert(id);  // the ruleset's alone
        // An urgent pointer on a connection without a verdict is dropped (a raw socket's
        // bare ACK would point it into the flight, and the server take a byte out of it).
        if (!(s.urg && !s.from_server && w.ct == World::Ct::none)) w.deliver(s);
      }
      w.check();
    };
    auto send = [&](Sent s) {
      if (!s.from_server && s.syn && !s.payload.empty()) {
        // A Fast Open SYN: dropped by the ruleset, before any queue (it would be the guard's
        // to drop too).
        w.ct = World::Ct::none;  // the SYN's rules, before the drop, cleared the verdict
        w.sent.push_back(s);
        w.given.insert(uint32_t(w.sent.size() - 1));
        w.check();
        return;
      }
      through(s);
    };
    while (i < size && ops++ < 64) {
      const uint8_t tag = data[i++];
      Sent s;
      s.discarded = tag & 0x80;
      s.ack_seq = (tag & 0x08) ? w.server_isn() + 5000 : w.server_isn() + 1 + w.srv_sent;
      switch (tag & 7) {
        case 0:
          s.syn = true;
          s.ack = false;
          s.seq = (tag & 0x10) ? kIsn - 100 : kIsn;  // a raw socket's SYN may say another ISN
          s.urg = tag & 0x40;
          send(s);
          break;
        case 1:
          clock.advance(uint64_t(tag) * 100);
          w.check();
          break;
        case 2:
          s.rst = true;
          s.seq = kIsn + 1;
          send(s);
          break;
        case 3:  // the server's SYN-ACK, as it would send it: only to a SYN it received
          if (w.state != World::State::syn_received) break;
          s.from_server = true;
          s.syn = true;
          s.seq = w.server_isn();
          s.ack_seq = w.acked();
          send(s);
          break;
        case 4: {
          if (i >= size) return 0;
          const uint8_t variant = data[i++];
          if (w.state != World::State::established || w.ended) break;
          const Bytes answer = w.answer(variant);
          const std::size_t split = std::min<std::size_t>(variant >> 2, answer.size());
          for (const auto& [from, to] : {std::pair{std::size_t(0), split}, std::pair{split, answer.size()}}) {
            if (from == to && !(from == 0 && answer.empty())) continue;
            Sent r;
            r.from_server = true;
            r.seq = w.server_isn() + 1 + w.srv_sent;
            r.ack_seq = w.acked();
            r.payload.assign(answer.begin() + long(from), answer.begin() + long(to));
            w.srv_sent += uint32_t(to - from);
            send(r);
          }
          break;
        }
        default: {
          if (i + 4 > size) return 0;
          const uint32_t off = uint32_t(data[i]) << 8 | data[i + 1];
          std::size_t len = std::size_t(data[i + 2]) << 8 | data[i + 3];
          i += 4;
          len = std::min(len, size - i);
          s.syn = (tag & 7) == 7 && (tag & 0x20);
          s.ack = !s.syn;
          s.urg = tag & 0x40;
          s.seq = s.syn ? ((tag & 0x10) ? kIsn - 100 : kIsn) : kIsn + 1 + off - 256;
          s.payload.assign(data + i, data + i + len);
          i += len;
          send(s);
        }
      }
    }
    clock.advance(3600 * 1000);  // every deadline passes
    // Every packet got its verdict: none is left waiting in the queue for ever.
    require(w.given.size() == w.sent.size());
    require(guard.check_use() && guard.flows() == 0);  // and nothing is held after
  }
  return 0;
}
