// `dnsward nft-rules --host`, the host's ruleset, and judge_host_ruleset, which tells from
// the table the kernel holds whether that ruleset is in force. The judge is fed the shape
// of the very text the renderer prints (its chains, marks and set lookups, read back from
// the text as the kernel would hold them), then that shape with one thing changed. So is
// judge_ruleset with the in-guest ruleset of --sni-guard, whose four chains are marked with
// their places as the host's are.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <sys/socket.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "dnsward/answer.hpp"
#include "dnsward/config.hpp"
#include "dnsward/nft_rules.hpp"
#include "dnsward/ruleset_check.hpp"

using namespace dnsward;

namespace {

/// The config nft-rules parses from args (no resolv.conf: the host ruleset names no upstream).
ServeConfig host_config(std::vector<std::string> args) {
  const auto r = parse_nft_rules(args, "/nonexistent/resolv.conf");
  REQUIRE_MESSAGE(r.config, r.error);
  return *r.config;
}

const std::vector<std::string> kListen = {"--host", "--listen", "0.0.0.0:5353", "--listen", "[::]:5353"};

std::vector<std::string> with(std::vector<std::string> more) {
  std::vector<std::string> a = kListen;
  a.insert(a.end(), more.begin(), more.end());
  return a;
}

std::string host_text(std::vector<std::string> more = {}) { return render_nft_rules(host_config(with(std::move(more)))); }

std::string trimmed(const std::string& l) {
  const auto first = l.find_first_not_of('\t');
  return first == std::string::npos ? "" : l.substr(first);
}

/// A chain of the printed text: its name, its `type` line, its comment, and its rules
/// (each as printed: body, and the mark after ` comment "`).
struct PrintedChain {
  std::string name, type_line, comment;
  std::vector<std::pair<std::string, std::string>> rules;
};

std::vector<PrintedChain> chains_of(const std::string& text) {
  std::vector<PrintedChain> out;
  std::istringstream in(text);
  PrintedChain* c = nullptr;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("\tchain ", 0) == 0) {
      out.push_back({});
      c = &out.back();
      c->name = line.substr(7, line.find(' ', 7) - 7);
      continue;
    }
    if (!c) continue;
    if (line == "\t}") {
      c = nullptr;
      continue;
    }
    const std::string l = trimmed(line);
    if (l.empty() || l[0] == '#') continue;
    if (l.rfind("type ", 0) == 0) {
      c->type_line = l;
    } else if (l.rfind("comment \"", 0) == 0) {
      c->comment = l.substr(9, l.size() - 10);
    } else {
      const auto at = l.rfind(" comment \"");
      REQUIRE_MESSAGE(at != std::string::npos, l);
      c->rules.emplace_back(l.substr(0, at), l.substr(at + 10, l.size() - at - 11));
    }
  }
  return out;
}

/// The table as the kernel holds it once the text is loaded: chains with their hooks and
/// types, comments and set lookups (`@set`, inverted after `!=`), and the sets as measured.
TableSeen seen_from(const std::string& text) {
  TableSeen t;
  t.exists = true;
  t.set4 = {true, 0x10, kKeyTypeV4V4, kKeyLenV4V4};
  t.set6 = {true, 0x10, kKeyTypeV6V6, kKeyLenV6V6};
  t.sbx4 = {true, 0, kKeyTypeIfV4, kKeyLenIfV4};
  t.sbx6 = {true, 0, kKeyTypeIfV6, kKeyLenIfV6};
  const std::map<std::string, uint32_t> hooks = {{"prerouting", 0}, {"input", 1}, {"forward", 2}, {"output", 3}};
  uint64_t handle = 1;
  for (const PrintedChain& p : chains_of(text)) {
    ChainSeen c;
    c.name = p.name;
    c.comment = p.comment;
    std::istringstream words(p.type_line);
    std::string type_word, type, hook_word, hook;
    words >> type_word >> type >> hook_word >> hook;
    c.base = hook_word == "hook";
    c.type = type;
    c.hook = hooks.at(hook);
    c.policy = p.type_line.find("policy drop;") != std::string::npos ? 0 : 1;
    // The priority as nft computes it: a standard name, maybe with an offset ("mangle - 25").
    if (const auto at = p.type_line.find("priority "); at != std::string::npos) {
      const std::map<std::string, int32_t> names = {{"raw", -300}, {"mangle", -150}, {"dstnat", -100}, {"filter", 0}};
      std::istringstream prio(p.type_line.substr(at + 9, p.type_line.find(';', at) - at - 9));
      std::string name, op;
      int32_t offset = 0;
      prio >> name >> op >> offset;
      c.priority = names.at(name) + (op == "-" ? -offset : op == "+" ? offset : 0);
    }
    for (const auto& [body, comment] : p.rules) {
      RuleSeen r;
      r.handle = handle++;
      r.comment = comment;
      for (auto at = body.find('@'); at != std::string::npos; at = body.find('@', at + 1)) {
        const std::string set = body.substr(at + 1, body.find(' ', at) - at - 1);
        const bool negated = at >= 3 && body.compare(at - 3, 3, "!= ") == 0;
        (negated ? r.negated_lookups : r.lookups).push_back(set);
      }
      c.rules.push_back(r);
    }
    t.chains.push_back(c);
  }
  return t;
}

HostRulesetExpectation expectation() {
  return {"dnsward", "allowed4", "allowed6", kSandboxSet4, kSandboxSet6};
}

/// The judge's verdict on the rendered ruleset's shape after change; must be not in force,
/// for a reason containing says.
void check_not_in_force(const std::string& what, const std::function<void(TableSeen&)>& change, const std::string& says) {
  CAPTURE(what);
  TableSeen t = seen_from(host_text());
  REQUIRE(judge_host_ruleset(t, expectation()).in_force());
  change(t);
  const RulesetStatus s = judge_host_ruleset(t, expectation());
  CHECK(s.state == RulesetStatus::State::NotInForce);
  CHECK_MESSAGE(s.reason.find(says) != std::string::npos, s.reason);
}

}  // namespace

TEST_CASE("host ruleset: four chains in kHostChains' order, each on its hook, every rule marked with its place and one id") {
  const std::string text = host_text({"--allow", "192.0.2.0/24"});
  const auto chains = chains_of(text);
  REQUIRE(chains.size() == kHostChainCount);
  const std::map<uint32_t, std::string> hook_names = {{0, "prerouting"}, {1, "input"}, {2, "forward"}};
  std::optional<uint64_t> id;
  for (std::size_t k = 0; k < kHostChainCount; ++k) {
    const PrintedChain& c = chains[k];
    CAPTURE(c.name);
    CHECK(c.name == kHostChains[k].name);
    CHECK(c.type_line == fmt::format("type {} hook {} priority {}; policy accept;", kHostChains[k].type,
                                     hook_names.at(kHostChains[k].hook), kHostChains[k].priority));
    const auto mark = parse_chain_comment(c.comment);
    REQUIRE_MESSAGE(mark, c.comment);
    CHECK(mark->chain == k);
    CHECK(mark->chains == kHostChainCount);
    CHECK(mark->rules == c.rules.size());
    if (!id) id = mark->id;
    CHECK(mark->id == *id);
    for (std::size_t i = 0; i < c.rules.size(); ++i) {
      const auto m = parse_rule_comment(c.rules[i].second);
      REQUIRE_MESSAGE(m, c.rules[i].second);
      CHECK(m->index == i);
      CHECK(m->rules == c.rules.size());
      CHECK(m->chain == k);
      CHECK(m->chains == kHostChainCount);
      CHECK(m->id == *id);
    }
    // Every chain first lets the host's own traffic go, untouched.
    REQUIRE(!c.rules.empty());
    CHECK(c.rules[0].first == "iifname != \"tap*\" return");
  }
  // The id is FNV-1a over the whole table as printed, sets included, notes and marks left out.
  std::vector<std::string> hashed;
  std::istringstream in(text.substr(text.find("table inet dnsward {")));
  for (std::string l; std::getline(in, l);) {
    l = trimmed(l);
    if (l.empty() || l[0] == '#' || l.rfind("comment \"", 0) == 0) continue;
    const auto at = l.rfind(" comment \"dnsward ");
    hashed.push_back(at == std::string::npos ? l : l.substr(0, at));
  }
  CHECK(std::find(hashed.begin(), hashed.end(), "type ifname . ipv4_addr") != hashed.end());
  CHECK(hashed.back() == "}");
  CHECK(ruleset_id(hashed) == *id);
}

