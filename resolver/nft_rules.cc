#include "dnsward/nft_rules.hpp"

#include <arpa/inet.h>
#include <pwd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <tuple>

#include "dnsward/ruleset_check.hpp"

namespace dnsward {
namespace {

std::string ip_of(const Endpoint& e) {
  char buf[INET6_ADDRSTRLEN] = "";
  if (e.family() == AF_INET)
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&e.addr)->sin_addr, buf, sizeof buf);
  else
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&e.addr)->sin6_addr, buf, sizeof buf);
  return buf;
}

const char* nfproto(const Endpoint& e) { return e.family() == AF_INET ? "ip" : "ip6"; }

bool is_v6_cidr(const std::string& cidr) { return cidr.find(':') != std::string::npos; }

/// Whether a table of this family sees traffic of the address family (AF_INET/AF_INET6).
bool sees(NftFamily f, int af) {
  return f == NftFamily::Inet || (f == NftFamily::Ip ? af == AF_INET : af == AF_INET6);
}

}  // namespace

ParseOutcome parse_nft_rules(const std::vector<std::string>& args, const std::string& resolv_conf) {
  ParseOutcome out = parse_command_options(kNftRules, args, resolv_conf);
  if (!out.config) return out;
  ServeConfig& c = *out.config;
  const auto family = option_value_name("nft-family", c.nft_family);
  auto refuse = [&](const char* option, const std::string& value, int af) {
    // The default --listen (127.0.0.1:53) is IPv4: an ip6 table needs one given.
    out.error = fmt::format("--{} {}: an {} address, but a table of --nft-family {} sees only {}{}",
                            option, value, af == AF_INET ? "IPv4" : "IPv6", family,
                            af == AF_INET ? "IPv6" : "IPv4",
                            std::string_view(option) == "listen" && af == AF_INET ? " (give --listen [::1]:53)" : "");
    out.config.reset();
    return out;
  };
  for (const auto& l : c.listen)
    if (!sees(c.nft_family, l.family())) return refuse("listen", l.text, l.family());
  if (c.upstream_source == "--upstream") {
    for (const auto& u : c.upstreams)
      if (!sees(c.nft_family, u.family())) return refuse("upstream", u.text, u.family());
  } else {
    // resolv.conf may list servers of both families; the table can only name its own.
    std::erase_if(c.upstreams, [&](const Endpoint& u) { return !sees(c.nft_family, u.family()); });
  }
  for (const auto& a : c.nft_allow) {
    const int af = is_v6_cidr(a) ? AF_INET6 : AF_INET;
    if (!sees(c.nft_family, af)) return refuse("allow", a, af);
  }
  return out;
}

