// Conntrack entries by original source address, through ctnetlink spoken with libmnl.
//
// How entries are found: a dump (IPCTNL_MSG_CT_GET, NLM_F_DUMP) per address family, every
// entry it returns checked here again (the kernel's answer is data, parsed defensively).
// - IPv4: one dump per address with a kernel-side filter (CTA_FILTER, orig flags
//   CTA_IP_SRC; kernels >= 5.8), so only that address's entries cross to userspace. A
//   kernel without CTA_FILTER ignores it and dumps the whole family: the check here keeps
//   the result right, only slower. Many addresses at once: one unfiltered family dump.
// - IPv6: one family dump (nfgen_family AF_INET6), matched here. The kernel's IPv6 source
//   filter compares with !ipv6_addr_cmp() since 5.8 (6.1 included): it skips exactly the
//   entries whose source matches, so it cannot be trusted.
// A filtered flush (IPCTNL_MSG_CT_DELETE with CTA_FILTER and no tuple) would do it in one
// message, but kernels before 6.11 answer it EOPNOTSUPP (Debian 12's 6.1 among them), and
// it reports no count.
//
// How entries are deleted: collected first (deleting while a dump runs on the same socket
// is not allowed), then IPCTNL_MSG_CT_DELETE per entry with its original tuple echoed as
// the kernel dumped it (CTA_TUPLE_ORIG, with CTA_TUPLE_ZONE if the entry's zone is set for
// the original direction only) and CTA_ZONE if the dump carried one: up to kDeleteChunk
// messages per datagram (nfnetlink handles every message of a datagram that is not a
// batch), each with NLM_F_ACK, the ACKs matched by sequence number.
#include "dnsward/conntrack.hpp"

#include <arpa/inet.h>
#include <libmnl/libmnl.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <linux/netlink.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>
#include <memory>

#include "dnsward/clock.hpp"
#include "dnsward/netlink_batch.hpp"

namespace dnsward {

namespace {

// CTA_FILTER_F_CTA_IP_SRC: the kernel defines the filter flags in net/netfilter/
// nf_internals.h, not in a uapi header (libnetfilter_conntrack copies them likewise).
constexpr uint32_t kFilterIpSrc = 1u << 0;

// A dump datagram is at most 32 KiB (netlink caps its dump skbs there); room for more, and
// MSG_TRUNC tells if one ever is larger.
constexpr std::size_t kRecvBuf = 128 * 1024;
// How long to wait for the kernel's next datagram (it answers inside sendmsg() and
// recvmsg(), so only a lost answer waits this long).
constexpr int kWaitMs = 2000;
// Deletes per datagram: their ACKs (one skb each) must fit the receive buffer.
constexpr std::size_t kDeleteChunk = 128;
// Longest original tuple kept for a delete: IP (v6: 44 bytes), proto (about 28), zone (8).
constexpr std::size_t kMaxTupleLen = 256;
// Up to this many IPv4 addresses get a filtered dump each; more share one family dump.
constexpr std::size_t kMaxFilteredDumps = 8;

constexpr uint16_t ct_type(uint8_t msg) { return uint16_t((NFNL_SUBSYS_CTNETLINK << 8) | msg); }

/// One netlink socket for one call: opened, used, closed.
class CtSocket {
 public:
  bool open(std::string& err) {
    nl_ = mnl_socket_open2(NETLINK_NETFILTER, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (!nl_ || mnl_socket_bind(nl_, 0, MNL_SOCKET_AUTOPID) < 0) {
      err = std::string("cannot open a netfilter netlink socket: ") + std::strerror(errno);
      return false;
    }
    portid_ = mnl_socket_get_portid(nl_);
    seq_ = uint32_t(time(nullptr));
    // An error answer echoes only the refused message's header, never the message.
    const int one = 1;
    setsockopt(fd(), SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof one);
    const int rcvbuf = 1 << 20;
    if (setsockopt(fd(), SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) != 0)
      setsockopt(fd(), SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    buf_.reset(new char[kRecvBuf]);
    return true;
  }
  ~CtSocket() {
    if (nl_) mnl_socket_close(nl_);
  }
  int fd() const { return mnl_socket_get_fd(nl_); }
  uint32_t portid() const { return portid_; }
  uint32_t next_seq(uint32_t n = 1) {
    const uint32_t s = seq_;
    seq_ += n;
    return s;
  }
  char* buf() { return buf_.get(); }

  bool send(const void* data, std::size_t len, std::string& err) {
    for (;;) {
      sockaddr_nl to{};
      to.nl_family = AF_NETLINK;
      if (sendto(fd(), data, len, 0, reinterpret_cast<const sockaddr*>(&to), sizeof to) >= 0) return true;
      if (errno == EINTR) continue;
      err = std::string("conntrack netlink send: ") + std::strerror(errno);
      return false;
    }
  }

  /// One datagram from the kernel into buf(): its length, or -1 with err set.
  ssize_t receive(std::string& err) {
    const uint64_t deadline = mono_ms() + kWaitMs;
    for (;;) {
      const ssize_t n = netlink_receive(nullptr, fd(), buf_.get(), kRecvBuf, MSG_TRUNC | MSG_DONTWAIT);
      if (n >= 0) {
        if (std::size_t(n) > kRecvBuf) {
          err = "conntrack netlink answer larger than the receive buffer";
          return -1;
        }
        return n;
      }
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        // ENOBUFS: answers were dropped; nothing of this exchange can be trusted.
        err = std::string("conntrack netlink receive: ") + std::strerror(errno);
        return -1;
      }
      const int64_t wait = int64_t(deadline) - int64_t(mono_ms());
      pollfd p{fd(), POLLIN, 0};
      const int r = wait > 0 ? poll(&p, 1, int(wait)) : 0;
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
        err = "no conntrack netlink answer from the kernel in time";
        return -1;
      }
    }
  }

