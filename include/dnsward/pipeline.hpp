// The per-query stages. A query flows through named stage functions that each return an
// explicit Step:  receive -> screen -> answer_locally -> apply_policy -> answer_from_cache ->
// forward; an upstream answer through  on_upstream_answer -> answer_from_upstream
// (prepare_answer: check, pick the addresses, rebuild) -> vouch_and_relay (the addresses into
// the sets, ACKed, then the reply) -> deliver. Cache hits take the same vouch_and_relay.
#pragma once
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "dnsward/cache.hpp"
#include "dnsward/config.hpp"
#include "dnsward/event_loop.hpp"
#include "dnsward/metrics.hpp"
#include "dnsward/packet.hpp"
#include "dnsward/policy.hpp"
#include "dnsward/nft_sets.hpp"
#include "dnsward/upstream.hpp"
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
  std::string peer_text() const;
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

class Pipeline {
 public:
  Pipeline(EventLoop& loop, const ServeConfig& cfg, std::shared_ptr<const Policy> policy);
  ~Pipeline();

  /// Entry point for every received message.
  Verdict on_query(const uint8_t* pkt, std::size_t len, const ClientAddr& from, ReplySink& sink);

  /// Stops the upstream and forgets pending queries, sending nothing more to any sink.
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
  /// Where usage is counted (per entry, per denied name); null: not counted.
  void set_usage(Usage* u) { usage_ = u; }
  /// The set writer every answer's addresses go through; null with --no-nft.
  void set_nft(NftSets* nft) { nft_ = nft; }
  const Counters& counters() const { return counters_; }
  std::size_t cache_size() const { return cache_.size(); }
  const Histogram& upstream_latency() const { return upstream_latency_; }
  const Histogram& vouch_latency() const { return vouch_latency_; }
  std::size_t inflight() const { return pending_.size(); }

 private:
  /// Result of one stage.
  enum class Step : uint8_t { Continue, Reply, Drop, Forward };

  struct Pending {
    Query query;
    ClientAddr client;
    ReplySink* sink = nullptr;
    uint64_t deadline_ms = 0;
    uint64_t sent_ns = 0;    ///< when it went upstream, for the latency histogram
    bool abandoned = false;  ///< the client already got SERVFAIL; waiting for c-ares only
    bool with_opt = true;    ///< false once the upstream answered FORMERR to our OPT
    bool caps = true;        ///< the name goes out in random letter case (DNS 0x20)
    uint8_t sent[wire::kMaxNameWire] = {};  ///< the name as last sent (with caps)
    bool allow_private = false;  ///< the deciding entry says private=yes
    int32_t entry = -1;          ///< the deciding entry (-1 in audit mode for a would-deny)
    /// The policy that allowed it: if another is in force when the answer comes, that one
    /// judges the answer (entry indices mean nothing across reloads, even for the same
    /// version, since a reordered file moves them).
    std::shared_ptr<const Policy> policy;
  };

  Step receive(const uint8_t* pkt, std::size_t len, Query& q);
  Step screen(const Query& q);
  Step answer_locally(const Query& q);
  Step apply_policy(const Query& q, const ClientAddr& from);
  /// The policy's verdict on q (entry, types=, budget=, audit mode): Continue with
  /// allow_private_ and current_entry_ set, or Reply with the denial in out_. count: record
  /// usage and log (false when an answer is judged again after a reload).
  Step admit(const Query& q, const ClientAddr& from, bool count);
  /// The reply for a name the policy denies: NXDOMAIN, or NODATA for an ancestor of entries.
  Step deny(const Query& q, Match::Verdict v);
  Step answer_from_cache(const Query& q, const ClientAddr& from);
  Step forward(const Query& q, const ClientAddr& from, ReplySink& sink);
  /// Registers p under a fresh upstream ID and sends its query; false if it cannot be built.
  bool send_upstream(Pending p);

  void on_upstream_answer(uint64_t token, int status, const uint8_t* ans, std::size_t len);
  void relay_upstream_answer(Pending& p, uint64_t token, int status, const uint8_t* ans,
                             std::size_t len);
  std::size_t answer_from_upstream(const Pending& p, uint16_t id, const uint8_t* ans,
                                   std::size_t len);
  /// The end of every answer path (upstream or cache): vouch for the addresses in the
  /// firewall, then relay. Fails closed: if vouching fails the client gets SERVFAIL.
  /// Returns the reply length in out_ (0: none); vouched tells whether the sets took them.
  /// Records dnsward removed from an answer, for the client's EDE.
  struct Removed {
    uint32_t special = 0;   ///< special-purpose addresses (rebinding)
    uint32_t over_cap = 0;  ///< beyond --max-answer-addresses
  };
  std::size_t vouch_and_relay(const Query& q, const ClientAddr& client, const uint8_t* msg,
                              std::size_t len, uint16_t upstream_id,
                              const std::vector<VouchAddr>& addrs, uint32_t age_s,
                              const Removed& removed, int32_t entry, bool& vouched);
  std::size_t servfail(const Query& q, uint16_t ede, std::string_view why);
  void sweep_overdue();
  void arm_sweep();
  uint16_t fresh_upstream_id();

  EventLoop& loop_;
  const ServeConfig& cfg_;
  std::shared_ptr<const Policy> policy_;
  ReplyOptions reply_opts_;
  std::unique_ptr<Upstream> upstream_;
  NftSets* nft_ = nullptr;
  AnswerCache cache_;
  bool allow_private_ = false;  // of the entry that allowed the query being processed
  int32_t current_entry_ = -1;   // that entry
  Usage* usage_ = nullptr;
  // Distinct names asked under each budgeted entry in the current minute.
  struct Window {
    uint64_t minute = 0;
    std::unordered_set<std::string> names;
  };
  std::unordered_map<uint32_t, Window> budgets_;
  std::vector<uint8_t> scratch_;  // a cached answer being aged
  std::unordered_map<uint16_t, Pending> pending_;  // by upstream query ID
  Counters counters_;
  Histogram upstream_latency_, vouch_latency_;
  EventLoop::TimerId sweep_timer_ = 0;
  uint64_t overdue_ms_ = 0;
  bool shutting_down_ = false;
  std::vector<uint8_t> out_;  // reply buffer, reused (one thread)
  std::size_t out_len_ = 0;
  uint16_t random_ids_[256];  // from getrandom(), refilled when used up
  std::size_t random_left_ = 0;
  uint8_t random_bytes_[4096];  // the same, for 0x20 letter case
  std::size_t random_bytes_left_ = 0;
  /// n random bytes (n <= sizeof random_bytes_), valid until the next call.
  const uint8_t* random_bytes(std::size_t n);
};

}  // namespace dnsward
