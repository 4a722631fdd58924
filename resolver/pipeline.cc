#include "dnsward/pipeline.hpp"

#include <arpa/inet.h>
#include <sys/random.h>

#include <algorithm>
#include <ctime>
#include <unordered_set>

#include "dnsward/clock.hpp"
#include "dnsward/explain.hpp"
#include "dnsward/log.hpp"

namespace dnsward {
using namespace wire;

namespace {
const char* type_name(uint16_t t) {
  switch (t) {
    case type::A: return "A";
    case type::AAAA: return "AAAA";
    case type::CNAME: return "CNAME";
    case type::HTTPS: return "HTTPS";
    case type::SVCB: return "SVCB";
    case type::TXT: return "TXT";
    case type::ANY: return "ANY";
    default: return nullptr;
  }
}
std::string type_text(uint16_t t) {
  const char* n = type_name(t);
  return n ? n : fmt::format("TYPE{}", t);
}
}  // namespace

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

Pipeline::Pipeline(EventLoop& loop, const ServeConfig& cfg, std::shared_ptr<const Policy> policy)
    : loop_(loop), cfg_(cfg), policy_(std::move(policy)), cache_(cfg.cache_size, cfg.cache_bytes),
      out_(kMaxMessage + 2) {
  reply_opts_.our_udp_size = cfg.udp_payload;
  reply_opts_.negative_ttl = cfg.negative_ttl;
  upstream_ = std::make_unique<Upstream>(
      loop, cfg, [this](uint64_t token, int status, const uint8_t* ans, std::size_t len) {
        on_upstream_answer(token, status, ans, len);
      });
  // c-ares bounds every query by its own timeouts; this sweep is the safety net that keeps
  // "SERVFAIL in bounded time" true even if that bound were ever missed.
  overdue_ms_ = upstream_->worst_case_ms() + 500;
}

void Pipeline::arm_sweep() {
  // Runs only while queries are upstream, so an idle resolver never wakes up.
  sweep_timer_ = loop_.after(250, [this] {
    sweep_timer_ = 0;
    sweep_overdue();
    if (!pending_.empty()) arm_sweep();
  });
}

Pipeline::~Pipeline() { shutdown(); }

void Pipeline::shutdown() {
  if (sweep_timer_) loop_.cancel(sweep_timer_);
  sweep_timer_ = 0;
  shutting_down_ = true;
  upstream_.reset();  // its EDESTRUCTION callbacks find shutting_down_ and send nothing
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

Verdict Pipeline::on_query(const uint8_t* pkt, std::size_t len, const ClientAddr& from,
                           ReplySink& sink) {
  ++counters_.received;
  Query q;
  Step s;
  try {
    s = receive(pkt, len, q);
    if (s == Step::Continue) s = screen(q);
    if (s == Step::Continue) s = answer_locally(q);
    if (s == Step::Continue) s = apply_policy(q, from);
    if (s == Step::Continue) s = answer_from_cache(q, from);
    if (s == Step::Continue) s = forward(q, from, sink);
  } catch (const std::exception& e) {
    // The one place exceptions stop: the client gets SERVFAIL, the loop goes on.
    log::error("event=internal-error error={}", log::quote(e.what()));
    out_len_ = servfail(q, edns::EDE_OTHER, "dnsward internal error");
    s = out_len_ ? Step::Reply : Step::Drop;
  }
  switch (s) {
    case Step::Reply:
      sink.deliver(from, out_.data(), out_len_, false);
      return Verdict::Replied;
    case Step::Forward:
      return Verdict::Forwarded;
    default:
      ++counters_.dropped;
      return Verdict::Drop;
  }
}

Pipeline::Step Pipeline::receive(const uint8_t* pkt, std::size_t len, Query& q) {
  switch (parse_query(pkt, len, q)) {
    case ParseStatus::Ok:
      return Step::Continue;
    case ParseStatus::Drop:
      return Step::Drop;
    case ParseStatus::FormErr:
      ++counters_.formerr;
      out_len_ = build_header_error(pkt, len, rcode::FORMERR, out_.data(), out_.size());
      return out_len_ ? Step::Reply : Step::Drop;
    case ParseStatus::NotImp:
      ++counters_.notimp;
      out_len_ = build_header_error(pkt, len, rcode::NOTIMP, out_.data(), out_.size());
      return out_len_ ? Step::Reply : Step::Drop;
  }
  return Step::Drop;
}

Pipeline::Step Pipeline::screen(const Query& q) {
  auto reply = [&](uint16_t rc, uint16_t ede, std::string_view why) {
    out_len_ = build_rcode(q, rc, reply_opts_, out_.data(), out_.size(), ede, why);
    return out_len_ ? Step::Reply : Step::Drop;
  };
  if (q.has_edns && q.edns_version != 0) {  // RFC 6891 6.1.3: we implement version 0 only
    ++counters_.badvers;
    return reply(rcode::BADVERS, 0xffff, {});
  }
  if (q.qtype == type::OPT) {  // RFC 6891 6.1.1: OPT is a pseudo-RR, never a question
    ++counters_.formerr;
    return reply(rcode::FORMERR, 0xffff, {});
  }
  if (q.qclass == klass::CH && q.qtype == type::TXT && q.qname_len > 5 && q.qname_lc[0] == 3 &&
      std::memcmp(q.qname_lc + 1, kWhyLabel.data(), 3) == 0 && q.qname_lc[4] != 0) {
    // `dig CH TXT why.NAME`: the verdict for NAME and its reason, answered locally.
    ++counters_.chaos_why;
    const std::string name = wire::name_to_text(q.qname_lc + 4, q.qname_len - 4);
    out_len_ = build_txt(q, explain_lines(*policy_, name), reply_opts_, out_.data(), out_.size());
    return out_len_ ? Step::Reply : Step::Drop;
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
    return reply(rcode::NOTIMP, 0xffff, {});
  }
  return Step::Continue;
}

Pipeline::Step Pipeline::answer_locally(const Query& q) {
  // RFC 6761 6.3: localhost is answered with loopback addresses and never sent upstream.
  if (!is_localhost(q.qname_lc, q.qname_len)) return Step::Continue;
  ++counters_.localhost;
  out_len_ = build_localhost(q, reply_opts_, out_.data(), out_.size());
  return out_len_ ? Step::Reply : Step::Drop;
}

Pipeline::Step Pipeline::apply_policy(const Query& q, const ClientAddr& from) {
  const Step s = admit(q, from, true);
  if (s != Step::Continue) return s;
  if (q.qtype == type::ANY) {
    // RFC 8482 4.2: a minimal answer instead of everything; nothing is forwarded.
    ++counters_.any_minimal;
    out_len_ = build_any_hinfo(q, reply_opts_, out_.data(), out_.size());
    return out_len_ ? Step::Reply : Step::Drop;
  }
  return Step::Continue;
}

Pipeline::Step Pipeline::admit(const Query& q, const ClientAddr& from, bool count) {
  const Match m = policy_->match(q.qname_lc, q.qname_len);
  Usage* const usage = count ? usage_ : nullptr;
  const int64_t now = usage ? int64_t(std::time(nullptr)) : 0;
  if (m.verdict == Match::Verdict::Allow) {
    const auto idx = std::size_t(m.entry);
    if (!policy_->allows_type(idx, q.qtype) && q.qtype != type::ANY) {
      // Names under a wildcard are a channel to whoever runs that zone: only the types a
      // sandbox needs to connect go out (RFC 8914 17, Filtered).
      ++counters_.filtered_type;
      char why[512];
      const auto r = fmt::format_to_n(why, sizeof why, "dnsward: type {} is not allowed under '{}' (types=)",
                                      type_text(q.qtype), policy_->pattern(idx));
      out_len_ = build_negative(q, rcode::NOERROR, reply_opts_, out_.data(), out_.size(),
                                edns::EDE_FILTERED, std::string_view(why, std::min(r.size, sizeof why)));
      return out_len_ ? Step::Reply : Step::Drop;
    }
    if (const uint32_t budget = policy_->budget(idx)) {
      Window& w = budgets_[uint32_t(idx)];
      const uint64_t minute = loop_.now_ms() / 60000u;
      if (w.minute != minute) {
        w.minute = minute;
        w.names.clear();
      }
      std::string name = q.qname_text();
      if (!w.names.count(name)) {
        if (w.names.size() >= budget) {
          ++counters_.over_budget;
          log::warn("event=over-budget name={} entry={} budget={} client={}", log::quote(name),
                    log::quote(policy_->pattern(idx)), budget, from.peer_text());
          char why[512];
          const auto r = fmt::format_to_n(why, sizeof why,
              "dnsward: '{}' allows {} new names a minute and has used them; {} is denied for now",
              policy_->pattern(idx), budget, name);
          out_len_ = build_negative(q, rcode::NXDOMAIN, reply_opts_, out_.data(), out_.size(),
                                    edns::EDE_BLOCKED, std::string_view(why, std::min(r.size, sizeof why)));
          return out_len_ ? Step::Reply : Step::Drop;
        }
        w.names.insert(std::move(name));
      }
    }
    allow_private_ = policy_->allow_private(idx);
    current_entry_ = m.entry;
    if (usage) usage->allowed(policy_->pattern(std::size_t(m.entry)), now);
  } else if (cfg_.audit) {
    // Audit mode: what enforce would deny is forwarded and vouched for like any other name,
    // and logged and counted so that `dnsward report` can list the lines to add.
    allow_private_ = false;
    current_entry_ = -1;
    if (!count) return Step::Continue;
    ++counters_.would_deny;
    const std::string name = q.qname_text();
    if (usage) usage->would_deny(name, now);
    log::info("event=would-deny name={} type={} client={} msg={}", log::quote(name),
              type_text(q.qtype), from.peer_text(), log::quote("audit mode: not enforced"));
  } else {
    if (usage) usage->denied(q.qname_text(), now);
    if (log::enabled(LogLevel::Debug))
      log::debug("event=denied name={} type={} client={}", log::quote(q.qname_text()),
                 type_text(q.qtype), from.peer_text());
    return deny(q, m.verdict);
  }
  return Step::Continue;
}

Pipeline::Step Pipeline::deny(const Query& q, Match::Verdict v) {
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
                                  nm, ancestor ? "; names below it are" : "", policy_->version(), nm);
  const std::string_view text(why, std::min(r.size, sizeof why));
  ++(ancestor ? counters_.ancestor_nodata : counters_.denied);
  out_len_ = build_negative(q, ancestor ? rcode::NOERROR : rcode::NXDOMAIN, reply_opts_,
                            out_.data(), out_.size(), edns::EDE_BLOCKED, text);
  return out_len_ ? Step::Reply : Step::Drop;
}

Pipeline::Step Pipeline::answer_from_cache(const Query& q, const ClientAddr& from) {
  char key[AnswerCache::kMaxKey];
  const CacheEntry* e = cache_.find(std::string_view(key, AnswerCache::key(q, key)), loop_.now_ms());
  if (!e) return Step::Continue;
  ++counters_.cache_hits;
  // Age the TTLs (RFC 1035 7.4 / RFC 2308 5) on a copy, then take the same exit as an
  // upstream answer: a cache hit vouches again, so an element that expired or was flushed
  // is back in the set before the client sees the address.
  const uint32_t age = uint32_t((loop_.now_ms() - e->stored_ms) / 1000u);
  scratch_.assign(e->msg.begin(), e->msg.end());
  rewrite_ttls(scratch_.data(), e->ttl_offsets, UINT32_MAX, age);
  bool vouched = false;
  out_len_ = vouch_and_relay(q, from, scratch_.data(), scratch_.size(), get16(scratch_.data()),
                             e->vouch, age, Removed{e->dropped_special, e->dropped_over_cap},
                             current_entry_, vouched);
  return out_len_ ? Step::Reply : Step::Drop;
}

std::size_t Pipeline::vouch_and_relay(const Query& q, const ClientAddr& client,
                                      const uint8_t* msg, std::size_t len, uint16_t upstream_id,
                                      const std::vector<VouchAddr>& addrs, uint32_t age_s,
                                      const Removed& removed, int32_t entry, bool& vouched) {
  vouched = false;
  if (nft_ && !addrs.empty()) {
    // Element timeout = clamp(remaining TTL, min-ttl, max-ttl) + grace: never 0 (which
    // nftables reads as "forever"), and never shorter than the TTL the client is given,
    // which relay lowers to max-ttl.
    std::vector<VouchItem> items;
    items.reserve(addrs.size());
    for (const auto& a : addrs) {
      const uint32_t remaining = a.ttl > age_s ? a.ttl - age_s : 0;
      const uint32_t t = std::clamp(remaining, cfg_.min_ttl, cfg_.max_ttl);
      items.push_back({a.addr, t + cfg_.grace});
    }
    std::string err;
    const uint64_t t0 = mono_ns();
    const std::string pattern = entry >= 0 ? policy_->pattern(std::size_t(entry)) : std::string();
    const std::string name = q.qname_text();
    const bool ok = nft_->vouch(items, loop_.now_ms(), Provenance{pattern, name}, err);
    vouch_latency_.observe(double(mono_ns() - t0) / 1e9);
    if (!ok) {
      ++counters_.vouch_failures;
      log::error("event=vouch-failed name={} addresses={} error={}", log::quote(q.qname_text()),
                 addrs.size(), log::quote(err));
      return servfail(q, edns::EDE_OTHER,
                      "dnsward: the firewall update failed, so the answer is withheld");
    }
    ++counters_.vouched_answers;
  }
  vouched = true;
  // What dnsward removed goes to the client as one EDE of its own (RFC 8914): Blocked for
  // rebinding protection, Other when only the address cap removed records.
  std::string why;
  if (removed.special)
    why = fmt::format("dnsward: removed {} record(s) with special-purpose addresses "
                      "(loopback, private, link-local...) from the answer: DNS rebinding protection",
                      removed.special);
  if (removed.over_cap)
    why += fmt::format("{}dnsward: removed {} record(s) beyond --max-answer-addresses {} "
                       "(addresses dnsward may vouch for from one answer)",
                       why.empty() ? "" : "; ", removed.over_cap, cfg_.max_answer_addresses);
  const uint16_t ede = removed.special ? edns::EDE_BLOCKED : removed.over_cap ? edns::EDE_OTHER : 0xffff;
  const std::size_t limit = client.transport == ClientAddr::Transport::Udp
                                ? q.udp_limit(cfg_.udp_payload)
                                : kMaxMessage;
  std::size_t n = 0;
  const RelayStatus rs = relay_answer(q, upstream_id, msg, len, limit, reply_opts_, out_.data(),
                                      out_.size(), n, ede, why);
  if (rs != RelayStatus::Ok) {
    ++counters_.upstream_failures;
    log::warn("event=upstream-bad-answer name={} status={}", log::quote(q.qname_text()),
              rs == RelayStatus::Mismatch ? "mismatch" : rs == RelayStatus::Malformed ? "malformed" : "unrelayable");
    return servfail(q, edns::EDE_OTHER, "dnsward: the upstream's answer was unusable");
  }
  if (out_[2] & (flag::TC >> 8)) ++counters_.truncated;
  return n;
}

Pipeline::Step Pipeline::forward(const Query& q, const ClientAddr& from, ReplySink& sink) {
  if (pending_.size() >= cfg_.max_inflight) {
    ++counters_.overload;
    out_len_ = servfail(q, edns::EDE_OTHER, "dnsward: too many queries in flight upstream");
    return out_len_ ? Step::Reply : Step::Drop;
  }
  Pending p;
  p.query = q;
  p.client = from;
  p.sink = &sink;
  p.deadline_ms = loop_.now_ms() + overdue_ms_;
  p.sent_ns = mono_ns();
  p.allow_private = allow_private_;
  p.entry = current_entry_;
  p.policy = policy_;
  if (!send_upstream(std::move(p))) {
    out_len_ = servfail(q, edns::EDE_OTHER, "dnsward: cannot build the upstream query");
    return out_len_ ? Step::Reply : Step::Drop;
  }
  ++counters_.forwarded;
  return Step::Forward;
}

bool Pipeline::send_upstream(Pending p) {
  const uint16_t id = fresh_upstream_id();
  uint8_t buf[kHeaderSize + kMaxNameWire + 4 + 11];
  if (p.caps) randomize_case(p.query.qname_lc, p.query.qname_len, random_bytes(p.query.qname_len), p.sent);
  const std::size_t n = build_upstream_query(p.query, id, cfg_.udp_payload, buf, sizeof buf,
                                             p.with_opt, p.caps ? p.sent : nullptr);
  if (n == 0) return false;
  log::debug("event=forward name={} type={} id={}", log::quote(p.query.qname_text()),
             type_text(p.query.qtype), id);
  // Registered before the send. c-ares 1.18 may call back from inside ares_send (no route,
  // EPERM, no descriptors); Upstream defers such callbacks to the loop, so a reply is never
  // delivered while a transport is still handing us the query.
  pending_.emplace(id, std::move(p));
  if (!sweep_timer_) arm_sweep();
  upstream_->send(buf, n, id);
  return true;
}

std::size_t Pipeline::servfail(const Query& q, uint16_t ede, std::string_view why) {
  if (q.qname_len == 0) return 0;  // not parsed far enough to echo a question
  return build_rcode(q, rcode::SERVFAIL, reply_opts_, out_.data(), out_.size(), ede, why);
}

void Pipeline::on_upstream_answer(uint64_t token, int status, const uint8_t* ans, std::size_t len) {
  const auto it = pending_.find(uint16_t(token));
  if (it == pending_.end() || shutting_down_) return;
  Pending p = std::move(it->second);
  pending_.erase(it);
  if (p.abandoned) return;  // the client already had its SERVFAIL
  // Called from c-ares' C frames: no exception may unwind through them.
  try {
    relay_upstream_answer(p, token, status, ans, len);
  } catch (const std::exception& e) {
    log::error("event=internal-error name={} error={}", log::quote(p.query.qname_text()), log::quote(e.what()));
    p.sink->deliver(p.client, out_.data(), servfail(p.query, edns::EDE_OTHER, "dnsward internal error"), true);
  } catch (...) {
    log::error("event=internal-error name={} error=unknown", log::quote(p.query.qname_text()));
    p.sink->deliver(p.client, out_.data(), servfail(p.query, edns::EDE_OTHER, "dnsward internal error"), true);
  }
}

void Pipeline::relay_upstream_answer(Pending& p, uint64_t token, int status, const uint8_t* ans,
                                     std::size_t len) {

  std::size_t n = 0;
  if (status == ARES_SUCCESS && ans && p.with_opt && is_edns_formerr(ans, len)) {
    // An upstream that does not speak EDNS (RFC 6891 7): ask once more without our OPT.
    // c-ares 1.18 retries by itself only for the first such answer on a channel, and then
    // turns EDNS off for the whole channel, which Upstream notices and replaces; answers
    // that reach us from a channel being drained, or from later FORMERRs, get this retry.
    log::info("event=upstream-no-edns name={}", log::quote(p.query.qname_text()));
    p.with_opt = false;
    // A new upstream query, with c-ares' full timeout ahead of it: so is our deadline.
    p.deadline_ms = loop_.now_ms() + overdue_ms_;
    if (send_upstream(p)) return;
  }
  if (status == ARES_SUCCESS && ans && p.caps &&
      check_answer(p.query, uint16_t(token), ans, len) == RelayStatus::Ok &&
      !question_case_matches(ans, len, p.sent, p.query.qname_len)) {
    // Our question in another letter case: an off-path spoofer who guessed the ID and port
    // but not the case, or an upstream that does not preserve case (then, like Unbound's
    // use-caps-for-id fallback, it is asked once more without 0x20). Nothing is taken from it.
    log::info("event=upstream-case-mismatch name={} msg={}", log::quote(p.query.qname_text()),
              log::quote("answer's question differs in letter case: asking again without 0x20"));
    p.caps = false;
    p.deadline_ms = loop_.now_ms() + overdue_ms_;
    if (send_upstream(p)) return;
  }
  if (status == ARES_SUCCESS && ans) {
    ++counters_.upstream_answers;
    upstream_latency_.observe(double(mono_ns() - p.sent_ns) / 1e9);
    n = answer_from_upstream(p, uint16_t(token), ans, len);
  } else {
    ++counters_.upstream_failures;
    log::warn("event=upstream-failed name={} type={} error={}", log::quote(p.query.qname_text()),
              type_text(p.query.qtype), log::quote(ares_strerror(status)));
    const bool timeout = status == ARES_ETIMEOUT;
    n = servfail(p.query, timeout ? edns::EDE_NO_REACHABLE_AUTHORITY : edns::EDE_NETWORK_ERROR,
                 fmt::format("dnsward: upstream {}", ares_strerror(status)));
  }
  p.sink->deliver(p.client, out_.data(), n, true);
}

std::size_t Pipeline::answer_from_upstream(const Pending& p, uint16_t id, const uint8_t* ans,
                                           std::size_t len) {
  const Query& q = p.query;
  int32_t entry = p.entry;
  bool allow_private = p.allow_private;
  if (p.policy != policy_) {
    // A reload happened while the query was upstream: the policy in force now decides,
    // with its own entry's private=, types= and budget=.
    const Step s = admit(q, p.client, false);
    if (s != Step::Continue) return s == Step::Reply ? out_len_ : 0;
    entry = current_entry_;
    allow_private = allow_private_;
  }
  auto unusable = [&](const char* why) {
    ++counters_.upstream_failures;
    log::warn("event=upstream-bad-answer name={} status={}", log::quote(q.qname_text()), why);
    return servfail(q, edns::EDE_OTHER, "dnsward: the upstream's answer was unusable");
  };
  // Checked (nothing is taken from an answer to another question), walked for the
  // addresses to vouch for, rebuilt without the records that must not reach the client,
  // TTLs lowered to max-ttl: one pure function, the one the answer fuzz target checks.
  PreparedAnswer a = prepare_answer(
      q, id, ans, len, PrepareOptions{allow_private, cfg_.max_answer_addresses, cfg_.max_ttl});
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

  bool vouched = false;
  const Removed removed{a.dropped_special, a.dropped_over_cap};
  const std::size_t n = vouch_and_relay(q, p.client, a.msg.data(), a.msg.size(), id, a.scan.vouch,
                                        0, removed, entry, vouched);
  if (vouched && a.scan.cache_ttl > 0 &&
      (a.scan.rcode == rcode::NOERROR || a.scan.rcode == rcode::NXDOMAIN)) {
    CacheEntry e;
    e.ttl = uint32_t(std::min<int64_t>(a.scan.cache_ttl, cfg_.max_ttl));
    e.stored_ms = loop_.now_ms();
    e.ttl_offsets = std::move(a.scan.ttl_offsets);
    e.vouch = std::move(a.scan.vouch);
    e.dropped_special = a.dropped_special;
    e.dropped_over_cap = a.dropped_over_cap;
    e.msg = std::move(a.msg);
    char key[AnswerCache::kMaxKey];
    cache_.store(std::string(key, AnswerCache::key(q, key)), std::move(e));
  }
  return n;
}

void Pipeline::reload(std::shared_ptr<const Policy> p) {
  policy_ = std::move(p);
  cache_.clear();
  budgets_.clear();  // entry indices changed
  ++counters_.reloads_ok;
  revoke_unlisted("removed from the allowlist by a reload");
}

void Pipeline::revoke_unlisted(std::string_view why) {
  if (!nft_) return;
  // Entries are known by pattern, which survives reloads (indices do not). An element is
  // kept while one entry that vouched for it is still listed; one vouched in audit mode
  // while one of its names would be allowed now (or audit mode goes on).
  const Policy& now = *policy_;
  const RevokeOutcome r = nft_->revoke_unless(
      [&](std::string_view pattern) { return now.find_pattern(pattern) >= 0; },
      [&](std::string_view name) {
        return cfg_.audit || now.match_text(name).verdict == Match::Verdict::Allow;
      },
      loop_.now_ms());
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
  const uint64_t now = loop_.now_ms();
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
    log::warn("event=upstream-overdue name={}", log::quote(p.query.qname_text()));
    const std::size_t n = servfail(p.query, edns::EDE_NO_REACHABLE_AUTHORITY,
                                   "dnsward: upstream did not answer in time");
    const ClientAddr client = p.client;
    p.sink->deliver(client, out_.data(), n, true);
  }
}

}  // namespace dnsward
