// Host mode's control plane: what `dnsward ctl` asks of a running `serve --host` (add,
// change, remove, list, show, explain a sandbox), the registrations kept in --sandboxes DIR
// and restored at start, and SIGHUP's reload of every sandbox's policy. It ties the
// registry (sandboxes.hpp), the sets (nft_sets.hpp: the anti-spoofing pairs and each
// guest's elements), conntrack (conntrack.hpp) and the pipeline together; each request is
// answered only once what it asked for is in force.
#pragma once
#include <string>
#include <unordered_map>
#include <vector>

#include "dnsward/config.hpp"
#include "dnsward/control.hpp"
#include "dnsward/nft_sets.hpp"
#include "dnsward/pipeline.hpp"
#include "dnsward/sandboxes.hpp"

namespace dnsward {

class HostMode : public ControlHandler {
 public:
  HostMode(const ServeConfig& cfg, Sandboxes& sandboxes, NftSets& nft, Pipeline& pipeline);

  /// Registers every DIR/ID.sandbox file; a bad one is logged (FILE:LINE: reason) and
  /// skipped, never fatal to the others. Returns how many were registered.
  std::size_t restore();
  /// SIGHUP: every sandbox's allowlist files are read again; a sandbox whose files fail
  /// keeps its policy (logged); then what no sandbox's policy still vouches for is revoked.
  void reload_all();
  /// Puts every registered sandbox's anti-spoofing pairs in the kernel again (after someone
  /// else deleted some).
  void restore_pairs();
  /// Writes each sandbox's usage counts to DIR/ID.usage (with --sandboxes).
  void save_usage();

  std::string handle(const CtlRequest& r) override;

  /// What a restore shares between its adds: each allowlist file read once, the pairs
  /// added in a few batches at the end, one log line.
  struct Restore {
    std::unordered_map<std::string, PolicySource> files;
    std::vector<std::pair<std::string, IpAddr>> pairs;
  };
  /// The parts of add: false with err (one line) and nothing changed. With restore, the
  /// pairs are left to the caller.
  bool add(const SandboxSpec& spec, bool persist, std::string& reply, std::string& err,
           Restore* restore = nullptr);
  bool remove(const std::string& id, std::string& reply, std::string& err);

 private:
  std::string file_of(const std::string& id, const char* ext) const;
  /// At start: pairs, elements and flows of addresses no registered sandbox has go.
  void forget_unregistered();
  const ServeConfig& cfg_;
  Sandboxes& sandboxes_;
  NftSets& nft_;
  Pipeline& pipeline_;
};

}  // namespace dnsward
