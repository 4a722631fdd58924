// The first-flight guard (--sni-guard). Vouching addresses is only as narrow as the
// addresses: registries sit on shared CDN front ends, so a vouched address reaches every
// other customer of that CDN by naming it in TLS's server_name or HTTP's Host (domain
// fronting). The ruleset sends each new connection to a vouched address on a guarded port to
// dnsward (nfqueue), both ways, until its first flight is judged and the server has shown
// that it read that flight: the ClientHello's server_name (or the Host of a plain HTTP
// request) must be a name whose answer vouched for that destination (the vouch ledger's
// bound names). A client packet is never passed on unjudged: each gets a verdict of
// NF_ACCEPT with a packet mark, and rules in the chain after the queue move the mark into
// the conntrack mark, so a decided connection never leaves the kernel again; a rejected one
// is reset by the ruleset (a queue verdict cannot send a reset). A chain before the queue
// clears every packet's verdict bits: only dnsward's verdict carries them.
//
// Pure: packets come in as bytes with the kernel's id and mark, verdicts go out through
// VerdictPort, names are asked of BoundNames and time comes from Timers, so unit tests drive
// it with fakes and a fake clock. Every length and sequence number is hostile: the client
// (untrusted code) writes them.
#pragma once
#include <cstdint>
#include <deque>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "dnsward/answer.hpp"
#include "dnsward/client_hello.hpp"
#include "dnsward/clock.hpp"
#include "dnsward/config.hpp"
#include "dnsward/vouch_ledger.hpp"

namespace dnsward {

/// An IPv4 or IPv6 packet carrying TCP, as the queue hands it over (from the IP header on).
struct TcpPacket {
  IpAddr src, dst;
  uint16_t sport = 0, dport = 0;
  uint32_t seq = 0;
  uint32_t ack_seq = 0;  ///< the acknowledgment number (meaningful with ack)
  bool syn = false, ack = false, rst = false, fin = false, urg = false;
  const uint8_t* payload = nullptr;
  std::size_t payload_len = 0;
};
/// Reads the IP and TCP headers: false for anything else (not TCP, fragments, IPv6 extension
/// headers, truncated or inconsistent lengths).
bool parse_tcp_packet(const uint8_t* pkt, std::size_t len, TcpPacket& out);
/// Whether the TCP checksum of a packet parse_tcp_packet() read is right (RFC 9293 3.1,
/// with the IPv4 or IPv6 pseudo-header).
bool tcp_checksum_ok(const uint8_t* pkt, std::size_t len);

/// What becomes of one queued packet. Every verdict but Drop is NF_ACCEPT with the packet
/// mark's "judged" bit, and Allow/Reject add their bit, which the ruleset's chain after the
/// queue copies into the conntrack mark.
enum class GuardVerdict : uint8_t {
  Pass,    ///< not decided by this packet (a SYN-ACK, a bare ACK): the ruleset goes on as usual
  Allow,   ///< the connection named a bound name and the server read it: never queued again
  Reject,  ///< the connection is reset by the ruleset, now and for any later packet
  Drop,    ///< NF_DROP: the sender retransmits (a TCP Fast Open SYN, a SYN-ACK with no room to follow it)
  /// The first flight named a bound name, but the server has not shown yet that it received
  /// exactly those bytes (see SniGuard::Flow::confirming), or, after a TLS 1.3 ClientHello,
  /// whether it answered with a HelloRetryRequest and will read a second one (RFC 8446
  /// 4.1.4). The packet goes on; the connection stays queued in both directions. Marked
  /// with both the allowed and the rejected bit, which the ruleset moves into no conntrack
  /// mark and lets past the drop of unjudged payload.
  Watch,
};
const char* guard_verdict_name(GuardVerdict v);

/// Where verdicts go: the kernel's queue (NfQueue), or a test's recorder.
class VerdictPort {
 public:
  virtual ~VerdictPort() = default;
  virtual void verdict(uint32_t id, GuardVerdict v, uint32_t mark) = 0;
};

/// The guard's verdicts, kept to a ruleset in force. Every verdict but Drop is NF_ACCEPT,
/// which goes on to the chains after the queue: only a ruleset of `nft-rules`' layout (its
/// judge says in force) moves the verdict into the conntrack mark and resets a rejected
/// connection there. Under one of an older layout, whose chain queued where it read the
/// verdicts (NF_REPEAT), or one edited, accept would pass a rejected flight on: while
/// in_force() says no, every packet is dropped instead (its sender retransmits; the
/// connection waits for a ruleset in force, or times out: fail closed).
class RulesetGatedVerdicts : public VerdictPort {
 public:
  RulesetGatedVerdicts(VerdictPort& out, std::function<bool()> in_force)
      : out_(out), in_force_(std::move(in_force)) {}
  void verdict(uint32_t id, GuardVerdict v, uint32_t mark) override;
  /// Verdicts turned into Drop because the ruleset was not in force.
  uint64_t dropped() const { return dropped_; }

