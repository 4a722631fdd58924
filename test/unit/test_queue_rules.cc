// The judge of the xt queue's rules (queue_rules.hpp): what serve --queue-backend xt refuses
// to start without. It is fed the rules `nft-rules --print iptables|ip6tables` prints, read
// back as the kernel holds them (chain, jump, interfaces, NFQUEUE), then those with one part
// missing or changed.
#include <doctest/doctest.h>

#include <sys/socket.h>

#include <algorithm>
#include <functional>
#include <sstream>

#include "dnsward/nft_rules.hpp"
#include "dnsward/queue_rules.hpp"

using namespace dnsward;

namespace {
ServeConfig guard_config(std::vector<std::string> args) {
  args.insert(args.end(), {"--sni-guard", "--queue-backend", "xt"});
  const auto r = parse_nft_rules(args, "/nonexistent/resolv.conf");
  REQUIRE_MESSAGE(r.config, r.error);
  return *r.config;
}
const std::vector<std::string> kHost = {"--host", "--listen", "0.0.0.0:5353", "--listen", "[::]:5353"};

/// The rules of an iptables-restore text as the kernel holds them once loaded: each `-A`/`-I`
/// line's chain, its jump (`-j` to a chain of ours), its `-i`/`-o` as xt_iface_text spells
/// them, and its NFQUEUE target.
std::vector<XtRuleSeen> seen_from(const std::string& text) {
  std::vector<XtRuleSeen> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("-A ", 0) != 0 && line.rfind("-I ", 0) != 0) continue;
    std::istringstream words(line);
    std::vector<std::string> w;
    for (std::string x; words >> x;) w.push_back(x);
    XtRuleSeen r;
    r.chain = w.at(1);
    for (std::size_t i = 2; i + 1 < w.size(); ++i) {
      const bool negated = w[i] == "!";
      if (negated) ++i;  // `! -i lo`: the option after it, inverted
      const std::string& flag = w.at(i);
      const std::string& value = w.at(i + 1);
      if (flag == "-i" || flag == "-o") {
        // As iptables-nft stores it: a `+` prefix without its NUL, an exact name with it.
        const bool prefix = value.back() == '+';
        const std::string data = prefix ? value.substr(0, value.size() - 1) : value + '\0';
        (flag == "-i" ? r.in : r.out) = xt_iface_text(data.data(), data.size(), negated);
      }
      if (w[i] == "-j" && w[i + 1] == kXtGuardChain) r.jump = kXtGuardChain;
      if (w[i] == "-j" && w[i + 1] == "NFQUEUE") r.nfqueue = true;
      if (w[i] == "--queue-num") r.queue_num = uint16_t(std::stoi(w[i + 1]));
      if (w[i] == "--queue-bypass") r.bypass = true;
      if (w[i] == "-j" && w[i + 1] == "CONNMARK") r.connmark = true;
    }
    out.push_back(r);
  }
  return out;
}

/// The rules as printed for args, and the jumps serve wants for the same args.
struct Printed {
  std::vector<XtRuleSeen> rules;
  std::vector<XtJump> jumps;
};
Printed printed(std::vector<std::string> args, int af = AF_INET) {
  const ServeConfig c = guard_config(std::move(args));
  return {seen_from(render_xt_rules(c, af)), xt_guard_jumps(c)};
}

/// The index of the first rule of p that pred picks.
template <typename Pred>
std::size_t index_of(const std::vector<XtRuleSeen>& rules, Pred pred) {
  const auto at = std::find_if(rules.begin(), rules.end(), pred);
  REQUIRE(at != rules.end());
  return std::size_t(at - rules.begin());
}
}  // namespace

TEST_CASE("an interface name is read back as iptables spells it: exact with its NUL, a prefix without") {
  CHECK(xt_iface_text("lo\0", 3, false) == "lo");
  CHECK(xt_iface_text("lo\0", 3, true) == "!lo");
  CHECK(xt_iface_text("tap", 3, false) == "tap+");
  CHECK(xt_iface_text("tap", 3, true) == "!tap+");
  CHECK(xt_iface_text("vm-7\0\0\0\0", 8, false) == "vm-7");  // padded to a register's width
  CHECK(xt_iface_text(nullptr, 0, false) == "+");            // `-i +`: every interface
  CHECK(xt_iface_options({"FORWARD", "!tap+", "tap+", true}) == "! -i tap+ -o tap+");
  CHECK(xt_iface_options({"INPUT", "!lo", "", true}) == "! -i lo");
  CHECK(xt_iface_options({"OUTPUT", "", "", false}) == "");
}

