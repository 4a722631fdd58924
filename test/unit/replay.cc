#include "replay.hpp"
#include "../common/fake_timers.hpp"

#include <ares.h>
#include <sys/socket.h>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <unordered_map>
#include <utility>
#include <vector>

#include "dnsward/config.hpp"
#include "dnsward/log.hpp"
#include "dnsward/pipeline.hpp"
#include "dnsward/policy.hpp"

// Last: ldns's headers define bool for C, which upsets <optional> included after them.
#include <ldns/ldns.h>

namespace dnsward::replay {
namespace {

/// The clock and timers, advanced only by TIME_PASSES; not on a minute boundary, where
/// calendar-minute windows would not show.
using testing::FakeTimers;

/// The upstream: keeps what was sent; answers only when the scenario says so.
class FakeUpstream : public UpstreamPort {
 public:
  struct Sent {
    uint64_t token;
    std::vector<uint8_t> query;
  };
  void set_receiver(OnAnswer on_answer) override { receiver_ = std::move(on_answer); }
  void send(const uint8_t* q, std::size_t len, uint64_t token) override {
    pending.push_back({token, std::vector<uint8_t>(q, q + len)});
    ++sent_count;
  }
  uint64_t worst_case_ms() const override { return 4000; }
  void stop() override {
    receiver_ = nullptr;
    pending.clear();
  }
  void answer(std::size_t i, int status, const std::vector<uint8_t>& msg) {
    const Sent s = pending[i];
    pending.erase(pending.begin() + long(i));
    if (receiver_) receiver_(s.token, status, msg.empty() ? nullptr : msg.data(), msg.size());
  }
  std::vector<Sent> pending;
  std::size_t sent_count = 0;

