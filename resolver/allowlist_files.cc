#include "dnsward/allowlist_files.hpp"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace dnsward {

std::vector<PolicySource> read_allowlists(const std::vector<std::string>& paths,
                                          std::vector<std::string>& errors) {
  std::vector<PolicySource> sources;
  if (paths.empty()) sources.push_back({"default.allow (embedded)", kDefaultAllowlist, true});
  for (const auto& path : paths) {
    std::ifstream in(path);
    if (!in) {
      errors.push_back(path + ": cannot open: " + std::strerror(errno));
      continue;
    }
    std::ostringstream ss;
    ss << in.rdbuf();
    PolicySource src{path, ss.str(), false};
    src.shipped = src.text == kDefaultAllowlist;
    sources.push_back(std::move(src));
  }
  return sources;
}

std::shared_ptr<const Policy> load_policy(const std::vector<std::string>& paths,
                                          std::vector<std::string>& errors) {
  const auto sources = read_allowlists(paths, errors);
  if (!errors.empty()) return nullptr;
  Policy p = Policy::parse(sources, errors);
  if (!errors.empty()) return nullptr;
  return std::make_shared<const Policy>(std::move(p));
}

}  // namespace dnsward
