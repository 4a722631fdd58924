#include "dnsward/lint.hpp"

#include <dlfcn.h>
#include <libpsl.h>
#include <time.h>

#include <algorithm>
#include <cstdio>
#include <fmt/format.h>
#include <fstream>
#include <map>
#include <type_traits>
#include <unordered_map>

#include "dnsward/dates.hpp"



namespace dnsward {

// ---- the Public Suffix List ----

namespace {

// libpsl, resolved with dlopen when `check` first needs it. Linked, it would map libpsl,
// libidn2 and libunistring into every `dnsward serve` (issue 10). The header gives the types;
// the soname is the ABI it describes (Debian 12's libpsl5).
constexpr const char* kPslSoname = "libpsl.so.5";

struct LibPsl {
  decltype(&psl_builtin) builtin = nullptr;
  decltype(&psl_builtin_filename) builtin_filename = nullptr;
  decltype(&psl_load_file) load_file = nullptr;
  decltype(&psl_free) free = nullptr;
  decltype(&psl_is_public_suffix2) is_public_suffix2 = nullptr;
  decltype(&psl_registrable_domain) registrable_domain = nullptr;
  std::string error;  ///< why it could not be loaded, or ""
};

const LibPsl& libpsl() {
  static const LibPsl lib = [] {
    LibPsl l;
    void* h = dlopen(kPslSoname, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      l.error = fmt::format("cannot load {} (Debian package libpsl5), which reads the Public Suffix List: {}",
                            kPslSoname, dlerror());
      return l;
    }
    auto sym = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(h, name));
      if (!fn && l.error.empty()) l.error = fmt::format("{} has no {}", kPslSoname, name);
    };
    sym(l.builtin, "psl_builtin");
    sym(l.builtin_filename, "psl_builtin_filename");
    sym(l.load_file, "psl_load_file");
    sym(l.free, "psl_free");
    sym(l.is_public_suffix2, "psl_is_public_suffix2");
    sym(l.registrable_domain, "psl_registrable_domain");
    return l;  // never dlclose()d: the command ends soon after
  }();
  return lib;
}

}  // namespace

std::unique_ptr<PublicSuffixList> PublicSuffixList::load(const std::string& path, std::string& err) {
  const LibPsl& psl = libpsl();
  if (!psl.error.empty()) {
    err = psl.error;
    return nullptr;
  }
  std::unique_ptr<PublicSuffixList> l(new PublicSuffixList());
  // libpsl answers "is this a public suffix"; it has no way to list rules, so the text form
  // of the same list is read as well, for "are there rules below this name".
  if (path.empty()) {
    l->ctx_ = const_cast<psl_ctx_t*>(psl.builtin());
    const char* f = psl.builtin_filename();
    l->path_ = f ? f : "";
    if (!l->ctx_ || l->path_.empty()) {
      err = "libpsl has no built-in Public Suffix List (install the publicsuffix package)";
      return nullptr;
    }
  } else {
    l->ctx_ = psl.load_file(path.c_str());
    l->owned_ = true;
    l->path_ = path;
    if (!l->ctx_) {
      err = path + ": not a Public Suffix List libpsl can read";
      return nullptr;
    }
  }
  std::ifstream in(l->path_);
  if (!in) {
    err = l->path_ + ": cannot open the Public Suffix List";
    return nullptr;
  }
  for (std::string line; std::getline(in, line);) {
    line = line.substr(0, line.find_first_of(" \t\r"));
    if (line.empty() || line.rfind("//", 0) == 0) continue;
    if (line.rfind("*.", 0) == 0) line = line.substr(2);
    else if (line[0] == '!') line = line.substr(1);
    std::transform(line.begin(), line.end(), line.begin(),
                   [](unsigned char c) { return char(std::tolower(c)); });
    for (std::size_t dot = line.find('.'); dot != std::string::npos; dot = line.find('.', dot + 1))
      l->ancestors_.insert(line.substr(dot + 1));
    l->rules_.insert(std::move(line));
  }
  if (l->rules_.empty()) {
    err = l->path_ + ": the Public Suffix List is empty";
    return nullptr;
  }
  return l;
}

