#include "dnsward/ruleset_check.hpp"

#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <initializer_list>
#include <iterator>
#include <utility>

namespace dnsward {
namespace {

constexpr std::string_view kChainPrefix = "dnsward ruleset id=";
constexpr std::string_view kRulePrefix = "dnsward ";

/// Reads a decimal or hexadecimal number at the front of s and removes it; false if none.
template <typename T>
bool take_number(std::string_view& s, T& out, int base = 10) {
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out, base);
  if (ec != std::errc() || end == s.data()) return false;
  s.remove_prefix(std::size_t(end - s.data()));
  return true;
}

bool take(std::string_view& s, std::string_view word) {
  if (s.substr(0, word.size()) != word) return false;
  s.remove_prefix(word.size());
  return true;
}

/// 16 hex digits, exactly (the id as printed).
bool take_id(std::string_view& s, uint64_t& id) {
  const std::string_view digits = s.substr(0, 16);
  if (digits.size() != 16 || digits.find_first_not_of("0123456789abcdef") != std::string_view::npos)
    return false;
  return take_number(s, id, 16);
}

const char* hook_name(uint32_t hook) {
  switch (hook) {
    case NF_INET_PRE_ROUTING: return "prerouting";
    case NF_INET_LOCAL_IN: return "input";
    case NF_INET_FORWARD: return "forward";
    case NF_INET_LOCAL_OUT: return "output";
    case NF_INET_POST_ROUTING: return "postrouting";
    default: return "ingress";
  }
}

/// s with every byte `keep` refuses written as \xNN, at most `limit` bytes of it shown.
template <typename Keep>
std::string escaped(std::string_view s, std::size_t limit, Keep keep) {
  std::string out;
  for (std::size_t i = 0; i < s.size() && i < limit; ++i) {
    const auto ch = uint8_t(s[i]);
    if (keep(ch)) out += char(ch);
    else out += fmt::format("\\x{:02x}", ch);
  }
  if (s.size() > limit) out += "...";
  return out;
}

/// Text read from the kernel (a comment), fit to quote in a reason: printable ASCII but `"`
/// and `\` as it is, at most 128 bytes shown.
std::string printable(std::string_view s) {
  return escaped(s, 128, [](uint8_t ch) { return ch >= 0x20 && ch < 0x7f && ch != '"' && ch != '\\'; });
}

static_assert(kHostChains[kHostChainPrerouting].hook == NF_INET_PRE_ROUTING &&
              kHostChains[kHostChainRedirect].hook == NF_INET_PRE_ROUTING &&
              kHostChains[kHostChainInput].hook == NF_INET_LOCAL_IN &&
              kHostChains[kHostChainForward].hook == NF_INET_FORWARD &&
              kHostChains[kHostChainGuard].hook == NF_INET_FORWARD);
static_assert(std::size(kHostChains) == kHostGuardChainCount);
static_assert(kGuestChains[kGuestChainOutput].hook == NF_INET_LOCAL_OUT &&
              kGuestChains[kGuestChainInput].hook == NF_INET_LOCAL_IN &&
              kGuestChains[kGuestChainGuardOutput].hook == NF_INET_LOCAL_OUT &&
              kGuestChains[kGuestChainGuardInput].hook == NF_INET_LOCAL_IN);
static_assert(std::size(kGuestChains) == kGuestGuardChains);
// The guard's chains between conntrack (NF_IP_PRI_CONNTRACK, -200: they read and set the
// conntrack mark) and iptables' mangle (NF_IP_PRI_MANGLE, -150: the xt queue), and the
// chains that read the verdicts after both.
static_assert(kGuardChainPrio > -200 && kGuardChainPrio < -150 && kGuestChains[kGuestChainOutput].prio > -150 &&
              kGuestChains[kGuestChainInput].prio > -150 && kHostChains[kHostChainForward].prio > -150);

/// Why chain c does not hold exactly the rules its mark declares, in order, or "" if it
/// does. A rule inserted before the final reject (an `accept`, say) opens what the ruleset
/// closes, and one deleted may have been a lookup.
std::string judge_rules(const ChainSeen& c, const ChainMark& mark) {
  const std::string name = shown_name(c.name);
  const std::size_t common = std::min(c.rules.size(), mark.rules);
  for (std::size_t i = 0; i < common; ++i) {
    const RuleSeen& r = c.rules[i];
    const auto m = parse_rule_comment(r.comment);
    if (!m || m->id != mark.id || m->index != i || m->rules != mark.rules || m->chain != mark.chain ||
        m->chains != mark.chains)
      return fmt::format("rule {} of chain {} (handle {}, {}) is not the rule `nft-rules` printed "
                         "there: a rule was inserted, deleted, moved or replaced",
                         i, name, r.handle,
                         r.comment.empty() ? std::string("no comment")
                                           : "comment \"" + printable(r.comment) + "\"");
  }
  if (c.rules.size() + c.unread_rules != mark.rules)
    return fmt::format("chain {} holds {} rules where its comment declares {}", name,
                       c.rules.size() + c.unread_rules, mark.rules);
  return "";
}

/// Whether a rule of c looks set up (inverted: `!= @set`, when negated).
bool chain_looks_up(const ChainSeen& c, const std::string& set, bool negated) {
  for (const RuleSeen& r : c.rules)
    for (const auto& l : negated ? r.negated_lookups : r.lookups)
      if (l == set) return true;
  return false;
}

/// Why chain c, marked as chain mark.chain of mark.chains, is not at the priority of `want`
/// (when that is judged), or "" if it is. The guard's chains must run before the queue and
/// the filter chains after it: a verdict bit is read only where the clear came first.
std::string judge_priority(const ChainSeen& c, const ChainMark& mark, const HostChain& want) {
  if (!want.prio_judged || c.priority == want.prio) return "";
  return fmt::format("chain {} (chain {} of {}) is at priority {}, not {} ({}): the guard's verdict marks are "
                     "cleared before the queue and read after it, so its chains' order is part of the ruleset",
                     shown_name(c.name), mark.chain, mark.chains, c.priority, want.prio, want.priority);
}

/// Why a marked chain is not the ruleset in force, or "" if it is.
std::string judge_chain(const ChainSeen& c, const ChainMark& mark, const RulesetExpectation& e) {
  const std::string name = shown_name(c.name);
  // A host ruleset's chain is not the single-VM chain, whatever its hook (a guarded
  // ruleset's output chain is marked as chain 0 of 4: its caller checked the place).
  if (mark.chains == kGuestGuardChainsRepeat && mark.guard)
    return fmt::format("chain {} is marked as chain {} of {}: the ruleset was printed by an older `nft-rules "
                       "--sni-guard`, whose chains read dnsward's verdict where it queued (NF_REPEAT); this "
                       "dnsward's verdicts go on to a later chain, which that ruleset lacks, so rejected "
                       "connections would not be reset (print it again)",
                       name, mark.chain, mark.chains);
  if (mark.chains != 0 && mark.chains != kGuestGuardChains)
    return fmt::format("chain {} carries the mark of a host ruleset (`nft-rules --host`), chain "
                       "{} of {}", name, mark.chain, mark.chains);
  // A regular chain is reached only by a jump from a base chain: its rules see no packet of
  // their own, however exactly they match.
  if (!c.base) return fmt::format("chain {} is not a base chain (no hook): its rules see no packet", name);
  if (c.type != "filter") return fmt::format("chain {} is of type {}, not filter", name, shown_name(c.type));
  if (c.hook != NF_INET_LOCAL_OUT)
    return fmt::format("chain {} is on the {} hook, not output", name, hook_name(c.hook));
  if (c.policy != NF_DROP)
    return fmt::format("chain {} has policy {}, not drop", name, c.policy == NF_ACCEPT ? "accept" : "other");
  if (mark.chains == kGuestGuardChains)
    if (auto why = judge_priority(c, mark, kGuestChains[kGuestChainOutput]); !why.empty()) return why;
  if (auto why = judge_rules(c, mark); !why.empty()) return why;
  for (const auto& [need, set] : {std::pair{e.need4, &e.set4}, std::pair{e.need6, &e.set6},
                                  std::pair{e.need4 && !e.ports4.empty(), &e.ports4},
                                  std::pair{e.need6 && !e.ports6.empty(), &e.ports6}})
    if (need && !chain_looks_up(c, *set, false))
      return fmt::format("no rule of chain {} looks up set {}: the addresses dnsward vouches for "
                         "are not what the chain lets through",
                         name, *set);
  return "";
}

/// Why chain c, marked as chain mark.chain of mark.chains, is not the chain `want` of that
/// place as `nft-rules` prints it (a base chain of its type on its hook, holding exactly
/// its marked rules in order), or "" if it is. Policies are not judged here; priorities only
/// of a ruleset printed with the guard (guard), whose verdicts depend on them.
std::string judge_placed_chain(const ChainSeen& c, const ChainMark& mark, const HostChain& want, bool guard) {
  const std::string name = shown_name(c.name);
  if (!c.base)
    return fmt::format("chain {} (chain {} of {}) is not a base chain (no hook): its rules see no packet", name,
                       mark.chain, mark.chains);
  if (c.type != want.type)
    return fmt::format("chain {} (chain {} of {}) is of type {}, not {}", name, mark.chain, mark.chains,
                       shown_name(c.type), want.type);
  if (c.hook != want.hook)
    return fmt::format("chain {} (chain {} of {}) is on the {} hook, not {}", name, mark.chain, mark.chains,
                       hook_name(c.hook), hook_name(want.hook));
  if (guard)
    if (auto why = judge_priority(c, mark, want); !why.empty()) return why;
  return judge_rules(c, mark);
}

/// Why table t's flags keep its chains from being in force, or "" if they do not.
std::string judge_table_flags(const TableSeen& t, const std::string& table) {
  constexpr uint32_t kPersist = 0x4;  // NFT_TABLE_F_PERSIST (6.9+), not in older headers
  if (t.flags & NFT_TABLE_F_DORMANT)
    return fmt::format("table {} is dormant (flags dormant): none of its chains sees a packet", table);
  if (t.flags & NFT_TABLE_F_OWNER)
    // `nft -i`, or any process, that adds a table with `flags owner` owns it: when that
    // process exits, the kernel removes the table, its chains and sets, and sends no event.
    return fmt::format("table {} is owned by the process that loaded it (flags owner{}): it "
                       "goes, with no event, when that process exits; `nft-rules` sets no flag",
                       table, t.flags & kPersist ? ", persist" : "");
  if (t.flags) return fmt::format("table {} has flags 0x{:x}; `nft-rules` sets none", table, t.flags);
  return "";
}

/// The names of t's chains but those in `except`, shown, at most five.
std::string chain_names(const TableSeen& t, std::initializer_list<const ChainSeen*> except) {
  std::string out;
  std::size_t n = 0;
  for (const ChainSeen& c : t.chains) {
    if (std::find(except.begin(), except.end(), &c) != except.end()) continue;
    if (n++ == 5) {
      out += ", ...";
      break;
    }
    out += (out.empty() ? "" : ", ") + shown_name(c.name);
  }
  return out;
}

/// A set's key type as nft names it, for messages.
std::string key_type_name(uint32_t type) {
  switch (type) {
    case kKeyTypeV4: return "ipv4_addr";
    case kKeyTypeV6: return "ipv6_addr";
    case kKeyTypeV4V4: return "ipv4_addr . ipv4_addr";
    case kKeyTypeV6V6: return "ipv6_addr . ipv6_addr";
    case kKeyTypeIfV4: return "ifname . ipv4_addr";
    case kKeyTypeIfV6: return "ifname . ipv6_addr";
    case kKeyTypeV4V4Port: return "ipv4_addr . ipv4_addr . inet_proto . inet_service";
    case kKeyTypeV6V6Port: return "ipv6_addr . ipv6_addr . inet_proto . inet_service";
    default: return fmt::format("type {}", type);
  }
}

}  // namespace

