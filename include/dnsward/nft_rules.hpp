// `dnsward nft-rules`: prints the default-deny egress ruleset for a sandbox whose only
// resolver is dnsward, declaring the same table and sets that `dnsward serve` fills. Its
// options are the option table's (config.hpp): the nft group, --listen, --upstream and
// --user are the very options `serve` takes, with the same defaults and checks.
#pragma once
#include <string>
#include <vector>

#include "dnsward/config.hpp"

namespace dnsward {

/// Parses `dnsward nft-rules` arguments (argv after "nft-rules") against the option table,
/// and checks that every address given fits --nft-family (an `ip` table sees no IPv6).
/// Nameservers taken from resolv_conf that do not fit are left out.
ParseOutcome parse_nft_rules(const std::vector<std::string>& args,
                             const std::string& resolv_conf = "/etc/resolv.conf");

/// The ruleset for c's nft group, listen addresses, upstreams, user and --allow CIDRs, as
/// `nft -f` reads it. Pure.
std::string render_nft_rules(const ServeConfig& c);

/// The --help text of `dnsward nft-rules`, its options generated from the option table.
std::string nft_rules_help();

/// Runs the subcommand; returns the exit code.
int nft_rules_main(const std::vector<std::string>& args);

}  // namespace dnsward
