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
  if (!parse_tcp_packet(pkt, len, t) || (!is_sni_port(t.dport) && !is_http_port(t.dport))) {
    // Not what the queue rule sends (not TCP to a guarded port, or unreadable: IPv6
    // extension headers, say): left to the rest of the ruleset, whose rule after the queue
    // drops unjudged payload to vouched addresses on guarded ports.
    ++counts_.unparsed;
    give(id, mark, GuardVerdict::Pass);
    return;
  }
  const Key k{t.src, t.dst, t.sport, t.dport};
  if (!names_.known(set_key(k))) {
    // Not an address dnsward vouched for (loopback, an --allow range, or an element whose
    // record a restart without --state lost): nothing to judge it by. The ruleset decides
    // as without the guard; for an address in the sets it drops the payload unjudged.
    ++counts_.unparsed;
    give(id, mark, GuardVerdict::Pass);
    return;
  }
  if (!checksum_pending && !tcp_checksum_ok(pkt, len)) {
    // A segment the server will discard must not be judged: a raw socket's ClientHello with
    // a wrong checksum would win a verdict for the bytes that follow it (review). Dropped,
    // as the server's stack would.
    count(Reason::checksum);
    reject_log(k, Reason::checksum, "");
    give(id, mark, GuardVerdict::Drop);
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
      give(id, mark, GuardVerdict::Allow);  // after the flight: the application's business
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
    if (const auto it = flows_.find(k); it != flows_.end()) {
      // Held packets must not wait for a deadline after the client gave up.
      if (!it->second.decided && !it->second.held.empty())
        decide(k, it->second, GuardVerdict::Reject, Reason::none, "");
      else
        erase(it);
    }
    give(id, mark, GuardVerdict::Pass);
    return;
  }
  if (t.syn) {
    on_syn(k, t, id, mark);
    return;
  }
  if (t.payload_len == 0) {
    // The handshake's ACK, a bare FIN: nothing to judge, and nothing reaches the server.
    const auto it = flows_.find(k);
    give(id, mark, it != flows_.end() && it->second.decided ? it->second.verdict : GuardVerdict::Pass);
    return;
  }
  on_data(k, t, id, mark);
}

void SniGuard::on_syn(const Key& k, const TcpPacket& t, uint32_t id, uint32_t mark) {
  const uint64_t now = timers_.now_ms();
  auto it = flows_.find(k);
  const bool followed = it != flows_.end();
  if (it != flows_.end() && it->second.decided) {
    if (it->second.confirming && it->second.start == t.seq + 1 && t.payload_len == 0) {
      // The same handshake's SYN on a connection waiting for confirmation: its state (the
      // bytes judged, which a resend must repeat) stays.
      give(id, mark, GuardVerdict::Pass);
      return;
    }
    // A SYN after a verdict: the client starts over on the same ports (or retransmits).
    erase(it);
    it = flows_.end();
  }
  if (t.payload_len > 0) {
    // TCP Fast Open (RFC 7413): the first flight rides on the SYN. Judged alone; unless it
    // is a whole first flight naming a bound name, the SYN is dropped and the client sends
    // a plain SYN again (its data follows the handshake, where it is judged as usual). Only
    // on a connection not followed yet: a SYN with payload on one whose handshake was seen
    // is no Fast Open (the kernel retransmits a lost SYN-data as a plain SYN) but a raw
    // socket's way to have another flight judged than the one the socket sends (review).
    if (followed || t.urg) {
      count(Reason::tfo);
      reject_log(k, Reason::tfo, "");
      give(id, mark, GuardVerdict::Drop);
      return;
    }
    const Judged j = judge(k, t.payload, t.payload_len, true);
    const bool whole = j.verdict == GuardVerdict::Allow || j.hello_end == t.payload_len;
    if ((j.verdict == GuardVerdict::Allow || j.verdict == GuardVerdict::Watch) && whole &&
        pending_ < o_.max_flows && make_room(t.payload_len, k)) {
      // Followed from here like any other: a TLS 1.3 ClientHello watched to the next
      // flight, anything else allowed and then confirmed (Flow::confirming).
      Flow f;
      f.start = t.seq + 1;
      f.bytes.assign(t.payload, t.payload + t.payload_len);
      f.have.assign(t.payload_len, true);
      f.held.push_back({id, mark});
      f.segments = 1;
      held_bytes_ += t.payload_len;
      ++pending_;
      Flow& followed_now = flows_.emplace(k, std::move(f)).first->second;
      if (j.verdict == GuardVerdict::Watch) watch(k, followed_now, j);
      else decide(k, followed_now, GuardVerdict::Allow, Reason::none, j.name);
      return;
    }
    count(Reason::tfo);
    reject_log(k, Reason::tfo, j.name);
    give(id, mark, GuardVerdict::Drop);
    return;
  }
  if (it == flows_.end()) {
    if (pending_ >= o_.max_flows) {
      // No room to follow one more connection: the SYN is dropped (the client retries),
      // never passed unfollowed, and no followed connection is evicted.
      count(Reason::full);
      give(id, mark, GuardVerdict::Drop);
      return;
    }
    Flow f;
    f.start = t.seq + 1;  // the SYN takes one sequence number (RFC 9293 3.4)
    f.deadline_ms = now + o_.timeout_ms;
    it = flows_.emplace(k, std::move(f)).first;
    ++pending_;
    pending_expiry_.emplace_back(it->second.deadline_ms, k);
    arm();
  } else if (it->second.start != t.seq + 1) {
    // A SYN of another sequence number on a connection followed and not decided: never
    // where the flight starts. The kernel retransmits its SYN with the same one; a raw
    // socket's SYN would move the start before the real stream, so that bytes the server
    // discards as old fill the head of the flight judged (the second review's attack).
    // Dropped; a client that really starts over gets through once this state expires.
    count(Reason::conflict);
    reject_log(k, Reason::conflict, "");
    give(id, mark, GuardVerdict::Drop);
    return;
  }
  give(id, mark, GuardVerdict::Pass);
}