std::string ruleset_chain_comment(uint64_t id, std::size_t rules, bool guard) {
  return fmt::format("{}{:016x} rules={}{}", kChainPrefix, id, rules, guard ? " guard=on" : "");
}

std::string ruleset_rule_comment(uint64_t id, std::size_t i, std::size_t n) {
  return fmt::format("{}{}/{} id={:016x}", kRulePrefix, i, n, id);
}

std::string ruleset_chain_comment(uint64_t id, std::size_t rules, std::size_t k, std::size_t m, bool guard) {
  return fmt::format("{} chain={}/{}", ruleset_chain_comment(id, rules, guard), k, m);
}

std::string ruleset_rule_comment(uint64_t id, std::size_t i, std::size_t n, std::size_t k, std::size_t m) {
  return fmt::format("{} chain={}/{}", ruleset_rule_comment(id, i, n), k, m);
}

namespace {
/// The host-mode suffix " chain=<k>/<m>" at the end of s, if there is one; false if s holds
/// anything else (or k is not below m). Without it chains stays 0.
bool take_chain_place(std::string_view& s, std::size_t& k, std::size_t& m) {
  if (s.empty()) return true;
  return take(s, " chain=") && take_number(s, k) && take(s, "/") && take_number(s, m) && s.empty() &&
         k < m;
}
}  // namespace