TEST_CASE("host ruleset: the id is stable and changes with every option the text depends on") {
  auto id_of = [](std::vector<std::string> more) {
    return parse_chain_comment(chains_of(host_text(std::move(more))).at(0).comment).value().id;
  };
  const uint64_t id = id_of({});
  CHECK(id_of({}) == id);
  CHECK(id_of({"--sandbox-ifaces", "vm*"}) != id);
  CHECK(id_of({"--host-mark", "8"}) != id);
  CHECK(id_of({"--host-set-size", "2048"}) != id);
  CHECK(id_of({"--allow", "192.0.2.0/24"}) != id);
  CHECK(id_of({"--nft-set4", "v4"}) != id);
  CHECK(id_of({"--nft-table", "hostfw"}) != id);
  const auto other_port = render_nft_rules(host_config({"--host", "--listen", "0.0.0.0:53"}));
  CHECK(parse_chain_comment(chains_of(other_port).at(0).comment).value().id != id);
}

TEST_CASE("host ruleset: the interface pattern, the mark bit and dnsward's ports are where they act") {
  const std::string text = host_text({"--sandbox-ifaces", "vm-*", "--host-mark", "8", "--host-set-size", "4096"});
  const auto chains = chains_of(text);
  REQUIRE(chains.size() == kHostChainCount);
  for (const auto& c : chains) CHECK(c.rules.at(0).first == "iifname != \"vm-*\" return");
  CHECK(text.find("tap*") == std::string::npos);
  CHECK(chains[kHostChainPrerouting].rules.back().first == "meta mark set meta mark or 0x00000100");
  CHECK(text.find("\t\tsize 4096\n") != std::string::npos);
  CHECK(text.find("\t\tsize 65536\n") != std::string::npos);  // the sandbox sets
  const auto& redirect = chains[kHostChainRedirect].rules;
  REQUIRE(redirect.size() == 3);
  CHECK(redirect[1].first == "meta nfproto ipv4 meta l4proto { udp, tcp } th dport 53 redirect to :5353");
  CHECK(redirect[2].first == "meta nfproto ipv6 meta l4proto { udp, tcp } th dport 53 redirect to :5353");
  CHECK(chains[kHostChainInput].rules.at(1).first == "meta l4proto { udp, tcp } th dport 5353 accept");

  // Each family's queries go to the port dnsward listens on there; input admits both.
  const auto two = chains_of(render_nft_rules(host_config({"--host", "--listen", "0.0.0.0:5300", "--listen", "[::]:5301"})));
  CHECK(two[kHostChainRedirect].rules.at(1).first == "meta nfproto ipv4 meta l4proto { udp, tcp } th dport 53 redirect to :5300");
  CHECK(two[kHostChainRedirect].rules.at(2).first == "meta nfproto ipv6 meta l4proto { udp, tcp } th dport 53 redirect to :5301");
  CHECK(two[kHostChainInput].rules.at(1).first == "meta l4proto { udp, tcp } th dport { 5300, 5301 } accept");
  // No IPv6 listener: IPv6 DNS is not redirected to a port nothing listens on (forward drops it).
  const auto v4only = chains_of(render_nft_rules(host_config({"--host", "--listen", "0.0.0.0:53"})));
  CHECK(v4only[kHostChainRedirect].rules.size() == 2);
  CHECK(v4only[kHostChainRedirect].rules.at(1).first.find("ipv4") != std::string::npos);
}

TEST_CASE("host ruleset: anti-spoofing comes first, DoT is dropped, and only vouched pairs are forwarded") {
  const auto chains = chains_of(host_text());
  std::vector<std::string> pre, fwd, in;
  for (const auto& r : chains[kHostChainPrerouting].rules) pre.push_back(r.first);
  for (const auto& r : chains[kHostChainForward].rules) fwd.push_back(r.first);
  for (const auto& r : chains[kHostChainInput].rules) in.push_back(r.first);
  const std::string lim = "limit rate 10/second burst 20 packets log prefix ";
  CHECK(pre.at(1) == "iifname . ip saddr != @sandboxes4 " + lim + "\"dnsward-host-spoof: \"");
  CHECK(pre.at(2) == "iifname . ip saddr != @sandboxes4 counter drop");
  CHECK(pre.at(5) == "iifname . ip6 saddr != @sandboxes6 " + lim + "\"dnsward-host-spoof: \"");
  CHECK(pre.at(6) == "iifname . ip6 saddr != @sandboxes6 counter drop");
  // Only link-local ND and MLD pass unregistered, and no router advertisement.
  CHECK(pre.at(3).rfind("ip6 saddr { fe80::/10, :: } icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, "
                        "nd-router-solicit } ip6 hoplimit 255 accept", 0) == 0);
  CHECK(pre.at(4).find("ip6 daddr ff02::/16 ip6 hoplimit 1 accept") != std::string::npos);
  for (const auto& r : pre) CHECK(r.find("router-advert") == std::string::npos);
  CHECK(fwd.at(1) == "ip6 saddr { fe80::/10, :: } counter drop");
  CHECK(fwd.at(2) == "meta l4proto { udp, tcp } th dport { 53, 853 } " + lim + "\"dnsward-host-dns-drop: \"");
  CHECK(fwd.at(3) == "meta l4proto { udp, tcp } th dport { 53, 853 } counter drop");
  const auto at = [&](const std::string& r) { return std::find(fwd.begin(), fwd.end(), r) - fwd.begin(); };
  const auto est = at("ct direction original ct state established,related accept");
  const auto v4 = at("ip saddr . ip daddr @allowed4 accept");
  const auto v6 = at("ip6 saddr . ip6 daddr @allowed6 accept");
  CHECK(est < v4);
  CHECK(v4 < v6);
  CHECK(v6 == std::ptrdiff_t(fwd.size()) - 5);
  // Never reachable, vouched or not: metadata, loopback, link-local, multicast. Private
  // networks are not here: only a vouched pair (private=yes) opens them.
  CHECK(fwd.at(5).rfind("ip daddr { 0.0.0.0/8, 127.0.0.0/8, 169.254.0.0/16, 224.0.0.0/3 } counter reject", 0) == 0);
  CHECK(fwd.at(7).rfind("ip6 daddr { fe80::/10, ff00::/8,", 0) == 0);
  CHECK(fwd.at(7).find("10.0.0.0") == std::string::npos);
  CHECK(fwd.at(7).find("::ffff:169.254.0.0/112") != std::string::npos);
  CHECK(fwd.at(4) == fwd.at(5).substr(0, fwd.at(5).find(" counter ")) + " " + lim + "\"dnsward-host-drop: \"");
  CHECK(fwd[fwd.size() - 4] == "meta l4proto tcp " + lim + "\"dnsward-host-drop: \"");
  CHECK(fwd[fwd.size() - 3] == "meta l4proto tcp counter reject with tcp reset");
  CHECK(fwd[fwd.size() - 2] == lim + "\"dnsward-host-drop: \"");
  CHECK(fwd.back() == "counter reject with icmpx type admin-prohibited");
  CHECK(in.back() == "counter reject with icmpx type admin-prohibited");
  CHECK(in[in.size() - 2] == lim + "\"dnsward-host-input: \"");
  // --allow CIDRs come before the never-reachable reject: an operator's own choice.
  const auto allowed = chains_of(host_text({"--allow", "10.1.0.0/16", "--allow", "2001:db8::/32"}))[kHostChainForward].rules;
  CHECK(allowed.at(4).first == "ip daddr 10.1.0.0/16 accept");
  CHECK(allowed.at(5).first == "ip6 daddr 2001:db8::/32 accept");
  CHECK(allowed.at(7).first.rfind("ip daddr { 0.0.0.0/8", 0) == 0);
}

TEST_CASE("host ruleset: a logged verdict is a rate-limited log rule and then the verdict, never a limited verdict") {
  // `limit` is a match: in one rule with the verdict, a packet over the limit would skip the
  // drop and fall through to the next rule (in prerouting: to the mark, and in).
  for (const auto& ch : chains_of(host_text({"--sni-guard"})))
    for (std::size_t i = 0; i < ch.rules.size(); ++i) {
      const std::string& r = ch.rules[i].first;
      if (r.find("limit rate") == std::string::npos) continue;
      CHECK(r.find(" drop") == std::string::npos);
      CHECK(r.find(" reject") == std::string::npos);
      CHECK(r.find(" accept") == std::string::npos);
      REQUIRE(i + 1 < ch.rules.size());
      const std::string match = r.substr(0, r.find("limit rate"));
      CHECK(ch.rules[i + 1].first.rfind(match + "counter ", 0) == 0);
    }
}