PublicSuffixList::~PublicSuffixList() {
  if (owned_ && ctx_) libpsl().free(ctx_);
}

bool PublicSuffixList::is_public_suffix(const std::string& name) const {
  return libpsl().is_public_suffix2(ctx_, name.c_str(), PSL_TYPE_ANY) != 0;
}

std::string PublicSuffixList::rule_at_or_below(const std::string& name) const {
  if (rules_.count(name)) return name;
  if (!ancestors_.count(name)) return "";
  // Name one rule below it, for the message; the smallest keeps the output stable.
  std::string best;
  for (const auto& r : rules_)
    if (r.size() > name.size() && r.compare(r.size() - name.size(), name.size(), name) == 0 &&
        r[r.size() - name.size() - 1] == '.' && (best.empty() || r < best))
      best = r;
  return best;
}

std::string PublicSuffixList::registrable_domain(const std::string& name) const {
  const char* r = libpsl().registrable_domain(ctx_, name.c_str());
  return r ? r : "";
}

// ---- dates ----

bool days_between(const std::string& a, const std::string& b, long& days) {
  const auto d = date::days_between(a, b);
  if (d) days = long(*d);
  return d.has_value();
}

std::string today_utc() { return date::today(); }

// ---- the rules ----

const std::vector<std::string>& known_encrypted_resolvers() {
  static const std::vector<std::string> names = {
      "dns.google", "dns.google.com", "8888.google", "cloudflare-dns.com",
      "mozilla.cloudflare-dns.com", "chrome.cloudflare-dns.com", "1dot1dot1dot1.cloudflare-dns.com",
      "security.cloudflare-dns.com", "family.cloudflare-dns.com", "one.one.one.one",
      "dns.quad9.net", "dns9.quad9.net", "dns10.quad9.net", "dns11.quad9.net",
      "doh.opendns.com", "dns.opendns.com", "doh.familyshield.opendns.com",
      "dns.adguard.com", "dns.adguard-dns.com", "unfiltered.adguard-dns.com",
      "family.adguard-dns.com", "dns.nextdns.io", "doh.cleanbrowsing.org",
      "doh.dns.sb", "dns.sb", "dns.alidns.com", "doh.pub", "dot.pub", "dns.twnic.tw",
      "dns.controld.com", "freedns.controld.com", "ordns.he.net", "dns0.eu", "zero.dns0.eu",
      "doh.mullvad.net", "dns.mullvad.net", "doh.libredns.gr", "dns.digitale-gesellschaft.ch",
      "doh.applied-privacy.net", "dns.switch.ch", "doh.ffmuc.net", "resolver1.dns.watch",
      "dns.njal.la", "doh.xfinity.com", "dns.comss.one", "dns.brahma.world",
  };
  return names;
}