 private:
  OnAnswer receiver_;
};

/// The sets: element -> expiry, with who vouched, as the kernel would hold them.
class FakeSets : public SetWriter {
 public:
  struct Elem {
    uint64_t expires_ms;
    std::vector<std::string> patterns;  // "" for audit
    std::vector<std::string> names;
    std::set<std::string> bound;  // every name it is bound to, as the ledger keeps them
  };
  /// The names who binds, as the ledger keeps them: lower-case, no trailing dot, each once.
  static std::set<std::string> names_of(const Provenance& who) {
    std::set<std::string> out;
    for_each_bound_name(who, [&](std::string_view n) {
      if (n.size() > 1 && n.back() == '.') n.remove_suffix(1);
      std::string lc(n);
      std::transform(lc.begin(), lc.end(), lc.begin(), [](unsigned char ch) { return char(std::tolower(ch)); });
      out.insert(lc);
    });
    return out;
  }
  bool vouch(const std::vector<VouchItem>& items, uint64_t now_ms, const Provenance& who,
             std::string& err) override {
    if (failing) {
      err = "injected failure";
      return false;
    }
    // The port sets alone refuse (ports=): the answer must be withheld all the same.
    if (failing_ports && std::any_of(items.begin(), items.end(), [](const VouchItem& i) { return i.port != 0; })) {
      err = "injected failure of the port sets";
      return false;
    }
    if (on_vouch) std::exchange(on_vouch, nullptr)();  // once
    calls.push_back(names_of(who));
    for (const auto& it : items) {
      Elem& e = elems[it.key().text()];
      if (e.expires_ms <= now_ms) e.bound.clear();  // expired: bound afresh
      e.expires_ms = std::max(e.expires_ms, now_ms + uint64_t(it.timeout_s) * 1000u);
      e.patterns.emplace_back(who.pattern);
      e.names.emplace_back(who.name);
      e.bound.insert(calls.back().begin(), calls.back().end());
    }
    return true;
  }
  bool would_overflow_names(const std::vector<VouchItem>& items, const Provenance& who,
                            std::size_t cap, uint64_t now_ms, SetKey& which,
                            std::size_t& bound) const override {
    const std::set<std::string> add = names_of(who);
    for (const auto& it : items) {
      const auto e = elems.find(it.key().text());
      std::set<std::string> all = add;
      if (e != elems.end() && e->second.expires_ms > now_ms) all.insert(e->second.bound.begin(), e->second.bound.end());
      if (all.size() > cap) {
        which = it.key();
        bound = e != elems.end() && e->second.expires_ms > now_ms ? e->second.bound.size() : 0;
        return true;
      }
    }
    return false;
  }
  RevokeOutcome revoke_unless(const VoucherJudge& keep, const AuditJudge& keep_audit,
                              uint64_t now_ms, const PortJudge& keep_port = {}) override {
    RevokeOutcome out;
    for (auto it = elems.begin(); it != elems.end();) {
      bool kept = it->second.expires_ms <= now_ms;  // expired: the kernel dropped it already
      SetKey k;
      REQUIRE(SetKey::parse(it->first, k));
      for (std::size_t i = 0; i < it->second.patterns.size() && !kept; ++i) {
        if (it->second.patterns[i].empty()) {
          kept = keep_audit(k.guest, it->second.names[i]);
          continue;
        }
        const Voucher v = keep(k.guest, it->second.patterns[i]);
        kept = v == Voucher::ListedPrivate || (v == Voucher::Listed && !is_special_purpose(k.addr));
        if (kept && k.port && keep_port) kept = keep_port(k.guest, it->second.patterns[i], k.proto, k.port);
      }
      if (kept) {
        ++it;
      } else {
        ++out.deleted;
        it = elems.erase(it);
      }
    }
    return out;
  }
  std::size_t held(uint64_t now_ms) const {
    return std::size_t(std::count_if(elems.begin(), elems.end(),
                                     [&](const auto& kv) { return kv.second.expires_ms > now_ms; }));
  }
  bool failing = false;
  bool failing_ports = false;
  /// Runs inside the next vouch, which then succeeds: what NftSets::vouch() does when it
  /// finds a set gone without an event and judges the ruleset anew (RULESET_ON_VOUCH).
  std::function<void()> on_vouch;
  std::map<std::string, Elem> elems;
  std::vector<std::set<std::string>> calls;  // the names each vouch bound, in order
};

/// The ruleset's state, as the scenario sets it (RULESET); in force until it says otherwise.
class FakeRuleset : public RulesetWatch {
 public:
  FakeRuleset() {
    status.state = RulesetStatus::State::InForce;
    status.id = "0123456789abcdef";
    status.chain = "output";
    status.rules = 14;
  }
  const RulesetStatus& ruleset_now() override { return status; }
  RulesetStatus status;
};

/// The transport: keeps every reply by the client's query ID.
class FakeSink : public ReplySink {
 public:
  void deliver(const ClientAddr&, const uint8_t* data, std::size_t len, bool was_forwarded) override {
    if (len >= 2) replies[uint16_t(data[0] << 8 | data[1])].emplace_back(data, data + len);
    else ++empty;
    // What TcpListener::deliver does: a closed query lets a paused one go to on_query.
    if (was_forwarded && on_forwarded_delivery) on_forwarded_delivery();
  }
  std::function<void()> on_forwarded_delivery;
  std::map<uint16_t, std::vector<std::vector<uint8_t>>> replies;
  std::size_t empty = 0;
};

struct Pkt {
  ldns_pkt* p = nullptr;
  explicit Pkt(ldns_pkt* x) : p(x) {}
  ~Pkt() { if (p) ldns_pkt_free(p); }
  Pkt(const Pkt&) = delete;
  Pkt& operator=(const Pkt&) = delete;
};

std::vector<std::string> split(const std::string& line) {
  std::istringstream in(line);
  std::vector<std::string> out;
  std::string w;
  while (in >> w) out.push_back(w);
  return out;
}

bool has(const std::vector<std::string>& w, const std::string& flag) {
  return std::find(w.begin() + 1, w.end(), flag) != w.end();
}

std::string option(const std::vector<std::string>& w, const std::string& key) {
  for (std::size_t i = 1; i < w.size(); ++i)
    if (w[i].rfind(key + "=", 0) == 0) return w[i].substr(key.size() + 1);
  return {};
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char ch) { return char(std::tolower(ch)); });
  return s;
}

std::string fqdn(std::string n) { return n.empty() || n.back() != '.' ? n + "." : n; }

std::string joined(const std::set<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : " ") + n;
  return out.empty() ? "(none)" : out;
}

/// One record as ldns prints it, whitespace normalised: the form CHECK_ANSWER compares.
std::string canonical(ldns_rr* rr) {
  char* s = ldns_rr2str(rr);
  std::string out;
  for (const auto& w : split(s ? s : "")) out += (out.empty() ? "" : " ") + w;
  free(s);
  return out;
}

