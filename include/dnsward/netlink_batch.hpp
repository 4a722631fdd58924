// The netlink transport to nftables: one NETLINK_NETFILTER socket, batches (transactions)
// sent with NLM_F_ACK on every message and their answers matched by sequence number, and
// single requests (gets and dumps). Errors are errno values, never message text.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

struct mnl_socket;
struct nlmsghdr;

namespace dnsward {

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

  uint32_t portid() const { return portid_; }
  int fd() const;
  uint64_t batches() const { return batches_; }

 private:
  bool read_answers(uint32_t first, uint32_t last, uint32_t begin_seq, uint32_t end_seq,
                    std::vector<int>& results, std::string& err);
  struct Closer {
    void operator()(mnl_socket* s) const;
  };
  std::unique_ptr<mnl_socket, Closer> nl_;
  uint16_t family_;
  uint32_t portid_ = 0;
  uint32_t seq_;
  std::vector<char> buf_;   // 2 x kBatchLimit
  std::vector<char> rbuf_;  // answers
  uint64_t batches_ = 0;
  uint32_t request_seq_ = 0;  // of the request started last
};

}  // namespace dnsward
