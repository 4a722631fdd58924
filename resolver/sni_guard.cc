#include "dnsward/sni_guard.hpp"

#include <netinet/in.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "dnsward/client_hello.hpp"
#include "dnsward/log.hpp"

namespace dnsward {
namespace {

uint16_t be16(const uint8_t* p) { return uint16_t(p[0] << 8 | p[1]); }
uint32_t be32(const uint8_t* p) { return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3]; }

/// Decided connections are remembered this long, for packets the kernel queued before the
/// conntrack mark was set (segments written back to back): they get the same verdict. An
/// allowed connection must never meet "no state" and be reset.
constexpr uint64_t kDecidedLingerMs = 2000;

constexpr const char* kReasonNames[] = {
#define DNSWARD_GUARD_NAME_(m, s) s,
    DNSWARD_GUARD_REASONS(DNSWARD_GUARD_NAME_)
#undef DNSWARD_GUARD_NAME_
};

/// Host mode: log::sandbox (every line's sandbox=ID) set to the guest's sandbox while one
/// line is written, and put back after.
class SandboxField {
 public:
  SandboxField(const std::function<std::string(const IpAddr&)>& tenant_of, const IpAddr& guest) {
    if (!tenant_of) return;
    saved_ = std::exchange(log::sandbox, tenant_of(guest));
    set_ = true;
  }
  ~SandboxField() {
    if (set_) log::sandbox = std::move(saved_);
  }
  SandboxField(const SandboxField&) = delete;
  SandboxField& operator=(const SandboxField&) = delete;

 private:
  std::string saved_;
  bool set_ = false;
};

}  // namespace

bool SniGuard::acks_seen(const Flow& f, const TcpPacket& t) {
  // RFC 9293 3.10.7.4: a segment without ACK is dropped by the server, it opens nothing.
  return !t.ack || uint32_t(t.ack_seq - f.srv_start) <= f.srv_seen;
}

void SniGuard::on_bare(const Key& k, Flow& f, const TcpPacket& t, uint32_t id, uint32_t mark) {
  // The handshake's ACK, a bare FIN: nothing to judge. But a server in SYN-cookie mode opens
  // its connection on a bare ACK whose acknowledgment number is the cookie of a SYN with
  // another ISN, predictable from the one seen (C(X + d) = C(X) + d on one tuple within a
  // minute), and would then read the flight from d bytes in (the ninth review): a client's
  // ACK of a connection followed may acknowledge only what the server was seen to send.
  if (f.decided && !f.confirming) {
    give(id, mark, late(f));
    return;
  }
  if (!acks_seen(f, t)) {
    if (!f.decided) {
      f.held.push_back({id, mark});
      decide(k, f, GuardVerdict::Reject, Reason::unsent_ack, "");
      return;
    }
    end_confirming(k, f, GuardVerdict::Reject);
    count(Reason::unsent_ack);
    reject_log(k, Reason::unsent_ack, f.sni);
    give(id, mark, GuardVerdict::Reject);
    return;
  }
  give(id, mark, f.decided ? GuardVerdict::Watch : GuardVerdict::Pass);
}

GuardVerdict SniGuard::late(const Flow& f) {
  // A packet queued after its connection's verdict: queued before the conntrack mark was
  // set (segments written back to back), it passes as the verdict says; but it may be the
  // first of another connection on the same ports (a SYN clears the mark, and the guard
  // sees no plain SYN), whose data a raw socket can send before the server's SYN-ACK starts
  // it anew here. So an Allow is given as Watch: it passes, and marks nothing allowed.
  return f.verdict == GuardVerdict::Allow ? GuardVerdict::Watch : f.verdict;
}

SniGuard::Reason SniGuard::refusal(FlightStatus s) {
  switch (s) {
    case FlightStatus::NotTls: return Reason::not_tls;
    case FlightStatus::NotHttp: return Reason::not_http;
    case FlightStatus::TooLarge: return Reason::too_large;
    default: return Reason::malformed;
  }
}

bool parse_tcp_packet(const uint8_t* p, std::size_t len, TcpPacket& out) {
  if (len < 1) return false;
  std::size_t l4 = 0, total = 0;
  const int version = p[0] >> 4;
  if (version == 4) {
    if (len < 20) return false;
    const std::size_t ihl = std::size_t(p[0] & 0x0f) * 4;
    total = be16(p + 2);
    // A fragment cannot be judged by its own bytes (the kernel reassembles before conntrack,
    // so one here is hostile or broken): refused by the caller as unparsed.
    const uint16_t frag = be16(p + 6);
    if (ihl < 20 || total < ihl || total > len || p[9] != IPPROTO_TCP || (frag & 0x3fff) != 0) return false;
    out.src = IpAddr::v4(p + 12);
    out.dst = IpAddr::v4(p + 16);
    l4 = ihl;
  } else if (version == 6) {
    if (len < 40) return false;
    // Extension headers are not followed: only TCP straight after the fixed header. The
    // ruleset's `tcp dport` matches such packets too; refusing them fails closed.
    total = 40 + std::size_t(be16(p + 4));
    if (total > len || p[6] != IPPROTO_TCP) return false;
    out.src = IpAddr::v6(p + 8);
    out.dst = IpAddr::v6(p + 24);
    l4 = 40;
  } else {
    return false;
  }
  if (total < l4 + 20) return false;
  const uint8_t* t = p + l4;
  const std::size_t doff = std::size_t(t[12] >> 4) * 4;
  if (doff < 20 || l4 + doff > total) return false;
  out.sport = be16(t);
  out.dport = be16(t + 2);
  out.seq = be32(t + 4);
  out.ack_seq = be32(t + 8);
  const uint8_t flags = t[13];
  out.fin = flags & 0x01;
  out.syn = flags & 0x02;
  out.rst = flags & 0x04;
  out.ack = flags & 0x10;
  out.urg = flags & 0x20;
  out.payload = t + doff;
  out.payload_len = total - l4 - doff;
  return true;
}

