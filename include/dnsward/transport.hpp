// The two transports: UDP (one socket per listen address) and TCP (RFC 7766: pipelined,
// length-prefixed, bounded). Both hand messages to the Pipeline and carry replies back.
#pragma once
#include <sys/epoll.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <memory>
#include <unordered_map>
#include <vector>

#include "dnsward/config.hpp"
#include "dnsward/event_loop.hpp"
#include "dnsward/pipeline.hpp"

namespace dnsward {

class UdpListener : public ReplySink {
 public:
  /// Binds ep; throws std::system_error naming the address on failure.
  UdpListener(EventLoop& loop, Pipeline& pipeline, const Endpoint& ep);
  ~UdpListener() override;
  void deliver(const ClientAddr& to, const uint8_t* data, std::size_t len, bool) override;

  /// Datagrams read (and replies written) per system call under load.
  static constexpr int kBatch = 32;
  /// The largest query read; a bigger datagram is not a DNS query we answer.
  static constexpr std::size_t kMaxQuery = 4096;
  /// The largest UDP reply (--udp-payload is at most 4096).
  static constexpr std::size_t kMaxReply = 4096;

 private:
  void on_readable();
  void send_one(const ClientAddr& to, const uint8_t* data, std::size_t len);
  void fill_control(const ClientAddr& to, msghdr& msg, char* control) const;
  void flush();
  EventLoop& loop_;
  Pipeline& pipeline_;
  int fd_ = -1;
  bool wildcard_ = false;  // replies must leave from the address the query came to
  // recvmmsg/sendmmsg: a batch of queries in, the replies they got at once out together.
  // Not zero-filled: a page is touched only when a datagram lands in it, so a quiet
  // resolver's RSS does not carry 256 KiB of zeros (recvmmsg/sendmmsg read only msg_len bytes).
  std::unique_ptr<uint8_t[]> in_, out_;
  ClientAddr from_[kBatch];
  bool batching_ = false;
  int pending_ = 0;
  std::size_t out_len_[kBatch] = {};
  int out_client_[kBatch] = {};
};

class TcpListener : public ReplySink {
 public:
  TcpListener(EventLoop& loop, Pipeline& pipeline, const Endpoint& ep, const ServeConfig& cfg);
  ~TcpListener() override;
  void deliver(const ClientAddr& to, const uint8_t* data, std::size_t len,
               bool was_forwarded) override;
  std::size_t connections() const { return conns_.size(); }
  /// Host mode: the sandbox (its id) a peer address belongs to, "" for none. Connections
  /// are counted and evicted per sandbox: --sandbox-max-tcp each, and one sandbox's new
  /// connection never evicts another's.
  void set_tenant_of(std::function<std::string(const IpAddr&)> f) { tenant_of_ = std::move(f); }

 private:
  struct Conn {
    int fd = -1;
    uint64_t id = 0;
    ClientAddr client;
    std::string tenant;          // host mode: its sandbox's id ("" unknown)
    std::vector<uint8_t> in;     // bytes received and not yet handed to the pipeline
    std::size_t in_off = 0;      // in[0, in_off) is consumed (compacted after each pass)
    std::vector<uint8_t> out;    // length-prefixed replies not yet written
    std::size_t out_off = 0;
    uint32_t forwarded = 0;      // queries of this connection still upstream
    bool reading = true;
    bool eof = false;            // the client half-closed
    bool in_input = false;       // process_input() is running for this connection
    uint32_t events = EPOLLIN;
    EventLoop::TimerId idle = 0;
    uint64_t last_active_ms = 0;            // last complete query or reply
    std::list<uint64_t>::iterator lru_pos;  // its place in lru_
  };
  void on_accept();
  void on_event(uint64_t id, uint32_t events);
  bool read_some(Conn& c);       // false: connection closed
  bool process_input(Conn& c);   // false: connection closed
  bool finish_if_done(Conn& c);  // closes a half-closed connection with nothing owed
  bool write_some(Conn& c);   // false: connection closed
  void update_events(Conn& c);
  void touch(Conn& c);           // activity: a complete query or a reply
  void restart_idle(Conn& c);
  void on_idle(uint64_t id);
  /// At the connection cap: closes the longest-idle connection that owes nothing, so a new
  /// one can be admitted. False if every connection has a query in progress.
  /// In host mode only a connection of the same tenant may be evicted.
  bool evict_one(const sockaddr_storage& newcomer, socklen_t len, const std::string* tenant = nullptr);
  /// Host mode, at the global cap: evicts an idle connection of the sandbox holding the most,
  /// if it holds more than the newcomer's sandbox would.
  bool evict_from_largest(const sockaddr_storage& newcomer, socklen_t len, const std::string& tenant);
  void close_conn(uint64_t id, const char* why);

  EventLoop& loop_;
  Pipeline& pipeline_;
  const ServeConfig& cfg_;
  int fd_ = -1;
  uint64_t next_id_ = 1;
  std::unordered_map<uint64_t, std::unique_ptr<Conn>> conns_;
  std::list<uint64_t> lru_;  // connection ids, least recently active first
  std::function<std::string(const IpAddr&)> tenant_of_;
  std::unordered_map<std::string, uint32_t> per_tenant_;  // host mode: connections per sandbox
};

}  // namespace dnsward
