#include "dnsward/nftset.hpp"

#include <arpa/inet.h>
#include <libmnl/libmnl.h>
#include <libnftnl/set.h>
#include <libnftnl/table.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <poll.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <functional>
#include <memory>

#include "dnsward/clock.hpp"
#include "dnsward/log.hpp"

namespace dnsward {
namespace {

constexpr const char* kNeedCap =
    " (dnsward needs CAP_NET_ADMIN to manage its nftables sets; run with --no-nft to serve DNS "
    "without the firewall hook)";

// An operator-facing error for a failed netlink step, with the remedy when it is a matter
// of privilege.
std::string failure(const std::string& what) {
  const int e = errno;
  std::string m = what + ": " + std::strerror(e);
  if (e == EPERM || e == EACCES) m += kNeedCap;
  return m;
}

// nftables' datatype numbers for set keys (nftables src/datatype.h): what `nft list set`
// shows as ipv4_addr and ipv6_addr.
constexpr uint32_t kTypeIpv4 = 7, kTypeIpv6 = 8;
// The kernel applies a batch inside sendmsg(), so its ACKs are queued when that returns;
// this bound only guards against a kernel that does otherwise.
constexpr int kAckWaitMs = 200;

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

}  // namespace

/// One message of a batch: its type, flags, and what fills its payload.
struct NftSets::Msg {
  uint16_t type;
  uint16_t flags;
  std::function<void(nlmsghdr*)> payload;
};

NftSets::NftSets(NftTarget target, RefreshMode mode)
    : t_(std::move(target)), mode_(mode), seq_(uint32_t(time(nullptr))), buf_(1 << 17) {
  nl_.reset(mnl_socket_open2(NETLINK_NETFILTER, SOCK_NONBLOCK | SOCK_CLOEXEC));
  if (!nl_ || mnl_socket_bind(nl_.get(), 0, MNL_SOCKET_AUTOPID) < 0)
    throw NftError(failure("cannot open a netfilter netlink socket"));
  portid_ = mnl_socket_get_portid(nl_.get());
  events_.reset(mnl_socket_open2(NETLINK_NETFILTER, SOCK_NONBLOCK | SOCK_CLOEXEC));
  if (!events_ || mnl_socket_bind(events_.get(), 0, MNL_SOCKET_AUTOPID) < 0)
    throw NftError(failure("cannot open the nftables event socket"));
  int group = NFNLGRP_NFTABLES;
  if (mnl_socket_setsockopt(events_.get(), NETLINK_ADD_MEMBERSHIP, &group, sizeof group) < 0)
    throw NftError(failure("cannot subscribe to nftables events"));
  // A larger receive buffer for the command socket: one ACK per message of a batch.
  const int rcvbuf = 1 << 20;
  setsockopt(mnl_socket_get_fd(nl_.get()), SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);

  std::string err;
  if (!ensure(err)) throw NftError(err);
  if (mode_ == RefreshMode::Auto) mode_ = probe_update() ? RefreshMode::Update : RefreshMode::Replace;
}

NftSets::~NftSets() = default;

void NftSets::SocketCloser::operator()(mnl_socket* s) const { mnl_socket_close(s); }

int NftSets::event_fd() const { return mnl_socket_get_fd(events_.get()); }

bool NftSets::transact(const std::vector<Msg>& msgs, std::string& err, int* first_errno) {
  mnl_nlmsg_batch* b = mnl_nlmsg_batch_start(buf_.data(), buf_.size());
  const uint32_t begin_seq = seq_++;
  nftnl_batch_begin(static_cast<char*>(mnl_nlmsg_batch_current(b)), begin_seq);
  mnl_nlmsg_batch_next(b);
  const uint32_t first = seq_;
  for (const Msg& m : msgs) {
    nlmsghdr* nlh = nftnl_nlmsg_build_hdr(static_cast<char*>(mnl_nlmsg_batch_current(b)), m.type,
                                          t_.family, m.flags | NLM_F_ACK, seq_++);
    m.payload(nlh);
    if (!mnl_nlmsg_batch_next(b)) {
      mnl_nlmsg_batch_stop(b);
      err = "netlink batch too large";
      return false;
    }
  }
  const uint32_t last = seq_ - 1;
  const uint32_t end_seq = seq_++;
  nftnl_batch_end(static_cast<char*>(mnl_nlmsg_batch_current(b)), end_seq);
  mnl_nlmsg_batch_next(b);
  const ssize_t sent = mnl_socket_sendto(nl_.get(), mnl_nlmsg_batch_head(b), mnl_nlmsg_batch_size(b));
  mnl_nlmsg_batch_stop(b);
  ++batches_;
  if (sent < 0) {
    err = std::string("netlink send: ") + std::strerror(errno);
    return false;
  }

  // One NLMSG_ERROR per message (error 0 is the ACK), matched by sequence number: mnl_cb_run
  // with one seq cannot check a batch, and an unread error is an error lost.
  std::size_t acked = 0;
  const std::size_t want = msgs.size();
  int error = 0;
  const uint64_t deadline = mono_ms() + kAckWaitMs;
  char rbuf[16384];
  while (acked < want) {
    const ssize_t n = recv(mnl_socket_get_fd(nl_.get()), rbuf, sizeof rbuf, 0);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        const int64_t left = int64_t(deadline) - int64_t(mono_ms());
        pollfd p{mnl_socket_get_fd(nl_.get()), POLLIN, 0};
        if (left <= 0 || poll(&p, 1, int(left)) <= 0) {
          err = "no netlink ACK from the kernel in time";
          return false;
        }
        continue;
      }
      if (errno == EINTR) continue;
      // ENOBUFS: ACKs were dropped; nothing of this batch can be trusted.
      err = std::string("netlink receive: ") + std::strerror(errno);
      return false;
    }
    int len = int(n);
    for (auto* nlh = reinterpret_cast<nlmsghdr*>(rbuf); mnl_nlmsg_ok(nlh, len);
         nlh = mnl_nlmsg_next(nlh, &len)) {
      if (nlh->nlmsg_seq < begin_seq || nlh->nlmsg_seq > end_seq) continue;  // a stale reply
      if (nlh->nlmsg_type != NLMSG_ERROR) continue;
      const auto* e = static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(nlh));
      if (e->error != 0 && error == 0) error = -e->error;
      if (nlh->nlmsg_seq == begin_seq || nlh->nlmsg_seq == end_seq) {
        acked = want;  // the batch as a whole was refused: nothing else will come
        break;
      }
      if (nlh->nlmsg_seq >= first && nlh->nlmsg_seq <= last) ++acked;
    }
  }
  if (error) {
    if (first_errno) *first_errno = error;
    err = std::string("nftables refused the update: ") + std::strerror(error);
    return false;
  }
  return true;
}

