// The netlink transport and NftSets against the REAL kernel, with faults injected at the
// socket (NetlinkFaults): lost and late answers, ENOBUFS, answers forged by another
// process, a kernel without in-place timeout update, events lost or still queued; and the
// judgement of the ruleset (is the chain `nft-rules` prints in force?) against what real
// `nft` commands leave in the kernel. Fakes cannot reach this code; these tests do.
//
// The process enters a network namespace of its own first (unshare(CLONE_NEWNET)), so it
// works on an empty nftables ruleset of the real kernel, isolated from the host's; the
// `nft` processes it runs inherit that namespace. Without root (or without namespaces) it
// exits with kSkipCode, which ctest reports as Not Run.
//
// No sleeps: the kernel applies a batch and queues its answers and events inside
// sendmsg() (nfnetlink_rcv_batch()), so everything a test waits for is already there when
// the sending call returns; the only wait is the transport's own deadline for answers
// that never come.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <libmnl/libmnl.h>
#include <libnftnl/set.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netlink.h>
#include <sched.h>
#include <sys/capability.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dnsward/clock.hpp"
#include "dnsward/log.hpp"
#include "dnsward/netlink_batch.hpp"
#include "dnsward/nft_rules.hpp"
#include "dnsward/nft_sets.hpp"
#include "dnsward/ruleset_check.hpp"

using namespace dnsward;