uint16_t rrtype(const std::string& t) {
  const ldns_rr_type r = ldns_get_rr_type_by_name(t.c_str());
  return uint16_t(r);
}

// The pipeline's counters by member name, from the metrics table (metrics.hpp).
#define DNSWARD_REPLAY_COUNTER_(member, ...) {#member, &Counters::member},
const std::unordered_map<std::string, uint64_t Counters::*>& counter_fields() {
  static const std::unordered_map<std::string, uint64_t Counters::*> m = {
      DNSWARD_METRICS(DNSWARD_REPLAY_COUNTER_, DNSWARD_METRICS_NONE_, DNSWARD_METRICS_NONE_,
                      DNSWARD_METRICS_NONE_)};
  return m;
}
#undef DNSWARD_REPLAY_COUNTER_

// What the pipeline logged during the scenario (kept from stderr, for CHECK_LOG).
std::vector<std::string> g_log;

class Runner {
 public:
  explicit Runner(std::string path) : path_(std::move(path)) {}

  void run() {
    std::ifstream in(path_);
    REQUIRE_MESSAGE(in.good(), path_ << ": cannot open");
    std::string line;
    while (std::getline(in, line)) lines_.push_back(line);
    g_log.clear();
    struct Restore {
      decltype(log::sink) saved = log::sink;
      ~Restore() { log::sink = saved; }
    } restore;
    log::sink = [](std::string_view l) { g_log.emplace_back(l); };
    for (pos_ = 0; pos_ < lines_.size(); ++pos_) {
      const auto hash = lines_[pos_].find('#');
      const auto w = split(hash == std::string::npos ? lines_[pos_] : lines_[pos_].substr(0, hash));
      if (w.empty()) continue;
      step_line_ = pos_ + 1;
      step(w);
    }
    // Every scenario ends with nothing left unanswered that it did not check.
  }

 private:
  std::string where() const { return fmt::format("{}:{}", path_, step_line_); }

  std::vector<std::string> block() {
    std::vector<std::string> out;
    for (++pos_; pos_ < lines_.size(); ++pos_) {
      std::string l = lines_[pos_];
      const auto first = l.find_first_not_of(" \t");
      if (first != std::string::npos && l.compare(first, 3, "END") == 0) return out;
      if (first == std::string::npos || l[first] == '#') continue;
      out.push_back(l.substr(first));
    }
    FAIL(where() << ": block without END");
    return out;
  }

  std::shared_ptr<const Policy> policy_from(const std::vector<std::string>& text) {
    std::string t;
    for (const auto& l : text) t += l + "\n";
    std::vector<std::string> errors;
    auto p = std::make_shared<const Policy>(Policy::parse({PolicySource{"replay.allow", t, false}}, errors));
    REQUIRE_MESSAGE(errors.empty(), where() << ": " << (errors.empty() ? "" : errors[0]));
    return p;
  }

  void start() {
    if (pipeline_) return;
    std::vector<std::string> args = config_args_;
    args.insert(args.end(), {"--upstream", "192.0.2.1"});
    const ParseOutcome o = parse_serve_config(args);
    REQUIRE_MESSAGE(o.config.has_value(), where() << ": config: " << o.error);
    cfg_ = std::make_unique<ServeConfig>(*o.config);
    if (!policy_) policy_ = policy_from({});
    pipeline_ = std::make_unique<Pipeline>(timers_, *cfg_, policy_, upstream_, cfg_->no_nft ? nullptr : &sets_);
    if (!cfg_->no_nft) pipeline_->set_ruleset(&ruleset_);
  }

  std::size_t find_pending(const std::string& name, const std::string& type) {
    std::size_t found = SIZE_MAX, n = 0;
    for (std::size_t i = 0; i < upstream_.pending.size(); ++i) {
      ldns_pkt* raw = nullptr;
      const auto& q = upstream_.pending[i].query;
      REQUIRE(ldns_wire2pkt(&raw, q.data(), q.size()) == LDNS_STATUS_OK);
      Pkt p(raw);
      ldns_rr* question = ldns_rr_list_rr(ldns_pkt_question(p.p), 0);
      char* owner = ldns_rdf2str(ldns_rr_owner(question));
      const bool match = lower(owner) == lower(fqdn(name)) && ldns_rr_get_type(question) == rrtype(type);
      free(owner);
      if (match) {
        found = i;
        ++n;
      }
    }
    REQUIRE_MESSAGE(n == 1, where() << ": " << n << " queries for " << name << " " << type
                                    << " pending upstream (of " << upstream_.pending.size() << ")");
    return found;
  }

