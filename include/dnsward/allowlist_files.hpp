// Reading allowlist files from disk (the policy itself is pure). Shared by serve, check,
// report and explain.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "dnsward/policy.hpp"

namespace dnsward {

/// zones/default.allow, embedded at build time.
extern const char kDefaultAllowlist[];

/// The files' texts; no paths means the embedded default list. A file whose text is the
/// embedded default list's is marked shipped. Unreadable files add "PATH: cannot open: ..."
/// to errors.
std::vector<PolicySource> read_allowlists(const std::vector<std::string>& paths,
                                          std::vector<std::string>& errors);

/// read_allowlists + Policy::parse; null if anything failed (errors say what).
std::shared_ptr<const Policy> load_policy(const std::vector<std::string>& paths,
                                          std::vector<std::string>& errors);

}  // namespace dnsward
