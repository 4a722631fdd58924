// The first-flight guard's logic (sni_guard.hpp) with a fake queue, fake bound names and a
// fake clock: packets built here byte by byte, verdicts recorded in order.
#include <doctest/doctest.h>

#include <arpa/inet.h>

#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <set>

#include "dnsward/sni_guard.hpp"
#include "dnsward/config.hpp"
#include "dnsward/nft_rules.hpp"
#include "../common/fake_timers.hpp"
#include "../common/tls_records.hpp"

using namespace dnsward;

namespace {

using Bytes = std::vector<uint8_t>;

Bytes capture(const std::string& name) {
  std::ifstream in(std::string(DNSWARD_TEST_DATA) + "/client_hello/" + name, std::ios::binary);
  REQUIRE_MESSAGE(in.good(), name);
  return Bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}
// curl's ClientHello names allowed.example (test/data/client_hello), python's python.example.
const Bytes& curl_hello() {
  static const Bytes b = capture("curl_openssl.bin");
  return b;
}
const Bytes& python_hello() {
  static const Bytes b = capture("python_ssl.bin");
  return b;
}

using Timers0 = testing::FakeTimers;

struct Given {
  uint32_t id;
  GuardVerdict v;
  uint32_t mark;
  bool operator==(const Given& o) const { return id == o.id && v == o.v && mark == o.mark; }
};
doctest::String toString(const Given& g) {
  return (std::to_string(g.id) + ":" + guard_verdict_name(g.v) + ":" + std::to_string(g.mark)).c_str();
}

class Recorder : public VerdictPort {
 public:
  void verdict(uint32_t id, GuardVerdict v, uint32_t mark) override { given.push_back({id, v, mark}); }
  std::vector<Given> given;
};

/// Names bound per key text ("ADDR" or "GUEST>ADDR").
class Names : public BoundNames {
 public:
  bool known(const SetKey& k) const override { return bound_.count(k.text()) > 0; }
  bool bound(const SetKey& k, std::string_view name, uint64_t) const override {
    const auto it = bound_.find(k.text());
    return it != bound_.end() && it->second.count(std::string(name)) > 0;
  }
  bool any(const SetKey& k, uint64_t) const override { return any_.count(k.text()) > 0; }
  std::string names(const SetKey& k) const override {
    std::string r;
    if (const auto it = bound_.find(k.text()); it != bound_.end())
      for (const auto& n : it->second) r += (r.empty() ? "" : ",") + n;
    return r;
  }
  std::map<std::string, std::set<std::string>> bound_;
  std::set<std::string> any_;  ///< keys an sni=any entry vouched for
};

constexpr uint32_t kSeen = 0x00200000, kAllowed = 0x00400000, kRejected = 0x00800000;
constexpr uint32_t kWatch = kSeen | kAllowed | kRejected;
constexpr uint32_t kAnswered = 9000;  ///< an acknowledgment number past the server's first data

struct Seg {
  std::string src = "10.0.0.2", dst = "198.51.100.7";
  uint16_t sport = 40000, dport = 443;
  uint32_t seq = 1000;
  /// The client's acknowledgment number: 7000 while the server has sent nothing (its ISN
  /// 6999), kAnswered once it has.
  uint32_t ack = 7000;
  bool syn = false, rst = false;
  bool synack = false;  ///< the server's SYN-ACK (acknowledging ack)
  Bytes payload;
};

Bytes packet(const Seg& s) {
  IpAddr src, dst;
  REQUIRE(IpAddr::parse(s.src, src));
  REQUIRE(IpAddr::parse(s.dst, dst));
  Bytes p;
  const bool v6 = src.family == AF_INET6;
  const std::size_t l3 = v6 ? 40 : 20, total = l3 + 20 + s.payload.size();
  p.resize(total);
  if (v6) {
    p[0] = 0x60;
    p[4] = uint8_t((total - 40) >> 8);
    p[5] = uint8_t(total - 40);
    p[6] = IPPROTO_TCP;
    p[7] = 64;
    std::memcpy(&p[8], src.bytes, 16);
    std::memcpy(&p[24], dst.bytes, 16);
  } else {
    p[0] = 0x45;
    p[2] = uint8_t(total >> 8);
    p[3] = uint8_t(total);
    p[6] = 0x40;  // don't fragment
    p[8] = 64;
    p[9] = IPPROTO_TCP;
    std::memcpy(&p[12], src.bytes, 4);
    std::memcpy(&p[16], dst.bytes, 4);
  }
  uint8_t* t = &p[l3];
  t[0] = uint8_t(s.sport >> 8);
  t[1] = uint8_t(s.sport);
  t[2] = uint8_t(s.dport >> 8);
  t[3] = uint8_t(s.dport);
  t[4] = uint8_t(s.seq >> 24);
  t[5] = uint8_t(s.seq >> 16);
  t[6] = uint8_t(s.seq >> 8);
  t[7] = uint8_t(s.seq);
  if (!s.syn || s.synack) {
    t[8] = uint8_t(s.ack >> 24);
    t[9] = uint8_t(s.ack >> 16);
    t[10] = uint8_t(s.ack >> 8);
    t[11] = uint8_t(s.ack);
  }
  t[12] = 5 << 4;
  t[13] = uint8_t((s.syn ? 0x02 : 0x10) | (s.synack ? 0x12 : 0) | (s.rst ? 0x04 : 0) |
                  (s.payload.empty() || s.syn ? 0 : 0x08));
  std::copy(s.payload.begin(), s.payload.end(), t + 20);
  return p;
}

struct World {
  Timers0 timers;
  Recorder out;
  Names names;
  GuardOptions o;
  std::unique_ptr<SniGuard> guard;
  uint32_t next_id = 1;
  explicit World(bool host = false, uint32_t max_flows = 4096) {
    o.sni_ports = {443};
    o.http_ports = {80};
    o.marks = {kSeen, kAllowed, kRejected};
    o.max_flows = max_flows;
    o.timeout_ms = 10000;
    o.host = host;
    guard = std::make_unique<SniGuard>(o, names, out, timers);
    names.bound_["198.51.100.7"] = {"allowed.example", "python.example"};
  }
  uint32_t send(const Seg& s, uint32_t mark = 0) {
    const Bytes p = packet(s);
    const uint32_t id = next_id++;
    guard->on_packet(id, mark, p.data(), p.size(), true);  // as a local socket's: no checksum yet
    return id;
  }
  /// A handshake: the server's SYN-ACK (its ISN 6999, acknowledging the client's SYN at
  /// seq 999, so the flight starts at 1000), its verdict checked.
  void handshake(const Seg& s) {
    const uint32_t id = send(from_server(s, 6999, 1000, {}, true));
    REQUIRE(out.given.back() == Given{id, GuardVerdict::Pass, kSeen});
    out.given.clear();
  }
  /// A packet of the server's on the client's connection s: at seq, acknowledging ack.
  static Seg from_server(const Seg& s, uint32_t seq, uint32_t ack, Bytes payload = {}, bool synack = false) {
    Seg r;
    r.src = s.dst;
    r.dst = s.src;
    r.sport = s.dport;
    r.dport = s.sport;
    r.seq = seq;
    r.ack = ack;
    r.syn = r.synack = synack;
    r.payload = std::move(payload);
    return r;
  }
  /// The server's first data (its stream starts at 7000), acknowledging ack.
  uint32_t answer(const Seg& s, uint32_t ack, Bytes payload) { return send(from_server(s, 7000, ack, std::move(payload))); }
};

const std::string kGetAllowed = "GET / HTTP/1.1\r\nHost: allowed.example\r\n\r\n";

Bytes slice(const Bytes& b, std::size_t from, std::size_t to) { return Bytes(b.begin() + long(from), b.begin() + long(to)); }

/// A TLS record of the given type whose body is n bytes of x.
Bytes record(uint8_t type, std::size_t n, uint8_t x = 0xab) {
  Bytes r = {type, 3, 3, uint8_t(n >> 8), uint8_t(n)};
  r.insert(r.end(), n, x);
  return r;
}

}  // namespace

TEST_CASE("a TLS 1.3 ClientHello naming a bound name passes watched (both bits); the server's ServerHello acknowledging all of it allows") {
  World w;
  Seg s;
  w.handshake(s);
  s.payload = curl_hello();
  const uint32_t id = w.send(s, 0x00000005);  // bits of other software's kept as they are
  CHECK(w.out.given == std::vector<Given>{{id, GuardVerdict::Watch, 0x00000005 | kWatch}});
  CHECK(w.guard->counts().allowed == 1);
  const uint32_t end = 1000 + uint32_t(s.payload.size());
  // An acknowledgment short of its last byte: the server may not hold the rest (lost past
  // the guard, or discarded), nothing is confirmed.
  const uint32_t part = w.send(World::from_server(s, 7000, end - 1, testing::server_hello(false)));
  CHECK(w.out.given.back() == Given{part, GuardVerdict::Watch, kWatch});
  // The ServerHello acknowledging all of it: the server is committed to it, allowed for good.
  const uint32_t hello = w.answer(s, end, testing::server_hello(false));
  CHECK(w.out.given.back() == Given{hello, GuardVerdict::Allow, kSeen | kAllowed});
  CHECK(w.guard->counts().allowed == 1);
}

TEST_CASE("a ClientHello naming a name not bound to the destination is rejected") {
  World w;
  w.names.bound_["198.51.100.7"] = {"registry.example"};
  Seg s;
  w.handshake(s);
  s.payload = curl_hello();
  const uint32_t id = w.send(s, kAllowed);  // a forged allowed bit in the packet mark is cleared
  CHECK(w.out.given == std::vector<Given>{{id, GuardVerdict::Reject, kSeen | kRejected}});
  CHECK(w.guard->counts().mismatch == 1);
  CHECK(w.guard->counts().allowed == 0);
}

TEST_CASE("a name bound to one destination does not open another") {
  World w;
  Seg s;
  s.dst = "198.51.100.8";  // vouched, but for other names
  w.names.bound_["198.51.100.8"] = {"other.example"};
  w.handshake(s);
  s.payload = curl_hello();
  w.send(s);
  REQUIRE(w.out.given.size() == 1);
  CHECK(w.out.given[0].v == GuardVerdict::Reject);
}