bool tcp_checksum_ok(const uint8_t* p, std::size_t len) {
  // The one's-complement sum of the pseudo-header and the segment is 0xffff when right.
  uint64_t sum = 0;
  auto add = [&](const uint8_t* b, std::size_t n) {
    for (std::size_t i = 0; i + 1 < n; i += 2) sum += uint32_t(b[i]) << 8 | b[i + 1];
    if (n & 1) sum += uint32_t(b[n - 1]) << 8;
  };
  std::size_t l4 = 0, seg = 0;
  if ((p[0] >> 4) == 4) {
    l4 = std::size_t(p[0] & 0x0f) * 4;
    seg = be16(p + 2) - l4;
    add(p + 12, 8);  // source and destination
  } else {
    l4 = 40;
    seg = be16(p + 4);
    add(p + 8, 32);
  }
  sum += IPPROTO_TCP + seg;
  if (l4 + seg > len) return false;
  add(p + l4, seg);
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return sum == 0xffff;
}

void RulesetGatedVerdicts::verdict(uint32_t id, GuardVerdict v, uint32_t mark) {
  if (v != GuardVerdict::Drop && !in_force_()) {
    ++dropped_;
    out_.verdict(id, GuardVerdict::Drop, 0);
    return;
  }
  out_.verdict(id, v, mark);
}

const char* guard_verdict_name(GuardVerdict v) {
  switch (v) {
    case GuardVerdict::Pass: return "pass";
    case GuardVerdict::Allow: return "allow";
    case GuardVerdict::Reject: return "reject";
    case GuardVerdict::Drop: return "drop";
    case GuardVerdict::Watch: return "watch";
  }
  return "?";
}

bool LedgerBoundNames::bound(const SetKey& k, std::string_view name, uint64_t now_ms) const {
  // The ledger compares without letter case or a trailing dot, in the form names are
  // stored in (qname_text()); a ClientHello's server_name is lower-case [a-z0-9.-] already.
  return ledger_.bound(k, name, now_ms);
}

bool LedgerBoundNames::any(const SetKey& k, uint64_t now_ms) const {
  const LedgerRecord* r = ledger_.find(k);
  if (!r || (r->kernel_ms <= now_ms && r->promised_ms <= now_ms)) return false;
  for (const uint32_t p : r->patterns)
    if (any_(k.guest, ledger_.pattern(p))) return true;
  return false;
}

std::string LedgerBoundNames::names(const SetKey& k) const {
  const LedgerRecord* r = ledger_.find(k);
  return r ? r->names : std::string();
}

GuardOptions GuardOptions::from(const ServeConfig& c) {
  GuardOptions o;
  o.sni_ports = port_numbers(c.sni_ports);
  o.http_ports = port_numbers(c.http_ports);
  o.marks = *guard_mark_bits(c.guard_marks);
  o.max_flows = c.queue_maxlen;
  o.timeout_ms = c.first_flight_timeout_ms;
  o.host = c.host;
  return o;
}

SniGuard::SniGuard(GuardOptions o, const BoundNames& names, VerdictPort& out, Timers& timers)
    : o_(std::move(o)), names_(names), out_(out), timers_(timers) {}

SniGuard::~SniGuard() {
  if (armed_) timers_.cancel(timer_);
}

bool SniGuard::is_sni_port(uint16_t p) const {
  return std::find(o_.sni_ports.begin(), o_.sni_ports.end(), p) != o_.sni_ports.end();
}
bool SniGuard::is_http_port(uint16_t p) const {
  return std::find(o_.http_ports.begin(), o_.http_ports.end(), p) != o_.http_ports.end();
}

void SniGuard::give(uint32_t id, uint32_t mark, GuardVerdict v) {
  const GuardMarks& m = o_.marks;
  if (v == GuardVerdict::Drop) {
    out_.verdict(id, v, 0);  // a dropped packet keeps no mark
    return;
  }
  uint32_t out = (mark & ~m.mask()) | m.seen;
  if (v == GuardVerdict::Allow) out |= m.allowed;
  if (v == GuardVerdict::Reject) out |= m.rejected;
  // Both bits: no conntrack mark is set (the ruleset moves exactly one), so the connection's
  // next payload is queued again.
  if (v == GuardVerdict::Watch) out |= m.allowed | m.rejected;
  out_.verdict(id, v, out);
}

void SniGuard::on_packet(uint32_t id, uint32_t mark, const uint8_t* pkt, std::size_t len,
                         bool checksum_pending) {
  ++counts_.packets;
  TcpPacket t;
  if (!parse_tcp_packet(pkt, len, t)) {
    // Not what the queue rules send (not TCP, or unreadable: IPv6 extension headers, say):
    // left to the rest of the ruleset, whose rule after the queue drops unjudged payload to
    // vouched addresses on guarded ports.
    ++counts_.unparsed;
    give(id, mark, GuardVerdict::Pass);
    return;
  }
  // The client's packets are to a guarded port of a vouched destination; the server's
  // (queued in the reply direction, see Flow) from one. k is the client's view either way.
  const bool to_guarded = is_sni_port(t.dport) || is_http_port(t.dport);
  const bool from_guarded = is_sni_port(t.sport) || is_http_port(t.sport);
  const Key out{t.src, t.dst, t.sport, t.dport}, back{t.dst, t.src, t.dport, t.sport};
  const bool client = to_guarded && names_.known(set_key(out));
  if (!client && !(from_guarded && names_.known(set_key(back)))) {
    if (to_guarded && t.payload_len > 0) {
      // The ruleset queues only connections it marked guarded at their SYN, to a destination
      // vouched then: one whose record is gone since (expired and purged, or a restart
      // without --state) has nothing left to be judged by. Reset, never passed.
      count(Reason::no_state);
      reject_log(out, Reason::no_state, "");
      give(id, mark, t.syn ? GuardVerdict::Drop : GuardVerdict::Reject);
      return;
    }
    // Not a guarded connection's packet (a server's whose record is gone: it confirms
    // nothing; or not what the queue rules send): left to the ruleset.
    ++counts_.unparsed;
    give(id, mark, GuardVerdict::Pass);
    return;
  }
  const Key& k = client ? out : back;
  if (!checksum_pending && !tcp_checksum_ok(pkt, len)) {
    // A segment the server will discard must not be judged: a raw socket's ClientHello with
    // a wrong checksum would win a verdict for the bytes that follow it (review). Dropped,
    // as the server's stack would.
    count(Reason::checksum);
    reject_log(k, Reason::checksum, "");
    give(id, mark, GuardVerdict::Drop);
    return;
  }
  if (!client) {
    on_reply(k, t, id, mark);
    return;
  }
  if (t.urg && !t.rst) {
    // Urgent data leaves the server's stream (without SO_OOBINLINE), and the urgent pointer
    // of any segment, a bare ACK's too, may point into bytes sent later without the flag: no
    // TLS or HTTP client sends it, and before a verdict it would make the bytes judged differ
    // from those read (the first review's polyglot; the fuzz oracle found the bare ACK).
    const auto it = flows_.find(k);
    // (A SYN starts another connection on these ports: never the old one's verdict; found
    // by the fuzz target.)
    if (it != flows_.end() && it->second.decided && it->second.verdict == GuardVerdict::Allow && !t.syn) {
      // After the flight: the application's business, as late data is (on_data); the
      // ruleset drops urgent segments of undecided connections before the queue anyway.
      give(id, mark, GuardVerdict::Pass);
      return;
    }
    if (it != flows_.end() && !it->second.decided) {
      it->second.held.push_back({id, mark});
      decide(k, it->second, GuardVerdict::Reject, Reason::urgent, "");
      return;
    }
    // Waiting for confirmation: the connection is rejected (reset by the ruleset), and stays so.
    if (it != flows_.end() && it->second.confirming) end_confirming(k, it->second, GuardVerdict::Reject);
    count(Reason::urgent);
    reject_log(k, Reason::urgent, "");
    give(id, mark, t.syn ? GuardVerdict::Drop : GuardVerdict::Reject);
    return;
  }
  if (t.rst) {
    on_reset(k, id, mark);
    return;
  }
  if (t.syn) {
    on_syn(k, t, id, mark);
    return;
  }
  if (t.payload_len == 0) {
    const auto it = flows_.find(k);
    if (it == flows_.end()) {
      give(id, mark, GuardVerdict::Pass);  // nothing followed: its data will meet no state
      return;
    }
    on_bare(k, it->second, t, id, mark);
    return;
  }
  on_data(k, t, id, mark);
}