namespace {

constexpr int kSkipCode = 77;  // SKIP_RETURN_CODE of the ctest entry

// ---------------------------------------------------------------------------------------
// The kernel's side, read and changed without the code under test.

/// Runs `nft -f FILE` in this process's network namespace.
int nft_file(const std::string& path) {
  const pid_t pid = fork();
  if (pid == 0) {
    execlp("nft", "nft", "-f", path.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/// Runs `nft ARGS` (one command line, no shell) in this process's network namespace.
int nft(const std::string& args) {
  const pid_t pid = fork();
  if (pid == 0) {
    execlp("nft", "nft", args.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

struct Held {
  uint64_t left_ms = 0;     ///< NFTA_SET_ELEM_EXPIRATION: time left
  uint64_t timeout_ms = 0;  ///< NFTA_SET_ELEM_TIMEOUT
};
using Elements = std::map<std::string, Held>;  // by address text

std::string text_of(const void* key, uint32_t len) {
  char out[INET6_ADDRSTRLEN] = {};
  if (len != 4 && len != 16) {  // a concatenation (a port set's key): its bytes in hex
    std::string hex;
    for (uint32_t i = 0; i < len; ++i) hex += fmt::format("{:02x}", static_cast<const uint8_t*>(key)[i]);
    return hex;
  }
  inet_ntop(len == 4 ? AF_INET : AF_INET6, key, out, sizeof out);
  return out;
}

/// What a set holds, by a netlink dump of our own (plain libmnl, which checks sequence
/// number and port ID itself in mnl_cb_run()). nullopt: the set (or table) does not exist.
std::optional<Elements> kernel_set(const std::string& table, const std::string& set) {
  mnl_socket* nl = mnl_socket_open(NETLINK_NETFILTER);
  REQUIRE(nl);
  REQUIRE(mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) == 0);
  std::vector<char> buf(1 << 16);
  const uint32_t seq = 1;
  nlmsghdr* nlh = nftnl_nlmsg_build_hdr(buf.data(), NFT_MSG_GETSETELEM, NFPROTO_INET, NLM_F_DUMP, seq);
  nftnl_set* s = nftnl_set_alloc();
  nftnl_set_set_str(s, NFTNL_SET_TABLE, table.c_str());
  nftnl_set_set_str(s, NFTNL_SET_NAME, set.c_str());
  nftnl_set_elems_nlmsg_build_payload(nlh, s);
  nftnl_set_free(s);
  REQUIRE(mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) >= 0);
  Elements out;
  auto cb = [](const nlmsghdr* h, void* data) -> int {
    nftnl_set* got = nftnl_set_alloc();
    if (nftnl_set_elems_nlmsg_parse(h, got) >= 0) {
      nftnl_set_elems_iter* it = nftnl_set_elems_iter_create(got);
      for (nftnl_set_elem* e = nftnl_set_elems_iter_next(it); e; e = nftnl_set_elems_iter_next(it)) {
        uint32_t len = 0;
        const void* key = nftnl_set_elem_get(e, NFTNL_SET_ELEM_KEY, &len);
        Held held;
        if (nftnl_set_elem_is_set(e, NFTNL_SET_ELEM_EXPIRATION))
          held.left_ms = nftnl_set_elem_get_u64(e, NFTNL_SET_ELEM_EXPIRATION);
        if (nftnl_set_elem_is_set(e, NFTNL_SET_ELEM_TIMEOUT))
          held.timeout_ms = nftnl_set_elem_get_u64(e, NFTNL_SET_ELEM_TIMEOUT);
        (*static_cast<Elements*>(data))[text_of(key, len)] = held;
      }
      nftnl_set_elems_iter_destroy(it);
    }
    nftnl_set_free(got);
    return MNL_CB_OK;
  };
  int ret = 0;
  do {
    const ssize_t n = mnl_socket_recvfrom(nl, buf.data(), buf.size());
    REQUIRE(n > 0);
    ret = mnl_cb_run(buf.data(), size_t(n), seq, mnl_socket_get_portid(nl), cb, &out);
  } while (ret > 0);
  const int e = errno;
  mnl_socket_close(nl);
  if (ret < 0) {
    REQUIRE(e == ENOENT);
    return std::nullopt;
  }
  return out;
}

IpAddr ip(const char* text) {
  IpAddr a;
  REQUIRE(IpAddr::parse(text, a));
  return a;
}

/// A table of its own for each test, in the namespace all tests share.
NftTarget target(const char* table) {
  NftTarget t;
  t.table = table;
  t.set_size = 1024;
  return t;
}

const Provenance kWho{"example.org", "example.org"};

bool vouch(NftSets& sets, const char* addr, uint32_t timeout_s, std::string& err) {
  return sets.vouch({{ip(addr), timeout_s}}, mono_ms(), kWho, err);
}

uint64_t elapsed_ms(std::chrono::steady_clock::time_point since) {
  return uint64_t(std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - since).count());
}

/// The messages of a datagram we send (a batch, or one request).
std::vector<const nlmsghdr*> messages(const void* data, std::size_t len) {
  std::vector<const nlmsghdr*> out;
  int left = int(len);
  for (auto* h = static_cast<const nlmsghdr*>(data); mnl_nlmsg_ok(h, left); h = mnl_nlmsg_next(h, &left))
    out.push_back(h);
  return out;
}

bool is_batch(const void* data, std::size_t len) {
  const auto m = messages(data, len);
  return !m.empty() && m.front()->nlmsg_type == NFNL_MSG_BATCH_BEGIN;
}

uint16_t nft_type(const nlmsghdr* h) {
  return NFNL_SUBSYS_ID(h->nlmsg_type) == NFNL_SUBSYS_NFTABLES ? NFNL_MSG_TYPE(h->nlmsg_type) : 0;
}

/// An NLMSG_ERROR datagram as the kernel builds it (netlink_ack()): error 0 is an ACK.
std::vector<char> error_answer(uint32_t seq, uint32_t portid, int error) {
  std::vector<char> out(NLMSG_SPACE(sizeof(nlmsgerr)));
  auto* h = reinterpret_cast<nlmsghdr*>(out.data());
  h->nlmsg_len = uint32_t(out.size());
  h->nlmsg_type = NLMSG_ERROR;
  h->nlmsg_flags = NLM_F_CAPPED;
  h->nlmsg_seq = seq;
  h->nlmsg_pid = portid;
  auto* e = static_cast<nlmsgerr*>(NLMSG_DATA(h));
  e->error = -error;
  e->msg.nlmsg_seq = seq;
  e->msg.nlmsg_pid = portid;
  return out;
}

// ---------------------------------------------------------------------------------------
// The fault script: what the seam does to the next sends and receives of one socket.

struct Script : NetlinkFaults {
  /// The next N sends are not sent but reported sent: the kernel never sees them, so
  /// never answers.
  int drop_sends = 0;
  /// While set, every datagram that arrives is taken off the socket and held: answers
  /// that are late. Once cleared, the held ones are handed in first, as a kernel (or a
  /// scheduler) that delivers them late would.
  bool hold = false;
  std::deque<std::vector<char>> held;
  /// The next N receives fail with recv_errno (ENOBUFS: the socket's buffer overflowed).
  /// With drain, what is queued is dropped first: those are the messages that were lost;
  /// without it they stay queued, to be read later.
  int fail_recvs = 0;
  int recv_errno = ENOBUFS;
  bool drain = false;
  /// Datagrams handed in before the socket's own, with the sender's port ID (0: the kernel).
  std::deque<std::pair<std::vector<char>, uint32_t>> inject;
  /// Called with every datagram about to be sent; may replace it (an older kernel's view).
  std::function<void(std::vector<char>&)> rewrite;
  /// Called around the real send (e.g. to drop a capability for it).
  std::function<void()> before_send, after_send;
  int sends = 0;

  ssize_t send(int fd, const void* data, std::size_t len) override {
    ++sends;
    if (drop_sends > 0) {
      --drop_sends;
      return ssize_t(len);
    }
    std::vector<char> out(static_cast<const char*>(data), static_cast<const char*>(data) + len);
    if (rewrite) rewrite(out);
    if (before_send) before_send();
    const ssize_t n = NetlinkFaults::send(fd, out.data(), out.size());
    const int e = errno;
    if (after_send) after_send();
    errno = e;
    return n < 0 ? n : ssize_t(len);
  }

  ssize_t recv(int fd, void* buf, std::size_t size, int flags, sockaddr_nl* from) override {
    if (fail_recvs > 0) {
      --fail_recvs;
      if (drain) take_all(fd, nullptr);
      errno = recv_errno;
      return -1;
    }
    if (!inject.empty()) {
      auto [d, pid] = std::move(inject.front());
      inject.pop_front();
      if (from) from->nl_pid = pid;
      return hand_in(d, buf, size);
    }
    if (hold) {
      take_all(fd, &held);
      errno = EAGAIN;
      return -1;
    }
    if (!held.empty()) {
      std::vector<char> d = std::move(held.front());
      held.pop_front();
      if (from) from->nl_pid = 0;
      return hand_in(d, buf, size);
    }
    return NetlinkFaults::recv(fd, buf, size, flags, from);
  }

 private:
  static ssize_t hand_in(const std::vector<char>& d, void* buf, std::size_t size) {
    std::memcpy(buf, d.data(), std::min(size, d.size()));
    return ssize_t(d.size());  // as with MSG_TRUNC
  }
  // Takes every queued datagram off the socket (the socket is non-blocking).
  void take_all(int fd, std::deque<std::vector<char>>* into) {
    std::vector<char> b(1 << 16);
    for (;;) {
      sockaddr_nl from{};
      const ssize_t n = NetlinkFaults::recv(fd, b.data(), b.size(), MSG_DONTWAIT, &from);
      if (n < 0) {
        if (errno == ENOBUFS) continue;  // the error is reported once, then the queue reads on
        return;
      }
      if (into) into->emplace_back(b.begin(), b.begin() + std::min<std::ptrdiff_t>(n, std::ptrdiff_t(b.size())));
    }
  }
};

// ---------------------------------------------------------------------------------------
// A kernel before 6.12 (Debian 12's 6.1), emulated at the socket: re-adding an element that
// exists, without NLM_F_EXCL, is ACKed and changes nothing (nft_add_set_elem() turns
// -EEXIST into 0 and no update). 6.12+ would refresh its timeout in place instead, so the
// rewrite removes such elements from the batch; a message left without elements becomes a
// NEWTABLE of the same table (no NLM_F_EXCL: the kernel ACKs it and changes nothing), so
// that its sequence number is still answered with 0.
void emulate_no_update(std::vector<char>& datagram) {
  if (!is_batch(datagram.data(), datagram.size())) return;
  std::vector<char> out(datagram.size() + 4096);
  std::size_t at = 0;
  std::set<std::string> deleted;  // table/set/address deleted earlier in this batch
  std::map<std::string, std::optional<Elements>> before;  // the kernel's sets before the batch
  auto exists = [&](const std::string& table, const std::string& set, const std::string& addr) {
    const std::string where = table + "/" + set;
    if (!before.count(where)) before[where] = kernel_set(table, set);
    return !deleted.count(where + "/" + addr) && before[where] && before[where]->count(addr);
  };
  for (const nlmsghdr* h : messages(datagram.data(), datagram.size())) {
    const uint16_t type = nft_type(h);
    if (type != NFT_MSG_NEWSETELEM && type != NFT_MSG_DELSETELEM) {
      std::memcpy(out.data() + at, h, h->nlmsg_len);
      at += NLMSG_ALIGN(h->nlmsg_len);
      continue;
    }
    nftnl_set* s = nftnl_set_alloc();
    REQUIRE(nftnl_set_elems_nlmsg_parse(h, s) >= 0);
    const std::string table = nftnl_set_get_str(s, NFTNL_SET_TABLE);
    const std::string name = nftnl_set_get_str(s, NFTNL_SET_NAME);
    const uint16_t family = static_cast<const nfgenmsg*>(mnl_nlmsg_get_payload(h))->nfgen_family;
    nftnl_set* keep = nftnl_set_alloc();
    nftnl_set_set_str(keep, NFTNL_SET_TABLE, table.c_str());
    nftnl_set_set_str(keep, NFTNL_SET_NAME, name.c_str());
    nftnl_set_set_u32(keep, NFTNL_SET_FAMILY, family);
    int kept = 0;
    nftnl_set_elems_iter* it = nftnl_set_elems_iter_create(s);
    for (nftnl_set_elem* e = nftnl_set_elems_iter_next(it); e; e = nftnl_set_elems_iter_next(it)) {
      uint32_t len = 0;
      const void* key = nftnl_set_elem_get(e, NFTNL_SET_ELEM_KEY, &len);
      const std::string addr = text_of(key, len);
      if (type == NFT_MSG_DELSETELEM) deleted.insert(table + "/" + name + "/" + addr);
      if (type == NFT_MSG_NEWSETELEM && !(h->nlmsg_flags & NLM_F_EXCL) && exists(table, name, addr))
        continue;  // 6.1: ACKed, nothing changes
      // What dnsward's messages carry: key, timeout, expiration (nftnl_set_elem_clone() is
      // not exported by Debian 12's libnftnl).
      nftnl_set_elem* copy = nftnl_set_elem_alloc();
      nftnl_set_elem_set(copy, NFTNL_SET_ELEM_KEY, key, len);
      for (const uint16_t attr : {uint16_t(NFTNL_SET_ELEM_TIMEOUT), uint16_t(NFTNL_SET_ELEM_EXPIRATION)})
        if (nftnl_set_elem_is_set(e, attr)) nftnl_set_elem_set_u64(copy, attr, nftnl_set_elem_get_u64(e, attr));
      nftnl_set_elem_add(keep, copy);
      ++kept;
    }
    nftnl_set_elems_iter_destroy(it);
    nlmsghdr* nh;
    if (kept) {
      nh = nftnl_nlmsg_build_hdr(out.data() + at, type, family, h->nlmsg_flags, h->nlmsg_seq);
      nftnl_set_elems_nlmsg_build_payload(nh, keep);
    } else {
      nh = nftnl_nlmsg_build_hdr(out.data() + at, NFT_MSG_NEWTABLE, family, h->nlmsg_flags & ~NLM_F_EXCL,
                                 h->nlmsg_seq);
      mnl_attr_put_strz(nh, NFTA_TABLE_NAME, table.c_str());
    }
    at += NLMSG_ALIGN(nh->nlmsg_len);
    nftnl_set_free(keep);
    nftnl_set_free(s);
  }
  out.resize(at);
  datagram = std::move(out);
}

/// The kernel's version, to know which refresh mode the probe must find without faults.
bool kernel_has_update_in_place() {
  utsname u{};
  uname(&u);
  int major = 0, minor = 0;
  std::sscanf(u.release, "%d.%d", &major, &minor);
  return major > 6 || (major == 6 && minor >= 12);
}

/// Sets CAP_NET_ADMIN in the effective set on or off (root keeps it in the permitted set).
void net_admin(bool on) {
  cap_t caps = cap_get_proc();
  REQUIRE(caps);
  const cap_value_t which[] = {CAP_NET_ADMIN};
  REQUIRE(cap_set_flag(caps, CAP_EFFECTIVE, 1, which, on ? CAP_SET : CAP_CLEAR) == 0);
  REQUIRE(cap_set_proc(caps) == 0);
  cap_free(caps);
}

/// A batch message that adds addr to table/set, exclusively or not.
NetlinkSocket::Msg add_msg(const std::string& table, const std::string& set, const char* addr, bool excl) {
  const IpAddr a = ip(addr);
  return {NFT_MSG_NEWSETELEM, uint16_t(NLM_F_CREATE | (excl ? NLM_F_EXCL : 0)), [=](nlmsghdr* nlh) {
            nftnl_set* s = nftnl_set_alloc();
            nftnl_set_set_str(s, NFTNL_SET_TABLE, table.c_str());
            nftnl_set_set_str(s, NFTNL_SET_NAME, set.c_str());
            nftnl_set_elem* e = nftnl_set_elem_alloc();
            nftnl_set_elem_set(e, NFTNL_SET_ELEM_KEY, a.bytes, uint32_t(a.size()));
            nftnl_set_elem_set_u64(e, NFTNL_SET_ELEM_TIMEOUT, 60000);
            nftnl_set_elem_add(s, e);
            nftnl_set_elems_nlmsg_build_payload(nlh, s);
            nftnl_set_free(s);
          }};
}

NetlinkSocket::Msg del_msg(const std::string& table, const std::string& set, const char* addr) {
  const IpAddr a = ip(addr);
  return {NFT_MSG_DELSETELEM, 0, [=](nlmsghdr* nlh) {
            nftnl_set* s = nftnl_set_alloc();
            nftnl_set_set_str(s, NFTNL_SET_TABLE, table.c_str());
            nftnl_set_set_str(s, NFTNL_SET_NAME, set.c_str());
            nftnl_set_elem* e = nftnl_set_elem_alloc();
            nftnl_set_elem_set(e, NFTNL_SET_ELEM_KEY, a.bytes, uint32_t(a.size()));
            nftnl_set_elem_add(s, e);
            nftnl_set_elems_nlmsg_build_payload(nlh, s);
            nftnl_set_free(s);
          }};
}

/// The message NftSets' constructor throws for these arguments ("" if it starts).
template <typename... Args>
std::string start_error(Args&&... args) {
  try {
    NftSets sets(std::forward<Args>(args)...);
  } catch (const NftError& e) {
    return e.what();
  }
  return "";
}

/// A table with one timeout set `s` of IPv4 addresses, made with nft.
void make_table(const std::string& table, const std::string& extra = "") {
  REQUIRE(nft("add table inet " + table) == 0);
  REQUIRE(nft("add set inet " + table + " s { type ipv4_addr; flags timeout; " + extra + "}") == 0);
}

}  // namespace

// =======================================================================================
// The transport: answers matched by sequence number, port ID and sender; errors as errno.

TEST_CASE("transport: an error message too short to hold its error is never read as an ACK") {
  // The receive buffer is not cleared between reads: a truncated NLMSG_ERROR's missing
  // error field would be stale bytes, perhaps zeros, which read as "accepted".
  alignas(nlmsghdr) char buf[NLMSG_HDRLEN + sizeof(nlmsgerr)] = {};
  auto* h = reinterpret_cast<nlmsghdr*>(buf);
  h->nlmsg_type = NLMSG_ERROR;
  h->nlmsg_len = NLMSG_HDRLEN;  // no payload at all
  CHECK(netlink_error(h) == EBADMSG);
  h->nlmsg_len = NLMSG_HDRLEN + sizeof(int);  // the error, but not the echoed header
  CHECK(netlink_error(h) == EBADMSG);
  h->nlmsg_len = sizeof buf;
  CHECK(netlink_error(h) == 0);
  reinterpret_cast<nlmsgerr*>(buf + NLMSG_HDRLEN)->error = -ENOENT;
  CHECK(netlink_error(h) == ENOENT);
}

TEST_CASE("transport: each message's error answer is read as its errno, in its place") {
  make_table("tr_errno", "size 2;");
  REQUIRE(nft("add element inet tr_errno s { 192.0.2.1 timeout 60s }") == 0);
  NetlinkSocket nl(NFPROTO_INET);
  std::vector<int> res;
  std::string err;
  // A batch is one transaction (nfnetlink_rcv_batch()): the kernel answers every message
  // (NLM_F_ACK) and, because one was refused, applies none of them.
  REQUIRE(nl.transact({add_msg("tr_errno", "s", "192.0.2.2", true), del_msg("tr_errno", "s", "192.0.2.9"),
                       add_msg("tr_errno", "s", "192.0.2.1", true)},
                      res, err));
  CHECK(res == std::vector<int>{0, ENOENT, EEXIST});
  CHECK(nl.last_errno() == 0);
  CHECK(kernel_set("tr_errno", "s")->count("192.0.2.2") == 0);  // rolled back
  // A full set (declared size 2) refuses with ENFILE ("Too many open files in system").
  REQUIRE(nl.transact({add_msg("tr_errno", "s", "192.0.2.2", true)}, res, err));
  REQUIRE(res == std::vector<int>{0});
  REQUIRE(nl.transact({add_msg("tr_errno", "s", "192.0.2.3", true)}, res, err));
  CHECK(res == std::vector<int>{ENFILE});
}

TEST_CASE("transport: a batch refused as a whole reports the kernel's errno (EPERM without CAP_NET_ADMIN)") {
  NetlinkSocket nl(NFPROTO_INET);
  Script script;
  nl.set_faults(&script);
  // nfnetlink_rcv() checks CAP_NET_ADMIN of the sender for the whole batch and answers its
  // first message (the batch begin) with EPERM: a real refusal, not a forged one.
  script.before_send = [] { net_admin(false); };
  script.after_send = [] { net_admin(true); };
  std::vector<int> res;
  std::string err;
  CHECK_FALSE(nl.transact({add_msg("tr_eperm", "s", "192.0.2.1", false)}, res, err));
  CHECK(nl.last_errno() == EPERM);
  CHECK(kernel_set("tr_eperm", "s") == std::nullopt);
}

TEST_CASE("transport: a batch whose answers are late fails in bounded time, and its late answers are not taken for the next batch's") {
  make_table("tr_late");
  NetlinkSocket nl(NFPROTO_INET);
  Script script;
  nl.set_faults(&script);
  std::vector<int> res;
  std::string err;
  script.hold = true;  // the kernel answers (inside sendmsg()), but the answer is held back
  const auto t0 = std::chrono::steady_clock::now();
  CHECK_FALSE(nl.transact({add_msg("tr_late", "s", "192.0.2.1", true)}, res, err));
  const uint64_t ms = elapsed_ms(t0);
  CHECK(nl.last_errno() == ETIMEDOUT);
  CHECK(ms >= 150);   // it waited for the answer (200 ms) ...
  CHECK(ms < 2000);   // ... and no longer
  REQUIRE(script.held.size() == 1);  // the ACK of that batch, now late
  CHECK(kernel_set("tr_late", "s")->count("192.0.2.1") == 1);  // the kernel did apply it
  // Now the late ACK (error 0) arrives first, then the answer to the next batch: a delete
  // of an element that is not there, which the kernel refuses with ENOENT. Taken by
  // position instead of by sequence number, the late ACK would read as "deleted".
  script.hold = false;
  REQUIRE(nl.transact({del_msg("tr_late", "s", "192.0.2.9")}, res, err));
  CHECK(script.held.empty());
  CHECK(res == std::vector<int>{ENOENT});
}

TEST_CASE("transport: after ENOBUFS the batch fails, and its answers still queued are skipped by the next batch") {
  make_table("tr_nobufs");
  NetlinkSocket nl(NFPROTO_INET);
  Script script;
  nl.set_faults(&script);
  std::vector<int> res;
  std::string err;
  // ENOBUFS: the receive buffer overflowed and some answer was dropped; what did fit is
  // still queued and is read after the error (netlink_recvmsg() reports sk_err once).
  script.fail_recvs = 1;
  script.recv_errno = ENOBUFS;
  CHECK_FALSE(nl.transact({add_msg("tr_nobufs", "s", "192.0.2.1", true)}, res, err));
  CHECK(nl.last_errno() == ENOBUFS);
  REQUIRE(nl.transact({del_msg("tr_nobufs", "s", "192.0.2.9")}, res, err));
  CHECK(res == std::vector<int>{ENOENT});
}

TEST_CASE("transport: an answer another process sends to our port ID is never taken for the kernel's") {
  make_table("tr_forged");
  NetlinkSocket nl(NFPROTO_INET);
  Script script;
  nl.set_faults(&script);
  // A second netlink socket (another process, as far as the kernel is concerned) sends a
  // forged "refused: ENOENT" for our batch's message before the batch itself goes out; as
  // root it may (netlink_sendmsg() allows unicast to a user port with CAP_NET_ADMIN), and
  // the kernel queues it ahead of its own ACK.
  mnl_socket* forger = mnl_socket_open(NETLINK_NETFILTER);
  REQUIRE(forger);
  REQUIRE(mnl_socket_bind(forger, 0, MNL_SOCKET_AUTOPID) == 0);
  int forged = 0;
  script.rewrite = [&](std::vector<char>& d) {
    if (!is_batch(d.data(), d.size())) return;
    const uint32_t seq = messages(d.data(), d.size())[1]->nlmsg_seq;
    const std::vector<char> fake = error_answer(seq, nl.portid(), ENOENT);
    sockaddr_nl to{};
    to.nl_family = AF_NETLINK;
    to.nl_pid = nl.portid();
    REQUIRE(sendto(mnl_socket_get_fd(forger), fake.data(), fake.size(), 0, reinterpret_cast<sockaddr*>(&to), sizeof to) ==
            ssize_t(fake.size()));
    ++forged;
  };
  std::vector<int> res;
  std::string err;
  REQUIRE(nl.transact({add_msg("tr_forged", "s", "192.0.2.1", true)}, res, err));
  CHECK(forged == 1);
  CHECK(res == std::vector<int>{0});
  CHECK(kernel_set("tr_forged", "s")->count("192.0.2.1") == 1);
  mnl_socket_close(forger);
}

TEST_CASE("transport: an answer addressed to another port ID is not ours") {
  make_table("tr_portid");
  NetlinkSocket nl(NFPROTO_INET);
  Script script;
  nl.set_faults(&script);
  // An ACK with our next sequence number but another socket's port ID (the kernel sets
  // nlmsg_pid to the requester's, netlink_ack()), handed in ahead of the kernel's answer.
  script.rewrite = [&](std::vector<char>& d) {
    if (!is_batch(d.data(), d.size())) return;
    const uint32_t seq = messages(d.data(), d.size())[1]->nlmsg_seq;
    script.inject.push_back({error_answer(seq, nl.portid() + 1, ENOENT), 0});
  };
  std::vector<int> res;
  std::string err;
  REQUIRE(nl.transact({add_msg("tr_portid", "s", "192.0.2.1", true)}, res, err));
  CHECK(script.inject.empty());
  CHECK(res == std::vector<int>{0});
}

// =======================================================================================
// NftSets: vouch() fails closed, and recovers.

TEST_CASE("vouch: when the kernel never answers, vouch fails within the answer wait, and the next vouch works") {
  Script batches;
  NftSets sets(target("v_lost"), RefreshMode::Auto, {&batches, nullptr, nullptr});
  std::string err;
  batches.drop_sends = 1;  // the batch never reaches the kernel
  const auto t0 = std::chrono::steady_clock::now();
  CHECK_FALSE(vouch(sets, "192.0.2.1", 300, err));
  const uint64_t ms = elapsed_ms(t0);
  CHECK(ms >= 150);
  CHECK(ms < 2000);
  CHECK_FALSE(err.empty());
  CHECK(kernel_set("v_lost", "allowed4")->count("192.0.2.1") == 0);
  err.clear();
  CHECK(vouch(sets, "192.0.2.1", 300, err));
  CHECK(err.empty());
  const Elements held = *kernel_set("v_lost", "allowed4");
  REQUIRE(held.count("192.0.2.1"));
  CHECK(held.at("192.0.2.1").left_ms > 290000);
}

TEST_CASE("vouch: when the answers are late, vouch fails; the next vouch is not fooled by them and gives the new timeout") {
  Script batches;
  NftSets sets(target("v_late"), RefreshMode::Auto, {&batches, nullptr, nullptr});
  std::string err;
  batches.hold = true;
  CHECK_FALSE(vouch(sets, "192.0.2.1", 60, err));
  CHECK_FALSE(batches.held.empty());
  // The late batch did reach the kernel: the element is there with the short timeout.
  REQUIRE(kernel_set("v_late", "allowed4")->count("192.0.2.1") == 1);
  CHECK(kernel_set("v_late", "allowed4")->at("192.0.2.1").left_ms <= 60000);
  batches.hold = false;
  // The next answer needs 600 s. Its exclusive add is refused (EEXIST: the late batch's
  // element), so the element is replaced. Had the late ACK been taken as this batch's
  // answer, the add would count as done and the kernel would keep 60 s.
  CHECK(vouch(sets, "192.0.2.1", 600, err));
  CHECK(batches.held.empty());
  CHECK(kernel_set("v_late", "allowed4")->at("192.0.2.1").left_ms > 590000);
}

TEST_CASE("vouch: ENOBUFS on the batch socket fails the vouch; the next vouch gives the new timeout") {
  Script batches;
  NftSets sets(target("v_nobufs"), RefreshMode::Auto, {&batches, nullptr, nullptr});
  std::string err;
  batches.fail_recvs = 1;
  batches.recv_errno = ENOBUFS;
  CHECK_FALSE(vouch(sets, "192.0.2.1", 60, err));
  CHECK(err.find(std::strerror(ENOBUFS)) != std::string::npos);
  CHECK(vouch(sets, "192.0.2.1", 600, err));
  CHECK(kernel_set("v_nobufs", "allowed4")->at("192.0.2.1").left_ms > 590000);
}

// =======================================================================================
// NftSets: errors read by errno.

TEST_CASE("errors: creating the table refused for lack of CAP_NET_ADMIN (EPERM) names the remedy") {
  Script batches;
  // Reads pass; only the batch that creates the table is sent without CAP_NET_ADMIN, so
  // the kernel refuses that batch as a whole with EPERM.
  bool in_batch = false;
  batches.rewrite = [&](std::vector<char>& d) { in_batch = is_batch(d.data(), d.size()); };
  batches.before_send = [&] {
    if (in_batch) net_admin(false);
  };
  batches.after_send = [&] { net_admin(true); };
  std::string what;
  try {
    NftSets sets(target("e_eperm"), RefreshMode::Auto, {&batches, nullptr, nullptr});
  } catch (const NftError& e) {
    what = e.what();
  }
  CHECK(what.find("creating table e_eperm") != std::string::npos);
  CHECK(what.find("CAP_NET_ADMIN") != std::string::npos);
  CHECK(what.find("--no-nft") != std::string::npos);
  CHECK(kernel_set("e_eperm", "allowed4") == std::nullopt);
}

TEST_CASE("errors: a batch an LSM refuses (EACCES from sendmsg) is read by its errno, not its text") {
  // security_netlink_send() failing makes sendmsg() itself return EACCES. Its text,
  // "Permission denied", is not EPERM's: only the errno says privilege is the remedy.
  struct Lsm : Script {
    ssize_t send(int fd, const void* data, std::size_t len) override {
      if (is_batch(data, len)) {
        errno = EACCES;
        return -1;
      }
      return Script::send(fd, data, len);
    }
  } lsm;
  std::string what;
  try {
    NftSets sets(target("e_eacces"), RefreshMode::Auto, {&lsm, nullptr, nullptr});
  } catch (const NftError& e) {
    what = e.what();
  }
  CHECK(what.find("creating table e_eacces") != std::string::npos);
  CHECK(what.find("CAP_NET_ADMIN") != std::string::npos);
}

TEST_CASE("errors: a full set fails the vouch and says so in words (ENFILE)") {
  NftTarget t = target("e_full");
  t.set_size = 1;
  NftSets sets(t, RefreshMode::Auto);
  std::string err;
  REQUIRE(vouch(sets, "192.0.2.1", 60, err));
  CHECK_FALSE(vouch(sets, "192.0.2.2", 60, err));
  CHECK(err.find("is full") != std::string::npos);
  CHECK(err.find("--nft-set-size") != std::string::npos);
  CHECK(kernel_set("e_full", "allowed4")->count("192.0.2.2") == 0);
}

// =======================================================================================
// NftSets: the refresh-mode probe.

TEST_CASE("probe: auto picks update on a kernel that updates timeouts in place") {
  if (!kernel_has_update_in_place()) return;  // checked by the next test's emulation instead
  NftSets sets(target("p_update"), RefreshMode::Auto);
  CHECK(sets.mode() == RefreshMode::Update);
  std::string err;
  REQUIRE(vouch(sets, "192.0.2.1", 60, err));
  REQUIRE(vouch(sets, "192.0.2.1", 600, err));
  CHECK(kernel_set("p_update", "allowed4")->at("192.0.2.1").left_ms > 590000);
  CHECK(kernel_set("p_update", "dnsward_probe") == std::nullopt);  // the probe set is gone
}

TEST_CASE("probe: without in-place timeout updates, auto falls back to replace and vouching still extends timeouts") {
  Script batches;
  batches.rewrite = emulate_no_update;  // every batch, the probe's included, as on 6.1
  NftSets sets(target("p_replace"), RefreshMode::Auto, {&batches, nullptr, nullptr});
  CHECK(sets.mode() == RefreshMode::Replace);
  CHECK(kernel_set("p_replace", "dnsward_probe") == std::nullopt);
  std::string err;
  REQUIRE(vouch(sets, "192.0.2.1", 60, err));
  CHECK(kernel_set("p_replace", "allowed4")->at("192.0.2.1").left_ms <= 60000);
  // A longer answer: delete + add in one batch. An in-place re-add would be ACKed and
  // change nothing on this (emulated) kernel, leaving 60 s.
  REQUIRE(vouch(sets, "192.0.2.1", 600, err));
  CHECK(kernel_set("p_replace", "allowed4")->at("192.0.2.1").left_ms > 590000);
}

TEST_CASE("probe: update forced on a kernel without in-place timeout updates is refused at start, naming replace") {
  Script batches;
  batches.rewrite = emulate_no_update;  // 6.1: a re-add is ACKed and changes nothing
  const std::string what =
      start_error(target("p_forced"), RefreshMode::Update, NftFaults{&batches, nullptr, nullptr});
  // Started, it would believe every re-add extended its element while none did.
  CHECK(what.find("--nft-refresh update: this kernel does not update an element's timeout in place") == 0);
  CHECK(what.find("use --nft-refresh replace") != std::string::npos);
  CHECK(kernel_set("p_forced", "dnsward_probe") == std::nullopt);  // the probe cleaned up
}

TEST_CASE("probe: a forced mode is probed too: update is kept where the kernel has it, replace everywhere") {
  if (kernel_has_update_in_place()) {
    NftSets sets(target("p_forced_ok"), RefreshMode::Update);
    CHECK(sets.mode() == RefreshMode::Update);
  }
  Script batches;
  batches.rewrite = emulate_no_update;
  NftSets sets(target("p_forced_replace"), RefreshMode::Replace, {&batches, nullptr, nullptr});
  CHECK(sets.mode() == RefreshMode::Replace);
  std::string err;
  REQUIRE(vouch(sets, "192.0.2.1", 60, err));
  REQUIRE(vouch(sets, "192.0.2.1", 600, err));
  CHECK(kernel_set("p_forced_replace", "allowed4")->at("192.0.2.1").left_ms > 590000);
}

TEST_CASE("probe: when the probe itself fails, auto picks replace mode, which works on every kernel") {
  // Every batch that touches the probe set is refused as a whole (EPERM, as nfnetlink_rcv()
  // answers a sender without CAP_NET_ADMIN): the probe learns nothing.
  struct RefuseProbe : Script {
    int refused = 0;
    ssize_t send(int fd, const void* data, std::size_t len) override {
      const std::string_view bytes(static_cast<const char*>(data), len);
      if (!is_batch(data, len) || bytes.find("dnsward_probe") == std::string_view::npos)
        return Script::send(fd, data, len);
      ++refused;
      sockaddr_nl me{};  // the port ID the kernel gave the socket, as its answers carry it
      socklen_t alen = sizeof me;
      REQUIRE(getsockname(fd, reinterpret_cast<sockaddr*>(&me), &alen) == 0);
      const uint32_t begin_seq = messages(data, len).front()->nlmsg_seq;
      inject.push_back({error_answer(begin_seq, me.nl_pid, EPERM), 0});
      return ssize_t(len);
    }
  } batches;
  NftSets sets(target("p_failed"), RefreshMode::Auto, {&batches, nullptr, nullptr});
  CHECK(batches.refused >= 1);
  CHECK(sets.mode() == RefreshMode::Replace);
  std::string err;
  REQUIRE(vouch(sets, "192.0.2.1", 60, err));
  REQUIRE(vouch(sets, "192.0.2.1", 600, err));
  CHECK(kernel_set("p_failed", "allowed4")->at("192.0.2.1").left_ms > 590000);
  // update forced where the probe cannot tell: refused too (it cannot be confirmed).
  const std::string what =
      start_error(target("p_failed_forced"), RefreshMode::Update, NftFaults{&batches, nullptr, nullptr});
  CHECK(what.find("--nft-refresh update: could not confirm") == 0);
  CHECK(what.find(std::strerror(EPERM)) != std::string::npos);
}

// =======================================================================================
// NftSets: events.

TEST_CASE("events: queued events are read before the view is trusted (a flush is noticed by the next vouch)") {
  NftSets sets(target("ev_flush"), RefreshMode::Auto);
  std::string err;
  REQUIRE(vouch(sets, "192.0.2.1", 300, err));
  REQUIRE(vouch(sets, "2001:db8::1", 300, err));
  // Someone else flushes the set; its DELSETELEM events are queued on dnsward's event
  // socket when nft returns. No loop runs: vouch() itself must read them.
  REQUIRE(nft("flush set inet ev_flush allowed4") == 0);
  REQUIRE(kernel_set("ev_flush", "allowed4")->empty());
  CHECK(vouch(sets, "192.0.2.1", 300, err));
  CHECK(kernel_set("ev_flush", "allowed4")->count("192.0.2.1") == 1);
  CHECK(sets.external_changes() == 1);
}

TEST_CASE("events: when events are lost (ENOBUFS), the sets are reread and a flushed element is added back") {
  Script events;
  NftSets sets(target("ev_lost"), RefreshMode::Auto, {nullptr, nullptr, &events});
  std::string err;
  REQUIRE(vouch(sets, "192.0.2.1", 300, err));
  REQUIRE(nft("flush set inet ev_lost allowed4") == 0);
  // The flush's events are lost: the event socket overflowed (the kernel drops what does
  // not fit and the next recv() reports ENOBUFS). dnsward cannot know what changed.
  events.fail_recvs = 1;
  events.drain = true;
  CHECK(vouch(sets, "192.0.2.1", 300, err));
  CHECK(events.fail_recvs == 0);
  CHECK(kernel_set("ev_lost", "allowed4")->count("192.0.2.1") == 1);
}

TEST_CASE("events: when events are lost (ENOBUFS), a set deleted meanwhile is recreated") {
  Script events;
  NftSets sets(target("ev_lostset"), RefreshMode::Auto, {nullptr, nullptr, &events});
  REQUIRE(nft("delete set inet ev_lostset allowed6") == 0);
  events.fail_recvs = 1;
  events.drain = true;
  sets.on_events();
  CHECK(events.fail_recvs == 0);
  CHECK(kernel_set("ev_lostset", "allowed6").has_value());
  CHECK(sets.rereading());
}

TEST_CASE("events: when events are lost (ENOBUFS), rules added meanwhile are checked") {
  Script events;
  NftSets sets(target("ev_lostrule"), RefreshMode::Auto, {nullptr, nullptr, &events});
  REQUIRE(sets.foreign_set_rules() == 0);
  REQUIRE(nft("add chain inet ev_lostrule out { type filter hook output priority 0; }") == 0);
  REQUIRE(nft("add rule inet ev_lostrule out update @allowed4 { ip daddr }") == 0);
  events.fail_recvs = 1;
  events.drain = true;
  sets.on_events();
  CHECK(sets.foreign_set_rules() == 1);
}

// =======================================================================================

// a revocation batch whose answers are late was applied all the same; the ledger
// must not go on believing the element is held.
TEST_CASE("after a revocation whose answers were late, an answer for the same address puts it back in the set") {
  Script batches;
  NftSets sets(target("lost_revoke"), RefreshMode::Auto, {&batches, nullptr, nullptr});
  std::string err;
  REQUIRE(sets.vouch({{ip("192.0.2.7"), 300}}, mono_ms(), Provenance{"gone.test", "gone.test"}, err));
  REQUIRE(kernel_set("lost_revoke", "allowed4")->count("192.0.2.7") == 1);
  batches.hold = true;  // the delete reaches the kernel; its ACK is late
  const RevokeOutcome r = sets.revoke_unless(
      [](const IpAddr&, std::string_view p) { return p == "kept.test" ? Voucher::Listed : Voucher::Gone; },
      [](const IpAddr&, std::string_view) { return false; }, mono_ms());
  CHECK_FALSE(r.ok);
  batches.hold = false;
  REQUIRE(kernel_set("lost_revoke", "allowed4")->count("192.0.2.7") == 0);  // deleted
  // An entry still listed answers with the same address: vouch says yes, so the pipeline
  // relays it. It must be in the kernel's set.
  CHECK(sets.vouch({{ip("192.0.2.7"), 300}}, mono_ms(), Provenance{"kept.test", "kept.test"}, err));
  CHECK(kernel_set("lost_revoke", "allowed4")->count("192.0.2.7") == 1);
}

// =======================================================================================
// The ruleset: is the chain `nft-rules` prints in force in our table?

namespace {

/// The ruleset `dnsward nft-rules` prints for a table (args: more nft-rules options).
std::string ruleset_text(const std::string& table, std::vector<std::string> args = {}) {
  args.insert(args.end(), {"--user", "root", "--nft-table", table});
  if (std::find(args.begin(), args.end(), "--upstream") == args.end())
    args.insert(args.end(), {"--upstream", "192.0.2.53"});
  const ParseOutcome r = parse_nft_rules(args, "/dev/null");
  REQUIRE_MESSAGE(r.config, r.error);
  return render_nft_rules(*r.config);
}

/// Loads ruleset text with `nft -f`; nft's exit code.
int load(const std::string& text) {
  char path[] = "/tmp/dnsward-ruleset-XXXXXX";
  const int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  REQUIRE(write(fd, text.data(), text.size()) == ssize_t(text.size()));
  close(fd);
  const int rc = nft_file(path);
  unlink(path);
  return rc;
}

/// The id and rule count the text's chain comment declares.
ChainMark mark_of(const std::string& text) {
  const auto at = text.find("comment \"dnsward ruleset ");
  REQUIRE(at != std::string::npos);
  const auto m = parse_chain_comment(text.substr(at + 9, text.find('"', at + 9) - at - 9));
  REQUIRE(m);
  return *m;
}

/// What `nft ARGS` prints (run through popen: ARGS is one trusted command line).
std::string nft_output(const std::string& args) {
  FILE* f = popen(("nft " + args).c_str(), "r");
  REQUIRE(f);
  std::string out;
  char buf[4096];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) out.append(buf, n);
  pclose(f);
  return out;
}

/// The handles of the rules of chain `chain` (default output), in order, as `nft -a` lists them.
std::vector<uint64_t> rule_handles(const std::string& table, const std::string& chain = "output") {
  const std::string cmd = "nft -a list chain inet " + table + " " + chain;
  FILE* f = popen(cmd.c_str(), "r");
  REQUIRE(f);
  std::vector<uint64_t> out;
  char line[4096];
  while (std::fgets(line, sizeof line, f)) {
    const std::string l = line;
    const auto at = l.rfind(" # handle ");
    if (at == std::string::npos || l.compare(at - 1, 1, "{") == 0) continue;  // a table, set or chain
    out.push_back(std::stoull(l.substr(at + 10)));
  }
  pclose(f);
  return out;
}

std::string first_lines_without(const std::string& text, const std::string& line) {
  std::string out = text;
  const auto at = out.find(line);
  REQUIRE(at != std::string::npos);
  out.erase(at, line.size());
  return out;
}

}  // namespace

TEST_CASE("ruleset: the ruleset nft-rules prints, loaded before the start, is in force, in each family") {
  for (const char* family : {"inet", "ip", "ip6"}) {
    const std::string fam = family;
    CAPTURE(fam);
    const std::string table = "rs_start_" + fam;
    std::vector<std::string> args = {"--nft-family", family};
    if (fam == "ip6") args.insert(args.end(), {"--listen", "[::1]:53", "--upstream", "[2001:db8::53]"});
    const std::string text = ruleset_text(table, args);
    REQUIRE(load(text) == 0);
    NftTarget t = target(table.c_str());
    t.family = fam == "inet" ? NFPROTO_INET : fam == "ip" ? NFPROTO_IPV4 : NFPROTO_IPV6;
    NftSets sets(t, RefreshMode::Auto);
    const RulesetStatus& r = sets.ruleset();
    CHECK_MESSAGE(r.in_force(), r.reason);
    CHECK(r.id == fmt::format("{:016x}", mark_of(text).id));
    CHECK(r.rules == mark_of(text).rules);
    CHECK(r.chain == "output");
    CHECK(sets.ruleset_checks() == 1);
  }
}

TEST_CASE("ruleset: sets without the ruleset are not in force; the ruleset loaded later is noticed at the end of its transaction") {
  NftSets sets(target("rs_later"), RefreshMode::Auto);  // creates the table: no chain
  CHECK(sets.ruleset().state == RulesetStatus::State::NotInForce);
  CHECK(sets.ruleset().reason.find("no chain of table inet rs_later carries the comment") != std::string::npos);
  const uint64_t checks = sets.ruleset_checks();
  // One `nft -f`: a transaction of dozens of events (the table deleted and rebuilt, two
  // sets, a chain, its rules), judged once, at its end.
  REQUIRE(load(ruleset_text("rs_later")) == 0);
  sets.on_events();
  CHECK_MESSAGE(sets.ruleset().in_force(), sets.ruleset().reason);
  CHECK(sets.ruleset_checks() == checks + 1);
  // Nothing more to read: no second judgement.
  sets.on_events();
  CHECK(sets.ruleset_checks() == checks + 1);
}

TEST_CASE("ruleset: each way out of force is noticed by its event, with its reason, and loading the ruleset again restores it") {
  const std::string table = "rs_cases";
  const std::string text = ruleset_text(table);
  const ChainMark mark = mark_of(text);
  REQUIRE(mark.rules == 13);  // the reasons below count them
  REQUIRE(load(text) == 0);
  NftSets sets(target(table.c_str()), RefreshMode::Auto);
  REQUIRE(sets.ruleset().in_force());
  const std::string id = fmt::format("{:016x}", mark.id);
  // The rule that looks up allowed4 (its place in the printed chain).
  const std::string lookup4 = "ip daddr @allowed4 accept comment \"";
  const std::size_t at4 = text.find(lookup4);
  REQUIRE(at4 != std::string::npos);
  const std::size_t from = at4 + lookup4.size();
  const auto m4 = parse_rule_comment(text.substr(from, text.find('"', from) - from));
  REQUIRE(m4);
  const std::string comment4 = ruleset_rule_comment(mark.id, m4->index, mark.rules);
  const struct {
    const char* what;
    std::function<void()> change;
    const char* says;
  } cases[] = {
      {"a rule deleted",
       [&] {
         REQUIRE(nft(fmt::format("delete rule inet {} output handle {}", table, rule_handles(table).at(3))) == 0);
       },
       "rule 3 of chain output"},
      {"a rule inserted", [&] { REQUIRE(nft("insert rule inet " + table + " output accept") == 0); },
       "rule 0 of chain output"},
      {"a rule appended", [&] { REQUIRE(nft("add rule inet " + table + " output accept") == 0); },
       "holds 14 rules where its comment declares 13"},
      {"a rule replaced by one without its comment (the count unchanged)",
       [&] {
         REQUIRE(nft(fmt::format("replace rule inet {} output handle {} accept", table,
                                 rule_handles(table).at(5))) == 0);
       },
       "rule 5 of chain output"},
      {"the policy changed to accept",
       [&] { REQUIRE(nft("chain inet " + table + " output { policy accept ; }") == 0); },
       "chain output has policy accept, not drop"},
      {"the chain deleted", [&] { REQUIRE(nft("delete chain inet " + table + " output") == 0); },
       "no chain of table inet rs_cases carries the comment"},
      {"the chain replaced by an unhooked chain with the same rules",
       [&] {
         REQUIRE(nft("delete chain inet " + table + " output") == 0);
         REQUIRE(load(first_lines_without(text, "\t\ttype filter hook output priority filter; policy drop;\n")) == 0);
       },
       "chain output is not a base chain (no hook)"},
      {"the chain on another hook",
       [&] {
         std::string other = text;
         other.replace(other.find("hook output"), 11, "hook input");
         REQUIRE(load(other) == 0);
       },
       "chain output is on the input hook, not output"},
      {"the table made dormant", [&] { REQUIRE(nft("add table inet " + table + " { flags dormant ; }") == 0); },
       "is dormant"},
      {"the rule that looks up allowed4 replaced by one that does not, comment kept",
       [&] {
         REQUIRE(nft(fmt::format("replace rule inet {} output handle {} accept comment \"{}\"", table,
                                 rule_handles(table).at(m4->index), comment4)) == 0);
       },
       "no rule of chain output looks up set allowed4"},
      {"that lookup inverted, comment kept",
       [&] {
         REQUIRE(nft(fmt::format("replace rule inet {} output handle {} ip daddr != @allowed4 accept comment \"{}\"",
                                 table, rule_handles(table).at(m4->index), comment4)) == 0);
       },
       "no rule of chain output looks up set allowed4"},
      {"another chain in its table rewriting the destination after the filter",
       [&] {
         REQUIRE(nft("add chain inet " + table + " post { type filter hook postrouting priority 0 ; }") == 0);
         REQUIRE(nft("add rule inet " + table + " post ip daddr set 192.0.2.99") == 0);
       },
       "holds 2 chains where `nft-rules` prints one (output); besides it: post"},
      {"another chain in its table, a regular one",
       [&] { REQUIRE(nft("add chain inet " + table + " spare") == 0); },
       "holds 2 chains where `nft-rules` prints one (output); besides it: spare"},
      {"its sets declared with flags interval, timeout",
       [&] {
         std::string interval = text;
         for (std::size_t at; (at = interval.find("flags timeout")) != std::string::npos;)
           interval.replace(at, 13, "flags interval, timeout");
         REQUIRE(load(interval) == 0);
       },
       "set allowed4 of table inet rs_cases has flags interval, timeout where dnsward needs flags timeout alone"},
  };
  for (const auto& c : cases) {
    const std::string what = c.what;
    CAPTURE(what);
    c.change();
    sets.on_events();
    CHECK(sets.ruleset().state == RulesetStatus::State::NotInForce);
    CHECK_MESSAGE(sets.ruleset().reason.find(c.says) != std::string::npos, sets.ruleset().reason);
    // The same file again: in force, noticed without a restart.
    REQUIRE(load(text) == 0);
    sets.on_events();
    CHECK_MESSAGE(sets.ruleset().in_force(), sets.ruleset().reason);
    CHECK(sets.ruleset().id == id);
  }
}

TEST_CASE("ruleset --sni-guard: the guard chains that clear forged verdict marks, at their priority, are part of it") {
  // dnsward's verdict is NF_ACCEPT: the guard chains (priority -175, before iptables' mangle
  // at -150 and the filter chains at 0) clear every packet's verdict bits before the queue;
  // without them, or after the queue, a mark a packet's sender set would read as a verdict.
  const std::string table = "rs_guard";
  const std::string text = ruleset_text(table, {"--sni-guard", "--queue-backend", "xt"});
  REQUIRE(load(text) == 0);
  NftTarget t = target(table.c_str());
  t.guard = true;
  t.ports4 = "allowed4_ports";
  t.ports6 = "allowed6_ports";
  NftSets sets(t, RefreshMode::Auto);
  REQUIRE_MESSAGE(sets.ruleset().in_force(), sets.ruleset().reason);
  CHECK(sets.ruleset().chain == "output,input,guard_output,guard_input");
  // The kernel holds `priority mangle - 25` as -175.
  const std::string listed = nft_output("list chain inet " + table + " guard_output");
  CHECK_MESSAGE(listed.find("type filter hook output priority -175; policy accept;") != std::string::npos, listed);
  const struct {
    const char* what;
    std::function<void()> change;
    std::string says;
  } cases[] = {
      {"guard_output deleted", [&] { REQUIRE(nft("delete chain inet " + table + " guard_output") == 0); },
       "holds no chain marked as chain 2 of 4 (the guard_output chain"},
      {"guard_input deleted", [&] { REQUIRE(nft("delete chain inet " + table + " guard_input") == 0); },
       "holds no chain marked as chain 3 of 4 (the guard_input chain"},
      {"guard_input after iptables' mangle",
       [&] {
         REQUIRE(nft("delete chain inet " + table + " guard_input") == 0);
         std::string later = text;
         const auto at = later.find("hook input priority mangle - 25");
         REQUIRE(at != std::string::npos);
         later.replace(at, 31, "hook input priority mangle + 5");
         REQUIRE(load(later) == 0);
       },
       "chain guard_input (chain 3 of 4) is at priority -145, not -175"},
      {"the clear deleted from guard_output",
       [&] {
         REQUIRE(nft(fmt::format("delete rule inet {} guard_output handle {}", table,
                                 rule_handles(table, "guard_output").at(0))) == 0);
       },
       "rule 0 of chain guard_output"},
  };
  for (const auto& c : cases) {
    const std::string what = c.what;
    CAPTURE(what);
    c.change();
    sets.on_events();
    CHECK(sets.ruleset().state == RulesetStatus::State::NotInForce);
    CHECK_MESSAGE(sets.ruleset().reason.find(c.says) != std::string::npos, sets.ruleset().reason);
    REQUIRE(load(text) == 0);
    sets.on_events();
    CHECK_MESSAGE(sets.ruleset().in_force(), sets.ruleset().reason);
  }
  REQUIRE(nft("delete table inet " + table) == 0);
}

namespace {
std::vector<std::string> g_logged;  // what the code under test logged, while captured
void capture(std::string_view line) { g_logged.emplace_back(line); }
std::size_t logged(const std::string& what) {
  return std::size_t(std::count_if(g_logged.begin(), g_logged.end(),
                                   [&](const std::string& l) { return l.find(what) != std::string::npos; }));
}
}  // namespace

TEST_CASE("ruleset: a change that leaves it in force is judged but not logged again; each transition is logged once") {
  struct Restore {
    decltype(log::sink) saved = log::sink;
    ~Restore() { log::sink = saved; }
  } restore;
  g_logged.clear();
  log::sink = capture;
  REQUIRE(load(ruleset_text("rs_quiet")) == 0);
  NftSets sets(target("rs_quiet"), RefreshMode::Auto);
  REQUIRE(sets.ruleset().in_force());
  CHECK(logged("event=ruleset-in-force") == 1);
  const uint64_t checks = sets.ruleset_checks();
  // A set of its own in dnsward's table: judged (it touches the table), still in force.
  REQUIRE(nft("add set inet rs_quiet extra { type ipv4_addr ; }") == 0);
  sets.on_events();
  CHECK(sets.ruleset_checks() == checks + 1);
  CHECK(sets.ruleset().in_force());
  CHECK(logged("event=ruleset-in-force") == 1);
  CHECK(logged("event=ruleset-not-in-force") == 0);
  REQUIRE(nft("chain inet rs_quiet output { policy accept ; }") == 0);
  sets.on_events();
  CHECK(logged("event=ruleset-not-in-force") == 1);
  CHECK(logged("level=error") == 1);
  REQUIRE(nft("add element inet rs_quiet extra { 192.0.2.1 }") == 0);  // out of force still, same reason
  REQUIRE(nft("delete set inet rs_quiet extra") == 0);
  sets.on_events();
  CHECK(logged("event=ruleset-not-in-force") == 1);
}

TEST_CASE("ruleset: when events are lost (ENOBUFS), the ruleset is judged again") {
  Script events;
  const std::string text = ruleset_text("rs_lost");
  REQUIRE(load(text) == 0);
  NftSets sets(target("rs_lost"), RefreshMode::Auto, {nullptr, nullptr, &events});
  REQUIRE(sets.ruleset().in_force());
  REQUIRE(nft("chain inet rs_lost output { policy accept ; }") == 0);
  events.fail_recvs = 1;  // the change's events, its end among them, are lost
  events.drain = true;
  sets.on_events();
  CHECK(events.fail_recvs == 0);
  CHECK(sets.ruleset().state == RulesetStatus::State::NotInForce);
  CHECK(sets.ruleset().reason.find("policy accept") != std::string::npos);
}

TEST_CASE("ruleset: churn that does not touch its table's chains or rules is not judged again") {
  REQUIRE(load(ruleset_text("rs_churn")) == 0);
  NftSets sets(target("rs_churn"), RefreshMode::Auto);
  REQUIRE(sets.ruleset().in_force());
  const uint64_t checks = sets.ruleset_checks();
  std::string err;
  REQUIRE(vouch(sets, "192.0.2.1", 300, err));                                 // our own elements
  REQUIRE(nft("add element inet rs_churn allowed4 { 192.0.2.2 timeout 60s }") == 0);  // someone's
  REQUIRE(nft("add table inet rs_other") == 0);  // another table's chains and rules
  REQUIRE(nft("add chain inet rs_other c { type filter hook output priority 0 ; policy accept ; }") == 0);
  REQUIRE(nft("add rule inet rs_other c accept") == 0);
  sets.on_events();
  CHECK(sets.ruleset_checks() == checks);
  CHECK(sets.ruleset().in_force());
  REQUIRE(nft("delete table inet rs_other") == 0);
}

TEST_CASE("ruleset: a change still queued is judged when the pipeline asks, with no loop run") {
  REQUIRE(load(ruleset_text("rs_queued")) == 0);
  NftSets sets(target("rs_queued"), RefreshMode::Auto);
  REQUIRE(sets.ruleset().in_force());
  REQUIRE(nft("delete chain inet rs_queued output") == 0);
  // No loop runs: ruleset_now() (what the pipeline asks) reads the queued events itself.
  CHECK(sets.ruleset().in_force());  // not read yet
  CHECK(sets.ruleset_now().state == RulesetStatus::State::NotInForce);
}

namespace {
/// The ruleset text with its sets declared `flags interval, timeout`.
std::string with_interval_sets(std::string text) {
  for (std::size_t at = 0; (at = text.find("flags timeout", at)) != std::string::npos; at += 23)
    text.replace(at, 13, "flags interval, timeout");
  return text;
}
}  // namespace

TEST_CASE("ruleset: sets with flags interval are refused at start; loaded later, answers are withheld and it is not in force") {
  // In an interval set, an element without an end opens a range to the top of the address
  // space: 93.184.216.34 would let 93.184.216.34-255.255.255.255 through.
  const std::string interval = with_interval_sets(ruleset_text("rs_interval"));
  REQUIRE(interval.find("flags interval, timeout") != std::string::npos);
  REQUIRE(load(interval) == 0);
  std::string what;
  try {
    NftSets sets(target("rs_interval"), RefreshMode::Auto);
  } catch (const NftError& e) {
    what = e.what();
  }
  CHECK_MESSAGE(what.find("set rs_interval allowed4 exists with flags interval, timeout; dnsward needs "
                          "'flags timeout' and no other flag") != std::string::npos,
                what);
  CHECK(kernel_set("rs_interval", "allowed4")->empty());

  // Loaded while serve runs (one transaction: the table deleted and rebuilt).
  const std::string text = ruleset_text("rs_interval_later");
  REQUIRE(load(text) == 0);
  NftSets sets(target("rs_interval_later"), RefreshMode::Auto);
  REQUIRE(sets.ruleset().in_force());
  REQUIRE(load(with_interval_sets(text)) == 0);
  sets.on_events();
  CHECK(sets.ruleset().state == RulesetStatus::State::NotInForce);
  CHECK_MESSAGE(sets.ruleset().reason.find("set allowed4 of table inet rs_interval_later has flags interval, timeout") !=
                    std::string::npos,
                sets.ruleset().reason);
  std::string err;
  CHECK_FALSE(vouch(sets, "93.184.216.34", 300, err));
  CHECK_MESSAGE(err.find("flags interval, timeout") != std::string::npos, err);
  CHECK(kernel_set("rs_interval_later", "allowed4")->empty());
  // The ruleset of nft-rules again: in force, and vouches go in, a single address each.
  REQUIRE(load(text) == 0);
  sets.on_events();
  CHECK_MESSAGE(sets.ruleset().in_force(), sets.ruleset().reason);
  err.clear();
  CHECK_MESSAGE(vouch(sets, "93.184.216.34", 300, err), err);
  CHECK(kernel_set("rs_interval_later", "allowed4")->size() == 1);
}

TEST_CASE("ruleset: a table of 20,000 chains is judged without reading their rules; a chain's rules beyond its mark are only counted") {
  const std::string table = "rs_many";
  REQUIRE(load(ruleset_text(table)) == 0);
  NftSets sets(target(table.c_str()), RefreshMode::Auto);
  REQUIRE(sets.ruleset().in_force());
  CHECK(sets.ruleset_rules_read() == 13);
  // 20,000 regular chains of 5 rules each, in one transaction: read and matched rule by
  // rule against every chain, they stalled the loop (and DNS) for seconds.
  std::string many = "table inet " + table + " {\n";
  for (int i = 0; i < 20000; ++i) {
    many += fmt::format("chain c{} {{\n", i);
    for (int j = 0; j < 5; ++j) many += fmt::format("ip daddr 10.{}.{}.{} accept\n", j, i / 250, i % 250);
    many += "}\n";
  }
  many += "}\n";
  REQUIRE(load(many) == 0);
  const auto t0 = std::chrono::steady_clock::now();
  sets.on_events();
  const uint64_t ms = elapsed_ms(t0);
  MESSAGE("judged 20,000 chains in " << ms << " ms");
  CHECK(sets.ruleset().state == RulesetStatus::State::NotInForce);
  CHECK_MESSAGE(sets.ruleset().reason.find("holds 20001 chains where `nft-rules` prints one (output)") != std::string::npos,
                sets.ruleset().reason);
  CHECK(sets.ruleset_rules_read() == 0);
  // One chain again, with 5,000 rules appended: 13 read, the rest counted.
  REQUIRE(load(ruleset_text(table)) == 0);
  sets.on_events();
  REQUIRE(sets.ruleset().in_force());
  std::string more;
  for (int i = 0; i < 5000; ++i) more += fmt::format("add rule inet {} output ip daddr 10.9.{}.{} accept\n", table, i / 250, i % 250);
  REQUIRE(load(more) == 0);
  sets.on_events();
  CHECK(sets.ruleset().state == RulesetStatus::State::NotInForce);
  CHECK_MESSAGE(sets.ruleset().reason.find("chain output holds 5013 rules where its comment declares 13") != std::string::npos,
                sets.ruleset().reason);
  CHECK(sets.ruleset_rules_read() == 13);
  REQUIRE(nft("delete table inet " + table) == 0);
}

// =======================================================================================
// ports= (issue 13): the port sets, as `nft-rules --sni-guard` declares them.

namespace {
VouchItem port_item(const char* addr, uint32_t timeout_s, uint8_t proto, uint16_t port) {
  VouchItem i{ip(addr), timeout_s};
  i.proto = proto;
  i.port = port;
  return i;
}
/// Whether the kernel holds the element `nft get element` names (one command line).
bool nft_has(const std::string& table, const std::string& set, const std::string& elem) {
  const std::string cmd = "nft 'get element inet " + table + " " + set + " { " + elem + " }' >/dev/null 2>&1";
  const int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) && WEXITSTATUS(rc) == 0;
}
}  // namespace

TEST_CASE("ports: port elements reach the port sets nft-rules --sni-guard declares, and a restart reads them back") {
  const std::string table = "pt_sets";
  // The ruleset as printed (the xt backend: this kernel's nftables has no queue expression):
  // NftSets refuses sets of another type than it writes, so this checks the key encoding.
  REQUIRE(load(ruleset_text(table, {"--sni-guard", "--queue-backend", "xt"})) == 0);
  NftTarget t = target(table.c_str());
  t.guard = true;
  t.ports4 = "allowed4_ports";
  t.ports6 = "allowed6_ports";
  std::string err;
  {
    NftSets sets(t, RefreshMode::Auto);
    CHECK_MESSAGE(sets.ruleset().in_force(), sets.ruleset().reason);
    REQUIRE_MESSAGE(sets.vouch({{ip("192.0.2.1"), 300}, port_item("192.0.2.1", 300, IPPROTO_TCP, 22),
                                port_item("192.0.2.1", 300, IPPROTO_UDP, 123), {ip("2001:db8::1"), 300},
                                port_item("2001:db8::1", 300, IPPROTO_TCP, 9418)},
                               mono_ms(), kWho, err),
                    err);
    CHECK(nft_has(table, "allowed4", "192.0.2.1"));
    CHECK(nft_has(table, "allowed4_ports", "192.0.2.1 . tcp . 22"));
    CHECK(nft_has(table, "allowed4_ports", "192.0.2.1 . udp . 123"));
    CHECK_FALSE(nft_has(table, "allowed4_ports", "192.0.2.1 . udp . 22"));
    CHECK(nft_has(table, "allowed6_ports", "2001:db8::1 . tcp . 9418"));
    const auto held = kernel_set(table, "allowed4_ports");
    REQUIRE(held);
    CHECK(held->size() == 2);
    for (const auto& e : *held) CHECK(e.second.timeout_ms == 300000);
  }
  // A restart: the view is read from the kernel, port sets included.
  NftSets again(t, RefreshMode::Auto);
  const LedgerRecord* r = again.ledger().find(SetKey({}, ip("192.0.2.1"), IPPROTO_TCP, 22));
  REQUIRE(r);
  CHECK(r->kernel_ms > mono_ms() + 290000);
  CHECK(again.ledger().find(SetKey({}, ip("2001:db8::1"), IPPROTO_TCP, 9418)));
  // A revocation of a port its entry no longer names deletes that element alone (the
  // ledger's provenance comes with the vouch; a restart without --state has none).
  REQUIRE(again.vouch({{ip("192.0.2.1"), 300}, port_item("192.0.2.1", 300, IPPROTO_TCP, 22),
                       port_item("192.0.2.1", 300, IPPROTO_UDP, 123)},
                      mono_ms(), kWho, err));
  const RevokeOutcome out = again.revoke_unless(
      [](const IpAddr&, std::string_view) { return Voucher::Listed; },
      [](const IpAddr&, std::string_view) { return false; }, mono_ms(),
      [](const IpAddr&, std::string_view, uint8_t proto, uint16_t) { return proto == IPPROTO_UDP; });
  CHECK(out.ok);
  CHECK(out.deleted == 1);
  CHECK_FALSE(nft_has(table, "allowed4_ports", "192.0.2.1 . tcp . 22"));
  CHECK(nft_has(table, "allowed4_ports", "192.0.2.1 . udp . 123"));
  CHECK(nft_has(table, "allowed4", "192.0.2.1"));
  REQUIRE(nft("delete table inet " + table) == 0);
}

TEST_CASE("ports: without the ruleset, NftSets creates the port sets; one of another type is refused at start") {
  NftTarget t = target("pt_create");
  t.ports4 = "allowed4_ports";
  t.ports6 = "allowed6_ports";
  std::string err;
  {
    NftSets sets(t, RefreshMode::Auto);
    REQUIRE_MESSAGE(sets.vouch({{ip("192.0.2.9"), 60}, port_item("192.0.2.9", 60, IPPROTO_TCP, 2222)}, mono_ms(), kWho, err),
                    err);
    CHECK(nft_has("pt_create", "allowed4_ports", "192.0.2.9 . tcp . 2222"));
  }
  REQUIRE(nft("delete set inet pt_create allowed6_ports") == 0);
  REQUIRE(nft("add set inet pt_create allowed6_ports { type ipv6_addr . inet_service; flags timeout; }") == 0);
  bool threw = false;
  try {
    NftSets sets(t, RefreshMode::Auto);
  } catch (const NftError& e) {
    threw = true;
    CHECK(std::string(e.what()).find("allowed6_ports exists with another type; dnsward needs type ipv6_addr . "
                                     "inet_proto . inet_service") != std::string::npos);
  }
  CHECK(threw);
  REQUIRE(nft("delete table inet pt_create") == 0);
}

int main(int argc, char** argv) {
  // A network namespace of our own: the real kernel's nftables, empty, and the host's
  // ruleset untouched. Needs root (CAP_SYS_ADMIN); otherwise the tests cannot run at all.
  if (geteuid() != 0 || unshare(CLONE_NEWNET) != 0) {
    std::fprintf(stderr, "kernel nftables tests skipped: need root and unshare(CLONE_NEWNET) (%s)\n",
                 geteuid() != 0 ? "not root" : std::strerror(errno));
    return kSkipCode;
  }
  // A wait that never ends (a deadline lost) must fail the run, not hang it.
  alarm(60);
  doctest::Context ctx(argc, argv);
  return ctx.run();
}