TEST_CASE("host mode: a name bound for one guest does not let another guest use it") {
  World w(true);
  w.names.bound_.clear();
  w.names.bound_["10.0.0.2>198.51.100.7"] = {"allowed.example"};
  Seg a, b;
  b.src = "10.0.0.3";
  w.handshake(a);
  w.handshake(b);
  a.payload = b.payload = curl_hello();
  w.send(a);
  w.send(b);
  REQUIRE(w.out.given.size() == 2);
  CHECK(w.out.given[0].v == GuardVerdict::Watch);
  // Nothing was vouched for b (the ruleset would not have marked it guarded, and it would
  // not be queued): reset, never allowed.
  CHECK(w.out.given[1].v == GuardVerdict::Reject);
}

TEST_CASE("a ClientHello in two segments is held until whole, then both get the verdict in order") {
  World w;
  Seg s;
  w.handshake(s);
  const Bytes& h = curl_hello();
  Seg a = s, b = s;
  a.payload = slice(h, 0, 100);
  b.seq = 1100;
  b.payload = slice(h, 100, h.size());
  const uint32_t ia = w.send(a);
  CHECK(w.out.given.empty());  // held: nothing reaches the server before the verdict
  const uint32_t ib = w.send(b);
  CHECK(w.out.given == std::vector<Given>{{ia, GuardVerdict::Watch, kWatch}, {ib, GuardVerdict::Watch, kWatch}});
}

TEST_CASE("segments out of order are put back in order") {
  World w;
  Seg s;
  w.handshake(s);
  const Bytes& h = curl_hello();
  Seg a = s, b = s;
  a.payload = slice(h, 0, 200);
  b.seq = 1200;
  b.payload = slice(h, 200, h.size());
  const uint32_t ib = w.send(b);
  CHECK(w.out.given.empty());
  const uint32_t ia = w.send(a);
  CHECK(w.out.given == std::vector<Given>{{ib, GuardVerdict::Watch, kWatch}, {ia, GuardVerdict::Watch, kWatch}});
}

TEST_CASE("a retransmission that rewrites bytes already received is rejected") {
  World w;
  Seg s;
  w.handshake(s);
  const Bytes& h = curl_hello();
  Seg a = s, again = s;
  a.payload = slice(h, 0, 100);
  again.payload = slice(h, 0, 100);
  again.payload[50] ^= 0x20;
  w.send(a);
  w.send(again);
  REQUIRE(w.out.given.size() == 2);
  CHECK(w.out.given[0].v == GuardVerdict::Reject);
  CHECK(w.out.given[1].v == GuardVerdict::Reject);
  CHECK(w.guard->counts().conflict == 1);
}

TEST_CASE("a segment before the flight's start, or past its bound, is rejected") {
  for (const uint32_t seq : {999u, 1000u + uint32_t(kMaxFlightBytes)}) {
    CAPTURE(seq);
    World w;
    Seg s;
    w.handshake(s);
    s.seq = seq;
    s.payload = {0x16, 0x03, 0x01};
    w.send(s);
    REQUIRE(w.out.given.size() == 1);
    CHECK(w.out.given[0].v == GuardVerdict::Reject);
  }
}

TEST_CASE("data on a connection whose handshake the guard never saw is rejected") {
  World w;
  Seg s;
  s.payload = curl_hello();  // a whole, allowed ClientHello: where it starts is still a guess
  w.send(s);
  REQUIRE(w.out.given.size() == 1);
  CHECK(w.out.given[0].v == GuardVerdict::Reject);
  CHECK(w.guard->counts().no_state == 1);
}

TEST_CASE("a first flight that never completes is rejected at the deadline, not before") {
  World w;
  Seg s;
  w.handshake(s);
  s.payload = slice(curl_hello(), 0, 10);
  const uint32_t id = w.send(s);
  w.timers.advance(9999);
  CHECK(w.out.given.empty());
  w.timers.advance(1 + kSweepSlackMs);
  CHECK(w.out.given == std::vector<Given>{{id, GuardVerdict::Reject, kSeen | kRejected}});
  CHECK(w.guard->counts().timeout == 1);
  CHECK(w.guard->flows() == 1);  // lingering decided, for late packets
  w.timers.advance(5000);
  CHECK(w.guard->flows() == 0);
}

TEST_CASE("without server_name, not TLS, or malformed: rejected with the reason counted") {
  World w;
  Seg s;
  w.handshake(s);
  s.payload = {'G', 'E', 'T', ' ', '/', ' '};
  w.send(s);
  CHECK(w.guard->counts().not_tls == 1);
  Seg h;
  h.sport = 40001;
  w.handshake(h);
  h.payload = {0x16, 0x03, 0x01, 0x00, 0x00};  // a TLS handshake record of no bytes
  w.send(h);
  CHECK(w.guard->counts().malformed == 1);
  Seg n;
  n.sport = 40002;
  w.handshake(n);
  n.payload = capture("python_no_sni.bin");
  w.send(n);
  CHECK(w.guard->counts().no_name == 1);
  REQUIRE(w.out.given.size() == 1);  // handshake() clears what came before
  CHECK(w.out.given[0].v == GuardVerdict::Reject);
}

TEST_CASE("later packets of an allowed connection: the server's pass watched, the client's data with no verdict (the conntrack mark decides)") {
  World w;
  Seg s;
  w.handshake(s);
  s.payload = curl_hello();
  w.send(s);
  const uint32_t end = 1000 + uint32_t(s.payload.size());
  w.answer(s, end, testing::server_hello(false));
  REQUIRE(w.out.given.back().v == GuardVerdict::Allow);
  // Queued before the conntrack mark was set (segments written back to back): the
  // server's pass; the client's data gets no verdict bit, never the old Allow (it may be a
  // new connection's whose handshake dnsward did not see: the tenth review): the ruleset's
  // backstop drops it if the conntrack mark still says undecided, and lets it go if allowed.
  const uint32_t srv = w.send(World::from_server(s, 7090, end, Bytes(100, 0x17)));
  CHECK(w.out.given.back() == Given{srv, GuardVerdict::Watch, kWatch});
  Seg more = s;
  more.seq = end;
  more.payload = {1, 2, 3};
  const uint32_t id = w.send(more);
  CHECK(w.out.given.back() == Given{id, GuardVerdict::Pass, kSeen});
}

TEST_CASE("plain HTTP: the Host must be bound; the server's acknowledgment of the request confirms it") {
  World w;
  Seg s, t;
  s.dport = t.dport = 80;
  t.sport = 40002;
  w.handshake(s);
  w.handshake(t);
  const std::string req = "GET / HTTP/1.1\r\nHost: python.example:80\r\nAccept: */*\r\n\r\n";
  s.payload.assign(req.begin(), req.end());
  const std::string other = "GET / HTTP/1.1\r\nHost: other.example\r\n\r\n";
  t.payload.assign(other.begin(), other.end());
  w.send(s);
  w.send(t);
  REQUIRE(w.out.given.size() == 2);
  CHECK(w.out.given[0].v == GuardVerdict::Watch);  // allowed; confirmed once the server has it
  CHECK(w.out.given[1].v == GuardVerdict::Reject);
  CHECK(w.guard->counts().allowed == 1);
  // The server's bare ACK of the whole request (the ruleset queues them on HTTP ports).
  const uint32_t ack = w.send(World::from_server(s, 7000, 1000 + uint32_t(s.payload.size())));
  CHECK(w.out.given.back() == Given{ack, GuardVerdict::Allow, kSeen | kAllowed});
}

TEST_CASE("IPv6 connections are judged the same way") {
  World w;
  w.names.bound_["2001:db8::7"] = {"python.example"};
  Seg s;
  s.src = "2001:db8::2";
  s.dst = "2001:db8::7";
  w.handshake(s);
  s.payload = python_hello();
  w.send(s);
  REQUIRE(w.out.given.size() == 1);
  CHECK(w.out.given[0].v == GuardVerdict::Watch);
}

TEST_CASE("past --queue-maxlen followed connections a new SYN-ACK is dropped, none evicted") {
  World w(false, 2);
  Seg a, b, c;
  b.sport = 40001;
  c.sport = 40002;
  w.handshake(a);
  w.handshake(b);
  const uint32_t id = w.send(World::from_server(c, 6999, 1000, {}, true));
  CHECK(w.out.given.back() == Given{id, GuardVerdict::Drop, 0});
  CHECK(w.guard->counts().full == 1);
  a.payload = curl_hello();
  w.send(a);
  CHECK(w.out.given.back().v == GuardVerdict::Watch);  // the followed one was kept
}

namespace {
/// Host mode with two sandboxes: A at 10.0.0.2, B at 10.0.0.3, each with the front end's
/// names bound.
void two_tenants(World& w) {
  w.names.bound_.clear();
  for (const char* g : {"10.0.0.2", "10.0.0.3"})
    w.names.bound_[std::string(g) + ">198.51.100.7"] = {"allowed.example", "python.example"};
  w.guard->set_tenant_of([](const IpAddr& a) { return a.text() == "10.0.0.2" ? "A" : a.text() == "10.0.0.3" ? "B" : ""; });
}
}  // namespace

TEST_CASE("past --queue-maxlen a sandbox waiting on fewer connections takes the place of the oldest of the one waiting on most") {
  World w(true, 3);
  two_tenants(w);
  std::vector<Seg> a(3);
  for (std::size_t i = 0; i < a.size(); ++i) {
    a[i].sport = uint16_t(40000 + i);
    w.handshake(a[i]);
  }
  // A holds every place: its own next SYN-ACK is dropped, none of its others evicted.
  Seg a4;
  a4.sport = 40003;
  uint32_t id = w.send(World::from_server(a4, 6999, 1000, {}, true));
  CHECK(w.out.given.back() == Given{id, GuardVerdict::Drop, 0});
  // B's is followed: A's oldest gives its place up (full), B's connection is judged.
  Seg b;
  b.src = "10.0.0.3";
  id = w.send(World::from_server(b, 6999, 1000, {}, true));
  CHECK(w.out.given.back() == Given{id, GuardVerdict::Pass, kSeen});
  CHECK(w.guard->counts().full == 2);
  CHECK(w.guard->check_use());
  b.payload = curl_hello();
  id = w.send(b);
  CHECK(w.out.given.back() == Given{id, GuardVerdict::Watch, kWatch});
  a[0].payload = a[1].payload = curl_hello();
  id = w.send(a[0]);  // forgotten: reset, never passed unjudged
  CHECK(w.out.given.back() == Given{id, GuardVerdict::Reject, kSeen | kRejected});
  id = w.send(a[1]);  // kept
  CHECK(w.out.given.back() == Given{id, GuardVerdict::Watch, kWatch});
  // Now B waits on none, A on one: a second of B's takes no place from A (1 <= 0 + 1).
  CHECK(w.guard->check_use());
}

