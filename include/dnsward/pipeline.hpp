// The per-query stages. One QueryCtx (the query, its client and transport, the policy's
// decision, the reply) flows through named stages that each return a Step, the way dnsdist
// passes one DNSQuestion through its rules:
//   query:  receive -> screen -> require_ruleset -> apply_policy -> answer_locally ->
//           answer_from_cache -> forward
//   answer: on_upstream_answer -> require_ruleset -> check_upstream (retries: no EDNS,
//           0x20) -> readmit (a reload in between) -> prepare (check, pick the addresses,
//           rebuild) -> vouch (into the sets, ACKed) -> require_ruleset -> relay -> deliver
// Cache hits join the answer path at vouch. require_ruleset comes before anything that may
// send a query upstream, and again after vouch (which may judge the ruleset anew). The parts that do I/O (the upstream, the set
// writer, time) come in through the interfaces of ports.hpp, so tests drive every stage with
// fakes and a fake clock (test/unit/test_replay.cc).
#pragma once
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "dnsward/cache.hpp"
#include "dnsward/config.hpp"
#include "dnsward/clock.hpp"
#include "dnsward/metrics.hpp"
#include "dnsward/packet.hpp"
#include "dnsward/policy.hpp"
#include "dnsward/ports.hpp"
#include "dnsward/ruleset_check.hpp"
#include "dnsward/sandboxes.hpp"
#include "dnsward/usage.hpp"

namespace dnsward {

/// Where a reply goes back to: a UDP peer (and the local address it wrote to, for sockets
/// bound to a wildcard address) or a TCP connection.
struct ClientAddr {
  enum class Transport : uint8_t { Udp, Tcp } transport = Transport::Udp;
  int udp_fd = -1;
  sockaddr_storage peer{};
  socklen_t peer_len = 0;
  bool has_local = false;
  in6_pktinfo local6{};
  in_pktinfo local4{};
  uint64_t tcp_conn = 0;
  /// TCP in host mode: the accepted socket carries the host ruleset's mark (SO_MARK), so the
  /// connection came in on a sandbox interface past the anti-spoofing.
  bool marked = false;
  std::string peer_text() const;
  /// The peer's address (family 0 if it has none).
  IpAddr peer_addr() const;
  /// The interface a UDP query came in on (0: unknown).
  unsigned ifindex() const;
};

/// A transport that can carry replies back to its clients.
class ReplySink {
 public:
  virtual ~ReplySink() = default;
  /// Sends a reply (len > 0) or none (len == 0). was_forwarded: this closes a query that
  /// on_query() reported as Forwarded.
  virtual void deliver(const ClientAddr& to, const uint8_t* data, std::size_t len,
                       bool was_forwarded) = 0;
};

/// What became of a received query.
enum class Verdict : uint8_t {
  Drop,       ///< nothing was sent and nothing will be
  Replied,    ///< a reply was delivered at once
  Forwarded,  ///< sent upstream; the reply comes later through the sink
};

/// Names dnsward answers itself whatever the policy says.
enum class LocalName : uint8_t {
  None,
  Why,        ///< CH TXT why.NAME: the verdict for NAME and its reason
  Status,     ///< CH TXT status.dnsward: the ruleset's state, the policy, the mode
  Localhost,  ///< localhost and below (RFC 6761 6.3)
};

/// Records dnsward removed from an answer, for the client's EDE.
struct Removed {
  uint32_t special = 0;   ///< special-purpose addresses (rebinding)
  uint32_t over_cap = 0;  ///< beyond --max-answer-addresses
};

/// One query, from its arrival to its reply: what every stage reads and writes.
struct QueryCtx {
  Query q;
  ClientAddr client;
  /// Host mode: the sandbox that asked (identify); null in single-VM mode.
  std::shared_ptr<Sandbox> sandbox;
  ReplySink* sink = nullptr;
  LocalName local = LocalName::None;
  /// The policy that admitted it and the deciding entry (-1: none, e.g. a would-deny in
  /// audit mode), with that entry's settings. If another policy is in force when the answer
  /// comes, that one judges the answer (entry indices mean nothing across reloads, even for
  /// the same version, since a reordered file moves them).
  std::shared_ptr<const Policy> policy;
  int32_t entry = -1;
  bool allow_private = false;
  /// The reply, in the pipeline's buffer (one thread; sent before the next query is read).
  uint8_t* out = nullptr;
  std::size_t out_cap = 0;
  std::size_t out_len = 0;  ///< 0: nothing to send
};

/// What to answer from: an upstream answer prepared for the client, or a cached one.
struct AnswerInput {
  const uint8_t* msg = nullptr;
  std::size_t len = 0;
  const std::vector<VouchAddr>* addrs = nullptr;
  uint32_t age_s = 0;  ///< seconds it spent in the cache
  Removed removed;
  /// The names its CNAME chain followed (AnswerScan::chain): the addresses are bound to them.
  const std::vector<std::string>* chain = nullptr;
};

class Pipeline {
 public:
  /// upstream and timers must outlive the pipeline; sets may be null (--no-nft).
  Pipeline(Timers& timers, const ServeConfig& cfg, std::shared_ptr<const Policy> policy,
           UpstreamPort& upstream, SetWriter* sets);
  ~Pipeline();
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;

