#include "dnsward/explain.hpp"

#include <time.h>

#include <algorithm>
#include <cstdio>
#include <fmt/format.h>

#include "dnsward/lint.hpp"


namespace dnsward {

std::vector<std::string> explain_lines(const Policy& p, std::string_view name_in) {
  std::string name(name_in);
  std::transform(name.begin(), name.end(), name.begin(),
                 [](unsigned char c) { return char(std::tolower(c)); });
  if (name.size() > 1 && name.back() == '.') name.pop_back();
  std::vector<std::string> out;
  std::string wire;
  if (!text_to_wire(name, wire)) {
    out.push_back(fmt::format("{}: not a valid domain name", name));
    return out;
  }
  const bool localhost = name == "localhost" ||
                         (name.size() > 10 && name.compare(name.size() - 10, 10, ".localhost") == 0);
  const Match m = p.match_text(name);
  if (localhost) {
    out.push_back(fmt::format("{}: answered locally with loopback addresses (RFC 6761), never forwarded", name));
  } else if (m.verdict == Match::Verdict::Allow) {
    const Entry e = p.entry(std::size_t(m.entry));
    out.push_back(fmt::format("{}: allowed by '{}' at {}", name, e.pattern, e.where()));
    auto field = [&](const char* k, const std::string& v) {
      out.push_back(fmt::format("  {}: {}", k, v.empty() ? "(not given)" : v));
    };
    field("owner", e.owner);
    field("why", e.why);
    field("data", e.data);
    field("unreachable", e.unreachable);
    field("reviewed", e.reviewed);
    if (!e.expires.empty()) field("expires", e.expires);
    if (e.allow_private) out.push_back("  private=yes: special-purpose addresses are vouched for");
    if (e.shipped) out.push_back("  (from the shipped default list)");
  } else if (m.verdict == Match::Verdict::Ancestor) {
    out.push_back(fmt::format("{}: denied (NODATA): no entry matches it, but entries exist below it, "
                              "so it gets an empty answer, never NXDOMAIN (RFC 8020)", name));
  } else {
    out.push_back(fmt::format("{}: denied (NXDOMAIN): no allowlist entry matches it", name));
    out.push_back("  to allow it, add a justified line: " + name +
                  " owner=\"\" why=\"\" data=\"\" unreachable=\"\" reviewed=" + today_utc());
  }
  out.push_back(fmt::format("policy {}", p.version()));
  return out;
}

}  // namespace dnsward
