#include "dnsward/netlink_batch.hpp"

#include <libmnl/libmnl.h>
#include <libnftnl/common.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netlink.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>

#include <cerrno>
#include <cstring>
#include <system_error>

#include "dnsward/clock.hpp"

namespace dnsward {
namespace {
// The kernel applies a batch inside sendmsg(), so its answers are queued when that returns;
// this bound only guards against a kernel that does otherwise.
constexpr int kAnswerWaitMs = 200;
}  // namespace

void NetlinkSocket::Closer::operator()(mnl_socket* s) const { mnl_socket_close(s); }

NetlinkSocket::NetlinkSocket(uint16_t family)
    : family_(family), seq_(uint32_t(time(nullptr))), buf_(2 * kBatchLimit), rbuf_(64 * 1024) {
  nl_.reset(mnl_socket_open2(NETLINK_NETFILTER, SOCK_NONBLOCK | SOCK_CLOEXEC));
  if (!nl_ || mnl_socket_bind(nl_.get(), 0, MNL_SOCKET_AUTOPID) < 0)
    throw std::system_error(errno, std::generic_category(), "cannot open a netfilter netlink socket");
  portid_ = mnl_socket_get_portid(nl_.get());
  // An error answer echoes the whole refused request unless capped: a large batch's echo
  // would not fit the receive buffer, and an unread error is an error lost.
  const int one = 1;
  setsockopt(fd(), SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof one);
  // One answer per message of a batch, queued at once: room for many.
  const int rcvbuf = 4 << 20;
  if (setsockopt(fd(), SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) != 0)
    setsockopt(fd(), SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
}

NetlinkSocket::~NetlinkSocket() = default;

int NetlinkSocket::fd() const { return mnl_socket_get_fd(nl_.get()); }

bool NetlinkSocket::transact(const std::vector<Msg>& msgs, std::vector<int>& results,
                             std::string& err) {
  results.assign(msgs.size(), 0);
  if (msgs.empty()) return true;
  // The limit is half the buffer: libmnl notices an oversized batch only after writing the
  // message that overflows it, and libnftnl writes elements without bounds checks.
  mnl_nlmsg_batch* b = mnl_nlmsg_batch_start(buf_.data(), kBatchLimit);
  const uint32_t begin_seq = seq_++;
  nftnl_batch_begin(static_cast<char*>(mnl_nlmsg_batch_current(b)), begin_seq);
  mnl_nlmsg_batch_next(b);
  const uint32_t first = seq_;
  for (const Msg& m : msgs) {
    nlmsghdr* nlh = nftnl_nlmsg_build_hdr(static_cast<char*>(mnl_nlmsg_batch_current(b)), m.type,
                                          family_, m.flags | NLM_F_ACK, seq_++);
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
  if (!mnl_nlmsg_batch_next(b)) {
    mnl_nlmsg_batch_stop(b);
    err = "netlink batch too large";
    return false;
  }
  const ssize_t sent = mnl_socket_sendto(nl_.get(), mnl_nlmsg_batch_head(b), mnl_nlmsg_batch_size(b));
  mnl_nlmsg_batch_stop(b);
  ++batches_;
  if (sent < 0) {
    err = std::string("netlink send: ") + std::strerror(errno);
    return false;
  }
  return read_answers(first, last, begin_seq, end_seq, results, err);
}

bool NetlinkSocket::read_answers(uint32_t first, uint32_t last, uint32_t begin_seq,
                                 uint32_t end_seq, std::vector<int>& results, std::string& err) {
  // One NLMSG_ERROR per message (error 0 is the ACK), matched by sequence number: a refused
  // batch answers every message, so the refused ones can be found and left out.
  std::vector<bool> answered(results.size(), false);
  std::size_t left = results.size();
  int batch_error = 0;
  const uint64_t deadline = mono_ms() + kAnswerWaitMs;
  while (left > 0) {
    const ssize_t n = recv(fd(), rbuf_.data(), rbuf_.size(), MSG_TRUNC);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        if (batch_error) break;  // the batch as a whole was refused: nothing else comes
        const int64_t wait = int64_t(deadline) - int64_t(mono_ms());
        pollfd p{fd(), POLLIN, 0};
        if (wait <= 0 || poll(&p, 1, int(wait)) <= 0) {
          err = "no netlink answer from the kernel in time";
          return false;
        }
        continue;
      }
      // ENOBUFS: answers were dropped; nothing of this batch can be trusted.
      err = std::string("netlink receive: ") + std::strerror(errno);
      return false;
    }
    if (std::size_t(n) > rbuf_.size()) {
      err = "netlink answer larger than the receive buffer";
      return false;
    }
    int len = int(n);
    for (auto* h = reinterpret_cast<nlmsghdr*>(rbuf_.data()); mnl_nlmsg_ok(h, len);
         h = mnl_nlmsg_next(h, &len)) {
      if (h->nlmsg_type != NLMSG_ERROR) continue;
      const int e = -static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(h))->error;
      if (h->nlmsg_seq == begin_seq || h->nlmsg_seq == end_seq) {
        if (e) batch_error = e;
        continue;
      }
      if (h->nlmsg_seq < first || h->nlmsg_seq > last) continue;  // a stale answer
      const std::size_t i = h->nlmsg_seq - first;
      if (!answered[i]) {
        answered[i] = true;
        --left;
      }
      results[i] = e;
    }
  }
  if (batch_error) {
    err = std::string("nftables refused the batch: ") + std::strerror(batch_error);
    return false;
  }
  return true;
}