int NftSets::request(nlmsghdr* nlh, const std::function<bool(const nlmsghdr*)>& on_reply,
                     std::string& err) {
  const uint32_t seq = nlh->nlmsg_seq;
  if (mnl_socket_sendto(nl_.get(), nlh, nlh->nlmsg_len) < 0) {
    err = std::string("netlink send: ") + std::strerror(errno);
    return -1;
  }
  const uint64_t deadline = mono_ms() + 1000;
  char rbuf[16384];
  for (;;) {
    const ssize_t n = recv(mnl_socket_get_fd(nl_.get()), rbuf, sizeof rbuf, 0);
    if (n < 0) {
      if ((errno == EAGAIN || errno == EINTR) && mono_ms() < deadline) {
        pollfd p{mnl_socket_get_fd(nl_.get()), POLLIN, 0};
        poll(&p, 1, 100);
        continue;
      }
      err = std::string("netlink receive: ") + std::strerror(errno);
      return -1;
    }
    int len = int(n);
    for (auto* h = reinterpret_cast<nlmsghdr*>(rbuf); mnl_nlmsg_ok(h, len); h = mnl_nlmsg_next(h, &len)) {
      if (h->nlmsg_seq != seq) continue;
      if (h->nlmsg_type == NLMSG_DONE) return 0;
      if (h->nlmsg_type == NLMSG_ERROR) return -static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(h))->error;
      if (!on_reply(h)) return -1;
    }
  }
}