  void step(const std::vector<std::string>& w) {
    const std::string& op = w[0];
    if (op == "CONFIG") {
      REQUIRE_MESSAGE(!pipeline_, where() << ": CONFIG after the pipeline started");
      config_args_.insert(config_args_.end(), w.begin() + 1, w.end());
    } else if (op == "ALLOWLIST") {
      policy_ = policy_from(block());
    } else if (op == "RELOAD") {
      start();
      policy_ = policy_from(block());
      pipeline_->reload(policy_);
    } else if (op == "QUERY") {
      start();
      query(w);
    } else if (op == "QUERY_HEX") {
      start();
      std::string hex;
      for (std::size_t k = 2; k < w.size(); ++k) hex += w[k];
      std::vector<uint8_t> pkt;
      for (std::size_t k = 0; k + 1 < hex.size(); k += 2) pkt.push_back(uint8_t(std::stoul(hex.substr(k, 2), nullptr, 16)));
      ClientAddr from;
      from.peer.ss_family = AF_INET;
      pipeline_->on_query(pkt.data(), pkt.size(), from, sink_);
    } else if (op == "CHECK_OUT_QUERY") {
      REQUIRE_MESSAGE(w.size() >= 3, where());
      const auto& q = upstream_.pending[find_pending(w[1], w[2])].query;
      ldns_pkt* raw = nullptr;
      REQUIRE(ldns_wire2pkt(&raw, q.data(), q.size()) == LDNS_STATUS_OK);
      Pkt p(raw);
      CHECK_MESSAGE(ldns_pkt_edns(p.p) == !has(w, "noedns"), where() << ": EDNS in the upstream query");
      if (has(w, "samecase")) {
        char* owner = ldns_rdf2str(ldns_rr_owner(ldns_rr_list_rr(ldns_pkt_question(p.p), 0)));
        CHECK_MESSAGE(std::string(owner) == fqdn(w[1]), where() << ": sent as " << owner);
        free(owner);
      }
    } else if (op == "CHECK_NO_OUT_QUERY") {
      CHECK_MESSAGE(upstream_.pending.empty(), where() << ": " << upstream_.pending.size() << " pending upstream");
    } else if (op == "CHECK_OUT_COUNT") {
      CHECK_MESSAGE(upstream_.sent_count == std::stoul(w.at(1)), where() << ": sent " << upstream_.sent_count);
    } else if (op == "REPLY") {
      reply(w, block());
    } else if (op == "UPSTREAM_FAIL") {
      const std::size_t i = find_pending(w.at(1), w.at(2));
      upstream_.answer(i, w.at(3) == "timeout" ? ARES_ETIMEOUT : ARES_ECONNREFUSED, {});
    } else if (op == "TIME_PASSES") {
      start();
      timers_.advance(std::stoull(w.at(1)));
    } else if (op == "SETS") {
      sets_.failing = w.at(1) == "fail";
      sets_.failing_ports = w.at(1) == "fail-ports";
    } else if (op == "RULESET") {
      set_ruleset(w);
    } else if (op == "RULESET_ON_VOUCH") {
      // The same, done by the next vouch (which succeeds), as NftSets::vouch() may.
      std::vector<std::string> rw(w);
      rw[0] = "RULESET";
      sets_.on_vouch = [this, rw] { set_ruleset(rw); };
    } else if (op == "CHECK_ANSWER") {
      check_answer(w, block());
    } else if (op == "CHECK_NO_ANSWER") {
      const uint16_t id = uint16_t(std::stoul(w.at(1)));
      CHECK_MESSAGE(sink_.replies[id].empty(), where() << ": query " << id << " was answered");
    } else if (op == "CHECK_SET") {
      const auto it = sets_.elems.find(w.at(1));
      const bool live = it != sets_.elems.end() && it->second.expires_ms > timers_.now_ms();
      if (w.at(2) == "absent") {
        CHECK_MESSAGE(!live, where() << ": " << w[1] << " is in the set");
      } else {
        REQUIRE_MESSAGE(live, where() << ": " << w[1] << " is not in the set");
        CHECK_MESSAGE((it->second.expires_ms - timers_.now_ms()) / 1000u == std::stoull(w[2]),
                      where() << ": " << w[1] << " has " << (it->second.expires_ms - timers_.now_ms()) << " ms left");
      }
    } else if (op == "CHECK_NAMES") {
      const auto it = sets_.elems.find(w.at(1));
      REQUIRE_MESSAGE(it != sets_.elems.end(), where() << ": " << w[1] << " was never vouched");
      const std::set<std::string> want(w.begin() + 2, w.end());
      CHECK_MESSAGE(it->second.bound == want, where() << ": " << w[1] << " is bound to " << joined(it->second.bound));
    } else if (op == "CHECK_VOUCH_CALLS") {
      CHECK_MESSAGE(sets_.calls.size() == std::stoul(w.at(1)), where() << ": " << sets_.calls.size() << " vouches");
    } else if (op == "CHECK_LAST_VOUCH") {
      REQUIRE_MESSAGE(!sets_.calls.empty(), where() << ": nothing was vouched");
      const std::set<std::string> want(w.begin() + 1, w.end());
      CHECK_MESSAGE(sets_.calls.back() == want, where() << ": the last vouch bound " << joined(sets_.calls.back()));
    } else if (op == "CHECK_SET_SIZE") {
      CHECK_MESSAGE(sets_.held(timers_.now_ms()) == std::stoul(w.at(1)),
                    where() << ": " << sets_.held(timers_.now_ms()) << " elements");
    } else if (op == "TCP_RESUME_ON_DELIVER") {
      // Each forwarded reply takes up one more query (ID, NAME, TYPE), as a TCP connection
      // paused at --tcp-max-pipelined does, from inside deliver().
      start();
      const std::vector<std::string> qw = {"QUERY", w.at(1), w.at(2), w.at(3), "tcp"};
      sink_.on_forwarded_delivery = [this, qw] { query(qw); };
    } else if (op == "CHECK_TIMERS_AT_MOST") {
      CHECK_MESSAGE(timers_.armed() <= std::stoul(w.at(1)), where() << ": " << timers_.armed() << " timers armed");
    } else if (op == "CHECK_LOG") {
      // A line containing every word given (e.g. event=vouch-failed name=a.test).
      const bool found = std::any_of(g_log.begin(), g_log.end(), [&](const std::string& l) {
        return std::all_of(w.begin() + 1, w.end(), [&](const std::string& x) { return l.find(x) != std::string::npos; });
      });
      CHECK_MESSAGE(found, where() << ": no such log line among " << g_log.size());
    } else if (op == "CHECK_COUNTER") {
      start();
      const auto it = counter_fields().find(w.at(1));
      REQUIRE_MESSAGE(it != counter_fields().end(), where() << ": unknown counter " << w[1]);
      CHECK_MESSAGE(pipeline_->counters().*(it->second) == std::stoull(w.at(2)),
                    where() << ": " << w[1] << " = " << pipeline_->counters().*(it->second));
    } else {
      FAIL(where() << ": unknown step " << op);
    }
  }