TEST_CASE("first flights held past the byte bound are taken from the sandbox holding most, never from a smaller one") {
  World w(true);
  two_tenants(w);
  const std::size_t each = kMaxFlightBytes - 1;
  const std::size_t fit = kMaxHeldBytes / each;
  std::vector<uint32_t> ids;
  for (std::size_t i = 0; i < fit; ++i) {
    Seg s;
    s.sport = uint16_t(20000 + i);
    w.handshake(s);
    s.seq = 1001;  // one byte after the start: never contiguous, so held
    s.payload.assign(each - 1, 0x16);
    ids.push_back(w.send(s));
  }
  CHECK(w.out.given.empty());
  // B's flight needs room A holds: A's oldest flight is refused (its held packet reset).
  Seg b;
  b.src = "10.0.0.3";
  w.handshake(b);
  b.seq = 1001;
  b.payload.assign(each - 1, 0x16);
  const uint32_t held = w.send(b);
  REQUIRE(w.out.given.size() == 1);
  CHECK(w.out.given[0] == Given{ids.front(), GuardVerdict::Reject, kSeen | kRejected});
  CHECK(w.guard->counts().full == 1);
  CHECK(w.guard->check_use());
  // A's next flight past the bound: A holds most, so it is A's own that is refused.
  Seg a;
  a.sport = 30000;
  w.handshake(a);
  a.seq = 1001;
  a.payload.assign(each - 1, 0x16);
  const uint32_t refused = w.send(a);
  REQUIRE(w.out.given.size() == 1);
  CHECK(w.out.given[0] == Given{refused, GuardVerdict::Reject, kSeen | kRejected});
  CHECK(w.guard->counts().full == 2);
  // B's flight was kept: its first byte completes a ClientHello-less flight, still judged.
  CHECK(held != refused);
  CHECK(w.guard->check_use());
}

TEST_CASE("past --queue-maxlen decided connections the ones waiting for confirmation are forgotten from the sandbox with most") {
  World w(true, 2);
  two_tenants(w);
  Seg b;
  b.src = "10.0.0.3";
  w.handshake(b);
  b.payload = curl_hello();
  w.send(b);  // B's: allowed, waiting for the server (the oldest)
  std::vector<Seg> a(3);
  for (std::size_t i = 0; i < a.size(); ++i) {
    a[i].sport = uint16_t(41000 + i);
    w.handshake(a[i]);
    a[i].payload = curl_hello();
    w.send(a[i]);
  }
  CHECK(w.guard->check_use());
  // A's two oldest were forgotten for A's later ones; B's, older than all, was kept.
  const uint32_t end = 1000 + uint32_t(curl_hello().size());
  uint32_t id = w.answer(b, end, testing::server_hello(false));
  CHECK(w.out.given.back() == Given{id, GuardVerdict::Allow, kSeen | kAllowed});
  id = w.answer(a[2], end, testing::server_hello(false));
  CHECK(w.out.given.back() == Given{id, GuardVerdict::Allow, kSeen | kAllowed});
  id = w.answer(a[0], end, testing::server_hello(false));
  CHECK(w.out.given.back() == Given{id, GuardVerdict::Pass, kSeen});  // no state: nothing to confirm
  CHECK(w.guard->check_use());
}

TEST_CASE("packets that are not TCP to a guarded port pass to the ruleset unjudged") {
  World w;
  Seg s;
  s.dport = 22;
  s.payload = {1, 2, 3};
  const uint32_t id = w.send(s);
  const Bytes junk = {0x45, 0, 0};
  w.guard->on_packet(99, 0, junk.data(), junk.size(), true);
  CHECK(w.out.given == std::vector<Given>{{id, GuardVerdict::Pass, kSeen}, {99, GuardVerdict::Pass, kSeen}});
  CHECK(w.guard->counts().unparsed == 2);
}

TEST_CASE("parse_tcp_packet refuses fragments, short headers and lengths past the buffer") {
  Seg s;
  s.payload = {1, 2, 3};
  Bytes p = packet(s);
  TcpPacket t;
  REQUIRE(parse_tcp_packet(p.data(), p.size(), t));
  CHECK(t.payload_len == 3);
  CHECK(t.sport == 40000);
  CHECK(t.dport == 443);
  CHECK(t.seq == 1000);
  Bytes frag = p;
  frag[6] = 0x20;  // more fragments
  CHECK_FALSE(parse_tcp_packet(frag.data(), frag.size(), t));
  Bytes longer = p;
  longer[3] = uint8_t(p.size() + 1);  // total length past what was received
  CHECK_FALSE(parse_tcp_packet(longer.data(), longer.size(), t));
  Bytes doff = p;
  doff[20 + 12] = 15 << 4;  // TCP header of 60 bytes in a 43-byte packet
  CHECK_FALSE(parse_tcp_packet(doff.data(), doff.size(), t));
  for (std::size_t n = 0; n < p.size() - 3; ++n) CHECK_FALSE(parse_tcp_packet(p.data(), n, t));
}

TEST_CASE("first flights held over every connection are bounded in bytes: past it one is rejected") {
  World w;
  const std::size_t each = kMaxFlightBytes - 1;
  const std::size_t fit = kMaxHeldBytes / each;
  std::vector<uint32_t> ids;
  for (std::size_t i = 0; i <= fit; ++i) {
    Seg s;
    s.sport = uint16_t(20000 + i);
    w.handshake(s);
    s.seq = 1001;  // one byte after the start: never contiguous, so held
    s.payload.assign(each - 1, 0x16);
    ids.push_back(w.send(s));
  }
  REQUIRE(w.out.given.size() == 1);  // handshake() cleared the rest; only the last was refused
  CHECK(w.out.given[0] == Given{ids.back(), GuardVerdict::Reject, kSeen | kRejected});
  CHECK(w.guard->counts().full == 1);
}

TEST_CASE("a SYN with payload on a connection already followed is dropped, never judged as Fast Open") {
  // The review's attack: a raw socket's SYN carrying a bound name's ClientHello on the ports
  // of a connection the kernel opened, so that the socket's own flight would never be queued.
  World w;
  Seg s;
  w.handshake(s);
  Seg syn = s;
  syn.syn = true;
  syn.seq = 12345;
  syn.payload = curl_hello();
  const uint32_t id = w.send(syn);
  CHECK(w.out.given == std::vector<Given>{{id, GuardVerdict::Drop, 0}});
  CHECK(w.guard->counts().tfo == 1);
  CHECK(w.guard->counts().allowed == 0);
}

TEST_CASE("urgent data in a first flight rejects the connection: the server would read other bytes") {
  World w;
  Seg s;
  w.handshake(s);
  s.payload = curl_hello();
  Bytes p = packet(s);
  p[20 + 13] |= 0x20;  // URG
  w.guard->on_packet(77, 0, p.data(), p.size(), true);
  CHECK(w.out.given == std::vector<Given>{{77, GuardVerdict::Reject, kSeen | kRejected}});
  CHECK(w.guard->counts().urgent == 1);
}

TEST_CASE("a queued flight to a destination dnsward has no record of is reset; a server's packet passes") {
  // The ruleset queues only connections it marked guarded at their SYN (to a destination
  // vouched then): no record now means it expired and was purged, or a restart without
  // --state lost it. Nothing is left to judge by; passing it would let the flight out
  // unjudged (the sixth review's expiry attack).
  World w;
  Seg s;
  s.dst = "198.51.100.99";  // no record in the ledger
  w.handshake(s);  // the server's SYN-ACK: nothing to follow either
  s.payload = curl_hello();
  const uint32_t id = w.send(s);
  CHECK(w.out.given == std::vector<Given>{{id, GuardVerdict::Reject, kSeen | kRejected}});
  CHECK(w.guard->counts().no_state == 1);
  CHECK(w.guard->counts().allowed == 0);
  const uint32_t srv = w.answer(s, 1000, testing::server_hello(false));
  CHECK(w.out.given.back() == Given{srv, GuardVerdict::Pass, kSeen});
}

namespace {
// Writes the TCP checksum a sender computes (RFC 9293 3.1), IPv4 or IPv6.
void fill_checksum(Bytes& p) {
  const bool v6 = (p[0] >> 4) == 6;
  const std::size_t l4 = v6 ? 40 : 20;
  p[l4 + 16] = p[l4 + 17] = 0;
  uint64_t sum = 0;
  auto add = [&](const uint8_t* b, std::size_t n) {
    for (std::size_t i = 0; i + 1 < n; i += 2) sum += uint32_t(b[i]) << 8 | b[i + 1];
    if (n & 1) sum += uint32_t(b[n - 1]) << 8;
  };
  add(&p[v6 ? 8 : 12], v6 ? 32 : 8);
  sum += IPPROTO_TCP + (p.size() - l4);
  add(&p[l4], p.size() - l4);
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  const uint16_t c = uint16_t(~sum);
  p[l4 + 16] = uint8_t(c >> 8);
  p[l4 + 17] = uint8_t(c);
}
}  // namespace

