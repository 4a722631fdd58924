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
ssize_t real_send(int fd, const void* data, std::size_t len) {
  // To the kernel (port ID 0), as mnl_socket_sendto() does.
  sockaddr_nl to{};
  to.nl_family = AF_NETLINK;
  return sendto(fd, data, len, 0, reinterpret_cast<const sockaddr*>(&to), sizeof to);
}

ssize_t real_recv(int fd, void* buf, std::size_t size, int flags, sockaddr_nl* from) {
  socklen_t alen = sizeof(sockaddr_nl);
  return recvfrom(fd, buf, size, flags, reinterpret_cast<sockaddr*>(from), from ? &alen : nullptr);
}
}  // namespace

ssize_t NetlinkFaults::send(int fd, const void* data, std::size_t len) { return real_send(fd, data, len); }

ssize_t NetlinkFaults::recv(int fd, void* buf, std::size_t size, int flags, sockaddr_nl* from) {
  return real_recv(fd, buf, size, flags, from);
}

ssize_t netlink_receive(NetlinkFaults* faults, int fd, void* buf, std::size_t size, int flags) {
  for (;;) {
    sockaddr_nl from{};
    const ssize_t n = faults ? faults->recv(fd, buf, size, flags, &from)
                             : real_recv(fd, buf, size, flags, &from);
    if (n < 0 || from.nl_pid == 0) return n;
    // Sent by another process, not by the kernel: dropped unread.
  }
}

int netlink_error(const nlmsghdr* h) {
  if (mnl_nlmsg_get_payload_len(h) < sizeof(nlmsgerr)) return EBADMSG;
  return -static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(h))->error;
}

void NetlinkSocket::Closer::operator()(mnl_socket* s) const { mnl_socket_close(s); }

NetlinkSocket::NetlinkSocket(uint16_t family)
    : family_(family), seq_(uint32_t(time(nullptr))), buf_(new char[2 * kBatchLimit]), rbuf_(new char[kRecvBuf]) {
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

ssize_t NetlinkSocket::send_raw(const void* data, std::size_t len) {
  return faults_ ? faults_->send(fd(), data, len) : real_send(fd(), data, len);
}

ssize_t NetlinkSocket::recv_raw(int flags) {
  // MSG_TRUNC: the datagram's real length, so an answer larger than the buffer is noticed
  // rather than read cut short.
  return netlink_receive(faults_, fd(), rbuf_.get(), kRecvBuf, flags | MSG_TRUNC);
}

bool NetlinkSocket::ours(const nlmsghdr* h, uint32_t seq) const {
  // The kernel addresses every answer, ACKs and dump parts alike, to the port ID of the
  // socket that sent the request (netlink_ack() and netlink_dump() use NETLINK_CB(skb).portid);
  // libmnl's mnl_cb_run() checks the same.
  return h->nlmsg_seq == seq && h->nlmsg_pid == portid_;
}

bool NetlinkSocket::fail(int e, std::string& err, std::string text) {
  last_errno_ = e;
  err = std::move(text);
  return false;
}

bool NetlinkSocket::transact(const std::vector<Msg>& msgs, std::vector<int>& results,
                             std::string& err) {
  last_errno_ = 0;
  results.assign(msgs.size(), 0);
  if (msgs.empty()) return true;
  // The limit is half the buffer: libmnl notices an oversized batch only after writing the
  // message that overflows it, and libnftnl writes elements without bounds checks.
  mnl_nlmsg_batch* b = mnl_nlmsg_batch_start(buf_.get(), kBatchLimit);
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
      return fail(EMSGSIZE, err, "netlink batch too large");
    }
  }
  const uint32_t last = seq_ - 1;
  const uint32_t end_seq = seq_++;
  nftnl_batch_end(static_cast<char*>(mnl_nlmsg_batch_current(b)), end_seq);
  if (!mnl_nlmsg_batch_next(b)) {
    mnl_nlmsg_batch_stop(b);
    return fail(EMSGSIZE, err, "netlink batch too large");
  }
  const ssize_t sent = send_raw(mnl_nlmsg_batch_head(b), mnl_nlmsg_batch_size(b));
  const int send_errno = errno;
  mnl_nlmsg_batch_stop(b);
  ++batches_;
  if (sent < 0) return fail(send_errno, err, std::string("netlink send: ") + std::strerror(send_errno));
  return read_answers(first, last, begin_seq, end_seq, results, err);
}