 private:
  VerdictPort& out_;
  std::function<bool()> in_force_;
  uint64_t dropped_ = 0;
};

/// The names bound to vouched elements (the vouch ledger's, through NftSets).
class BoundNames {
 public:
  virtual ~BoundNames() = default;
  /// Whether dnsward vouched for k at all (its ledger has a record of it): for others the
  /// guard has nothing to judge by, and leaves the packet to the ruleset.
  virtual bool known(const SetKey& k) const = 0;
  /// Whether name is bound to k, which is held or promised now.
  virtual bool bound(const SetKey& k, std::string_view name, uint64_t now_ms) const = 0;
  /// Whether k, held or promised now, was vouched for by an entry that has sni=any in the
  /// policy in force now: any first flight may reach it. Asked of the policy, not of what
  /// the entry said when it vouched, so that a reload taking sni=any away closes k at once,
  /// though its answers keep refreshing it.
  virtual bool any(const SetKey& k, uint64_t now_ms) const = 0;
  /// The bound names, comma-separated, for the log.
  virtual std::string names(const SetKey& k) const = 0;
};

/// Whether the entry of pattern, in the policy the guest's queries are judged by now, has
/// sni=any (the pipeline answers; family 0 guest in single-VM mode).
using SniAnyJudge = std::function<bool(const IpAddr& guest, std::string_view pattern)>;

/// BoundNames read from the vouch ledger (in-guest and host mode alike: the key says which).
class LedgerBoundNames : public BoundNames {
 public:
  LedgerBoundNames(const VouchLedger& l, SniAnyJudge any) : ledger_(l), any_(std::move(any)) {}
  bool known(const SetKey& k) const override { return ledger_.find(k) != nullptr; }
  bool bound(const SetKey& k, std::string_view name, uint64_t now_ms) const override;
  bool any(const SetKey& k, uint64_t now_ms) const override;
  std::string names(const SetKey& k) const override;

