#include "dnsward/pipeline.hpp"

#include <ares.h>
#include <arpa/inet.h>
#include <sys/random.h>

#include <net/if.h>

#include <algorithm>
#include <ctime>
#include <cstring>
#include <unordered_set>

#include "dnsward/clock.hpp"
#include "dnsward/explain.hpp"
#include "dnsward/log.hpp"

namespace dnsward {
using namespace wire;

namespace {
/// Host mode: every log line written while a query of a sandbox is handled says
/// sandbox=ID, and its policy is that sandbox's (log.hpp's context fields).
class LogScope {
 public:
  void set(const Sandbox& sb) {
    if (!saved_) saved_policy_ = log::policy_version;
    saved_ = true;
    log::sandbox = sb.spec.id;
    log::policy_version = sb.policy->version();
  }
  ~LogScope() {
    if (!saved_) return;
    log::sandbox.clear();
    log::policy_version = std::move(saved_policy_);
  }

 private:
  bool saved_ = false;
  std::string saved_policy_;
};
}  // namespace


IpAddr ClientAddr::peer_addr() const {
  if (peer.ss_family == AF_INET)
    return IpAddr::v4(reinterpret_cast<const uint8_t*>(&reinterpret_cast<const sockaddr_in*>(&peer)->sin_addr));
  if (peer.ss_family == AF_INET6)
    return IpAddr::v6(reinterpret_cast<const uint8_t*>(&reinterpret_cast<const sockaddr_in6*>(&peer)->sin6_addr));
  return IpAddr{};
}

unsigned ClientAddr::ifindex() const {
  if (!has_local) return 0;
  return peer.ss_family == AF_INET ? unsigned(local4.ipi_ifindex) : unsigned(local6.ipi6_ifindex);
}

std::string ClientAddr::peer_text() const {
  char buf[INET6_ADDRSTRLEN] = "?";
  uint16_t port = 0;
  if (peer.ss_family == AF_INET) {
    const auto* s = reinterpret_cast<const sockaddr_in*>(&peer);
    inet_ntop(AF_INET, &s->sin_addr, buf, sizeof buf);
    port = ntohs(s->sin_port);
    return fmt::format("{}:{}", buf, port);
  }
  if (peer.ss_family == AF_INET6) {
    const auto* s = reinterpret_cast<const sockaddr_in6*>(&peer);
    inet_ntop(AF_INET6, &s->sin6_addr, buf, sizeof buf);
    port = ntohs(s->sin6_port);
    return fmt::format("[{}]:{}", buf, port);
  }
  return "?";
}

Pipeline::Pipeline(Timers& timers, const ServeConfig& cfg, std::shared_ptr<const Policy> policy,
                   UpstreamPort& upstream, SetWriter* sets)
    : timers_(timers), cfg_(cfg), policy_(std::move(policy)), upstream_(upstream), sets_(sets),
      cache_(cfg.cache_size, cfg.cache_bytes) {
  reply_opts_.our_udp_size = cfg.udp_payload;
  reply_opts_.negative_ttl = cfg.negative_ttl;
  upstream_.set_receiver([this](uint64_t token, int status, const uint8_t* ans, std::size_t len) {
    on_upstream_answer(token, status, ans, len);
  });
  // The upstream bounds every query by its own timeouts; this sweep is the safety net that
  // keeps "SERVFAIL in bounded time" true even if that bound were ever missed.
  overdue_ms_ = upstream_.worst_case_ms() + 500;
}

void Pipeline::arm_sweep() {
  // Runs only while queries are upstream, so an idle resolver never wakes up.
  sweep_timer_ = timers_.after(250, [this] {
    sweep_timer_ = 0;
    sweep_overdue();
    // The sweep may have armed the next one already: a reply it delivered let a paused TCP
    // connection send its next query. One chain only, or each such sweep would add one.
    if (!pending_.empty() && !sweep_timer_) arm_sweep();
  });
}

Pipeline::~Pipeline() { shutdown(); }

void Pipeline::shutdown() {
  if (shutting_down_) return;
  if (sweep_timer_) timers_.cancel(sweep_timer_);
  sweep_timer_ = 0;
  shutting_down_ = true;
  upstream_.stop();  // nothing it still holds reaches us
  pending_.clear();
}

uint16_t Pipeline::fresh_upstream_id() {
  // Random and unique among queries in flight: c-ares 1.18 puts our ID on the wire as is,
  // and a predictable ID invites spoofed answers (RFC 5452 4.3).
  for (;;) {
    if (random_left_ == 0) {
      if (getrandom(random_ids_, sizeof random_ids_, 0) != ssize_t(sizeof random_ids_))
        throw std::runtime_error("getrandom failed");
      random_left_ = sizeof random_ids_ / sizeof random_ids_[0];
    }
    const uint16_t id = random_ids_[--random_left_];
    if (!pending_.count(id)) return id;
  }
}

const uint8_t* Pipeline::random_bytes(std::size_t n) {
  if (random_bytes_left_ < n) {
    if (getrandom(random_bytes_, sizeof random_bytes_, 0) != ssize_t(sizeof random_bytes_))
      throw std::runtime_error("getrandom failed");
    random_bytes_left_ = sizeof random_bytes_;
  }
  random_bytes_left_ -= n;
  return random_bytes_ + random_bytes_left_;
}

// ---------------------------------------------------------------------------------------
// The query path

Verdict Pipeline::on_query(const uint8_t* pkt, std::size_t len, const ClientAddr& from,
                           ReplySink& sink) {
  ++counters_.received;
  QueryCtx c;
  c.client = from;
  c.sink = &sink;
  bind_reply(c);
  Step s;
  LogScope scope;
  try {
    s = receive(c, pkt, len);
    // Host mode: the source first, whatever the message: an unknown source gets REFUSED (or
    // nothing, if the message cannot be answered) and a log line, never FORMERR or NOTIMP.
    if (sandboxes_) {
      const bool parsed = s == Step::Continue;
      const Step id = identify(c, parsed);
      if (id != Step::Continue || parsed) s = id;
    }
    if (c.sandbox) scope.set(*c.sandbox);
    if (s == Step::Continue) s = screen(c);
    if (s == Step::Continue) s = require_ruleset(c);
    if (s == Step::Continue) s = apply_policy(c);
    if (s == Step::Continue) s = answer_locally(c);
    if (s == Step::Continue) s = answer_from_cache(c);
    if (s == Step::Continue) s = forward(c);
  } catch (const std::exception& e) {
    // The one place exceptions stop on the query path: the client gets SERVFAIL, the loop
    // goes on.
    log::error("event=internal-error error={}", log::quote(e.what()));
    s = servfail(c, edns::EDE_OTHER, "dnsward internal error");
  }
  if (s == Step::Reply && c.out_len > 0) {
    sink.deliver(from, c.out, c.out_len, false);
    return Verdict::Replied;
  }
  if (s == Step::Forward) return Verdict::Forwarded;
  ++counters_.dropped;
  return Verdict::Drop;
}

Pipeline::Step Pipeline::receive(QueryCtx& c, const uint8_t* pkt, std::size_t len) {
  switch (parse_query(pkt, len, c.q)) {
    case ParseStatus::Ok:
      return Step::Continue;
    case ParseStatus::Drop:
      return Step::Drop;
    case ParseStatus::FormErr:
      ++counters_.formerr;
      c.out_len = build_header_error(pkt, len, rcode::FORMERR, c.out, c.out_cap);
      return Step::Reply;
    case ParseStatus::NotImp:
      ++counters_.notimp;
      c.out_len = build_header_error(pkt, len, rcode::NOTIMP, c.out, c.out_cap);
      return Step::Reply;
  }
  return Step::Drop;
}

Pipeline::Step Pipeline::identify(QueryCtx& c, bool parsed) {
  if (!sandboxes_) return Step::Continue;
  const IpAddr from = c.client.peer_addr();
  std::shared_ptr<Sandbox> sb = sandboxes_->by_addr(from);
  // The source is trustworthy only as far as the host ruleset makes it: anti-spoofing in
  // prerouting lets a guest address in only through its own tap. UDP says which interface
  // it came in on (IP_PKTINFO); an accepted TCP socket carries the mark prerouting set on
  // packets from sandbox interfaces (SO_MARK with tcp_fwmark_accept).
  const char* why = nullptr;
  if (!sb) {
    why = "no sandbox has this address";
  } else if (c.client.transport == ClientAddr::Transport::Tcp) {
    if (!c.client.marked) why = "a TCP connection without the host mark (not from a sandbox interface)";
  } else {
    const unsigned idx = c.client.ifindex();
    if (idx == 0 || idx != sb->ifindex) {
      char name[IF_NAMESIZE] = {};
      if (idx == 0 || !if_indextoname(idx, name) || sb->spec.iface != name)
        why = "it came in on another interface than the sandbox's";
      else
        sb->ifindex = idx;  // the tap's index, until it changes (a tap recreated)
    }
  }
  if (!why) {
    c.sandbox = std::move(sb);
    ++c.sandbox->counts.queries;
    return Step::Continue;
  }
  ++counters_.unknown_source;
  // A log line each, but at most 10 a second: a flood from an unknown source must not
  // become a flood of logs.
  const uint64_t now = timers_.now_ms();
  if (now >= unknown_logged_ms_ + 1000) {
    unknown_logged_ms_ = now;
    unknown_logged_ = 0;
  }
  if (unknown_logged_++ < 10)
    log::warn("event=unknown-source client={} claimed={} transport={} msg={}", c.client.peer_text(),
              sb ? sb->spec.id : std::string("-"),
              c.client.transport == ClientAddr::Transport::Tcp ? "tcp" : "udp", log::quote(why));
  if (!parsed) return Step::Drop;  // nothing to echo a question from
  ++counters_.refused;
  c.out_len = build_rcode(c.q, rcode::REFUSED, reply_opts_, c.out, c.out_cap, edns::EDE_PROHIBITED,
                          "dnsward: this source is not a registered sandbox");
  return Step::Reply;
}

namespace {
/// `why.NAME` in class CH, type TXT (NAME not empty).
bool is_why_query(const Query& q) {
  return q.qclass == klass::CH && q.qtype == type::TXT && q.qname_len > 5 && q.qname_lc[0] == 3 &&
         std::memcmp(q.qname_lc + 1, kWhyLabel.data(), 3) == 0 && q.qname_lc[4] != 0;
}

/// `status.dnsward.` in class CH, type TXT: class CHAOS is where servers answer questions
/// about themselves (`version.bind`, `hostname.bind`, RFC 4892 2), never about names of the
/// internet, so no allowlist entry can be shadowed by it.
constexpr uint8_t kStatusName[] = {6, 's', 't', 'a', 't', 'u', 's', 7, 'd', 'n', 's', 'w', 'a', 'r', 'd', 0};
bool is_status_query(const Query& q) {
  return q.qclass == klass::CH && q.qtype == type::TXT && q.qname_len == sizeof kStatusName &&
         std::memcmp(q.qname_lc, kStatusName, sizeof kStatusName) == 0;
}
}  // namespace

Pipeline::Step Pipeline::screen(QueryCtx& c) {
  const Query& q = c.q;
  auto reply = [&](uint16_t rc, uint16_t ede, std::string_view why) {
    c.out_len = build_rcode(q, rc, reply_opts_, c.out, c.out_cap, ede, why);
    return Step::Reply;
  };
  if (q.has_edns && q.edns_version != 0) {  // RFC 6891 6.1.3: we implement version 0 only
    ++counters_.badvers;
    return reply(rcode::BADVERS, edns::kNoEde, {});
  }
  if (q.qtype == type::OPT) {  // RFC 6891 6.1.1: OPT is a pseudo-RR, never a question
    ++counters_.formerr;
    return reply(rcode::FORMERR, edns::kNoEde, {});
  }
  if (is_why_query(q)) {
    c.local = LocalName::Why;  // class CH, answered locally
    return Step::Continue;
  }
  if (is_status_query(q)) {
    c.local = LocalName::Status;  // class CH, answered locally
    return Step::Continue;
  }
  if (q.qclass != klass::IN) {
    ++counters_.refused;
    return reply(rcode::REFUSED, edns::EDE_NOT_SUPPORTED, "dnsward answers class IN only");
  }
  if (q.qtype == type::AXFR || q.qtype == type::IXFR) {
    ++counters_.refused;
    return reply(rcode::REFUSED, edns::EDE_PROHIBITED, "zone transfers are not served");
  }
  if (q.qtype >= 128 && q.qtype != type::ANY && q.qtype <= 254) {  // meta-types (RFC 6895 3.1)
    ++counters_.notimp;
    return reply(rcode::NOTIMP, edns::kNoEde, {});
  }
  // RFC 6761 6.3: localhost is answered with loopback addresses and never sent upstream,
  // whatever the allowlist says.
  if (is_localhost(q.qname_lc, q.qname_len)) c.local = LocalName::Localhost;
  return Step::Continue;
}

Pipeline::Step Pipeline::require_ruleset(QueryCtx& c) {
  if (!cfg_.require_ruleset || c.local == LocalName::Why || c.local == LocalName::Status)
    return Step::Continue;
  const RulesetStatus* r = ruleset_ ? &ruleset_->ruleset_now() : nullptr;
  if (r && r->in_force()) return Step::Continue;
  // Vouching for addresses no rule enforces would pretend a filter that is not there; an
  // operator who asked for --require-ruleset wants the sandbox to fail instead. EDE 14 "Not
  // Ready" (RFC 8914 4.15): the server is not fully functional. SERVFAIL says "failed", not
  // "does not exist": an NXDOMAIN would be cached as the name's absence for the negative
  // TTL (RFC 2308 5), a failure at most five minutes (RFC 2308 7.1), and stubs retry it.
  ++counters_.not_ready;
  // The reason last: a long one is what the EDE's length bound cuts, never the pointer.
  return servfail(c, edns::EDE_NOT_READY,
                  fmt::format("dnsward: its nftables ruleset is not in force, and --require-ruleset "
                              "withholds answers until it is (dig CH TXT status.dnsward): {}",
                              r ? r->reason : std::string("the ruleset is not checked")));
}

std::vector<std::string> Pipeline::status_lines(const QueryCtx* c) {
  std::vector<std::string> out;
  if (c && c->sandbox) out.push_back(fmt::format("sandbox={}", c->sandbox->spec.id));
  if (!ruleset_) {
    out.push_back("ruleset=not-checked");
    out.push_back("reason=--no-nft: no nftables hook, so no ruleset; answered addresses are not vouched for");
  } else {
    const RulesetStatus& r = ruleset_->ruleset_now();
    out.push_back(fmt::format("ruleset={}", r.word()));
    if (!r.in_force()) out.push_back("reason=" + r.reason);
    if (!r.id.empty())
      out.push_back(fmt::format("id={} rules={} chain={} table={} {}", r.id, r.rules, r.chain,
                                option_value_name("nft-family", cfg_.nft_family), cfg_.nft_table));
  }
  out.push_back(fmt::format("require-ruleset={}", cfg_.require_ruleset ? "on" : "off"));
  const Policy& p = c ? *policy_of(*c) : *policy_;
  out.push_back(fmt::format("policy={} entries={}", p.version(), p.size()));
  out.push_back(fmt::format("mode={}", c && c->sandbox ? (c->sandbox->spec.audit ? "audit" : "enforce") : cfg_.mode));
  return out;
}

Pipeline::Step Pipeline::apply_policy(QueryCtx& c) {
  if (c.local != LocalName::None) return Step::Continue;  // dnsward's own names
  return admit(c, true);
}

Pipeline::Step Pipeline::answer_locally(QueryCtx& c) {
  const Query& q = c.q;
  switch (c.local) {
    case LocalName::Why: {
      // `dig CH TXT why.NAME`: the verdict for NAME and its reason.
      ++counters_.chaos_why;
      const std::string name = wire::name_to_text(q.qname_lc + 4, q.qname_len - 4);
      c.out_len = build_txt(q, explain_lines(*policy_of(c), name), reply_opts_, c.out, c.out_cap);
      return fit_udp(c);
    }
    case LocalName::Status:
      // `dig CH TXT status.dnsward`: is the ruleset in force, and under which policy.
      ++counters_.chaos_status;
      c.out_len = build_txt(q, status_lines(&c), reply_opts_, c.out, c.out_cap);
      return fit_udp(c);
    case LocalName::Localhost:
      ++counters_.localhost;
      c.out_len = build_localhost(q, reply_opts_, c.out, c.out_cap);
      return Step::Reply;
    case LocalName::None:
      break;
  }
  if (q.qtype == type::ANY) {
    // RFC 8482 4.2: a minimal answer instead of everything (to an admitted name: a denied
    // one got its denial); nothing is forwarded.
    ++counters_.any_minimal;
    c.out_len = build_any_hinfo(q, reply_opts_, c.out, c.out_cap);
    return Step::Reply;
  }
  return Step::Continue;
}

Pipeline::Step Pipeline::fit_udp(QueryCtx& c) {
  // Our TXT answers grow with what they explain (a long reason, an entry's justification):
  // one that does not fit a UDP client's size (512 bytes without EDNS, RFC 1035 4.2.1; its
  // EDNS size, RFC 6891 7) goes as the question alone with TC=1, and the client asks over TCP.
  if (c.client.transport == ClientAddr::Transport::Udp && c.out_len > c.q.udp_limit(cfg_.udp_payload)) {
    c.out_len = build_rcode(c.q, rcode::NOERROR, reply_opts_, c.out, c.out_cap, edns::kNoEde, {});
    if (c.out_len > 2) c.out[2] |= uint8_t(flag::TC >> 8);
    ++counters_.truncated;
  }
  return Step::Reply;
}

bool Pipeline::within_budget(QueryCtx& c, uint32_t entry, uint32_t budget, const std::string& name) {
  // A sliding window, not a calendar minute: with per-minute buckets, 2N names fit in two
  // seconds around a minute boundary. Each sandbox has its own windows.
  BudgetWindow& w = (c.sandbox ? c.sandbox->budgets : budgets_)[entry];
  const uint64_t now = timers_.now_ms();
  while (!w.first_asked.empty() && w.first_asked.front().first + kBudgetWindowMs <= now) {
    w.names.erase(w.first_asked.front().second);
    w.first_asked.pop_front();
  }
  if (w.names.count(name)) return true;  // counted already in this window
  if (w.names.size() >= budget) return false;
  w.names.insert(name);
  w.first_asked.emplace_back(now, name);
  return true;
}

Pipeline::Step Pipeline::admit(QueryCtx& c, bool count) {
  const Query& q = c.q;
  const std::shared_ptr<const Policy>& pol = policy_of(c);  // the sandbox's, in host mode
  const Match m = pol->match(q.qname_lc, q.qname_len);
  // Usage is counted where it is kept: per sandbox in host mode (with --sandboxes, where
  // its counts are written), else with --state.
  Usage* const usage = !count                         ? nullptr
                       : !c.sandbox                   ? usage_
                       : cfg_.sandboxes_dir.empty()   ? nullptr
                                                      : &c.sandbox->usage;
  const int64_t now = usage ? int64_t(std::time(nullptr)) : 0;
  c.policy = pol;
  c.entry = -1;
  c.allow_private = false;
  if (m.verdict == Match::Verdict::Allow) {
    const auto idx = std::size_t(m.entry);
    if (!pol->allows_type(idx, q.qtype) && q.qtype != type::ANY) {
      // Names under a wildcard are a channel to whoever runs that zone: only the types a
      // sandbox needs to connect go out (RFC 8914 17, Filtered).
      ++counters_.filtered_type;
      char why[512];
      const auto r = fmt::format_to_n(why, sizeof why, "dnsward: type {} is not allowed under '{}' (types=)",
                                      type::text(q.qtype), pol->pattern(idx));
      c.out_len = build_negative(q, rcode::NOERROR, reply_opts_, c.out, c.out_cap,
                                 edns::EDE_FILTERED, std::string_view(why, std::min(r.size, sizeof why)));
      return Step::Reply;
    }
    if (const uint32_t budget = pol->budget(idx)) {
      const std::string name = q.qname_text();
      if (!within_budget(c, uint32_t(idx), budget, name)) {
        ++counters_.over_budget;
        log::warn("event=over-budget name={} entry={} budget={} client={}", log::quote(name),
                  log::quote(pol->pattern(idx)), budget, c.client.peer_text());
        char why[512];
        const auto r = fmt::format_to_n(why, sizeof why,
            "dnsward: '{}' allows {} new names a minute and has used them; {} is denied for now",
            pol->pattern(idx), budget, name);
        c.out_len = build_negative(q, rcode::NXDOMAIN, reply_opts_, c.out, c.out_cap,
                                   edns::EDE_BLOCKED, std::string_view(why, std::min(r.size, sizeof why)));
        return Step::Reply;
      }
    }
    c.allow_private = pol->allow_private(idx);
    c.entry = m.entry;
    if (usage) usage->allowed(pol->pattern(idx), now);
    if (c.sandbox && count) ++c.sandbox->counts.allowed;
    return Step::Continue;
  }
  if (audit_of(c)) {
    // Audit mode: what enforce would deny is forwarded and vouched for like any other name,
    // and logged and counted so that `dnsward report` can list the lines to add.
    if (!count) return Step::Continue;
    ++counters_.would_deny;
    const std::string name = q.qname_text();
    if (usage) usage->would_deny(name, now);
    log::info("event=would-deny name={} type={} client={} msg={}", log::quote(name),
              type::text(q.qtype), c.client.peer_text(), log::quote("audit mode: not enforced"));
    return Step::Continue;
  }
  if (usage) usage->denied(q.qname_text(), now);
  if (c.sandbox && count) ++c.sandbox->counts.denied;
  if (log::enabled(LogLevel::Debug))
    log::debug("event=denied name={} type={} client={}", log::quote(q.qname_text()),
               type::text(q.qtype), c.client.peer_text());
  return deny(c, m.verdict);
}

Pipeline::Step Pipeline::deny(QueryCtx& c, Match::Verdict v) {
  const Query& q = c.q;
  // Built without the heap: denials are the hot path of a sandbox that probes the network.
  char name[4 * kMaxNameWire];
  const std::size_t n = wire::name_to_text(q.qname_lc, q.qname_len, name, sizeof name);
  const std::string_view nm(name, n);
  char why[512];
  const bool ancestor = v == Match::Verdict::Ancestor;
  // NODATA, not NXDOMAIN, for an ancestor of entries: under RFC 8020 an NXDOMAIN there would
  // tell caches that the allowed names below it do not exist either.
  const auto r = fmt::format_to_n(why, sizeof why,
                                  "dnsward: {} is not on the allowlist{} (policy {}; dig CH TXT why.{})",
                                  nm, ancestor ? "; names below it are" : "", policy_of(c)->version(), nm);
  const std::string_view text(why, std::min(r.size, sizeof why));
  ++(ancestor ? counters_.ancestor_nodata : counters_.denied);
  c.out_len = build_negative(q, ancestor ? rcode::NOERROR : rcode::NXDOMAIN, reply_opts_,
                             c.out, c.out_cap, edns::EDE_BLOCKED, text);
  return Step::Reply;
}

/// The cache key: the question, and in host mode whether the answer was filtered with
/// private= (the one thing of an entry that changes what prepare_answer keeps). The cache
/// holds answers as the upstream gave them, less what no entry would let through; every hit
/// is admitted by the asking sandbox's own policy first and vouched for it alone.
std::size_t Pipeline::cache_key(const QueryCtx& c, char* buf) const {
  std::size_t n = AnswerCache::key(c.q, buf);
  if (sandboxes_) buf[n++] = c.allow_private ? 'p' : '-';
  return n;
}

Pipeline::Step Pipeline::answer_from_cache(QueryCtx& c) {
  char key[AnswerCache::kMaxKey + 1];
  const CacheEntry* e = cache_.find(std::string_view(key, cache_key(c, key)), timers_.now_ms());
  if (!e) return Step::Continue;
  ++counters_.cache_hits;
  if (c.sandbox) ++c.sandbox->counts.cached;
  // Age the TTLs (RFC 1035 7.4 / RFC 2308 5) on a copy, then take the same exit as an
  // upstream answer: a cache hit vouches again, so an element that expired or was flushed
  // is back in the set before the client sees the address.
  const uint32_t age = uint32_t((timers_.now_ms() - e->stored_ms) / 1000u);
  scratch_.assign(e->msg.begin(), e->msg.end());
  rewrite_ttls(scratch_.data(), e->ttl_offsets, UINT32_MAX, age);
  const AnswerInput a{scratch_.data(), scratch_.size(), &e->vouch, age,
                      Removed{e->dropped_special, e->dropped_over_cap}, &e->chain};
  Step s = vouch(c, a);
  if (s == Step::Continue) s = require_ruleset(c);  // vouching may have judged it anew
  return s == Step::Continue ? relay(c, a) : s;
}

Pipeline::Step Pipeline::forward(QueryCtx& c) {
  if (pending_.size() >= cfg_.max_inflight) {
    ++counters_.overload;
    return servfail(c, edns::EDE_OTHER, "dnsward: too many queries in flight upstream");
  }
  if (c.sandbox && c.sandbox->inflight >= cfg_.sandbox_max_inflight) {
    // One sandbox's flood must not take every slot upstream from the others.
    ++counters_.sandbox_capped;
    ++c.sandbox->counts.refused_caps;
    return servfail(c, edns::EDE_OTHER, "dnsward: this sandbox has too many queries in flight upstream");
  }
  if (c.sandbox) ++c.sandbox->counts.forwarded;
  Pending p;
  p.ctx = c;
  p.deadline_ms = timers_.now_ms() + overdue_ms_;
  p.sent_ns = timers_.now_ns();
  if (!send_upstream(std::move(p)))
    return servfail(c, edns::EDE_OTHER, "dnsward: cannot build the upstream query");
  ++counters_.forwarded;
  return Step::Forward;
}

bool Pipeline::send_upstream(Pending p) {
  const uint16_t id = fresh_upstream_id();
  uint8_t buf[kHeaderSize + kMaxNameWire + 4 + 11];
  Query& q = p.ctx.q;
  if (p.caps) randomize_case(q.qname_lc, q.qname_len, random_bytes(q.qname_len), p.sent);
  const std::size_t n = build_upstream_query(q, id, cfg_.udp_payload, buf, sizeof buf,
                                             p.with_opt, p.caps ? p.sent : nullptr);
  if (n == 0) return false;
  log::debug("event=forward name={} type={} id={}", log::quote(q.qname_text()),
             type::text(q.qtype), id);
  // Registered before the send. c-ares 1.18 may call back from inside ares_send (no route,
  // EPERM, no descriptors); the port defers such callbacks to the loop, so a reply is never
  // delivered while a transport is still handing us the query.
  if (p.ctx.sandbox) ++p.ctx.sandbox->inflight;
  pending_.emplace(id, std::move(p));
  if (!sweep_timer_) arm_sweep();
  upstream_.send(buf, n, id);
  return true;
}

Pipeline::Step Pipeline::servfail(QueryCtx& c, uint16_t ede, std::string_view why) {
  // Not parsed far enough to echo a question: nothing is sent.
  c.out_len = c.q.qname_len ? build_rcode(c.q, rcode::SERVFAIL, reply_opts_, c.out, c.out_cap, ede, why) : 0;
  return Step::Reply;
}

// ---------------------------------------------------------------------------------------
// The answer path

void Pipeline::on_upstream_answer(uint64_t token, int status, const uint8_t* ans, std::size_t len) {
  const auto it = pending_.find(uint16_t(token));
  if (it == pending_.end() || shutting_down_) return;
  Pending p = std::move(it->second);
  pending_.erase(it);
  if (p.ctx.sandbox) --p.ctx.sandbox->inflight;
  if (p.abandoned) return;  // the client already had its SERVFAIL
  QueryCtx& c = p.ctx;
  bind_reply(c);
  Step s;
  LogScope scope;
  if (c.sandbox) scope.set(*c.sandbox);
  // Called from the port's callback (c-ares' C frames): no exception may unwind through them.
  try {
    // The gate first: while the ruleset is not in force nothing goes upstream, and the
    // retries check_upstream may send (no EDNS, 0x20) are queries like any other.
    s = require_ruleset(c);
    if (s == Step::Continue) s = check_upstream(p, uint16_t(token), status, ans, len);
    if (s == Step::Continue) s = readmit(c);
    if (s == Step::Continue) s = answer_from_upstream(c, uint16_t(token), ans, len);
  } catch (const std::exception& e) {
    log::error("event=internal-error name={} error={}", log::quote(c.q.qname_text()), log::quote(e.what()));
    s = servfail(c, edns::EDE_OTHER, "dnsward internal error");
  } catch (...) {
    log::error("event=internal-error name={} error=unknown", log::quote(c.q.qname_text()));
    s = servfail(c, edns::EDE_OTHER, "dnsward internal error");
  }
  finish(p, s);
}

void Pipeline::finish(Pending& p, Step s) {
  if (s == Step::Forward) return;  // asked again; this answer closes nothing
  QueryCtx& c = p.ctx;
  // Every forwarded query is closed exactly once, with a reply or with none (TCP counts
  // what each connection still awaits).
  c.sink->deliver(c.client, c.out, s == Step::Reply ? c.out_len : 0, true);
}

Pipeline::Step Pipeline::check_upstream(Pending& p, uint16_t id, int status, const uint8_t* ans,
                                        std::size_t len) {
  QueryCtx& c = p.ctx;
  const Query& q = c.q;
  if (status != ARES_SUCCESS || !ans) {
    ++counters_.upstream_failures;
    log::warn("event=upstream-failed name={} type={} error={}", log::quote(q.qname_text()),
              type::text(q.qtype), log::quote(ares_strerror(status)));
    const bool timeout = status == ARES_ETIMEOUT;
    return servfail(c, timeout ? edns::EDE_NO_REACHABLE_AUTHORITY : edns::EDE_NETWORK_ERROR,
                    fmt::format("dnsward: upstream {}", ares_strerror(status)));
  }
  if (p.with_opt && is_edns_formerr(ans, len)) {
    // An upstream that does not speak EDNS (RFC 6891 7): ask once more without our OPT.
    // c-ares 1.18 retries by itself only for the first such answer on a channel, and then
    // turns EDNS off for the whole channel, which Upstream notices and replaces; answers
    // that reach us from a channel being drained, or from later FORMERRs, get this retry.
    log::info("event=upstream-no-edns name={}", log::quote(q.qname_text()));
    p.with_opt = false;
    // A new upstream query, with the port's full timeout ahead of it: so is our deadline.
    p.deadline_ms = timers_.now_ms() + overdue_ms_;
    if (send_upstream(p)) return Step::Forward;
  }
  if (p.caps && check_answer(q, id, ans, len) == RelayStatus::Ok &&
      !question_case_matches(ans, len, p.sent, q.qname_len)) {
    // Our question in another letter case: an off-path spoofer who guessed the ID and port
    // but not the case, or an upstream that does not preserve case (then, like Unbound's
    // use-caps-for-id fallback, it is asked once more without 0x20). Nothing is taken from it.
    log::info("event=upstream-case-mismatch name={} msg={}", log::quote(q.qname_text()),
              log::quote("answer's question differs in letter case: asking again without 0x20"));
    p.caps = false;
    p.deadline_ms = timers_.now_ms() + overdue_ms_;
    if (send_upstream(p)) return Step::Forward;
  }
  ++counters_.upstream_answers;
  upstream_latency_.observe(double(timers_.now_ns() - p.sent_ns) / 1e9);
  return Step::Continue;
}

Pipeline::Step Pipeline::readmit(QueryCtx& c) {
  if (c.sandbox && c.sandbox->gone) {
    // Removed (or registered anew) while its query was upstream: nothing is vouched for a
    // sandbox that is no longer there, whose addresses another may hold by now.
    return servfail(c, edns::EDE_PROHIBITED, "dnsward: this sandbox was removed");
  }
  if (c.policy == policy_of(c)) return Step::Continue;
  // A reload happened while the query was upstream: the policy in force now decides, with
  // its own entry's private=, types= and budget=.
  return admit(c, false);
}

Pipeline::Step Pipeline::answer_from_upstream(QueryCtx& c, uint16_t id, const uint8_t* ans,
                                              std::size_t len) {
  const Query& q = c.q;
  auto unusable = [&](const char* why) {
    ++counters_.upstream_failures;
    log::warn("event=upstream-bad-answer name={} status={}", log::quote(q.qname_text()), why);
    return servfail(c, edns::EDE_OTHER, "dnsward: the upstream's answer was unusable");
  };
  // Checked (nothing is taken from an answer to another question), walked for the
  // addresses to vouch for, rebuilt without the records that must not reach the client,
  // TTLs lowered to max-ttl: one pure function, the one the answer fuzz target checks.
  PreparedAnswer a = prepare_answer(
      q, id, ans, len, PrepareOptions{c.allow_private, cfg_.max_answer_addresses, cfg_.max_ttl, cfg_.sni_guard});
  switch (a.status) {
    case PrepareStatus::Ok: break;
    case PrepareStatus::Mismatch: return unusable("mismatch");
    case PrepareStatus::Malformed: return unusable("malformed");
    case PrepareStatus::RebuildFailed: return unusable("rebuild");
  }
  if (a.dropped()) {
    counters_.special_dropped += a.dropped_special;
    log::info("event=records-dropped name={} dropped={} special={} off_chain={} over_cap={}",
              log::quote(q.qname_text()), a.dropped(), a.dropped_special, a.dropped_off_chain,
              a.dropped_over_cap);
  }
  if (a.dropped_over_cap) {
    // Each address is one set element: an answer of thousands (a TCP answer, or one HTTPS
    // record full of hints) would fill the sets and the netlink batch; the rest is removed.
    ++counters_.capped_answers;
    counters_.capped_addresses += a.addresses_over_cap;
    log::warn("event=answer-capped name={} records={} addresses={} cap={}", log::quote(q.qname_text()),
              a.dropped_over_cap, a.addresses_over_cap, cfg_.max_answer_addresses);
  }
  const AnswerInput in{a.msg.data(), a.msg.size(), &a.scan.vouch, 0,
                       Removed{a.dropped_special, a.dropped_over_cap}, &a.scan.chain};
  Step s = vouch(c, in);
  if (s == Step::Continue) s = require_ruleset(c);  // vouching may have judged it anew
  if (s != Step::Continue) return s;
  s = relay(c, in);
  // Cached only once vouched for and relayable: a hit vouches again before it is relayed.
  if (c.out_len > 0 && a.scan.cache_ttl > 0 &&
      (a.scan.rcode == rcode::NOERROR || a.scan.rcode == rcode::NXDOMAIN)) {
    CacheEntry e;
    e.ttl = uint32_t(std::min<int64_t>(a.scan.cache_ttl, cfg_.max_ttl));
    e.stored_ms = timers_.now_ms();
    e.ttl_offsets = std::move(a.scan.ttl_offsets);
    e.vouch = std::move(a.scan.vouch);
    e.chain = std::move(a.scan.chain);
    e.dropped_special = a.dropped_special;
    e.dropped_over_cap = a.dropped_over_cap;
    e.msg = std::move(a.msg);
    char key[AnswerCache::kMaxKey + 1];
    cache_.store(std::string(key, cache_key(c, key)), std::move(e));
  }
  return s;
}

// After a vouch, the ruleset is asked again (require_ruleset) before anything is relayed:
// NftSets::vouch() itself judges the ruleset when it finds a set gone without an event (a
// table whose owner exited takes its chain with it), and an answer vouched into a table
// without a chain must not go out under --require-ruleset.
Pipeline::Step Pipeline::vouch(QueryCtx& c, const AnswerInput& a) {
  if (!sets_ || a.addrs->empty()) return Step::Continue;
  // Element timeout = clamp(remaining TTL, min-ttl, max-ttl) + grace: never 0 (which
  // nftables reads as "forever"), and never shorter than the TTL the client is given,
  // which relay lowers to max-ttl.
  std::vector<VouchItem> items;
  items.reserve(a.addrs->size());
  for (const auto& v : *a.addrs) {
    const uint32_t remaining = v.ttl > a.age_s ? v.ttl - a.age_s : 0;
    const uint32_t t = std::clamp(remaining, cfg_.min_ttl, cfg_.max_ttl);
    if (!c.sandbox) {
      items.push_back({v.addr, t + cfg_.grace});
      continue;
    }
    // Host mode: opened for this sandbox's own addresses only (guest . destination), each
    // destination for the guest addresses of its family: a v4 guest cannot use a v6 one.
    for (const IpAddr& g : c.sandbox->spec.addrs)
      if (g.family == v.addr.family) items.push_back({v.addr, t + cfg_.grace, g});
  }
  // ports= (only with the guard, whose ruleset opens a vouched address on the guarded ports
  // alone): each address element gets one element per port in the port sets, with the same
  // timeout and in the same batch, so both are in the kernel before the answer goes out.
  if (cfg_.sni_guard && c.entry >= 0) {
    const std::vector<PortSpec>& ports = c.policy->ports(std::size_t(c.entry));
    const std::size_t n = items.size();
    for (std::size_t i = 0; i < n && !ports.empty(); ++i)
      for (const PortSpec& p : ports) {
        VouchItem it = items[i];
        it.proto = p.proto;
        it.port = p.port;
        items.push_back(it);
      }
  }
  if (c.sandbox) {
    if (c.sandbox->gone) return servfail(c, edns::EDE_PROHIBITED, "dnsward: this sandbox was removed");
    if (items.empty()) return Step::Continue;
    // Its cap on elements: one sandbox cannot fill the sets the others share. Counted like
    // a full set: the answer is withheld, never relayed unvouched.
    std::size_t held = 0;
    for (const IpAddr& g : c.sandbox->spec.addrs) held += sets_->elements_of(g);
    if (held + sets_->would_add(items) > cfg_.sandbox_max_elements) {
      ++counters_.sandbox_capped;
      ++c.sandbox->counts.refused_caps;
      log::warn("event=sandbox-elements-full name={} held={} cap={}", log::quote(c.q.qname_text()),
                held, cfg_.sandbox_max_elements);
      return servfail(c, edns::EDE_OTHER,
                      "dnsward: this sandbox holds --sandbox-max-elements addresses; the answer is withheld");
    }
  }
  // Provenance by pattern, which survives reloads (entry indices do not).
  const std::string pattern = c.entry >= 0 ? c.policy->pattern(std::size_t(c.entry)) : std::string();
  const std::string name = c.q.qname_text();
  // (sni=any is not recorded here: the guard asks the policy in force, sni_any_vouches().)
  const Provenance who{pattern, name, a.chain};
  // Each element is bound to the names that vouched for it (the SNI guard's list), never
  // to some of them: an answer that would take one over the cap is withheld, like one a
  // full set refuses, and never relayed unvouched.
  SetKey full;
  std::size_t bound = 0;
  if (sets_->would_overflow_names(items, who, cfg_.max_names_per_element, timers_.now_ms(), full, bound)) {
    ++counters_.names_capped;
    log::warn("event=names-full name={} addr={} bound={} cap={}", log::quote(name),
              full.addr.text(), bound, cfg_.max_names_per_element);
    return servfail(c, edns::EDE_OTHER,
                    "dnsward: an address of this answer is bound to --max-names-per-element names; "
                    "the answer is withheld");
  }
  std::string err;
  const uint64_t t0 = timers_.now_ns();
  const bool ok = sets_->vouch(items, timers_.now_ms(), who, err);
  vouch_latency_.observe(double(timers_.now_ns() - t0) / 1e9);
  if (!ok) {
    ++counters_.vouch_failures;
    log::error("event=vouch-failed name={} addresses={} error={}", log::quote(name),
               a.addrs->size(), log::quote(err));
    return servfail(c, edns::EDE_OTHER, "dnsward: the firewall update failed, so the answer is withheld");
  }
  ++counters_.vouched_answers;
  if (c.sandbox) ++c.sandbox->counts.vouched;
  return Step::Continue;
}

Pipeline::Step Pipeline::relay(QueryCtx& c, const AnswerInput& a) {
  const Query& q = c.q;
  // What dnsward removed goes to the client as one EDE of its own (RFC 8914): Blocked for
  // rebinding protection, Other when only the address cap removed records.
  std::string why;
  if (a.removed.special)
    why = fmt::format("dnsward: removed {} record(s) with special-purpose addresses "
                      "(loopback, private, link-local...) from the answer: DNS rebinding protection",
                      a.removed.special);
  if (a.removed.over_cap)
    why += fmt::format("{}dnsward: removed {} record(s) beyond --max-answer-addresses {} "
                       "(addresses dnsward may vouch for from one answer)",
                       why.empty() ? "" : "; ", a.removed.over_cap, cfg_.max_answer_addresses);
  const uint16_t ede = a.removed.special    ? edns::EDE_BLOCKED
                       : a.removed.over_cap ? edns::EDE_OTHER
                                            : edns::kNoEde;
  const std::size_t limit = c.client.transport == ClientAddr::Transport::Udp
                                ? q.udp_limit(cfg_.udp_payload)
                                : kMaxMessage;
  // The answer was checked once, by prepare_answer (ID and question) when it came from the
  // upstream; relay_checked_answer only rewrites it for this client.
  const RelayStatus rs = relay_checked_answer(q, a.msg, a.len, limit, reply_opts_, c.out,
                                              c.out_cap, c.out_len, ede, why);
  if (rs != RelayStatus::Ok) {
    ++counters_.upstream_failures;
    log::warn("event=upstream-bad-answer name={} status={}", log::quote(q.qname_text()),
              rs == RelayStatus::Malformed ? "malformed" : "unrelayable");
    return servfail(c, edns::EDE_OTHER, "dnsward: the upstream's answer was unusable");
  }
  if (c.out[2] & (flag::TC >> 8)) ++counters_.truncated;
  return Step::Reply;
}

// ---------------------------------------------------------------------------------------
// Reloads and upkeep

void Pipeline::reload(std::shared_ptr<const Policy> p) {
  policy_ = std::move(p);
  cache_.clear();
  budgets_.clear();  // entry indices changed
  ++counters_.reloads_ok;
  revoke_unlisted("removed from the allowlist by a reload");
}

const Policy* Pipeline::policy_of_guest(const IpAddr& guest, bool& audit) const {
  audit = cfg_.audit;
  if (!sandboxes_) return policy_.get();
  const auto sb = sandboxes_->by_addr(guest);
  if (!sb) return nullptr;
  audit = sb->spec.audit;
  return sb->policy.get();
}

bool Pipeline::sni_any_vouches(const IpAddr& guest, std::string_view pattern) const {
  bool audit = false;
  const Policy* now = policy_of_guest(guest, audit);
  const int32_t idx = now ? now->find_pattern(pattern) : -1;
  return idx >= 0 && now->sni_any(std::size_t(idx));
}

void Pipeline::revoke_unlisted(std::string_view why) {
  if (!sets_) return;
  // Entries are known by pattern, which survives reloads (indices do not). An element is
  // kept while one entry that vouched for it is still listed (with private=yes, if it is a
  // special-purpose address); one vouched in audit mode
  // while one of its names would be allowed now (or audit mode goes on).
  // In host mode each element is judged by the policy of the sandbox its guest belongs to;
  // an element of a guest no sandbox has goes.
  auto policy_for = [this](const IpAddr& guest, bool& audit) { return policy_of_guest(guest, audit); };
  const RevokeOutcome r = sets_->revoke_unless(
      [&](const IpAddr& guest, std::string_view pattern) {
        bool audit = false;
        const Policy* now = policy_for(guest, audit);
        const int32_t idx = now ? now->find_pattern(pattern) : -1;
        if (idx < 0) return Voucher::Gone;
        return now->allow_private(std::size_t(idx)) ? Voucher::ListedPrivate : Voucher::Listed;
      },
      [&](const IpAddr& guest, std::string_view name) {
        bool audit = false;
        const Policy* now = policy_for(guest, audit);
        return now && (audit || now->match_text(name).verdict == Match::Verdict::Allow);
      },
      timers_.now_ms(),
      // A port element stays while its entry still names its port (ports= changed by a
      // reload revokes the ports it no longer names).
      [&](const IpAddr& guest, std::string_view pattern, uint8_t proto, uint16_t port) {
        bool audit = false;
        const Policy* now = policy_for(guest, audit);
        const int32_t idx = now ? now->find_pattern(pattern) : -1;
        if (idx < 0) return false;
        const auto& ports = now->ports(std::size_t(idx));
        return std::find(ports.begin(), ports.end(), PortSpec{proto, port}) != ports.end();
      });
  counters_.revoked += r.deleted;
  if (r.deleted || r.already_gone)
    log::info("event=revoked deleted={} already_gone={} msg={}", r.deleted, r.already_gone,
              log::quote(fmt::format("vouched only by entries {}", why)));
  if (!r.ok) {
    ++counters_.revoke_failures;
    log::error("event=revoke-failed deleted={} error={}", r.deleted, log::quote(r.err));
  }
}

void Pipeline::sweep_overdue() {
  const uint64_t now = timers_.now_ms();
  // Collected first: deliver() may take up a paused TCP client's next query, which inserts
  // into pending_ and would invalidate an iterator over it.
  std::vector<uint16_t> overdue;
  for (const auto& [id, p] : pending_)
    if (!p.abandoned && p.deadline_ms <= now) overdue.push_back(id);
  for (const uint16_t id : overdue) {
    const auto it = pending_.find(id);
    if (it == pending_.end() || it->second.abandoned) continue;
    Pending& p = it->second;
    p.abandoned = true;
    ++counters_.upstream_failures;
    log::warn("event=upstream-overdue name={}", log::quote(p.ctx.q.qname_text()));
    QueryCtx c = p.ctx;  // a copy: deliver() may start another query and touch pending_
    bind_reply(c);
    servfail(c, edns::EDE_NO_REACHABLE_AUTHORITY, "dnsward: upstream did not answer in time");
    c.sink->deliver(c.client, c.out, c.out_len, true);
  }
}

}  // namespace dnsward