std::string render_nft_rules(const ServeConfig& c) {
  const auto family = option_value_name("nft-family", c.nft_family);
  const bool v4 = sees(c.nft_family, AF_INET), v6 = sees(c.nft_family, AF_INET6);
  // The chain's body, in order: comments and blank lines (rule = false), and rules, which
  // are numbered and marked below, once their count and the ruleset's id are known.
  struct Line {
    std::string text;
    bool rule;
  };
  std::vector<Line> body;
  auto note = [&](std::string t) { body.push_back({std::move(t), false}); };
  auto rule = [&](std::string t) { body.push_back({std::move(t), true}); };
  const std::string chain_type = "type filter hook output priority filter; policy drop;";
  note("# Connections opened while their address was vouched for outlive its expiry; only");
  note("# in the direction the sandbox opened them: replies to a flow that someone else");
  note("# started (a remote that sends first) would be a way out to any address.");
  rule("ct direction original ct state established,related accept");
  note("");
  note("# DNS goes to dnsward only; dnsward's own user alone reaches its upstreams. This");
  note("# comes before the loopback rule, so no other local resolver can be asked.");
  for (const auto& l : c.listen)
    for (const char* proto : {"udp", "tcp"})
      rule(fmt::format("{} daddr {} {} dport {} accept", nfproto(l), ip_of(l), proto, l.port()));
  for (const auto& u : c.upstreams)
    for (const char* proto : {"udp", "tcp"})
      rule(fmt::format("meta skuid \"{}\" {} daddr {} {} dport {} accept", c.user, nfproto(u),
                       ip_of(u), proto, u.port()));
  rule("meta l4proto { udp, tcp } th dport { 53, 853 } counter log prefix \"dnsward-dns-drop: \" reject");
  note("");
  rule("oif \"lo\" accept");
  if (v6) {
    note("# IPv6 needs neighbour discovery (RFC 4861) to reach anything at all: always at hop");
    note("# limit 255 (RFC 4861 7.1); only the kernel, or a raw socket (CAP_NET_RAW), sends it.");
    note("# And multicast listener reports for the link's groups (MLDv1 RFC 2710, MLDv2 RFC");
    note("# 3810), which every IPv6 interface sends as it comes up: only what a host sends,");
    note("# from a link-local address (or :: before it has one), to a link-scope group, at hop");
    note("# limit 1 (RFC 2710 3, RFC 3810 5); never a query, which routers send.");
    rule("icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } "
         "ip6 hoplimit 255 accept");
    rule("icmpv6 type { mld-listener-report, mld-listener-done, mld2-listener-report } "
         "ip6 saddr { fe80::/10, :: } ip6 daddr ff02::/16 ip6 hoplimit 1 accept");
  }
  note("");
  note("# The holes dnsward punched, one per answered address.");
  if (v4) rule(fmt::format("ip daddr @{} accept", c.nft_set4));
  if (v6) rule(fmt::format("ip6 daddr @{} accept", c.nft_set6));
  if (!c.nft_allow.empty()) {
    note("");
    note("# Always reachable (--allow).");
    for (const auto& a : c.nft_allow) rule(fmt::format("{} daddr {} accept", is_v6_cidr(a) ? "ip6" : "ip", a));
  }
  note("");
  note("# Everything else: counted, logged, and rejected so that clients fail fast.");
  rule("meta l4proto tcp counter log prefix \"dnsward-drop: \" reject with tcp reset");
  // icmpx (either ICMP version, as the packet needs) exists only in inet tables.
  const char* icmp = v4 && v6 ? "icmpx" : v4 ? "icmp" : "icmpv6";
  rule(fmt::format("counter log prefix \"dnsward-drop: \" reject with {} type admin-prohibited", icmp));

  // The table as printed, line by line (indent, text, kind): the id is the hash of its
  // lines that are neither notes nor marks, so it names the whole text nft loads (family,
  // names, set declarations, rules), not the rules alone.
  enum class Kind : uint8_t { Text, Note, Mark, Rule };
  struct Out {
    int indent;
    std::string text;
    Kind kind;
  };
  std::vector<Out> table;
  table.push_back({0, fmt::format("table {} {} {{", family, c.nft_table), Kind::Text});
  table.push_back({1, "# Filled by dnsward with every address it answered, each for its TTL plus grace.", Kind::Note});
  for (const auto& [yes, name, type] : {std::tuple{v4, &c.nft_set4, "ipv4_addr"}, std::tuple{v6, &c.nft_set6, "ipv6_addr"}}) {
    if (!yes) continue;
    table.push_back({1, fmt::format("set {} {{", *name), Kind::Text});
    table.push_back({2, fmt::format("type {}", type), Kind::Text});
    table.push_back({2, "flags timeout", Kind::Text});
    table.push_back({2, fmt::format("size {}", c.nft_set_size), Kind::Text});
    table.push_back({1, "}", Kind::Text});
    table.push_back({0, "", Kind::Note});
  }
  table.push_back({1, "chain output {", Kind::Text});
  table.push_back({2, chain_type, Kind::Text});
  table.push_back({2, "", Kind::Mark});  // the chain's comment, once the id is known
  table.push_back({0, "", Kind::Note});
  for (const Line& l : body) table.push_back({2, l.text, l.rule ? Kind::Rule : Kind::Note});
  table.push_back({1, "}", Kind::Text});
  table.push_back({0, "}", Kind::Text});

  // `dnsward serve` checks that this chain is in force by these marks (ruleset_check.hpp):
  // the chain's comment names the ruleset and its rule count, each rule's comment its place.
  std::vector<std::string> hashed;
  std::size_t n = 0;
  for (const Out& o : table)
    if (o.kind == Kind::Text || o.kind == Kind::Rule) {
      hashed.push_back(o.text);
      n += o.kind == Kind::Rule;
    }
  const uint64_t id = ruleset_id(hashed);

  std::string r;
  r += "#!/usr/sbin/nft -f\n";
  r += "# Generated by `dnsward nft-rules`: default-deny egress for a sandbox whose only\n";
  r += "# resolver is dnsward. Load it before `dnsward serve` starts; loading it again\n";
  r += "# replaces it (and empties the sets: dnsward notices and vouches again).\n";
  r += "# dnsward serve checks that the chain below is in force, by its comments: keep them.\n";
  if (!v6) r += "# A table of family ip sees IPv4 only: this ruleset leaves IPv6 alone.\n";
  if (!v4) r += "# A table of family ip6 sees IPv6 only: this ruleset leaves IPv4 alone.\n";
  r += fmt::format("table {} {}\ndelete table {} {}\n\n", family, c.nft_table, family, c.nft_table);
  std::size_t i = 0;
  for (const Out& o : table) {
    const std::string tabs(std::size_t(o.indent), '\t');
    switch (o.kind) {
      case Kind::Text: r += tabs + o.text + "\n"; break;
      case Kind::Note: r += o.text.empty() ? "\n" : tabs + o.text + "\n"; break;
      case Kind::Mark: r += fmt::format("{}comment \"{}\"\n", tabs, ruleset_chain_comment(id, n)); break;
      case Kind::Rule: r += fmt::format("{}{} comment \"{}\"\n", tabs, o.text, ruleset_rule_comment(id, i++, n)); break;
    }
  }
  return r;
}

