// The kernel's end of the first-flight guard: one netfilter queue (nfnetlink_queue) read
// over libmnl, which dnsward links already. libnetfilter_queue's message helpers are a thin
// layer over the same libmnl calls and the kernel's uapi header; they would add a library
// and nothing else. The queue is bound without NFQA_CFG_F_FAIL_OPEN: with dnsward gone or
// too slow, the kernel drops what it would have queued (fail closed).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "dnsward/event_loop.hpp"
#include "dnsward/sni_guard.hpp"

struct mnl_socket;

namespace dnsward {

class NfQueue : public VerdictPort {
 public:
  /// One queued packet: the kernel's id, the packet mark, the packet from its IP header, and
  /// whether its checksum is still to be filled in by the kernel (NFQA_SKB_CSUMNOTREADY).
  using Handler = std::function<void(uint32_t id, uint32_t mark, const uint8_t* pkt, std::size_t len,
                                     bool checksum_pending)>;
  /// Binds queue num, copying whole packets, at most maxlen waiting. Throws std::runtime_error
  /// (with the kernel's reason) if it cannot: another process holds the queue, no
  /// nfnetlink_queue, no CAP_NET_ADMIN.
  NfQueue(uint16_t num, uint32_t maxlen);
  ~NfQueue() override;
  NfQueue(const NfQueue&) = delete;
  NfQueue& operator=(const NfQueue&) = delete;

  /// Starts reading: h gets each packet, in the loop.
  void start(EventLoop& loop, Handler h);
  void verdict(uint32_t id, GuardVerdict v, uint32_t mark) override;
  int fd() const;
  /// Verdicts the kernel refused (an id it no longer holds), and receive overruns (packets
  /// the kernel dropped because dnsward read too slowly).
  uint64_t verdict_errors() const { return verdict_errors_; }
  uint64_t overruns() const { return overruns_; }

 private:
  void read_all();
  void read_some();
  void flush();
  mnl_socket* nl_ = nullptr;
  uint16_t num_;
  uint32_t portid_ = 0;
  EventLoop* loop_ = nullptr;
  Handler handler_;
  std::unique_ptr<char[]> buf_, out_;
  std::size_t out_len_ = 0;
  bool reading_ = false;
  uint64_t verdict_errors_ = 0, overruns_ = 0;
};

}  // namespace dnsward