std::optional<ChainMark> parse_chain_comment(std::string_view s) {
  ChainMark m;
  if (!take(s, kChainPrefix) || !take_id(s, m.id) || !take(s, " rules=") || !take_number(s, m.rules))
    return std::nullopt;
  m.guard = take(s, " guard=on");
  if (!take_chain_place(s, m.chain, m.chains)) return std::nullopt;
  return m;
}

std::optional<RuleMark> parse_rule_comment(std::string_view s) {
  RuleMark m;
  if (!take(s, kRulePrefix) || !take_number(s, m.index) || !take(s, "/") || !take_number(s, m.rules) ||
      !take(s, " id=") || !take_id(s, m.id) || !take_chain_place(s, m.chain, m.chains) ||
      m.index >= m.rules)
    return std::nullopt;
  return m;
}

uint64_t ruleset_id(const std::vector<std::string>& lines) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a 64
  auto mix = [&h](char ch) {
    h ^= uint8_t(ch);
    h *= 1099511628211ull;
  };
  for (const auto& l : lines) {
    for (const char ch : l) mix(ch);
    mix('\n');
  }
  return h;
}

std::string userdata_comment(const void* data, std::size_t len) {
  // nftables' userdata (libnftnl udata.c): a sequence of {type u8, len u8, value[len]}; nft
  // stores a comment as type 0 (NFTNL_UDATA_CHAIN_COMMENT, NFTNL_UDATA_RULE_COMMENT) with
  // its NUL.
  const auto* d = static_cast<const uint8_t*>(data);
  for (std::size_t at = 0; d && at + 2 <= len;) {
    const uint8_t type = d[at], l = d[at + 1];
    if (at + 2 + l > len) return "";
    const auto* v = reinterpret_cast<const char*>(d + at + 2);
    if (type == 0) return l > 0 && v[l - 1] == '\0' ? std::string(v, std::strlen(v)) : std::string();
    at += 2u + l;
  }
  return "";
}