std::string nft_rules_help() {
  return "usage: dnsward nft-rules [OPTION]...\n\n"
         "Prints an nftables ruleset for a sandbox whose only resolver is dnsward: loopback and\n"
         "established connections allowed; DNS only to dnsward's --listen addresses, and from\n"
         "--user only to the --upstream servers; addresses in the sets dnsward fills allowed;\n"
         "--allow CIDRs allowed; everything else counted, logged and rejected. The options are\n"
         "those of `dnsward serve`, with the same defaults. Check it with `nft -c -f -`.\n"
         "Its chain and rules carry comments by which `dnsward serve` sees that it is in force.\n\n"
         "Options:\n" +
         options_help(kNftRules);
}

int nft_rules_main(const std::vector<std::string>& args) {
  const ParseOutcome parsed = parse_nft_rules(args);
  if (parsed.help_shown) {
    std::fputs(nft_rules_help().c_str(), stdout);
    return 0;
  }
  if (!parsed.config) {
    std::fprintf(stderr, "dnsward: nft-rules: %s\n", parsed.error.c_str());
    return 2;
  }
  const ServeConfig& c = *parsed.config;
  if (c.upstreams.empty())
    std::fprintf(stderr, "dnsward: nft-rules: warning: no --upstream (and none in %s): dnsward "
                         "itself will not be able to reach any DNS server\n",
                 c.upstream_source.c_str());
  else if (c.upstream_source != "--upstream")
    std::fprintf(stderr, "dnsward: nft-rules: no --upstream: using the nameservers of %s, as "
                         "`serve` would\n", c.upstream_source.c_str());
  if (!getpwnam(c.user.c_str()))
    std::fprintf(stderr, "dnsward: nft-rules: warning: user '%s' does not exist here; nft resolves "
                         "it when the ruleset is loaded\n", c.user.c_str());
  std::fputs(render_nft_rules(c).c_str(), stdout);
  return 0;
}

}  // namespace dnsward