  /// Whether h answers a message with sequence number in [first, first + count).
  bool ours(const nlmsghdr* h, uint32_t first, uint32_t count) const {
    return h->nlmsg_pid == portid_ && h->nlmsg_seq - first < count;
  }

 private:
  mnl_socket* nl_ = nullptr;
  uint32_t portid_ = 0;
  uint32_t seq_ = 0;
  std::unique_ptr<char[]> buf_;
};

/// Calls f for each attribute in [p, p + len). False if one does not fit (or f says so):
/// the kernel writes well-formed messages, so a malformed one means the stream is not what
/// it seems, and nothing more of it is read.
template <class F>
bool for_each_attr(const void* p, std::size_t len, F&& f) {
  const auto* b = static_cast<const uint8_t*>(p);
  while (len > 0) {
    if (len < sizeof(nlattr)) return false;
    nlattr a;
    std::memcpy(&a, b, sizeof a);
    if (a.nla_len < sizeof(nlattr) || a.nla_len > len) return false;
    if (!f(uint16_t(a.nla_type & NLA_TYPE_MASK), b + sizeof(nlattr), std::size_t(a.nla_len - sizeof(nlattr))))
      return false;
    const std::size_t step = MNL_ALIGN(a.nla_len);
    if (step >= len) break;  // the last one (its padding may be cut)
    b += step;
    len -= step;
  }
  return true;
}

/// An entry of the dump whose original source matched.
struct Entry {
  uint8_t family;               // AF_INET / AF_INET6 (nfgen_family)
  const uint8_t* orig;          // payload of CTA_TUPLE_ORIG
  std::size_t orig_len;
  bool has_zone;                // CTA_ZONE present (a zone for both directions)
  uint16_t zone_be;
};

/// Reads one CT_NEW message of a dump: the entry's family, original tuple and source.
/// False if it is malformed.
bool parse_entry(const nlmsghdr* h, Entry& e, IpAddr& src) {
  if (mnl_nlmsg_get_payload_len(h) < sizeof(nfgenmsg)) return false;
  nfgenmsg g;
  std::memcpy(&g, mnl_nlmsg_get_payload(h), sizeof g);
  if (g.nfgen_family != AF_INET && g.nfgen_family != AF_INET6) return false;
  e = Entry{g.nfgen_family, nullptr, 0, false, 0};
  const auto* attrs = static_cast<const uint8_t*>(mnl_nlmsg_get_payload(h)) + MNL_ALIGN(sizeof(nfgenmsg));
  const std::size_t attrs_len = mnl_nlmsg_get_payload_len(h) - std::min(mnl_nlmsg_get_payload_len(h), std::size_t(MNL_ALIGN(sizeof(nfgenmsg))));
  bool ok = for_each_attr(attrs, attrs_len, [&](uint16_t type, const uint8_t* v, std::size_t n) {
    if (type == CTA_TUPLE_ORIG) {
      if (e.orig) return false;  // twice
      e.orig = v;
      e.orig_len = n;
    } else if (type == CTA_ZONE) {
      if (e.has_zone || n != 2) return false;
      e.has_zone = true;
      std::memcpy(&e.zone_be, v, 2);
    }
    return true;
  });
  if (!ok || !e.orig || e.orig_len > kMaxTupleLen) return false;
  const uint8_t* ip = nullptr;
  std::size_t ip_len = 0;
  ok = for_each_attr(e.orig, e.orig_len, [&](uint16_t type, const uint8_t* v, std::size_t n) {
    if (type == CTA_TUPLE_IP) {
      if (ip) return false;
      ip = v;
      ip_len = n;
    } else if (type == CTA_TUPLE_ZONE) {
      if (n != 2) return false;
    }
    return true;
  });
  if (!ok || !ip) return false;
  const uint16_t want = e.family == AF_INET ? CTA_IP_V4_SRC : CTA_IP_V6_SRC;
  const std::size_t size = e.family == AF_INET ? 4 : 16;
  bool found = false;
  ok = for_each_attr(ip, ip_len, [&](uint16_t type, const uint8_t* v, std::size_t n) {
    if (type != want) return true;
    if (found || n != size) return false;
    src = e.family == AF_INET ? IpAddr::v4(v) : IpAddr::v6(v);
    found = true;
    return true;
  });
  return ok && found;
}

/// Dumps the entries of family (filtered to original source *filter if given), calling
/// on_match for each whose original source is in addrs; on_match returning false ends the
/// dump early (stopped set). False with err if the dump failed or an answer was malformed.
bool dump(uint8_t family, const IpAddr* filter, const std::vector<IpAddr>& addrs,
          const std::function<bool(const Entry&)>& on_match, bool& stopped, std::string& err) {
  stopped = false;
  CtSocket s;
  if (!s.open(err)) return false;
  alignas(nlmsghdr) char req[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* nlh = mnl_nlmsg_put_header(req);
  nlh->nlmsg_type = ct_type(IPCTNL_MSG_CT_GET);
  nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  const uint32_t seq = s.next_seq();
  nlh->nlmsg_seq = seq;
  auto* g = static_cast<nfgenmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(nfgenmsg)));
  g->nfgen_family = family;  // the kernel matches the family only when this is set
  g->version = NFNETLINK_V0;
  g->res_id = 0;
  if (filter) {
    nlattr* orig = mnl_attr_nest_start(nlh, CTA_TUPLE_ORIG);
    nlattr* ip = mnl_attr_nest_start(nlh, CTA_TUPLE_IP);
    mnl_attr_put(nlh, family == AF_INET ? CTA_IP_V4_SRC : CTA_IP_V6_SRC, filter->size(), filter->bytes);
    mnl_attr_nest_end(nlh, ip);
    mnl_attr_nest_end(nlh, orig);
    nlattr* f = mnl_attr_nest_start(nlh, CTA_FILTER);
    mnl_attr_put_u32(nlh, CTA_FILTER_ORIG_FLAGS, kFilterIpSrc);
    mnl_attr_nest_end(nlh, f);
  }
  if (!s.send(nlh, nlh->nlmsg_len, err)) return false;
  const auto family_label = family == AF_INET ? "IPv4" : "IPv6";
  for (;;) {
    const ssize_t n = s.receive(err);
    if (n < 0) return false;
    int len = int(n);
    for (auto* h = reinterpret_cast<const nlmsghdr*>(s.buf()); mnl_nlmsg_ok(h, len);
         h = mnl_nlmsg_next(h, &len)) {
      if (!s.ours(h, seq, 1)) continue;
      if (h->nlmsg_type == NLMSG_DONE) {
        // The dump's end carries its error, if any (netlink_dump_done()).
        int e = 0;
        if (mnl_nlmsg_get_payload_len(h) >= sizeof e) std::memcpy(&e, mnl_nlmsg_get_payload(h), sizeof e);
        if (e < 0) {
          err = std::string("conntrack dump (") + family_label + ") failed: " + std::strerror(-e);
          return false;
        }
        return true;
      }
      if (h->nlmsg_type == NLMSG_ERROR) {
        const int e = netlink_error(h);
        if (e == 0) return true;
        err = std::string("conntrack dump (") + family_label + ") refused: " + std::strerror(e);
        return false;
      }
      if (h->nlmsg_type == NLMSG_NOOP) continue;
      if (h->nlmsg_flags & NLM_F_DUMP_INTR) {
        err = "conntrack dump interrupted";
        return false;
      }
      if (h->nlmsg_type != ct_type(IPCTNL_MSG_CT_NEW)) {
        err = "unexpected message in the conntrack dump";
        return false;
      }
      Entry e;
      IpAddr src;
      if (!parse_entry(h, e, src)) {
        err = "malformed entry in the conntrack dump";
        return false;
      }
      if (e.family != family || std::find(addrs.begin(), addrs.end(), src) == addrs.end()) continue;
      if (!on_match(e)) {
        stopped = true;  // the socket closes with the rest of the dump unread
        return true;
      }
    }
    if (len != 0) {
      err = "truncated message in the conntrack dump";
      return false;
    }
  }
}

/// Runs the dumps that cover addrs (see the top of this file), handing on each match.
bool dump_matching(const std::vector<IpAddr>& addrs, const std::function<bool(const Entry&)>& on_match,
                   bool& stopped, std::string& err) {
  std::vector<IpAddr> v4, v6;
  for (const IpAddr& a : addrs) {
    auto& list = a.family == AF_INET ? v4 : v6;
    if (a.family != AF_INET && a.family != AF_INET6) continue;
    if (std::find(list.begin(), list.end(), a) == list.end()) list.push_back(a);
  }
  stopped = false;
  if (v4.size() <= kMaxFilteredDumps) {
    for (const IpAddr& a : v4) {
      const std::vector<IpAddr> one{a};
      if (!dump(AF_INET, &a, one, on_match, stopped, err)) return false;
      if (stopped) return true;
    }
  } else {
    if (!dump(AF_INET, nullptr, v4, on_match, stopped, err)) return false;
    if (stopped) return true;
  }
  if (!v6.empty() && !dump(AF_INET6, nullptr, v6, on_match, stopped, err)) return false;
  return true;
}

/// What one round collected for deletion: each entry's delete message inputs, the tuples'
/// bytes kept in one buffer.
struct Collected {
  struct Item {
    uint32_t off;
    uint16_t len;
    uint8_t family;
    bool has_zone;
    uint16_t zone_be;
  };
  std::vector<Item> items;
  std::vector<uint8_t> bytes;
};

/// Deletes the collected entries. ENOENT (gone meanwhile) is not an error but is counted in
/// gone; any other refusal is an error, after the rest have been tried.
bool delete_entries(const Collected& c, std::size_t& deleted, std::size_t& gone, std::string& err) {
  CtSocket s;
  if (!s.open(err)) return false;
  // Each message: header 16 + nfgenmsg 4 + tuple (<= kMaxTupleLen + 4) + zone 8.
  constexpr std::size_t kMsgMax = 16 + 4 + kMaxTupleLen + 4 + 8;
  std::vector<char> out(kDeleteChunk * MNL_ALIGN(kMsgMax));
  int first_error = 0;
  for (std::size_t at = 0; at < c.items.size(); at += kDeleteChunk) {
    const std::size_t count = std::min(kDeleteChunk, c.items.size() - at);
    const uint32_t first = s.next_seq(uint32_t(count));
    std::size_t off = 0;
    for (std::size_t i = 0; i < count; ++i) {
      const Collected::Item& it = c.items[at + i];
      nlmsghdr* nlh = mnl_nlmsg_put_header(out.data() + off);
      nlh->nlmsg_type = ct_type(IPCTNL_MSG_CT_DELETE);
      nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
      nlh->nlmsg_seq = first + uint32_t(i);
      auto* g = static_cast<nfgenmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(nfgenmsg)));
      g->nfgen_family = it.family;
      g->version = NFNETLINK_V0;
      g->res_id = 0;
      mnl_attr_put(nlh, CTA_TUPLE_ORIG | NLA_F_NESTED, it.len, c.bytes.data() + it.off);
      if (it.has_zone) mnl_attr_put(nlh, CTA_ZONE, sizeof it.zone_be, &it.zone_be);
      off += MNL_ALIGN(nlh->nlmsg_len);
    }
    if (!s.send(out.data(), off, err)) return false;
    std::vector<bool> answered(count, false);
    std::size_t left = count;
    while (left > 0) {
      const ssize_t n = s.receive(err);
      if (n < 0) return false;
      int len = int(n);
      for (auto* h = reinterpret_cast<const nlmsghdr*>(s.buf()); mnl_nlmsg_ok(h, len);
           h = mnl_nlmsg_next(h, &len)) {
        if (h->nlmsg_type != NLMSG_ERROR || !s.ours(h, first, uint32_t(count))) continue;
        const uint32_t i = h->nlmsg_seq - first;
        if (answered[i]) continue;
        answered[i] = true;
        --left;
        const int e = netlink_error(h);
        if (e == 0) {
          ++deleted;
        } else if (e == ENOENT) {
          ++gone;
        } else if (!first_error) {
          first_error = e;
        }
      }
    }
  }
  if (first_error) {
    err = std::string("cannot delete a conntrack entry: ") + std::strerror(first_error);
    return false;
  }
  return true;
}

}  // namespace

