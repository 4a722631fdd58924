// `dnsward check`: the allowlist linter. The rules are pure functions of the parsed policy,
// the Public Suffix List and today's date.
#pragma once
#include <memory>
#include <string>
#include <unordered_set>
#include <vector>

#include "dnsward/policy.hpp"

typedef struct psl_ctx_st psl_ctx_t;

namespace dnsward {

/// The Public Suffix List, read through libpsl: by default Debian's (package publicsuffix),
/// or a newer list the operator names.
class PublicSuffixList {
 public:
  /// path empty: the distribution's list. Returns null with err set if it cannot be read.
  static std::unique_ptr<PublicSuffixList> load(const std::string& path, std::string& err);
  ~PublicSuffixList();
  bool is_public_suffix(const std::string& name) const;
  /// A rule of the list equal to name or below it ("s3.amazonaws.com" for "amazonaws.com"),
  /// or "" if there is none.
  std::string rule_at_or_below(const std::string& name) const;
  /// The registrable domain of name ("windows.net" for "blob.core.windows.net"), or "".
  std::string registrable_domain(const std::string& name) const;
  const std::string& path() const { return path_; }

 private:
  PublicSuffixList() = default;
  psl_ctx_t* ctx_ = nullptr;
  bool owned_ = false;
  std::string path_;
  std::unordered_set<std::string> rules_;      // the rules without "*." / "!" prefixes
  std::unordered_set<std::string> ancestors_;  // every proper ancestor of a rule
};

/// One lint finding.
struct Finding {
  std::string where;  ///< FILE:LINE
  bool error = false;
  std::string message;
};

struct LintOptions {
  bool strict = false;     ///< every finding is an error (as -Werror makes warnings)
  std::string today;       ///< YYYY-MM-DD
  int review_days = 90;    ///< quarterly review
};

/// Well-known DNS-over-HTTPS/TLS resolvers: an allowlist entry for one of them lets the
/// sandbox run its own DNS and bypass dnsward.
const std::vector<std::string>& known_encrypted_resolvers();

/// Every rule of `dnsward check` over a parsed policy: broad wildcards (PSL), encrypted
/// resolvers, missing justification, stale reviews, past expiry, duplicates and exact
/// entries covered by wildcards.
std::vector<Finding> lint(const Policy& p, const PublicSuffixList& psl, const LintOptions& o);

/// Days from a to b (YYYY-MM-DD each); false if either is not a date.
bool days_between(const std::string& a, const std::string& b, long& days);
/// Today's date in UTC as YYYY-MM-DD.
std::string today_utc();

}  // namespace dnsward
