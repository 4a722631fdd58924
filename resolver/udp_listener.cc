#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <system_error>

#include "dnsward/log.hpp"
#include "dnsward/transport.hpp"

namespace dnsward {

UdpListener::UdpListener(EventLoop& loop, Pipeline& pipeline, const Endpoint& ep)
    : loop_(loop), pipeline_(pipeline) {
  fd_ = socket(ep.family(), SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd_ < 0) throw std::system_error(errno, std::generic_category(), "udp socket " + ep.text);
  const int one = 1;
  setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (ep.family() == AF_INET6) setsockopt(fd_, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  wildcard_ = ep.is_wildcard();
  if (wildcard_) {
    if (ep.family() == AF_INET) setsockopt(fd_, IPPROTO_IP, IP_PKTINFO, &one, sizeof one);
    else setsockopt(fd_, IPPROTO_IPV6, IPV6_RECVPKTINFO, &one, sizeof one);
  }
  if (bind(fd_, reinterpret_cast<const sockaddr*>(&ep.addr), ep.len) < 0) {
    const int e = errno;
    close(fd_);
    throw std::system_error(e, std::generic_category(), "bind udp " + ep.text);
  }
  loop_.watch(fd_, EPOLLIN, [this](uint32_t) { on_readable(); });
}

UdpListener::~UdpListener() {
  loop_.unwatch(fd_);
  close(fd_);
}

void UdpListener::on_readable() {
  // Buffers are allocated on first use, so an idle listener costs no memory.
  if (!in_) {
    in_.reset(new uint8_t[kBatch * kMaxQuery]);
    out_.reset(new uint8_t[kBatch * kMaxReply]);
  }
  mmsghdr msgs[kBatch];
  iovec iov[kBatch];
  alignas(cmsghdr) char control[kBatch][CMSG_SPACE(sizeof(in6_pktinfo))];
  for (int i = 0; i < kBatch; ++i) {
    iov[i] = {in_.get() + std::size_t(i) * kMaxQuery, kMaxQuery};
    std::memset(&msgs[i], 0, sizeof msgs[i]);
    msgs[i].msg_hdr.msg_name = &from_[i].peer;
    msgs[i].msg_hdr.msg_namelen = sizeof from_[i].peer;
    msgs[i].msg_hdr.msg_iov = &iov[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
    if (wildcard_) {
      msgs[i].msg_hdr.msg_control = control[i];
      msgs[i].msg_hdr.msg_controllen = sizeof control[i];
    }
  }
  // One recvmmsg for up to kBatch queries: under load the system calls per query fall
  // from two to about two per batch.
  const int n = recvmmsg(fd_, msgs, kBatch, MSG_DONTWAIT, nullptr);
  if (n <= 0) {
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
      log::warn("event=udp-recv-error error={}", log::quote(std::strerror(errno)));
    return;
  }
  batching_ = true;
  pending_ = 0;
  for (int i = 0; i < n; ++i) {
    ClientAddr& from = from_[i];
    from.transport = ClientAddr::Transport::Udp;
    from.udp_fd = fd_;
    from.peer_len = msgs[i].msg_hdr.msg_namelen;
    from.has_local = false;
    if (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) continue;  // larger than any query we answer
    for (cmsghdr* c = CMSG_FIRSTHDR(&msgs[i].msg_hdr); wildcard_ && c;
         c = CMSG_NXTHDR(&msgs[i].msg_hdr, c)) {
      if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
        std::memcpy(&from.local4, CMSG_DATA(c), sizeof from.local4);
        from.has_local = true;
      } else if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO) {
        std::memcpy(&from.local6, CMSG_DATA(c), sizeof from.local6);
        from.has_local = true;
      }
    }
    out_client_[pending_] = i;  // deliver() fills slot pending_ if it answers at once
    pipeline_.on_query(in_.get() + std::size_t(i) * kMaxQuery, msgs[i].msg_len, from, *this);
  }
  batching_ = false;
  flush();
}

void UdpListener::fill_control(const ClientAddr& to, msghdr& msg, char* control) const {
  if (!wildcard_ || !to.has_local) return;
  // Answer from the address the query was sent to, or the client drops the reply.
  msg.msg_control = control;
  cmsghdr* c = reinterpret_cast<cmsghdr*>(control);
  if (to.peer.ss_family == AF_INET) {
    in_pktinfo pi{};
    pi.ipi_spec_dst = to.local4.ipi_addr;
    c->cmsg_level = IPPROTO_IP;
    c->cmsg_type = IP_PKTINFO;
    c->cmsg_len = CMSG_LEN(sizeof pi);
    std::memcpy(CMSG_DATA(c), &pi, sizeof pi);
    msg.msg_controllen = CMSG_SPACE(sizeof pi);
  } else {
    in6_pktinfo pi = to.local6;
    c->cmsg_level = IPPROTO_IPV6;
    c->cmsg_type = IPV6_PKTINFO;
    c->cmsg_len = CMSG_LEN(sizeof pi);
    std::memcpy(CMSG_DATA(c), &pi, sizeof pi);
    msg.msg_controllen = CMSG_SPACE(sizeof pi);
  }
}

void UdpListener::flush() {
  if (pending_ == 0) return;
  mmsghdr msgs[kBatch];
  iovec iov[kBatch];
  alignas(cmsghdr) char control[kBatch][CMSG_SPACE(sizeof(in6_pktinfo))] = {};
  for (int k = 0; k < pending_; ++k) {
    const ClientAddr& to = from_[out_client_[k]];
    iov[k] = {out_.get() + std::size_t(k) * kMaxReply, out_len_[k]};
    std::memset(&msgs[k], 0, sizeof msgs[k]);
    msgs[k].msg_hdr.msg_name = const_cast<sockaddr_storage*>(&to.peer);
    msgs[k].msg_hdr.msg_namelen = to.peer_len;
    msgs[k].msg_hdr.msg_iov = &iov[k];
    msgs[k].msg_hdr.msg_iovlen = 1;
    fill_control(to, msgs[k].msg_hdr, control[k]);
  }
  int sent = 0;
  while (sent < pending_) {
    const int n = sendmmsg(fd_, msgs + sent, unsigned(pending_ - sent), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n <= 0) {
      // A full socket buffer drops UDP replies, as the network would; the client retries.
      log::debug("event=udp-send-error error={}", log::quote(std::strerror(errno)));
      ++sent;  // skip the one that failed
      continue;
    }
    sent += n;
  }
  pending_ = 0;
}

void UdpListener::deliver(const ClientAddr& to, const uint8_t* data, std::size_t len, bool) {
  if (len == 0) return;
  if (batching_ && pending_ < kBatch && len <= kMaxReply && &to == &from_[out_client_[pending_]]) {
    // An answer given while its batch is being read leaves with the batch's sendmmsg.
    std::memcpy(out_.get() + std::size_t(pending_) * kMaxReply, data, len);
    out_len_[pending_] = len;
    ++pending_;
    if (pending_ < kBatch) out_client_[pending_] = out_client_[pending_ - 1];
    return;
  }
  send_one(to, data, len);
}

void UdpListener::send_one(const ClientAddr& to, const uint8_t* data, std::size_t len) {
  iovec iov{const_cast<uint8_t*>(data), len};
  msghdr msg{};
  msg.msg_name = const_cast<sockaddr_storage*>(&to.peer);
  msg.msg_namelen = to.peer_len;
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(in6_pktinfo))] = {};
  fill_control(to, msg, control);
  if (sendmsg(to.udp_fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
    log::debug("event=udp-send-error client={} error={}", to.peer_text(), log::quote(std::strerror(errno)));
}

}  // namespace dnsward