void SniGuard::on_reset(const Key& k, uint32_t id, uint32_t mark) {
  if (const auto it = flows_.find(k); it != flows_.end()) {
    // Held packets must not wait for a deadline after either side gave up.
    if (!it->second.decided && !it->second.held.empty())
      decide(k, it->second, GuardVerdict::Reject, Reason::none, "");
    else
      erase(it);
  }
  give(id, mark, GuardVerdict::Pass);
}

void SniGuard::on_syn(const Key& k, const TcpPacket& t, uint32_t id, uint32_t mark) {
  if (t.payload_len == 0) {
    // A plain SYN (the ruleset queues only a Fast Open one): where the stream starts is the
    // server's SYN-ACK's to say, not the client's, whose raw socket could send SYNs the
    // server never takes (the second review).
    give(id, mark, GuardVerdict::Pass);
    return;
  }
  // TCP Fast Open (RFC 7413): the first flight rides on the SYN. Dropped, whatever it
  // names: a SYN-ACK acknowledging its data looks just like one answering a plain SYN whose
  // ISN is the data's length further on (the fifth review: a raw SYN-data the server never
  // took, then the socket's own SYN at that ISN, and the SYN-ACK confirmed a flight the
  // server never read). Linux sends the SYN again without data and the data after the
  // handshake, where it is judged as usual; it costs the client one retransmission timeout.
  count(Reason::tfo);
  reject_log(k, Reason::tfo, "");
  give(id, mark, GuardVerdict::Drop);
}

void SniGuard::on_reply(const Key& k, const TcpPacket& t, uint32_t id, uint32_t mark) {
  if (t.rst) {
    on_reset(k, id, mark);  // the server's: what the client sends next meets no state
    return;
  }
  const auto it = flows_.find(k);
  if (t.syn) {
    on_syn_ack(k, t, id, mark);
    return;
  }
  if (it == flows_.end()) {
    // No state (its SYN-ACK came before dnsward, or it was forgotten): nothing to confirm.
    // The client's next data is reset.
    give(id, mark, GuardVerdict::Pass);
    return;
  }
  Flow& f = it->second;
  // Whether the packet continues the server's stream that starts at the SYN-ACK seen here:
  // a server in SYN-cookie mode answers SYNs with other ISNs statelessly, and its cookies are
  // predictable from one seen (C(X + d) = C(X) + d on one tuple within a minute), so a raw
  // socket can have the server open its connection d bytes into the flight judged here, read
  // only the bytes from there and acknowledge them all (the ninth review). That connection's
  // packets start d past srv_start: never contiguous with what was seen from it.
  const uint32_t off = t.seq - f.srv_start;
  const bool in_stream = off <= f.srv_seen;
  if (in_stream && (t.payload_len > 0 || t.fin)) {
    // Keep the server's first bytes, in order (an honest server sends them in order; a gap
    // waits for the bytes that fill it).
    if (off <= f.srv.size() && off < kServerHelloPrefix)
      for (std::size_t i = f.srv.size() - off; i < t.payload_len && f.srv.size() < kServerHelloPrefix; ++i)
        f.srv.push_back(t.payload[i]);
    // How far it reaches, bounded well below a wrap of the sequence space.
    // (A FIN takes a sequence number too: the client acknowledges it.)
    const uint32_t reach = off + uint32_t(t.payload_len) + (t.fin ? 1 : 0);
    f.srv_seen = std::min<uint32_t>(std::max<uint32_t>(f.srv_seen, reach), kMaxServerSeen);
  }
  if (!in_stream && (!f.decided || f.confirming)) {
    // Not the server whose SYN-ACK started the flight here (a cookie server's connection
    // opened further on: see on_bare), or a segment ahead of a gap: dropped (an honest
    // server sends it again), so that nothing of such a connection reaches the client.
    give(id, mark, GuardVerdict::Drop);
    return;
  }
  if (!f.decided) {
    // The flight is not judged yet (a server that speaks first), or the server's answer to
    // the first ClientHello goes on after its HelloRetryRequest: nothing to decide.
    give(id, mark, GuardVerdict::Pass);
    return;
  }
  if (!f.confirming) {
    give(id, mark, late(f));
    return;
  }
  confirm_by(k, f, t, id, mark);
}

