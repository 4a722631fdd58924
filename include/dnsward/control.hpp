// The control socket of host mode (--control PATH): a Unix stream socket, mode 0660, owner
// root, group --control-group, where an orchestrator adds, changes and removes sandboxes
// while dnsward runs. One request per line (sandbox_spec.hpp's JSON), one JSON reply line
// each: {"ok":true,...} or {"ok":false,"error":"..."}. The peer is checked with SO_PEERCRED
// (root, or the control group) before anything it sends is read.
#pragma once
#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "dnsward/event_loop.hpp"
#include "dnsward/sandbox_spec.hpp"

namespace dnsward {

/// What the socket serves. Called on the loop's thread; the reply is one JSON object (no
/// newline), sent when handle() returns, so `add` replies once the sandbox is active.
class ControlHandler {
 public:
  virtual ~ControlHandler() = default;
  virtual std::string handle(const CtlRequest& r) = 0;
};

class ControlServer {
 public:
  /// Binds path (replacing a stale socket file, never another kind of file), sets its mode
  /// and owner; throws std::runtime_error with a message for the operator.
  ControlServer(EventLoop& loop, const std::string& path, const std::string& group,
                ControlHandler& handler);
  ~ControlServer();
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;
  /// Requests handed to the handler (lines that parsed).
  uint64_t requests() const { return requests_; }
  /// Connections closed at once because SO_PEERCRED named neither root nor the group.
  uint64_t refused_peers() const { return refused_peers_; }
  /// Connections closed at once because 64 were open already.
  uint64_t dropped_conns() const { return dropped_conns_; }
  /// Connections open now.
  std::size_t connections() const { return conns_.size(); }

 private:
  struct Conn;
  void on_accept();
  void on_event(int fd, uint32_t events);
  void on_readable(int fd);
  void serve_lines(int fd);
  bool flush(Conn& c);  ///< false if the connection was closed
  bool peer_allowed(int fd, std::string& why) const;
  void close_conn(int fd);
  EventLoop& loop_;
  std::string path_;
  gid_t gid_ = 0;
  bool has_group_ = false;
  ControlHandler& handler_;
  int fd_ = -1;
  ino_t ino_ = 0;  ///< the socket file we made, so the destructor unlinks only that
  dev_t dev_ = 0;
  std::unordered_map<int, std::unique_ptr<Conn>> conns_;
  uint64_t requests_ = 0, refused_peers_ = 0, dropped_conns_ = 0;
};

/// `dnsward ctl ...` (args: what follows "ctl"): sends one request, prints the reply; exit 0 if ok, 1 if the reply is an
/// error or dnsward cannot be reached, 2 for a usage error.
int ctl_main(const std::vector<std::string>& args);

}  // namespace dnsward