std::string_view RulesetStatus::word() const {
  switch (state) {
    case State::InForce: return "in-force";
    case State::NotInForce: return "not-in-force";
    case State::NotChecked: break;
  }
  return "not-checked";
}

std::string shown_name(std::string_view name) {
  return escaped(name, 64, [](uint8_t ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '_' || ch == '.' || ch == '-' || ch == '/';
  });
}

std::string set_flags_text(uint32_t flags) {
  static constexpr std::pair<uint32_t, const char*> kNames[] = {
      {NFT_SET_ANONYMOUS, "anonymous"}, {NFT_SET_CONSTANT, "constant"}, {NFT_SET_INTERVAL, "interval"},
      {NFT_SET_MAP, "map"},             {NFT_SET_TIMEOUT, "timeout"},   {NFT_SET_EVAL, "dynamic"},
      {NFT_SET_OBJECT, "object"},       {NFT_SET_CONCAT, "concat"},     {0x100, "expr"},
  };
  std::string out;
  uint32_t left = flags;
  for (const auto& [bit, name] : kNames)
    if (flags & bit) {
      out += (out.empty() ? "" : ", ") + std::string(name);
      left &= ~bit;
    }
  if (left) out += fmt::format("{}0x{:x}", out.empty() ? "" : ", ", left);
  return out.empty() ? "none" : out;
}

bool set_flags_ok(uint32_t flags) { return flags == NFT_SET_TIMEOUT; }