void SniGuard::on_syn_ack(const Key& k, const TcpPacket& t, uint32_t id, uint32_t mark) {
  if (!t.ack) {
    // A SYN from the server's port (a simultaneous open, RFC 9293 3.5): no client does this
    // on a guarded port. Nothing is followed, so the client's data is reset.
    give(id, mark, GuardVerdict::Pass);
    return;
  }
  // The server's acknowledgment of the client's SYN: the client's stream starts here.
  const uint32_t start = t.ack_seq;
  auto it = flows_.find(k);
  if (it != flows_.end()) {
    Flow& f = it->second;
    // A SYN-ACK reaches dnsward only while the conntrack mark says guarded and undecided:
    // on a connection decided and no longer watched, a SYN made it so again, and this is a
    // new handshake, judged anew even with the same numbers (the tenth review: a SYN with
    // the same ISN after a raw reset, and a server in SYN-cookie mode answers it with the
    // same cookie; taken as sent again, the lingering Allow passed the next flight).
    if (f.srv_start == t.seq + 1 && f.start == start && !(f.decided && !f.confirming)) {
      // Sent again (its ACK was lost, or the client's SYN came twice).
      give(id, mark, f.decided ? late(f) : GuardVerdict::Pass);
      return;
    }
    if (!f.decided) {
      // Another SYN-ACK while the flight is followed: a server answers one SYN with one ISN,
      // and no client's kernel sends a second SYN with another. A server in SYN-cookie mode
      // answers a raw socket's SYN with an ISN d further with a cookie d further, and its
      // ACK of that cookie would open the server's connection d bytes into the flight judged
      // here (the ninth review): conntrack learnt the cookie from this very SYN-ACK, and that
      // bare ACK is never queued. The connection is rejected: that ACK meets the reset.
      f.held.push_back({id, mark});
      decide(k, f, GuardVerdict::Reject, Reason::conflict, "");
      return;
    }
    // A new handshake on the same ports after a verdict (the client's SYN took the
    // verdict out of the conntrack mark): judged anew.
    erase(it);
  }
  std::string tenant = tenant_of_ ? tenant_of_(k.src) : std::string();
  if (pending_ >= o_.max_flows) {
    const auto u = use_.find(tenant);
    if (!make_pending_room(u == use_.end() ? 0 : u->second.pending)) {
      // No room to follow one more connection, and this tenant holds as many waiting as
      // any: the SYN-ACK is dropped (the server sends it again), never passed unfollowed.
      count(Reason::full);
      give(id, mark, GuardVerdict::Drop);
      return;
    }
  }
  Flow f;
  f.start = start;
  f.srv_start = t.seq + 1;
  f.deadline_ms = timers_.now_ms() + o_.timeout_ms;
  Use& u = use_[tenant];
  if (u.flows++ == 0) u.tenant = std::move(tenant);
  f.use = &u;
  it = flows_.emplace(k, std::move(f)).first;
  tally(it->second, true);
  wait_pending(k, it->second);
  arm();
  give(id, mark, GuardVerdict::Pass);
}

void SniGuard::confirm_by(const Key& k, Flow& f, const TcpPacket& t, uint32_t id, uint32_t mark) {
  // Acknowledged up to judged_end: the server holds every byte from start to there (see
  // Flow). Short of it (or not acknowledging at all): still waiting.
  if (!t.ack || int32_t(t.ack_seq - uint32_t(f.start + f.judged_end)) < 0) {
    give(id, mark, GuardVerdict::Watch);
    return;
  }
  // On a TLS port the server's first record decides (a TLS 1.2 server's too: its ServerHello
  // or an alert, nothing else), after a ClientHello offering TLS 1.3 whether it asks for
  // a second one.
  if (is_sni_port(k.dport) && !f.after_hrr) {
    switch (server_answer(f)) {
      case ServerAnswer::need_more:
        give(id, mark, GuardVerdict::Watch);
        return;
      case ServerAnswer::hello_retry:
        // RFC 8446 4.1.4: the server reads a second ClientHello, which OpenSSL's server
        // takes with another server_name: judged too.
        give(id, mark, GuardVerdict::Watch);
        second_flight(k, f);
        return;
      case ServerAnswer::alert:
        // The server refused the ClientHello: the client reads why; the connection stays
        // queued (it will read no other ClientHello), and is forgotten with the window.
        give(id, mark, GuardVerdict::Watch);
        return;
      case ServerAnswer::other:
        // No TLS answer: what such a server reads next is nothing judged here.
        end_confirming(k, f, GuardVerdict::Reject);
        count(Reason::not_tls);
        reject_log(k, Reason::not_tls, f.sni);
        give(id, mark, GuardVerdict::Reject);
        return;
      case ServerAnswer::server_hello:
        break;  // committed to the ClientHello judged
    }
  }
  end_confirming(k, f, GuardVerdict::Allow);
  give(id, mark, GuardVerdict::Allow);
}

SniGuard::ServerAnswer SniGuard::server_answer(const Flow& f) {
  // RFC 8446 4.1.3: a HelloRetryRequest is a ServerHello whose random is SHA-256 of
  // "HelloRetryRequest".
  static constexpr uint8_t kHrrRandom[32] = {
      0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
      0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c};
  const std::vector<uint8_t>& d = f.srv;
  if (d.empty()) return ServerAnswer::need_more;
  if (d[0] == 21) return ServerAnswer::alert;
  if (d[0] != 22) return ServerAnswer::other;
  if (d.size() < 6) return ServerAnswer::need_more;
  // A ServerHello shorter than its random in the first record (fragmented across records,
  // which no server does): not read further, refused.
  if (d[5] != 2 || be16(d.data() + 3) < 4 + 2 + 32) return ServerAnswer::other;
  if (d.size() < kServerHelloPrefix) return ServerAnswer::need_more;
  return std::memcmp(d.data() + 11, kHrrRandom, sizeof kHrrRandom) == 0 ? ServerAnswer::hello_retry
                                                                          : ServerAnswer::server_hello;
}