TEST_CASE("host ruleset: the rejected destinations are exactly the special-purpose addresses dnsward never vouches for") {
  struct Cidr {
    IpAddr net;
    int len;
  };
  auto parse = [](const std::string& s) {
    Cidr c{};
    const auto slash = s.find('/');
    REQUIRE(IpAddr::parse(s.substr(0, slash), c.net));
    c.len = std::stoi(s.substr(slash + 1));
    return c;
  };
  auto contains = [](const Cidr& c, const IpAddr& a) {
    if (a.family != c.net.family) return false;
    for (int bit = 0; bit < c.len; ++bit) {
      const int mask = 0x80 >> (bit % 8);
      if ((a.bytes[bit / 8] & mask) != (c.net.bytes[bit / 8] & mask)) return false;
    }
    return true;
  };
  for (const int af : {AF_INET, AF_INET6}) {
    std::vector<Cidr> cidrs;
    for (const auto& s : special_destinations(af)) cidrs.push_back(parse(s));
    REQUIRE(cidrs.size() > 5);
    const std::size_t n = af == AF_INET ? 4 : 16;
    // Probes: each range's first and last address and their neighbours, and pseudo-random
    // addresses, also inside the prefixes that embed IPv4 addresses.
    std::vector<IpAddr> probes;
    for (const Cidr& c : cidrs) {
      IpAddr first = c.net, last = c.net;
      for (std::size_t bit = std::size_t(c.len); bit < n * 8; ++bit) last.bytes[bit / 8] |= uint8_t(0x80 >> (bit % 8));
      IpAddr before = first, after = last;
      for (std::size_t i = n; i-- > 0;)
        if (before.bytes[i]-- != 0) break;
      for (std::size_t i = n; i-- > 0;)
        if (++after.bytes[i] != 0) break;
      probes.insert(probes.end(), {first, last, before, after});
    }
    uint64_t x = 0x9e3779b97f4a7c15ull;
    const std::vector<std::vector<uint8_t>> prefixes = {
        {}, {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff}, {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
        {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0}, {0x20, 0x02}, {0x20, 0x01, 0x0d, 0xb8}};
    for (int i = 0; i < 20000; ++i) {
      IpAddr a;
      a.family = uint8_t(af);
      for (std::size_t b = 0; b < n; ++b) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        a.bytes[b] = uint8_t(x);
      }
      if (af == AF_INET6) {
        const auto& p = prefixes[std::size_t(i) % prefixes.size()];
        std::copy(p.begin(), p.end(), a.bytes);
      }
      probes.push_back(a);
    }
    for (const IpAddr& a : probes) {
      const bool listed = std::any_of(cidrs.begin(), cidrs.end(), [&](const Cidr& c) { return contains(c, a); });
      CAPTURE(a.text());
      CHECK(listed == is_special_purpose(a));
    }
  }
}

TEST_CASE("host ruleset: refused with --nft-family other than inet and with a listen address that is not a wildcard") {
  for (const char* family : {"ip", "ip6"}) {
    const std::vector<std::string> args = {"--host", "--listen", std::string(family) == "ip" ? "0.0.0.0:5353" : "[::]:5353",
                                           "--nft-family", family};
    const auto r = parse_nft_rules(args, "/nonexistent/resolv.conf");
    CHECK_FALSE(r.config);
    CHECK(r.error == fmt::format("--host needs --nft-family inet (the host ruleset checks IPv4 and IPv6 "
                                 "in one table), not {}", family));
  }
  const auto r = parse_nft_rules({"--host", "--listen", "127.0.0.1:53"}, "/nonexistent/resolv.conf");
  CHECK_FALSE(r.config);
  CHECK(r.error.rfind("--host listens on wildcard addresses", 0) == 0);
  // The default --listen (127.0.0.1:53) is not one either.
  CHECK_FALSE(parse_nft_rules({"--host"}, "/nonexistent/resolv.conf").config);
}

TEST_CASE("host ruleset: without --host nft-rules prints the single-VM ruleset, unmarked by chain places") {
  ServeConfig c = host_config(with({}));
  CHECK(render_nft_rules(c) == render_host_rules(c));
  const auto single = parse_nft_rules({"--upstream", "192.0.2.53"}, "/nonexistent/resolv.conf");
  REQUIRE_MESSAGE(single.config, single.error);
  const std::string text = render_nft_rules(*single.config);
  CHECK(text.find("\tchain output {") != std::string::npos);
  CHECK(text.find(" chain=") == std::string::npos);
  CHECK(text.find("sandboxes4") == std::string::npos);
}

TEST_CASE("host marks are read strictly, and a single-VM mark is not a host one") {
  const auto m = parse_chain_comment(ruleset_chain_comment(0xfeedull, 6, 3, 4));
  REQUIRE(m);
  CHECK(m->id == 0xfeedull);
  CHECK(m->rules == 6);
  CHECK(m->chain == 3);
  CHECK(m->chains == 4);
  const auto r = parse_rule_comment(ruleset_rule_comment(0xfeedull, 5, 6, 3, 4));
  REQUIRE(r);
  CHECK(r->index == 5);
  CHECK(r->chain == 3);
  CHECK(r->chains == 4);
  CHECK(parse_chain_comment(ruleset_chain_comment(0xfeedull, 6)).value().chains == 0);
  CHECK(parse_rule_comment(ruleset_rule_comment(0xfeedull, 5, 6)).value().chains == 0);
  for (const char* bad : {"dnsward ruleset id=000000000000feed rules=6 chain=4/4", "dnsward ruleset id=000000000000feed rules=6 chain=1/",
                          "dnsward ruleset id=000000000000feed rules=6 chain=1/4 ", "dnsward ruleset id=000000000000feed rules=6  chain=1/4"}) {
    const std::string comment = bad;
    CAPTURE(comment);
    CHECK_FALSE(parse_chain_comment(bad));
  }
  for (const char* bad : {"dnsward 5/6 id=000000000000feed chain=4/4", "dnsward 5/6 id=000000000000feed chain=",
                          "dnsward 5/6 id=000000000000feed chain=1/4x"}) {
    const std::string comment = bad;
    CAPTURE(comment);
    CHECK_FALSE(parse_rule_comment(bad));
  }
}

TEST_CASE("host judge: the rendered ruleset's shape is in force, and names its id, chains and rule count") {
  const std::string text = host_text();
  const TableSeen t = seen_from(text);
  const RulesetStatus s = judge_host_ruleset(t, expectation());
  REQUIRE_MESSAGE(s.in_force(), s.reason);
  const auto mark = parse_chain_comment(chains_of(text).at(0).comment).value();
  CHECK(s.id == fmt::format("{:016x}", mark.id));
  CHECK(s.chain == "prerouting,dns_redirect,input,forward");
  std::size_t rules = 0;
  for (const auto& c : t.chains) rules += c.rules.size();
  CHECK(s.rules == rules);
  // The constants are nft's concatenation arithmetic (6 bits a field, 4-byte alignment).
  CHECK(kKeyTypeV4V4 == 455);
  CHECK(kKeyTypeV6V6 == 520);
  CHECK(kKeyTypeIfV4 == 2631);
  CHECK(kKeyTypeIfV6 == 2632);
  CHECK(kKeyLenIfV4 == 16 + 4);
  // The single-VM judge does not take the host table for its own.
  RulesetExpectation single;
  single.family = "inet";
  single.table = "dnsward";
  single.set4 = "allowed4";
  single.set6 = "allowed6";
  CHECK_FALSE(judge_ruleset(t, single).in_force());
  TableSeen forward_only = t;
  forward_only.chains = {t.chains[kHostChainForward]};
  forward_only.set4 = {true, 0x10, kKeyTypeV4, kKeyLenV4};
  forward_only.set6 = {true, 0x10, kKeyTypeV6, kKeyLenV6};
  const RulesetStatus f = judge_ruleset(forward_only, single);
  CHECK_FALSE(f.in_force());
  CHECK_MESSAGE(f.reason.find("carries the mark of a host ruleset") != std::string::npos, f.reason);
}

