#include "dnsward/queue_rules.hpp"

#include <arpa/inet.h>
#include <libnftnl/expr.h>
#include <libnftnl/rule.h>
#include <linux/netfilter.h>
#include <linux/netlink.h>
#include <linux/netfilter/nf_tables.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <system_error>

#include <fmt/format.h>

#include "dnsward/netlink_batch.hpp"

namespace dnsward {

std::string xt_iface_text(const void* data, std::size_t len, bool negated) {
  const auto* d = static_cast<const char*>(data);
  if (!d) len = 0;
  const auto name = std::size_t(std::find(d, d + len, '\0') - d);
  // iptables-nft compares an exact name with its NUL, a `+` prefix without (the data of
  // `-i tap+` is "tap"; of `-i lo`, "lo\0").
  return std::string(negated ? "!" : "") + std::string(d, name) + (name == len ? "+" : "");
}

std::string xt_iface_options(const XtJump& j) {
  std::string r;
  for (const auto& [flag, spec] : {std::pair{"-i", &j.in}, std::pair{"-o", &j.out}}) {
    if (spec->empty()) continue;
    const bool negated = (*spec)[0] == '!';
    r += fmt::format("{}{}{} {}", r.empty() ? "" : " ", negated ? "! " : "", flag, spec->substr(negated ? 1 : 0));
  }
  return r;
}

std::string judge_xt_queue(const std::vector<XtRuleSeen>& rules, const std::vector<XtJump>& jumps, uint16_t queue_num) {
  std::size_t queues = 0;
  for (const XtRuleSeen& r : rules) {
    // `nft-rules` before dnsward's verdict became NF_ACCEPT printed CONNMARK rules here that
    // moved the packet mark into the conntrack mark, read where the packet was queued. The
    // nft ruleset's filter chain does that now, after its guard chain cleared forged marks:
    // such rules are of another layout than the nft ruleset loaded beside them.
    if (r.chain == kXtGuardChain && r.connmark)
      return fmt::format("chain {} holds CONNMARK rules: it was printed by an older `nft-rules`, for verdicts "
                         "repeated in this chain (NF_REPEAT); load it again",
                         kXtGuardChain);
    if (r.chain != kXtGuardChain || !r.nfqueue) continue;
    // --queue-bypass would pass packets on unjudged while no dnsward listens: fail open.
    if (r.bypass) return fmt::format("chain {} queues with --queue-bypass (fail open)", kXtGuardChain);
    if (r.queue_num != queue_num)
      return fmt::format("chain {} queues to {}, not --queue-num {}", kXtGuardChain, r.queue_num, queue_num);
    ++queues;
  }
  if (queues < kXtGuardQueues)
    return fmt::format("chain {} has {} NFQUEUE rule{} to queue {} (the client's payload's, and the server's "
                       "SYN-ACK's, payload's and HTTP packets' are needed)",
                       kXtGuardChain, queues, queues == 1 ? "" : "s", queue_num);
  // Each hook's jump, told apart by its interfaces (host mode jumps from FORWARD twice): the
  // server's packets that confirm a verdict come only through the reply jump, and in-guest
  // only not from lo, where a raw socket's forged "server" packet would come in.
  for (const XtJump& j : jumps) {
    const bool found = std::any_of(rules.begin(), rules.end(), [&](const XtRuleSeen& r) {
      return r.chain == j.chain && r.jump == kXtGuardChain && r.in == j.in && r.out == j.out;
    });
    if (!found) {
      const std::string ifaces = xt_iface_options(j);
      return fmt::format("chain {} has no jump to {}{}{} (the {}'s packets)", j.chain, kXtGuardChain,
                         ifaces.empty() ? "" : " with ", ifaces, j.reply ? "server" : "client");
    }
  }
  return "";
}

bool read_xt_mangle(uint8_t family, std::vector<XtRuleSeen>& out, std::string& err) {
  try {
    NetlinkSocket nl(family);
    const int e = nl.request(
        NFT_MSG_GETRULE, NLM_F_DUMP,
        [family](nlmsghdr* nlh) {
          nftnl_rule* r = nftnl_rule_alloc();
          nftnl_rule_set_str(r, NFTNL_RULE_TABLE, "mangle");
          nftnl_rule_set_u32(r, NFTNL_RULE_FAMILY, family);
          nftnl_rule_nlmsg_build_payload(nlh, r);
          nftnl_rule_free(r);
        },
        [&out](const nlmsghdr* h) {
          nftnl_rule* r = nftnl_rule_alloc();
          if (nftnl_rule_nlmsg_parse(h, r) >= 0 && nftnl_rule_is_set(r, NFTNL_RULE_TABLE) &&
              std::strcmp(nftnl_rule_get_str(r, NFTNL_RULE_TABLE), "mangle") == 0 &&
              nftnl_rule_is_set(r, NFTNL_RULE_CHAIN)) {
            XtRuleSeen seen;
            seen.chain = nftnl_rule_get_str(r, NFTNL_RULE_CHAIN);
            // `-i`/`-o` are a `meta load iifname/oifname` into a register and a `cmp` of it.
            std::string* iface = nullptr;
            uint32_t iface_reg = 0;
            nftnl_expr_iter* it = nftnl_expr_iter_create(r);
            for (nftnl_expr* x = nftnl_expr_iter_next(it); x; x = nftnl_expr_iter_next(it)) {
              const char* name = nftnl_expr_get_str(x, NFTNL_EXPR_NAME);
              if (!name) continue;
              if (std::strcmp(name, "meta") == 0 && nftnl_expr_is_set(x, NFTNL_EXPR_META_DREG)) {
                const uint32_t key = nftnl_expr_get_u32(x, NFTNL_EXPR_META_KEY);
                iface = key == NFT_META_IIFNAME ? &seen.in : key == NFT_META_OIFNAME ? &seen.out : nullptr;
                iface_reg = nftnl_expr_get_u32(x, NFTNL_EXPR_META_DREG);
              } else if (std::strcmp(name, "cmp") == 0 && iface &&
                         nftnl_expr_get_u32(x, NFTNL_EXPR_CMP_SREG) == iface_reg) {
                uint32_t len = 0;
                const void* data = nftnl_expr_get_data(x, NFTNL_EXPR_CMP_DATA, &len);
                *iface = xt_iface_text(data, len, nftnl_expr_get_u32(x, NFTNL_EXPR_CMP_OP) == NFT_CMP_NEQ);
                iface = nullptr;
              } else if (std::strcmp(name, "immediate") == 0 && nftnl_expr_is_set(x, NFTNL_EXPR_IMM_VERDICT) &&
                         int(nftnl_expr_get_u32(x, NFTNL_EXPR_IMM_VERDICT)) == NFT_JUMP &&
                         nftnl_expr_is_set(x, NFTNL_EXPR_IMM_CHAIN)) {
                seen.jump = nftnl_expr_get_str(x, NFTNL_EXPR_IMM_CHAIN);
              } else if (std::strcmp(name, "target") == 0 && nftnl_expr_is_set(x, NFTNL_EXPR_TG_NAME) &&
                         std::strcmp(nftnl_expr_get_str(x, NFTNL_EXPR_TG_NAME), "CONNMARK") == 0) {
                seen.connmark = true;
              } else if (std::strcmp(name, "target") == 0 && nftnl_expr_is_set(x, NFTNL_EXPR_TG_NAME) &&
                         std::strcmp(nftnl_expr_get_str(x, NFTNL_EXPR_TG_NAME), "NFQUEUE") == 0) {
                // xt_NFQ_info (revision 0) begins with the queue number; revision 2 adds a
                // bypass field and revision 3 flags, whose bit 0 is bypass
                // (linux/netfilter/xt_NFQUEUE.h), each a host-order u16.
                seen.nfqueue = true;
                uint32_t len = 0;
                const auto* info = static_cast<const uint8_t*>(nftnl_expr_get_data(x, NFTNL_EXPR_TG_INFO, &len));
                const uint32_t rev = nftnl_expr_is_set(x, NFTNL_EXPR_TG_REV) ? nftnl_expr_get_u32(x, NFTNL_EXPR_TG_REV) : 0;
                uint16_t f[3] = {0, 0, 0};
                if (info) std::memcpy(f, info, std::min<std::size_t>(len, sizeof f));
                seen.queue_num = f[0];
                seen.bypass = rev >= 2 && len >= 6 && (f[2] & 1);
                if (!info || len < 2) seen.nfqueue = false;  // unreadable: counts as no queue
              }
            }
            nftnl_expr_iter_destroy(it);
            out.push_back(std::move(seen));
          }
          nftnl_rule_free(r);
          return true;
        },
        err);
    if (e == ENOENT) return true;  // no mangle table in this family: no rules
    if (e != 0) {
      if (e > 0) err = std::string("listing table mangle: ") + std::strerror(e);
      return false;
    }
    return true;
  } catch (const std::system_error& e) {
    err = std::string("cannot open a netfilter netlink socket: ") + e.what();
    return false;
  }
}

}  // namespace dnsward