TEST_CASE("a segment whose checksum is the sender's and wrong is dropped, never judged; a right one is") {
  // A raw socket can send a bound name's ClientHello with a wrong checksum: the server
  // would discard it and read the bytes sent after, under the verdict (review).
  for (const char* dst : {"198.51.100.7", "2001:db8::7"}) {
    CAPTURE(dst);
    World w;
    w.names.bound_["2001:db8::7"] = {"allowed.example"};
    Seg s;
    s.dst = dst;
    if (std::string(dst).find(':') != std::string::npos) s.src = "2001:db8::2";
    w.handshake(s);
    s.payload = curl_hello();
    Bytes p = packet(s);
    fill_checksum(p);
    REQUIRE(tcp_checksum_ok(p.data(), p.size()));
    Bytes bad = p;
    bad.back() ^= 0x01;
    CHECK_FALSE(tcp_checksum_ok(bad.data(), bad.size()));
    w.guard->on_packet(50, 0, bad.data(), bad.size(), false);
    CHECK(w.out.given.back() == Given{50, GuardVerdict::Drop, 0});
    CHECK(w.guard->counts().checksum == 1);
    w.guard->on_packet(51, 0, p.data(), p.size(), false);
    CHECK(w.out.given.back() == Given{51, GuardVerdict::Watch, kWatch});
  }
}

TEST_CASE("a client's reset gives its held packets their verdict at once (none waits in the kernel's queue)") {
  World w;
  Seg s;
  w.handshake(s);
  s.payload = slice(curl_hello(), 0, 100);
  const uint32_t held = w.send(s);
  CHECK(w.out.given.empty());
  Seg r;
  r.rst = true;
  r.seq = 1100;
  const uint32_t rst = w.send(r);
  CHECK(w.out.given == std::vector<Given>{{held, GuardVerdict::Reject, kSeen | kRejected}, {rst, GuardVerdict::Pass, kSeen}});
}

TEST_CASE("a first flight in more than 16 segments is rejected at the 16th, not held on") {
  World w;
  Seg s;
  w.handshake(s);
  const Bytes& h = curl_hello();
  for (uint32_t i = 0; i < kMaxFlightSegments; ++i) {
    Seg one = s;
    one.seq = 1000 + i;
    one.payload = {h[i]};
    w.send(one);
    if (i + 1 < kMaxFlightSegments) REQUIRE(w.out.given.empty());
  }
  REQUIRE(w.out.given.size() == kMaxFlightSegments);
  CHECK(w.out.given.back().v == GuardVerdict::Reject);
  CHECK(w.guard->counts().too_large == 1);
}

TEST_CASE("a new handshake on the ports of a decided connection is judged anew, not given the old verdict") {
  // Within the linger of an allowed connection, the same four-tuple opens again: the new
  // flight names a name no longer bound, and must not ride the old Allow.
  World w;
  Seg s;
  w.handshake(s);
  s.payload = curl_hello();
  w.send(s);
  w.answer(s, 1000 + uint32_t(s.payload.size()), testing::server_hello(false));
  REQUIRE(w.out.given.back().v == GuardVerdict::Allow);
  w.names.bound_["198.51.100.7"] = {"registry.example"};
  Seg again;  // the server's SYN-ACK of the new handshake says where its flight starts
  const uint32_t synack = w.send(World::from_server(again, 8999, 5000, {}, true));
  CHECK(w.out.given.back() == Given{synack, GuardVerdict::Pass, kSeen});
  again.seq = 5000;
  again.ack = 9000;
  again.payload = curl_hello();
  const uint32_t id = w.send(again);
  CHECK(w.out.given.back() == Given{id, GuardVerdict::Reject, kSeen | kRejected});
  CHECK(w.guard->counts().mismatch == 1);
}

TEST_CASE("a bare ACK of a rejected connection is rejected too") {
  World w;
  w.names.bound_["198.51.100.7"] = {"registry.example"};
  Seg s;
  w.handshake(s);
  s.payload = curl_hello();
  w.send(s);
  REQUIRE(w.out.given.back().v == GuardVerdict::Reject);
  Seg ack;
  ack.seq = 1000 + uint32_t(curl_hello().size());
  const uint32_t id = w.send(ack);
  CHECK(w.out.given.back() == Given{id, GuardVerdict::Reject, kSeen | kRejected});
}

TEST_CASE("GuardOptions come from the options: ports, marks, follow cap and deadline") {
  const ParseOutcome r = parse_serve_config({"--sni-guard", "--sni-ports", "8443", "--http-ports", "8080",
                                             "--guard-marks", "0x70000000", "--queue-maxlen", "100",
                                             "--first-flight-timeout", "500", "--upstream", "192.0.2.1"});
  REQUIRE_MESSAGE(r.config, r.error);
  const GuardOptions o = GuardOptions::from(*r.config);
  CHECK(o.sni_ports == std::vector<uint16_t>{8443});
  CHECK(o.http_ports == std::vector<uint16_t>{8080});
  CHECK(o.marks.seen == 0x10000000u);
  CHECK(o.marks.allowed == 0x20000000u);
  CHECK(o.marks.rejected == 0x40000000u);
  CHECK(o.max_flows == 100);
  CHECK(o.timeout_ms == 500);
  CHECK_FALSE(o.host);
}

TEST_CASE("--sni-guard refuses a port in both lists, --no-nft, and with --host guard marks on --host-mark's bit") {
  auto refused = [](std::vector<std::string> args, const char* why) {
    args.push_back("--upstream");
    args.push_back("192.0.2.1");
    const ParseOutcome r = parse_serve_config(args);
    CAPTURE(why);
    CHECK_FALSE(r.config);
    CHECK(r.error.find(why) != std::string::npos);
  };
  refused({"--sni-guard", "--sni-ports", "443", "--http-ports", "443"}, "is in both --sni-ports and --http-ports");
  refused({"--sni-guard", "--no-nft"}, "--sni-guard needs the nftables hook");
  refused({"--sni-guard", "--guard-marks", "0x3"}, "exactly three bits");
  // Prerouting ORs the --host-mark bit into every sandbox packet: as a guard bit it would
  // read as judged (never queued) or as a verdict.
  refused({"--sni-guard", "--host", "--listen", "0.0.0.0:53", "--host-mark", "22"},
          "--guard-marks 0x00e00000 includes bit 22 of --host-mark");
  refused({"--sni-guard", "--host", "--listen", "0.0.0.0:53", "--guard-marks", "0x00700000"},
          "--guard-marks 0x00700000 includes bit 20 of --host-mark");
}

TEST_CASE("serve --host --sni-guard starts the guard with (guest . destination) keys") {
  const ParseOutcome r = parse_serve_config({"--sni-guard", "--host", "--listen", "0.0.0.0:53", "--upstream",
                                             "192.0.2.1"});
  REQUIRE_MESSAGE(r.config, r.error);
  CHECK(GuardOptions::from(*r.config).host);
  // Disjoint bits are fine, and nft-rules takes the same options.
  CHECK(parse_serve_config({"--sni-guard", "--host", "--listen", "0.0.0.0:53", "--upstream", "192.0.2.1",
                            "--host-mark", "3", "--guard-marks", "0x00000007"})
            .config);
  CHECK(parse_nft_rules({"--sni-guard", "--host", "--listen", "0.0.0.0:53"}, "/nonexistent").config);
  CHECK_FALSE(parse_nft_rules({"--sni-guard", "--host", "--listen", "0.0.0.0:53", "--host-mark", "21"},
                              "/nonexistent")
                  .config);
}

TEST_CASE("an element an sni=any entry vouched for lets any first flight through, named or not") {
  World w;
  w.names.bound_["198.51.100.7"] = {"allowed.example"};
  w.names.any_ = {"198.51.100.7"};
  Seg s, h;
  h.sport = 40001;
  w.handshake(s);
  w.handshake(h);
  s.payload = capture("python_no_sni.bin");
  const std::string junk = "SSH-2.0-OpenSSH\r\n";
  h.payload.assign(junk.begin(), junk.end());
  w.send(s);
  w.send(h);
  REQUIRE(w.out.given.size() == 2);
  CHECK(w.out.given[0].v == GuardVerdict::Allow);
  CHECK(w.out.given[1].v == GuardVerdict::Allow);
}

TEST_CASE("where the flight starts is the server's SYN-ACK's to say: a client's SYN moves nothing, another SYN-ACK rejects the connection") {
  // The second review's attack: a raw socket's bare SYN at ISN - k moved the start k bytes
  // before the real stream; k bytes the server discards as old then headed the flight judged.
  {
    World w;
    Seg s;
    w.handshake(s);  // acknowledging 1000: the flight starts there
    Seg syn = s;
    syn.syn = true;
    syn.seq = 899;
    const uint32_t id = w.send(syn);
    CHECK(w.out.given == std::vector<Given>{{id, GuardVerdict::Pass, kSeen}});
    // The same SYN-ACK again passes, and the flight still starts at 1000: bytes before it
    // reject the connection.
    w.handshake(s);
    s.seq = 900;
    s.payload = Bytes(100, 0x16);
    const uint32_t before = w.send(s);
    CHECK(w.out.given.back() == Given{before, GuardVerdict::Reject, kSeen | kRejected});
  }
  // A second SYN-ACK with another ISN, for a SYN with another: what a server in SYN-cookie
  // mode sends a raw socket's SYN, its cookie d further for an ISN d further (the ninth
  // review). The connection is rejected: its reset is what stops the ACK that would open the
  // server's connection there, which is never queued (conntrack learnt the cookie from this
  // very SYN-ACK). No client's kernel answers one SYN-ACK with another SYN.
  World w;
  Seg s;
  w.handshake(s);
  s.payload = Bytes(curl_hello().begin(), curl_hello().begin() + 100);  // a flight not whole yet
  const uint32_t held = w.send(s);
  const uint32_t other = w.send(World::from_server(s, 6999 + 40, 1000 + 40, {}, true));
  CHECK(w.out.given == std::vector<Given>{{held, GuardVerdict::Reject, kSeen | kRejected},
                                          {other, GuardVerdict::Reject, kSeen | kRejected}});
  CHECK(w.guard->counts().conflict == 1);
}

