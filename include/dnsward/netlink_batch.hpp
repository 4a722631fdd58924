// The netlink transport to nftables: one NETLINK_NETFILTER socket, batches (transactions)
// sent with NLM_F_ACK on every message and their answers matched by sequence number, and
// single requests (gets and dumps). Errors are errno values, never message text.
#pragma once
#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

struct mnl_socket;
struct nlmsghdr;
struct sockaddr_nl;

namespace dnsward {

/// A fault-injection seam at the socket, for tests against the real kernel: a socket given
/// one sends and receives every datagram through it, so a test can drop a batch (the kernel
/// never answers), hold answers back and hand them in later (late answers), forge or
/// rewrite datagrams, or fail a call with an errno such as ENOBUFS. The base class does the
/// real system calls. Only code can install one (NetlinkSocket::set_faults,
/// NftSets::NftSets(..., NftFaults)); no option or environment variable of the shipped
/// binary does.
class NetlinkFaults {
 public:
  virtual ~NetlinkFaults() = default;
  /// In place of sendto(fd, data, len) to the kernel: bytes sent, or -1 with errno set.
  virtual ssize_t send(int fd, const void* data, std::size_t len);
  /// In place of recvfrom(fd, buf, size, flags, from): as recvfrom(), from filled in. A
  /// hook that hides datagrams must take them off the socket (and may hand them in later):
  /// one left queued keeps the socket readable, and the wait for answers would spin.
  virtual ssize_t recv(int fd, void* buf, std::size_t size, int flags, sockaddr_nl* from);
};

/// Receives one datagram from a netlink socket (through faults, if any), dropping those
/// that do not come from the kernel: as root, another process can send to our port ID
/// (netlink allows user-to-user unicast with CAP_NET_ADMIN), and a forged answer must never
/// pass for the kernel's. libmnl's mnl_socket_recvfrom() makes the same check (ESRCH).
ssize_t netlink_receive(NetlinkFaults* faults, int fd, void* buf, std::size_t size, int flags);

/// The errno an NLMSG_ERROR message carries (0: an ACK). One too short to hold its error is
/// EBADMSG, never an ACK: the receive buffer is not cleared between reads, so its tail would
/// be stale bytes.
int netlink_error(const nlmsghdr* h);

class NetlinkSocket {
 public:
  /// One message of a batch: its type (NFT_MSG_*), flags, and what fills its payload.
  struct Msg {
    uint16_t type;
    uint16_t flags;
    std::function<void(nlmsghdr*)> payload;
  };

  /// Opens and binds a netfilter netlink socket acting for family (NFPROTO_*). Throws
  /// std::system_error (errno) if it cannot.
  explicit NetlinkSocket(uint16_t family);
  ~NetlinkSocket();
  NetlinkSocket(const NetlinkSocket&) = delete;
  NetlinkSocket& operator=(const NetlinkSocket&) = delete;

  /// The largest batch transact() sends: half of its buffer, as libmnl requires (it checks
  /// the size only after a message is written). No single message may exceed it.
  static constexpr std::size_t kBatchLimit = 64 * 1024;

  /// Sends msgs as one batch and reads the answer to each: results[i] is the errno of
  /// msgs[i] (0: accepted). The kernel applies a batch as a whole or not at all. Returns
  /// false (err set) if the batch did not fit kBatchLimit, could not be sent, or its
  /// answers were lost (ENOBUFS) or late.
  bool transact(const std::vector<Msg>& msgs, std::vector<int>& results, std::string& err);
  /// Why the last transact() returned false, as an errno: the batch's refusal as a whole
  /// (EPERM without CAP_NET_ADMIN), the send's or the receive's error (ENOBUFS: answers
  /// lost), ETIMEDOUT when no answer came in time, EMSGSIZE for a batch too large. 0 after
  /// a transact() that returned true. Callers read this, never the text of err.
  int last_errno() const { return last_errno_; }
  /// Installs a fault-injection hook (see NetlinkFaults; null: none). For tests only.
  void set_faults(NetlinkFaults* faults) { faults_ = faults; }

  /// Sends one request (built by build(header) in a buffer of its own) and hands every
  /// reply with the request's sequence number to on_reply (false stops reading). Returns
  /// the errno of the closing answer (0: success), or -1 with err set.
  int request(uint16_t type, uint16_t flags, const std::function<void(nlmsghdr*)>& build,
              const std::function<bool(const nlmsghdr*)>& on_reply, std::string& err);

  /// Sends a request (usually a dump) without waiting: its replies are read by
  /// poll_request() as they come, so a large dump never holds up the caller.
  bool start_request(uint16_t type, uint16_t flags, const std::function<void(nlmsghdr*)>& build,
                     std::string& err);
  enum class Progress { More, Done, Failed };
  /// Reads at most max_reads datagrams of the request started last (never blocks), handing
  /// each reply to on_reply. Done when its end has come (errno_out 0, or the error it ended
  /// with); Failed (err set) if the socket failed.
  Progress poll_request(const std::function<void(const nlmsghdr*)>& on_reply, int max_reads,
                        int& errno_out, std::string& err);

  /// The port ID the kernel gave this socket: its answers carry it in nlmsg_pid.
  uint32_t portid() const { return portid_; }
  int fd() const;
  uint64_t batches() const { return batches_; }

 private:
  bool read_answers(uint32_t first, uint32_t last, uint32_t begin_seq, uint32_t end_seq,
                    std::vector<int>& results, std::string& err);
  bool fail(int e, std::string& err, std::string text);
  ssize_t send_raw(const void* data, std::size_t len);
  ssize_t recv_raw(int flags);
  /// Whether h answers the request with sequence number seq sent from this socket.
  bool ours(const nlmsghdr* h, uint32_t seq) const;
  struct Closer {
    void operator()(mnl_socket* s) const;
  };
  std::unique_ptr<mnl_socket, Closer> nl_;
  uint16_t family_;
  uint32_t portid_ = 0;
  uint32_t seq_;
  // Not zero-filled (libmnl clears every header and padding it reserves, and only what the
  // kernel wrote is read), so pages are touched only when a batch or an answer needs them:
  // an idle resolver keeps no 384 KiB of zeros resident for its two sockets.
  static constexpr std::size_t kRecvBuf = 64 * 1024;
  std::unique_ptr<char[]> buf_;   // 2 x kBatchLimit
  std::unique_ptr<char[]> rbuf_;  // answers, kRecvBuf
  uint64_t batches_ = 0;
  uint32_t request_seq_ = 0;  // of the request started last
  int last_errno_ = 0;
  // How long transact() waits for a batch's answers. The kernel applies a batch inside
  // sendmsg(), so its answers are queued when that returns; only answers lost or withheld
  // ever wait this long (README: "no ACK within 200 ms").
  static constexpr int kAnswerWaitMs = 200;
  NetlinkFaults* faults_ = nullptr;
};

}  // namespace dnsward