  // RULESET in-force | RULESET not-in-force REASON...
  void set_ruleset(const std::vector<std::string>& w) {
    RulesetStatus& r = ruleset_.status;
    if (w.at(1) == "in-force") {
      r = FakeRuleset().status;
    } else {
      REQUIRE_MESSAGE(w.at(1) == "not-in-force", where() << ": RULESET in-force|not-in-force REASON...");
      r.state = RulesetStatus::State::NotInForce;
      r.reason.clear();
      for (std::size_t k = 2; k < w.size(); ++k) r.reason += (k > 2 ? " " : "") + w[k];
    }
  }

  void query(const std::vector<std::string>& w) {
    REQUIRE_MESSAGE(w.size() >= 4, where() << ": QUERY ID NAME TYPE");
    const uint16_t id = uint16_t(std::stoul(w[1]));
    const std::string cls = option(w, "class");
    ldns_pkt* raw = nullptr;
    REQUIRE(ldns_pkt_query_new_frm_str(&raw, fqdn(w[2]).c_str(), ldns_rr_type(rrtype(w[3])),
                                       cls == "CH" ? LDNS_RR_CLASS_CH : LDNS_RR_CLASS_IN,
                                       LDNS_RD) == LDNS_STATUS_OK);
    Pkt p(raw);
    ldns_pkt_set_id(p.p, id);
    if (!has(w, "noedns")) {
      const std::string size = option(w, "bufsize");
      ldns_pkt_set_edns_udp_size(p.p, uint16_t(size.empty() ? 1232 : std::stoul(size)));
      ldns_pkt_set_edns_data(p.p, ldns_rdf_new_frm_data(LDNS_RDF_TYPE_UNKNOWN, 0, ""));
      const std::string version = option(w, "ednsversion");
      if (!version.empty()) ldns_pkt_set_edns_version(p.p, uint8_t(std::stoul(version)));
    }
    uint8_t* wire = nullptr;
    std::size_t len = 0;
    REQUIRE(ldns_pkt2wire(&wire, p.p, &len) == LDNS_STATUS_OK);
    ClientAddr from;
    from.transport = has(w, "tcp") ? ClientAddr::Transport::Tcp : ClientAddr::Transport::Udp;
    from.peer.ss_family = AF_INET;
    pipeline_->on_query(wire, len, from, sink_);
    free(wire);
  }

