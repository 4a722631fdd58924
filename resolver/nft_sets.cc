#include "dnsward/nft_sets.hpp"

#include <arpa/inet.h>
#include <libmnl/libmnl.h>
#include <libnftnl/chain.h>
#include <libnftnl/expr.h>
#include <libnftnl/rule.h>
#include <libnftnl/set.h>
#include <libnftnl/table.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <system_error>
#include <unordered_map>

#include "dnsward/clock.hpp"
#include "dnsward/log.hpp"

namespace dnsward {
namespace {

constexpr const char* kNeedCap =
    " (dnsward needs CAP_NET_ADMIN to manage its nftables sets; run with --no-nft to serve DNS "
    "without the firewall hook)";

// An operator-facing error for a failed netlink step, with the remedy when it is a matter
// of privilege.
std::string failure(const std::string& what, int e) {
  std::string m = what + ": " + std::strerror(e);
  if (e == EPERM || e == EACCES) m += kNeedCap;
  return m;
}

// nftables' datatype numbers for set keys (nftables src/datatype.h): what `nft list set`
// shows as ipv4_addr and ipv6_addr.
constexpr uint32_t kTypeIpv4 = 7, kTypeIpv6 = 8;
// Concatenations (host mode): nft numbers a concatenated type (a << 6) | b (datatype.h,
// CONCAT_TYPE_BITS) and pads each field to 4 bytes; ifname is 16 bytes (IFNAMSIZ).
constexpr uint32_t kTypeIfname = 41;
// ports=: inet_proto (1 byte) and inet_service (2 bytes, network order), each padded to 4.
constexpr uint32_t kTypeInetProto = 12, kTypeInetService = 13;
constexpr uint32_t concat(uint32_t a, uint32_t b) { return (a << 6) | b; }
constexpr uint32_t kIfnameLen = 16;

/// The bytes of an element's key: the address, or in host mode guest . address; a port
/// element then its protocol and port, each in a 4-byte field of its own.
uint32_t key_bytes(const SetKey& k, uint8_t* out) {
  uint32_t n = 0;
  if (k.guest.family) {
    std::memcpy(out, k.guest.bytes, k.guest.size());
    n = uint32_t(k.guest.size());
  }
  std::memcpy(out + n, k.addr.bytes, k.addr.size());
  n += uint32_t(k.addr.size());
  if (!k.port) return n;
  const uint8_t tail[8] = {k.proto, 0, 0, 0, uint8_t(k.port >> 8), uint8_t(k.port), 0, 0};
  std::memcpy(out + n, tail, sizeof tail);
  return n + uint32_t(sizeof tail);
}

struct SetDeleter {
  void operator()(nftnl_set* s) const { nftnl_set_free(s); }
};
using SetPtr = std::unique_ptr<nftnl_set, SetDeleter>;

SetPtr make_set(const NftTarget& t, const std::string& name) {
  SetPtr s(nftnl_set_alloc());
  nftnl_set_set_str(s.get(), NFTNL_SET_TABLE, t.table.c_str());
  nftnl_set_set_str(s.get(), NFTNL_SET_NAME, name.c_str());
  nftnl_set_set_u32(s.get(), NFTNL_SET_FAMILY, t.family);
  return s;
}

// Calls fn for each element of a NEWSETELEM message (a dump's or a get's reply).
template <typename Fn>
void for_each_elem(const nlmsghdr* h, Fn&& fn) {
  SetPtr got(nftnl_set_alloc());
  if (nftnl_set_elems_nlmsg_parse(h, got.get()) < 0) return;
  nftnl_set_elems_iter* it = nftnl_set_elems_iter_create(got.get());
  for (nftnl_set_elem* el = nftnl_set_elems_iter_next(it); el; el = nftnl_set_elems_iter_next(it)) fn(el);
  nftnl_set_elems_iter_destroy(it);
}

// The time an element has left, as the kernel reports it; one added without a timeout never
// expires.
uint64_t elem_left(nftnl_set_elem* el) {
  return nftnl_set_elem_is_set(el, NFTNL_SET_ELEM_EXPIRATION)
             ? nftnl_set_elem_get_u64(el, NFTNL_SET_ELEM_EXPIRATION)
             : kNoExpiry;
}

// The table an nftables table, chain, rule or set message is about, "" if it names none:
// the first attribute of each (NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, NFTA_RULE_TABLE,
// NFTA_SET_TABLE).
static_assert(NFTA_TABLE_NAME == 1 && NFTA_CHAIN_TABLE == 1 && NFTA_RULE_TABLE == 1 && NFTA_SET_TABLE == 1);
std::string event_table(const nlmsghdr* h) {
  std::string out;
  mnl_attr_parse(
      h, sizeof(nfgenmsg),
      [](const nlattr* a, void* data) -> int {
        if (mnl_attr_get_type(a) == 1 && mnl_attr_validate(a, MNL_TYPE_NUL_STRING) >= 0)
          *static_cast<std::string*>(data) = mnl_attr_get_str(a);
        return MNL_CB_OK;
      },
      &out);
  return out;
}

/// A dump of the rules of t's table (the kernel filters rule dumps by table).
void build_rule_dump(nlmsghdr* nlh, const NftTarget& t) {
  nftnl_rule* r = nftnl_rule_alloc();
  nftnl_rule_set_str(r, NFTNL_RULE_TABLE, t.table.c_str());
  nftnl_rule_set_u32(r, NFTNL_RULE_FAMILY, t.family);
  nftnl_rule_nlmsg_build_payload(nlh, r);
  nftnl_rule_free(r);
}

NetlinkSocket open_socket(uint16_t family) try {
  return NetlinkSocket(family);
} catch (const std::system_error& e) {
  throw NftError(failure("cannot open a netfilter netlink socket", e.code().value()));
}

}  // namespace

void NftSets::SocketCloser::operator()(mnl_socket* s) const { mnl_socket_close(s); }

NftSets::NftSets(NftTarget target, RefreshMode mode) : NftSets(std::move(target), mode, NftFaults{}) {}

NftSets::NftSets(NftTarget target, RefreshMode mode, NftFaults faults)
    : t_(std::move(target)), mode_(mode), nl_(open_socket(t_.family)), dump_(open_socket(t_.family)),
      event_faults_(faults.events) {
  nl_.set_faults(faults.batches);
  dump_.set_faults(faults.dumps);
  events_.reset(mnl_socket_open2(NETLINK_NETFILTER, SOCK_NONBLOCK | SOCK_CLOEXEC));
  if (!events_ || mnl_socket_bind(events_.get(), 0, MNL_SOCKET_AUTOPID) < 0)
    throw NftError(failure("cannot open the nftables event socket", errno));
  int group = NFNLGRP_NFTABLES;
  if (mnl_socket_setsockopt(events_.get(), NETLINK_ADD_MEMBERSHIP, &group, sizeof group) < 0)
    throw NftError(failure("cannot subscribe to nftables events", errno));
  // Our own element changes come back here too, one notification per element, and are
  // skipped by port ID; room for many of them between two reads, so that our own churn
  // never overflows the socket (ENOBUFS would force a needless reread of the sets).
  const int rcvbuf = 16 << 20;
  const int efd = mnl_socket_get_fd(events_.get());
  if (setsockopt(efd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) != 0)
    setsockopt(efd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);

  std::string err;
  if (!ensure(err)) throw NftError(err);
  // Probed whatever the option says: a forced `update` on a kernel without in-place
  // timeout updates (before 6.12; Debian 12 runs 6.1) would have every re-add ACKed and
  // ignored, and dnsward would believe elements extended that expire on their old timeout.
  std::string probe_err;
  const Probe probed = probe_update(probe_err);
  if (mode_ == RefreshMode::Update && probed != Probe::Yes)
    throw NftError(
        probed == Probe::No
            ? "--nft-refresh update: this kernel does not update an element's timeout in place "
              "(the probe re-added an element with a longer timeout on a scratch set and the kernel "
              "kept the old one; Linux 6.12 and later update it), so answers would not extend "
              "their elements: use --nft-refresh replace, or auto, which picks it"
            : "--nft-refresh update: could not confirm that this kernel updates an element's "
              "timeout in place (the probe failed: " + probe_err + "): use --nft-refresh replace, "
              "or auto, which picks it");
  if (mode_ == RefreshMode::Auto) mode_ = probed == Probe::Yes ? RefreshMode::Update : RefreshMode::Replace;
  log::info("event=nft-probe timeout_update={} refresh={}",
            probed == Probe::Yes ? "yes" : probed == Probe::No ? "no" : "unknown",
            option_value_name("nft-refresh", mode_));
  with_expiration = mode_ == RefreshMode::Update;
  // Elements outlive dnsward: what the kernel holds now is the truth to start from.
  ledger_.set_max_timeout_ms(uint64_t(t_.max_timeout_s) * 1000u);
  if (!reload_view(err)) throw NftError("reading the sets: " + err);
  check_rules();
  check_ruleset();
  auto size_text = [](uint32_t s) { return s ? std::to_string(s) : std::string("unlimited"); };
  log::info("event=nft-sets table={} set4={} size4={} held4={} set6={} size6={} held6={}", t_.table,
            t_.set4, size_text(size4_), ledger_.held(AF_INET, mono_ms()), t_.set6,
            size_text(size6_), ledger_.held(AF_INET6, mono_ms()));
}

NftSets::~NftSets() = default;

int NftSets::event_fd() const { return mnl_socket_get_fd(events_.get()); }

uint32_t NftSets::size_of(uint8_t family) const { return family == AF_INET ? size4_ : size6_; }

bool NftSets::transact(const std::vector<ElemMsg>& msgs, std::vector<int>& results,
                       std::string& err) {
  std::vector<NetlinkSocket::Msg> raw;
  raw.reserve(msgs.size());
  for (const ElemMsg& m : msgs) {
    const uint16_t type = m.op == ElemOp::Del ? NFT_MSG_DELSETELEM : NFT_MSG_NEWSETELEM;
    const uint16_t flags = m.op == ElemOp::Del       ? 0
                           : m.op == ElemOp::AddExcl || m.op == ElemOp::AddIfMissing
                               ? uint16_t(NLM_F_CREATE | NLM_F_EXCL)
                                                     : uint16_t(NLM_F_CREATE);
    raw.push_back({type, flags, [this, &m](nlmsghdr* nlh) {
                     SetPtr s = make_set(t_, set_of(m.family, m.ported));
                     for (const ElemChange& c : m.elems) {
                       nftnl_set_elem* e = nftnl_set_elem_alloc();
                       uint8_t key[48];
                       nftnl_set_elem_set(e, NFTNL_SET_ELEM_KEY, key, key_bytes(c.key(), key));
                       if (m.op != ElemOp::Del) {
                         nftnl_set_elem_set_u64(e, NFTNL_SET_ELEM_TIMEOUT, c.timeout_ms);
                         if (with_expiration) nftnl_set_elem_set_u64(e, NFTNL_SET_ELEM_EXPIRATION, c.timeout_ms);
                       }
                       nftnl_set_elem_add(s.get(), e);
                     }
                     nftnl_set_elems_nlmsg_build_payload(nlh, s.get());
                   }});
  }
  return nl_.transact(raw, results, err);
}

bool NftSets::element_left(const SetKey& k, bool& exists, uint64_t& left_ms, std::string& err) {
  exists = false;
  left_ms = 0;
  const int e = nl_.request(
      NFT_MSG_GETSETELEM, NLM_F_ACK,
      [&](nlmsghdr* nlh) {
        SetPtr s = make_set(t_, set_of(k.addr.family, k.ported()));
        nftnl_set_elem* el = nftnl_set_elem_alloc();
        uint8_t key[48];
        nftnl_set_elem_set(el, NFTNL_SET_ELEM_KEY, key, key_bytes(k, key));
        nftnl_set_elem_add(s.get(), el);
        nftnl_set_elems_nlmsg_build_payload(nlh, s.get());
      },
      [&](const nlmsghdr* h) {
        for_each_elem(h, [&](nftnl_set_elem* el) {
          exists = true;
          left_ms = elem_left(el);
        });
        return true;
      },
      err);
  if (e == ENOENT) return true;  // not held
  if (e > 0) err = failure("reading an element", e);
  return e == 0;
}

namespace {
std::string type_name(uint32_t t) {
  switch (t) {
    case kTypeIpv4: return "ipv4_addr";
    case kTypeIpv6: return "ipv6_addr";
    case concat(kTypeIpv4, kTypeIpv4): return "ipv4_addr . ipv4_addr";
    case concat(kTypeIpv6, kTypeIpv6): return "ipv6_addr . ipv6_addr";
    case concat(kTypeIfname, kTypeIpv4): return "ifname . ipv4_addr";
    case concat(kTypeIfname, kTypeIpv6): return "ifname . ipv6_addr";
    case concat(concat(kTypeIpv4, kTypeInetProto), kTypeInetService): return "ipv4_addr . inet_proto . inet_service";
    case concat(concat(kTypeIpv6, kTypeInetProto), kTypeInetService): return "ipv6_addr . inet_proto . inet_service";
    case concat(concat(concat(kTypeIpv4, kTypeIpv4), kTypeInetProto), kTypeInetService):
      return "ipv4_addr . ipv4_addr . inet_proto . inet_service";
    case concat(concat(concat(kTypeIpv6, kTypeIpv6), kTypeInetProto), kTypeInetService):
      return "ipv6_addr . ipv6_addr . inet_proto . inet_service";
  }
  return std::to_string(t);
}
}  // namespace

bool NftSets::check_set(const std::string& name, uint32_t key_type, uint32_t key_len,
                        bool& exists, uint32_t& size, std::string& err, bool want_flags) {
  exists = false;
  size = 0;
  const int e = nl_.request(
      NFT_MSG_GETSET, NLM_F_ACK,
      [&](nlmsghdr* nlh) { nftnl_set_nlmsg_build_payload(nlh, make_set(t_, name).get()); },
      [&](const nlmsghdr* h) {
        SetPtr got(nftnl_set_alloc());
        if (nftnl_set_nlmsg_parse(h, got.get()) < 0) return true;
        exists = true;
        const uint32_t type = nftnl_set_get_u32(got.get(), NFTNL_SET_KEY_TYPE);
        const uint32_t klen = nftnl_set_get_u32(got.get(), NFTNL_SET_KEY_LEN);
        const uint32_t flags = nftnl_set_get_u32(got.get(), NFTNL_SET_FLAGS);
        if (nftnl_set_is_set(got.get(), NFTNL_SET_DESC_SIZE))
          size = nftnl_set_get_u32(got.get(), NFTNL_SET_DESC_SIZE);
        if (type != key_type || klen != key_len) {
          err = "set " + t_.table + " " + name + " exists with another type; dnsward needs type " +
                type_name(key_type) + (want_flags ? " with flags timeout" : " without flags");
          schema_err_ = err;
          return false;
        }
        if (!want_flags) {
          if (flags & ~uint32_t(NFT_SET_TIMEOUT)) {  // an interval here would match ranges
            err = "set " + t_.table + " " + name + " exists with flags " + set_flags_text(flags) +
                  "; dnsward needs a plain set of (interface . address) pairs";
            schema_err_ = err;
            return false;
          }
          return true;
        }
        if (!(flags & NFT_SET_TIMEOUT)) {
          err = "set " + t_.table + " " + name + " exists without 'flags timeout'; dnsward needs it "
                "(elements expire with the DNS TTL)";
          schema_err_ = err;
          return false;
        }
        if (!set_flags_ok(flags)) {
          // An interval set reads an element without an end as the start of a range that
          // runs to the top of the address space: 93.184.216.34 would open
          // 93.184.216.34-255.255.255.255. A map, a concatenation, a constant or dynamic set
          // is not a set of addresses dnsward can fill either.
          err = "set " + t_.table + " " + name + " exists with flags " + set_flags_text(flags) +
                "; dnsward needs 'flags timeout' and no other flag (in an interval set each "
                "address dnsward adds would open a range up to the end of the address space)";
          schema_err_ = err;
          return false;
        }
        return true;
      },
      err);
  if (e == 0 || e == ENOENT) return true;  // the ACK; or no such set (or table) yet
  if (e > 0) err = failure("reading set " + name, e);
  return false;
}

bool NftSets::ensure(std::string& err) {
  bool have4 = false, have6 = false;
  schema_err_.clear();  // set again by check_set if a set is still of the wrong kind
  // Host mode: guest . destination, and the anti-spoofing pairs.
  const uint32_t type4 = t_.host ? concat(kTypeIpv4, kTypeIpv4) : kTypeIpv4;
  const uint32_t type6 = t_.host ? concat(kTypeIpv6, kTypeIpv6) : kTypeIpv6;
  const uint32_t len4 = t_.host ? 8 : 4, len6 = t_.host ? 32 : 16;
  bool havep4 = !t_.host, havep6 = !t_.host;
  // ports= (--sni-guard): the same keys . protocol . port.
  const uint32_t typeq4 = concat(concat(type4, kTypeInetProto), kTypeInetService);
  const uint32_t typeq6 = concat(concat(type6, kTypeInetProto), kTypeInetService);
  const uint32_t lenq4 = len4 + 8, lenq6 = len6 + 8;
  bool haveq4 = !t_.ports(), haveq6 = !t_.ports();
  uint32_t ignored = 0;
  if (!check_set(t_.set4, type4, len4, have4, size4_, err) ||
      !check_set(t_.set6, type6, len6, have6, size6_, err) ||
      (t_.host && (!check_set(t_.sbx4, concat(kTypeIfname, kTypeIpv4), kIfnameLen + 4, havep4, ignored, err, false) ||
                   !check_set(t_.sbx6, concat(kTypeIfname, kTypeIpv6), kIfnameLen + 16, havep6, ignored, err, false))) ||
      (t_.ports() && (!check_set(t_.ports4, typeq4, lenq4, haveq4, ignored, err) ||
                      !check_set(t_.ports6, typeq6, lenq6, haveq6, ignored, err))))
    return false;
  if (have4 && have6 && havep4 && havep6 && haveq4 && haveq6) return true;

  // Creating is idempotent (no NLM_F_EXCL): a table or set that appeared meanwhile is fine.
  std::vector<NetlinkSocket::Msg> msgs;
  msgs.push_back({NFT_MSG_NEWTABLE, NLM_F_CREATE, [this](nlmsghdr* nlh) {
                    nftnl_table* t = nftnl_table_alloc();
                    nftnl_table_set_str(t, NFTNL_TABLE_NAME, t_.table.c_str());
                    nftnl_table_set_u32(t, NFTNL_TABLE_FAMILY, t_.family);
                    nftnl_table_nlmsg_build_payload(nlh, t);
                    nftnl_table_free(t);
                  }});
  uint32_t id = 1;
  for (const auto& [name, type, len, have, timeout] :
       {std::tuple{t_.set4, type4, len4, have4, true}, std::tuple{t_.set6, type6, len6, have6, true},
        std::tuple{t_.sbx4, concat(kTypeIfname, kTypeIpv4), kIfnameLen + 4, havep4, false},
        std::tuple{t_.sbx6, concat(kTypeIfname, kTypeIpv6), kIfnameLen + 16, havep6, false},
        std::tuple{t_.ports4, typeq4, lenq4, haveq4, true}, std::tuple{t_.ports6, typeq6, lenq6, haveq6, true}}) {
    if (have) continue;
    msgs.push_back({NFT_MSG_NEWSET, NLM_F_CREATE,
                    [this, name = name, type = type, len = len, id, timeout = timeout](nlmsghdr* nlh) {
                      SetPtr s = make_set(t_, name);
                      nftnl_set_set_u32(s.get(), NFTNL_SET_KEY_TYPE, type);
                      nftnl_set_set_u32(s.get(), NFTNL_SET_KEY_LEN, len);
                      nftnl_set_set_u32(s.get(), NFTNL_SET_FLAGS, timeout ? NFT_SET_TIMEOUT : 0);
                      nftnl_set_set_u32(s.get(), NFTNL_SET_ID, id);
                      nftnl_set_set_u32(s.get(), NFTNL_SET_DESC_SIZE, timeout ? t_.set_size : 65536);
                      nftnl_set_nlmsg_build_payload(nlh, s.get());
                    }});
    ++id;
  }
  std::vector<int> res;
  if (!nl_.transact(msgs, res, err) || std::any_of(res.begin(), res.end(), [](int r) { return r != 0; })) {
    int e = 0;
    for (int r : res) e = e ? e : r;
    if (e) {
      err = failure("creating table " + t_.table, e);  // a message refused: its errno
    } else {
      // The batch failed as a whole: refused (without CAP_NET_ADMIN the kernel answers its
      // first message with EPERM, nfnetlink_rcv()), or lost. Its errno, never the text of
      // err, says whether privilege is the remedy.
      err = "creating table " + t_.table + ": " + err;
      if (nl_.last_errno() == EPERM || nl_.last_errno() == EACCES) err += kNeedCap;
    }
    return false;
  }
  if (!have4) size4_ = t_.set_size;
  if (!have6) size6_ = t_.set_size;
  log::info("event=nft-created table={} set4={} set6={}", t_.table, t_.set4, t_.set6);
  return true;
}

NftSets::Probe NftSets::probe_update(std::string& err) {
  // Does re-adding an element with an expiration extend it in place? Try it on a probe set
  // of our own, so the real sets never hold a test address.
  const std::string probe = "dnsward_probe";
  std::vector<int> res;
  const std::vector<NetlinkSocket::Msg> create = {{NFT_MSG_NEWSET, NLM_F_CREATE, [&](nlmsghdr* nlh) {
                                SetPtr s = make_set(t_, probe);
                                nftnl_set_set_u32(s.get(), NFTNL_SET_KEY_TYPE, kTypeIpv4);
                                nftnl_set_set_u32(s.get(), NFTNL_SET_KEY_LEN, 4);
                                nftnl_set_set_u32(s.get(), NFTNL_SET_FLAGS, NFT_SET_TIMEOUT);
                                nftnl_set_set_u32(s.get(), NFTNL_SET_ID, 99);
                                nftnl_set_nlmsg_build_payload(nlh, s.get());
                              }}};
  auto add = [&](uint64_t timeout_ms, bool expiration) {
    return NetlinkSocket::Msg{NFT_MSG_NEWSETELEM, NLM_F_CREATE, [&, timeout_ms, expiration](nlmsghdr* nlh) {
                 SetPtr s = make_set(t_, probe);
                 nftnl_set_elem* e = nftnl_set_elem_alloc();
                 const uint8_t key[4] = {192, 0, 2, 1};
                 nftnl_set_elem_set(e, NFTNL_SET_ELEM_KEY, key, 4);
                 nftnl_set_elem_set_u64(e, NFTNL_SET_ELEM_TIMEOUT, timeout_ms);
                 if (expiration) nftnl_set_elem_set_u64(e, NFTNL_SET_ELEM_EXPIRATION, timeout_ms);
                 nftnl_set_elem_add(s.get(), e);
                 nftnl_set_elems_nlmsg_build_payload(nlh, s.get());
               }};
  };
  auto ok = [&](const std::vector<NetlinkSocket::Msg>& m, std::string& why) {
    if (!nl_.transact(m, res, why)) return false;
    for (const int r : res)
      if (r != 0) {
        why = std::strerror(r);
        return false;
      }
    return true;
  };
  Probe result = Probe::Failed;
  if (ok(create, err) && ok({add(10000, false)}, err) && ok({add(600000, true)}, err)) {
    bool supported = false;
    const int e = nl_.request(
        NFT_MSG_GETSETELEM, NLM_F_DUMP,
        [&](nlmsghdr* nlh) { nftnl_set_elems_nlmsg_build_payload(nlh, make_set(t_, probe).get()); },
        [&](const nlmsghdr* h) {
          for_each_elem(h, [&](nftnl_set_elem* el) { supported |= elem_left(el) > 60000; });
          return true;
        },
        err);
    if (e == 0) result = supported ? Probe::Yes : Probe::No;
    else if (e > 0) err = std::strerror(e);
  }
  std::string ignored;  // the probe's answer stands whether or not its set goes away cleanly
  ok({{NFT_MSG_DELSET, 0, [&](nlmsghdr* nlh) { nftnl_set_nlmsg_build_payload(nlh, make_set(t_, probe).get()); }}},
     ignored);
  return result;
}

bool NftSets::start_reread(std::string& err) {
  ledger_.forget_kernel();
  reread_retry_ = false;
  if (dump_stage_ != 0) {  // one dump at a time: this one after the current
    reread_again_ = true;
    return true;
  }
  dump_stage_ = 1;
  dump_started_ms_ = mono_ms();
  if (start_stage(err)) return true;
  dump_stage_ = 0;
  ledger_.reread_failed();
  reread_retry_ = true;
  return false;
}

bool NftSets::start_stage(std::string& err) {
  const std::string& name = stage_set(dump_stage_);
  stage_started_ms_ = mono_ms();
  return dump_.start_request(
      NFT_MSG_GETSETELEM, NLM_F_DUMP,
      [&](nlmsghdr* nlh) { nftnl_set_elems_nlmsg_build_payload(nlh, make_set(t_, name).get()); }, err);
}

bool NftSets::reread_step(int max_reads, bool& done, std::string& err) {
  done = false;
  const bool stale = reread_again_;
  const uint8_t family = dump_stage_ % 2 ? AF_INET : AF_INET6;
  const bool ported = dump_stage_ > 2;
  // The time left that the kernel reports was measured after the dump was asked for:
  // counted from then, an expiry is never later than the kernel's.
  const uint64_t at = stage_started_ms_;
  int e = 0;
  const auto progress = dump_.poll_request(
      [&](const nlmsghdr* h) {
        if (stale) return;
        for_each_elem(h, [&](nftnl_set_elem* el) {
          uint32_t klen = 0;
          const void* key = nftnl_set_elem_get(el, NFTNL_SET_ELEM_KEY, &klen);
          const uint32_t alen = family == AF_INET ? 4u : 16u;
          const uint32_t klen_want = (t_.host ? 2 * alen : alen) + (ported ? 8u : 0u);
          if (!key || klen != klen_want) return;
          const auto* kb = static_cast<const uint8_t*>(key);
          auto addr_at = [&](const uint8_t* p) { return family == AF_INET ? IpAddr::v4(p) : IpAddr::v6(p); };
          SetKey a;
          if (t_.host) a.guest = addr_at(kb);
          a.addr = addr_at(t_.host ? kb + alen : kb);
          if (ported) {
            const uint8_t* tail = kb + klen - 8;
            a.proto = tail[0];
            a.port = uint16_t(tail[4] << 8 | tail[5]);
            if (!a.port) return;  // not one dnsward writes
          }
          const uint64_t left = elem_left(el);
          if (left > 0) ledger_.merge_held(a, left, at);
        });
      },
      max_reads, e, err);
  auto fail = [&] {
    dump_stage_ = 0;
    ledger_.reread_failed();
    reread_retry_ = true;
    return false;
  };
  if (progress == NetlinkSocket::Progress::Failed) return fail();
  if (progress == NetlinkSocket::Progress::More) return true;
  if (stale) {  // this dump is over: now the one that sees the latest change
    dump_stage_ = 0;
    reread_again_ = false;
    return start_reread(err);
  }
  if (e != 0) {
    err = failure("listing set " + stage_set(dump_stage_), e);
    return fail();
  }
  if (dump_stage_ < (t_.ports() ? 4 : 2)) {
    ++dump_stage_;
    return start_stage(err) || fail();
  }
  dump_stage_ = 0;
  ledger_.reread_done();
  done = true;
  return true;
}

bool NftSets::reload_view(std::string& err) {
  if (!start_reread(err)) return false;
  const uint64_t deadline = mono_ms() + 10000;
  for (bool done = false; !done;) {
    if (!reread_step(1 << 20, done, err)) return false;
    if (done) break;
    pollfd p{dump_.fd(), POLLIN, 0};
    const int64_t left = int64_t(deadline) - int64_t(mono_ms());
    if (left <= 0 || poll(&p, 1, int(left)) < 0) {
      dump_stage_ = 0;
      ledger_.reread_failed();
      err = "no complete dump of the sets from the kernel in time";
      return false;
    }
  }
  return true;
}

void NftSets::on_dump_readable() {
  if (!dump_stage_) {  // replies to an abandoned dump: drop them
    int e = 0;
    std::string ignored;
    dump_.poll_request([](const nlmsghdr*) {}, 64, e, ignored);
    return;
  }
  // One datagram (about a thousand elements, a few milliseconds) per loop pass: queries
  // go on being answered while a large set is read.
  bool done = false;
  std::string err;
  if (!reread_step(1, done, err)) {
    log::error("event=nft-reread-failed error={} msg={}", log::quote(err),
               log::quote("every element counts as missing: answers add them again"));
    return;
  }
  if (done)
    log::info("event=nft-reread held4={} held6={} ms={}", ledger_.held(AF_INET, mono_ms()),
              ledger_.held(AF_INET6, mono_ms()), mono_ms() - dump_started_ms_);
}

std::string NftSets::full_message(uint8_t family) const {
  const std::string& set = family == AF_INET ? t_.set4 : t_.set6;
  const uint32_t size = size_of(family);
  // The kernel answers ENFILE ("Too many open files in system") for a full set; expired
  // elements not yet collected still count.
  return fmt::format("set {} {} is full (declared size {}, {} elements held): raise "
                     "--nft-set-size, or the size of the set if it was created by someone else",
                     t_.table, set, size ? std::to_string(size) : std::string("none"),
                     ledger_.held(family, mono_ms()));
}

bool NftSets::vouch(const std::vector<VouchItem>& items, uint64_t now_ms, const Provenance& who,
                    std::string& err) {
  on_events();  // a flush that happened before this answer must be seen before trusting the view
  if (!schema_err_.empty()) {
    // A set replaced by one of another kind (an interval set, say) since the start: adding
    // to it would not mean what a vouch means. Answers are withheld until the sets are
    // dnsward's kind again (the next change to them is checked again: on_sets_changed).
    err = "the sets are not what dnsward fills: " + schema_err_;
    return false;
  }
  for (const auto& i : items)
    if (i.timeout_s == 0) {
      err = "refusing a zero element timeout (nftables reads 0 as never expiring)";
      return false;
    }
  std::vector<uint64_t> effective, left;
  std::vector<ElemChange> changes;
  std::vector<ChangeResult> results;
  int e = 0;
  SetKey failed;
  bool ok = false;
  for (int attempt = 0; attempt < 2; ++attempt) {
    changes = ledger_.plan(items, now_ms, mode_, effective);
    ok = changes.empty() || commit_changes(*this, changes, results, err, e, &failed, &left);
    ledger_.committed(items, changes, effective, results, who, now_ms, &left);
    if (ok || e != ENOENT || attempt > 0) break;
    // A set (or the table) is gone without an event: a table owned by a process that
    // exited goes that way. Recreate, reread, and try once more.
    log::warn("event=nft-set-missing table={} msg={}", t_.table,
              log::quote("a set was gone without an event: recreating and rereading the sets"));
    std::string why;
    const bool recreated = ensure(why);
    check_ruleset();  // whatever held the table held its chains: gone as silently
    if (!recreated || !start_reread(why)) {
      err += "; " + why;
      break;
    }
  }
  if (!changes.empty()) check_fill(now_ms, false);
  if (!ok && e == ENFILE) {
    err = failed.ported() ? fmt::format("set {} {} is full: raise --nft-set-size", t_.table,
                                        set_of(failed.addr.family, true))
                          : full_message(failed.addr.family ? failed.addr.family : uint8_t(AF_INET));
    log::error("event=nft-set-full msg={}", log::quote(err));
  }
  return ok;
}

RevokeOutcome NftSets::delete_elements(const std::vector<ElemChange>& dels) {
  RevokeOutcome out;
  if (dels.empty()) return out;
  std::vector<ChangeResult> results;
  int e = 0;
  out.ok = commit_changes(*this, dels, results, out.err, e);
  for (const ChangeResult r : results) {
    out.deleted += r == ChangeResult::Done;
    out.already_gone += r == ChangeResult::AlreadyGone;
  }
  ledger_.revoked(dels, results);
  return out;
}

RevokeOutcome NftSets::remove_guests(const std::vector<IpAddr>& guests, uint64_t now_ms) {
  on_events();
  return delete_elements(ledger_.removals_of(guests, now_ms));
}

NetlinkSocket::Msg NftSets::pair_msg(const std::string& iface, const IpAddr& a, bool add) {
  // The key is the interface name padded with NULs to IFNAMSIZ, then the address (nft's
  // ifname . ipv4_addr). iface and a must outlive the message's send.
  return {uint16_t(add ? NFT_MSG_NEWSETELEM : NFT_MSG_DELSETELEM), uint16_t(add ? NLM_F_CREATE : 0),
          [this, &iface, &a](nlmsghdr* nlh) {
            SetPtr s = make_set(t_, a.family == AF_INET ? t_.sbx4 : t_.sbx6);
            nftnl_set_elem* e = nftnl_set_elem_alloc();
            uint8_t key[kIfnameLen + 16] = {};
            std::memcpy(key, iface.data(), iface.size());
            std::memcpy(key + kIfnameLen, a.bytes, a.size());
            nftnl_set_elem_set(e, NFTNL_SET_ELEM_KEY, key, uint32_t(kIfnameLen + a.size()));
            nftnl_set_elem_add(s.get(), e);
            nftnl_set_elems_nlmsg_build_payload(nlh, s.get());
          }};
}

bool NftSets::add_pairs(const std::vector<std::pair<std::string, IpAddr>>& pairs, std::string& err) {
  if (!t_.host) return true;
  // kChangesPerBatch messages of about 100 bytes stay far below a batch's limit.
  for (std::size_t from = 0; from < pairs.size(); from += kChangesPerBatch) {
    std::vector<NetlinkSocket::Msg> msgs;
    for (std::size_t i = from; i < std::min(pairs.size(), from + kChangesPerBatch); ++i) {
      const std::string& iface = pairs[i].first;
      const IpAddr& a = pairs[i].second;
      if (iface.empty() || iface.size() >= kIfnameLen) {
        err = "interface name must be 1 to 15 bytes";
        return false;
      }
      msgs.push_back(pair_msg(iface, a, true));
    }
    std::vector<int> res;
    if (!nl_.transact(msgs, res, err)) return false;
    for (const int r : res)
      if (r != 0) {
        err = failure("adding anti-spoofing pairs", r);
        return false;
      }
  }
  return true;
}

bool NftSets::list_pairs(std::vector<std::pair<std::string, IpAddr>>& out, std::string& err) {
  out.clear();
  if (!t_.host) return true;
  for (const bool v4 : {true, false}) {
    const std::string& name = v4 ? t_.sbx4 : t_.sbx6;
    const uint32_t alen = v4 ? 4 : 16;
    const int e = nl_.request(
        NFT_MSG_GETSETELEM, NLM_F_DUMP,
        [&](nlmsghdr* nlh) { nftnl_set_elems_nlmsg_build_payload(nlh, make_set(t_, name).get()); },
        [&](const nlmsghdr* h) {
          for_each_elem(h, [&](nftnl_set_elem* el) {
            uint32_t klen = 0;
            const auto* key = static_cast<const uint8_t*>(nftnl_set_elem_get(el, NFTNL_SET_ELEM_KEY, &klen));
            if (!key || klen != kIfnameLen + alen) return;  // not a pair of ours: left alone
            const std::string iface(reinterpret_cast<const char*>(key), strnlen(reinterpret_cast<const char*>(key), kIfnameLen));
            out.emplace_back(iface, v4 ? IpAddr::v4(key + kIfnameLen) : IpAddr::v6(key + kIfnameLen));
          });
          return true;
        },
        err);
    if (e != 0 && e != ENOENT) {
      if (e > 0) err = failure("listing set " + name, e);
      return false;
    }
  }
  return true;
}

std::vector<IpAddr> NftSets::guests() const { return ledger_.guests(); }

bool NftSets::set_pairs(const std::string& iface, const std::vector<IpAddr>& addrs, bool add,
                        std::string& err) {
  if (!t_.host || addrs.empty()) return true;
  if (iface.empty() || iface.size() >= kIfnameLen) {
    err = "interface name must be 1 to 15 bytes";
    return false;
  }
  // Adds go in one batch, all or nothing; deletes one pair per batch, since one pair gone
  // already (ENOENT) would refuse a whole batch.
  auto msg = [&](const IpAddr& a) { return pair_msg(iface, a, add); };
  std::vector<std::vector<NetlinkSocket::Msg>> batches;
  if (add) {
    batches.emplace_back();
    for (const IpAddr& a : addrs) batches.back().push_back(msg(a));
  } else {
    for (const IpAddr& a : addrs) batches.push_back({msg(a)});
  }
  for (const auto& b : batches) {
    std::vector<int> res;
    if (!nl_.transact(b, res, err)) return false;
    for (const int r : res)
      if (r != 0 && !(r == ENOENT && !add)) {
        err = failure(std::string(add ? "adding" : "deleting") + " the anti-spoofing pairs of " + iface, r);
        return false;
      }
  }
  return true;
}

RevokeOutcome NftSets::revoke_unless(const VoucherJudge& keep, const AuditJudge& keep_audit,
                                     uint64_t now_ms, const PortJudge& keep_port) {
  on_events();
  return delete_elements(ledger_.revocations(keep, keep_audit, now_ms, keep_port));
}

void NftSets::maintain(uint64_t now_ms) {
  ledger_.expire(now_ms);  // keeps what a reread in progress still needs
  if (reread_retry_ && dump_stage_ == 0) {
    std::string err;
    if (start_reread(err)) log::info("event=nft-reread-retry");
    else log::error("event=nft-reread-failed error={}", log::quote(err));
  }
  check_fill(now_ms, true);
  if (ruleset_retry_) check_ruleset();  // the last read of the ruleset failed
}

void NftSets::check_fill(uint64_t now_ms, bool force) {
  if (!force && now_ms < last_fill_check_ms_ + 1000) return;
  last_fill_check_ms_ = now_ms;
  for (const uint8_t family : {uint8_t(AF_INET), uint8_t(AF_INET6)}) {
    const uint32_t size = size_of(family);
    // The ledger holds at least every held element: no count while it is small.
    if (size == 0 || ledger_.size() * 5 < std::size_t(size) * 4) continue;
    const std::size_t n = ledger_.held(family, now_ms);
    bool& warned = warned_full_[family == AF_INET ? 0 : 1];
    if (!warned && n * 5 >= std::size_t(size) * 4) {
      warned = true;
      log::warn("event=nft-set-filling set={} held={} size={} msg={}",
                family == AF_INET ? t_.set4 : t_.set6, n, size,
                log::quote("the set is 80% full; a full set fails answers closed (SERVFAIL): raise --nft-set-size"));
    } else if (warned && n * 10 < std::size_t(size) * 7) {
      warned = false;
    }
  }
}

void NftSets::check_rule(const nlmsghdr* h, const char* when) {
  nftnl_rule* r = nftnl_rule_alloc();
  if (nftnl_rule_nlmsg_parse(h, r) >= 0 && nftnl_rule_get_u32(r, NFTNL_RULE_FAMILY) == t_.family &&
      nftnl_rule_is_set(r, NFTNL_RULE_TABLE) && t_.table == nftnl_rule_get_str(r, NFTNL_RULE_TABLE)) {
    nftnl_expr_iter* it = nftnl_expr_iter_create(r);
    for (nftnl_expr* e = nftnl_expr_iter_next(it); e; e = nftnl_expr_iter_next(it)) {
      const char* name = nftnl_expr_get_str(e, NFTNL_EXPR_NAME);
      if (!name || std::strcmp(name, "dynset") != 0 || !nftnl_expr_is_set(e, NFTNL_EXPR_DYNSET_SET_NAME))
        continue;
      const std::string set = nftnl_expr_get_str(e, NFTNL_EXPR_DYNSET_SET_NAME);
      if (set != t_.set4 && set != t_.set6 && (!t_.ports() || (set != t_.ports4 && set != t_.ports6))) continue;
      ++foreign_set_rules_;
      log::error("event=nft-foreign-set-rule table={} set={} when={} msg={}", t_.table, set, when,
                 log::quote("a rule changes this set from the packet path (update/delete @set): "
                            "such changes send no event, so dnsward cannot see them and the "
                            "promise that a relayed address is in the set no longer holds; "
                            "remove the rule"));
    }
    nftnl_expr_iter_destroy(it);
  }
  nftnl_rule_free(r);
}

void NftSets::check_rules() {
  std::string err;
  nl_.request(
      NFT_MSG_GETRULE, NLM_F_DUMP, [&](nlmsghdr* nlh) { build_rule_dump(nlh, t_); },
      [&](const nlmsghdr* h) {
        check_rule(h, "at-start");
        return true;
      },
      err);
}

void NftSets::on_events() {
  char rbuf[65536];
  bool changed = false, recreate = false, lost = false, ruleset_due = false, pairs_lost = false;
  for (;;) {
    const ssize_t n =
        netlink_receive(event_faults_, mnl_socket_get_fd(events_.get()), rbuf, sizeof rbuf, MSG_DONTWAIT);
    if (n < 0) {
      if (errno == ENOBUFS) {  // events were lost: assume the worst
        changed = recreate = lost = true;
        continue;
      }
      break;
    }
    int len = int(n);
    for (auto* h = reinterpret_cast<nlmsghdr*>(rbuf); mnl_nlmsg_ok(h, len); h = mnl_nlmsg_next(h, &len)) {
      if (NFNL_SUBSYS_ID(h->nlmsg_type) != NFNL_SUBSYS_NFTABLES) continue;
      const uint16_t msg = NFNL_MSG_TYPE(h->nlmsg_type);
      if (msg == NFT_MSG_NEWGEN) {
        // The end of a transaction (nf_tables_commit() sends it after the transaction's
        // own events): its changes are all in place, so the ruleset is judged once per
        // transaction that touched it, never halfway through one (`nft -f` deletes and
        // rebuilds the table in one).
        if (ruleset_dirty_) {
          ruleset_dirty_ = false;
          ruleset_due = true;
        }
        continue;
      }
      if (h->nlmsg_pid != nl_.portid() && touches_ruleset(h, msg)) ruleset_dirty_ = true;
      if (msg == NFT_MSG_NEWRULE && h->nlmsg_pid != nl_.portid()) {
        check_rule(h, "added");
        continue;
      }
      // NEWSETELEM too: on 6.12+ someone else's re-add can shorten an element in place.
      if (msg != NFT_MSG_DELTABLE && msg != NFT_MSG_DELSET && msg != NFT_MSG_DELSETELEM &&
          msg != NFT_MSG_NEWSETELEM)
        continue;
      if (h->nlmsg_pid == nl_.portid()) continue;  // our own changes
      if (mnl_nlmsg_get_payload_len(h) < sizeof(nfgenmsg)) {
        changed = true;  // cannot say which table: assume ours
        continue;
      }
      const auto* g = static_cast<const nfgenmsg*>(mnl_nlmsg_get_payload(h));
      if (g->nfgen_family != t_.family) continue;
      std::string table;
      if (msg == NFT_MSG_DELTABLE) {
        nftnl_table* t = nftnl_table_alloc();
        if (nftnl_table_nlmsg_parse(h, t) >= 0 && nftnl_table_is_set(t, NFTNL_TABLE_NAME))
          table = nftnl_table_get_str(t, NFTNL_TABLE_NAME);
        nftnl_table_free(t);
      } else {
        SetPtr s(nftnl_set_alloc());
        const int rc = msg == NFT_MSG_DELSET ? nftnl_set_nlmsg_parse(h, s.get())
                                             : nftnl_set_elems_nlmsg_parse(h, s.get());  // DEL/NEWSETELEM
        if (rc >= 0 && nftnl_set_is_set(s.get(), NFTNL_SET_TABLE))
          table = nftnl_set_get_str(s.get(), NFTNL_SET_TABLE);
        // Only dnsward's two sets matter: churn in another set of its table must not keep
        // its view from ever settling.
        const char* set = rc >= 0 && nftnl_set_is_set(s.get(), NFTNL_SET_NAME)
                              ? nftnl_set_get_str(s.get(), NFTNL_SET_NAME) : "";
        if (rc < 0) {
          table = t_.table;  // unreadable: assume the worst, read the sets again
        } else if (t_.set4 != set && t_.set6 != set && (!t_.ports() || (t_.ports4 != set && t_.ports6 != set))) {
          // Host mode: a registered pair deleted by someone else cuts its sandbox off (fail
          // closed); dnsward puts the pairs of every registered sandbox back.
          if (t_.host && msg != NFT_MSG_NEWSETELEM && (t_.sbx4 == set || t_.sbx6 == set) &&
              table == t_.table)
            pairs_lost = true;
          continue;
        }
      }
      if (table != t_.table) continue;
      if (t_.host && msg == NFT_MSG_DELTABLE) pairs_lost = true;
      changed = true;
      if (msg == NFT_MSG_DELTABLE || msg == NFT_MSG_DELSET) recreate = true;
    }
  }
  if (changed) on_sets_changed(lost, recreate);
  if ((pairs_lost || (lost && t_.host)) && on_pairs_lost_) {
    if (!changed) {  // a set deleted alone: recreate it before its pairs go back in
      std::string err;
      if (!ensure(err)) log::error("event=nft-recreate-failed error={}", log::quote(err));
    }
    on_pairs_lost_();
  }
  if (lost) {  // a transaction's events, or its end, may be among those lost
    ruleset_dirty_ = false;
    ruleset_due = true;
  }
  // A transaction whose events came but whose end has not: it is judged at its end.
  if (ruleset_due && !ruleset_dirty_) check_ruleset();
}

void NftSets::on_sets_changed(bool lost, bool recreate) {
  ++external_changes_;
  log::warn("event=nft-external-change table={} msg={}", t_.table,
            log::quote(lost ? "nftables events were lost: rereading the sets"
                       : recreate ? "table or set removed: recreating and rereading the sets"
                                  : "elements changed by someone else: rereading the sets"));
  std::string err;
  if (recreate && !ensure(err)) log::error("event=nft-recreate-failed error={}", log::quote(err));
  if (lost) check_rules();  // a rule added while events were lost would go unseen
  // The kernel's sets are the truth: what it holds now, with its real expiries. Until the
  // dump has been read, every element counts as missing (added exclusively, replaced if
  // the kernel has it), so nothing is relayed on the strength of a stale view.
  if (!start_reread(err))
    log::error("event=nft-reread-failed error={} msg={}", log::quote(err),
               log::quote("every element counts as missing: answers add them again"));
}

bool NftSets::touches_ruleset(const nlmsghdr* h, uint16_t msg) const {
  // Sets too (not their elements): the judgement reads their flags.
  if (msg != NFT_MSG_NEWTABLE && msg != NFT_MSG_DELTABLE && msg != NFT_MSG_NEWCHAIN &&
      msg != NFT_MSG_DELCHAIN && msg != NFT_MSG_NEWRULE && msg != NFT_MSG_DELRULE &&
      msg != NFT_MSG_NEWSET && msg != NFT_MSG_DELSET)
    return false;
  if (mnl_nlmsg_get_payload_len(h) < sizeof(nfgenmsg)) return true;  // cannot say: assume ours
  if (static_cast<const nfgenmsg*>(mnl_nlmsg_get_payload(h))->nfgen_family != t_.family) return false;
  const std::string table = event_table(h);
  return table.empty() || table == t_.table;
}

bool NftSets::read_ruleset(TableSeen& seen, std::string& err) {
  seen = TableSeen{};
  rules_read_ = 0;
  int e = nl_.request(
      NFT_MSG_GETTABLE, NLM_F_ACK,
      [&](nlmsghdr* nlh) {
        nftnl_table* t = nftnl_table_alloc();
        nftnl_table_set_str(t, NFTNL_TABLE_NAME, t_.table.c_str());
        nftnl_table_nlmsg_build_payload(nlh, t);
        nftnl_table_free(t);
      },
      [&](const nlmsghdr* h) {
        nftnl_table* t = nftnl_table_alloc();
        if (nftnl_table_nlmsg_parse(h, t) >= 0) {
          seen.exists = true;
          if (nftnl_table_is_set(t, NFTNL_TABLE_FLAGS)) seen.flags = nftnl_table_get_u32(t, NFTNL_TABLE_FLAGS);
        }
        nftnl_table_free(t);
        return true;
      },
      err);
  if (e == ENOENT) return true;  // no table, so no chain
  if (e != 0) {
    if (e > 0) err = failure("reading table " + t_.table, e);
    return false;
  }
  // The two sets: their flags and key (an interval set is not a set of addresses).
  std::vector<std::pair<const std::string*, SetSeen*>> sets = {{&t_.set4, &seen.set4}, {&t_.set6, &seen.set6}};
  if (t_.host) sets.insert(sets.end(), {{&t_.sbx4, &seen.sbx4}, {&t_.sbx6, &seen.sbx6}});
  if (t_.ports()) sets.insert(sets.end(), {{&t_.ports4, &seen.ports4}, {&t_.ports6, &seen.ports6}});
  for (const auto& pair : sets) {
    // Plain locals, not a structured binding: clang 14 (the fuzz build) cannot capture one.
    const std::string* name = pair.first;
    auto* out = pair.second;
    e = nl_.request(
        NFT_MSG_GETSET, NLM_F_ACK,
        [&](nlmsghdr* nlh) { nftnl_set_nlmsg_build_payload(nlh, make_set(t_, *name).get()); },
        [&](const nlmsghdr* h) {
          SetPtr got(nftnl_set_alloc());
          if (nftnl_set_nlmsg_parse(h, got.get()) < 0) return true;
          out->exists = true;
          out->flags = nftnl_set_get_u32(got.get(), NFTNL_SET_FLAGS);
          out->key_type = nftnl_set_get_u32(got.get(), NFTNL_SET_KEY_TYPE);
          out->key_len = nftnl_set_get_u32(got.get(), NFTNL_SET_KEY_LEN);
          return true;
        },
        err);
    if (e != 0 && e != ENOENT) {
      if (e > 0) err = failure("reading set " + *name, e);
      return false;
    }
  }
  // The kernel's chain dump does not filter by table: the family's chains, ours kept, and
  // indexed by name for the rules below.
  std::unordered_map<std::string, std::size_t> by_name;
  e = nl_.request(
      NFT_MSG_GETCHAIN, NLM_F_DUMP, [](nlmsghdr*) {},
      [&](const nlmsghdr* h) {
        nftnl_chain* c = nftnl_chain_alloc();
        if (nftnl_chain_nlmsg_parse(h, c) >= 0 && nftnl_chain_is_set(c, NFTNL_CHAIN_TABLE) &&
            t_.table == nftnl_chain_get_str(c, NFTNL_CHAIN_TABLE) && nftnl_chain_is_set(c, NFTNL_CHAIN_NAME)) {
          ChainSeen ch;
          ch.name = nftnl_chain_get_str(c, NFTNL_CHAIN_NAME);
          ch.base = nftnl_chain_is_set(c, NFTNL_CHAIN_HOOKNUM);
          if (ch.base) ch.hook = nftnl_chain_get_u32(c, NFTNL_CHAIN_HOOKNUM);
          if (ch.base && nftnl_chain_is_set(c, NFTNL_CHAIN_PRIO)) ch.priority = nftnl_chain_get_s32(c, NFTNL_CHAIN_PRIO);
          ch.policy = nftnl_chain_is_set(c, NFTNL_CHAIN_POLICY) ? nftnl_chain_get_u32(c, NFTNL_CHAIN_POLICY)
                                                                : uint32_t(NF_ACCEPT);
          if (nftnl_chain_is_set(c, NFTNL_CHAIN_TYPE)) ch.type = nftnl_chain_get_str(c, NFTNL_CHAIN_TYPE);
          uint32_t len = 0;
          if (const void* d = nftnl_chain_get_data(c, NFTNL_CHAIN_USERDATA, &len))
            ch.comment = userdata_comment(d, len);
          by_name.emplace(ch.name, seen.chains.size());
          seen.chains.push_back(std::move(ch));
        }
        nftnl_chain_free(c);
        return true;
      },
      err);
  if (e != 0) {
    if (e > 0) err = failure("listing the chains of table " + t_.table, e);
    return false;
  }
  // `nft-rules` prints one chain (four with --sni-guard, four with --host, five with both): a
  // table with more is not in force whatever their rules hold (judge_ruleset), so they are
  // not read. 20,000 chains of 5 rules each, read and matched, stalled answers for seconds.
  // In-guest four are read whether or not serve runs with the guard: a guarded ruleset under
  // a dnsward without it is judged by its marks, rules included, and named as such.
  if (t_.host ? seen.chains.size() != kHostChainCount && seen.chains.size() != kHostGuardChainCount
              : seen.chains.size() > kGuestGuardChains)
    return true;
  // Their rules, in the order the kernel evaluates them; read no further than each chain's
  // mark declares (one more makes it not in force: the rest are only counted).
  std::vector<std::size_t> caps;
  for (const ChainSeen& ch : seen.chains) {
    const auto mark = parse_chain_comment(ch.comment);
    caps.push_back(mark ? mark->rules : 0);
  }
  e = nl_.request(
      NFT_MSG_GETRULE, NLM_F_DUMP, [&](nlmsghdr* nlh) { build_rule_dump(nlh, t_); },
      [&](const nlmsghdr* h) {
        nftnl_rule* r = nftnl_rule_alloc();
        if (nftnl_rule_nlmsg_parse(h, r) >= 0 && nftnl_rule_is_set(r, NFTNL_RULE_TABLE) &&
            t_.table == nftnl_rule_get_str(r, NFTNL_RULE_TABLE) && nftnl_rule_is_set(r, NFTNL_RULE_CHAIN)) {
          const auto at = by_name.find(nftnl_rule_get_str(r, NFTNL_RULE_CHAIN));
          ChainSeen* c = at == by_name.end() ? nullptr : &seen.chains[at->second];
          const std::size_t cap = c ? caps[at->second] : 0;
          if (c && c->rules.size() >= cap) {
            ++c->unread_rules;
          } else if (c) {
            ++rules_read_;
            RuleSeen rule;
            rule.handle = nftnl_rule_get_u64(r, NFTNL_RULE_HANDLE);
            uint32_t len = 0;
            if (const void* d = nftnl_rule_get_data(r, NFTNL_RULE_USERDATA, &len))
              rule.comment = userdata_comment(d, len);
            nftnl_expr_iter* it = nftnl_expr_iter_create(r);
            for (nftnl_expr* x = nftnl_expr_iter_next(it); x; x = nftnl_expr_iter_next(it)) {
              const char* name = nftnl_expr_get_str(x, NFTNL_EXPR_NAME);
              if (!name || std::strcmp(name, "lookup") != 0 || !nftnl_expr_is_set(x, NFTNL_EXPR_LOOKUP_SET))
                continue;
              // `ip daddr != @set` lets through what the set does NOT hold (host mode's
              // anti-spoofing drops that way).
              if (nftnl_expr_is_set(x, NFTNL_EXPR_LOOKUP_FLAGS) &&
                  (nftnl_expr_get_u32(x, NFTNL_EXPR_LOOKUP_FLAGS) & NFT_LOOKUP_F_INV)) {
                rule.negated_lookups.emplace_back(nftnl_expr_get_str(x, NFTNL_EXPR_LOOKUP_SET));
                continue;
              }
              rule.lookups.emplace_back(nftnl_expr_get_str(x, NFTNL_EXPR_LOOKUP_SET));
            }
            nftnl_expr_iter_destroy(it);
            c->rules.push_back(std::move(rule));
          }
        }
        nftnl_rule_free(r);
        return true;
      },
      err);
  if (e == ENOENT) return true;  // the table went meanwhile: its events will follow
  if (e != 0) {
    if (e > 0) err = failure("listing the rules of table " + t_.table, e);
    return false;
  }
  return true;
}

void NftSets::check_ruleset() {
  ++ruleset_checks_;
  RulesetExpectation want;
  want.family = std::string(option_value_name("nft-family", t_.family));
  want.table = t_.table;
  want.set4 = t_.set4;
  want.set6 = t_.set6;
  want.need4 = t_.family != NFPROTO_IPV6;
  want.need6 = t_.family != NFPROTO_IPV4;
  want.guard = t_.guard;
  want.ports4 = t_.ports4;
  want.ports6 = t_.ports6;
  TableSeen seen;
  std::string err;
  RulesetStatus now;
  if (read_ruleset(seen, err)) {
    now = t_.host ? judge_host_ruleset(seen, HostRulesetExpectation{t_.table, t_.set4, t_.set6, t_.sbx4, t_.sbx6, t_.guard,
                                                                      t_.ports4, t_.ports6})
                  : judge_ruleset(seen, want);
    ruleset_retry_ = false;
  } else {
    // Unknown is not in force: the answer fails closed (--require-ruleset) until a read works.
    now.state = RulesetStatus::State::NotInForce;
    now.reason = "cannot read the ruleset from the kernel: " + err;
    ruleset_retry_ = true;
  }
  if (now == ruleset_ && ruleset_.state != RulesetStatus::State::NotChecked) return;  // no transition
  ruleset_ = std::move(now);
  if (ruleset_.in_force())
    log::info("event=ruleset-in-force id={} table={} chain={} rules={}", ruleset_.id,
              log::quote(want.family + " " + t_.table), ruleset_.chain, ruleset_.rules);
  else
    log::error("event=ruleset-not-in-force table={} reason={} msg={}", log::quote(want.family + " " + t_.table),
               log::quote(ruleset_.reason),
               log::quote("egress is NOT filtered by the ruleset of `dnsward nft-rules`: the sets "
                          "dnsward fills hold nothing back while no chain in force uses them"));
}

const RulesetStatus& NftSets::ruleset_now() {
  on_events();  // a change already made is judged before it is reported
  return ruleset_;
}

}  // namespace dnsward