bool NftSets::check_set(const std::string& name, uint32_t key_type, uint32_t key_len,
                        bool& exists, std::string& err) {
  exists = false;
  SetPtr q = make_set(t_, name);
  char sbuf[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* nlh = nftnl_nlmsg_build_hdr(sbuf, NFT_MSG_GETSET, t_.family, NLM_F_ACK, seq_++);
  nftnl_set_nlmsg_build_payload(nlh, q.get());
  const int e = request(nlh, [&](const nlmsghdr* h) {
    SetPtr got(nftnl_set_alloc());
    if (nftnl_set_nlmsg_parse(h, got.get()) < 0) return true;
    exists = true;
    const uint32_t type = nftnl_set_get_u32(got.get(), NFTNL_SET_KEY_TYPE);
    const uint32_t klen = nftnl_set_get_u32(got.get(), NFTNL_SET_KEY_LEN);
    const uint32_t flags = nftnl_set_get_u32(got.get(), NFTNL_SET_FLAGS);
    if (type != key_type || klen != key_len) {
      err = "set " + t_.table + " " + name + " exists with another type; dnsward needs type " +
            (key_type == kTypeIpv4 ? "ipv4_addr" : "ipv6_addr") + " with flags timeout";
      return false;
    }
    if (!(flags & NFT_SET_TIMEOUT)) {
      err = "set " + t_.table + " " + name + " exists without 'flags timeout'; dnsward needs it "
            "(elements expire with the DNS TTL)";
      return false;
    }
    return true;
  }, err);
  if (e == 0 || e == ENOENT) return true;  // the ACK; or no such set (or table) yet
  if (e > 0) err = std::string("reading set ") + name + ": " + std::strerror(e);
  return false;
}

bool NftSets::ensure(std::string& err) {
  bool have4 = false, have6 = false;
  if (!check_set(t_.set4, kTypeIpv4, 4, have4, err) ||
      !check_set(t_.set6, kTypeIpv6, 16, have6, err)) {
    if (err.find("Operation not permitted") != std::string::npos) err += kNeedCap;
    return false;
  }
  if (have4 && have6) return true;

  // Creating is idempotent (no NLM_F_EXCL): a table or set that appeared meanwhile is fine.
  std::vector<Msg> msgs;
  msgs.push_back({NFT_MSG_NEWTABLE, NLM_F_CREATE, [this](nlmsghdr* nlh) {
                    nftnl_table* t = nftnl_table_alloc();
                    nftnl_table_set_str(t, NFTNL_TABLE_NAME, t_.table.c_str());
                    nftnl_table_set_u32(t, NFTNL_TABLE_FAMILY, t_.family);
                    nftnl_table_nlmsg_build_payload(nlh, t);
                    nftnl_table_free(t);
                  }});
  uint32_t id = 1;
  for (const auto& [name, type, len, have] :
       {std::tuple{t_.set4, kTypeIpv4, 4u, have4}, std::tuple{t_.set6, kTypeIpv6, 16u, have6}}) {
    if (have) continue;
    msgs.push_back({NFT_MSG_NEWSET, NLM_F_CREATE, [this, name = name, type = type, len = len, id](nlmsghdr* nlh) {
                      SetPtr s = make_set(t_, name);
                      nftnl_set_set_u32(s.get(), NFTNL_SET_KEY_TYPE, type);
                      nftnl_set_set_u32(s.get(), NFTNL_SET_KEY_LEN, len);
                      nftnl_set_set_u32(s.get(), NFTNL_SET_FLAGS, NFT_SET_TIMEOUT);
                      nftnl_set_set_u32(s.get(), NFTNL_SET_ID, id);
                      nftnl_set_set_u32(s.get(), NFTNL_SET_DESC_SIZE, t_.set_size);
                      nftnl_set_nlmsg_build_payload(nlh, s.get());
                    }});
    ++id;
  }
  if (!transact(msgs, err)) {
    if (err.find("Operation not permitted") != std::string::npos)
      err += kNeedCap;
    else
      err = "creating table " + t_.table + ": " + err;
    return false;
  }
  log::info("event=nft-created table={} set4={} set6={}", t_.table, t_.set4, t_.set6);
  return true;
}

bool NftSets::probe_update() {
  // Does re-adding an element with an expiration extend it in place? Try it on a probe set
  // of our own, so the real sets never hold a test address.
  const std::string probe = "dnsward_probe";
  std::string err;
  std::vector<Msg> create = {{NFT_MSG_NEWSET, NLM_F_CREATE, [&](nlmsghdr* nlh) {
                                SetPtr s = make_set(t_, probe);
                                nftnl_set_set_u32(s.get(), NFTNL_SET_KEY_TYPE, kTypeIpv4);
                                nftnl_set_set_u32(s.get(), NFTNL_SET_KEY_LEN, 4);
                                nftnl_set_set_u32(s.get(), NFTNL_SET_FLAGS, NFT_SET_TIMEOUT);
                                nftnl_set_set_u32(s.get(), NFTNL_SET_ID, 99);
                                nftnl_set_nlmsg_build_payload(nlh, s.get());
                              }}};
  auto add = [&](uint64_t timeout_ms, bool expiration) {
    return Msg{NFT_MSG_NEWSETELEM, NLM_F_CREATE, [&, timeout_ms, expiration](nlmsghdr* nlh) {
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
  bool supported = false;
  if (transact(create, err) && transact({add(10000, false)}, err) &&
      transact({add(600000, true)}, err)) {
    char sbuf[MNL_SOCKET_BUFFER_SIZE];
    SetPtr q = make_set(t_, probe);
    nlmsghdr* nlh = nftnl_nlmsg_build_hdr(sbuf, NFT_MSG_GETSETELEM, t_.family, NLM_F_DUMP, seq_++);
    nftnl_set_elems_nlmsg_build_payload(nlh, q.get());
    request(nlh, [&](const nlmsghdr* h) {
      SetPtr got(nftnl_set_alloc());
      if (nftnl_set_elems_nlmsg_parse(h, got.get()) < 0) return true;
      nftnl_set_elems_iter* it = nftnl_set_elems_iter_create(got.get());
      for (nftnl_set_elem* e = nftnl_set_elems_iter_next(it); e; e = nftnl_set_elems_iter_next(it))
        if (nftnl_set_elem_get_u64(e, NFTNL_SET_ELEM_EXPIRATION) > 60000) supported = true;
      nftnl_set_elems_iter_destroy(it);
      return true;
    }, err);
  }
  std::string ignored;
  transact({{NFT_MSG_DELSET, 0, [&](nlmsghdr* nlh) {
               SetPtr s = make_set(t_, probe);
               nftnl_set_nlmsg_build_payload(nlh, s.get());
             }}},
           ignored);
  log::info("event=nft-probe timeout_update={} refresh={}", supported ? "yes" : "no",
            supported ? "update-in-place" : "delete+add");
  return supported;
}

bool NftSets::send_items(const std::vector<VouchItem>& adds, const std::vector<VouchItem>& dels,
                         bool with_expiration, std::string& err, int* first_errno) {
  std::vector<Msg> msgs;
  auto elems = [&](const std::vector<VouchItem>& items, uint8_t family, uint16_t type, bool add) {
    bool any = false;
    for (const auto& i : items) any |= i.addr.family == family;
    if (!any) return;
    const std::string& set = family == AF_INET ? t_.set4 : t_.set6;
    msgs.push_back({type, uint16_t(add ? NLM_F_CREATE : 0),
                    [&, family, add, set](nlmsghdr* nlh) {
                      SetPtr s = make_set(t_, set);
                      for (const auto& i : items) {
                        if (i.addr.family != family) continue;
                        nftnl_set_elem* e = nftnl_set_elem_alloc();
                        nftnl_set_elem_set(e, NFTNL_SET_ELEM_KEY, i.addr.bytes, uint32_t(i.addr.size()));
                        if (add) {
                          const uint64_t ms = uint64_t(i.timeout_s) * 1000u;
                          nftnl_set_elem_set_u64(e, NFTNL_SET_ELEM_TIMEOUT, ms);
                          if (with_expiration) nftnl_set_elem_set_u64(e, NFTNL_SET_ELEM_EXPIRATION, ms);
                        }
                        nftnl_set_elem_add(s.get(), e);
                      }
                      nftnl_set_elems_nlmsg_build_payload(nlh, s.get());
                    }});
  };
  // Deletes first: in one batch a delete + add replaces the element with a fresh timeout.
  elems(dels, AF_INET, NFT_MSG_DELSETELEM, false);
  elems(dels, AF_INET6, NFT_MSG_DELSETELEM, false);
  elems(adds, AF_INET, NFT_MSG_NEWSETELEM, true);
  elems(adds, AF_INET6, NFT_MSG_NEWSETELEM, true);
  if (msgs.empty()) return true;
  return transact(msgs, err, first_errno);
}

bool NftSets::vouch(const std::vector<VouchItem>& items, uint64_t now_ms, std::string& err) {
  on_events();  // a flush that happened before this answer must be seen before trusting view_
  std::vector<VouchItem> need, replace;
  for (const auto& i : items) {
    if (i.timeout_s == 0) {
      err = "refusing a zero element timeout (nftables reads 0 as never expiring)";
      return false;
    }
    const uint64_t want = now_ms + uint64_t(i.timeout_s) * 1000u;
    const auto it = view_.find(i.addr);
    // Already held long enough (a second of slack spares a netlink round trip per hit).
    if (it != view_.end() && it->second + 1000 >= want) continue;
    bool dup = false;
    for (const auto& n : need) dup |= n.addr == i.addr;
    if (dup) continue;
    need.push_back(i);
    if (mode_ == RefreshMode::Replace && it != view_.end() && it->second > now_ms)
      replace.push_back(i);
  }
  if (need.empty()) return true;

  int e = 0;
  bool ok = send_items(need, replace, mode_ == RefreshMode::Update, err, &e);
  if (!ok && mode_ == RefreshMode::Replace && !replace.empty() && e == ENOENT) {
    // An element we meant to replace expired or was deleted meanwhile: add everything, then
    // replace the ones that existed so that every timeout is the fresh one.
    for (const auto& r : replace) view_.erase(r.addr);
    ok = send_items(need, {}, false, err, &e) && send_items(replace, replace, false, err, &e);
  }
  if (!ok) {
    for (const auto& n : need) view_.erase(n.addr);
    return false;
  }
  for (const auto& n : need) view_[n.addr] = now_ms + uint64_t(n.timeout_s) * 1000u;
  if (view_.size() > 2 * std::size_t(t_.set_size)) {
    for (auto it = view_.begin(); it != view_.end();)
      it = it->second <= now_ms ? view_.erase(it) : std::next(it);
  }
  return true;
}

bool NftSets::revoke(const std::vector<IpAddr>& addrs, std::string& err) {
  std::vector<VouchItem> dels;
  const uint64_t now = mono_ms();
  for (const auto& a : addrs) {
    const auto it = view_.find(a);
    if (it != view_.end() && it->second > now) dels.push_back({a, 1});
    view_.erase(a);
  }
  if (dels.empty()) return true;
  int e = 0;
  return send_items({}, dels, false, err, &e) || e == ENOENT;
}

void NftSets::on_events() {
  char rbuf[65536];
  bool changed = false, recreate = false;
  for (;;) {
    const ssize_t n = recv(mnl_socket_get_fd(events_.get()), rbuf, sizeof rbuf, MSG_DONTWAIT);
    if (n < 0) {
      if (errno == ENOBUFS) {  // events were lost: assume the worst
        changed = recreate = true;
        continue;
      }
      break;
    }
    int len = int(n);
    for (auto* h = reinterpret_cast<nlmsghdr*>(rbuf); mnl_nlmsg_ok(h, len); h = mnl_nlmsg_next(h, &len)) {
      if (NFNL_SUBSYS_ID(h->nlmsg_type) != NFNL_SUBSYS_NFTABLES) continue;
      const uint16_t msg = NFNL_MSG_TYPE(h->nlmsg_type);
      if (msg != NFT_MSG_DELTABLE && msg != NFT_MSG_DELSET && msg != NFT_MSG_DELSETELEM) continue;
      if (h->nlmsg_pid == portid_) continue;  // our own delete+add refreshes
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
                                             : nftnl_set_elems_nlmsg_parse(h, s.get());
        if (rc >= 0 && nftnl_set_is_set(s.get(), NFTNL_SET_TABLE))
          table = nftnl_set_get_str(s.get(), NFTNL_SET_TABLE);
      }
      if (table != t_.table) continue;
      changed = true;
      if (msg != NFT_MSG_DELSETELEM) recreate = true;
    }
  }
  if (!changed) return;
  ++external_changes_;
  // The kernel's sets are the truth: forget what we believed they hold, so the next answer
  // for any name vouches again.
  view_.clear();
  log::warn("event=nft-external-change table={} msg={}", t_.table,
            log::quote(recreate ? "table or set removed: recreating; every address will be vouched again"
                                : "elements removed: every address will be vouched again"));
  if (recreate) {
    std::string err;
    if (!ensure(err)) log::error("event=nft-recreate-failed error={}", log::quote(err));
  }
}

}  // namespace dnsward