  void reply(const std::vector<std::string>& w, const std::vector<std::string>& records) {
    REQUIRE_MESSAGE(w.size() >= 3, where() << ": REPLY NAME TYPE");
    const std::size_t i = find_pending(w[1], w[2]);
    const auto& q = upstream_.pending[i].query;
    ldns_pkt* raw = nullptr;
    REQUIRE(ldns_wire2pkt(&raw, q.data(), q.size()) == LDNS_STATUS_OK);
    Pkt p(raw);
    // The query becomes its own answer: same ID, and the question as sent (0x20 case).
    ldns_pkt_set_qr(p.p, true);
    ldns_pkt_set_ra(p.p, true);
    if (has(w, "noopt-formerr")) {
      // What a server without EDNS sends (RFC 6891 7): FORMERR, the question, no OPT. Built
      // by hand: ldns keeps an OPT it parsed.
      const std::size_t question_end = 12 + ldns_rdf_size(ldns_rr_owner(ldns_rr_list_rr(ldns_pkt_question(p.p), 0))) + 4;
      std::vector<uint8_t> msg(q.begin(), q.begin() + long(question_end));
      msg[2] |= 0x80;                           // QR
      msg[3] = uint8_t((msg[3] & 0xf0) | 1);    // RCODE FORMERR
      msg[10] = msg[11] = 0;                    // ARCOUNT: no OPT
      upstream_.answer(i, ARES_SUCCESS, msg);
      return;
    }
    if (w.size() >= 4 && w[3].find('=') == std::string::npos) {
      const ldns_lookup_table* rc = ldns_lookup_by_name(ldns_rcodes, w[3].c_str());
      REQUIRE_MESSAGE(rc, where() << ": unknown RCODE " << w[3]);
      ldns_pkt_set_rcode(p.p, uint8_t(rc->id));
    }
    if (option(w, "case") == "flip") {
      // The question's letter case flipped: what an off-path spoofer who missed the 0x20
      // bits (or an upstream that does not keep case) sends back.
      ldns_rr* question = ldns_rr_list_rr(ldns_pkt_question(p.p), 0);
      ldns_rdf* owner = ldns_rr_owner(question);
      uint8_t* d = ldns_rdf_data(owner);
      for (std::size_t k = 0; k < ldns_rdf_size(owner); ++k)
        if (std::isalpha(d[k])) d[k] ^= 0x20;
    }
    for (const auto& r : records) {
      ldns_rr* rr = nullptr;
      REQUIRE_MESSAGE(ldns_rr_new_frm_str(&rr, r.c_str(), 3600, nullptr, nullptr) == LDNS_STATUS_OK,
                      where() << ": bad record " << r);
      ldns_pkt_push_rr(p.p, LDNS_SECTION_ANSWER, rr);
    }
    uint8_t* wire = nullptr;
    std::size_t len = 0;
    REQUIRE(ldns_pkt2wire(&wire, p.p, &len) == LDNS_STATUS_OK);
    const std::vector<uint8_t> msg(wire, wire + len);
    free(wire);
    upstream_.answer(i, ARES_SUCCESS, msg);
  }