 private:
  const VouchLedger& ledger_;
  SniAnyJudge any_;
};

/// Why a connection was rejected (or a SYN dropped): metrics labels and log reasons.
#define DNSWARD_GUARD_REASONS(X)                                                               \
  X(mismatch, "mismatch")         /* the name is not bound to the destination */              \
  X(no_name, "no_name")           /* a ClientHello without server_name, or no Host */         \
  X(not_tls, "not_tls")           /* a TLS port's first bytes (or the server's) are no TLS */ \
  X(not_http, "not_http")         /* an HTTP port's first bytes are no HTTP/1.x request */    \
  X(malformed, "malformed")       /* inconsistent lengths, a duplicate extension, ... */      \
  X(too_large, "too_large")       /* over the byte or segment bounds before it ended */       \
  X(conflict, "conflict")         /* two segments disagree on the same bytes, or SYN-ACKs */  \
  X(timeout, "timeout")           /* no whole first flight within --first-flight-timeout */   \
  X(no_state, "no_state")         /* data with no SYN-ACK seen (state lost or evicted) */     \
  X(tfo, "tfo")                   /* a TCP Fast Open SYN: dropped, the client sends it plain */   \
  X(urgent, "urgent")             /* urgent data: the server's stream would differ */         \
  X(checksum, "checksum")         /* a wrong checksum: the server would discard the packet */ \
  X(full, "full")                 /* --queue-maxlen connections followed already */           \
  X(early_data, "early_data")     /* 0-RTT offered, or TLS bytes before the server answered */ \
  X(alert, "alert")               /* a plaintext alert after the ClientHello: it gave up */  \
  X(unsent_ack, "unsent_ack")     /* acknowledges server bytes never seen sent (SYN cookies) */

struct GuardCounts {
#define DNSWARD_GUARD_FIELD_(m, s) uint64_t m = 0;
  DNSWARD_GUARD_REASONS(DNSWARD_GUARD_FIELD_)
#undef DNSWARD_GUARD_FIELD_
  uint64_t allowed = 0;   ///< connections that named a bound name
  uint64_t packets = 0;   ///< packets queued to dnsward
  /// Packets passed to the ruleset unjudged: not TCP to a guarded port, or to an address
  /// dnsward did not vouch for.
  uint64_t unparsed = 0;
};

struct GuardOptions {
  std::vector<uint16_t> sni_ports, http_ports;
  GuardMarks marks{};
  uint32_t max_flows = 4096;
  uint64_t timeout_ms = 10000;
  bool host = false;  ///< sets keyed guest . destination
  static GuardOptions from(const ServeConfig& c);
};

/// Bounds of one connection's first flight as followed: past them it is rejected.
inline constexpr std::size_t kMaxFlightBytes = 17 * 1024;  ///< a ClientHello's 16 KiB and records
inline constexpr std::size_t kMaxFlightSegments = 16;
/// Bytes of first flights held at once, over every connection: past it a connection whose
/// flight would need more is rejected (`full`). 4096 connections of 17 KiB each would
/// otherwise be 68 MiB that untrusted code could make dnsward hold.
inline constexpr std::size_t kMaxHeldBytes = 8u << 20;
/// How long an allowed connection may wait for the server's answer to confirm it
/// (SniGuard::Flow::confirming): past it the connection is forgotten, and its next data is
/// reset (a server that never answers; clients retry).
inline constexpr uint64_t kConfirmWindowMs = 120000;
/// The server's first bytes kept: a record header, a handshake header, legacy_version and
/// the random (RFC 8446 4.1.3), which says whether a ServerHello is a HelloRetryRequest.
inline constexpr std::size_t kServerHelloPrefix = 5 + 4 + 2 + 32;
/// How far Flow::srv_seen follows the server's stream: a server sends its answer long
/// before, and the bound keeps offsets far from a wrap of the sequence space.
inline constexpr uint32_t kMaxServerSeen = 1u << 30;
/// Deadlines are met to within this: one sweep serves those that fall due together.
inline constexpr uint64_t kSweepSlackMs = 100;

class SniGuard {
 public:
  SniGuard(GuardOptions o, const BoundNames& names, VerdictPort& out, Timers& timers);
  ~SniGuard();
  SniGuard(const SniGuard&) = delete;
  SniGuard& operator=(const SniGuard&) = delete;

  /// One queued packet: its id, its mark, and the packet from its IP header on.
  /// checksum_pending: the kernel fills the checksum in later (NFQA_SKB_CSUMNOTREADY, a
  /// local socket's packet); otherwise the checksum is the sender's and is verified.
  void on_packet(uint32_t id, uint32_t mark, const uint8_t* pkt, std::size_t len, bool checksum_pending);

  const GuardCounts& counts() const { return counts_; }
  /// Whether the totals and every tenant's use agree with the flows followed (tests, fuzz).
  bool check_use() const;
  /// Deque entries examined finding room (SniGuard::trim): each is popped once, so this
  /// grows with the connections followed, never with packets times stale entries (tests).
  uint64_t trim_steps() const { return trim_steps_; }
  std::size_t flows() const { return flows_.size(); }
  /// Host mode: the sandbox a guest address is registered to ("" if none), so that the
  /// guard's log lines say sandbox=ID beside src=, as the lines of its queries do.
  void set_tenant_of(std::function<std::string(const IpAddr&)> f) { tenant_of_ = std::move(f); }