void SniGuard::on_data(const Key& k, const TcpPacket& t, uint32_t id, uint32_t mark) {
  auto it = flows_.find(k);
  if (it == flows_.end()) {
    // Data without a handshake seen: the state expired or dnsward restarted in between.
    // Guessing where the flight starts could be played (bytes before the guess, sent
    // later, would reach the server unjudged): reset.
    count(Reason::no_state);
    reject_log(k, Reason::no_state, "");
    give(id, mark, GuardVerdict::Reject);
    return;
  }
  Flow& f = it->second;
  if (t.ack && !f.have_ack0) {
    f.ack0 = f.ack_max = t.ack_seq;
    f.have_ack0 = true;
  } else if (t.ack && f.have_ack0 && int32_t(t.ack_seq - f.ack0) > 0) {
    f.answered = true;  // the client acknowledges data the server sent (RFC 9293 3.4)
    if (int32_t(t.ack_seq - f.ack_max) > 0) f.ack_max = t.ack_seq;
  }
  if (f.decided) {
    if (f.confirming) on_confirming(k, f, t, id, mark);
    else give(id, mark, f.verdict);
    return;
  }
  f.held.push_back({id, mark});
  ++f.segments;
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
    if (!make_room(end - f.bytes.size(), k)) {
      decide(k, f, GuardVerdict::Reject, Reason::full, "");
      return;
    }
    held_bytes_ += end - f.bytes.size();
    f.bytes.resize(end);
    f.have.resize(end, false);
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
  const Judged j = contiguous == 0  ? Judged{}
                   : f.watching     ? judge_next(k, f, contiguous, last_segment)
                                    : judge(k, f.bytes.data(), contiguous, last_segment);
  if (j.second_hello) rebase_answer(f);
  if (j.verdict == GuardVerdict::Watch) {
    watch(k, f, j);
    return;
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
  decide(k, f, j.verdict, j.why, j.name);
}

void SniGuard::watch(const Key& k, Flow& f, const Judged& j) {
  f.watching = true;
  f.next_at = j.hello_end;
  f.limit = j.hello_end + kMaxFlightBytes;
  f.sni = j.name;
  f.hello_segments = f.segments;
  f.segments = 0;
  // The next flight comes after the server's answer: --first-flight-timeout from now.
  f.deadline_ms = timers_.now_ms() + o_.timeout_ms;
  pending_expiry_.emplace_back(f.deadline_ms, k);
  arm();
  // The next flight may have begun in the segments already here.
  const std::size_t contiguous = std::find(f.have.begin(), f.have.end(), false) - f.have.begin();
  const Judged n = judge_next(k, f, contiguous, false);
  if (n.second_hello) rebase_answer(f);
  if (n.verdict != GuardVerdict::Pass) {
    decide(k, f, n.verdict, n.why, n.name);
    return;
  }
  // Held packets that carry part of the next flight wait for its verdict, with the rest.
  if (f.next_at != f.bytes.size()) return;
  for (const Held& h : f.held) give(h.id, h.mark, GuardVerdict::Watch);
  f.held.clear();
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
    return j;
  }
  bool tls13 = false;
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
      // 0-RTT data (RFC 8446 4.2.10) follows the ClientHello in application_data records,
      // which look like the encrypted handshake that tells judge_next() the server took
      // this ClientHello; and after a HelloRetryRequest the server skips them and reads a
      // second ClientHello. Refused: the client's next connection goes without it.
      return reject(Reason::early_data);
    }
    tls13 = r.offers_tls13;
    j.hello_end = r.hello_end;
  } else {
    const HttpHostResult r = parse_http_host(data, len);
    if (r.status == FlightStatus::NeedMore) return final_chance ? reject(Reason::too_large) : j;
    if (r.status != FlightStatus::Complete) return reject(refusal(r.status));
    j.name = r.host;
    if (r.host.empty()) return reject(Reason::no_name);
  }
  if (!names_.bound(set_key(k), j.name, timers_.now_ms())) return reject(Reason::mismatch);
  // TLS 1.3 lets the server ask for a second ClientHello (HelloRetryRequest, RFC 8446
  // 4.1.4), which is judged too: the connection is watched to the client's next flight. TLS
  // 1.2 has none in the clear (renegotiation is encrypted), and HTTP/1.x no second head
  // that a front end routes by.
  j.verdict = tls13 ? GuardVerdict::Watch : GuardVerdict::Allow;
  return j;
}