TEST_CASE("host judge: any one deviation from the rendered ruleset takes it out of force") {
  check_not_in_force("table gone", [](TableSeen& t) { t = TableSeen{}; }, "table inet dnsward does not exist");
  check_not_in_force("dormant", [](TableSeen& t) { t.flags = 0x1; }, "is dormant");
  check_not_in_force("owner", [](TableSeen& t) { t.flags = 0x2; }, "is owned by the process");
  check_not_in_force("no marks", [](TableSeen& t) { for (auto& c : t.chains) c.comment.clear(); },
                     "no chain of table inet dnsward carries the comment `dnsward nft-rules --host` prints");
  // Chains: one missing, one more (unmarked, or a second copy of a place), marks mixed.
  check_not_in_force("forward missing", [](TableSeen& t) { t.chains.pop_back(); },
                     "holds no chain marked as chain 3 of 4 (the forward chain");
  check_not_in_force("prerouting missing", [](TableSeen& t) { t.chains.erase(t.chains.begin()); },
                     "holds no chain marked as chain 0 of 4 (the prerouting chain");
  check_not_in_force("extra chain", [](TableSeen& t) {
    ChainSeen c;
    c.name = "postrouting";
    c.base = true;
    c.hook = 4;
    c.type = "nat";
    t.chains.push_back(c);
  }, "holds chain postrouting, which `nft-rules --host` does not print");
  check_not_in_force("second copy of forward", [](TableSeen& t) {
    ChainSeen c = t.chains[kHostChainForward];
    c.name = "forward2";
    t.chains.push_back(c);
  }, "chains forward and forward2 of table inet dnsward both carry the mark of chain 3 of 4");
  check_not_in_force("two ids", [](TableSeen& t) {
    ChainSeen& c = t.chains[kHostChainInput];
    const auto m = parse_chain_comment(c.comment).value();
    c.comment = ruleset_chain_comment(m.id ^ 1, m.rules, m.chain, m.chains);
  }, "carry marks of two rulesets");
  check_not_in_force("single-VM mark", [](TableSeen& t) {
    ChainSeen& c = t.chains[kHostChainInput];
    const auto m = parse_chain_comment(c.comment).value();
    c.comment = ruleset_chain_comment(m.id, m.rules);
  }, "carries the mark of a single-VM ruleset");
  // A chain unhooked, on another hook, of another type.
  check_not_in_force("forward unhooked", [](TableSeen& t) { t.chains[kHostChainForward].base = false; },
                     "chain forward (chain 3 of 4) is not a base chain");
  check_not_in_force("forward on input", [](TableSeen& t) { t.chains[kHostChainForward].hook = 1; },
                     "chain forward (chain 3 of 4) is on the input hook, not forward");
  check_not_in_force("prerouting on input", [](TableSeen& t) { t.chains[kHostChainPrerouting].hook = 1; },
                     "is on the input hook, not prerouting");
  check_not_in_force("redirect as filter", [](TableSeen& t) { t.chains[kHostChainRedirect].type = "filter"; },
                     "chain dns_redirect (chain 1 of 4) is of type filter, not nat");
  // Rules: one more, one fewer, one unmarked, one moved from another chain, one unread.
  check_not_in_force("rule appended", [](TableSeen& t) {
    RuleSeen r;
    r.handle = 999;
    t.chains[kHostChainForward].rules.push_back(r);
  }, "chain forward holds 16 rules where its comment declares 15");
  check_not_in_force("rule inserted", [](TableSeen& t) {
    RuleSeen r;
    r.handle = 999;
    auto& rules = t.chains[kHostChainForward].rules;
    rules.insert(rules.begin(), r);
  }, "rule 0 of chain forward (handle 999, no comment) is not the rule `nft-rules` printed there");
  check_not_in_force("rule deleted", [](TableSeen& t) {
    auto& rules = t.chains[kHostChainInput].rules;
    rules.erase(rules.begin() + 2);
  }, "rule 2 of chain input");
  check_not_in_force("last rule deleted", [](TableSeen& t) { t.chains[kHostChainInput].rules.pop_back(); },
                     "chain input holds 8 rules where its comment declares 9");
  check_not_in_force("rule unmarked", [](TableSeen& t) { t.chains[kHostChainRedirect].rules[1].comment = "my rule"; },
                     "rule 1 of chain dns_redirect (handle");
  check_not_in_force("rule from another chain", [](TableSeen& t) {
    // Rule 1 of input carries input's place; put in forward's slot 1 with forward's count.
    const auto m = parse_rule_comment(t.chains[kHostChainForward].rules[1].comment).value();
    t.chains[kHostChainForward].rules[1].comment = ruleset_rule_comment(m.id, 1, m.rules, kHostChainInput, 4);
  }, "rule 1 of chain forward");
  check_not_in_force("rule single-VM mark", [](TableSeen& t) {
    const auto m = parse_rule_comment(t.chains[kHostChainForward].rules[1].comment).value();
    t.chains[kHostChainForward].rules[1].comment = ruleset_rule_comment(m.id, 1, m.rules);
  }, "rule 1 of chain forward");
  check_not_in_force("unread rules", [](TableSeen& t) { t.chains[kHostChainPrerouting].unread_rules = 1; },
                     "chain prerouting holds 9 rules where its comment declares 8");
  // Sets: the kernel's key type and length, the flags.
  check_not_in_force("set4 plain ipv4", [](TableSeen& t) { t.set4 = {true, 0x10, kKeyTypeV4, kKeyLenV4}; },
                     "set allowed4 of table inet dnsward is of ipv4_addr (key length 4), not ipv4_addr . ipv4_addr (key length 8)");
  check_not_in_force("set6 key length", [](TableSeen& t) { t.set6.key_len = 16; }, "set allowed6 of table inet dnsward is of");
  check_not_in_force("sbx4 type", [](TableSeen& t) { t.sbx4.key_type = kKeyTypeV4V4; },
                     "set sandboxes4 of table inet dnsward is of ipv4_addr . ipv4_addr");
  check_not_in_force("sbx6 as v4", [](TableSeen& t) { t.sbx6 = t.sbx4; }, "set sandboxes6 of table inet dnsward is of ifname . ipv4_addr");
  check_not_in_force("sbx4 interval", [](TableSeen& t) { t.sbx4.flags = 0x4 | 0x80; },
                     "set sandboxes4 of table inet dnsward has flags interval, concat where dnsward needs no flag at all");
  check_not_in_force("sbx6 timeout", [](TableSeen& t) { t.sbx6.flags = 0x10; },
                     "set sandboxes6 of table inet dnsward has flags timeout where dnsward needs no flag at all");
  check_not_in_force("set4 interval", [](TableSeen& t) { t.set4.flags = 0x14; },
                     "set allowed4 of table inet dnsward has flags interval, timeout where dnsward needs flags timeout alone");
  check_not_in_force("set6 no timeout", [](TableSeen& t) { t.set6.flags = 0; }, "set allowed6 of table inet dnsward has flags none");
  check_not_in_force("sbx4 missing", [](TableSeen& t) { t.sbx4.exists = false; }, "set sandboxes4 of table inet dnsward does not exist");
  check_not_in_force("set6 missing", [](TableSeen& t) { t.set6.exists = false; }, "set allowed6 of table inet dnsward does not exist");
  // Lookups: the vouched sets in forward; the sandbox sets, inverted, in prerouting.
  check_not_in_force("no set4 lookup", [](TableSeen& t) {
    for (auto& r : t.chains[kHostChainForward].rules) std::erase(r.lookups, "allowed4");
  }, "no rule of chain forward looks up set allowed4");
  check_not_in_force("no set6 lookup", [](TableSeen& t) {
    for (auto& r : t.chains[kHostChainForward].rules) std::erase(r.lookups, "allowed6");
  }, "no rule of chain forward looks up set allowed6");
  check_not_in_force("set6 looked up inverted", [](TableSeen& t) {
    for (auto& r : t.chains[kHostChainForward].rules)
      if (std::erase(r.lookups, "allowed6")) r.negated_lookups.push_back("allowed6");
  }, "no rule of chain forward looks up set allowed6");
  check_not_in_force("no anti-spoofing v4", [](TableSeen& t) {
    for (auto& r : t.chains[kHostChainPrerouting].rules) std::erase(r.negated_lookups, "sandboxes4");
  }, "no rule of chain prerouting drops sources missing from set sandboxes4");
  check_not_in_force("anti-spoofing v6 not inverted", [](TableSeen& t) {
    for (auto& r : t.chains[kHostChainPrerouting].rules)
      if (std::erase(r.negated_lookups, "sandboxes6")) r.lookups.push_back("sandboxes6");
  }, "no rule of chain prerouting drops sources missing from set sandboxes6");
  check_not_in_force("anti-spoofing in forward only", [](TableSeen& t) {
    for (auto& r : t.chains[kHostChainPrerouting].rules)
      if (std::erase(r.negated_lookups, "sandboxes4")) t.chains[kHostChainForward].rules[0].negated_lookups.push_back("sandboxes4");
  }, "no rule of chain prerouting drops sources missing from set sandboxes4");
  // Other names expected: serve's --nft-set4 differs from what was loaded.
  TableSeen t = seen_from(host_text());
  HostRulesetExpectation e = expectation();
  e.set4 = "v4";
  t.set4 = {true, 0x10, kKeyTypeV4V4, kKeyLenV4V4};
  CHECK(judge_host_ruleset(t, e).reason.find("no rule of chain forward looks up set v4") != std::string::npos);
}

namespace {
/// The forward chain's rule bodies of the host ruleset printed with more.
std::vector<std::string> forward_rules(std::vector<std::string> more, std::size_t k = kHostChainForward) {
  const auto chains = chains_of(host_text(std::move(more)));
  std::vector<std::string> out;
  for (const auto& r : chains.at(k).rules) out.push_back(r.first);
  return out;
}
/// The guard_forward chain's rule bodies (with --sni-guard: the guard's rules before the queue).
std::vector<std::string> guard_forward_rules(std::vector<std::string> more) {
  return forward_rules(std::move(more), kHostChainGuard);
}
std::size_t count_with(const std::vector<std::string>& rules, const std::string& part) {
  return std::size_t(std::count_if(rules.begin(), rules.end(),
                                   [&](const std::string& r) { return r.find(part) != std::string::npos; }));
}
}  // namespace

