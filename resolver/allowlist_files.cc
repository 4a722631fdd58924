#include "dnsward/allowlist_files.hpp"

#include <malloc.h>
#include <sys/stat.h>

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
    // Regular files only. A directory opens fine and reads as nothing: it would load as an
    // empty list (and a reload would put that in force, revoking every vouched address); a
    // FIFO would block the loop; a character device (/dev/zero, given to `ctl add`) would be
    // read until memory runs out, the loop stalled for every sandbox meanwhile. /dev/null
    // stays allowed: an empty list on purpose.
    struct stat st {};
    if (stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode) && path != "/dev/null") {
      errors.push_back(path + ": cannot read: not a file");
      continue;
    }
    std::ifstream in(path);
    if (!in) {
      errors.push_back(path + ": cannot open: " + std::strerror(errno));
      continue;
    }
    std::ostringstream ss;
    ss << in.rdbuf();
    if (in.bad()) {
      errors.push_back(path + ": cannot read: " + std::strerror(errno));
      continue;
    }
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
  auto p = std::make_shared<const Policy>(Policy::parse(sources, errors));
  // Hand the parser's scratch memory (the files' text, tokens) back to the system: a large
  // list must not leave a large heap behind.
  malloc_trim(0);
  if (!errors.empty()) return nullptr;
  return p;
}

}  // namespace dnsward