 private:
  struct Key {
    IpAddr src, dst;
    uint16_t sport = 0, dport = 0;
    bool operator==(const Key& o) const {
      return sport == o.sport && dport == o.dport && src == o.src && dst == o.dst;
    }
  };
  struct KeyHash {
    std::size_t operator()(const Key& k) const {
      return IpAddrHash{}(k.src) * 31u + IpAddrHash{}(k.dst) * 7u + (std::size_t(k.sport) << 16 | k.dport);
    }
  };
  struct Held {
    uint32_t id, mark;
  };
  /// What one tenant holds of the bounds every connection shares (--queue-maxlen followed
  /// connections, kMaxHeldBytes of kept flights): in host mode a sandbox, in-guest the one
  /// guest. At a bound, room is taken from the tenant that holds most, so no sandbox can
  /// have another's connections refused or forgotten by opening many of its own.
  struct Use {
    std::string tenant;          ///< its key in use_
    std::size_t flows = 0;       ///< connections followed (the entry goes with the last)
    std::size_t pending = 0;     ///< of them not decided yet
    std::size_t held = 0;        ///< bytes of their flights kept
    std::size_t confirming = 0;  ///< allowed, waiting for the server to confirm
    /// Its flows' entries (deadline, key) in the order they began to wait for a verdict, or
    /// for confirmation: where room is taken from a tenant, its oldest is found at the front
    /// (stale entries popped first), never by a scan over every tenant's (the tenth review:
    /// stale entries pinned behind a live one made each packet at a bound walk them all).
    std::deque<std::pair<uint64_t, Key>> pending_q, confirm_q;
  };
  /// One connection, followed from the server's SYN-ACK until the
  /// server has shown that it read the flight judged.
  ///
  /// Why the server's packets, not the client's: a client with a raw socket (CAP_NET_RAW in
  /// a guest; a guest's root in host mode) can have a segment judged that the server then
  /// discards (an old timestamp, RFC 7323 5.3 PAWS; a TTL of 1) and forge its own
  /// acknowledgment numbers (the third review). The server's SYN-ACK says where the
  /// client's stream starts (its acknowledgment number is the client's ISN + 1, RFC 9293
  /// 3.4), and an acknowledgment from the server of the flight's last byte says that the
  /// server holds every byte from that start to it (acknowledgments are cumulative, RFC 9293
  /// 3.10.7.4). Every client byte on its way there passed this guard while the connection
  /// was queued, and each copy of each byte had to agree with the bytes judged: so the
  /// server read the bytes judged, whatever it discarded on the way.
  struct Flow {
    Use* use = nullptr;          ///< its tenant's (use_'s values keep their address)
    uint32_t start = 0;          ///< sequence number of the client's first byte (its ISN + 1)
    uint64_t deadline_ms = 0;    ///< rejected (held packets) or forgotten (none) after it
    std::vector<uint8_t> bytes;  ///< the flight as received, by offset from start
    std::vector<bool> have;      ///< which of bytes arrived
    std::vector<Held> held;      ///< packets waiting for the verdict, in arrival order
    std::size_t segments = 0;
    bool decided = false;        ///< verdict given; late packets get the same
    GuardVerdict verdict = GuardVerdict::Pass;
    /// The server's ISN + 1, from its SYN-ACK (whose acknowledgment number is start).
    uint32_t srv_start = 0;
    /// Bytes of the server's stream from srv_start seen here without a gap: only a packet
    /// that starts within them is the server's of this flight (see SniGuard::on_reply).
    uint32_t srv_seen = 0;
    /// The first bytes the server sent (up to kServerHelloPrefix): its first record, which
    /// says whether it answered a TLS 1.3 ClientHello with a HelloRetryRequest.
    std::vector<uint8_t> srv;
    /// After a HelloRetryRequest: the client's second flight is read from next_at (past the
    /// first ClientHello and any change_cipher_spec records since), up to limit; it must be a
    /// ClientHello naming sni again.
    bool watching = false;
    std::size_t next_at = 0;
    std::size_t limit = kMaxFlightBytes;
    std::string sni;
    bool ccs = false;            ///< a change_cipher_spec record was read (one is allowed)
    std::size_t hello_segments = 0;  ///< segments of the first ClientHello (for the log)
    /// Allowed, not yet confirmed (verdict Watch): the packets judged went on, but the
    /// server may never have taken them (dropped past the guard, discarded by its TCP), and
    /// what the client resends can differ (a zero-copy send, a raw socket). Until a server
    /// packet acknowledges judged_end, resent bytes must be the bytes judged (bytes and have
    /// kept), and nothing is read past judged_end on a TLS port (no client sends before the
    /// server's answer). Then, after a ClientHello offering TLS 1.3 (tls13), the server's
    /// first record decides: a ServerHello allows the connection, a HelloRetryRequest sends
    /// it back to following the second ClientHello (watching).
    bool confirming = false;
    std::size_t judged_end = 0;  ///< offset past the last byte judged
    bool tls13 = false;
    bool after_hrr = false;      ///< the server sent its HelloRetryRequest already
  };
  enum class Reason : uint8_t {
#define DNSWARD_GUARD_ENUM_(m, s) m,
    DNSWARD_GUARD_REASONS(DNSWARD_GUARD_ENUM_)
#undef DNSWARD_GUARD_ENUM_
    none
  };
  /// What judge() or judge_next() made of the bytes so far.
  struct Judged {
    GuardVerdict verdict = GuardVerdict::Pass;  ///< Pass: more is needed
    Reason why = Reason::none;
    std::string name;
    std::size_t end = 0;  ///< Allow: the offset past the last byte judged
    bool tls13 = false;   ///< Allow: a ClientHello offering TLS 1.3
  };
  /// What the server's first record says (Flow::srv).
  enum class ServerAnswer : uint8_t { need_more, server_hello, hello_retry, alert, other };