void SniGuard::second_flight(const Key& k, Flow& f) {
  // (make_pending_room refuses only connections not decided yet: never f, which is.)
  if (pending_ >= o_.max_flows && !make_pending_room(f.use->pending)) {
    end_confirming(k, f, GuardVerdict::Reject);
    count(Reason::full);
    reject_log(k, Reason::full, f.sni);
    return;
  }
  tally(f, false);
  f.decided = false;
  f.confirming = false;
  f.verdict = GuardVerdict::Pass;
  f.watching = true;
  f.after_hrr = true;
  f.next_at = f.judged_end;
  f.limit = f.judged_end + kMaxFlightBytes;
  f.segments = 0;
  tally(f, true);
  // The second ClientHello comes after the server's answer: --first-flight-timeout from now.
  f.deadline_ms = timers_.now_ms() + o_.timeout_ms;
  wait_pending(k, f);
  arm();
}

void SniGuard::on_data(const Key& k, const TcpPacket& t, uint32_t id, uint32_t mark) {
  auto it = flows_.find(k);
  if (it == flows_.end()) {
    // Data without the server's SYN-ACK seen: the state expired or dnsward restarted in
    // between, or the handshake is a raw socket's. Guessing where the flight starts could
    // be played (bytes before the guess, sent later, would reach the server unjudged): reset.
    count(Reason::no_state);
    reject_log(k, Reason::no_state, "");
    give(id, mark, GuardVerdict::Reject);
    return;
  }
  Flow& f = it->second;
  if (f.decided) {
    if (f.confirming) {
      on_confirming(k, f, t, id, mark);
    } else {
      // Client data queued after the connection was allowed for good: queued before its
      // conntrack mark said so (the client's kernel resends it, unqueued, then), or data of
      // a new connection on the same ports whose handshake dnsward did not see (a forged
      // SYN-ACK on lo, a SYN the server dropped: the tenth review), which a SYN-cookie
      // server would open a connection for. Never passed on the old Allow: Pass, no verdict
      // bit, leaves it to the conntrack mark, which the ruleset reads after the queue: the
      // old connection's says allowed by now and it goes on; a new connection's says guarded,
      // undecided, and the backstop drops it. (Dropping it here too stalled an HTTP body sent
      // in small writes behind its head by a retransmission timeout: the eleventh review.)
      give(id, mark, f.verdict == GuardVerdict::Allow ? GuardVerdict::Pass : late(f));
    }
    return;
  }
  f.held.push_back({id, mark});
  ++f.segments;
  if (!acks_seen(f, t)) {
    // (see on_bare)
    decide(k, f, GuardVerdict::Reject, Reason::unsent_ack, "");
    return;
  }
  if (t.urg) {
    // Urgent data is taken out of the stream by the server's kernel (without SO_OOBINLINE):
    // the bytes it reads would not be the bytes judged here (the review's polyglot
    // ClientHello). No TLS or HTTP client sends any.
    decide(k, f, GuardVerdict::Reject, Reason::urgent, "");
    return;
  }
  // Offset of this segment in the flight, modulo 2^32 (sequence numbers wrap).
  const uint32_t off32 = t.seq - f.start;
  if (off32 >= f.limit || t.payload_len > f.limit - off32) {
    // Before the flight's start (a huge offset after wrapping) or past our bounds.
    decide(k, f, GuardVerdict::Reject, off32 >= (1u << 31) ? Reason::malformed : Reason::too_large, "");
    return;
  }
  const std::size_t off = off32, end = off + t.payload_len;
  if (f.bytes.size() < end) {
    if (!make_room(end - f.bytes.size(), f)) {
      decide(k, f, GuardVerdict::Reject, Reason::full, "");
      return;
    }
    tally(f, false);
    f.bytes.resize(end);
    f.have.resize(end, false);
    tally(f, true);
  }
  for (std::size_t i = 0; i < t.payload_len; ++i) {
    if (f.have[off + i] && f.bytes[off + i] != t.payload[i]) {
      // A retransmission that says something else: the server may keep either copy, so no
      // verdict on one of them holds for what it reads.
      decide(k, f, GuardVerdict::Reject, Reason::conflict, "");
      return;
    }
    f.bytes[off + i] = t.payload[i];
    f.have[off + i] = true;
  }
  if (f.watching && end <= f.next_at) {
    // Bytes judged and passed already, sent again (the server may have lost them): they
    // pass again, at once. Held, the client would wait for the server's answer to them.
    f.held.pop_back();
    --f.segments;
    give(id, mark, GuardVerdict::Watch);
    return;
  }
  const std::size_t contiguous = std::find(f.have.begin(), f.have.end(), false) - f.have.begin();
  const bool last_segment = f.segments >= kMaxFlightSegments;
  Judged j = contiguous == 0  ? Judged{}
             : f.watching     ? judge_next(k, f, contiguous, last_segment)
                              : judge(k, f.bytes.data(), contiguous, last_segment);
  if (j.verdict == GuardVerdict::Allow && is_sni_port(k.dport) && f.bytes.size() > j.end && j.name != kAnyName) {
    // TLS bytes after the ClientHello before the server answered it: no client sends any
    // (0-RTT was refused in judge()), and a server that answers with a HelloRetryRequest
    // would read them as the second ClientHello, unjudged.
    j = Judged{GuardVerdict::Reject, Reason::early_data, j.name};
  }
  if (j.verdict == GuardVerdict::Pass) {
    if (last_segment) {
      decide(k, f, GuardVerdict::Reject, Reason::too_large, "");
    } else if (f.watching && f.next_at == f.bytes.size()) {
      // All that came is a change_cipher_spec record, which the server ignores: it goes on
      // (a client may send it alone and wait for the server).
      for (const Held& h : f.held) give(h.id, h.mark, GuardVerdict::Watch);
      f.held.clear();
    }
    return;  // held until more arrives, or the deadline
  }
  decide(k, f, j.verdict, j.why, j.name, j.end, j.tls13);
}