  /// Entry point for every received message.
  Verdict on_query(const uint8_t* pkt, std::size_t len, const ClientAddr& from, ReplySink& sink);

  /// Forgets pending queries and stops the upstream, sending nothing more to any sink.
  /// Call before the transports go away.
  void shutdown();

  /// Puts a new policy in force between two queries. Addresses that were vouched for only
  /// because of entries the new policy no longer has are deleted from the sets at once;
  /// cached answers, filtered under the old policy, are forgotten.
  void reload(std::shared_ptr<const Policy> p);
  /// Deletes from the sets what the policy in force no longer vouches for (at a reload,
  /// and at start against the elements a previous run left); why goes to the log.
  void revoke_unlisted(std::string_view why);
  /// Counts a reload that failed (the old policy stays).
  void reload_failed() { ++counters_.reloads_failed; }
  const Policy& policy() const { return *policy_; }
  /// Whether the entry of pattern has sni=any in the policy guest's queries are judged by
  /// now (the first-flight guard's BoundNames::any).
  bool sni_any_vouches(const IpAddr& guest, std::string_view pattern) const;
  /// Where usage is counted (per entry, per denied name); null: not counted.
  void set_usage(Usage* u) { usage_ = u; }
  /// Where the ruleset's state is read (NftSets); null: not checked (--no-nft).
  void set_ruleset(RulesetWatch* r) { ruleset_ = r; }
  /// Host mode: the registered sandboxes; every query is identified by its source and held
  /// to its sandbox's policy. Null: single-VM mode.
  void set_sandboxes(Sandboxes* s) { sandboxes_ = s; }
  /// Host mode: the cache (unfiltered by policy, shared by all) is kept, and every element
  /// opened for a sandbox its policy in force no longer vouches for is deleted.
  void sandboxes_changed(std::string_view why) { revoke_unlisted(why); }
  /// The answer to `dig CH TXT status.dnsward`, one TXT string each: the ruleset's state
  /// (and why, and its id), --require-ruleset, the policy version, the mode.
  std::vector<std::string> status_lines(const QueryCtx* c = nullptr);
  const Counters& counters() const { return counters_; }
  std::size_t cache_size() const { return cache_.size(); }
  const Histogram& upstream_latency() const { return upstream_latency_; }
  const Histogram& vouch_latency() const { return vouch_latency_; }
  std::size_t inflight() const { return pending_.size(); }

  /// The exfiltration budget's window (budget= counts distinct names in the last minute).
  static constexpr uint64_t kBudgetWindowMs = 60000;

 private:
  /// The policy a guest's queries are judged by now (null: no sandbox has it), and whether
  /// it is in audit mode.
  const Policy* policy_of_guest(const IpAddr& guest, bool& audit) const;
  /// What one stage decided.
  enum class Step : uint8_t {
    Continue,  ///< the next stage decides
    Reply,     ///< ctx.out_len bytes go to the client now (none if 0)
    Drop,      ///< nothing goes to the client
    Forward,   ///< it went upstream; the answer path replies later
  };

  /// A query upstream: its context and the state of the upstream exchange.
  struct Pending {
    QueryCtx ctx;
    uint64_t deadline_ms = 0;
    uint64_t sent_ns = 0;    ///< when it went upstream, for the latency histogram
    bool abandoned = false;  ///< the client already got SERVFAIL; waiting for the port only
    bool with_opt = true;    ///< false once the upstream answered FORMERR to our OPT
    bool caps = true;        ///< the name goes out in random letter case (DNS 0x20)
    uint8_t sent[wire::kMaxNameWire] = {};  ///< the name as last sent (with caps)
  };

  // The query path.
  Step receive(QueryCtx& c, const uint8_t* pkt, std::size_t len);
  /// Host mode: the sandbox of the query's source (for UDP also its arrival interface, for
  /// TCP the host mark); REFUSED, logged, for a source no sandbox has (dropped, logged, if
  /// the message did not parse: parsed false). Continue for a sandbox's query.
  Step identify(QueryCtx& c, bool parsed);
  Step screen(QueryCtx& c);
  /// --require-ruleset: SERVFAIL with EDE 14 while the ruleset is not in force (the CH TXT
  /// diagnostics excepted). Also on the answer path: an answer that comes back after the
  /// ruleset went out of force is withheld too.
  Step require_ruleset(QueryCtx& c);
  Step apply_policy(QueryCtx& c);
  Step answer_locally(QueryCtx& c);
  Step answer_from_cache(QueryCtx& c);
  std::size_t cache_key(const QueryCtx& c, char* buf) const;
  Step forward(QueryCtx& c);