TEST_CASE("an urgent pointer on a bare ACK before the verdict rejects the connection (it may point into later bytes)") {
  World w;
  Seg s;
  w.handshake(s);
  Bytes p = packet(s);  // a bare ACK
  p[20 + 13] |= 0x20;   // URG
  p[20 + 18] = 0;
  p[20 + 19] = 50;      // urgent pointer: 50 bytes on, in data not sent yet
  w.guard->on_packet(88, 0, p.data(), p.size(), true);
  CHECK(w.out.given == std::vector<Given>{{88, GuardVerdict::Reject, kSeen | kRejected}});
  CHECK(w.guard->counts().urgent == 1);
  s.payload = curl_hello();
  w.send(s);
  CHECK(w.out.given.back().v == GuardVerdict::Reject);  // the connection stays rejected
}

// A TLS 1.3 server may answer the ClientHello with a HelloRetryRequest and read a second one
// (RFC 8446 4.1.4); OpenSSL's server takes another server_name there (the second review's
// bypass, test_sni_attack's HRR client). The guard follows the connection to the client's
// next flight.
namespace {
/// A TLS 1.3 ClientHello (supported_versions 1.3 and a key share) naming host, in one record.
Bytes tls13_hello(const std::string& host, std::vector<testing::Ext> more = {}) {
  std::vector<testing::Ext> e = {testing::sni_ext(host), testing::Ext{43, {2, 0x03, 0x04}}};
  e.insert(e.end(), more.begin(), more.end());
  return testing::records(testing::hello_message(e));
}
Bytes tls12_hello(const std::string& host) {
  return testing::records(testing::hello_message({testing::sni_ext(host)}));
}
Bytes ccs() { return {20, 3, 3, 0, 1, 1}; }
Bytes cat(Bytes a, const Bytes& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}
/// The connection of w after handshake, a first ClientHello naming allowed.example (given
/// Watch) and the server's HelloRetryRequest acknowledging it (Watch: the server reads a
/// second ClientHello); returns the sequence number after the first. The server's next
/// byte is 7000 + the HelloRetryRequest's size (kAfterHrr).
uint32_t watched(World& w, Seg& s) {
  w.handshake(s);
  s.payload = tls13_hello("allowed.example");
  const uint32_t id = w.send(s);
  const uint32_t end = 1000 + uint32_t(s.payload.size());
  const uint32_t hrr = w.answer(s, end, testing::server_hello(true));
  REQUIRE(w.out.given == std::vector<Given>{{id, GuardVerdict::Watch, kWatch}, {hrr, GuardVerdict::Watch, kWatch}});
  w.out.given.clear();
  return end;
}
const uint32_t kAfterHrr = 7000 + uint32_t(testing::server_hello(true).size());
}  // namespace

TEST_CASE("after a HelloRetryRequest a second ClientHello naming another name is rejected, even a bound one") {
  World w;  // python.example is bound to the destination too
  for (const std::string second : {"python.example", "other.example"}) {
    CAPTURE(second);
    Seg s;
    s.sport = second == "other.example" ? 40001 : 40000;
    const uint32_t at = watched(w, s);
    s.seq = at;
    s.payload = cat(ccs(), tls13_hello(second));  // as OpenSSL sends it: CCS first (RFC 8446 D.4)
    const uint32_t id = w.send(s);
    CHECK(w.out.given == std::vector<Given>{{id, GuardVerdict::Reject, kSeen | kRejected}});
    w.out.given.clear();
  }
  CHECK(w.guard->counts().mismatch == 2);
  CHECK(w.guard->counts().allowed == 2);  // the first ClientHellos
}

TEST_CASE("a second ClientHello repeating the first one's name is allowed, confirmed only by an answer to it") {
  World w;
  Seg s;
  s.seq = watched(w, s);
  const Bytes second = cat(ccs(), tls13_hello("allowed.example"));
  s.payload = second;
  const uint32_t id = w.send(s);
  CHECK(w.out.given == std::vector<Given>{{id, GuardVerdict::Watch, kWatch}});
  const uint32_t end2 = s.seq + uint32_t(second.size());
  // The server's change_cipher_spec after its HelloRetryRequest (RFC 8446 D.4) acknowledges
  // the first ClientHello only: nothing confirmed.
  const uint32_t srv_ccs = w.send(World::from_server(s, kAfterHrr, s.seq, ccs()));
  CHECK(w.out.given.back() == Given{srv_ccs, GuardVerdict::Watch, kWatch});
  // Lost past the guard and resent rewritten (the fourth review): rejected.
  World w2;
  Seg t;
  t.seq = watched(w2, t);
  t.payload = second;
  w2.send(t);
  Seg rewritten = t;
  rewritten.payload = cat(ccs(), tls13_hello("allowed.exampl0"));
  const uint32_t bad = w2.send(rewritten);
  CHECK(w2.out.given.back() == Given{bad, GuardVerdict::Reject, kSeen | kRejected});
  // The ServerHello acknowledging the second: allowed for good.
  const uint32_t hello = w.send(World::from_server(s, kAfterHrr + 6, end2, testing::server_hello(false)));
  CHECK(w.out.given.back() == Given{hello, GuardVerdict::Allow, kSeen | kAllowed});
  CHECK(w.guard->counts().allowed == 1);
}

TEST_CASE("a change_cipher_spec sent alone passes watched; the second ClientHello after it is still judged") {
  World w;
  Seg s;
  const uint32_t at = watched(w, s);
  s.seq = at;
  s.payload = ccs();
  const uint32_t id = w.send(s);
  CHECK(w.out.given == std::vector<Given>{{id, GuardVerdict::Watch, kWatch}});
  s.seq = at + 6;
  s.payload = tls13_hello("other.example");
  const uint32_t bad = w.send(s);
  CHECK(w.out.given.back() == Given{bad, GuardVerdict::Reject, kSeen | kRejected});
  CHECK(w.guard->counts().mismatch == 1);
}

TEST_CASE("a second ClientHello split over segments is held until whole, then judged") {
  World w;
  Seg s;
  const uint32_t at = watched(w, s);
  const Bytes next = cat(ccs(), tls13_hello("other.example"));
  Seg a = s, b = s;
  a.seq = at;
  a.payload = slice(next, 0, 30);
  b.seq = at + 30;
  b.payload = slice(next, 30, next.size());
  const uint32_t ia = w.send(a);
  CHECK(w.out.given.empty());  // part of a ClientHello never reaches the server unjudged
  const uint32_t ib = w.send(b);
  CHECK(w.out.given == std::vector<Given>{{ia, GuardVerdict::Reject, kSeen | kRejected},
                                         {ib, GuardVerdict::Reject, kSeen | kRejected}});
}

TEST_CASE("after a HelloRetryRequest only a ClientHello is read: anything else rejects the connection") {
  struct Case {
    const char* what;
    Bytes next;
  };
  const Case cases[] = {
      {"an encrypted record", record(23, 53)},
      {"CCS, then an encrypted record", cat(ccs(), record(23, 53))},
      {"another handshake message", cat(record(22, 37, 0x10), ccs())},
      {"a plaintext alert", record(21, 2)},
      {"two change_cipher_spec records", cat(ccs(), ccs())},
      {"a change_cipher_spec of two bytes", record(20, 2, 1)},
      {"a zero-length handshake record", record(22, 0)},
      {"a record of an unknown type", record(24, 3)},
      {"a handshake record beginning a malformed ClientHello", record(22, 40, 0x01)},
      {"a ClientHello offering 0-RTT", tls13_hello("allowed.example", {testing::Ext{42, {}}})},
  };
  for (const Case& c : cases) {
    CAPTURE(std::string(c.what));
    World w;
    Seg s;
    s.seq = watched(w, s);
    s.payload = c.next;
    const uint32_t id = w.send(s);
    CHECK(w.out.given == std::vector<Given>{{id, GuardVerdict::Reject, kSeen | kRejected}});
  }
}

TEST_CASE("after a TLS 1.3 ClientHello the server's first record decides: a ServerHello allows, an alert waits, anything else rejects") {
  struct Case {
    const char* what;
    Bytes answer;
    GuardVerdict v;
  };
  const Bytes sh = testing::server_hello(false);
  Bytes short_hello = record(22, 20, 0x02);  // a ServerHello record too short for its random
  const Case cases[] = {
      {"a ServerHello", sh, GuardVerdict::Allow},
      {"a HelloRetryRequest", testing::server_hello(true), GuardVerdict::Watch},
      {"an alert", record(21, 2), GuardVerdict::Watch},
      {"an encrypted record", record(23, 40), GuardVerdict::Reject},
      {"another handshake message", record(22, 40, 0x0b), GuardVerdict::Reject},
      {"a ServerHello whose random is not in its first record", short_hello, GuardVerdict::Reject},
      {"the first 20 bytes of a ServerHello", slice(sh, 0, 20), GuardVerdict::Watch},
  };
  for (const Case& c : cases) {
    CAPTURE(std::string(c.what));
    World w;
    Seg s;
    w.handshake(s);
    s.payload = tls13_hello("allowed.example");
    w.send(s);
    const uint32_t id = w.answer(s, 1000 + uint32_t(s.payload.size()), c.answer);
    CHECK(w.out.given.back().id == id);
    CHECK(w.out.given.back().v == c.v);
  }
  // The rest of a ServerHello that came in parts: allowed once its random is read.
  World w;
  Seg s;
  w.handshake(s);
  s.payload = tls13_hello("allowed.example");
  w.send(s);
  const uint32_t end = 1000 + uint32_t(s.payload.size());
  w.answer(s, end, slice(sh, 0, 20));
  const uint32_t rest = w.send(World::from_server(s, 7020, end, slice(sh, 20, sh.size())));
  CHECK(w.out.given.back() == Given{rest, GuardVerdict::Allow, kSeen | kAllowed});
}

TEST_CASE("a TLS 1.2 ClientHello naming a bound name is allowed by the server's ServerHello; a first record that is no TLS answer rejects") {
  for (const bool tls_answer : {true, false}) {
    CAPTURE(tls_answer);
    World w;
    Seg s;
    w.handshake(s);
    s.payload = tls12_hello("allowed.example");
    const uint32_t id = w.send(s);
    CHECK(w.out.given == std::vector<Given>{{id, GuardVerdict::Watch, kWatch}});
    CHECK(w.guard->counts().allowed == 1);
    // TLS 1.2 has no HelloRetryRequest, but its server answers with a ServerHello (or an
    // alert) too: anything else is no TLS server's answer to the ClientHello judged.
    const uint32_t answer = w.answer(s, 1000 + uint32_t(s.payload.size()),
                                     tls_answer ? testing::server_hello(false) : record(23, 40));
    CHECK(w.out.given.back() == (tls_answer ? Given{answer, GuardVerdict::Allow, kSeen | kAllowed}
                                            : Given{answer, GuardVerdict::Reject, kSeen | kRejected}));
    CHECK(w.guard->counts().not_tls == (tls_answer ? 0 : 1));
  }
}