SniGuard::Judged SniGuard::judge(const Key& k, const uint8_t* data, std::size_t len, bool final_chance) const {
  Judged j;
  auto reject = [&j](Reason why) {
    j.verdict = GuardVerdict::Reject;
    j.why = why;
    return j;
  };
  // An sni=any entry vouched for this destination: any first flight passes, named or not
  // (the entry's why says which client needs it).
  if (names_.any(set_key(k), timers_.now_ms())) {
    j.name = std::string(kAnyName);
    j.verdict = GuardVerdict::Allow;
    j.end = len;
    return j;
  }
  if (is_sni_port(k.dport)) {
    const ClientHelloResult r = parse_client_hello(data, len);
    if (r.status == FlightStatus::NeedMore) return final_chance ? reject(Reason::too_large) : j;
    if (r.status != FlightStatus::Complete) return reject(refusal(r.status));
    // With ECH the server_name seen here is the outer one (dnsward strips ECH configs from
    // the HTTPS records it relays, so a client offers ECH only with a config of its own):
    // it is judged like any other.
    j.name = r.sni;
    if (!r.has_sni) return reject(Reason::no_name);
    // Handshake bytes after the ClientHello in its record: a second ClientHello there would
    // be read after a HelloRetryRequest without a flight of its own to judge.
    if (r.trailing > 0) return reject(Reason::malformed);
    if (r.offers_tls13 && r.has_early_data) {
      // 0-RTT data (RFC 8446 4.2.10) follows the ClientHello before the server answers,
      // unjudged; and after a HelloRetryRequest the server skips it and reads a second
      // ClientHello. Refused: the client's next connection goes without it.
      return reject(Reason::early_data);
    }
    j.tls13 = r.offers_tls13;
    j.end = r.hello_end;
  } else {
    const HttpHostResult r = parse_http_host(data, len);
    if (r.status == FlightStatus::NeedMore) return final_chance ? reject(Reason::too_large) : j;
    if (r.status != FlightStatus::Complete) return reject(refusal(r.status));
    j.name = r.host;
    if (r.host.empty()) return reject(Reason::no_name);
    // What follows the head (a body, pipelined requests) is the client's: HTTP/1.x has no
    // second head that a front end routes by. The bytes here are judged all the same.
    j.end = len;
  }
  if (!names_.bound(set_key(k), j.name, timers_.now_ms())) return reject(Reason::mismatch);
  // Allowed once the server has the bytes judged; TLS 1.3 also lets the server ask for a
  // second ClientHello (HelloRetryRequest, RFC 8446 4.1.4), judged too (decide()).
  j.verdict = GuardVerdict::Allow;
  return j;
}

SniGuard::Judged SniGuard::judge_next(const Key& k, Flow& f, std::size_t len, bool final_chance) const {
  Judged j;
  auto reject = [&j](Reason why) {
    j.verdict = GuardVerdict::Reject;
    j.why = why;
    return j;
  };
  const uint8_t* d = f.bytes.data();
  constexpr std::size_t kHeader = 5;  // RFC 8446 5.1: type, legacy_record_version, length
  for (;;) {
    const std::size_t pos = f.next_at;
    if (len - pos < kHeader) return final_chance ? reject(Reason::too_large) : j;
    const uint8_t type = d[pos];
    const std::size_t rec_len = be16(d + pos + 3);
    if (type == 20) {
      // change_cipher_spec: one byte 0x01, which a TLS 1.3 client sends once, before its
      // second ClientHello, for middleboxes (RFC 8446 D.4).
      if (f.ccs || rec_len != 1) return reject(Reason::malformed);
      if (len - pos < kHeader + 1) return final_chance ? reject(Reason::too_large) : j;
      if (d[pos + kHeader] != 1) return reject(Reason::malformed);
      f.ccs = true;
      f.next_at = pos + kHeader + 1;
      continue;
    }
    if (type == 21) return reject(Reason::alert);
    // After a HelloRetryRequest a server takes nothing but a ClientHello (RFC 8446 4.1.4:
    // anything else aborts the handshake); nothing else is read as one here.
    if (type != 22 || rec_len == 0) return reject(Reason::malformed);
    if (len - pos < kHeader + 1) return final_chance ? reject(Reason::too_large) : j;
    if (d[pos + kHeader] != 1) return reject(Reason::malformed);
    // It must repeat the first one's name (RFC 8446 4.1.2: the same ClientHello but for
    // key_share, early_data, cookie and padding); OpenSSL's server takes another.
    const ClientHelloResult r = parse_client_hello(d + pos, len - pos);
    if (r.status == FlightStatus::NeedMore) return final_chance ? reject(Reason::too_large) : j;
    if (r.status != FlightStatus::Complete) return reject(refusal(r.status));
    j.name = r.sni;
    if (!r.has_sni) return reject(Reason::no_name);
    if (r.trailing > 0) return reject(Reason::malformed);
    if (r.has_early_data) return reject(Reason::early_data);  // RFC 8446 4.2.10: never in the second
    if (r.sni != f.sni || !names_.bound(set_key(k), r.sni, timers_.now_ms())) return reject(Reason::mismatch);
    j.verdict = GuardVerdict::Allow;
    j.end = pos + r.hello_end;
    return j;
  }
}