TEST_CASE("the xt queue as printed is loaded, in-guest and in host mode, for each family") {
  for (const int af : {AF_INET, AF_INET6})
    for (const bool host : {false, true}) {
      CAPTURE(af);
      CAPTURE(host);
      const Printed p = printed(host ? kHost : std::vector<std::string>{}, af);
      CHECK(judge_xt_queue(p.rules, p.jumps, 53) == "");
      REQUIRE(p.jumps.size() == 2);
    }
  // The jumps serve wants are the ones printed: in-guest OUTPUT, and INPUT not from lo; in
  // host mode FORWARD from the sandboxes' interfaces, and FORWARD to them from elsewhere.
  const auto guest = printed({}).jumps;
  CHECK(guest[0].chain == "OUTPUT");
  CHECK(guest[0].in.empty());
  CHECK_FALSE(guest[0].reply);
  CHECK(guest[1].chain == "INPUT");
  CHECK(guest[1].in == "!lo");
  CHECK(guest[1].reply);
  const auto host = printed({"--host", "--listen", "0.0.0.0:5353", "--sandbox-ifaces", "vm-*"}).jumps;
  CHECK(host[0].chain == "FORWARD");
  CHECK(host[0].in == "vm-+");
  CHECK(host[0].out.empty());
  CHECK(host[1].chain == "FORWARD");
  CHECK(host[1].in == "!vm-+");
  CHECK(host[1].out == "vm-+");
  CHECK(host[1].reply);
  CHECK(judge_xt_queue(printed({"--queue-num", "7"}).rules, printed({}).jumps, 7) == "");
}

