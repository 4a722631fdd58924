// Why a name is allowed or denied (`dnsward explain`, and in-band as `dig CH TXT why.NAME`),
// and what the policy has been used for (`dnsward report`).
#pragma once
#include <string>
#include <string_view>
#include <vector>

#include "dnsward/policy.hpp"

namespace dnsward {

/// The verdict for a presentation-form name, the entry and FILE:LINE that decide it, and
/// that entry's justification, one line each. Pure.
std::vector<std::string> explain_lines(const Policy& p, std::string_view name);

/// The names queried in-band: "why.NAME" in class CHAOS asks about NAME.
inline constexpr std::string_view kWhyLabel = "why";

}  // namespace dnsward