void SniGuard::decide(const Key& k, Flow& f, GuardVerdict v, Reason why, const std::string& name, std::size_t end,
                      bool tls13) {
  const std::size_t segments = f.watching ? f.hello_segments : f.segments;  // the first ClientHello's
  if (!f.watching) f.hello_segments = f.segments;
  // Allowed: confirmed later by the server's answer (Flow::confirming); until then the
  // connection's packets are watched and its bytes kept. (An sni=any entry lets any first
  // flight through: bytes resent differently pass too.)
  const bool confirm = v == GuardVerdict::Allow && name != kAnyName;
  const GuardVerdict given = confirm ? GuardVerdict::Watch : v;
  // Every held packet gets the verdict, in the order they came: reinjected in that order.
  for (const Held& h : f.held) give(h.id, h.mark, given);
  f.held.clear();
  f.held.shrink_to_fit();
  tally(f, false);
  if (!confirm) {
    f.bytes = {};
    f.have = {};
  } else {
    f.judged_end = end;
    f.sni = name;
    if (!f.after_hrr) f.tls13 = tls13;
  }
  f.decided = true;
  f.verdict = given;
  f.confirming = confirm;
  tally(f, true);
  f.deadline_ms = timers_.now_ms() + (confirm ? kConfirmWindowMs : kDecidedLingerMs);
  if (confirm)
    wait_confirming(k, f);
  else
    decided_expiry_.emplace_back(f.deadline_ms, k);
  // Decided flows are few at a time (each lingers for seconds): past max_flows of them
  // the oldest lingering ones are forgotten early (their connections carry their verdict in
  // the conntrack mark already), then connections waiting for confirmation, of the tenant
  // with most of them (see Use): the oldest of those.
  while (flows_.size() - pending_ > o_.max_flows && !decided_expiry_.empty()) {
    const auto [at, key] = decided_expiry_.front();
    // k's own entry, just added, is the newest: every older one is gone, and popping it
    // would leave k with no deadline, followed for ever (the eleventh review: such leaked
    // flows kept the bound exceeded, and every later decision forgot every connection
    // waiting for confirmation, any sandbox's).
    if (key == k && at == f.deadline_ms) break;
    decided_expiry_.pop_front();
    const auto old = flows_.find(key);
    if (old != flows_.end() && old->second.decided && old->second.deadline_ms == at && !(key == k)) erase(old);
  }
  while (flows_.size() - pending_ > o_.max_flows) {
    Use* from = heaviest(&Use::confirming);
    if (from == nullptr) break;
    Flow* victim = trim(from->confirm_q, true, from);
    // Its only one is k, the one just decided: the oldest of anyone's instead.
    const std::deque<std::pair<uint64_t, Key>>* q = &from->confirm_q;
    if (victim == nullptr || q->front().second == k) {
      victim = trim(confirm_expiry_, true);
      q = &confirm_expiry_;
    }
    if (victim == nullptr || q->front().second == k) break;
    erase(flows_.find(q->front().second));
  }
  arm();
  if (v == GuardVerdict::Allow) {
    if (f.after_hrr) return;  // counted and logged at the first ClientHello
    ++counts_.allowed;
    if (log::enabled(LogLevel::Debug)) {  // the addresses' text only when it is written
      const SandboxField sandbox(tenant_of_, k.src);
      log::debug("event=first-flight-allowed name={} addr={} port={} src={} segments={}", log::quote(name),
               k.dst.text(), k.dport, k.src.text(), segments);
    }
    return;
  }
  if (why == Reason::none) return;  // the client reset it itself
  count(why);
  reject_log(k, why, name);
}

void SniGuard::on_confirming(const Key& k, Flow& f, const TcpPacket& t, uint32_t id, uint32_t mark) {
  // Bytes resent over those judged must be the same; past them, on a TLS port, nothing
  // before the server's answer (see on_data()); on an HTTP port, the client's own.
  const uint32_t off32 = t.seq - f.start;
  Reason bad = off32 >= (1u << 31) ? Reason::conflict : Reason::none;  // before the start: never its kernel's
  if (!acks_seen(f, t)) bad = Reason::unsent_ack;  // (see on_bare)
  for (std::size_t i = 0; bad == Reason::none && off32 < f.bytes.size() && i < t.payload_len &&
                          off32 + i < f.bytes.size();
       ++i)
    if (f.have[off32 + i] && f.bytes[off32 + i] != t.payload[i]) bad = Reason::conflict;
  if (bad == Reason::none && is_sni_port(k.dport) && uint64_t(off32) + t.payload_len > f.judged_end)
    bad = Reason::early_data;
  if (bad == Reason::none) {
    give(id, mark, GuardVerdict::Watch);
    return;
  }
  end_confirming(k, f, GuardVerdict::Reject);
  count(bad);
  reject_log(k, bad, "");
  give(id, mark, GuardVerdict::Reject);
}

void SniGuard::end_confirming(const Key& k, Flow& f, GuardVerdict v) {
  tally(f, false);
  f.bytes = {};
  f.have = {};
  f.confirming = false;
  tally(f, true);
  f.verdict = v;
  f.deadline_ms = timers_.now_ms() + kDecidedLingerMs;
  decided_expiry_.emplace_back(f.deadline_ms, k);
  arm();
}

void SniGuard::wait_pending(const Key& k, Flow& f) {
  pending_expiry_.emplace_back(f.deadline_ms, k);
  f.use->pending_q.emplace_back(f.deadline_ms, k);
}

void SniGuard::wait_confirming(const Key& k, Flow& f) {
  confirm_expiry_.emplace_back(f.deadline_ms, k);
  f.use->confirm_q.emplace_back(f.deadline_ms, k);
}

bool SniGuard::make_room(std::size_t need, Flow& mine) {
  while (held_bytes_ + need > kMaxHeldBytes) {
    // Another tenant gives room only while it holds more than this one will: so a tenant
    // flooding the guard with flights takes room from itself, never from a smaller one.
    Use* from = heaviest(&Use::held);
    const bool other = from != nullptr && from != mine.use && from->held > mine.use->held + need;
    if (!other) from = mine.use;
    // Its connection waiting longest for confirmation first: forgotten (its next data is
    // reset). Then, of another tenant only, its flight waiting longest for a verdict: refused.
    // (This tenant's own: the flight that needs the room is refused instead.) mine waits for
    // its verdict, never for confirmation, and is never another tenant's.
    if (trim(from->confirm_q, true, from) != nullptr) {
      erase(flows_.find(from->confirm_q.front().second));
      continue;
    }
    if (!other || trim(from->pending_q, false, from) == nullptr) return false;
    refuse_full(from->pending_q.front().second);
  }
  return true;
}

bool SniGuard::make_pending_room(std::size_t mine) {
  Use* from = heaviest(&Use::pending);
  // Only from a tenant that holds more than this one will once it has its room.
  if (from == nullptr || from->pending <= mine + 1 || trim(from->pending_q, false, from) == nullptr) return false;
  refuse_full(from->pending_q.front().second);
  return true;
}

void SniGuard::refuse_full(const Key& k) {
  const auto it = flows_.find(k);
  // Its held packets are rejected (reset); data it sends later meets no state (reset too).
  for (const Held& h : it->second.held) give(h.id, h.mark, GuardVerdict::Reject);
  count(Reason::full);
  reject_log(k, Reason::full, "");
  erase(it);
}

SniGuard::Use* SniGuard::heaviest(std::size_t Use::*what) {
  Use* most = nullptr;
  for (auto& [tenant, u] : use_)
    if (u.*what > 0 && (most == nullptr || u.*what > most->*what)) most = &u;
  return most;
}

SniGuard::Flow* SniGuard::live(const std::pair<uint64_t, Key>& entry, bool confirming) {
  const auto it = flows_.find(entry.second);
  if (it == flows_.end() || it->second.deadline_ms != entry.first) return nullptr;
  Flow& f = it->second;
  return (confirming ? f.decided && f.confirming : !f.decided) ? &f : nullptr;
}

