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
    : loop_(loop), cfg_(cfg), policy_(std::move(policy)), cache_(cfg.cache_size),
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
  const Match m = policy_->match(q.qname_lc, q.qname_len);
  const int64_t now = usage_ ? int64_t(std::time(nullptr)) : 0;
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
    if (usage_) usage_->allowed(policy_->pattern(std::size_t(m.entry)), now);
  } else if (cfg_.audit) {
    // Audit mode: what enforce would deny is forwarded and vouched for like any other name,
    // and logged and counted so that `dnsward report` can list the lines to add.
    ++counters_.would_deny;
    const std::string name = q.qname_text();
    if (usage_) usage_->would_deny(name, now);
    log::info("event=would-deny name={} type={} client={} msg={}", log::quote(name),
              type_text(q.qtype), from.peer_text(), log::quote("audit mode: not enforced"));
    allow_private_ = false;
    current_entry_ = -1;
  } else {
    if (usage_) usage_->denied(q.qname_text(), now);
    if (log::enabled(LogLevel::Debug))
      log::debug("event=denied name={} type={} client={}", log::quote(q.qname_text()),
                 type_text(q.qtype), from.peer_text());
    return deny(q, m.verdict);
  }
  if (q.qtype == type::ANY) {
    // RFC 8482 4.2: a minimal answer instead of everything; nothing is forwarded.
    ++counters_.any_minimal;
    out_len_ = build_any_hinfo(q, reply_opts_, out_.data(), out_.size());
    return out_len_ ? Step::Reply : Step::Drop;
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
                             e->vouch, age, e->dropped_special, current_entry_, vouched);
  return out_len_ ? Step::Reply : Step::Drop;
}

std::size_t Pipeline::vouch_and_relay(const Query& q, const ClientAddr& client,
                                      const uint8_t* msg, std::size_t len, uint16_t upstream_id,
                                      const std::vector<VouchAddr>& addrs, uint32_t age_s,
                                      uint32_t dropped_special, int32_t entry,
                                      bool& vouched) {
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
    const bool ok = nft_->vouch(items, loop_.now_ms(), err);
    vouch_latency_.observe(double(mono_ns() - t0) / 1e9);
    if (!ok) {
      ++counters_.vouch_failures;
      log::error("event=vouch-failed name={} addresses={} error={}", log::quote(q.qname_text()),
                 addrs.size(), log::quote(err));
      return servfail(q, edns::EDE_OTHER,
                      "dnsward: the firewall update failed, so the answer is withheld");
    }
    ++counters_.vouched_answers;
    const uint64_t now = loop_.now_ms();
    for (const auto& i : items) {
      VouchedBy& v = vouched_by_[i.addr];
      v.expires_ms = std::max(v.expires_ms, now + uint64_t(i.timeout_s) * 1000u);
      if (entry >= 0 && std::find(v.entries.begin(), v.entries.end(), uint32_t(entry)) == v.entries.end())
        v.entries.push_back(uint32_t(entry));
    }
    if (vouched_by_.size() > 2 * std::size_t(cfg_.nft_set_size))
      for (auto it = vouched_by_.begin(); it != vouched_by_.end();)
        it = it->second.expires_ms <= now ? vouched_by_.erase(it) : std::next(it);
  }
  vouched = true;
  std::string why;
  if (dropped_special)
    why = fmt::format("dnsward: removed {} record(s) with special-purpose addresses "
                      "(loopback, private, link-local...) from the answer: DNS rebinding protection",
                      dropped_special);
  const std::size_t limit = client.transport == ClientAddr::Transport::Udp
                                ? q.udp_limit(cfg_.udp_payload)
                                : kMaxMessage;
  std::size_t n = 0;
  const RelayStatus rs = relay_answer(q, upstream_id, msg, len, limit, reply_opts_, out_.data(),
                                      out_.size(), n, dropped_special ? edns::EDE_BLOCKED : 0xffff, why);
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
  p.policy_version = policy_->version();
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
  const std::size_t n =
      build_upstream_query(p.query, id, cfg_.udp_payload, buf, sizeof buf, p.with_opt);
  if (n == 0) return false;
  log::debug("event=forward name={} type={} id={}", log::quote(p.query.qname_text()),
             type_text(p.query.qtype), id);
  // Registered before ares_send: c-ares may call back from inside it.
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

  std::size_t n = 0;
  if (status == ARES_SUCCESS && ans && p.with_opt && is_edns_formerr(ans, len)) {
    // An upstream that does not speak EDNS (RFC 6891 7): ask once more without our OPT.
    // c-ares 1.18 does this itself only for the first such answer on a channel.
    log::info("event=upstream-no-edns name={}", log::quote(p.query.qname_text()));
    p.with_opt = false;
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
  if (p.policy_version != policy_->version()) {
    // A reload happened while the query was upstream: the policy in force now decides.
    const Match m = policy_->match(q.qname_lc, q.qname_len);
    if (m.verdict != Match::Verdict::Allow && !cfg_.audit)
      return deny(q, m.verdict) == Step::Reply ? out_len_ : 0;
    entry = m.entry;
  }
  auto unusable = [&](const char* why) {
    ++counters_.upstream_failures;
    log::warn("event=upstream-bad-answer name={} status={}", log::quote(q.qname_text()), why);
    return servfail(q, edns::EDE_OTHER, "dnsward: the upstream's answer was unusable");
  };
  // Nothing is taken from an answer to another question (c-ares checks this too).
  const RelayStatus checked = check_answer(q, id, ans, len);
  if (checked != RelayStatus::Ok)
    return unusable(checked == RelayStatus::Mismatch ? "mismatch" : "malformed");
  AnswerScan scan = scan_answer(ans, len, q.qname_lc, q.qname_len, p.allow_private);
  if (!scan.ok) return unusable("malformed");

  std::vector<uint8_t> msg;
  const uint32_t dropped_special = scan.dropped_special;
  if (!scan.drop.empty()) {
    // Records that must not reach the client (special-purpose or off-chain addresses):
    // rebuilt without them, then read again to find the TTLs in the new layout.
    if (!rebuild_without(ans, len, scan.drop, msg)) return unusable("unparseable");
    counters_.special_dropped += dropped_special;
    log::info("event=records-dropped name={} dropped={} special={}", log::quote(q.qname_text()),
              scan.drop.size(), dropped_special);
    scan = scan_answer(msg.data(), msg.size(), q.qname_lc, q.qname_len, p.allow_private);
    if (!scan.ok || !scan.drop.empty()) return unusable("rebuild");
  } else {
    msg.assign(ans, ans + len);
  }
  // No client keeps a record longer than max-ttl: the set holds addresses that long (+grace).
  rewrite_ttls(msg.data(), scan.ttl_offsets, cfg_.max_ttl, 0);

  bool vouched = false;
  const std::size_t n = vouch_and_relay(q, p.client, msg.data(), msg.size(), id, scan.vouch, 0,
                                        dropped_special, entry, vouched);
  if (vouched && scan.cache_ttl > 0 &&
      (scan.rcode == rcode::NOERROR || scan.rcode == rcode::NXDOMAIN)) {
    CacheEntry e;
    e.ttl = uint32_t(std::min<int64_t>(scan.cache_ttl, cfg_.max_ttl));
    e.stored_ms = loop_.now_ms();
    e.ttl_offsets = std::move(scan.ttl_offsets);
    e.vouch = std::move(scan.vouch);
    e.dropped_special = dropped_special;
    e.msg = std::move(msg);
    char key[AnswerCache::kMaxKey];
    cache_.store(std::string(key, AnswerCache::key(q, key)), std::move(e));
  }
  return n;
}

