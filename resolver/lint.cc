#include "dnsward/lint.hpp"

#include <libpsl.h>
#include <time.h>

#include <algorithm>
#include <cstdio>
#include <fmt/format.h>
#include <fstream>
#include <map>
#include <unordered_map>



namespace dnsward {

// ---- the Public Suffix List ----

std::unique_ptr<PublicSuffixList> PublicSuffixList::load(const std::string& path, std::string& err) {
  std::unique_ptr<PublicSuffixList> l(new PublicSuffixList());
  // libpsl answers "is this a public suffix"; it has no way to list rules, so the text form
  // of the same list is read as well, for "are there rules below this name".
  if (path.empty()) {
    l->ctx_ = const_cast<psl_ctx_t*>(psl_builtin());
    const char* f = psl_builtin_filename();
    l->path_ = f ? f : "";
    if (!l->ctx_ || l->path_.empty()) {
      err = "libpsl has no built-in Public Suffix List (install the publicsuffix package)";
      return nullptr;
    }
  } else {
    l->ctx_ = psl_load_file(path.c_str());
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
  if (owned_ && ctx_) psl_free(ctx_);
}

bool PublicSuffixList::is_public_suffix(const std::string& name) const {
  return psl_is_public_suffix2(ctx_, name.c_str(), PSL_TYPE_ANY) != 0;
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
  const char* r = psl_registrable_domain(ctx_, name.c_str());
  return r ? r : "";
}

// ---- dates ----

namespace {
bool parse_date(const std::string& s, long& y, long& m, long& d) {
  if (s.size() != 10 || s[4] != '-' || s[7] != '-') return false;
  try {
    y = std::stol(s.substr(0, 4));
    m = std::stol(s.substr(5, 2));
    d = std::stol(s.substr(8, 2));
  } catch (...) {
    return false;
  }
  return m >= 1 && m <= 12 && d >= 1 && d <= 31;
}
long days_from_civil(long y, long m, long d) {  // days since 1970-01-01 (H. Hinnant)
  y -= m <= 2;
  const long era = (y >= 0 ? y : y - 399) / 400;
  const long yoe = y - era * 400;
  const long doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const long doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}
}  // namespace

bool days_between(const std::string& a, const std::string& b, long& days) {
  long y1, m1, d1, y2, m2, d2;
  if (!parse_date(a, y1, m1, d1) || !parse_date(b, y2, m2, d2)) return false;
  days = days_from_civil(y2, m2, d2) - days_from_civil(y1, m1, d1);
  return true;
}

std::string today_utc() {
  const time_t t = time(nullptr);
  tm g{};
  gmtime_r(&t, &g);
  char buf[16];
  strftime(buf, sizeof buf, "%Y-%m-%d", &g);
  return buf;
}

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
      std::string keys;
      for (const auto& k : missing) keys += (keys.empty() ? "" : ", ") + k;
      add(e, true, fmt::format("'{}' lacks its justification: {} (who needs it, why, what data "
                               "flows, what breaks without it, when it was last reviewed)",
                               e.pattern, keys));
    }
    if (e.allow_private && e.why.empty())
      add(e, true, fmt::format("'{}' has private=yes: its why must name the internal endpoint and "
                               "what the sandbox can reach through it", e.pattern));
    long age = 0;
    if (!e.reviewed.empty() && days_between(e.reviewed, o.today, age)) {
      if (age > o.review_days)
        add(e, o.strict, fmt::format("'{}' was last reviewed {} days ago ({}): review it, or remove "
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
  return out;
}

}  // namespace dnsward