TEST_CASE("a server packet that does not continue the stream of the SYN-ACK seen is dropped and confirms nothing (SYN cookies)") {
  // The ninth review: a server in SYN-cookie mode opens its connection at any ISN whose
  // cookie checks, predictable from the one seen; it reads the flight from d bytes in and
  // acknowledges all of it, from a stream of its own that starts d past the SYN-ACK seen.
  for (const uint16_t port : {uint16_t(443), uint16_t(80)}) {
    CAPTURE(port);
    World w;
    Seg s;
    s.dport = port;
    w.handshake(s);
    s.payload = port == 443 ? tls12_hello("allowed.example") : Bytes(kGetAllowed.begin(), kGetAllowed.end());
    w.send(s);
    const uint32_t end = 1000 + uint32_t(s.payload.size());
    const uint32_t d = 40;  // the shifted connection's ISN, and so its every number, is d further
    const Bytes answer = port == 443 ? Bytes(testing::server_hello(false)) : Bytes{'H', 'T', 'T', 'P'};
    uint32_t id = w.send(World::from_server(s, 7000 + d, end, answer));
    CHECK(w.out.given.back() == Given{id, GuardVerdict::Drop, 0});
    id = w.send(World::from_server(s, 7000 + d, end));  // a bare ACK of it all
    CHECK(w.out.given.back() == Given{id, GuardVerdict::Drop, 0});
    CHECK(w.guard->counts().allowed == 1);
    // The server of the SYN-ACK seen: its answer from srv_start confirms.
    id = w.send(World::from_server(s, 7000, end, answer));
    CHECK(w.out.given.back() == Given{id, GuardVerdict::Allow, kSeen | kAllowed});
  }
}

TEST_CASE("a client's acknowledgment of server bytes never seen sent rejects its connection (a SYN cookie's ACK)") {
  // The ninth review: the bare ACK that opens a cookie server's connection d bytes into the
  // flight acknowledges the cookie, d past the SYN-ACK seen; or data does. Before the flight
  // is judged, while it waits for confirmation, on TLS and HTTP ports, with and without data.
  for (const uint16_t port : {uint16_t(443), uint16_t(80)})
    for (const bool confirming : {false, true})
      for (const bool data : {false, true}) {
        CAPTURE(port);
        CAPTURE(confirming);
        CAPTURE(data);
        World w;
        Seg s;
        s.dport = port;
        w.handshake(s);
        const Bytes flight = port == 443 ? tls12_hello("allowed.example") : Bytes(kGetAllowed.begin(), kGetAllowed.end());
        Seg ok = s;  // the handshake's ACK: acknowledges the SYN-ACK seen, and passes
        const uint32_t handshake = w.send(ok);
        CHECK(w.out.given.back() == Given{handshake, GuardVerdict::Pass, kSeen});
        Seg bad = s;
        bad.ack = 7000 + 40;
        if (confirming) {
          s.payload = flight;
          w.send(s);
          REQUIRE(w.out.given.back().v == GuardVerdict::Watch);
          bad.seq = 1000 + uint32_t(flight.size());
          if (data) bad.payload = {'x'};
        } else if (data) {
          bad.payload = flight;
        }
        const uint32_t id = w.send(bad);
        CHECK(w.out.given.back() == Given{id, GuardVerdict::Reject, kSeen | kRejected});
        CHECK(w.guard->counts().unsent_ack == 1);
        CHECK(w.guard->check_use());
      }
}

TEST_CASE("the server's bytes and its FIN seen are what the client may acknowledge") {
  World w;
  Seg s;
  s.dport = 80;
  w.handshake(s);
  s.payload.assign(kGetAllowed.begin(), kGetAllowed.end());
  w.send(s);
  const uint32_t end = 1000 + uint32_t(s.payload.size());
  // The server acknowledges part of it and sends 4 bytes and its FIN (a sequence number).
  Seg fin = World::from_server(s, 7000, end - 1, {'H', 'T', 'T', 'P'});
  w.send(fin);
  Seg f2 = World::from_server(s, 7004, end - 1);
  const Bytes p = packet(f2);
  Bytes finp = p;
  finp[20 + 13] |= 0x01;  // FIN
  w.guard->on_packet(w.next_id++, 0, finp.data(), finp.size(), true);
  Seg ack = s;
  ack.seq = end;
  ack.payload.clear();
  ack.ack = 7005;  // its 4 bytes and its FIN
  const uint32_t id = w.send(ack);
  CHECK(w.out.given.back() == Given{id, GuardVerdict::Watch, kWatch});
  CHECK(w.guard->counts().unsent_ack == 0);
  ack.ack = 7006;  // one past
  const uint32_t past = w.send(ack);
  CHECK(w.out.given.back() == Given{past, GuardVerdict::Reject, kSeen | kRejected});
}

namespace {
const std::string kGet = "GET / HTTP/1.1\r\nHost: python.example\r\n\r\n";
/// A plain HTTP connection of w, handshake done, with kGet as its payload (not sent).
Seg http_get(World& w) {
  Seg s;
  s.dport = 80;
  w.handshake(s);
  s.payload.assign(kGet.begin(), kGet.end());
  return s;
}
}  // namespace

// The third review: the guard's verdict must hold for what the server reads, though the
// judged packets may be lost past the guard (an IP TTL of 1 drops them at the next router)
// and the client's kernel resends from a buffer a zero-copy send or sendfile() lets it
// rewrite. Until the server answered, an allowed connection stays watched.
TEST_CASE("an allowed flight resent with other bytes before the server answered is rejected; resent the same, it passes") {
  World w;
  Seg s = http_get(w);
  const uint32_t first = w.send(s);
  CHECK(w.out.given == std::vector<Given>{{first, GuardVerdict::Watch, kWatch}});
  const uint32_t same = w.send(s);  // lost past the guard, resent
  CHECK(w.out.given.back() == Given{same, GuardVerdict::Watch, kWatch});
  Seg part = s;  // a resend of the second half only, in another segment
  part.seq += 10;
  part.payload.erase(part.payload.begin(), part.payload.begin() + 10);
  w.send(part);
  CHECK(w.out.given.back().v == GuardVerdict::Watch);
  Seg rewritten = s;
  const std::string other = "GET / HTTP/1.1\r\nHost: pirate.example\r\n\r\n";  // same length
  REQUIRE(other.size() == kGet.size());
  rewritten.payload.assign(other.begin(), other.end());
  const uint32_t bad = w.send(rewritten);
  CHECK(w.out.given.back() == Given{bad, GuardVerdict::Reject, kSeen | kRejected});
  CHECK(w.guard->counts().conflict == 1);
  const uint32_t after = w.send(s);  // the connection stays rejected
  CHECK(w.out.given.back() == Given{after, GuardVerdict::Reject, kSeen | kRejected});
  // Bytes before the flight's start (never sent by the client's kernel) reject it too.
  World w2;
  Seg t;
  t.dport = 80;
  w2.handshake(t);
  t.payload = s.payload;
  w2.send(t);
  t.seq = 990;
  const uint32_t early = w2.send(t);
  CHECK(w2.out.given.back() == Given{early, GuardVerdict::Reject, kSeen | kRejected});
}

TEST_CASE("a SYN of the same handshake on a connection waiting for confirmation keeps what a resend must repeat") {
  World w;
  Seg s = http_get(w);
  w.send(s);
  Seg syn;
  syn.dport = 80;
  syn.syn = true;
  syn.seq = 999;
  const uint32_t id = w.send(syn);
  CHECK(w.out.given.back() == Given{id, GuardVerdict::Pass, kSeen});
  Seg rewritten = s;  // other bytes, though naming a bound name: not what was judged
  const std::string other = "PUT / HTTP/1.1\r\nHost: python.example\r\n\r\n";
  rewritten.payload.assign(other.begin(), other.end());
  const uint32_t bad = w.send(rewritten);
  CHECK(w.out.given.back() == Given{bad, GuardVerdict::Reject, kSeen | kRejected});
}

TEST_CASE("an allowed request is confirmed by the server's acknowledgment of all of it, then allowed for good") {
  World w;
  Seg s = http_get(w);
  w.send(s);
  // Bytes past those judged are the client's own (a body), watched until then.
  Seg more = s;
  more.seq += uint32_t(s.payload.size());
  more.payload = {'x'};
  w.send(more);
  CHECK(w.out.given.back().v == GuardVerdict::Watch);
  const uint32_t end = 1000 + uint32_t(s.payload.size());
  const uint32_t short_of_it = w.send(World::from_server(s, 7000, end - 1));
  CHECK(w.out.given.back() == Given{short_of_it, GuardVerdict::Watch, kWatch});
  const uint32_t confirmed = w.send(World::from_server(s, 7000, end));
  CHECK(w.out.given.back() == Given{confirmed, GuardVerdict::Allow, kSeen | kAllowed});
  // After it, late client data gets no verdict bit: the conntrack mark decides.
  Seg rewritten = s;
  rewritten.payload.assign(rewritten.payload.size(), 'z');
  const uint32_t late = w.send(rewritten);
  CHECK(w.out.given.back() == Given{late, GuardVerdict::Pass, kSeen});
}

