#include "dnsward/host_mode.hpp"

#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <ctime>
#include <map>

#include <fmt/format.h>

#include "dnsward/atomic_file.hpp"
#include "dnsward/clock.hpp"
#include "dnsward/conntrack.hpp"
#include "dnsward/explain.hpp"
#include "dnsward/json.hpp"
#include "dnsward/log.hpp"

namespace dnsward {

namespace {
/// Whether nft's iifname pattern (a name, or a prefix and '*') matches name.
bool iface_matches(const std::string& pattern, const std::string& name) {
  if (!pattern.empty() && pattern.back() == '*')
    return name.compare(0, pattern.size() - 1, pattern, 0, pattern.size() - 1) == 0;
  return name == pattern;
}

std::string quoted(std::string_view s) {
  std::string out;
  json::append_quoted(out, s);
  return out;
}

std::string addr_list(const std::vector<IpAddr>& addrs) {
  std::string out = "[";
  for (const IpAddr& a : addrs) out += (out.size() > 1 ? "," : "") + quoted(a.text());
  return out + "]";
}

std::string error_reply(std::string_view err) { return "{\"ok\":false,\"error\":" + quoted(err) + "}"; }

/// What was registered at start or at a change, for the log: one line per sandbox.
void log_registered(const Sandbox& sb, const char* how) {
  std::string addrs;
  for (const IpAddr& a : sb.spec.addrs) addrs += (addrs.empty() ? "" : ",") + a.text();
  log::info("event=sandbox-{} id={} addrs={} iface={} policy={} entries={} mode={}", how, sb.spec.id,
            addrs, sb.spec.iface, sb.policy->version(), sb.policy->size(), sb.spec.audit ? "audit" : "enforce");
}
}  // namespace

HostMode::HostMode(const ServeConfig& cfg, Sandboxes& sandboxes, NftSets& nft, Pipeline& pipeline)
    : cfg_(cfg), sandboxes_(sandboxes), nft_(nft), pipeline_(pipeline) {}

std::string HostMode::file_of(const std::string& id, const char* ext) const {
  return cfg_.sandboxes_dir + "/" + id + ext;
}

bool HostMode::add(const SandboxSpec& spec, bool persist, std::string& reply, std::string& err,
                   Restore* restore) {
  if (err = check_sandbox_spec(spec); !err.empty()) return false;
  if (!iface_matches(cfg_.sandbox_ifaces, spec.iface)) {
    // The host ruleset touches only --sandbox-ifaces: a sandbox on another interface would
    // be registered and yet filtered by nothing.
    err = fmt::format("interface {} does not match --sandbox-ifaces {}: the host ruleset would not filter it",
                      spec.iface, cfg_.sandbox_ifaces);
    return false;
  }
  if (err = sandboxes_.conflicts(spec); !err.empty()) return false;
  std::vector<std::string> errors;
  auto policy = sandboxes_.policy_for(spec, errors, restore ? &restore->files : nullptr);
  if (!policy) {
    err = errors.empty() ? "the allowlist could not be loaded" : errors.front();
    if (errors.size() > 1) err += fmt::format(" (and {} more)", errors.size() - 1);
    return false;
  }
  const auto old = sandboxes_.by_id(spec.id);
  if (restore) {
    // At start: the pairs go in together once every file is read (HostMode::restore).
    if (old) {
      err = fmt::format("sandbox {} is registered twice", spec.id);
      return false;
    }
    for (const IpAddr& a : spec.addrs) restore->pairs.emplace_back(spec.iface, a);
    sandboxes_.put(spec, policy);
    return true;
  }
  // A new sandbox starts with nothing: elements still held for its addresses (a sandbox
  // that had them and was never removed) go before its pairs let it in.
  std::vector<IpAddr> fresh_addrs;
  for (const IpAddr& a : spec.addrs)
    if ((!old || std::find(old->spec.addrs.begin(), old->spec.addrs.end(), a) == old->spec.addrs.end()) &&
        nft_.elements_of(a) > 0)
      fresh_addrs.push_back(a);
  if (!fresh_addrs.empty()) {
    const RevokeOutcome r = nft_.remove_guests(fresh_addrs, mono_ms());
    if (!r.ok) {
      err = "cannot delete elements left for its addresses: " + r.err;
      return false;
    }
  }
  // The anti-spoofing pairs first: until they are in the kernel, nothing from the guest gets
  // past prerouting, so once this returns the sandbox is reachable and no sooner.
  if (!nft_.set_pairs(spec.iface, spec.addrs, true, err)) return false;
  if (persist && !cfg_.sandboxes_dir.empty() &&
      !write_file_atomically(file_of(spec.id, ".sandbox"), render_sandbox_file(spec), err)) {
    // Nothing may change on failure: the pairs this add made (and the old sandbox did not
    // have) go again.
    std::vector<IpAddr> fresh;
    for (const IpAddr& a : spec.addrs)
      if (!old || old->spec.iface != spec.iface ||
          std::find(old->spec.addrs.begin(), old->spec.addrs.end(), a) == old->spec.addrs.end())
        fresh.push_back(a);
    std::string ignored;
    nft_.set_pairs(spec.iface, fresh, false, ignored);
    err = "cannot keep the registration: " + err;
    return false;
  }
  const auto sb = sandboxes_.put(spec, policy);
  std::size_t revoked = 0;
  if (old) {
    // A change: the pairs and elements of addresses (or a tap) it no longer has go, with
    // their flows; then what its new policy no longer vouches for.
    std::vector<IpAddr> dropped;
    for (const IpAddr& a : old->spec.addrs)
      if (std::find(spec.addrs.begin(), spec.addrs.end(), a) == spec.addrs.end()) dropped.push_back(a);
    std::string e2;
    if (old->spec.iface != spec.iface) nft_.set_pairs(old->spec.iface, old->spec.addrs, false, e2);
    else nft_.set_pairs(old->spec.iface, dropped, false, e2);
    if (!e2.empty()) log::error("event=sandbox-pairs-failed id={} error={}", spec.id, log::quote(e2));
    if (!dropped.empty()) {
      const RevokeOutcome r = nft_.remove_guests(dropped, mono_ms());
      revoked += r.deleted;
      std::size_t flows = 0;
      if (!forget_flows_from(dropped, flows, e2))
        log::error("event=sandbox-flows-failed id={} error={}", spec.id, log::quote(e2));
    }
    pipeline_.sandboxes_changed("removed from a sandbox's allowlist by ctl add");
  }
  log_registered(*sb, old ? "changed" : "added");
  reply = fmt::format("{{\"ok\":true,\"id\":{},\"policy\":{},\"entries\":{},\"replaced\":{}}}", quoted(spec.id),
                      quoted(policy->version()), policy->size(), old ? "true" : "false");
  return true;
}

bool HostMode::remove(const std::string& id, std::string& reply, std::string& err) {
  const auto sb = sandboxes_.erase(id);  // marked gone: nothing more is vouched for it
  if (!sb) {
    err = fmt::format("no sandbox {}", id);
    return false;
  }
  // In the order that cuts it off soonest: its pairs (prerouting drops everything from it,
  // established flows included), its elements, then its flows, so that a VM that gets the
  // address later inherits nothing.
  std::vector<std::string> failures;
  std::string e;
  if (!nft_.set_pairs(sb->spec.iface, sb->spec.addrs, false, e)) failures.push_back(e);
  const RevokeOutcome r = nft_.remove_guests(sb->spec.addrs, mono_ms());
  if (!r.ok) failures.push_back(r.err);
  std::size_t flows = 0;
  if (!forget_flows_from(sb->spec.addrs, flows, e)) failures.push_back("conntrack: " + e);
  if (!cfg_.sandboxes_dir.empty()) {
    const std::string f = file_of(id, ".sandbox");
    if (unlink(f.c_str()) != 0 && errno != ENOENT) failures.push_back(f + ": " + std::strerror(errno));
  }
  log::info("event=sandbox-removed id={} elements={} already_gone={} flows={}", id, r.deleted,
            r.already_gone, flows);
  if (!failures.empty()) {
    // Unregistered whatever failed (its queries are refused from now on); the operator
    // learns what may still be in the kernel.
    err = fmt::format("sandbox {} is unregistered, but: {}", id, failures.front());
    log::error("event=sandbox-remove-failed id={} error={}", id, log::quote(err));
    return false;
  }
  reply = fmt::format("{{\"ok\":true,\"id\":{},\"elements_deleted\":{},\"flows_deleted\":{}}}", quoted(id),
                      r.deleted, flows);
  return true;
}

std::string HostMode::handle(const CtlRequest& r) {
  std::string reply, err;
  switch (r.cmd) {
    case CtlRequest::Cmd::Add:
      return add(r.spec, true, reply, err) ? reply : error_reply(err);
    case CtlRequest::Cmd::Remove:
      return remove(r.spec.id, reply, err) ? reply : error_reply(err);
    case CtlRequest::Cmd::List: {
      std::string out = "{\"ok\":true,\"sandboxes\":[";
      bool first = true;
      for (const auto& [id, sb] : sandboxes_.all()) {
        std::size_t elements = 0;
        for (const IpAddr& a : sb->spec.addrs) elements += nft_.elements_of(a);
        out += fmt::format("{}{{\"id\":{},\"addrs\":{},\"iface\":{},\"policy\":{},\"elements\":{}}}",
                           first ? "" : ",", quoted(id), addr_list(sb->spec.addrs), quoted(sb->spec.iface),
                           quoted(sb->policy->version()), elements);
        first = false;
      }
      return out + "]}";
    }
    case CtlRequest::Cmd::Show: {
      const auto sb = sandboxes_.by_id(r.spec.id);
      if (!sb) return error_reply(fmt::format("no sandbox {}", r.spec.id));
      const uint64_t now = mono_ms();
      std::string elems = "[";
      std::size_t n = 0;
      for (const IpAddr& g : sb->spec.addrs)
        nft_.ledger().for_each_of(g, [&](const SetKey& k, const LedgerRecord& rec) {
          if (rec.kernel_ms <= now || n >= 10000) return;  // held ones, bounded
          const uint64_t left = rec.kernel_ms == kNoExpiry ? 0 : (rec.kernel_ms - now) / 1000;
          elems += fmt::format("{}{{\"guest\":{},\"addr\":{},\"expires_in\":{},\"names\":{}}}", n ? "," : "",
                               quoted(k.guest.text()), quoted(k.addr.text()), left, quoted(rec.names));
          ++n;
        });
      elems += "]";
      std::string lists = "[";
      for (const auto& l : sb->spec.allowlists) lists += (lists.size() > 1 ? "," : "") + quoted(l);
      lists += "]";
      const auto& c = sb->counts;
      // Its live flows, as conntrack holds them (what `remove` will delete).
      std::size_t flows = 0;
      std::string ferr;
      const bool counted = count_flows_from(sb->spec.addrs, flows, ferr);
      return fmt::format(
          "{{\"ok\":true,\"id\":{},\"addrs\":{},\"iface\":{},\"allowlists\":{},\"inline\":{},\"default\":{},"
          "\"mode\":{},\"policy\":{},\"entries\":{},\"counters\":{{\"queries\":{},\"allowed\":{},\"denied\":{},"
          "\"forwarded\":{},\"cache_hits\":{},\"vouched_answers\":{},\"capped\":{},\"inflight\":{}}},"
          "\"flows\":{},\"elements\":{}}}",
          quoted(sb->spec.id), addr_list(sb->spec.addrs), quoted(sb->spec.iface), lists,
          sb->spec.allowlist_text.empty() ? "false" : "true", sb->spec.default_list ? "true" : "false",
          quoted(sb->spec.audit ? "audit" : "enforce"), quoted(sb->policy->version()), sb->policy->size(),
          c.queries, c.allowed, c.denied, c.forwarded, c.cached, c.vouched, c.refused_caps, sb->inflight,
          counted ? std::to_string(flows) : "null", elems);
    }
    case CtlRequest::Cmd::Explain: {
      const auto sb = sandboxes_.by_id(r.spec.id);
      if (!sb) return error_reply(fmt::format("no sandbox {}", r.spec.id));
      std::string out = "{\"ok\":true,\"id\":" + quoted(sb->spec.id) + ",\"lines\":[";
      bool first = true;
      for (const auto& l : explain_lines(*sb->policy, r.name)) {
        out += (first ? "" : ",") + quoted(l);
        first = false;
      }
      return out + "]}";
    }
  }
  return error_reply("unknown command");
}

std::size_t HostMode::restore() {
  if (cfg_.sandboxes_dir.empty()) {
    forget_unregistered();  // nothing is restored: whatever a previous run left goes
    return 0;
  }
  DIR* d = opendir(cfg_.sandboxes_dir.c_str());
  if (!d) {
    log::warn("event=sandboxes-unreadable dir={} error={}", log::quote(cfg_.sandboxes_dir),
              log::quote(std::strerror(errno)));
    forget_unregistered();
    return 0;
  }
  std::vector<std::string> files;
  while (const dirent* e = readdir(d)) {
    const std::string n = e->d_name;
    if (n.size() > 8 && n.compare(n.size() - 8, 8, ".sandbox") == 0) files.push_back(n);
  }
  closedir(d);
  std::sort(files.begin(), files.end());
  std::size_t ok = 0;
  Restore batch;
  for (const auto& f : files) {
    const std::string path = cfg_.sandboxes_dir + "/" + f;
    std::string text, err, reply;
    SandboxSpec spec;
    if (read_file(path, text, err, 4u << 20) != ReadFile::Ok || !parse_sandbox_file(text, path, spec, err) ||
        !add(spec, false, reply, err, &batch)) {
      log::error("event=sandbox-not-restored file={} error={} msg={}", log::quote(path), log::quote(err),
                 log::quote("skipped; the other sandboxes are restored"));
      continue;
    }
    if (f != spec.id + ".sandbox")
      log::warn("event=sandbox-file-name file={} id={}", log::quote(path), spec.id);
    // Its usage counts from the last run.
    const auto sb = sandboxes_.by_id(spec.id);
    std::string uerr;
    if (sb && Usage::load(file_of(spec.id, ".usage"), sb->usage, uerr) == Usage::Load::Corrupt)
      log::error("event=sandbox-usage-corrupt id={} error={}", spec.id, log::quote(uerr));
    if (sb) log::debug("event=sandbox-restored id={} policy={}", spec.id, sb->policy->version());
    ++ok;
  }
  std::string err;
  if (!nft_.add_pairs(batch.pairs, err)) {
    // One bad pair refuses its whole batch: each sandbox alone, so that only the ones whose
    // pairs cannot be added stay unregistered (and cut off).
    log::error("event=sandbox-pairs-failed error={} msg={}", log::quote(err),
               log::quote("adding each sandbox's pairs alone"));
    std::vector<std::string> ids;
    for (const auto& [id, sb] : sandboxes_.all()) ids.push_back(id);
    for (const auto& id : ids) {
      const auto sb = sandboxes_.by_id(id);
      if (nft_.set_pairs(sb->spec.iface, sb->spec.addrs, true, err)) continue;
      log::error("event=sandbox-not-restored id={} error={}", id, log::quote(err));
      sandboxes_.erase(id);
      --ok;
    }
  }
  forget_unregistered();
  return ok;
}

void HostMode::forget_unregistered() {
  // What the kernel holds for sandboxes that are not registered now (one that was not
  // restored, a restart without --sandboxes, a file deleted while dnsward was down) goes:
  // their anti-spoofing pairs, every element opened for their addresses (with or without
  // provenance) and their flows. Else a sandbox given the address later would inherit them.
  std::vector<std::pair<std::string, IpAddr>> pairs;
  std::vector<IpAddr> stale;
  std::string err;
  if (!nft_.list_pairs(pairs, err)) {
    log::error("event=stale-pairs-unread error={}", log::quote(err));
  } else {
    std::map<std::string, std::vector<IpAddr>> by_iface;
    for (const auto& [iface, a] : pairs) {
      const auto sb = sandboxes_.by_addr(a);
      if (sb && sb->spec.iface == iface) continue;
      by_iface[iface].push_back(a);
      if (!sb) stale.push_back(a);
    }
    for (const auto& [iface, addrs] : by_iface)
      if (!nft_.set_pairs(iface, addrs, false, err))
        log::error("event=stale-pairs-failed iface={} error={}", log::quote(iface), log::quote(err));
  }
  for (const IpAddr& g : nft_.guests())
    if (!sandboxes_.by_addr(g) && std::find(stale.begin(), stale.end(), g) == stale.end()) stale.push_back(g);
  if (stale.empty()) return;
  const RevokeOutcome r = nft_.remove_guests(stale, mono_ms());
  std::size_t flows = 0;
  if (!forget_flows_from(stale, flows, err))
    log::error("event=stale-flows-failed error={}", log::quote(err));
  log::info("event=stale-sandboxes-forgotten addresses={} elements={} flows={} ok={}", stale.size(), r.deleted,
            flows, r.ok ? "yes" : "no");
}

void HostMode::reload_all() {
  std::size_t changed = 0, failed = 0;
  for (const auto& [id, sb] : sandboxes_.all()) {
    std::vector<std::string> errors;
    auto p = sandboxes_.policy_for(sb->spec, errors);
    if (!p) {
      ++failed;
      log::error("event=sandbox-reload-failed id={} error={} msg={}", id,
                 log::quote(errors.empty() ? std::string("?") : errors.front()),
                 log::quote("its previous allowlist stays in force"));
      continue;
    }
    changed += p != sb->policy;
    sb->policy = std::move(p);
    sb->budgets.clear();  // entry indices changed
  }
  pipeline_.sandboxes_changed("removed from a sandbox's allowlist by a reload");
  log::info("event=reload sandboxes={} changed={} failed={} policies={}", sandboxes_.size(), changed, failed,
            sandboxes_.policies());
}

void HostMode::restore_pairs() {
  std::size_t failed = 0;
  for (const auto& [id, sb] : sandboxes_.all()) {
    std::string err;
    if (!nft_.set_pairs(sb->spec.iface, sb->spec.addrs, true, err)) {
      ++failed;
      log::error("event=sandbox-pairs-failed id={} error={}", id, log::quote(err));
    }
  }
  log::warn("event=sandbox-pairs-restored sandboxes={} failed={} msg={}", sandboxes_.size(), failed,
            log::quote("someone else deleted anti-spoofing pairs; the registered ones are back"));
}

void HostMode::save_usage() {
  if (cfg_.sandboxes_dir.empty()) return;
  for (const auto& [id, sb] : sandboxes_.all()) {
    if (sb->saved_at == sb->counts.queries) continue;  // nothing new since the last write
    sb->saved_at = sb->counts.queries;
    std::string err;
    if (!sb->usage.save(file_of(id, ".usage"), err))
      log::error("event=state-save-failed id={} error={}", id, log::quote(err));
  }
}

}  // namespace dnsward
