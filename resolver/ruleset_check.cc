#include "dnsward/ruleset_check.hpp"

#include <linux/netfilter.h>

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cstring>

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

/// Why a marked chain is not the ruleset in force, or "" if it is.
std::string judge_chain(const ChainSeen& c, const ChainMark& mark, const RulesetExpectation& e) {
  // A regular chain is reached only by a jump from a base chain: its rules see no packet of
  // their own, however exactly they match.
  if (!c.base) return fmt::format("chain {} is not a base chain (no hook): its rules see no packet", c.name);
  if (c.type != "filter") return fmt::format("chain {} is of type {}, not filter", c.name, c.type);
  if (c.hook != NF_INET_LOCAL_OUT)
    return fmt::format("chain {} is on the {} hook, not output", c.name, hook_name(c.hook));
  if (c.policy != NF_DROP)
    return fmt::format("chain {} has policy {}, not drop", c.name, c.policy == NF_ACCEPT ? "accept" : "other");
  // Exactly the marked rules, in their order: a rule inserted before the final reject (an
  // `accept`, say) opens what the ruleset closes, and one deleted may have been a lookup.
  const std::size_t common = std::min(c.rules.size(), mark.rules);
  for (std::size_t i = 0; i < common; ++i) {
    const RuleSeen& r = c.rules[i];
    const auto m = parse_rule_comment(r.comment);
    if (!m || m->id != mark.id || m->index != i || m->rules != mark.rules)
      return fmt::format("rule {} of chain {} (handle {}, {}) is not the rule `nft-rules` printed "
                         "there: a rule was inserted, deleted, moved or replaced",
                         i, c.name, r.handle,
                         r.comment.empty() ? std::string("no comment") : "comment \"" + r.comment + "\"");
  }
  if (c.rules.size() != mark.rules)
    return fmt::format("chain {} holds {} rules where its comment declares {}", c.name,
                       c.rules.size(), mark.rules);
  auto looks_up = [&](const std::string& set) {
    for (const RuleSeen& r : c.rules)
      for (const auto& l : r.lookups)
        if (l == set) return true;
    return false;
  };
  for (const auto& [need, set] : {std::pair{e.need4, &e.set4}, std::pair{e.need6, &e.set6}})
    if (need && !looks_up(*set))
      return fmt::format("no rule of chain {} looks up set {}: the addresses dnsward vouches for "
                         "are not what the chain lets through",
                         c.name, *set);
  return "";
}

}  // namespace

std::string ruleset_chain_comment(uint64_t id, std::size_t rules) {
  return fmt::format("{}{:016x} rules={}", kChainPrefix, id, rules);
}

std::string ruleset_rule_comment(uint64_t id, std::size_t i, std::size_t n) {
  return fmt::format("{}{}/{} id={:016x}", kRulePrefix, i, n, id);
}

std::optional<ChainMark> parse_chain_comment(std::string_view s) {
  ChainMark m;
  if (!take(s, kChainPrefix) || !take_id(s, m.id) || !take(s, " rules=") || !take_number(s, m.rules) ||
      !s.empty())
    return std::nullopt;
  return m;
}

std::optional<RuleMark> parse_rule_comment(std::string_view s) {
  RuleMark m;
  if (!take(s, kRulePrefix) || !take_number(s, m.index) || !take(s, "/") || !take_number(s, m.rules) ||
      !take(s, " id=") || !take_id(s, m.id) || !s.empty() || m.index >= m.rules)
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

RulesetStatus judge_ruleset(const TableSeen& t, const RulesetExpectation& e) {
  RulesetStatus s;
  s.state = RulesetStatus::State::NotInForce;
  const std::string table = e.family + " " + e.table;
  if (!t.exists) {
    s.reason = fmt::format("table {} does not exist", table);
    return s;
  }
  // Marked chains, base chains first: when none is in force, the reason given is that of
  // the one closest to it.
  std::vector<std::pair<const ChainSeen*, ChainMark>> marked;
  for (const ChainSeen& c : t.chains)
    if (const auto m = parse_chain_comment(c.comment)) marked.emplace_back(&c, *m);
  std::stable_partition(marked.begin(), marked.end(), [](const auto& p) { return p.first->base; });
  if (marked.empty()) {
    std::string names;
    for (std::size_t i = 0; i < t.chains.size() && i < 5; ++i)
      names += (names.empty() ? "" : ", ") + t.chains[i].name;
    if (t.chains.size() > 5) names += ", ...";
    s.reason = fmt::format("no chain of table {} carries the comment `dnsward nft-rules` prints "
                           "({}): its ruleset is not loaded (did `nft -f` of it fail?)",
                           table, names.empty() ? "the table has no chain" : "its chains: " + names);
    return s;
  }
  std::string first_reason;
  for (const auto& [c, mark] : marked) {
    std::string why = t.dormant ? fmt::format("table {} is dormant (flags dormant): none of its "
                                              "chains sees a packet", table)
                                : judge_chain(*c, mark, e);
    if (why.empty()) {
      s.state = RulesetStatus::State::InForce;
      s.reason.clear();
      s.id = fmt::format("{:016x}", mark.id);
      s.chain = c->name;
      s.rules = mark.rules;
      return s;
    }
    if (first_reason.empty()) {
      first_reason = std::move(why);
      s.id = fmt::format("{:016x}", mark.id);
      s.chain = c->name;
      s.rules = mark.rules;
    }
  }
  s.reason = first_reason;
  return s;
}

}  // namespace dnsward