TEST_CASE("host ruleset --sni-guard: the forward chain judges (guest . destination) pairs' first flights before any accept") {
  const std::string text = host_text({"--sni-guard"});
  const auto chains = chains_of(text);
  REQUIRE(chains.size() == kHostGuardChainCount);
  // The forward chain, and it alone, says guard=on; the ruleset's id covers the guard's rules.
  for (std::size_t k = 0; k < kHostGuardChainCount; ++k) {
    CHECK(parse_chain_comment(chains[k].comment).value().guard == (k == kHostChainForward));
    CHECK(parse_chain_comment(chains[k].comment).value().chains == kHostGuardChainCount);
  }
  CHECK(chains[kHostChainGuard].name == "guard_forward");
  CHECK(chains[kHostChainGuard].type_line == "type filter hook forward priority mangle - 25; policy accept;");
  for (const auto& c : chains_of(host_text())) CHECK_FALSE(parse_chain_comment(c.comment).value().guard);
  CHECK(parse_chain_comment(chains[0].comment).value().id !=
        parse_chain_comment(chains_of(host_text()).at(0).comment).value().id);

  const std::vector<std::string> all = forward_rules({"--sni-guard"});
  // The server's side comes first (below); the client's after the host's own traffic returned.
  // Before the queue, in guard_forward, then after it, in forward: read here as one list.
  const auto ret = std::find(all.begin(), all.end(), "iifname != \"tap*\" return");
  REQUIRE(ret != all.end());
  const std::vector<std::string> pre_all = guard_forward_rules({"--sni-guard"});
  const auto pre_ret = std::find(pre_all.begin(), pre_all.end(), "iifname != \"tap*\" return");
  REQUIRE(pre_ret != pre_all.end());
  const std::vector<std::string> post(ret, all.end()), pre(pre_ret, pre_all.end());
  std::vector<std::string> fwd = pre;
  fwd.insert(fwd.end(), post.begin() + 1, post.end());
  // What must come before the queue (and so before any verdict is read) is guard_forward's.
  for (const char* part : {"ct state invalid,untracked counter drop", "== syn ct mark & 0x00c00000 != 0 ct mark set",
                           "ct mark & 0x00c00000 == 0 ip saddr", "== syn @ih,0,8 0-255 counter drop",
                           "tcp flags urg counter drop", " queue num 53"}) {
    CAPTURE(part);
    CHECK(count_with(pre, part) >= 1);
    CHECK(count_with(post, part) == 0);
  }
  // What reads a verdict is forward's, after the queue.
  for (const char* part : {"meta mark & 0x00c00000 == 0x00400000 ct mark set",
                           "ct direction original ct mark & 0x00c00000 == 0x00800000",
                           "meta mark & 0x00c00000 != 0x00c00000"}) {
    CAPTURE(part);
    CHECK(count_with(pre_all, part) == 0);
    CHECK(count_with(post, part) >= 1);
  }
  // guard_forward's first rule clears every forwarded packet's verdict bits, before the queue.
  CHECK(pre_all.at(0) == "meta mark & 0x00e00000 != 0 counter meta mark set meta mark & 0xff1fffff");
  const std::string lim = "limit rate 10/second burst 20 packets log prefix ";
  const std::string unjudged = "ct direction original ct mark & 0x00c00000 == 0x00c00000";  // guarded, undecided
  CHECK(count_with(fwd, "tcp dport { 443, 80 } ct state invalid,untracked counter drop") == 1);
  CHECK(count_with(fwd, "tcp dport { 443, 80 } ct direction original tcp flags & (syn | ack) == syn ct mark & 0x00c00000 "
                        "!= 0 ct mark set ct mark & 0xffdfffff | 0x00c00000") == 1);
  // A connection's end marks its entry closed (the judged bit in the conntrack mark): the
  // guest's data after it is reset (a SYN cookie would open a server's connection on it).
  CHECK(count_with(pre, "tcp dport { 443, 80 } ct direction original tcp flags rst ct mark & 0x00c00000 != 0 ct mark "
                        "set ct mark | 0x00200000") == 1);
  CHECK(count_with(pre, "tcp dport { 443, 80 } ct direction original ct mark & 0x00200000 != 0 @ih,0,8 0-255 counter "
                        "reject with tcp reset") == 1);
  CHECK(count_with(fwd, "ct mark set ct mark & 0xff3fffff") == 2);  // the verdicts' only: a SYN never downgrades
  CHECK(count_with(fwd, "tcp dport { 443, 80 } ct mark & 0x00c00000 == 0 ip saddr . ip daddr @allowed4 counter drop") == 1);  // picked up mid-stream
  CHECK(count_with(fwd, "tcp dport { 443, 80 } ct mark & 0x00c00000 == 0 ip6 saddr . ip6 daddr @allowed6 counter drop") == 1);
  CHECK(count_with(fwd, "tcp dport { 443, 80 } ct direction original tcp flags & (syn | ack) == syn @ih,0,8 0-255 "
                        "counter drop") == 1);  // a Fast Open SYN, never judged
  // A SYN to a pair vouched for this guest marks its connection guarded, then and for good.
  CHECK(count_with(fwd, "tcp dport { 443, 80 } ct direction original tcp flags & (syn | ack) == syn ip saddr . ip daddr "
                        "@allowed4 ct mark set ct mark | 0x00c00000") == 1);
  CHECK(count_with(fwd, "tcp dport { 443, 80 } ct direction original tcp flags & (syn | ack) == syn ip6 saddr . ip6 daddr "
                        "@allowed6 ct mark set ct mark | 0x00c00000") == 1);
  // The client's verdicts move from the client's packets only (the server's have their own
  // rules, above), and only of TCP packets conntrack does not call related (an ICMP error
  // quoting a guarded connection moves nothing).
  CHECK(count_with(fwd, "meta mark & 0x00c00000 == 0x00400000 ct mark set ct mark & 0xff3fffff | 0x00400000") == 1);
  CHECK(count_with(fwd, "meta mark & 0x00c00000 == 0x00800000 ct mark set ct mark & 0xff3fffff | 0x00800000") == 1);
  CHECK(count_with(fwd, "meta l4proto tcp ct state != related " + unjudged + " meta mark & 0x00c00000 == 0x00400000 ct mark set") == 1);
  CHECK(count_with(fwd, "meta l4proto tcp ct state != related " + unjudged + " meta mark & 0x00c00000 == 0x00800000 ct mark set") == 1);
  // A rejected connection is reset, its log line rate-limited like the host's others.
  const std::string rejected = "tcp dport { 443, 80 } ct direction original ct mark & 0x00c00000 == 0x00800000";
  CHECK(count_with(fwd, rejected + " " + lim + "\"dnsward-sni-reject: \"") == 1);
  CHECK(count_with(fwd, rejected + " counter reject with tcp reset") == 1);
  // Queued from the guests: payload of guarded, undecided connections (the conntrack mark
  // their SYN got, not the sets, whose pair may expire meanwhile: the sixth review); a plain
  // SYN no longer (the server's SYN-ACK says where the stream starts).
  std::size_t queues = 0;
  for (const auto& r : fwd) {
    if (r.find(" queue num 53") == std::string::npos) continue;
    ++queues;
    CHECK(r == "tcp dport { 443, 80 } " + unjudged + " @ih,0,8 0-255 queue num 53");
  }
  CHECK(queues == 1);
  CHECK(count_with(pre_all, "tcp flags syn ip saddr . ip daddr @allowed4 queue") == 0);
  CHECK(pre.back().find(" queue num 53") != std::string::npos);  // the queue is guard_forward's last rule
  // The backstop (by the conntrack mark too) and QUIC, per pair.
  const std::string unwatched = " meta mark & 0x00c00000 != 0x00c00000";  // a watched flight passes
  CHECK(count_with(fwd, "tcp dport { 443, 80 } " + unjudged + unwatched + " @ih,0,8 0-255 counter drop") == 1);
  CHECK(count_with(fwd, "udp dport { 443 } ip saddr . ip daddr @allowed4 counter reject") == 1);
  CHECK(count_with(fwd, "udp dport { 443 } ip6 saddr . ip6 daddr @allowed6 counter reject") == 1);
  // A guest's urgent pointer before the verdict, a bare ACK's too (never queued).
  CHECK(count_with(fwd, "tcp dport { 443, 80 } " + unjudged + " tcp flags urg counter drop") == 1);
  // Never by destination alone: the sets are keyed (guest . destination).
  CHECK(count_with(fwd, "ip saddr . ip daddr @allowed4") + count_with(fwd, "ip6 saddr . ip6 daddr @allowed6") ==
        count_with(fwd, "daddr @allowed"));
  // Every guard rule of forward comes before the first accept (established flows, --allow,
  // vouched pairs) and after the host's own traffic went (rule 0).
  fwd = post;
  const auto first_accept = std::find_if(fwd.begin(), fwd.end(), [](const std::string& r) {
                              return r.size() >= 6 && r.compare(r.size() - 6, 6, "accept") == 0;
                            }) - fwd.begin();
  std::ptrdiff_t last_guard = 0;
  for (std::size_t i = 0; i < std::size_t(first_accept) + 1 && i < fwd.size(); ++i)
    if (fwd[i].find("tcp dport { 443, 80 }") != std::string::npos || fwd[i].find("udp dport { 443 }") != std::string::npos ||
        fwd[i].find("meta mark & 0x00c00000") != std::string::npos)
      last_guard = std::ptrdiff_t(i);
  // (The vouched pairs' accept names the guarded ports too: past the first accept.)
  std::ptrdiff_t guard_rules_after = 0;
  for (std::size_t i = std::size_t(first_accept); i < fwd.size(); ++i)
    if (fwd[i].find("ct mark") != std::string::npos || fwd[i].find("queue") != std::string::npos ||
        fwd[i].find("udp dport { 443 }") != std::string::npos)
      ++guard_rules_after;
  CHECK(guard_rules_after == 0);
  CHECK(last_guard > 0);
  CHECK(last_guard < first_accept);
  CHECK(fwd.at(0) == "iifname != \"tap*\" return");
  const auto allowed = forward_rules({"--sni-guard", "--allow", "192.0.2.0/24"});
  const auto allow_at = std::find(allowed.begin(), allowed.end(), "ip daddr 192.0.2.0/24 accept") - allowed.begin();
  CHECK(count_with({allowed.begin(), allowed.begin() + allow_at}, "udp dport { 443 } ip6 saddr") == 1);
  // Without --sni-guard: none of it.
  for (const auto& r : forward_rules({})) {
    CHECK(r.find("queue") == std::string::npos);
    CHECK(r.find("ct mark") == std::string::npos);
    CHECK(r.find("dnsward-sni-reject") == std::string::npos);
  }
  // The options reach the rules: ports, queue number, marks.
  const auto other = forward_rules({"--sni-guard", "--sni-ports", "8443", "--http-ports", "8080", "--queue-num", "7",
                                    "--guard-marks", "0x07000000"});
  const std::vector<std::string> other_args = {"--sni-guard", "--sni-ports", "8443", "--http-ports", "8080",
                                               "--queue-num", "7", "--guard-marks", "0x07000000"};
  const auto other_pre = guard_forward_rules(other_args);
  CHECK(count_with(other_pre, "tcp dport { 8443, 8080 } ct direction original ct mark & 0x06000000 == 0x06000000 "
                              "@ih,0,8 0-255 queue num 7") == 1);
  CHECK(count_with(other_pre, "tcp dport { 8443, 8080 } ct direction original tcp flags & (syn | ack) == syn ip saddr . "
                              "ip daddr @allowed4 ct mark set ct mark | 0x06000000") == 1);
  CHECK(count_with(other, "udp dport { 8443 } ip saddr . ip daddr @allowed4 counter reject") == 1);
  CHECK(count_with(other_pre, "iifname != \"tap*\" tcp sport { 8443 } ct direction reply ct mark & 0x06000000 == "
                              "0x06000000 tcp flags syn queue num 7") == 1);
  CHECK(count_with(other_pre, "iifname != \"tap*\" tcp sport { 8080 } ct direction reply ct mark & 0x06000000 == "
                              "0x06000000 queue num 7") == 1);
  CHECK(other_pre.at(0) == "meta mark & 0x07000000 != 0 counter meta mark set meta mark & 0xf8ffffff");
}