RulesetStatus judge_ruleset(const TableSeen& t, const RulesetExpectation& e) {
  RulesetStatus s;
  s.state = RulesetStatus::State::NotInForce;
  const std::string table = e.family + " " + e.table;
  if (!t.exists) {
    s.reason = fmt::format("table {} does not exist", table);
    return s;
  }
  // Marked chains, base chains first and among them the output chain's place first: the id
  // shown is that of the one closest to being in force, and when none is, the reason given
  // is that one's.
  std::vector<std::pair<const ChainSeen*, ChainMark>> marked;
  for (const ChainSeen& c : t.chains)
    if (const auto m = parse_chain_comment(c.comment)) marked.emplace_back(&c, *m);
  std::stable_sort(marked.begin(), marked.end(), [](const auto& a, const auto& b) {
    return std::pair{!a.first->base, a.second.chain} < std::pair{!b.first->base, b.second.chain};
  });
  // With --sni-guard `nft-rules` prints four chains, marked with their places (kGuestChains):
  // the server's packets come in on the input hook, which the output chain never sees, and
  // each hook's guard chain clears the verdict bits before the queue.
  const bool guarded = !marked.empty() && marked.front().second.chains == kGuestGuardChains;
  const std::pair<const ChainSeen*, ChainMark>* places[kGuestGuardChains] = {};
  if (guarded)
    for (const auto& p : marked)
      if (p.second.chains == kGuestGuardChains && !places[p.second.chain]) places[p.second.chain] = &p;
  if (!marked.empty()) {
    s.id = fmt::format("{:016x}", marked.front().second.id);
    s.chain = shown_name(marked.front().first->name);
    s.rules = marked.front().second.rules;
    for (const auto* p : places)
      if (p && p != &marked.front()) {
        s.chain += "," + shown_name(p->first->name);
        s.rules += p->second.rules;
      }
  }
  if (auto why = judge_table_flags(t, table); !why.empty()) {
    s.reason = std::move(why);
    return s;
  }
  if (marked.empty()) {
    const std::string list = chain_names(t, {});
    s.reason = fmt::format("no chain of table {} carries the comment `dnsward nft-rules` prints "
                           "({}): its ruleset is not loaded (did `nft -f` of it fail?)",
                           table, list.empty() ? "the table has no chain" : "its chains: " + list);
    return s;
  }
  // `nft-rules` prints one chain (four with --sni-guard). Another chain in the table,
  // whatever its hook and priority, can undo what the filter decided: a postrouting or route
  // chain rewriting `ip daddr` after the output filter accepted the address, say.
  // A host ruleset without the guard has as many chains as an in-guest one with it (four):
  // its marks say no guard=on, which every chain of an in-guest guarded ruleset says.
  if (guarded && !marked.front().second.guard) {
    s.reason = fmt::format("chain {} carries the mark of a host ruleset (`nft-rules --host`), chain {} of {}, or of "
                           "an in-guest one without guard=on, which `nft-rules` does not print",
                           shown_name(marked.front().first->name), marked.front().second.chain,
                           marked.front().second.chains);
    return s;
  }
  // An older `nft-rules --sni-guard` printed two chains, for dnsward's NF_REPEAT verdicts.
  if (marked.front().second.chains == kGuestGuardChainsRepeat) {
    s.reason = judge_chain(*marked.front().first, marked.front().second, e);
    if (!s.reason.empty()) return s;
  }
  if (t.chains.size() > (guarded ? kGuestGuardChains : 1)) {
    std::initializer_list<const ChainSeen*> seen_places = {
        places[0] ? places[0]->first : nullptr, places[1] ? places[1]->first : nullptr,
        places[2] ? places[2]->first : nullptr, places[3] ? places[3]->first : nullptr};
    s.reason = guarded ? fmt::format("table {} holds {} chains where `nft-rules --sni-guard` prints {} ({}); "
                                     "besides them: {}: another chain of the table can rewrite or reroute what "
                                     "its filter let through",
                                     table, t.chains.size(), kGuestGuardChains, s.chain, chain_names(t, seen_places))
                   : fmt::format("table {} holds {} chains where `nft-rules` prints one ({}); besides "
                                 "it: {}: another chain of the table can rewrite or reroute what its "
                                 "filter let through",
                                 table, t.chains.size(), s.chain, chain_names(t, {marked.front().first}));
    return s;
  }
  // The sets the chain looks up. An interval set holds ranges: dnsward's elements, which
  // carry no end, would each open a range up to the top of the address space.
  // With --sni-guard, the port sets of ports= too: an element in an interval set would open
  // a range of ports (and of addresses).
  const bool ports = !e.ports4.empty();
  for (const auto& [set, name, type, len, need] :
       {std::tuple{&t.set4, &e.set4, kKeyTypeV4, kKeyLenV4, e.need4},
        std::tuple{&t.set6, &e.set6, kKeyTypeV6, kKeyLenV6, e.need6},
        std::tuple{&t.ports4, &e.ports4, kKeyTypeV4Port, kKeyLenV4Port, e.need4 && ports},
        std::tuple{&t.ports6, &e.ports6, kKeyTypeV6Port, kKeyLenV6Port, e.need6 && ports}}) {
    if (name->empty()) continue;
    if (!set->exists) {
      if (!need) continue;
      s.reason = fmt::format("set {} of table {} does not exist", *name, table);
      return s;
    }
    if (set->key_type != type || set->key_len != len) {
      s.reason = fmt::format("set {} of table {} is of another type than {}", *name, table,
                             type == kKeyTypeV4       ? "ipv4_addr"
                             : type == kKeyTypeV6     ? "ipv6_addr"
                             : type == kKeyTypeV4Port ? "ipv4_addr . inet_proto . inet_service"
                                                      : "ipv6_addr . inet_proto . inet_service");
      return s;
    }
    if (!set_flags_ok(set->flags)) {
      s.reason = fmt::format("set {} of table {} has flags {} where dnsward needs flags timeout "
                             "alone (an interval set turns each address dnsward adds into a "
                             "range up to the end of the address space)",
                             *name, table, set_flags_text(set->flags));
      return s;
    }
  }
  const auto& [c, mark] = marked.front();
  // Every place, as the host judge wants its chains: without the input chain the server's
  // packets, which confirm what the guard judged, never reach dnsward; without a guard
  // chain a forged verdict mark reaches the chain that reads verdicts.
  for (std::size_t k = 0; guarded && k < kGuestGuardChains; ++k)
    if (!places[k] || (k == kGuestChainOutput && places[k] != &marked.front())) {
      s.reason = fmt::format("table {} holds no chain marked as chain {} of {} (the {} chain, type {} on the {} "
                             "hook): the ruleset is not whole",
                             table, k, kGuestGuardChains, kGuestChains[k].name, kGuestChains[k].type,
                             hook_name(kGuestChains[k].hook));
      return s;
    }
  s.reason = judge_chain(*c, mark, e);
  for (std::size_t k = 1; s.reason.empty() && guarded && k < kGuestGuardChains; ++k) {
    const auto& [other, other_mark] = *places[k];
    s.reason = other_mark.id != mark.id
                   ? fmt::format("chains {} and {} of table {} carry marks of two rulesets (ids {:016x} and "
                                 "{:016x}): it holds parts of two loads",
                                 shown_name(c->name), shown_name(other->name), table, mark.id, other_mark.id)
                   : judge_placed_chain(*other, other_mark, kGuestChains[k], true);
  }
  // With --sni-guard, a ruleset printed without it lets connections on guarded ports pass
  // unjudged; one printed with it, under a dnsward without, holds them for nobody.
  if (s.reason.empty() && mark.guard != e.guard)
    s.reason = e.guard ? "the ruleset in force was printed without --sni-guard: connections on guarded "
                         "ports would pass unjudged (print it with `nft-rules --sni-guard`)"
                       : "the ruleset in force was printed with --sni-guard, but serve runs without "
                         "it: connections on guarded ports wait for a verdict that never comes";
  // The guard's rules come in four chains. One chain marked guard=on is of an older
  // `nft-rules --sni-guard`, which queued the client's SYN and none of the server's packets:
  // the guard would wait for a SYN-ACK that never comes.
  if (s.reason.empty() && mark.guard != guarded)
    s.reason = mark.guard ? fmt::format("chain {} is marked guard=on, but not as chain 0 of {}: the ruleset was "
                                        "printed by an older `nft-rules --sni-guard`, which queues none of the "
                                        "server's packets (print it again)",
                                        shown_name(c->name), kGuestGuardChains)
                          : fmt::format("chain {} is marked as chain 0 of {} without guard=on, which `nft-rules` "
                                        "does not print",
                                        shown_name(c->name), kGuestGuardChains);
  if (s.reason.empty()) s.state = RulesetStatus::State::InForce;
  return s;
}