bool NetlinkSocket::start_request(uint16_t type, uint16_t flags,
                                  const std::function<void(nlmsghdr*)>& build, std::string& err) {
  std::vector<char> sbuf(MNL_SOCKET_BUFFER_SIZE);
  request_seq_ = seq_++;
  nlmsghdr* nlh = nftnl_nlmsg_build_hdr(sbuf.data(), type, family_, flags, request_seq_);
  build(nlh);
  if (mnl_socket_sendto(nl_.get(), nlh, nlh->nlmsg_len) < 0) {
    err = std::string("netlink send: ") + std::strerror(errno);
    return false;
  }
  return true;
}

NetlinkSocket::Progress NetlinkSocket::poll_request(
    const std::function<void(const nlmsghdr*)>& on_reply, int max_reads, int& errno_out,
    std::string& err) {
  errno_out = 0;
  for (int i = 0; i < max_reads; ++i) {
    const ssize_t n = recv(fd(), rbuf_.data(), rbuf_.size(), MSG_TRUNC | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return Progress::More;
      err = std::string("netlink receive: ") + std::strerror(errno);
      return Progress::Failed;
    }
    if (std::size_t(n) > rbuf_.size()) {
      err = "netlink answer larger than the receive buffer";
      return Progress::Failed;
    }
    int len = int(n);
    for (auto* h = reinterpret_cast<nlmsghdr*>(rbuf_.data()); mnl_nlmsg_ok(h, len); h = mnl_nlmsg_next(h, &len)) {
      if (h->nlmsg_seq != request_seq_) continue;  // a reply to an earlier request
      if (h->nlmsg_type == NLMSG_DONE) return Progress::Done;
      if (h->nlmsg_type == NLMSG_ERROR) {
        errno_out = -static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(h))->error;
        return Progress::Done;
      }
      on_reply(h);
    }
  }
  return Progress::More;
}

int NetlinkSocket::request(uint16_t type, uint16_t flags,
                           const std::function<void(nlmsghdr*)>& build,
                           const std::function<bool(const nlmsghdr*)>& on_reply, std::string& err) {
  std::vector<char> sbuf(MNL_SOCKET_BUFFER_SIZE);
  const uint32_t seq = seq_++;
  nlmsghdr* nlh = nftnl_nlmsg_build_hdr(sbuf.data(), type, family_, flags, seq);
  build(nlh);
  if (mnl_socket_sendto(nl_.get(), nlh, nlh->nlmsg_len) < 0) {
    err = std::string("netlink send: ") + std::strerror(errno);
    return -1;
  }
  const uint64_t deadline = mono_ms() + 1000;
  for (;;) {
    const ssize_t n = recv(fd(), rbuf_.data(), rbuf_.size(), MSG_TRUNC);
    if (n < 0) {
      if ((errno == EAGAIN || errno == EINTR) && mono_ms() < deadline) {
        pollfd p{fd(), POLLIN, 0};
        poll(&p, 1, 100);
        continue;
      }
      err = std::string("netlink receive: ") + std::strerror(errno);
      return -1;
    }
    if (std::size_t(n) > rbuf_.size()) {
      err = "netlink answer larger than the receive buffer";
      return -1;
    }
    int len = int(n);
    for (auto* h = reinterpret_cast<nlmsghdr*>(rbuf_.data()); mnl_nlmsg_ok(h, len); h = mnl_nlmsg_next(h, &len)) {
      if (h->nlmsg_seq != seq) continue;
      if (h->nlmsg_type == NLMSG_DONE) return 0;
      if (h->nlmsg_type == NLMSG_ERROR) return -static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(h))->error;
      if (!on_reply(h)) return -1;
    }
  }
}

}  // namespace dnsward