TEST_CASE("a segment the server discards (PAWS, a TTL of 1) cannot stand in for the one it reads") {
  // The third review: a raw socket's ClientHello naming a bound name, which the server
  // discards, judged in place of the socket's own naming another. The server never
  // acknowledges it; the socket's own ClientHello over the same bytes disagrees.
  World w;
  Seg s;
  w.handshake(s);
  s.payload = tls13_hello("allowed.example");
  w.send(s);
  CHECK(w.out.given.back().v == GuardVerdict::Watch);
  Seg real = s;
  real.payload = tls13_hello("allowed.exampl0");  // the same length: other bytes, same range
  REQUIRE(real.payload.size() == s.payload.size());
  const uint32_t id = w.send(real);
  CHECK(w.out.given.back() == Given{id, GuardVerdict::Reject, kSeen | kRejected});
  CHECK(w.guard->counts().conflict == 1);
  // And one that starts later, over bytes never judged: the server cannot acknowledge
  // past the gap before them, and they are rejected when they come.
  World w2;
  Seg t;
  w2.handshake(t);
  t.seq = 1100;
  t.payload = tls13_hello("allowed.example");
  w2.send(t);
  const uint32_t gap = w2.send(World::from_server(t, 7000, 1000));  // the server has nothing
  CHECK(w2.out.given.back().id == gap);
  CHECK(w2.out.given.back().v != GuardVerdict::Allow);
}

TEST_CASE("the server's reset ends the connection: the client's next data is reset") {
  World w;
  Seg s = http_get(w);
  w.send(s);
  Seg rst = World::from_server(s, 7000, 1000);
  rst.rst = true;
  const uint32_t id = w.send(rst);
  CHECK(w.out.given.back() == Given{id, GuardVerdict::Pass, kSeen});
  CHECK(w.guard->flows() == 0);
  s.seq += uint32_t(s.payload.size());
  const uint32_t next = w.send(s);
  CHECK(w.out.given.back() == Given{next, GuardVerdict::Reject, kSeen | kRejected});
}

TEST_CASE("a packet that acknowledges the server's data but rewrites bytes judged is rejected, not allowed") {
  World w;
  Seg s = http_get(w);
  w.send(s);
  Seg rewritten = s;  // found by the fuzz target's oracle
  const std::string other = "PUT / HTTP/1.1\r\nHost: python.example\r\n\r\nx";
  rewritten.payload.assign(other.begin(), other.end());
  rewritten.ack = kAnswered;
  const uint32_t bad = w.send(rewritten);
  CHECK(w.out.given.back() == Given{bad, GuardVerdict::Reject, kSeen | kRejected});
}

TEST_CASE("urgent data on a connection waiting for confirmation rejects it for good") {
  World w;
  Seg s = http_get(w);
  w.send(s);
  Seg ack = s;
  ack.seq += uint32_t(s.payload.size());
  ack.payload.clear();
  Bytes p = packet(ack);  // a bare ACK with an urgent pointer (found by the fuzz target)
  p[20 + 13] |= 0x20;
  p[20 + 19] = 5;
  w.guard->on_packet(77, 0, p.data(), p.size(), true);
  CHECK(w.out.given.back() == Given{77, GuardVerdict::Reject, kSeen | kRejected});
  Seg more = s;  // the server's answer acknowledged: still rejected
  more.seq += uint32_t(s.payload.size());
  more.payload = {'x'};
  more.ack = kAnswered;
  w.send(more);
  CHECK(w.out.given.back().v == GuardVerdict::Reject);
}

TEST_CASE("an urgent SYN on the ports of an allowed connection is dropped, never given its verdict") {
  World w;
  Seg s;
  w.handshake(s);
  s.payload = curl_hello();
  w.send(s);
  w.answer(s, 1000 + uint32_t(s.payload.size()), testing::server_hello(false));
  REQUIRE(w.out.given.back().v == GuardVerdict::Allow);
  Seg syn;  // another connection on the same ports (found by the fuzz target)
  syn.syn = true;
  syn.seq = 4999;
  Bytes p = packet(syn);
  p[20 + 13] |= 0x20;  // URG
  w.guard->on_packet(66, 0, p.data(), p.size(), true);
  CHECK(w.out.given.back() == Given{66, GuardVerdict::Drop, 0});
}

TEST_CASE("an allowed connection never confirmed is forgotten at the deadline; its next data is reset") {
  World w;
  Seg s = http_get(w);
  w.send(s);
  CHECK(w.guard->flows() == 1);
  w.timers.advance(kConfirmWindowMs - 1);
  CHECK(w.guard->flows() == 1);  // not a millisecond early
  w.timers.advance(1 + kSweepSlackMs);
  CHECK(w.guard->flows() == 0);
  s.ack = kAnswered;
  s.seq += uint32_t(s.payload.size());
  const uint32_t id = w.send(s);
  CHECK(w.out.given.back() == Given{id, GuardVerdict::Reject, kSeen | kRejected});
  CHECK(w.guard->counts().no_state == 1);
}

TEST_CASE("a TLS 1.3 ClientHello offering 0-RTT data is rejected: its records could hide a second ClientHello") {
  World w;
  Seg s;
  w.handshake(s);
  s.payload = tls13_hello("allowed.example", {testing::Ext{42, {}}});
  const uint32_t id = w.send(s);
  CHECK(w.out.given == std::vector<Given>{{id, GuardVerdict::Reject, kSeen | kRejected}});
  CHECK(w.guard->counts().early_data == 1);
}

TEST_CASE("a second ClientHello in the first one's record is rejected, not left for the server to read") {
  World w;
  Seg s;
  w.handshake(s);
  Bytes msg = testing::hello_message({testing::sni_ext("allowed.example"), testing::Ext{43, {2, 0x03, 0x04}}});
  const Bytes second = testing::hello_message({testing::sni_ext("other.example"), testing::Ext{43, {2, 0x03, 0x04}}});
  msg.insert(msg.end(), second.begin(), second.end());
  s.payload = testing::records(msg);
  const uint32_t id = w.send(s);
  CHECK(w.out.given == std::vector<Given>{{id, GuardVerdict::Reject, kSeen | kRejected}});
  CHECK(w.guard->counts().malformed == 1);
}

TEST_CASE("TLS bytes after the ClientHello before the server's answer reject the connection (read unjudged after a HelloRetryRequest)") {
  World w;
  Seg s;
  w.handshake(s);
  s.payload = cat(tls13_hello("allowed.example"), cat(ccs(), tls13_hello("other.example")));
  const uint32_t id = w.send(s);
  CHECK(w.out.given == std::vector<Given>{{id, GuardVerdict::Reject, kSeen | kRejected}});
  CHECK(w.guard->counts().early_data == 1);
  // The same sent after the ClientHello was judged, in a segment of its own.
  World w2;
  Seg t;
  w2.handshake(t);
  t.payload = tls13_hello("allowed.example");
  w2.send(t);
  CHECK(w2.out.given.back().v == GuardVerdict::Watch);
  t.seq = 1000 + uint32_t(t.payload.size());
  t.payload = cat(ccs(), tls13_hello("other.example"));
  const uint32_t bad = w2.send(t);
  CHECK(w2.out.given.back() == Given{bad, GuardVerdict::Reject, kSeen | kRejected});
  CHECK(w2.guard->counts().early_data == 1);
}

TEST_CASE("a watched connection's ClientHello sent again passes again at once; rewritten, it is rejected") {
  World w;
  Seg s;
  const uint32_t at = watched(w, s);
  const uint32_t again = w.send(s);  // the same segment: the server may have lost it
  CHECK(w.out.given == std::vector<Given>{{again, GuardVerdict::Watch, kWatch}});
  // Also while part of the next flight waits: the client may be resending the ClientHello
  // because the server never got it.
  Seg part = s;
  part.seq = at;
  part.payload = slice(cat(ccs(), tls13_hello("allowed.example")), 0, 30);
  const uint32_t held = w.send(part);
  const uint32_t again2 = w.send(s);
  CHECK(w.out.given == std::vector<Given>{{again, GuardVerdict::Watch, kWatch}, {again2, GuardVerdict::Watch, kWatch}});
  Seg other = s;
  other.payload = tls13_hello("allowed.exampl0");  // same length, other bytes
  const uint32_t bad = w.send(other);
  CHECK(w.out.given.back() == Given{bad, GuardVerdict::Reject, kSeen | kRejected});
  CHECK(w.out.given[w.out.given.size() - 2] == Given{held, GuardVerdict::Reject, kSeen | kRejected});
  CHECK(w.guard->counts().conflict == 1);
}

TEST_CASE("a watched connection whose next flight never comes is forgotten at the deadline; data after it is reset") {
  World w;
  Seg s;
  const uint32_t at = watched(w, s);
  CHECK(w.guard->flows() == 1);
  w.timers.advance(10000 + kSweepSlackMs);
  CHECK(w.guard->flows() == 0);
  s.seq = at;
  s.payload = tls13_hello("other.example");
  const uint32_t id = w.send(s);
  CHECK(w.out.given.back() == Given{id, GuardVerdict::Reject, kSeen | kRejected});
  CHECK(w.guard->counts().no_state == 1);
}

TEST_CASE("a watched connection's next flight is bounded like the first") {
  World w;
  Seg s;
  const uint32_t at = watched(w, s);
  s.seq = at;
  s.payload = Bytes{22, 3, 3, 0x40, 0x00, 1, 0, 0x3f, 0xfc};  // a ClientHello of 16 KiB, begun
  w.send(s);
  CHECK(w.out.given.empty());
  s.seq = at + uint32_t(kMaxFlightBytes) - 4;  // past the bound after the first ClientHello
  s.payload = Bytes(8, 0);
  const uint32_t id = w.send(s);
  REQUIRE(!w.out.given.empty());
  CHECK(w.out.given.back() == Given{id, GuardVerdict::Reject, kSeen | kRejected});
  CHECK(w.guard->counts().too_large == 1);
}