TEST_CASE("host ruleset --sni-guard: the servers' replies to vouched pairs are queued at the forward chain's head, from the uplink only") {
  const std::vector<std::string> fwd = forward_rules({"--sni-guard"});
  const std::vector<std::string> pre = guard_forward_rules({"--sni-guard"});
  // A reply comes in from the uplink: the host's own traffic returns at the rule that lets
  // everything not from a tap go, so the server's side comes before it, in both chains: the
  // queue in guard_forward (after the clear), the verdict's move in forward. Keyed (guest .
  // destination) through the conntrack mark the guest's SYN got; never from a tap.
  const std::string from = "iifname != \"tap*\" ";
  const std::string guarded = "ct mark & 0x00c00000 == 0x00c00000 ";
  const std::string reply = "ct direction reply " + guarded;
  const std::string closing = "tcp sport { 443, 80 } ct direction reply tcp flags & (fin | rst) != 0 ct mark & "
                              "0x00c00000 != 0 ct mark set ct mark | 0x00200000";
  const std::vector<std::string> pre_head = {
      "meta mark & 0x00e00000 != 0 counter meta mark set meta mark & 0xff1fffff",
      from + closing,
      from + "tcp sport { 443 } " + reply + "tcp flags syn queue num 53",
      from + "tcp sport { 443 } " + reply + "@ih,0,8 0-255 queue num 53",
      from + "tcp sport { 80 } " + reply + "queue num 53",
      "iifname != \"tap*\" return",
  };
  const std::vector<std::string> head = {
      "meta l4proto tcp ct state != related " + from + reply +
          "meta mark & 0x00c00000 == 0x00400000 ct mark set ct mark & 0xff3fffff | 0x00400000",
      "meta l4proto tcp ct state != related " + from + reply +
          "meta mark & 0x00c00000 == 0x00800000 ct mark set ct mark & 0xff3fffff | 0x00800000",
      from + "tcp sport { 443, 80 } ct direction reply ct mark & 0x00c00000 == 0x00800000 counter drop",
      "iifname != \"tap*\" return",
  };
  REQUIRE(fwd.size() > head.size());
  REQUIRE(pre.size() > pre_head.size());
  CHECK(std::vector<std::string>(fwd.begin(), fwd.begin() + std::ptrdiff_t(head.size())) == head);
  CHECK(std::vector<std::string>(pre.begin(), pre.begin() + std::ptrdiff_t(pre_head.size())) == pre_head);
  // Every chain but forward and guard_forward still lets the host's own traffic go first;
  // they right after the server's side, every rule of which matches only what does not come
  // from a tap (but guard_forward's clear, which takes every forwarded packet's bits).
  const auto chains = chains_of(host_text({"--sni-guard"}));
  for (std::size_t k = 0; k < kHostChainCount; ++k)
    if (k != kHostChainForward) CHECK(chains[k].rules.at(0).first == "iifname != \"tap*\" return");
  // The interface pattern is the option's.
  const auto vm = guard_forward_rules({"--sni-guard", "--sandbox-ifaces", "vm-*"});
  CHECK(vm.at(1) == "iifname != \"vm-*\" " + closing);
  CHECK(vm.at(2).rfind("iifname != \"vm-*\" tcp sport { 443 } ct direction reply", 0) == 0);
  CHECK(vm.at(5) == "iifname != \"vm-*\" return");
  // xt: the queue is iptables'; nft keeps the mark rules and the rejected replies' drop.
  const auto xt = forward_rules({"--sni-guard", "--queue-backend", "xt"});
  CHECK(std::vector<std::string>(xt.begin(), xt.begin() + std::ptrdiff_t(head.size())) == head);
  const auto xt_pre = guard_forward_rules({"--sni-guard", "--queue-backend", "xt"});
  CHECK(xt_pre.at(0) == pre_head.at(0));
  CHECK(xt_pre.at(1) == from + closing);
  CHECK(xt_pre.at(2) == "iifname != \"tap*\" return");
}