RulesetStatus judge_host_ruleset(const TableSeen& t, const HostRulesetExpectation& e) {
  RulesetStatus s;
  s.state = RulesetStatus::State::NotInForce;
  const std::string table = "inet " + e.table;
  if (!t.exists) {
    s.reason = fmt::format("table {} does not exist", table);
    return s;
  }
  // The chains by the place their marks name; the id and the names shown are those found.
  // Four places, five with the guard (guard_forward): n is what the first marked chain says.
  std::pair<const ChainSeen*, ChainMark> at[kHostGuardChainCount] = {};
  const ChainSeen* first = nullptr;
  ChainMark first_mark;
  std::size_t rules = 0;
  for (const ChainSeen& c : t.chains) {
    const auto m = parse_chain_comment(c.comment);
    if (!m || (m->chains != kHostChainCount && m->chains != kHostGuardChainCount)) continue;
    if (!first) {
      first = &c;
      first_mark = *m;
    }
    if (m->chains == first_mark.chains && !at[m->chain].first) {
      at[m->chain] = {&c, *m};
      rules += m->rules;
    }
  }
  if (first) {
    s.id = fmt::format("{:016x}", first_mark.id);
    for (const auto& [c, m] : at)
      if (c) s.chain += (s.chain.empty() ? "" : ",") + shown_name(c->name);
    s.rules = rules;
  }
  if (auto why = judge_table_flags(t, table); !why.empty()) {
    s.reason = std::move(why);
    return s;
  }
  if (!first) {
    const std::string list = chain_names(t, {});
    s.reason = fmt::format("no chain of table {} carries the comment `dnsward nft-rules --host` "
                           "prints ({}): its ruleset is not loaded (did `nft -f` of it fail?)",
                           table, list.empty() ? "the table has no chain" : "its chains: " + list);
    return s;
  }
  const std::size_t n = first_mark.chains;
  // Exactly the marked chains, of one ruleset. Another chain of the table, whatever its
  // hook and priority, can undo what they decide (a postrouting chain rewriting `ip daddr`
  // after forward accepted the pair, say); two copies of one place are a mix of loads.
  for (const ChainSeen& c : t.chains) {
    const std::string name = shown_name(c.name);
    const auto m = parse_chain_comment(c.comment);
    if (!m) {
      s.reason = fmt::format("table {} holds chain {}, which `nft-rules --host` does not print (it "
                             "carries no mark): another chain of the table can rewrite or reroute "
                             "what the ruleset decided",
                             table, name);
      return s;
    }
    if (m->chains != n) {
      s.reason = fmt::format("chain {} of table {} carries the mark of {}, not of chain k of {} as "
                             "`nft-rules --host` prints",
                             name, table,
                             m->chains ? fmt::format("chain {} of {}", m->chain, m->chains)
                                       : std::string("a single-VM ruleset"),
                             n);
      return s;
    }
    if (m->id != first_mark.id) {
      s.reason = fmt::format("chains of table {} carry marks of two rulesets (id {:016x} on chain {}, "
                             "{:016x} on chain {}): it holds parts of two loads",
                             table, first_mark.id, shown_name(first->name), m->id, name);
      return s;
    }
    if (at[m->chain].first != &c) {
      s.reason = fmt::format("chains {} and {} of table {} both carry the mark of chain {} of {}",
                             shown_name(at[m->chain].first->name), name, table, m->chain, n);
      return s;
    }
  }
  for (std::size_t k = 0; k < n; ++k)
    if (!at[k].first) {
      s.reason = fmt::format("table {} holds no chain marked as chain {} of {} (the {} chain, "
                             "type {} on the {} hook): the ruleset is not whole",
                             table, k, n, kHostChains[k].name, kHostChains[k].type,
                             hook_name(kHostChains[k].hook));
      return s;
    }
  // (First: a ruleset printed without the guard also lacks its sets.) The guard's rules are
  // the forward chain's: with --sni-guard, a ruleset printed without
  // them forwards connections on guarded ports unjudged; one printed with them, under a
  // dnsward without, holds them for a queue nobody reads.
  if (at[kHostChainForward].second.guard != e.guard) {
    s.reason = e.guard ? "the host ruleset in force was printed without --sni-guard: sandboxes' connections "
                         "on guarded ports would be forwarded unjudged (print it with `nft-rules --host "
                         "--sni-guard`)"
                       : "the host ruleset in force was printed with --sni-guard, but serve runs without "
                         "it: sandboxes' connections on guarded ports wait for a verdict that never comes";
    return s;
  }
  // An older `nft-rules --host --sni-guard` printed four chains: its forward chain read
  // dnsward's verdicts where it queued them (NF_REPEAT). This dnsward's verdicts go on to
  // the chains after the queue, and only guard_forward, before it, clears forged marks.
  if (n != (e.guard ? kHostGuardChainCount : kHostChainCount)) {
    s.reason = e.guard ? fmt::format("the host ruleset in force has {} chains where `nft-rules --host --sni-guard` "
                                     "prints {}: it was printed by an older nft-rules, whose forward chain reads "
                                     "dnsward's verdict where it queued (NF_REPEAT); with this dnsward's verdicts "
                                     "rejected connections would not be reset (print it again)",
                                     n, kHostGuardChainCount)
                       : fmt::format("the host ruleset in force has {} chains where `nft-rules --host` prints {}",
                                     n, kHostChainCount);
    return s;
  }
  // The vouched sets, keyed by (guest . destination), and the sandboxes' sets, keyed by
  // (interface . guest address). An interval flag on either makes one element a range: a
  // vouched pair would open every destination above it, a registered pair every interface
  // and source address between two registrations.
  struct Expected {
    const SetSeen* set;
    const std::string* name;
    uint32_t type, len, flags;
    const char* why;
  };
  std::vector<Expected> sets = {
      {&t.set4, &e.set4, kKeyTypeV4V4, kKeyLenV4V4, NFT_SET_TIMEOUT, "flags timeout alone"},
      {&t.set6, &e.set6, kKeyTypeV6V6, kKeyLenV6V6, NFT_SET_TIMEOUT, "flags timeout alone"},
      {&t.sbx4, &e.sbx4, kKeyTypeIfV4, kKeyLenIfV4, 0, "no flag at all"},
      {&t.sbx6, &e.sbx6, kKeyTypeIfV6, kKeyLenIfV6, 0, "no flag at all"},
  };
  // With the guard, ports= elements (guest . destination . protocol . port): an interval
  // would open a range of ports, guests and destinations.
  if (!e.ports4.empty()) {
    sets.push_back({&t.ports4, &e.ports4, kKeyTypeV4V4Port, kKeyLenV4V4Port, NFT_SET_TIMEOUT, "flags timeout alone"});
    sets.push_back({&t.ports6, &e.ports6, kKeyTypeV6V6Port, kKeyLenV6V6Port, NFT_SET_TIMEOUT, "flags timeout alone"});
  }
  for (const auto& x : sets) {
    if (!x.set->exists) {
      s.reason = fmt::format("set {} of table {} does not exist", *x.name, table);
      return s;
    }
    if (x.set->key_type != x.type || x.set->key_len != x.len) {
      s.reason = fmt::format("set {} of table {} is of {} (key length {}), not {} (key length {})",
                             *x.name, table, key_type_name(x.set->key_type), x.set->key_len,
                             key_type_name(x.type), x.len);
      return s;
    }
    if (x.set->flags != x.flags) {
      s.reason = fmt::format("set {} of table {} has flags {} where dnsward needs {} (an interval "
                             "set turns each element into a range)",
                             *x.name, table, set_flags_text(x.set->flags), x.why);
      return s;
    }
  }
  for (std::size_t k = 0; k < n; ++k)
    if (auto why = judge_placed_chain(*at[k].first, at[k].second, kHostChains[k], e.guard); !why.empty()) {
      s.reason = std::move(why);
      return s;
    }
  // What makes it host enforcement: forward accepts only vouched (guest . destination)
  // pairs, and prerouting drops a source that is not its interface's registered guest (an
  // inverted lookup: a plain one would drop the registered guests instead).
  const ChainSeen& forward = *at[kHostChainForward].first;
  for (const std::string* set : {&e.set4, &e.set6, &e.ports4, &e.ports6})
    if (!set->empty() && !chain_looks_up(forward, *set, false)) {
      s.reason = fmt::format("no rule of chain {} looks up set {}: the pairs dnsward vouches for are "
                             "not what the host forwards",
                             shown_name(forward.name), *set);
      return s;
    }
  const ChainSeen& pre = *at[kHostChainPrerouting].first;
  for (const std::string* set : {&e.sbx4, &e.sbx6})
    if (!chain_looks_up(pre, *set, true)) {
      s.reason = fmt::format("no rule of chain {} drops sources missing from set {} (`!= @{}`): a "
                             "sandbox could send from another's address",
                             shown_name(pre.name), *set, *set);
      return s;
    }
  s.state = RulesetStatus::State::InForce;
  return s;
}

}  // namespace dnsward