TEST_CASE("LedgerBoundNames::any asks the policy in force of the entries that vouched, so a reload takes sni=any away at once") {
  VouchLedger l;
  const uint8_t a7[4] = {198, 51, 100, 7}, a8[4] = {198, 51, 100, 8};
  const SetKey k{{}, IpAddr::v4(a7)};
  const std::vector<VouchItem> items = {{IpAddr::v4(a7), 300}};
  std::vector<uint64_t> eff;
  const uint64_t now = 1000;
  const auto changes = l.plan(items, now, RefreshMode::Replace, eff);
  std::vector<ChangeResult> res(changes.size(), ChangeResult::Done);
  l.committed(items, changes, eff, res, Provenance{"*.registry.example", "a.registry.example"}, now);
  std::set<std::string> any_patterns = {"*.registry.example"};
  std::vector<std::string> asked;
  LedgerBoundNames names(l, [&](const IpAddr&, std::string_view pattern) {
    asked.emplace_back(pattern);
    return any_patterns.count(std::string(pattern)) > 0;
  });
  CHECK(names.any(k, now));
  CHECK(asked == std::vector<std::string>{"*.registry.example"});
  any_patterns.clear();  // the reload: the entry is still listed, without sni=any
  CHECK_FALSE(names.any(k, now));
  any_patterns = {"*.registry.example"};
  CHECK_FALSE(names.any(k, now + 301 * 1000));  // expired: nothing vouches for it any more
  CHECK_FALSE(names.any(SetKey{{}, IpAddr::v4(a8)}, now));
  CHECK_FALSE(names.bound(k, kAnyName, now));  // "*" is never a bound name
}

TEST_CASE("a new connection's data sent before the server's SYN-ACK does not ride the last one's Allow") {
  // Found by the fuzz target's model: after an allowed connection, a reset and a SYN (the
  // guard sees neither; the SYN clears the conntrack mark), a raw socket's data on the same
  // ports before the SYN-ACK was queued and given the old Allow, which marked the new
  // connection allowed before anything was judged.
  World w;
  Seg s;
  w.handshake(s);
  s.payload = curl_hello();
  w.send(s);
  w.answer(s, 1000 + uint32_t(s.payload.size()), testing::server_hello(false));
  REQUIRE(w.out.given.back().v == GuardVerdict::Allow);
  Seg early = s;
  early.seq = 1000;
  early.payload = tls13_hello("other.example");
  const uint32_t id = w.send(early);
  CHECK(w.out.given.back() == Given{id, GuardVerdict::Pass, kSeen});
  // Its SYN-ACK starts it anew: its flight is judged.
  const uint32_t synack = w.send(World::from_server(s, 55555, 1000, {}, true));
  CHECK(w.out.given.back() == Given{synack, GuardVerdict::Pass, kSeen});
  const uint32_t flight = w.send(early);
  CHECK(w.out.given.back() == Given{flight, GuardVerdict::Reject, kSeen | kRejected});
}

TEST_CASE("a HelloRetryRequest when --queue-maxlen connections are followed already rejects its connection") {
  // Following the second ClientHello takes a place like any flight: none is evicted for it.
  World w(false, 1);
  Seg a, b;
  b.sport = 40001;
  w.handshake(a);
  a.payload = tls13_hello("allowed.example");
  w.send(a);
  w.handshake(b);  // followed, its flight not come yet: the one place taken
  const uint32_t hrr = w.answer(a, 1000 + uint32_t(a.payload.size()), testing::server_hello(true));
  CHECK(w.out.given.back() == Given{hrr, GuardVerdict::Watch, kWatch});
  CHECK(w.guard->counts().full == 1);
  a.seq = 1000 + uint32_t(a.payload.size());
  a.payload = cat(ccs(), tls13_hello("allowed.example"));
  const uint32_t second = w.send(a);
  CHECK(w.out.given.back() == Given{second, GuardVerdict::Reject, kSeen | kRejected});
}

TEST_CASE("a TCP Fast Open SYN is dropped whatever it names: its SYN-ACK could answer another SYN") {
  // The fifth review: a raw SYN-data naming a bound name, which the server never took, then
  // the socket's own SYN with its ISN the data's length further on. The server's SYN-ACK to
  // that SYN acknowledged exactly the end of the data, and confirmed a flight never read.
  World w;
  for (const bool http : {false, true}) {
    CAPTURE(http);
    Seg s;
    s.dport = http ? 80 : 443;
    s.syn = true;
    s.seq = 999;
    const std::string get = "GET / HTTP/1.1\r\nHost: python.example\r\n\r\n";
    s.payload = http ? Bytes(get.begin(), get.end()) : tls12_hello("allowed.example");
    const uint32_t id = w.send(s);
    CHECK(w.out.given.back() == Given{id, GuardVerdict::Drop, 0});
    const uint32_t end = 1000 + uint32_t(s.payload.size());
    // The SYN-ACK of the plain SYN at end - 1 starts a flow there, with nothing judged.
    const uint32_t synack = w.send(World::from_server(s, 6999, end, {}, true));
    CHECK(w.out.given.back() == Given{synack, GuardVerdict::Pass, kSeen});
    Seg evil = s;
    evil.syn = false;
    evil.seq = end;
    const std::string other = "GET / HTTP/1.1\r\nHost: other.example\r\n\r\n";
    evil.payload = http ? Bytes(other.begin(), other.end()) : tls12_hello("other.example");
    const uint32_t bad = w.send(evil);
    CHECK(w.out.given.back() == Given{bad, GuardVerdict::Reject, kSeen | kRejected});
  }
  CHECK(w.guard->counts().tfo == 2);
  CHECK(w.guard->counts().mismatch == 2);
  CHECK(w.guard->counts().allowed == 0);
}

TEST_CASE("under a ruleset not in force every verdict is a drop: accept would skip the reset an older ruleset made where it queued") {
  Recorder out;
  bool in_force = true;
  RulesetGatedVerdicts gated(out, [&] { return in_force; });
  gated.verdict(1, GuardVerdict::Allow, 0x00600000);
  gated.verdict(2, GuardVerdict::Reject, 0x00a00000);
  in_force = false;
  for (const GuardVerdict v : {GuardVerdict::Allow, GuardVerdict::Reject, GuardVerdict::Watch, GuardVerdict::Pass,
                               GuardVerdict::Drop})
    gated.verdict(3, v, 0x00e00000);
  in_force = true;
  gated.verdict(4, GuardVerdict::Pass, 0x00200000);
  CHECK(out.given == std::vector<Given>{{1, GuardVerdict::Allow, 0x00600000},
                                         {2, GuardVerdict::Reject, 0x00a00000},
                                         {3, GuardVerdict::Drop, 0},
                                         {3, GuardVerdict::Drop, 0},
                                         {3, GuardVerdict::Drop, 0},
                                         {3, GuardVerdict::Drop, 0},
                                         {3, GuardVerdict::Drop, 0x00e00000},
                                         {4, GuardVerdict::Pass, 0x00200000}});
  CHECK(gated.dropped() == 4);
}

TEST_CASE("a SYN-ACK after a connection was allowed starts a new one, judged anew, even with the same numbers (SYN cookies)") {
  // The tenth review: after a raw reset, a SYN with the same ISN; a server in SYN-cookie mode
  // answers with the same cookie, and the lingering Allow passed the next flight, naming
  // another name, as the old connection's.
  World w;
  Seg s;
  w.handshake(s);
  s.payload = curl_hello();
  w.send(s);
  w.answer(s, 1000 + uint32_t(s.payload.size()), testing::server_hello(false));
  REQUIRE(w.out.given.back().v == GuardVerdict::Allow);
  w.handshake(s);  // the same SYN-ACK: passes, and starts a flow of its own
  s.payload = tls13_hello("other.example");
  const uint32_t id = w.send(s);
  CHECK(w.out.given.back() == Given{id, GuardVerdict::Reject, kSeen | kRejected});
  CHECK(w.guard->counts().mismatch == 1);
}

TEST_CASE("room at a bound is found without walking stale entries again and again (tenth review)") {
  // Sandbox B keeps one connection waiting for confirmation; sandbox A confirmed 3000 (each
  // leaves a stale entry behind B's, which pinned them at the front of one deque that every
  // packet at a bound walked), then fills the byte bound and keeps sending flights.
  World w(true);
  two_tenants(w);
  Seg b;
  b.src = "10.0.0.3";
  w.handshake(b);
  b.payload = curl_hello();
  w.send(b);
  REQUIRE(w.out.given.back().v == GuardVerdict::Watch);
  const uint32_t end = 1000 + uint32_t(curl_hello().size());
  for (uint16_t i = 0; i < 3000; ++i) {
    Seg a;
    a.sport = uint16_t(10000 + i);
    w.handshake(a);
    a.payload = curl_hello();
    w.send(a);
    w.answer(a, end, testing::server_hello(false));
    REQUIRE(w.out.given.back().v == GuardVerdict::Allow);
  }
  const std::size_t each = kMaxFlightBytes - 1;
  for (std::size_t i = 0; i < kMaxHeldBytes / each + 1000; ++i) {
    Seg a;
    a.sport = uint16_t(20000 + i);
    w.handshake(a);
    a.seq = 1001;  // one byte after the start: never contiguous, so held
    a.payload.assign(each - 1, 0x16);
    w.send(a);
  }
  CHECK(w.guard->counts().full == 1000);  // A's own flights past the bound, never B's
  CHECK(w.guard->check_use());
  CHECK(w.guard->trim_steps() < 10000);   // about one per entry, not 1000 x 3000
  const uint32_t id = w.answer(b, end, testing::server_hello(false));  // B's still waits, and is confirmed
  CHECK(w.out.given.back() == Given{id, GuardVerdict::Allow, kSeen | kAllowed});
}

TEST_CASE("a connection decided while the decided bound is exceeded still expires (eleventh review)") {
  // Two connections allowed and waiting for confirmation fill --queue-maxlen 2 decided
  // ones; a third, rejected, was decided past the bound: the loop that forgets lingering
  // ones popped its own deadline, and it was followed for ever.
  World w(false, 2);
  for (const uint16_t port : {uint16_t(40001), uint16_t(40002)}) {
    Seg a;
    a.sport = port;
    w.handshake(a);
    a.payload = curl_hello();
    w.send(a);
    REQUIRE(w.out.given.back().v == GuardVerdict::Watch);
  }
  Seg r;
  r.sport = 40003;
  w.handshake(r);
  r.payload = tls13_hello("other.example");
  w.send(r);
  REQUIRE(w.out.given.back().v == GuardVerdict::Reject);
  w.timers.advance(3600 * 1000);  // every window and linger passes
  CHECK(w.guard->flows() == 0);
  CHECK(w.guard->check_use());
}