TEST_CASE("host ruleset --sni-guard --queue-backend xt: nft keeps the reset and backstop, the queue is iptables' on FORWARD") {
  const std::vector<std::string> fwd = forward_rules({"--sni-guard", "--queue-backend", "xt"});
  const std::vector<std::string> pre = guard_forward_rules({"--sni-guard", "--queue-backend", "xt"});
  CHECK(count_with(fwd, " queue ") == 0);
  CHECK(count_with(pre, " queue ") == 0);
  // The mark rules are nft's, after the xt queue (mangle, -150), with either backend; so are
  // the SYN's (which read the pair sets), before it.
  CHECK(count_with(fwd, "meta mark & 0x00c00000 == 0x00400000 ct mark set") == 2);  // the client's and the server's
  CHECK(count_with(fwd, "ct mark set") == 4);
  CHECK(count_with(pre, "ct mark set") == 5);  // the SYN's three, the ends' two
  CHECK(count_with(pre, "ct state invalid,untracked counter drop") == 1);
  CHECK(count_with(fwd, "counter reject with tcp reset") == 2);  // the guard's and the final one
  CHECK(count_with(fwd, "ct mark & 0x00c00000 == 0x00c00000 meta mark & 0x00c00000 != 0x00c00000 @ih,0,8 0-255 counter "
                        "drop") == 1);
  CHECK(count_with(fwd, "udp dport { 443 } ip6 saddr . ip6 daddr @allowed6 counter reject") == 1);
  CHECK(count_with(fwd, "ct direction reply ct mark & 0x00c00000 == 0x00800000 counter drop") == 1);
  CHECK(parse_chain_comment(chains_of(host_text({"--sni-guard", "--queue-backend", "xt"})).at(kHostChainForward).comment)
            .value()
            .guard);

  for (const int af : {AF_INET, AF_INET6}) {
    CAPTURE(af);
    const std::string xt = render_xt_rules(host_config(with({"--sni-guard", "--queue-backend", "xt"})), af);
    // Hooked into FORWARD for the sandboxes' interfaces (nft's `tap*` is iptables' `tap+`):
    // the client's packets in on them, the server's out to them from elsewhere.
    CHECK(xt.find("\n-I FORWARD -i tap+ -m conntrack --ctdir ORIGINAL -j DNSWARD_GUARD\n"
                  "-I FORWARD ! -i tap+ -o tap+ -m conntrack --ctdir REPLY -j DNSWARD_GUARD\nCOMMIT\n") !=
          std::string::npos);
    CHECK(xt.find("OUTPUT") == std::string::npos);
    CHECK(xt.find("INPUT") == std::string::npos);
    std::size_t nfq = 0, replies = 0;
    std::istringstream x(xt);
    for (std::string line; std::getline(x, line);) {
      if (line.find("-j NFQUEUE") == std::string::npos) continue;
      ++nfq;
      // The client's to the guarded ports, the server's from them: each on its own side.
      const bool reply = line.find("--ctdir REPLY") != std::string::npos;
      replies += reply;
      CHECK(line.find(reply ? "-m multiport --sports " : "-m multiport --dports 443,80 ") != std::string::npos);
      CHECK(line.find(reply ? "--ctdir ORIGINAL" : "--ctdir REPLY") == std::string::npos);
      CHECK(line.find("-m connmark --mark 0xc00000/0xc00000 -j NFQUEUE") != std::string::npos);
      CHECK(line.find("-m mark") == std::string::npos);
      CHECK(line.find("bypass") == std::string::npos);
    }
    CHECK(nfq == 4);
    CHECK(replies == 3);
    CHECK(xt.find("CONNMARK") == std::string::npos);  // the SYN's and the verdicts' rules are nft's
    CHECK(xt.find("--ctdir ORIGINAL -m connmark --mark 0xc00000/0xc00000 -j NFQUEUE") != std::string::npos);
    CHECK(xt.find("--tcp-flags SYN SYN -m conntrack --ctdir ORIGINAL") == std::string::npos);
    CHECK(xt.find("nft-rules --host --sni-guard --queue-backend xt --print") != std::string::npos);
  }
  const auto ifaces = [](const char* pattern) {
    return render_xt_rules(host_config(with({"--sni-guard", "--queue-backend", "xt", "--sandbox-ifaces", pattern})),
                           AF_INET);
  };
  CHECK(ifaces("vm-*").find("\n-I FORWARD -i vm-+ -m conntrack --ctdir ORIGINAL -j DNSWARD_GUARD\n"
                            "-I FORWARD ! -i vm-+ -o vm-+ -m conntrack --ctdir REPLY -j DNSWARD_GUARD\n") !=
        std::string::npos);
  CHECK(ifaces("tap7").find("\n-I FORWARD -i tap7 -m conntrack --ctdir ORIGINAL -j DNSWARD_GUARD\n"
                            "-I FORWARD ! -i tap7 -o tap7 -m conntrack --ctdir REPLY -j DNSWARD_GUARD\n") !=
        std::string::npos);
  // In-guest, the same queue hooks OUTPUT for every interface, and INPUT but for lo.
  const auto guest = parse_nft_rules({"--sni-guard", "--queue-backend", "xt"}, "/nonexistent/resolv.conf");
  REQUIRE(guest.config);
  const std::string in_guest = render_xt_rules(*guest.config, AF_INET);
  CHECK(in_guest.find("\n-I OUTPUT -m conntrack --ctdir ORIGINAL -j DNSWARD_GUARD\n"
                      "-I INPUT ! -i lo -m conntrack --ctdir REPLY -j DNSWARD_GUARD\nCOMMIT\n") != std::string::npos);
  CHECK(in_guest.find("FORWARD") == std::string::npos);
}

TEST_CASE("host judge: serve --host --sni-guard needs a host ruleset printed with it, and serve without it one printed without") {
  const TableSeen guarded = seen_from(host_text({"--sni-guard"}));
  const TableSeen plain = seen_from(host_text());
  HostRulesetExpectation e = expectation();
  CHECK(judge_host_ruleset(plain, e).in_force());
  RulesetStatus s = judge_host_ruleset(guarded, e);
  CHECK_FALSE(s.in_force());
  CHECK_MESSAGE(s.reason.find("printed with --sni-guard, but serve runs without it") != std::string::npos, s.reason);
  e.guard = true;
  s = judge_host_ruleset(guarded, e);
  CHECK_MESSAGE(s.in_force(), s.reason);
  s = judge_host_ruleset(plain, e);
  CHECK_FALSE(s.in_force());
  CHECK_MESSAGE(s.reason.find("printed without --sni-guard") != std::string::npos, s.reason);
  CHECK(judge_host_ruleset(seen_from(host_text({"--sni-guard", "--queue-backend", "xt"})), e).in_force());
  // The mark that counts is the forward chain's, where the guard's rules are.
  TableSeen moved = guarded;
  for (std::size_t k : {kHostChainPrerouting, kHostChainForward}) {
    const auto m = parse_chain_comment(moved.chains[k].comment).value();
    moved.chains[k].comment = ruleset_chain_comment(m.id, m.rules, m.chain, m.chains, k == kHostChainPrerouting);
  }
  CHECK_FALSE(judge_host_ruleset(moved, e).in_force());
  // The status names the whole ruleset's rule count, guard rules included.
  std::size_t rules = 0;
  for (const auto& c : guarded.chains) rules += c.rules.size();
  CHECK(judge_host_ruleset(guarded, e).rules == rules);
  CHECK(judge_host_ruleset(guarded, e).chain == "prerouting,dns_redirect,input,forward,guard_forward");
  // Without guard_forward (a verdict mark forged before the queue would reach forward's mark
  // rules), or with it after iptables' mangle (where the xt queue is): not in force.
  TableSeen cut = guarded;
  cut.chains.pop_back();
  s = judge_host_ruleset(cut, e);
  CHECK_MESSAGE(s.reason.find("holds no chain marked as chain 4 of 5 (the guard_forward chain") != std::string::npos,
                s.reason);
  cut = guarded;
  cut.chains[kHostChainGuard].priority = -140;
  s = judge_host_ruleset(cut, e);
  CHECK_MESSAGE(s.reason.find("chain guard_forward (chain 4 of 5) is at priority -140, not -175") == 0, s.reason);
  cut = guarded;
  cut.chains[kHostChainForward].priority = -180;
  CHECK_FALSE(judge_host_ruleset(cut, e).in_force());
  // What `nft-rules --host --sni-guard` printed for NF_REPEAT verdicts: four chains, the
  // forward one guard=on (its rules read the verdict where they queued).
  TableSeen repeat = guarded;
  repeat.chains.pop_back();
  for (ChainSeen& ch : repeat.chains) {
    const auto m = parse_chain_comment(ch.comment).value();
    ch.comment = ruleset_chain_comment(m.id, m.rules, m.chain, kHostChainCount, m.guard);
    for (std::size_t i = 0; i < ch.rules.size(); ++i)
      ch.rules[i].comment = ruleset_rule_comment(m.id, i, m.rules, m.chain, kHostChainCount);
  }
  s = judge_host_ruleset(repeat, e);
  CHECK_MESSAGE(s.reason.find("the host ruleset in force has 4 chains where `nft-rules --host --sni-guard` prints 5: "
                              "it was printed by an older nft-rules") == 0,
                s.reason);
  // The priorities of a ruleset printed without the guard are not judged.
  TableSeen moved_plain = plain;
  moved_plain.chains[kHostChainForward].priority = 10;
  CHECK(judge_host_ruleset(moved_plain, expectation()).in_force());
}

TEST_CASE("host ruleset with the guard (ports=): port sets keyed by guest, and pairs open on the guarded and ports= ports only") {
  ServeConfig c = host_config(with({}));
  const std::string plain = render_nft_rules(c);
  CHECK(plain.find("_ports") == std::string::npos);
  c.sni_guard = true;
  const std::string text = render_nft_rules(c);
  CHECK(text.find("\tset allowed4_ports {\n\t\ttype ipv4_addr . ipv4_addr . inet_proto . inet_service\n\t\tflags timeout\n") !=
        std::string::npos);
  CHECK(text.find("\tset allowed6_ports {\n\t\ttype ipv6_addr . ipv6_addr . inet_proto . inet_service\n\t\tflags timeout\n") !=
        std::string::npos);
  const auto chains = chains_of(text);
  std::vector<std::string> fwd;
  for (const auto& r : chains[kHostChainForward].rules) fwd.push_back(r.first);
  const auto at = [&](const std::string& r) { return std::find(fwd.begin(), fwd.end(), r) - fwd.begin(); };
  const auto n = std::ptrdiff_t(fwd.size());
  CHECK(at("ip saddr . ip daddr @allowed4 accept") == n);  // no longer every port
  CHECK(at("ip6 saddr . ip6 daddr @allowed6 accept") == n);
  const auto est = at("ct direction original ct state established,related accept");
  const auto v4 = at("ip saddr . ip daddr @allowed4 tcp dport { 443, 80 } accept");
  const auto p4 = at("ip saddr . ip daddr @allowed4 ip saddr . ip daddr . meta l4proto . th dport @allowed4_ports accept");
  const auto v6 = at("ip6 saddr . ip6 daddr @allowed6 tcp dport { 443, 80 } accept");
  const auto p6 = at("ip6 saddr . ip6 daddr @allowed6 ip6 saddr . ip6 daddr . meta l4proto . th dport @allowed6_ports accept");
  CHECK(est < v4);
  CHECK(v4 < n);
  CHECK(p4 < n);
  CHECK(v6 < n);
  CHECK(p6 < n);
  CHECK(v4 + 1 == p4);
  CHECK(v6 + 1 == p6);
  CHECK(fwd.back() == "counter reject with icmpx type admin-prohibited");
}