SniGuard::Flow* SniGuard::trim(std::deque<std::pair<uint64_t, Key>>& q, bool confirming, const Use* owner) {
  // Entries go stale when their flow moves on or goes; they leave from the front, here or by
  // their deadline (sweep), so the front is always the oldest live one.
  while (!q.empty()) {
    ++trim_steps_;
    Flow* f = live(q.front(), confirming);
    if (f != nullptr && (owner == nullptr || f->use == owner)) return f;
    q.pop_front();
  }
  return nullptr;
}

void SniGuard::tally(const Flow& f, bool add) {
  auto move = [add](std::size_t& n, std::size_t by) { n = add ? n + by : n - by; };
  const std::size_t waiting = f.decided ? 0 : 1;
  move(pending_, waiting);
  move(f.use->pending, waiting);
  move(held_bytes_, f.bytes.size());
  move(f.use->held, f.bytes.size());
  move(f.use->confirming, f.confirming ? 1 : 0);
}

bool SniGuard::check_use() const {
  std::unordered_map<const Use*, Use> sum;
  std::size_t pending = 0, held = 0;
  for (const auto& [k, f] : flows_) {
    Use& u = sum[f.use];
    ++u.flows;
    u.pending += f.decided ? 0 : 1;
    u.held += f.bytes.size();
    u.confirming += f.confirming ? 1 : 0;
    pending += f.decided ? 0 : 1;
    held += f.bytes.size();
  }
  if (pending != pending_ || held != held_bytes_ || sum.size() != use_.size()) return false;
  for (const auto& [tenant, u] : use_) {
    const auto s = sum.find(&u);
    if (s == sum.end() || u.tenant != tenant || s->second.flows != u.flows || s->second.pending != u.pending ||
        s->second.held != u.held || s->second.confirming != u.confirming)
      return false;
  }
  return true;
}

void SniGuard::count(Reason why) {
  switch (why) {
#define DNSWARD_GUARD_COUNT_(m, s) \
  case Reason::m: ++counts_.m; break;
    DNSWARD_GUARD_REASONS(DNSWARD_GUARD_COUNT_)
#undef DNSWARD_GUARD_COUNT_
    case Reason::none: break;
  }
}

void SniGuard::reject_log(const Key& k, Reason why, const std::string& name) {
  // Untrusted code can open connections as fast as it likes: at most 20 lines a second,
  // and the count of those left out in the next line.
  const uint64_t now = timers_.now_ms();
  if (now >= log_window_ms_ + 1000) {
    log_window_ms_ = now;
    logged_in_window_ = 0;
  }
  if (++logged_in_window_ > 20) {
    ++suppressed_;
    return;
  }
  const uint32_t left_out = suppressed_;
  suppressed_ = 0;
  const char* reason = why == Reason::none ? "?" : kReasonNames[std::size_t(why)];
  const SandboxField sandbox(tenant_of_, k.src);
  if (why == Reason::mismatch)
    log::warn("event=sni-mismatch name={} addr={} port={} src={} bound={} suppressed={}", log::quote(name),
              k.dst.text(), k.dport, k.src.text(), log::quote(names_.names(set_key(k))), left_out);
  else
    log::warn("event=first-flight-rejected reason={} name={} addr={} port={} src={} suppressed={}", reason,
              log::quote(name), k.dst.text(), k.dport, k.src.text(), left_out);
}

void SniGuard::arm() {
  if (armed_) return;
  uint64_t next = UINT64_MAX;
  if (!pending_expiry_.empty()) next = pending_expiry_.front().first;
  if (!decided_expiry_.empty()) next = std::min(next, decided_expiry_.front().first);
  if (!confirm_expiry_.empty()) next = std::min(next, confirm_expiry_.front().first);
  if (next == UINT64_MAX) return;
  const uint64_t now = timers_.now_ms();
  armed_ = true;
  // One wakeup serves every deadline within kSweepSlackMs after the first: a timer per
  // connection would cost more than judging it.
  timer_ = timers_.after((next > now ? next - now : 0) + kSweepSlackMs, [this] {
    armed_ = false;
    sweep();
  });
}

void SniGuard::sweep() {
  const uint64_t now = timers_.now_ms();
  // Both queues are in deadline order (fixed timeouts); an entry whose flow is gone or has
  // another deadline by now is stale and skipped.
  while (!pending_expiry_.empty() && pending_expiry_.front().first <= now) {
    const auto [at, key] = pending_expiry_.front();
    pending_expiry_.pop_front();
    const auto it = flows_.find(key);
    if (it == flows_.end() || it->second.decided || it->second.deadline_ms != at) continue;
    if (!it->second.held.empty()) {
      decide(key, it->second, GuardVerdict::Reject, Reason::timeout, "");
    } else {
      // A handshake and no data yet: forgotten; data after it is reset (no_state).
      erase(it);
    }
  }
  while (!decided_expiry_.empty() && decided_expiry_.front().first <= now) {
    const auto [at, key] = decided_expiry_.front();
    decided_expiry_.pop_front();
    const auto it = flows_.find(key);
    if (it != flows_.end() && it->second.decided && it->second.deadline_ms == at) erase(it);
  }
  while (!confirm_expiry_.empty() && confirm_expiry_.front().first <= now) {
    const auto [at, key] = confirm_expiry_.front();
    confirm_expiry_.pop_front();
    // Never confirmed (a client that sent nothing after its flight): forgotten; its next
    // data is reset, as with state lost.
    const auto it = flows_.find(key);
    if (it != flows_.end() && it->second.confirming && it->second.deadline_ms == at) erase(it);
  }
  // Each tenant's entries leave by their deadline too (those still live went above): the
  // deques hold no more than the connections of the last window.
  for (auto& [tenant, u] : use_)
    for (auto* q : {&u.pending_q, &u.confirm_q})
      while (!q->empty() && q->front().first <= now) q->pop_front();
  arm();
}

void SniGuard::erase(std::unordered_map<Key, Flow, KeyHash>::iterator it) {
  tally(it->second, false);
  Use* u = it->second.use;
  flows_.erase(it);
  if (--u->flows == 0) use_.erase(std::string(u->tenant));
}

}  // namespace dnsward
