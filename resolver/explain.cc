#include "dnsward/explain.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "dnsward/dates.hpp"
#include "dnsward/wire.hpp"

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
    // Every key of the table, in its order: the justification always (a missing one shows
    // as such), the others when they say something about this entry.
    for (const auto& key : kAllowlistKeys) {
      if (key.text) {
        const std::string& v = e.*key.text;
        if (key.justification || !v.empty())
          out.push_back(fmt::format("  {}: {}", key.name, v.empty() ? "(not given)" : v));
      } else if (key.kind == KeyKind::YesNo) {
        if (e.allow_private)
          out.push_back(fmt::format("  {}=yes: special-purpose addresses are vouched for", key.name));
      } else if (key.kind == KeyKind::Any) {
        if (e.sni_any)
          out.push_back(fmt::format("  {}=any: with --sni-guard, any first flight may reach its addresses", key.name));
      } else if (key.kind == KeyKind::PortList) {
        if (!e.ports.empty())
          out.push_back(fmt::format("  {}={}: with --sni-guard, its addresses are open on these ports too "
                                    "(without the guard every port is)", key.name, ports_text(e.ports)));
      } else if (key.kind == KeyKind::TypeList) {
        if (!e.types.empty()) {
          std::string list;
          for (uint16_t t : e.types) {
            if (!list.empty()) list += ',';
            list += wire::type::text(t);
          }
          out.push_back(fmt::format("  {}: {}", key.name, list));
        }
      } else if (key.kind == KeyKind::PerMinute) {
        if (e.budget) out.push_back(fmt::format("  {}: {} names a minute", key.name, e.budget));
      }
    }
    if (e.shipped) out.push_back("  (from the shipped default list)");
  } else if (m.verdict == Match::Verdict::Ancestor) {
    out.push_back(fmt::format("{}: denied (NODATA): no entry matches it, but entries exist below it, "
                              "so it gets an empty answer, never NXDOMAIN (RFC 8020)", name));
  } else {
    out.push_back(fmt::format("{}: denied (NXDOMAIN): no allowlist entry matches it", name));
    out.push_back("  to allow it, add a justified line: " + fill_in_line(name, date::today()));
  }
  out.push_back(fmt::format("policy {}", p.version()));
  return out;
}

}  // namespace dnsward