TEST_CASE("host judge with the guard: the ports= sets keyed (guest . destination . protocol . port) must exist as printed and be looked up") {
  TableSeen t = seen_from(host_text({"--sni-guard"}));
  t.ports4 = {true, 0x10, kKeyTypeV4V4Port, kKeyLenV4V4Port};
  t.ports6 = {true, 0x10, kKeyTypeV6V6Port, kKeyLenV6V6Port};
  HostRulesetExpectation e = expectation();
  e.guard = true;
  e.ports4 = "allowed4_ports";
  e.ports6 = "allowed6_ports";
  RulesetStatus s = judge_host_ruleset(t, e);
  CHECK_MESSAGE(s.in_force(), s.reason);
  TableSeen bad = t;
  bad.ports6.exists = false;
  CHECK(judge_host_ruleset(bad, e).reason == "set allowed6_ports of table inet dnsward does not exist");
  bad = t;
  bad.ports4 = {true, 0x10, kKeyTypeV4Port, kKeyLenV4Port};  // the in-guest type: no guest in the key
  CHECK(judge_host_ruleset(bad, e).reason ==
        "set allowed4_ports of table inet dnsward is of type 29453 (key length 12), not ipv4_addr . ipv4_addr . "
        "inet_proto . inet_service (key length 16)");
  bad = t;
  bad.ports4.flags = 0x10 | 0x1;  // interval
  CHECK(judge_host_ruleset(bad, e).reason.find("set allowed4_ports of table inet dnsward has flags") == 0);
  // A forward chain that no longer looks the port set up opens no ports= port: the elements
  // dnsward writes would not be what the host forwards.
  bad = t;
  for (auto& r : bad.chains[kHostChainForward].rules)
    r.lookups.erase(std::remove(r.lookups.begin(), r.lookups.end(), "allowed6_ports"), r.lookups.end());
  CHECK(judge_host_ruleset(bad, e).reason.find("no rule of chain forward looks up set allowed6_ports") == 0);
}

namespace {
/// The in-guest ruleset printed with args (no resolv.conf: one upstream given).
std::string guest_text(std::vector<std::string> args) {
  args.insert(args.end(), {"--upstream", "192.0.2.53", "--user", "root"});
  const auto r = parse_nft_rules(args, "/nonexistent/resolv.conf");
  REQUIRE_MESSAGE(r.config, r.error);
  return render_nft_rules(*r.config);
}
/// The in-guest table as the kernel holds it once text is loaded, with the sets as declared.
TableSeen guest_seen(const std::string& text) {
  TableSeen t = seen_from(text);
  t.set4 = {true, 0x10, kKeyTypeV4, kKeyLenV4};
  t.set6 = {true, 0x10, kKeyTypeV6, kKeyLenV6};
  t.ports4 = {true, 0x10, kKeyTypeV4Port, kKeyLenV4Port};
  t.ports6 = {true, 0x10, kKeyTypeV6Port, kKeyLenV6Port};
  t.sbx4 = t.sbx6 = {};
  return t;
}
RulesetExpectation guest_expectation(bool guard) {
  RulesetExpectation e;
  e.family = "inet";
  e.table = "dnsward";
  e.set4 = "allowed4";
  e.set6 = "allowed6";
  e.guard = guard;
  e.ports4 = "allowed4_ports";
  e.ports6 = "allowed6_ports";
  return e;
}
}  // namespace

TEST_CASE("in-guest ruleset --sni-guard: output, input and the two guard chains, each marked with its place and one id, in force as printed") {
  for (const auto& args : {std::vector<std::string>{"--sni-guard"},
                           std::vector<std::string>{"--sni-guard", "--queue-backend", "xt"}}) {
    CAPTURE(args.size());
    const std::string text = guest_text(args);
    const auto chains = chains_of(text);
    REQUIRE(chains.size() == kGuestGuardChains);
    std::optional<uint64_t> id;
    for (std::size_t k = 0; k < kGuestGuardChains; ++k) {
      const PrintedChain& c = chains[k];
      CAPTURE(c.name);
      CHECK(c.name == kGuestChains[k].name);
      CHECK(c.type_line == (k == kGuestChainOutput        ? "type filter hook output priority filter; policy drop;"
                            : k == kGuestChainInput       ? "type filter hook input priority filter; policy accept;"
                            : k == kGuestChainGuardOutput ? "type filter hook output priority mangle - 25; policy accept;"
                                                          : "type filter hook input priority mangle - 25; policy accept;"));
      const auto mark = parse_chain_comment(c.comment);
      REQUIRE_MESSAGE(mark, c.comment);
      CHECK(mark->chain == k);
      CHECK(mark->chains == kGuestGuardChains);
      CHECK(mark->rules == c.rules.size());
      CHECK(mark->guard);  // all hold the guard's rules
      if (!id) id = mark->id;
      CHECK(mark->id == *id);
      for (std::size_t i = 0; i < c.rules.size(); ++i) {
        const auto m = parse_rule_comment(c.rules[i].second);
        REQUIRE_MESSAGE(m, c.rules[i].second);
        CHECK(m->index == i);
        CHECK(m->chain == k);
        CHECK(m->chains == kGuestGuardChains);
        CHECK(m->id == *id);
      }
    }
    // Judged from its shape as loaded: in force under serve --sni-guard, and not without it
    // (nor with its input chain gone, nor with it on another hook).
    const TableSeen t = guest_seen(text);
    RulesetStatus s = judge_ruleset(t, guest_expectation(true));
    CHECK_MESSAGE(s.in_force(), s.reason);
    CHECK(s.chain == "output,input,guard_output,guard_input");
    CHECK(s.rules == chains[0].rules.size() + chains[1].rules.size() + chains[2].rules.size() + chains[3].rules.size());
    s = judge_ruleset(t, guest_expectation(false));
    CHECK_MESSAGE(s.reason.find("printed with --sni-guard, but serve runs without it") != std::string::npos, s.reason);
    TableSeen cut = t;
    cut.chains.erase(cut.chains.begin() + 1);
    s = judge_ruleset(cut, guest_expectation(true));
    CHECK_MESSAGE(s.reason.find("holds no chain marked as chain 1 of 4 (the input chain") != std::string::npos, s.reason);
    cut = t;
    cut.chains.pop_back();
    s = judge_ruleset(cut, guest_expectation(true));
    CHECK_MESSAGE(s.reason.find("holds no chain marked as chain 3 of 4 (the guard_input chain") != std::string::npos,
                  s.reason);
    cut = t;
    cut.chains[1].hook = 3;
    s = judge_ruleset(cut, guest_expectation(true));
    CHECK_MESSAGE(s.reason == "chain input (chain 1 of 4) is on the output hook, not input", s.reason);
    // The guard chains' priority as printed: -175, between conntrack and iptables' mangle.
    CHECK(t.chains[2].priority == -175);
    cut = t;
    cut.chains[2].priority = -150;
    s = judge_ruleset(cut, guest_expectation(true));
    CHECK_MESSAGE(s.reason.find("chain guard_output (chain 2 of 4) is at priority -150, not -175") == 0, s.reason);
  }
  // One id for both chains, covering the input chain's text too.
  const auto id_of = [](std::vector<std::string> args) {
    return parse_chain_comment(chains_of(guest_text(std::move(args))).at(1).comment).value().id;
  };
  CHECK(id_of({"--sni-guard"}) != id_of({"--sni-guard", "--http-ports", "8080"}));
  // Without the guard: the output chain alone, marked without a place, judged in force.
  const std::string plain = guest_text({});
  REQUIRE(chains_of(plain).size() == 1);
  CHECK(parse_chain_comment(chains_of(plain)[0].comment).value().chains == 0);
  RulesetExpectation e = guest_expectation(false);
  e.ports4 = e.ports6 = "";
  const RulesetStatus s = judge_ruleset(guest_seen(plain), e);
  CHECK_MESSAGE(s.in_force(), s.reason);
  CHECK(s.chain == "output");
}
