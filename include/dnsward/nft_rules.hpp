// `dnsward nft-rules`: prints the default-deny egress ruleset for a sandbox whose only
// resolver is dnsward, declaring the same table and sets that `dnsward serve` fills.
#pragma once
#include <string>
#include <vector>

#include "dnsward/config.hpp"

namespace dnsward {

struct NftRulesConfig {
  std::vector<Endpoint> upstreams;  ///< where dnsward's own user may send DNS
  std::vector<Endpoint> listen;     ///< where everyone else may send DNS
  std::string user = "dnsward";
  std::vector<std::string> allow;   ///< extra CIDRs always reachable
  std::string table = "dnsward", set4 = "allowed4", set6 = "allowed6";
  uint32_t set_size = 65536;
};

/// The ruleset, as `nft -f` reads it. Pure.
std::string render_nft_rules(const NftRulesConfig& c);

/// Runs the subcommand; returns the exit code.
int nft_rules_main(const std::vector<std::string>& args);

}  // namespace dnsward