bool NetlinkSocket::read_answers(uint32_t first, uint32_t last, uint32_t begin_seq,
                                 uint32_t end_seq, std::vector<int>& results, std::string& err) {
  // One NLMSG_ERROR per message (error 0 is the ACK), matched by sequence number: a refused
  // batch answers every message, so the refused ones can be found and left out.
  std::vector<bool> answered(results.size(), false);
  std::size_t left = results.size();
  int batch_error = 0;
  const uint64_t deadline = mono_ms() + uint64_t(kAnswerWaitMs);
  while (left > 0) {
    const ssize_t n = recv_raw(0);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        if (batch_error) break;  // the batch as a whole was refused: nothing else comes
        // Nothing yet. The kernel answers inside sendmsg(), so only a batch that was lost,
        // or whose answers were, gets here; wait no longer than the deadline, then fail
        // (the caller withholds the answer). Answers that come later carry this batch's
        // sequence numbers, which the next batch skips.
        const int64_t wait = int64_t(deadline) - int64_t(mono_ms());
        pollfd p{fd(), POLLIN, 0};
        const int r = wait > 0 ? poll(&p, 1, int(wait)) : 0;
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return fail(ETIMEDOUT, err, "no netlink answer from the kernel in time");
        continue;
      }
      // ENOBUFS: answers were dropped (the socket's buffer overflowed); nothing of this
      // batch can be trusted.
      const int e = errno;
      return fail(e, err, std::string("netlink receive: ") + std::strerror(e));
    }
    if (std::size_t(n) > kRecvBuf) return fail(EMSGSIZE, err, "netlink answer larger than the receive buffer");
    int len = int(n);
    for (auto* h = reinterpret_cast<nlmsghdr*>(rbuf_.get()); mnl_nlmsg_ok(h, len);
         h = mnl_nlmsg_next(h, &len)) {
      if (h->nlmsg_type != NLMSG_ERROR || h->nlmsg_pid != portid_) continue;
      const int e = netlink_error(h);
      if (h->nlmsg_seq == begin_seq || h->nlmsg_seq == end_seq) {
        if (e) batch_error = e;
        continue;
      }
      // An answer to an earlier batch (one that gave up waiting: lost, late or after
      // ENOBUFS) has an older sequence number and is never taken for this batch's. The
      // difference is unsigned, so older numbers (and a counter that wrapped) fall outside.
      const uint32_t i = h->nlmsg_seq - first;
      if (i > last - first) continue;
      if (!answered[i]) {
        answered[i] = true;
        --left;
      }
      results[i] = e;
    }
  }
  if (batch_error)
    return fail(batch_error, err, std::string("nftables refused the batch: ") + std::strerror(batch_error));
  return true;
}

bool NetlinkSocket::start_request(uint16_t type, uint16_t flags,
                                  const std::function<void(nlmsghdr*)>& build, std::string& err) {
  std::vector<char> sbuf(MNL_SOCKET_BUFFER_SIZE);
  request_seq_ = seq_++;
  nlmsghdr* nlh = nftnl_nlmsg_build_hdr(sbuf.data(), type, family_, flags, request_seq_);
  build(nlh);
  if (send_raw(nlh, nlh->nlmsg_len) < 0) {
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
    const ssize_t n = recv_raw(MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return Progress::More;
      err = std::string("netlink receive: ") + std::strerror(errno);
      return Progress::Failed;
    }
    if (std::size_t(n) > kRecvBuf) {
      err = "netlink answer larger than the receive buffer";
      return Progress::Failed;
    }
    int len = int(n);
    for (auto* h = reinterpret_cast<nlmsghdr*>(rbuf_.get()); mnl_nlmsg_ok(h, len); h = mnl_nlmsg_next(h, &len)) {
      if (!ours(h, request_seq_)) continue;  // a reply to an earlier request
      if (h->nlmsg_type == NLMSG_DONE) return Progress::Done;
      if (h->nlmsg_type == NLMSG_ERROR) {
        errno_out = netlink_error(h);
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
  if (send_raw(nlh, nlh->nlmsg_len) < 0) {
    err = std::string("netlink send: ") + std::strerror(errno);
    return -1;
  }
  const uint64_t deadline = mono_ms() + 1000;
  for (;;) {
    const ssize_t n = recv_raw(0);
    if (n < 0) {
      if ((errno == EAGAIN || errno == EINTR) && mono_ms() < deadline) {
        pollfd p{fd(), POLLIN, 0};
        poll(&p, 1, 100);
        continue;
      }
      err = std::string("netlink receive: ") + std::strerror(errno);
      return -1;
    }
    if (std::size_t(n) > kRecvBuf) {
      err = "netlink answer larger than the receive buffer";
      return -1;
    }
    int len = int(n);
    for (auto* h = reinterpret_cast<nlmsghdr*>(rbuf_.get()); mnl_nlmsg_ok(h, len); h = mnl_nlmsg_next(h, &len)) {
      if (!ours(h, seq)) continue;  // a reply to an earlier request or batch
      if (h->nlmsg_type == NLMSG_DONE) return 0;
      if (h->nlmsg_type == NLMSG_ERROR) return netlink_error(h);
      if (!on_reply(h)) return -1;
    }
  }
}

}  // namespace dnsward
