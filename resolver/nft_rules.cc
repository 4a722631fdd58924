#include "dnsward/nft_rules.hpp"

#include <arpa/inet.h>
#include <pwd.h>

#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <array>
#include <set>
#include <cstdio>
#include <optional>
#include <tuple>

#include "dnsward/ruleset_check.hpp"

namespace dnsward {

bool sees(NftFamily f, int af) {
  return f == NftFamily::Inet || (f == NftFamily::Ip ? af == AF_INET : af == AF_INET6);
}

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

/// A line of a table as printed: its indent, its text and its kind. The ruleset's id is the
/// hash of the lines that are neither notes nor marks, so it names the whole text nft loads
/// (family, names, set declarations, rules), not the rules alone.
enum class Kind : uint8_t { Text, Note, Mark, Rule };
struct Out {
  int indent;
  std::string text;
  Kind kind;
};

/// The table's lines printed after the preamble, each Mark line (a chain's comment) and
/// each Rule line marked once the id and the rule counts are known, as `dnsward serve`
/// reads them back (ruleset_check.hpp). A Mark opens a chain: the rules after it, up to the
/// next Mark, are that chain's. With more than one chain (host mode; in-guest with
/// --sni-guard), marks also name their chain's place (k of m). With guard (--sni-guard),
/// the chains that hold the guard's rules say so (guard=on): both in-guest (output and
/// input), the forward chain in host mode.
std::string print_marked(std::string r, const std::vector<Out>& table, bool host, bool guard = false) {
  std::vector<std::string> hashed;
  std::vector<std::size_t> rules;  // per chain, in order
  for (const Out& o : table) {
    if (o.kind == Kind::Mark) rules.push_back(0);
    if (o.kind == Kind::Text || o.kind == Kind::Rule) hashed.push_back(o.text);
    if (o.kind == Kind::Rule) ++rules.back();
  }
  const uint64_t id = ruleset_id(hashed);
  const std::size_t chains = rules.size();
  const bool places = host || chains > 1;
  std::size_t k = 0, i = 0;  // the chain being printed (k - 1), the next rule in it
  for (const Out& o : table) {
    const std::string tabs(std::size_t(o.indent), '\t');
    switch (o.kind) {
      case Kind::Text: r += tabs + o.text + "\n"; break;
      case Kind::Note: r += o.text.empty() ? "\n" : tabs + o.text + "\n"; break;
      case Kind::Mark:
        r += fmt::format("{}comment \"{}\"\n", tabs,
                         places ? ruleset_chain_comment(id, rules[k], k, chains, guard && (!host || k == kHostChainForward))
                                : ruleset_chain_comment(id, rules[k], guard));
        ++k;
        i = 0;
        break;
      case Kind::Rule: {
        const std::size_t n = rules[k - 1];
        r += fmt::format("{}{} comment \"{}\"\n", tabs, o.text,
                         places ? ruleset_rule_comment(id, i, n, k - 1, chains) : ruleset_rule_comment(id, i, n));
        ++i;
        break;
      }
    }
  }
  return r;
}

/// The special-purpose IPv4 ranges of answer.cc's is_special_purpose, as CIDRs.
constexpr std::pair<std::array<uint8_t, 4>, int> kSpecial4[] = {
    {{0, 0, 0, 0}, 8},      // "this network", unspecified
    {{10, 0, 0, 0}, 8},     // RFC 1918
    {{100, 64, 0, 0}, 10},  // CGNAT (RFC 6598)
    {{127, 0, 0, 0}, 8},    // loopback
    {{169, 254, 0, 0}, 16}, // link-local, 169.254.169.254 cloud metadata
    {{172, 16, 0, 0}, 12},  // RFC 1918
    {{192, 0, 0, 0}, 24},   // IETF protocol assignments (RFC 6890)
    {{192, 168, 0, 0}, 16}, // RFC 1918
    {{224, 0, 0, 0}, 3},    // multicast, reserved, broadcast
};

std::string v6_text(const std::array<uint8_t, 16>& b, int len) {
  char buf[INET6_ADDRSTRLEN] = "";
  inet_ntop(AF_INET6, b.data(), buf, sizeof buf);
  return fmt::format("{}/{}", buf, len);
}

}  // namespace

namespace {
/// The CIDRs of af for the IPv4 ranges v4 and the native IPv6 ranges v6: the IPv4 ones as
/// they are (AF_INET), or v6 and the IPv6 forms that embed an IPv4 range of v4 (AF_INET6).
template <std::size_t N4, std::size_t N6>
std::vector<std::string> destinations(int af, const std::pair<std::array<uint8_t, 4>, int> (&v4)[N4],
                                      const std::pair<std::array<uint8_t, 16>, int> (&v6)[N6]) {
  std::vector<std::string> out;
  if (af == AF_INET) {
    for (const auto& [a, len] : v4) out.push_back(fmt::format("{}.{}.{}.{}/{}", a[0], a[1], a[2], a[3], len));
    return out;
  }
  for (const auto& [b, len] : v6) out.push_back(v6_text(b, len));
  // The forms that embed an IPv4 address: mapped (::ffff:0:0/96), compatible (::/96),
  // NAT64 (64:ff9b::/96) and 6to4 (2002::/16), each of a special IPv4 range.
  for (const auto& [a, len] : v4) {
    for (const std::array<uint8_t, 12> prefix :
         {std::array<uint8_t, 12>{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff}, std::array<uint8_t, 12>{},
          std::array<uint8_t, 12>{0, 0x64, 0xff, 0x9b}}) {
      std::array<uint8_t, 16> b{};
      std::copy(prefix.begin(), prefix.end(), b.begin());
      std::copy(a.begin(), a.end(), b.begin() + 12);
      out.push_back(v6_text(b, 96 + len));
    }
    out.push_back(v6_text({0x20, 0x02, a[0], a[1], a[2], a[3]}, 16 + len));
  }
  return out;
}

// ::/127 (unspecified, loopback) lies inside the IPv4-compatible form of 0/8 (::/104).
constexpr std::pair<std::array<uint8_t, 16>, int> kSpecial6[] = {
    {{0xfc}, 7}, {{0xfe, 0x80}, 10}, {{0xfe, 0xc0}, 10}, {{0xff}, 8}, {{0, 0x64, 0xff, 0x9b, 0, 1}, 48}};
/// What no sandbox may reach even when vouched for (private=yes vouches only for private
/// networks): "this network", loopback, link-local with the cloud metadata service at
/// 169.254.169.254, multicast and reserved; link-local and multicast IPv6.
constexpr std::pair<std::array<uint8_t, 4>, int> kNever4[] = {
    {{0, 0, 0, 0}, 8}, {{127, 0, 0, 0}, 8}, {{169, 254, 0, 0}, 16}, {{224, 0, 0, 0}, 3}};
constexpr std::pair<std::array<uint8_t, 16>, int> kNever6[] = {{{0xfe, 0x80}, 10}, {{0xff}, 8}};
}  // namespace

std::vector<std::string> special_destinations(int af) { return destinations(af, kSpecial4, kSpecial6); }