void Pipeline::reload(std::shared_ptr<const Policy> p) {
  // Entry indices change with the list: carry each over by its pattern. An address none of
  // whose entries survive was vouched for only by what the reload removed.
  std::unordered_map<uint32_t, int32_t> carried;  // old index -> new index or -1
  std::vector<IpAddr> revoke;
  for (auto it = vouched_by_.begin(); it != vouched_by_.end();) {
    auto& ids = it->second.entries;
    if (ids.empty()) {  // vouched in audit mode: no entry to revoke it by
      ++it;
      continue;
    }
    std::vector<uint32_t> kept;
    for (uint32_t old : ids) {
      auto c = carried.find(old);
      if (c == carried.end())
        c = carried.emplace(old, old < policy_->size() ? p->find_pattern(policy_->pattern(old)) : -1).first;
      if (c->second >= 0) kept.push_back(uint32_t(c->second));
    }
    if (kept.empty()) {
      revoke.push_back(it->first);
      it = vouched_by_.erase(it);
    } else {
      ids = std::move(kept);
      ++it;
    }
  }
  policy_ = std::move(p);
  cache_.clear();
  budgets_.clear();  // entry indices changed
  ++counters_.reloads_ok;
  if (nft_ && !revoke.empty()) {
    std::string err;
    if (nft_->revoke(revoke, err)) {
      counters_.revoked += revoke.size();
      log::info("event=revoked addresses={} msg={}", revoke.size(),
                log::quote("vouched only by entries the reload removed"));
    } else {
      log::error("event=revoke-failed addresses={} error={}", revoke.size(), log::quote(err));
    }
  }
}

void Pipeline::sweep_overdue() {
  const uint64_t now = loop_.now_ms();
  for (auto& [id, p] : pending_) {
    if (p.abandoned || p.deadline_ms > now) continue;
    p.abandoned = true;
    ++counters_.upstream_failures;
    log::warn("event=upstream-overdue name={}", log::quote(p.query.qname_text()));
    const std::size_t n = servfail(p.query, edns::EDE_NO_REACHABLE_AUTHORITY,
                                   "dnsward: upstream did not answer in time");
    p.sink->deliver(p.client, out_.data(), n, true);
  }
}

}  // namespace dnsward