bool count_flows_from(const std::vector<IpAddr>& addrs, std::size_t& count, std::string& err) {
  count = 0;
  if (addrs.empty()) return true;
  bool stopped = false;
  return dump_matching(addrs, [&](const Entry&) {
    ++count;
    return true;
  }, stopped, err);
}

bool forget_flows_from(const std::vector<IpAddr>& addrs, std::size_t& deleted, std::string& err) {
  deleted = 0;
  if (addrs.empty()) return true;
  for (int round = 0; round < kConntrackMaxRounds; ++round) {
    Collected c;
    bool stopped = false;
    const bool ok = dump_matching(addrs, [&](const Entry& e) {
      if (c.items.size() >= kConntrackRoundEntries) return false;  // the rest next round
      c.items.push_back({uint32_t(c.bytes.size()), uint16_t(e.orig_len), e.family, e.has_zone, e.zone_be});
      c.bytes.insert(c.bytes.end(), e.orig, e.orig + e.orig_len);
      return true;
    }, stopped, err);
    if (!ok) return false;
    if (c.items.empty()) return true;
    std::size_t gone = 0;
    if (!delete_entries(c, deleted, gone, err)) return false;
    // Done, unless the dump stopped at the round's cap or an entry was not found by the
    // tuple it was dumped with: usually gone meanwhile, but an entry the kernel cannot
    // find that way would stay. The next round's dump tells which.
    if (!stopped && gone == 0) return true;
  }
  err = "conntrack entries from these addresses remain after " + std::to_string(kConntrackMaxRounds) +
        " rounds (more than " + std::to_string(kConntrackRoundEntries) +
        " each, or entries that deletion by their tuple does not find)";
  return false;
}

}  // namespace dnsward