std::vector<Finding> lint(const Policy& p, const PublicSuffixList& psl, const LintOptions& o) {
  std::vector<Finding> out;
  auto add = [&out](const Entry& e, bool error, std::string msg) {
    out.push_back({e.where(), error, std::move(msg)});
  };
  std::vector<Entry> all;
  all.reserve(p.size());
  for (std::size_t i = 0; i < p.size(); ++i) all.push_back(p.entry(i));
  std::unordered_map<std::string, const Entry*> first_of;  // pattern -> first entry
  for (const Entry& e : all)
    if (!first_of.count(e.pattern)) first_of[e.pattern] = &e;

  for (const Entry& e : all) {
    const bool wildcard = e.kind != Entry::Kind::Exact;
    const std::string base = wildcard ? e.pattern.substr(e.kind == Entry::Kind::OneLabel ? 2 : 3)
                                      : e.pattern;
    if (wildcard) {
      const std::string below = psl.rule_at_or_below(base);
      if (psl.is_public_suffix(base)) {
        add(e, true, fmt::format("'{}' is too broad: {} is a public suffix, so anyone who registers "
                                 "a name under it receives the sandbox's traffic; list the exact "
                                 "names the sandbox needs instead", e.pattern, base));
      } else if (!below.empty()) {
        add(e, true, fmt::format("'{}' is too broad: the Public Suffix List has entries under {} "
                                 "(for example {}), so names under it belong to many parties; "
                                 "list the exact names the sandbox needs instead",
                                 e.pattern, base, below));
      } else {
        const std::string reg = psl.registrable_domain(base);
        if (!reg.empty() && reg != base)
          add(e, false, fmt::format("'{}' is a wildcard below the registrable domain {}: "
                                    "multi-tenant services often live there, and the Public "
                                    "Suffix List in use ({}) may predate them; prefer exact names",
                                    e.pattern, reg, psl.path()));
      }
    }
    for (const auto& r : known_encrypted_resolvers()) {
      const Match m = p.match_text(r);
      if (m.verdict == Match::Verdict::Allow && &all[std::size_t(m.entry)] == &e) {
        add(e, true, fmt::format("'{}' allows {}, a DNS-over-HTTPS/TLS resolver: the sandbox could "
                                 "resolve any name through it and bypass dnsward", e.pattern, r));
        break;  // one is enough to say it
      }
    }
    const auto missing = missing_justification(e);
    if (!missing.empty()) {
      // Each missing key with what it should say, from the one key table.
      std::string keys, meanings;
      for (const auto& k : missing) {
        keys += fmt::format("{}{}", keys.empty() ? "" : ", ", k);
        meanings += fmt::format("{}{}", meanings.empty() ? "" : "; ", find_allowlist_key(k)->meaning);
      }
      add(e, true, fmt::format("'{}' lacks its justification: {} ({})", e.pattern, keys, meanings));
    }
    if (e.allow_private && e.why.empty())
      add(e, true, fmt::format("'{}' has private=yes: its why must name the internal endpoint and "
                               "what the sandbox can reach through it", e.pattern));
    if (!e.ports.empty() && e.why.empty())
      add(e, true, fmt::format("'{}' has ports={}: its why must say what the sandbox reaches on those "
                               "ports", e.pattern, ports_text(e.ports)));
    long age = 0;
    if (!e.reviewed.empty() && days_between(e.reviewed, o.today, age)) {
      if (age > o.review_days)
        add(e, false, fmt::format("'{}' was last reviewed {} days ago ({}): review it, or remove "
                                  "it if it is no longer used", e.pattern, age, e.reviewed));
      else if (age < 0)
        add(e, false, fmt::format("'{}' has a review date in the future ({})", e.pattern, e.reviewed));
    }
    long left = 0;
    if (!e.expires.empty() && days_between(o.today, e.expires, left) && left < 0)
      add(e, true, fmt::format("'{}' expired on {}: remove it or renew it with a new review",
                               e.pattern, e.expires));
    // Duplicates, and exact names a wildcard already covers.
    const Entry* first = first_of[e.pattern];
    if (first != &e)
      add(e, false, fmt::format("'{}' duplicates {}", e.pattern, first->where()));
    if (!wildcard) {
      const auto dot = e.pattern.find('.');
      if (dot != std::string::npos) {
        const std::string parent = e.pattern.substr(dot + 1);
        std::vector<std::string> covers = {"*." + parent};
        for (std::size_t d = dot; d != std::string::npos; d = e.pattern.find('.', d + 1))
          covers.push_back("**." + e.pattern.substr(d + 1));
        for (const auto& c : covers)
          if (first_of.count(c)) {
            add(e, false, fmt::format("'{}' is already covered by '{}' at {}", e.pattern, c,
                                      first_of[c]->where()));
            break;
          }
      }
    }
  }
  // --strict makes every warning an error, as -Werror does: a rule added later is covered
  // without being told.
  if (o.strict)
    for (auto& f : out) f.error = true;
  return out;
}

}  // namespace dnsward