TEST_CASE("the xt judge names each missing or changed part of the queue") {
  const Printed guest = printed({});
  const Printed host = printed(kHost);
  const std::string few = " (the client's payload's, and the server's SYN-ACK's, payload's and HTTP packets' are needed)";
  struct Case {
    const char* what;
    const Printed* p;
    std::function<void(std::vector<XtRuleSeen>&)> change;
    std::string says;
  };
  auto erase_at = [](std::vector<XtRuleSeen>& r, std::size_t i) { r.erase(r.begin() + std::ptrdiff_t(i)); };
  auto jump_from = [](const char* chain, const char* in) {
    return [=](const XtRuleSeen& r) { return r.chain == chain && r.jump == kXtGuardChain && r.in == in; };
  };
  const Case cases[] = {
      {"nothing loaded", &guest, [](auto& r) { r.clear(); },
       "chain DNSWARD_GUARD has 0 NFQUEUE rules to queue 53" + few},
      {"no OUTPUT jump", &guest, [&](auto& r) { erase_at(r, index_of(r, jump_from("OUTPUT", ""))); },
       "chain OUTPUT has no jump to DNSWARD_GUARD (the client's packets)"},
      {"no INPUT jump", &guest, [&](auto& r) { erase_at(r, index_of(r, jump_from("INPUT", "!lo"))); },
       "chain INPUT has no jump to DNSWARD_GUARD with ! -i lo (the server's packets)"},
      // Jumped to from lo too: a raw socket's forged "server" packet would be read as the server's.
      {"INPUT jump on every interface", &guest,
       [&](auto& r) { r[index_of(r, jump_from("INPUT", "!lo"))].in.clear(); },
       "chain INPUT has no jump to DNSWARD_GUARD with ! -i lo (the server's packets)"},
      {"the jumps of a host ruleset in-guest", &guest,
       [&](auto& r) {
         erase_at(r, index_of(r, jump_from("INPUT", "!lo")));
         erase_at(r, index_of(r, jump_from("OUTPUT", "")));
         for (const auto& x : printed(kHost).rules)
           if (x.jump == kXtGuardChain) r.push_back(x);
       },
       "chain OUTPUT has no jump to DNSWARD_GUARD (the client's packets)"},
      {"no FORWARD jump from the taps", &host, [&](auto& r) { erase_at(r, index_of(r, jump_from("FORWARD", "tap+"))); },
       "chain FORWARD has no jump to DNSWARD_GUARD with -i tap+ (the client's packets)"},
      {"no FORWARD jump to the taps", &host, [&](auto& r) { erase_at(r, index_of(r, jump_from("FORWARD", "!tap+"))); },
       "chain FORWARD has no jump to DNSWARD_GUARD with ! -i tap+ -o tap+ (the server's packets)"},
      // The client's jump loaded twice (an old ruleset's, harmless twice) is not the reply's.
      {"the client's FORWARD jump twice", &host,
       [&](auto& r) { r[index_of(r, jump_from("FORWARD", "!tap+"))] = r[index_of(r, jump_from("FORWARD", "tap+"))]; },
       "chain FORWARD has no jump to DNSWARD_GUARD with ! -i tap+ -o tap+ (the server's packets)"},
      {"a reply queue rule missing", &guest,
       [&](auto& r) {
         std::size_t last = 0;
         for (std::size_t i = 0; i < r.size(); ++i)
           if (r[i].nfqueue) last = i;
         erase_at(r, last);
       },
       "chain DNSWARD_GUARD has 3 NFQUEUE rules to queue 53" + few},
      // What the chain held before the server's packets were queued: the client's SYN and payload.
      {"an older ruleset's two queue rules", &host,
       [&](auto& r) {
         std::erase_if(r, [](const XtRuleSeen& x) { return x.nfqueue; });
         XtRuleSeen queue;
         queue.chain = kXtGuardChain;
         queue.nfqueue = true;
         queue.queue_num = 53;
         r.insert(r.end(), 2, queue);
       },
       "chain DNSWARD_GUARD has 2 NFQUEUE rules to queue 53" + few},
      {"another queue number", &guest,
       [](auto& r) {
         for (auto& x : r)
           if (x.nfqueue) x.queue_num = 54;
       },
       "chain DNSWARD_GUARD queues to 54, not --queue-num 53"},
      {"bypass", &host,
       [](auto& r) {
         for (auto& x : r)
           if (x.nfqueue) x.bypass = true;
       },
       "chain DNSWARD_GUARD queues with --queue-bypass (fail open)"},
      // The CONNMARK rules an older `nft-rules` printed here (for NF_REPEAT verdicts, read
      // where they queued): another layout than the nft ruleset beside it.
      {"a CONNMARK rule of an older print", &guest,
       [](auto& r) {
         XtRuleSeen x;
         x.chain = kXtGuardChain;
         x.connmark = true;
         r.insert(r.begin(), x);
       },
       "chain DNSWARD_GUARD holds CONNMARK rules: it was printed by an older `nft-rules`, for verdicts repeated in "
       "this chain (NF_REPEAT); load it again"},
      // An NFQUEUE elsewhere (another chain of mangle) is not the guard's.
      {"queues in another chain", &guest,
       [](auto& r) {
         for (auto& x : r)
           if (x.nfqueue) x.chain = "OTHER";
       },
       "chain DNSWARD_GUARD has 0 NFQUEUE rules to queue 53" + few},
  };
  for (const Case& c : cases) {
    CAPTURE(c.what);
    std::vector<XtRuleSeen> r = c.p->rules;
    REQUIRE(judge_xt_queue(r, c.p->jumps, 53) == "");
    c.change(r);
    CHECK(judge_xt_queue(r, c.p->jumps, 53) == c.says);
  }
  // Each queue rule and each jump is needed: none of them can go unnoticed.
  for (const Printed* p : {&guest, &host})
    for (std::size_t i = 0; i < p->rules.size(); ++i) {
      if (!p->rules[i].nfqueue && p->rules[i].jump.empty()) continue;
      CAPTURE(i);
      std::vector<XtRuleSeen> r = p->rules;
      erase_at(r, i);
      CHECK(judge_xt_queue(r, p->jumps, 53) != "");
    }
}