std::vector<std::string> never_destinations(int af) { return destinations(af, kNever4, kNever6); }

ParseOutcome parse_nft_rules(const std::vector<std::string>& args, const std::string& resolv_conf) {
  ParseOutcome out = parse_command_options(kNftRules, args, resolv_conf);
  if (!out.config) return out;
  ServeConfig& c = *out.config;
  const auto family = option_value_name("nft-family", c.nft_family);
  if (c.host) {
    // One table sees the sandboxes' IPv4 and IPv6: anti-spoofing of one family alone would
    // leave the other's sources unchecked.
    if (c.nft_family != NftFamily::Inet) {
      out.error = fmt::format("--host needs --nft-family inet (the host ruleset checks IPv4 and IPv6 "
                              "in one table), not {}", family);
      out.config.reset();
      return out;
    }
    // As `serve --host` requires: the ruleset redirects each sandbox's DNS to the address of
    // the interface it came in on, which only a wildcard socket receives.
    for (const auto& l : c.listen)
      if (!l.is_wildcard()) {
        out.error = fmt::format("--host listens on wildcard addresses (0.0.0.0:PORT, [::]:PORT), "
                                "where the host ruleset redirects sandboxes' DNS; not {}", l.text);
        out.config.reset();
        return out;
      }
    return out;
  }
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

namespace {
/// The guarded ports as an nft set literal ({ 443, 80 }), TLS ports first.
std::string port_list(const std::vector<uint16_t>& ports) {
  std::string r;
  for (const uint16_t p : ports) r += fmt::format("{}{}", r.empty() ? "" : ", ", p);
  return "{ " + r + " }";
}
std::string port_set(const ServeConfig& c) {
  std::vector<uint16_t> all = port_numbers(c.sni_ports);
  for (const uint16_t p : port_numbers(c.http_ports))
    if (std::find(all.begin(), all.end(), p) == all.end()) all.push_back(p);
  return port_list(all);
}
std::string tls_port_set(const ServeConfig& c) { return port_list(port_numbers(c.sni_ports)); }
}  // namespace

namespace {
/// Where render_guard_rules() writes, and how the chains it writes into name a vouched
/// destination: `ip daddr @set` in-guest, `ip saddr . ip daddr @set` (guest . destination)
/// in host mode, whose rejected connections' log lines are rate-limited. Each side has two
/// places: before the queue (pre_*: the guard chain of its hook, at kGuardChainPrio, whose
/// first rule clears every packet's verdict bits) and after it (the filter chain of its
/// hook, at priority filter, where dnsward's verdicts move into the conntrack mark). The
/// client's packets go to pre_note/pre_rule and note/rule; the server's (the reply
/// direction) to reply_pre_note/reply_pre_rule and reply_note/reply_rule: in-guest the input
/// hook's chains (the output hook never sees them), in host mode the heads of the forward
/// hook's chains (the host's own traffic, replies from the uplink included, returns after).
struct GuardRuleOut {
  std::function<void(std::string)> note, rule;
  std::function<void(std::string)> pre_note, pre_rule;
  std::function<void(const std::string& match)> reset;  ///< the logged reset of what matches
  std::function<std::string(const char* proto, const std::string& set)> vouched;
  std::function<void(std::string)> reply_note, reply_rule;
  std::function<void(std::string)> reply_pre_note, reply_pre_rule;
  /// What a real server's packet matches and a forged one does not: in-guest `iif != "lo"`,
  /// in host mode `iifname != <--sandbox-ifaces>`.
  std::string outside;
  std::vector<std::pair<const char*, const std::string*>> families;  ///< ("ip", &set4), ...
  bool host = false;
};

/// The first rule of each guard chain, with its notes: every packet's verdict bits (and the
/// judged bit) cleared, counted when there were any.
void guard_clear_rule(const ServeConfig& c, const std::function<void(std::string)>& note,
                      const std::function<void(std::string)>& rule) {
  const GuardMarks m = *guard_mark_bits(c.guard_marks);
  // dnsward's verdict is NF_ACCEPT, which goes on at the next hook entry (net/netfilter/
  // core.c nf_reinject), never back into this chain: a packet reaches the later chains with
  // verdict bits only if dnsward gave them, since every packet, queued or not, passes this
  // rule first. Before, the verdict was NF_REPEAT and the chain that queued read the packet
  // mark itself; a raw socket's SO_MARK control message (CAP_NET_RAW) forged a verdict there.
  note(fmt::format("# The guard's marks (--guard-marks 0x{:08x}) are dnsward's to set: cleared on every", m.mask()));
  note("# packet here, before any queue, so that only dnsward's verdict (NF_ACCEPT, which goes on");
  note("# to the later chains of this hook, never back here) carries them to the rules that read");
  note("# them. A packet that comes with them set (SO_MARK) is counted.");
  rule(fmt::format("meta mark & 0x{:08x} != 0 counter meta mark set meta mark & 0x{:08x}", m.mask(), ~m.mask()));
}

/// The first-flight guard's rules (--sni-guard), one text for the in-guest chains and the
/// host's forward chains.
void render_guard_rules(const ServeConfig& c, const GuardRuleOut& o) {
  const GuardMarks m = *guard_mark_bits(c.guard_marks);
  const std::string ports = port_set(c), tls = tls_port_set(c), http = port_list(port_numbers(c.http_ports));
  const std::string verdicts = fmt::format("0x{:08x}", m.allowed | m.rejected);
  const char* dest = o.host ? "a destination dnsward vouched for that guest" : "a vouched address";
  // The rules that move dnsward's verdict (the packet mark it gave with NF_ACCEPT) into the
  // conntrack mark, behind `prefix`, in the chain after the queue. Each side's rules take
  // only that side's packets, the ones it queues. Only TCP packets, never one conntrack
  // calls related: an ICMP error quoting a guarded connection is placed on its entry
  // (related), and must move no mark whatever mark it carries (a review's hardening; the
  // clear before the queue already takes any bits it came with).
  auto mark_rules = [&](const std::function<void(std::string)>& rule, const std::string& prefix) {
    for (const uint32_t bit : {m.allowed, m.rejected})
      rule(fmt::format("meta l4proto tcp ct state != related {0}meta mark & {1} == 0x{2:08x} ct mark set ct mark & "
                       "0x{3:08x} | 0x{2:08x}",
                       prefix, verdicts, bit, ~(m.allowed | m.rejected)));
  };
  o.pre_note(fmt::format("# The first-flight guard (--sni-guard). A new TCP connection to {}", dest));
  o.pre_note(fmt::format("# on a guarded port ({}) goes to dnsward (netfilter queue {}) until its first flight",
                         ports, c.queue_num));
  o.pre_note(o.host ? "# names a host that resolved to that destination for that guest (TLS server_name, HTTP"
                    : "# names a host that resolved to that address (TLS server_name, HTTP");
  o.pre_note(fmt::format("# Host). dnsward answers each packet with NF_ACCEPT and a packet mark: bit 0x{:08x}",
                         m.seen));
  o.pre_note(fmt::format("# judged, 0x{:08x} allowed, 0x{:08x} rejected. This chain runs before the queue;",
                         m.allowed, m.rejected));
  o.pre_note("# the packet goes on to the filter chain, where the verdict moves into the conntrack");
  o.pre_note("# mark, so the connection is never queued again, and a rejected one is reset (a queue");
  o.pre_note("# verdict cannot send a reset). The queue has no bypass: with dnsward gone, new");
  o.pre_note("# connections on these ports wait and fail, they never pass unjudged.");
  o.pre_note("# A packet conntrack cannot place carries no conntrack mark for the rules below to");
  o.pre_note("# read: on guarded ports it is dropped, never judged by the vouched set alone.");
  o.pre_rule(fmt::format("tcp dport {} ct state invalid,untracked counter drop", ports));
  // No `socket mark` drop any more (it dropped guarded-port packets of a socket marked with a
  // verdict bit, SO_MARK needing only CAP_NET_RAW since Linux 5.17: the third review): the
  // clear above takes a marked socket's bits off each of its packets before anything reads
  // them, on both queue backends (the drop never covered xt, whose mangle chain ran first).
  // Whether a connection is guarded is decided once, at its SYN, and kept in its conntrack
  // mark (both verdict bits: guarded, no verdict yet): the rules below key on that, not on
  // the sets, whose element may expire while the connection is open. Keyed on the sets, a
  // connection opened while its destination was vouched and sent its first flight after
  // the element expired went out unjudged through the established-connection accept (a
  // sixth review did it, unprivileged, in host mode).
  // A SYN on an entry that was guarded (conntrack reuses a closed entry, mark and all, and
  // lets a SYN through on one it ignores the SYN of) makes it guarded and undecided again,
  // whatever the sets say by now: a new handshake is judged anew, and never escapes the
  // guard by coming after its destination's element expired (the seventh review). A SYN on
  // any other entry is guarded if it goes to a vouched destination. Before the queue, so
  // that the xt queue (iptables' mangle, after this chain) sees the connection guarded.
  o.pre_note("# A SYN to " + std::string(dest) + " marks its connection guarded (both verdict bits in");
  o.pre_note("# the conntrack mark): whatever becomes of the element, its payload waits for dnsward's");
  o.pre_note("# verdict. A SYN on an entry that was guarded (conntrack reuses a closed entry, mark and");
  o.pre_note("# all) makes it guarded again, without a verdict: a new handshake is judged anew.");
  o.pre_rule(fmt::format("tcp dport {} ct direction original tcp flags & (syn | ack) == syn ct mark & {} != 0 ct mark "
                         "set ct mark & 0x{:08x} | {}",
                         ports, verdicts, ~m.seen, verdicts));
  for (const auto& f : o.families)
    o.pre_rule(fmt::format("tcp dport {} ct direction original tcp flags & (syn | ack) == syn {} ct mark set ct mark | "
                           "{}",
                           ports, o.vouched(f.first, *f.second), verdicts));
  // conntrack picks a connection up mid-stream (nf_conntrack_tcp_loose, on by default): an
  // entry with no SYN seen has no guarded mark, and was accepted as a vouched destination's
  // (the seventh review: a raw RST with a TTL of 1 ended the host's entry, the server's
  // connection lived on, and its next flight was picked up unjudged; in-guest, an idle
  // half-closed connection outliving its entry). After the SYN rules above, anything to a
  // vouched destination on a guarded port still without a verdict bit is not guarded:
  // dropped, whatever its direction or flags (the eighth review: a SYN-flagged segment with
  // data on an entry the server's packet had opened).
  // A SYN cookie outlives the connection on its four-tuple: a server in SYN-cookie mode keeps
  // nothing for a SYN it answers, and opens a connection for any later ACK of its cookie
  // that reaches it (RFC 4987 3.6) once no socket holds the tuple. The ninth review got a
  // cookie for one handshake, opened a second on the same ports that was allowed, ended it
  // with a raw reset, and sent the first cookie's ACK with a request for another name: on
  // the entry still marked allowed, in its window by construction, it was never queued, and
  // the server read it. After a connection ends (a reset either way, the server's FIN) the
  // client sends nothing more on it: its entry is marked closed (the judged bit, which only
  // packets carry otherwise, in the conntrack mark), and the client's data on a closed entry
  // is reset, unread. A SYN (above) clears it: a new handshake is judged anew.
  o.pre_note("# A connection whose end was seen (a reset, the server's FIN: the judged bit in its");
  o.pre_note("# conntrack mark) takes no more data from the client: a SYN cookie would open a");
  o.pre_note("# server's connection on it, never queued. A new SYN clears the mark (above).");
  o.pre_rule(fmt::format("tcp dport {} ct direction original tcp flags rst ct mark & {} != 0 ct mark set ct mark | "
                         "0x{:08x}",
                         ports, verdicts, m.seen));
  o.pre_rule(fmt::format("tcp dport {} ct direction original ct mark & 0x{:08x} != 0 @ih,0,8 0-255 counter reject "
                         "with tcp reset",
                         ports, m.seen));
  o.pre_note("# A connection to " + std::string(dest) + " that is not guarded by now (conntrack picked it");
  o.pre_note("# up mid-stream, or saw the server first) is dropped: its first flight would go unjudged.");
  for (const auto& f : o.families)
    o.pre_rule(
        fmt::format("tcp dport {} ct mark & {} == 0 {} counter drop", ports, verdicts, o.vouched(f.first, *f.second)));
  // TCP Fast Open (RFC 7413) puts the first flight in the SYN; a SYN-ACK acknowledging its
  // data cannot be told from the answer to a plain SYN further on (the fifth review), so it
  // is never judged: dropped here, before any queue (both backends' queues come after this
  // chain). Linux sends the SYN again without data, and the data after.
  o.pre_note("# A TCP Fast Open SYN (a SYN with payload) is dropped: the client sends it again plain.");
  o.pre_rule(fmt::format("tcp dport {} ct direction original tcp flags & (syn | ack) == syn @ih,0,8 0-255 counter drop",
                         ports));
  const std::string guarded = fmt::format("ct mark & {0} == {0}", verdicts);  // guarded, no verdict yet
  // The server's kernel takes the byte an urgent pointer points at out of the stream (without
  // SO_OOBINLINE; RFC 9293 3.8.5 keeps urgent data for old applications), and any segment's
  // pointer counts, a bare ACK's too, which is never queued: a raw socket's would make the
  // server read other bytes than those judged. No TLS or HTTP client sends one. Before the
  // queue: such a segment is never judged, and never passes on a verdict.
  o.pre_note("# An urgent pointer on a connection not decided yet is dropped, whatever the segment:");
  o.pre_note("# the server would take the byte it points at out of the flight judged.");
  o.pre_rule(fmt::format("tcp dport {} ct direction original {} tcp flags urg counter drop", ports, guarded));
  if (c.queue_backend == QueueBackend::Nft) {
    // The client's plain SYN is not queued: the client writes its own sequence numbers (a
    // raw socket forges them), the server's SYN-ACK acknowledges the one it took. The queue
    // is this chain's last rule: dnsward's NF_ACCEPT goes on at the next hook entry.
    o.pre_note("# Queued: packets with payload (`@ih,0,8 0-255`: the first byte after the TCP header,");
    o.pre_note("# which a bare ACK does not have, so it is not queued). A plain SYN is not: where the");
    o.pre_note("# flight's sequence numbers start is what the server's SYN-ACK acknowledges (queued");
    o.pre_note("# with its replies).");
    o.pre_rule(fmt::format("tcp dport {} ct direction original {} @ih,0,8 0-255 queue num {}", ports, guarded,
                           c.queue_num));
  } else {
    o.pre_note("# --queue-backend xt: the queue is iptables-nft's (this kernel's nftables has no queue");
    o.pre_note(fmt::format("# expression), in mangle at priority -150, after this chain: load `nft-rules{} --print",
                           o.host ? " --host --sni-guard" : ""));
    o.pre_note("# iptables`.");
  }

  o.note("# The first-flight guard (--sni-guard), after the queue: dnsward's verdict (the packet");
  o.note(fmt::format("# mark it gave, 0x{:08x} allowed, 0x{:08x} rejected; the guard chain cleared any other)",
                     m.allowed, m.rejected));
  o.note("# moves into the conntrack mark of a guarded connection, which is never queued again.");
  mark_rules(o.rule, "ct direction original " + guarded + " ");
  o.note("# A rejected connection is reset (a queue verdict cannot send a reset).");
  o.reset(fmt::format("tcp dport {} ct direction original ct mark & {} == 0x{:08x}", ports, verdicts, m.rejected));
  o.note("# Payload to a vouched destination on a connection not judged (not queued: the queue");
  o.note("# rule is missing, or dnsward could not read the packet) never leaves; but for a packet");
  o.note("# marked with both verdict bits: a flight that passed, on a connection watched until");
  o.note("# the server's packets show it read that flight (and, after a TLS 1.3 ClientHello,");
  o.note("# whether it asks for a second one, RFC 8446 4.1.4). QUIC (HTTP/3) carries its");
  o.note("# ClientHello in encrypted Initial packets: rejected, clients fall back to TCP, where");
  o.note("# the guard reads it.");
  o.rule(fmt::format("tcp dport {} ct direction original {} meta mark & {} != {} @ih,0,8 0-255 counter drop", ports,
                     guarded, verdicts, verdicts));
  for (const auto& f : o.families)
    o.rule(fmt::format("udp dport {} {} counter reject", tls, o.vouched(f.first, *f.second)));

  // The server's packets. The acknowledgment numbers a client sends prove nothing (a raw
  // socket writes any); the server's show what it received: its SYN-ACK where the client's
  // stream starts, its later packets how much of the judged flight it read, and its first
  // record whether it asked for a second ClientHello (a HelloRetryRequest).
  const std::string out = o.outside + " ";
  o.reply_pre_note("# The first-flight guard (--sni-guard): the server's end of a guarded connection (its");
  o.reply_pre_note("# FIN or reset) marks its entry closed: the client's data after it is reset (a SYN");
  o.reply_pre_note("# cookie would open a server's connection on it).");
  o.reply_pre_rule(fmt::format("{}tcp sport {} ct direction reply tcp flags & (fin | rst) != 0 ct mark & {} != 0 ct "
                               "mark set ct mark | 0x{:08x}",
                               out, ports, verdicts, m.seen));
  if (c.queue_backend == QueueBackend::Nft) {
    o.reply_pre_note("# The first-flight guard (--sni-guard): the server's packets of connections it has not");
    o.reply_pre_note("# decided go to dnsward too. A client's acknowledgment numbers can be forged (a raw");
    o.reply_pre_note("# socket); the server's show what it received: its SYN-ACK, where the client's stream");
    o.reply_pre_note("# starts; its later packets, how much of the judged flight it read; on TLS ports its");
    o.reply_pre_note("# first record, whether it asked for a second ClientHello (RFC 8446 4.1.4).");
    if (o.host) {
      o.reply_pre_note(fmt::format("# Only what comes from outside ({}): a reply comes from the uplink,", o.outside));
      o.reply_pre_note("# never from a sandbox's tap.");
    } else {
      o.reply_pre_note("# Only what comes from outside (iif != \"lo\"): a raw socket's forged \"server\" packet");
      o.reply_pre_note("# to this host's own address comes in on lo; the real server's never does.");
    }
    o.reply_pre_note("# Queued, of a connection without a verdict: on TLS ports the SYN-ACK and packets with");
    o.reply_pre_note("# payload; on HTTP ports every packet, bare ACKs too (the server's ACK of the request");
    o.reply_pre_note("# confirms it).");
    // config refuses a port in both --sni-ports and --http-ports (a flight is TLS or HTTP).
    const std::string undecided = "ct direction reply " + guarded + " ";
    for (const char* what : {"tcp flags syn ", "@ih,0,8 0-255 "})
      o.reply_pre_rule(fmt::format("{}tcp sport {} {}{}queue num {}", out, tls, undecided, what, c.queue_num));
    o.reply_pre_rule(fmt::format("{}tcp sport {} {}queue num {}", out, http, undecided, c.queue_num));
  } else {
    o.reply_pre_note("# --queue-backend xt: the queue of the server's packets is iptables-nft's, in mangle");
    o.reply_pre_note(fmt::format("# at priority -150, after this chain (`nft-rules{} --print iptables`, hooked into {}).",
                                 o.host ? " --host --sni-guard" : "", o.host ? "FORWARD" : "INPUT"));
  }
  // The mark rules behind `outside` too: only the packets the queue takes from outside carry
  // a verdict of dnsward's; the clear before the queue takes any other's bits already.
  o.reply_note("# The first-flight guard (--sni-guard), after the queue: dnsward's verdict on a");
  o.reply_note("# server's packet moves into the conntrack mark, as the client's does; only of a");
  o.reply_note(o.host ? "# packet from outside, never of a sandbox's." : "# packet from outside, never of one on lo.");
  mark_rules(o.reply_rule, out + "ct direction reply " + guarded + " ");
  // The verdict may come with a server's packet (its first record, say): dropped here, after
  // its mark moved, as is everything the server sends on a rejected connection.
  o.reply_note("# A rejected connection's server packets never reach the client (the one whose");
  o.reply_note("# verdict rejected it included).");
  o.reply_rule(fmt::format("{}tcp sport {} ct direction reply ct mark & {} == 0x{:08x} counter drop", out, ports,
                           verdicts, m.rejected));
}
}  // namespace

std::vector<XtJump> xt_guard_jumps(const ServeConfig& c) {
  if (!c.host) return {{"OUTPUT", "", "", false}, {"INPUT", "!lo", "", true}};
  // iptables spells nft's iifname wildcard `tap*` as `tap+` (check_iface_pattern allows
  // '*' only last, and no '+').
  std::string ifaces = c.sandbox_ifaces;
  if (!ifaces.empty() && ifaces.back() == '*') ifaces.back() = '+';
  return {{"FORWARD", ifaces, "", false}, {"FORWARD", "!" + ifaces, ifaces, true}};
}

std::string render_xt_rules(const ServeConfig& c, int af) {
  const GuardMarks m = *guard_mark_bits(c.guard_marks);
  const uint32_t verdicts = m.allowed | m.rejected;
  auto commas = [](const std::vector<uint16_t>& ports) {
    std::string r;
    for (const uint16_t p : ports) r += fmt::format("{}{}", r.empty() ? "" : ",", p);
    return r;
  };
  std::vector<uint16_t> all = port_numbers(c.sni_ports);
  for (const uint16_t p : port_numbers(c.http_ports))
    if (std::find(all.begin(), all.end(), p) == all.end()) all.push_back(p);
  const std::string ports = commas(all), tls = commas(port_numbers(c.sni_ports)),
                    http = commas(port_numbers(c.http_ports));
  const char* tool = af == AF_INET ? "iptables" : "ip6tables";
  std::string r;
  r += fmt::format("# Generated by `dnsward nft-rules {}--sni-guard --queue-backend xt --print {}`: the\n",
                   c.host ? "--host " : "", tool);
  r += "# first-flight guard's queue, for kernels whose nftables has no queue expression (the xt\n";
  r += "# NFQUEUE target through iptables-nft). Load it next to the nft ruleset, which rejects\n";
  r += "# and drops what this does not queue:\n";
  r += fmt::format("#   dnsward nft-rules ... --print {0} | {0}-nft-restore --noflush\n", tool);
  if (c.host) {
    r += fmt::format("# Host mode: hooked into FORWARD for what arrives on the sandboxes' interfaces ({}),\n",
                     c.sandbox_ifaces);
    r += "# and for the replies that leave on them from elsewhere.\n";
  } else {
    r += "# Hooked into OUTPUT for the client's packets and into INPUT, not from lo, for the\n";
    r += "# server's (a raw socket's forged \"server\" packet to this host comes in on lo).\n";
  }
  r += "# xt cannot read the vouched sets: it queues the connections whose SYN the nft ruleset\n";
  r += "# marked guarded (both verdict bits in the conntrack mark), and only those.\n";
  r += "# The chain is replaced on each load; the jumps to it are added again (harmless twice).\n";
  r += "# dnsward's verdict is NF_ACCEPT with a packet mark, which goes on to the next hook entry:\n";
  r += "# the nft ruleset's filter chain, which moves it into the conntrack mark (so the\n";
  r += "# connection is not queued again). Its guard chain runs before this table (at priority\n";
  r += "# -175; mangle is at -150) and clears every packet's verdict bits: none arrives forged.\n";
  r += "*mangle\n:DNSWARD_GUARD - [0:0]\n";
  // Which connections are guarded is the nft ruleset's to say, at their SYN (it reads the
  // vouched sets, which xt cannot): both verdict bits in the conntrack mark. Only those are
  // queued here. No rule here reads the packet mark: this chain queues, and dnsward's
  // verdict (NF_ACCEPT) never brings a packet back to it; the nft filter chain after it
  // moves the verdict (before, with NF_REPEAT, CONNMARK rules here did, and a packet mark
  // set with SO_MARK reached them first).
  // Of a guarded, undecided connection (both verdict bits in the conntrack mark), queued:
  // the client's packets with payload, which u32 tells by the first 4 bytes after the TCP
  // header (IPv4: past IHL*4 and doff*4; IPv6: past the fixed 40 bytes), not a bare ACK's; a
  // payload of 1 to 3 bytes is not queued either (the nft ruleset drops it as unjudged).
  // Not the client's plain SYN: where its stream starts is what the server's SYN-ACK
  // acknowledges (a raw socket forges the client's own numbers). The server's: on TLS ports
  // its SYN-ACK and packets with payload; on HTTP ports every packet, its bare ACK of the
  // request too. --ctdir keeps each side to its own.
  const std::string undecided = fmt::format("-m connmark --mark 0x{0:x}/0x{0:x} -j NFQUEUE --queue-num {1}",
                                            verdicts, c.queue_num);
  const std::string payload =
      fmt::format("-m u32 --u32 \"{}\" ", af == AF_INET ? "0>>22&0x3C@12>>26&0x3C@0&0x0=0" : "52>>26&0x3C@40&0x0=0");
  r += fmt::format("-A DNSWARD_GUARD -p tcp -m multiport --dports {} {}-m conntrack --ctdir ORIGINAL {}\n", ports,
                   payload, undecided);
  // config refuses a port in both --sni-ports and --http-ports (a flight is TLS or HTTP).
  for (const std::string& what : {std::string("--tcp-flags SYN SYN "), payload})
    r += fmt::format("-A DNSWARD_GUARD -p tcp -m multiport --sports {} {}-m conntrack --ctdir REPLY {}\n", tls, what,
                     undecided);
  r += fmt::format("-A DNSWARD_GUARD -p tcp -m multiport --sports {} -m conntrack --ctdir REPLY {}\n", http, undecided);
  // Each hook's jump takes its side's packets only: a server in the guest (or a guest's, in
  // host mode) on a guarded port has its clients' packets come in and its replies go out,
  // and neither is the guard's.
  for (const XtJump& j : xt_guard_jumps(c)) {
    const std::string ifaces = xt_iface_options(j);
    r += fmt::format("-I {}{}{} -m conntrack --ctdir {} -j DNSWARD_GUARD\n", j.chain, ifaces.empty() ? "" : " ",
                     ifaces, j.reply ? "REPLY" : "ORIGINAL");
  }
  r += "COMMIT\n";
  return r;
}

std::string render_nft_rules(const ServeConfig& c) {
  if (c.host) return render_host_rules(c);
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
  // With --sni-guard, a second chain: the server's packets, which the output hook never
  // sees, on the input hook (policy accept: it judges the guard's replies, not ingress);
  // and before the output and input chains, the guard's chains of each hook, where every
  // packet's verdict bits are cleared before the queue (kGuestChains).
  std::vector<Line> input, guard_output, guard_input;
  if (c.sni_guard) {
    auto to = [](std::vector<Line>& v, bool is_rule) {
      return [&v, is_rule](std::string t) { v.push_back({std::move(t), is_rule}); };
    };
    for (std::vector<Line>* v : {&guard_output, &guard_input}) {
      guard_clear_rule(c, to(*v, false), to(*v, true));
      v->push_back({"", false});
    }
    std::vector<std::pair<const char*, const std::string*>> families;
    if (v4) families.emplace_back("ip", &c.nft_set4);
    if (v6) families.emplace_back("ip6", &c.nft_set6);
    render_guard_rules(c, GuardRuleOut{
        .note = note,
        .rule = rule,
        .pre_note = to(guard_output, false),
        .pre_rule = to(guard_output, true),
        .reset = [&](const std::string& match) {
          rule(match + " counter log prefix \"dnsward-sni-reject: \" reject with tcp reset");
        },
        .vouched = [](const char* proto, const std::string& set) { return fmt::format("{} daddr @{}", proto, set); },
        .reply_note = to(input, false),
        .reply_rule = to(input, true),
        .reply_pre_note = to(guard_input, false),
        .reply_pre_rule = to(guard_input, true),
        .outside = "iif != \"lo\"",
        .families = families,
        .host = false});
    note("");
  }
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
  if (!c.sni_guard) {
    note("# The holes dnsward punched, one per answered address.");
    if (v4) rule(fmt::format("ip daddr @{} accept", c.nft_set4));
    if (v6) rule(fmt::format("ip6 daddr @{} accept", c.nft_set6));
  } else {
    // ports= (issue 13): with the guard, a vouched address is open on the guarded ports only,
    // where the rules above judged the first flight; other ports only as (address . protocol
    // . port) elements of entries that name them. These come after the guard's rules, whose
    // queue matches only addresses in the address set: so the port element's rule wants its
    // address there too, or a port element outliving its address (each key is refreshed on
    // its own) would open a guarded port unjudged (a review of the vouch path).
    note("# The holes dnsward punched, one per answered address: on the guarded ports only");
    note("# (judged above), and on the ports an entry names (ports=), one element per port.");
    for (const auto& [yes, set, proto] : {std::tuple{v4, &c.nft_set4, "ip"}, std::tuple{v6, &c.nft_set6, "ip6"}}) {
      if (!yes) continue;
      rule(fmt::format("{} daddr @{} tcp dport {} accept", proto, *set, port_set(c)));
      rule(fmt::format("{0} daddr @{1} {0} daddr . meta l4proto . th dport @{2} accept", proto, *set,
                       ports_set_name(*set)));
    }
  }
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

  // The table as printed, line by line.
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
  if (c.sni_guard) {
    table.push_back({1, "# With the guard: (address . protocol . port) of the entries with ports=, each", Kind::Note});
    table.push_back({1, "# vouched with its address and for as long.", Kind::Note});
    for (const auto& [yes, name, type] : {std::tuple{v4, &c.nft_set4, "ipv4_addr"}, std::tuple{v6, &c.nft_set6, "ipv6_addr"}}) {
      if (!yes) continue;
      table.push_back({1, fmt::format("set {} {{", ports_set_name(*name)), Kind::Text});
      table.push_back({2, fmt::format("type {} . inet_proto . inet_service", type), Kind::Text});
      table.push_back({2, "flags timeout", Kind::Text});
      table.push_back({2, fmt::format("size {}", c.nft_set_size), Kind::Text});
      table.push_back({1, "}", Kind::Text});
      table.push_back({0, "", Kind::Note});
    }
  }
  table.push_back({1, "chain output {", Kind::Text});
  table.push_back({2, chain_type, Kind::Text});
  table.push_back({2, "", Kind::Mark});  // the chain's comment, once the id is known
  table.push_back({0, "", Kind::Note});
  for (const Line& l : body) table.push_back({2, l.text, l.rule ? Kind::Rule : Kind::Note});
  table.push_back({1, "}", Kind::Text});
  if (c.sni_guard) {
    // The other chains of kGuestChains, in the order of their places (their marks).
    for (const auto& [k, lines] : {std::pair{kGuestChainInput, &input}, std::pair{kGuestChainGuardOutput, &guard_output},
                                   std::pair{kGuestChainGuardInput, &guard_input}}) {
      const HostChain& h = kGuestChains[k];
      table.push_back({0, "", Kind::Note});
      table.push_back({1, fmt::format("chain {} {{", h.name), Kind::Text});
      table.push_back({2, fmt::format("type {} hook {} priority {}; policy accept;", h.type,
                                      h.hook == kGuestChains[kGuestChainOutput].hook ? "output" : "input", h.priority),
                       Kind::Text});
      table.push_back({2, "", Kind::Mark});
      table.push_back({0, "", Kind::Note});
      for (const Line& l : *lines) table.push_back({2, l.text, l.rule ? Kind::Rule : Kind::Note});
      table.push_back({1, "}", Kind::Text});
    }
  }
  table.push_back({0, "}", Kind::Text});

  std::string r;
  r += "#!/usr/sbin/nft -f\n";
  r += "# Generated by `dnsward nft-rules`: default-deny egress for a sandbox whose only\n";
  r += "# resolver is dnsward. Load it before `dnsward serve` starts; loading it again\n";
  r += "# replaces it (and empties the sets: dnsward notices and vouches again).\n";
  r += fmt::format("# dnsward serve checks that the {} in force, by {} comments: keep them.\n",
                   c.sni_guard ? "chains below are" : "chain below is", c.sni_guard ? "their" : "its");
  if (!v6) r += "# A table of family ip sees IPv4 only: this ruleset leaves IPv6 alone.\n";
  if (!v4) r += "# A table of family ip6 sees IPv6 only: this ruleset leaves IPv4 alone.\n";
  r += fmt::format("table {} {}\ndelete table {} {}\n\n", family, c.nft_table, family, c.nft_table);
  // `dnsward serve` checks that this chain is in force by these marks (ruleset_check.hpp):
  // the chain's comment names the ruleset and its rule count, each rule's comment its place
  // (and with --sni-guard, its chain's place among kGuestChains).
  return print_marked(std::move(r), table, false, c.sni_guard);
}

std::string render_host_rules(const ServeConfig& c) {
  const std::string mark = fmt::format("0x{:08x}", 1u << c.host_mark_bit);
  // dnsward's ports: each family's queries go to the port it listens on there (host mode
  // listens on wildcard addresses); input lets every one of them in.
  std::optional<uint16_t> port4, port6;
  std::set<uint16_t> ports;
  for (const auto& l : c.listen) {
    auto& p = l.family() == AF_INET ? port4 : port6;
    if (!p) p = l.port();
    ports.insert(l.port());
  }
  std::string port_list;
  for (const uint16_t p : ports) port_list += (port_list.empty() ? "" : ", ") + std::to_string(p);
  if (ports.size() > 1) port_list = "{ " + port_list + " }";
  auto cidrs = [](const std::vector<std::string>& v) {
    std::string out;
    for (const auto& x : v) out += (out.empty() ? "" : ", ") + x;
    return "{ " + out + " }";
  };
  const std::string nd = "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } ip6 hoplimit 255";
  const std::string mld = "icmpv6 type { mld-listener-report, mld-listener-done, mld2-listener-report } "
                          "ip6 saddr { fe80::/10, :: } ip6 daddr ff02::/16 ip6 hoplimit 1";

  std::vector<Out> t;
  std::vector<Out>* into = &t;  // where note() and rule() write: t, or a part printed later
  auto text = [&](int indent, std::string s) { t.push_back({indent, std::move(s), Kind::Text}); };
  auto note = [&](std::string s) { into->push_back({s.empty() ? 0 : 2, std::move(s), Kind::Note}); };
  auto rule = [&](std::string s) { into->push_back({2, std::move(s), Kind::Rule}); };
  // A logged verdict is two rules: the log line, at most 10 a second (a guest decides how
  // many packets it sends, and the host's log is not its to flood), then the counted
  // verdict. One rule cannot do both: `limit` is a match, and a packet over the limit would
  // skip the verdict and fall through to the next rule.
  auto logged = [&](const std::string& match, const char* prefix, const char* verdict) {
    const std::string m = match.empty() ? "" : match + " ";
    rule(fmt::format("{}limit rate 10/second burst 20 packets log prefix \"{}\"", m, prefix));
    rule(fmt::format("{}counter {}", m, verdict));
  };
  auto set = [&](const std::string& name, const char* type, bool timeout, uint32_t size) {
    text(1, fmt::format("set {} {{", name));
    text(2, fmt::format("type {}", type));
    if (timeout) text(2, "flags timeout");
    text(2, fmt::format("size {}", size));
    text(1, "}");
    t.push_back({0, "", Kind::Note});
  };
  // Opens chain k of kHostChains: its name, its hook line, its mark, the rules of head (the
  // guard's for what comes back to the sandboxes), then the rule for traffic that is not the
  // sandboxes': the host's own goes on untouched.
  auto chain = [&](std::size_t k, const std::vector<Out>& head = {}) {
    const HostChain& h = kHostChains[k];
    static constexpr const char* kHooks[] = {"prerouting", "input", "forward"};
    text(1, fmt::format("chain {} {{", h.name));
    text(2, fmt::format("type {} hook {} priority {}; policy accept;", h.type, kHooks[h.hook], h.priority));
    t.push_back({2, "", Kind::Mark});  // the chain's comment, once the id is known
    t.push_back({0, "", Kind::Note});
    if (!head.empty()) {
      t.insert(t.end(), head.begin(), head.end());
      note("");
    }
    note("# Only traffic from the sandboxes' interfaces: the host's own is left as it is.");
    rule(fmt::format("iifname != \"{}\" return", c.sandbox_ifaces));
  };
  auto end_chain = [&](bool last) {
    text(1, "}");
    if (!last) t.push_back({0, "", Kind::Note});
  };

  text(0, fmt::format("table inet {} {{", c.nft_table));
  t.push_back({1, "# Filled by dnsward: (guest address . destination) pairs it vouched for in answers", Kind::Note});
  t.push_back({1, "# to that guest, each for its TTL plus grace. One sandbox's lookups open nothing", Kind::Note});
  t.push_back({1, "# for another.", Kind::Note});
  set(c.nft_set4, "ipv4_addr . ipv4_addr", true, c.host_set_size);
  set(c.nft_set6, "ipv6_addr . ipv6_addr", true, c.host_set_size);
  if (c.sni_guard) {  // ports= (issue 13): keyed by guest, as the pairs above
    t.push_back({1, "# With the guard: (guest . destination . protocol . port) of the entries with ports=.", Kind::Note});
    set(ports_set_name(c.nft_set4), "ipv4_addr . ipv4_addr . inet_proto . inet_service", true, c.host_set_size);
    set(ports_set_name(c.nft_set6), "ipv6_addr . ipv6_addr . inet_proto . inet_service", true, c.host_set_size);
  }
  t.push_back({1, "# Filled by dnsward: (interface . guest address) of each registered sandbox, its tap", Kind::Note});
  t.push_back({1, "# and its address(es). No flags: an interval would turn one pair into a range.", Kind::Note});
  set(kSandboxSet4, "ifname . ipv4_addr", false, 65536);
  set(kSandboxSet6, "ifname . ipv6_addr", false, 65536);

  chain(kHostChainPrerouting);
  note("");
  note("# Anti-spoofing, before conntrack (priority raw) and so before any `ct state` accept:");
  note("# a packet whose (interface . source address) is not a registered sandbox's goes no");
  note("# further. dnsward tells sandboxes apart by source address, so this is what makes that");
  note("# trustworthy; and deleting a sandbox's pair cuts its established connections at once.");
  logged(fmt::format("iifname . ip saddr != @{}", kSandboxSet4), "dnsward-host-spoof: ", "drop");
  note("# IPv6 needs neighbour discovery (RFC 4861, hop limit 255, 7.1; not router adverts: a");
  note("# guest is no router) and MLD reports (RFC 2710, RFC 3810: to a link-scope group, hop");
  note("# limit 1) from link-local addresses or :: (RFC 3590) before any registered one. They");
  note("# stay on the link: input takes them, forward drops link-local sources.");
  rule(fmt::format("ip6 saddr {{ fe80::/10, :: }} {} accept", nd));
  rule(fmt::format("{} accept", mld));
  logged(fmt::format("iifname . ip6 saddr != @{}", kSandboxSet6), "dnsward-host-spoof: ", "drop");
  note("");
  note(fmt::format("# The mark (bit {} of --host-mark) tells dnsward's TCP listener that a connection came", c.host_mark_bit));
  note("# from a sandbox interface (SO_MARK with net.ipv4.tcp_fwmark_accept=1): TCP carries no PKTINFO.");
  rule(fmt::format("meta mark set meta mark or {}", mark));
  end_chain(false);

  chain(kHostChainRedirect);
  note("");
  note("# Every DNS query goes to dnsward, whatever resolver the guest names (its resolv.conf");
  note("# is the guest's to change): redirected to dnsward's port on the address of the");
  note("# interface it came in on. It then goes through input, never forward.");
  for (const auto& [nfproto, port] : {std::pair{"ipv4", port4}, std::pair{"ipv6", port6}})
    if (port) rule(fmt::format("meta nfproto {} meta l4proto {{ udp, tcp }} th dport 53 redirect to :{}", nfproto, *port));
  end_chain(false);

  chain(kHostChainInput);
  note("");
  note("# What a sandbox may send the host itself: DNS to dnsward (redirected above), replies,");
  note("# and what IPv6 needs on a link (as in prerouting). Nothing else of the host's is theirs.");
  rule(fmt::format("meta l4proto {{ udp, tcp }} th dport {} accept", port_list));
  rule("ct state established,related accept");
  rule(fmt::format("{} accept", nd));
  rule(fmt::format("{} accept", mld));
  logged("meta l4proto tcp", "dnsward-host-input: ", "reject with tcp reset");
  logged("", "dnsward-host-input: ", "reject with icmpx type admin-prohibited");
  end_chain(false);

  // The guard's rules: the client's (from the sandboxes) in the forward chain's body, the
  // server's at its head, before the host's own traffic returns (replies come from the
  // uplink). Keyed (guest . destination): a name bound for one sandbox lets no other through.
  // The guard's chain on the forward hook (guard_forward, before the queue): every packet's
  // verdict bits cleared, the server's packets queued (at its head, as in forward), then the
  // client's rules that come before the queue, and the queue.
  std::vector<Out> guard, replies, pre_head, pre;
  if (c.sni_guard) {
    auto to = [](std::vector<Out>& v, Kind kind) {
      return [&v, kind](std::string s) { v.push_back({s.empty() ? 0 : 2, std::move(s), kind}); };
    };
    guard_clear_rule(c, to(pre_head, Kind::Note), to(pre_head, Kind::Rule));
    pre_head.push_back({0, "", Kind::Note});
    into = &guard;
    render_guard_rules(c, GuardRuleOut{
        .note = note,
        .rule = rule,
        .pre_note = to(pre, Kind::Note),
        .pre_rule = to(pre, Kind::Rule),
        .reset = [&](const std::string& match) { logged(match, "dnsward-sni-reject: ", "reject with tcp reset"); },
        .vouched = [](const char* proto,
                      const std::string& name) { return fmt::format("{0} saddr . {0} daddr @{1}", proto, name); },
        .reply_note = [&](std::string s) { replies.push_back({s.empty() ? 0 : 2, std::move(s), Kind::Note}); },
        .reply_rule = [&](std::string s) { replies.push_back({2, std::move(s), Kind::Rule}); },
        .reply_pre_note = to(pre_head, Kind::Note),
        .reply_pre_rule = to(pre_head, Kind::Rule),
        .outside = fmt::format("iifname != \"{}\"", c.sandbox_ifaces),
        .families = {{"ip", &c.nft_set4}, {"ip6", &c.nft_set6}},
        .host = true});
    into = &t;
  }
  chain(kHostChainForward, replies);
  note("");
  note("# Link-local sources never leave their link (prerouting let them in for ND and MLD).");
  rule("ip6 saddr { fe80::/10, :: } counter drop");
  note("# DNS goes to dnsward only (what is left of port 53 here is of a family it does not");
  note("# listen on); DNS over TLS or QUIC (853) would resolve around it.");
  logged("meta l4proto { udp, tcp } th dport { 53, 853 }", "dnsward-host-dns-drop: ", "drop");
  t.insert(t.end(), guard.begin(), guard.end());
  if (!c.nft_allow.empty()) {
    note("# Always reachable (--allow), special-purpose or not.");
    for (const auto& a : c.nft_allow) rule(fmt::format("{} daddr {} accept", is_v6_cidr(a) ? "ip6" : "ip", a));
  }
  note("# Loopback, link-local with the cloud metadata service at 169.254.169.254, multicast and");
  note("# reserved addresses, and their IPv6 forms: never, whatever was vouched. The other");
  note("# special-purpose ranges (the host's private networks, other sandboxes) are reached only");
  note("# through a vouched pair, which dnsward makes for them only under an entry with");
  note("# private=yes (an internal mirror): everything else ends at the reject below.");
  logged(fmt::format("ip daddr {}", cidrs(never_destinations(AF_INET))), "dnsward-host-drop: ",
         "reject with icmpx type admin-prohibited");
  logged(fmt::format("ip6 daddr {}", cidrs(never_destinations(AF_INET6))), "dnsward-host-drop: ",
         "reject with icmpx type admin-prohibited");
  note("# Connections a guest opened while the pair was vouched for outlive its expiry, in the");
  note("# direction the guest opened them only (a reply to a flow a remote started would be a");
  note("# way out to any address). After anti-spoofing: a removed sandbox keeps none.");
  rule("ct direction original ct state established,related accept");
  if (!c.sni_guard) {
    note("# The holes dnsward punched: this guest, this destination. UDP 443 (QUIC) too, only here.");
    rule(fmt::format("ip saddr . ip daddr @{} accept", c.nft_set4));
    rule(fmt::format("ip6 saddr . ip6 daddr @{} accept", c.nft_set6));
  } else {
    // ports= (issue 13), as in render_nft_rules: the guarded ports, and the ports= elements.
    note("# The holes dnsward punched: this guest, this destination, on the guarded ports, and on");
    note("# the ports its entry names (ports=), one element per port.");
    for (const char* f : {"ip", "ip6"}) {
      const std::string& set = f[2] ? c.nft_set6 : c.nft_set4;
      rule(fmt::format("{0} saddr . {0} daddr @{1} tcp dport {2} accept", f, set, port_set(c)));
      rule(fmt::format("{0} saddr . {0} daddr @{1} {0} saddr . {0} daddr . meta l4proto . th dport @{2} accept", f,
                       set, ports_set_name(set)));
    }
  }
  note("# Everything else: counted, logged, and rejected so that clients fail fast.");
  logged("meta l4proto tcp", "dnsward-host-drop: ", "reject with tcp reset");
  logged("", "dnsward-host-drop: ", "reject with icmpx type admin-prohibited");
  end_chain(!c.sni_guard);
  if (c.sni_guard) {
    chain(kHostChainGuard, pre_head);
    note("");
    t.insert(t.end(), pre.begin(), pre.end());
    end_chain(true);
  }
  text(0, "}");

  std::string r;
  r += "#!/usr/sbin/nft -f\n";
  r += "# Generated by `dnsward nft-rules --host`: the host's enforcement for sandboxes on\n";
  r += fmt::format("# interfaces {} (taps): anti-spoofing, DNS redirected to dnsward, and only the\n", c.sandbox_ifaces);
  r += "# (guest . destination) pairs dnsward vouched for forwarded. The host's other traffic\n";
  r += "# passes untouched. Load it before `dnsward serve --host` starts; loading it again\n";
  r += "# replaces it (and empties the sets: dnsward notices and fills them again).\n";
  r += "# dnsward serve checks that the chains below are in force, by their comments: keep them.\n";
  r += fmt::format("table inet {}\ndelete table inet {}\n\n", c.nft_table, c.nft_table);
  return print_marked(std::move(r), t, true, c.sni_guard);
}

std::string nft_rules_help() {
  return "usage: dnsward nft-rules [OPTION]...\n\n"
         "Prints an nftables ruleset for a sandbox whose only resolver is dnsward: loopback and\n"
         "established connections allowed; DNS only to dnsward's --listen addresses, and from\n"
         "--user only to the --upstream servers; addresses in the sets dnsward fills allowed;\n"
         "--allow CIDRs allowed; everything else counted, logged and rejected. The options are\n"
         "those of `dnsward serve`, with the same defaults. Check it with `nft -c -f -`.\n"
         "Its chain and rules carry comments by which `dnsward serve` sees that it is in force.\n"
         "With --sni-guard three more chains: input, for the servers' packets, and before\n"
         "output and input the guard chains, which clear every packet's verdict bits and\n"
         "queue (--print iptables|ip6tables: the xt queue, hooked into OUTPUT and INPUT).\n"
         "With --host it prints the host's ruleset instead: for sandboxes on --sandbox-ifaces,\n"
         "sources checked against the registered (interface . address) pairs, DNS redirected\n"
         "to dnsward's --listen port, only vouched (guest . destination) pairs forwarded; with\n"
         "--sni-guard the guard's rules in its forward chain and guard_forward (and --print\n"
         "iptables|ip6tables the xt queue, hooked into FORWARD in on --sandbox-ifaces and out\n"
         "to them).\n\n"
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
  if (c.print != RulesFormat::Nft) {
    const int af = c.print == RulesFormat::Iptables ? AF_INET : AF_INET6;
    if (!c.sni_guard || c.queue_backend != QueueBackend::Xt) {
      std::fprintf(stderr, "dnsward: nft-rules: --print %s is the xt queue of --sni-guard --queue-backend xt; "
                           "give both\n", af == AF_INET ? "iptables" : "ip6tables");
      return 2;
    }
    std::fputs(render_xt_rules(c, af).c_str(), stdout);
    return 0;
  }
  if (c.host) {
    // The host ruleset leaves the host's own traffic (dnsward's to its upstreams) alone.
    std::fputs(render_host_rules(c).c_str(), stdout);
    return 0;
  }
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