  // The answer path.
  void on_upstream_answer(uint64_t token, int status, const uint8_t* ans, std::size_t len);
  /// Retries (an upstream without EDNS, a 0x20 mismatch) and failures: Continue when the
  /// answer is one to use, Forward when the query went upstream again, Reply for SERVFAIL.
  Step check_upstream(Pending& p, uint16_t id, int status, const uint8_t* ans, std::size_t len);
  /// A reload happened while the query was upstream: the policy in force now decides.
  Step readmit(QueryCtx& c);
  /// Everything after the checks: prepare, vouch, relay, cache.
  Step answer_from_upstream(QueryCtx& c, uint16_t id, const uint8_t* ans, std::size_t len);
  /// Puts the answer's addresses into the sets, ACKed, bound to its chain's names. Fails
  /// closed: SERVFAIL if not, or if an address would be bound to more than
  /// --max-names-per-element names.
  Step vouch(QueryCtx& c, const AnswerInput& a);
  /// The answer, as the client gets it: its ID, TTLs, EDE for removed records, TC.
  Step relay(QueryCtx& c, const AnswerInput& a);

  /// The policy's verdict (entry, types=, budget=, audit mode): Continue with c.entry and
  /// c.allow_private set, or Reply with the denial. count: record usage and log (false
  /// when an answer is judged again after a reload).
  Step admit(QueryCtx& c, bool count);
  /// The reply for a name the policy denies: NXDOMAIN, or NODATA for an ancestor of entries.
  Step deny(QueryCtx& c, Match::Verdict v);
  /// Whether one more distinct name fits the entry's budget= in the sliding window.
  bool within_budget(QueryCtx& c, uint32_t entry, uint32_t budget, const std::string& name);
  /// The policy in force for the query's sandbox (or the one policy in single-VM mode).
  const std::shared_ptr<const Policy>& policy_of(const QueryCtx& c) const {
    return c.sandbox ? c.sandbox->policy : policy_;
  }
  bool audit_of(const QueryCtx& c) const { return c.sandbox ? c.sandbox->spec.audit : cfg_.audit; }
  Step servfail(QueryCtx& c, uint16_t ede, std::string_view why);
  /// A local answer larger than a UDP client takes becomes the question alone with TC=1.
  Step fit_udp(QueryCtx& c);
  /// Registers p under a fresh upstream ID and sends its query; false if it cannot be built.
  bool send_upstream(Pending p);
  void finish(Pending& p, Step s);
  void sweep_overdue();
  void arm_sweep();
  uint16_t fresh_upstream_id();
  void bind_reply(QueryCtx& c) {
    c.out = out_.get();
    c.out_cap = kOutCap;
    c.out_len = 0;
  }

  Timers& timers_;
  const ServeConfig& cfg_;
  std::shared_ptr<const Policy> policy_;
  ReplyOptions reply_opts_;
  UpstreamPort& upstream_;
  SetWriter* sets_;
  AnswerCache cache_;
  Usage* usage_ = nullptr;
  RulesetWatch* ruleset_ = nullptr;
  Sandboxes* sandboxes_ = nullptr;
  uint64_t unknown_logged_ms_ = 0;  // log lines for unknown sources: at most a few a second
  uint32_t unknown_logged_ = 0;
  /// Distinct names asked under each budgeted entry in the last kBudgetWindowMs (single-VM
  /// mode; each sandbox keeps its own).
  std::unordered_map<uint32_t, BudgetWindow> budgets_;
  std::vector<uint8_t> scratch_;  // a cached answer being aged
  std::unordered_map<uint16_t, Pending> pending_;  // by upstream query ID
  Counters counters_;
  Histogram upstream_latency_, vouch_latency_;
  Timers::TimerId sweep_timer_ = 0;
  uint64_t overdue_ms_ = 0;
  bool shutting_down_ = false;
  // The reply buffer, reused (one thread). Not zero-filled: only the bytes of replies
  // written are ever touched, so an idle resolver keeps no 64 KiB of zeros resident.
  static constexpr std::size_t kOutCap = wire::kMaxMessage + 2;
  std::unique_ptr<uint8_t[]> out_{new uint8_t[kOutCap]};
  uint16_t random_ids_[256];  // from getrandom(), refilled when used up
  std::size_t random_left_ = 0;
  uint8_t random_bytes_[4096];  // the same, for 0x20 letter case
  std::size_t random_bytes_left_ = 0;
  /// n random bytes (n <= sizeof random_bytes_), valid until the next call.
  const uint8_t* random_bytes(std::size_t n);
};

}  // namespace dnsward