  /// Why a flight that a parser did not find whole and well-formed is rejected.
  static Reason refusal(FlightStatus s);
  static ServerAnswer server_answer(const Flow& f);
  /// The verdict of a packet of a connection decided already (see the definition).
  static GuardVerdict late(const Flow& f);
  /// Whether a client packet acknowledges only server bytes seen here (Flow::srv_seen).
  static bool acks_seen(const Flow& f, const TcpPacket& t);
  /// A client's bare ACK (or FIN) of a connection followed.
  void on_bare(const Key& k, Flow& f, const TcpPacket& t, uint32_t id, uint32_t mark);
  void give(uint32_t id, uint32_t mark, GuardVerdict v);
  /// A reset from either side: the connection's state goes (held packets rejected first).
  void on_reset(const Key& k, uint32_t id, uint32_t mark);
  void on_syn(const Key& k, const TcpPacket& t, uint32_t id, uint32_t mark);
  void on_data(const Key& k, const TcpPacket& t, uint32_t id, uint32_t mark);
  /// A packet of the server's (k is the client's view: src the client).
  void on_reply(const Key& k, const TcpPacket& t, uint32_t id, uint32_t mark);
  void on_syn_ack(const Key& k, const TcpPacket& t, uint32_t id, uint32_t mark);
  /// A server packet of a connection waiting for confirmation: does it confirm it?
  void confirm_by(const Key& k, Flow& f, const TcpPacket& t, uint32_t id, uint32_t mark);
  /// Judges the first flight received so far: Pass while more is needed; Allow of a bound
  /// name is confirmed later (decide()).
  Judged judge(const Key& k, const uint8_t* data, std::size_t len, bool final_chance) const;
  /// Judges the client's second flight after a HelloRetryRequest (f.watching), from
  /// f.next_at to len; moves f.next_at past change_cipher_spec records read.
  Judged judge_next(const Key& k, Flow& f, std::size_t len, bool final_chance) const;
  /// The server sent a HelloRetryRequest: the connection is followed again, for the
  /// second ClientHello.
  void second_flight(const Key& k, Flow& f);
  /// A client packet of an allowed connection not confirmed yet (f.confirming).
  void on_confirming(const Key& k, Flow& f, const TcpPacket& t, uint32_t id, uint32_t mark);
  /// Ends the wait for confirmation with v (Allow: confirmed; Reject): the judged bytes go.
  void end_confirming(const Key& k, Flow& f, GuardVerdict v);
  /// Frees room for need more held bytes for mine's flight (see Use): from the tenant that
  /// holds most if it holds more than mine's would, else from mine's own. Its connections
  /// waiting longest for confirmation are forgotten (their next data is reset, as with
  /// state lost); another tenant's flights not judged yet are rejected (`full`) after
  /// those. False if it cannot.
  bool make_room(std::size_t need, Flow& mine);
  /// Room for one more connection not decided yet, of a tenant holding mine of them, when
  /// --queue-maxlen are: the oldest of the tenant holding most is refused (`full`), if that
  /// tenant holds more than mine + 1. False (no room) otherwise.
  bool make_pending_room(std::size_t mine);
  /// Refuses a connection not decided yet to make room (`full`): its held packets are
  /// rejected, and it is forgotten.
  void refuse_full(const Key& k);
  /// The tenant holding most of what (nullptr if none).
  Use* heaviest(std::size_t Use::*what);
  /// Adds (or takes away) what f holds to its tenant's and the totals: around each change
  /// of f's state, so that they always agree with the flows (check_use() says whether).
  void tally(const Flow& f, bool add);
  /// A flow's entry in q that is still its own (the flow there, in the state q is for):
  /// q's entries go stale when their flow moves on or goes.
  Flow* live(const std::pair<uint64_t, Key>& entry, bool confirming);
  /// Pops q's stale entries off its front (not live, or another tenant's than owner's);
  /// the front entry's flow after, or nullptr.
  Flow* trim(std::deque<std::pair<uint64_t, Key>>& q, bool confirming, const Use* owner = nullptr);
  /// f (key k) begins to wait for its verdict (pending) or for confirmation (confirming) until
  /// f.deadline_ms: an entry in the deque the sweep reads, and in its tenant's.
  void wait_pending(const Key& k, Flow& f);
  void wait_confirming(const Key& k, Flow& f);
  void decide(const Key& k, Flow& f, GuardVerdict v, Reason why, const std::string& name, std::size_t end = 0,
              bool tls13 = false);
  void reject_log(const Key& k, Reason why, const std::string& name);
  void count(Reason why);
  void arm();
  void sweep();
  bool is_sni_port(uint16_t p) const;
  bool is_http_port(uint16_t p) const;
  SetKey set_key(const Key& k) const { return o_.host ? SetKey{k.src, k.dst} : SetKey{k.dst}; }

  GuardOptions o_;
  const BoundNames& names_;
  VerdictPort& out_;
  Timers& timers_;
  std::unordered_map<Key, Flow, KeyHash> flows_;
  void erase(std::unordered_map<Key, Flow, KeyHash>::iterator it);
  // (deadline, key) in deadline order: connections waiting for their flight, and decided
  // ones lingering for late packets.
  std::deque<std::pair<uint64_t, Key>> pending_expiry_, decided_expiry_, confirm_expiry_;
  std::size_t pending_ = 0;  // flows not decided yet: what --queue-maxlen bounds
  std::size_t held_bytes_ = 0;  // sum of the flows' bytes.size()
  std::unordered_map<std::string, Use> use_;  // by tenant (tenant_of_, "" without it)
  uint64_t trim_steps_ = 0;
  Timers::TimerId timer_ = 0;
  bool armed_ = false;
  GuardCounts counts_;
  std::function<std::string(const IpAddr&)> tenant_of_;
  uint64_t log_window_ms_ = 0;
  uint32_t logged_in_window_ = 0, suppressed_ = 0;
};

}  // namespace dnsward