SniGuard::Judged SniGuard::judge_next(const Key& k, Flow& f, std::size_t len, bool final_chance) const {
  Judged j;
  auto reject = [&j](Reason why) {
    j.verdict = GuardVerdict::Reject;
    j.why = why;
    return j;
  };
  auto allow = [&j, &f] {
    j.verdict = GuardVerdict::Allow;
    j.name = f.sni;
    return j;
  };
  const uint8_t* d = f.bytes.data();
  constexpr std::size_t kHeader = 5;  // RFC 8446 5.1: type, legacy_record_version, length
  for (;;) {
    const std::size_t pos = f.next_at;
    if (len - pos < kHeader) return final_chance ? reject(Reason::too_large) : j;
    const uint8_t type = d[pos];
    const std::size_t rec_len = be16(d + pos + 3);
    switch (type) {
      case 20:
        // change_cipher_spec: one byte 0x01, which a TLS 1.3 client sends once, before its
        // second flight or its second ClientHello, for middleboxes (RFC 8446 D.4).
        if (f.ccs || rec_len != 1) return reject(Reason::malformed);
        if (len - pos < kHeader + 1) return final_chance ? reject(Reason::too_large) : j;
        if (d[pos + kHeader] != 1) return reject(Reason::malformed);
        f.ccs = true;
        f.next_at = pos + kHeader + 1;
        continue;
      case 23:
        // application_data: encrypted with keys from the server's answer, which was a
        // ServerHello, so no second ClientHello can come. After a HelloRetryRequest a
        // server reads a plaintext ClientHello and skips encrypted records only if 0-RTT
        // was offered (RFC 8446 4.1.2, 4.2.10), which judge() refused.
        return allow();
      case 21:
        return reject(Reason::alert);
      case 22:
        break;
      default:
        return reject(Reason::malformed);
    }
    // RFC 8446 5.1: "Implementations MUST NOT send zero-length fragments of Handshake types".
    if (rec_len == 0) return reject(Reason::malformed);
    if (len - pos < kHeader + 1) return final_chance ? reject(Reason::too_large) : j;
    if (d[pos + kHeader] != 1) {
      // Another handshake message than a ClientHello: TLS 1.2's ClientKeyExchange or
      // Certificate (the server chose 1.2), or, after the change_cipher_spec, 1.2's
      // encrypted Finished. After a HelloRetryRequest a server takes nothing but a
      // ClientHello (RFC 8446 4.1.4: anything else aborts the handshake).
      return allow();
    }
    // A second ClientHello, after a HelloRetryRequest. It must repeat the first one's name
    // (RFC 8446 4.1.2: the same ClientHello but for key_share, early_data, cookie and
    // padding); OpenSSL's server takes another. A TLS 1.2 encrypted Finished whose first
    // byte happens to be 1 (when resuming with a suite without explicit nonce) comes here
    // too, and is rejected: a rare reset rather than a second name unread.
    const ClientHelloResult r = parse_client_hello(d + pos, len - pos);
    if (r.status == FlightStatus::NeedMore) return final_chance ? reject(Reason::too_large) : j;
    if (r.status != FlightStatus::Complete) return reject(refusal(r.status));
    j.name = r.sni;
    if (!r.has_sni) return reject(Reason::no_name);
    if (r.trailing > 0) return reject(Reason::malformed);
    if (r.sni != f.sni || !names_.bound(set_key(k), r.sni, timers_.now_ms())) return reject(Reason::mismatch);
    j.verdict = GuardVerdict::Allow;
    j.second_hello = true;
    return j;
  }
}