  void check_answer(const std::vector<std::string>& w, const std::vector<std::string>& expected) {
    REQUIRE_MESSAGE(w.size() >= 3, where() << ": CHECK_ANSWER ID RCODE");
    const uint16_t id = uint16_t(std::stoul(w[1]));
    auto& got = sink_.replies[id];
    REQUIRE_MESSAGE(got.size() == 1, where() << ": " << got.size() << " replies to query " << id);
    const std::vector<uint8_t> msg = got.front();
    got.clear();  // checked: a later reply to the same ID is a new one
    ldns_pkt* raw = nullptr;
    REQUIRE_MESSAGE(ldns_wire2pkt(&raw, msg.data(), msg.size()) == LDNS_STATUS_OK, where() << ": unparsable reply");
    Pkt p(raw);
    char* rc = ldns_pkt_rcode2str(ldns_pkt_get_rcode(p.p));
    std::string rcode = rc ? rc : "?";
    free(rc);
    if (ldns_pkt_edns(p.p) && ldns_pkt_edns_extended_rcode(p.p) == 1 && ldns_pkt_get_rcode(p.p) == 0) rcode = "BADVERS";
    CHECK_MESSAGE(rcode == w[2], where() << ": RCODE " << rcode);
    CHECK_MESSAGE(ldns_pkt_tc(p.p) == has(w, "tc"), where() << ": TC " << ldns_pkt_tc(p.p));
    // EDE (RFC 8914): the first option 15 in the OPT, if any.
    int ede = -1;
    std::string ede_text;
    if (ldns_rdf* data = ldns_pkt_edns_data(p.p)) {
      const uint8_t* d = ldns_rdf_data(data);
      const std::size_t n = ldns_rdf_size(data);
      for (std::size_t k = 0; k + 4 <= n;) {
        const uint16_t code = uint16_t(d[k] << 8 | d[k + 1]), olen = uint16_t(d[k + 2] << 8 | d[k + 3]);
        if (code == 15 && olen >= 2 && k + 4 + olen <= n && ede < 0) {
          ede = d[k + 4] << 8 | d[k + 5];
          ede_text.assign(reinterpret_cast<const char*>(d + k + 6), olen - 2u);
        }
        k += 4u + olen;
      }
    }
    const std::string want_ede = option(w, "ede");
    CHECK_MESSAGE(ede == (want_ede.empty() ? -1 : std::stoi(want_ede)), where() << ": EDE " << ede);
    for (std::size_t k = 3; k < w.size(); ++k)
      if (w[k].rfind("edetext=", 0) == 0)
        CHECK_MESSAGE(ede_text.find(w[k].substr(8)) != std::string::npos,
                      where() << ": EDE text \"" << ede_text << "\" lacks " << w[k].substr(8));
    std::vector<std::string> answer, want;
    ldns_rr_list* an = ldns_pkt_answer(p.p);
    for (std::size_t k = 0; k < ldns_rr_list_rr_count(an); ++k) answer.push_back(canonical(ldns_rr_list_rr(an, k)));
    for (const auto& e : expected) {
      ldns_rr* rr = nullptr;
      REQUIRE_MESSAGE(ldns_rr_new_frm_str(&rr, e.c_str(), 3600, nullptr, nullptr) == LDNS_STATUS_OK,
                      where() << ": bad record " << e);
      want.push_back(canonical(rr));
      ldns_rr_free(rr);
    }
    std::string got_text, want_text;
    for (const auto& a : answer) got_text += a + "\n";
    for (const auto& a : want) want_text += a + "\n";
    CHECK_MESSAGE(got_text == want_text, where() << ": answer section\n got:\n" << got_text << " want:\n" << want_text);
  }

  std::string path_;
  std::vector<std::string> lines_;
  std::size_t pos_ = 0, step_line_ = 0;
  std::vector<std::string> config_args_;
  std::shared_ptr<const Policy> policy_;
  std::unique_ptr<ServeConfig> cfg_;
  FakeTimers timers_;
  FakeUpstream upstream_;
  FakeSets sets_;
  FakeRuleset ruleset_;
  FakeSink sink_;
  std::unique_ptr<Pipeline> pipeline_;  // last: it refers to everything above
};

}  // namespace

void run(const std::string& path) { Runner(path).run(); }

}  // namespace dnsward::replay
