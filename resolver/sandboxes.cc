#include "dnsward/sandboxes.hpp"

#include <malloc.h>

#include <fmt/format.h>

#include "dnsward/allowlist_files.hpp"

namespace dnsward {

std::shared_ptr<Sandbox> Sandboxes::by_addr(const IpAddr& a) const {
  const auto it = by_addr_.find(a);
  return it == by_addr_.end() ? nullptr : it->second;
}

std::shared_ptr<Sandbox> Sandboxes::by_id(const std::string& id) const {
  const auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : it->second;
}

std::shared_ptr<const Policy> Sandboxes::policy_for(const SandboxSpec& spec, std::vector<std::string>& errors,
                                                    std::unordered_map<std::string, PolicySource>* files) {
  // The files are read every time (a changed file is a changed policy); parsing, the costly
  // part, happens once per distinct set of texts.
  std::vector<PolicySource> sources;
  if (spec.default_list) sources.push_back({"embedded default list", kDefaultAllowlist, true});
  for (const std::string& path : spec.allowlists) {
    if (files) {
      if (const auto it = files->find(path); it != files->end()) {
        sources.push_back(it->second);
        continue;
      }
    }
    auto read = read_allowlists({path}, errors);
    if (!errors.empty()) return nullptr;
    if (files) files->emplace(path, read.front());
    sources.push_back(std::move(read.front()));
  }
  if (!spec.allowlist_text.empty()) sources.push_back({"sandbox " + spec.id + " inline", spec.allowlist_text, false});
  // The key: every source's name and whole text, in order (a hash could be made to collide
  // by whoever writes one of the texts, and an edit would go unseen). Inline entries are
  // named by sandbox, so sandboxes sharing them by text alone get separate (equal)
  // policies: their FILE:LINE messages name their own sandbox.
  std::string key;
  for (const auto& s : sources) key += fmt::format("{}\n{}\n{}", s.name, s.text.size(), s.text);
  if (const auto it = cache_.find(key); it != cache_.end())
    if (auto p = it->second.lock()) return p;
  auto p = std::make_shared<const Policy>(Policy::parse(sources, errors));
  malloc_trim(0);
  if (!errors.empty()) return nullptr;
  // Forget policies nobody holds any more, so the cache is bounded by what is in use.
  for (auto it = cache_.begin(); it != cache_.end();)
    it = it->second.expired() ? cache_.erase(it) : std::next(it);
  cache_[key] = p;
  return p;
}

std::size_t Sandboxes::policies() const {
  std::size_t n = 0;
  for (const auto& [k, w] : cache_) n += !w.expired();
  return n;
}

std::string Sandboxes::conflicts(const SandboxSpec& spec) const {
  // Anti-spoofing can only check (interface . source address): a guest may send from any
  // address registered on its own interface, so two sandboxes on one interface (a bridge)
  // could pass for each other. Loopback is the exception: no guest sits behind it, only the
  // host's own processes, which may send from any local address anyway (the scale bench
  // registers 10,000 sandboxes there).
  if (const auto it = by_iface_.find(spec.iface);
      spec.iface != "lo" && it != by_iface_.end() && it->second != spec.id)
    return fmt::format("interface {} is registered to sandbox {} (one interface per sandbox: "
                       "anti-spoofing tells sandboxes apart by interface)", spec.iface, it->second);
  for (const IpAddr& a : spec.addrs) {
    const auto it = by_addr_.find(a);
    if (it != by_addr_.end() && it->second->spec.id != spec.id)
      return fmt::format("address {} is registered to sandbox {}", a.text(), it->second->spec.id);
  }
  return "";
}

std::shared_ptr<Sandbox> Sandboxes::put(const SandboxSpec& spec, std::shared_ptr<const Policy> policy) {
  auto sb = std::make_shared<Sandbox>(state_names_);
  sb->spec = spec;
  sb->policy = std::move(policy);
  if (auto old = erase(spec.id)) {
    sb->usage = std::move(old->usage);
    sb->counts = old->counts;
  }
  for (const IpAddr& a : spec.addrs) by_addr_[a] = sb;
  by_iface_[spec.iface] = spec.id;
  by_id_[spec.id] = sb;
  return sb;
}

std::shared_ptr<Sandbox> Sandboxes::erase(const std::string& id) {
  const auto it = by_id_.find(id);
  if (it == by_id_.end()) return nullptr;
  auto sb = it->second;
  sb->gone = true;
  for (const IpAddr& a : sb->spec.addrs) {
    const auto at = by_addr_.find(a);
    if (at != by_addr_.end() && at->second == sb) by_addr_.erase(at);
  }
  if (const auto at = by_iface_.find(sb->spec.iface); at != by_iface_.end() && at->second == id) by_iface_.erase(at);
  by_id_.erase(it);
  return sb;
}

}  // namespace dnsward