void SniGuard::decide(const Key& k, Flow& f, GuardVerdict v, Reason why, const std::string& name) {
  const std::size_t segments = f.watching ? f.hello_segments : f.segments;  // the first ClientHello's
  // Allowed before the server answered: confirmed later (Flow::confirming), by a packet
  // that shows it did; until then its packets are watched and its bytes kept.
  // (An sni=any entry lets any first flight through: bytes resent differently pass too.)
  const bool confirm = v == GuardVerdict::Allow && !f.answered && name != kAnyName;
  const GuardVerdict given = confirm ? GuardVerdict::Watch : v;
  // Every held packet gets the verdict, in the order they came: reinjected in that order.
  for (const Held& h : f.held) give(h.id, h.mark, given);
  f.held.clear();
  f.held.shrink_to_fit();
  if (!confirm) {
    held_bytes_ -= f.bytes.size();
    f.bytes = {};
    f.have = {};
  }
  f.decided = true;
  f.verdict = given;
  f.confirming = confirm;
  --pending_;
  f.deadline_ms = timers_.now_ms() + (confirm ? kConfirmWindowMs : kDecidedLingerMs);
  (confirm ? confirm_expiry_ : decided_expiry_).emplace_back(f.deadline_ms, k);
  // Decided flows are few at a time (each lingers for seconds): past max_flows of them
  // the oldest are forgotten early, lingering ones first.
  for (auto* q : {&decided_expiry_, &confirm_expiry_})
    while (flows_.size() - pending_ > o_.max_flows && !q->empty()) {
      const auto [at, key] = q->front();
      q->pop_front();
      const auto old = flows_.find(key);
      if (old != flows_.end() && old->second.decided && old->second.deadline_ms == at && !(key == k))
        erase(old);
    }
  arm();
  if (v == GuardVerdict::Allow) {
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
  // Bytes resent over those judged must be the same (checked first, even in the packet
  // that confirms); past them, the client's own.
  const uint32_t off32 = t.seq - f.start;
  bool bad = off32 >= (1u << 31);  // before the flight's start: never sent by its kernel
  for (std::size_t i = 0; !bad && off32 < f.bytes.size() && i < t.payload_len && off32 + i < f.bytes.size(); ++i)
    bad = f.have[off32 + i] && f.bytes[off32 + i] != t.payload[i];
  if (!bad && !f.answered) {
    give(id, mark, GuardVerdict::Watch);
    return;
  }
  // Either way the judged bytes are no longer needed: the server answered, so it read
  // them and nothing resent can change them now; or the connection is rejected.
  end_confirming(k, f, bad ? GuardVerdict::Reject : GuardVerdict::Allow);
  if (bad) {
    count(Reason::conflict);
    reject_log(k, Reason::conflict, "");
  }
  give(id, mark, f.verdict);
}

void SniGuard::rebase_answer(Flow& f) {
  // The server's data so far was its HelloRetryRequest, an answer to the first ClientHello:
  // the second one is confirmed only by an acknowledgment of data sent after it (the
  // fourth review: lost past the guard and resent rewritten, it named another server).
  f.ack0 = f.ack_max;
  f.answered = false;
}

void SniGuard::end_confirming(const Key& k, Flow& f, GuardVerdict v) {
  held_bytes_ -= f.bytes.size();
  f.bytes = {};
  f.have = {};
  f.confirming = false;
  f.verdict = v;
  f.deadline_ms = timers_.now_ms() + kDecidedLingerMs;
  decided_expiry_.emplace_back(f.deadline_ms, k);
  arm();
}

bool SniGuard::make_room(std::size_t need, const Key& keep) {
  while (held_bytes_ + need > kMaxHeldBytes && !confirm_expiry_.empty()) {
    const auto [at, key] = confirm_expiry_.front();
    confirm_expiry_.pop_front();
    const auto it = flows_.find(key);
    if (it != flows_.end() && it->second.confirming && it->second.deadline_ms == at && !(key == keep)) erase(it);
  }
  return held_bytes_ + need <= kMaxHeldBytes;
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
  arm();
}

void SniGuard::erase(std::unordered_map<Key, Flow, KeyHash>::iterator it) {
  if (!it->second.decided) --pending_;
  held_bytes_ -= it->second.bytes.size();
  flows_.erase(it);
}

}  // namespace dnsward
