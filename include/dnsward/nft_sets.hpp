// The nftables set writer: puts vouched addresses into two timeout sets over netlink
// (libmnl + libnftnl), one batch per answer, and waits for the kernel's ACK before the
// caller may reply. It also listens to nftables events so that a flushed set or a deleted
// table is noticed, recreated, and its user-space view of expiries forgotten.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "dnsward/answer.hpp"

struct mnl_socket;
struct nlmsghdr;

namespace dnsward {

/// Where the addresses go.
struct NftTarget {
  uint16_t family = 1;  ///< NFPROTO_INET
  std::string table = "dnsward";
  std::string set4 = "allowed4";
  std::string set6 = "allowed6";
  uint32_t set_size = 65536;  ///< the sets' size; a full set fails the answer (closed)
};

/// How an existing element's timeout is extended.
enum class RefreshMode {
  Auto,     ///< probe the kernel at start and pick one of the two below
  Update,   ///< re-add with NFTA_SET_ELEM_EXPIRATION: updates in place (kernel 6.12+)
  Replace,  ///< delete + add in one batch (older kernels, e.g. Debian 12's 6.1)
};

/// One address to vouch for and the element timeout it needs.
struct VouchItem {
  IpAddr addr;
  uint32_t timeout_s = 0;  ///< never 0: nftables reads 0 as "never expires"
};

class NftError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class NftSets {
 public:
  /// Opens netlink, checks or creates the table and sets, probes the refresh mode.
  /// Throws NftError with a message for the operator (no CAP_NET_ADMIN, wrong set type...).
  NftSets(NftTarget target, RefreshMode mode);
  ~NftSets();
  NftSets(const NftSets&) = delete;
  NftSets& operator=(const NftSets&) = delete;

  /// Puts every item into its set and waits for the kernel's ACK. Items whose element is
  /// known to live long enough already cost nothing. Returns false (with err) if any
  /// address could not be added: the caller must then not send the answer.
  bool vouch(const std::vector<VouchItem>& items, uint64_t now_ms, std::string& err);

  /// The event socket, for the event loop; call on_events() when it is readable.
  int event_fd() const;
  /// Reads nftables events; on a change to our table by anyone else, forgets the view of
  /// expiries and recreates what is missing. Called by vouch() first, too.
  void on_events();

  /// Deletes the given addresses from the sets (those not present are skipped).
  bool revoke(const std::vector<IpAddr>& addrs, std::string& err);

  RefreshMode mode() const { return mode_; }
  std::size_t known() const { return view_.size(); }
  uint64_t batches() const { return batches_; }
  uint64_t external_changes() const { return external_changes_; }

 private:
  struct Msg;  // one message of a batch
  bool ensure(std::string& err);
  bool check_set(const std::string& name, uint32_t key_type, uint32_t key_len, bool& exists,
                 std::string& err);
  bool probe_update();
  bool transact(const std::vector<Msg>& msgs, std::string& err, int* first_errno = nullptr);
  /// Sends one request and hands each reply with its sequence number to on_reply (false
  /// stops). Returns the errno of the closing ACK (0: success), or -1 with err set.
  int request(nlmsghdr* nlh, const std::function<bool(const nlmsghdr*)>& on_reply, std::string& err);
  bool send_items(const std::vector<VouchItem>& adds, const std::vector<VouchItem>& dels,
                  bool with_expiration, std::string& err, int* first_errno);

  NftTarget t_;
  RefreshMode mode_;
  struct SocketCloser {
    void operator()(mnl_socket* s) const;
  };
  using Socket = std::unique_ptr<mnl_socket, SocketCloser>;  // released even if a constructor throws
  Socket nl_;      // commands
  Socket events_;  // NFNLGRP_NFTABLES notifications
  uint32_t portid_ = 0;
  uint32_t seq_;
  std::vector<char> buf_;
  std::unordered_map<IpAddr, uint64_t, IpAddrHash> view_;  // address -> expiry we set (ms)
  uint64_t batches_ = 0, external_changes_ = 0;
};

}  // namespace dnsward
