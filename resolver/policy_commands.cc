// The policy commands: `dnsward explain`, `dnsward report` and `dnsward check`. Argument
// parsing and output only; what they compute lives in explain.cc, usage.cc and lint.cc.
#include "dnsward/policy_commands.hpp"

#include <time.h>

#include <algorithm>
#include <boost/program_options.hpp>
#include <cstdio>
#include <fmt/format.h>
#include <fstream>
#include <map>
#include <unordered_map>

#include "dnsward/allowlist_files.hpp"
#include "dnsward/dates.hpp"
#include "dnsward/explain.hpp"
#include "dnsward/json.hpp"
#include "dnsward/lint.hpp"
#include "dnsward/usage.hpp"

namespace po = boost::program_options;

namespace dnsward {

namespace {

struct CommonArgs {
  po::variables_map vm;
  std::vector<std::string> allowlists;
  int code = -1;  // >= 0: exit with it
};

CommonArgs parse_args(const char* cmd, const std::vector<std::string>& args,
                      po::options_description desc, const po::positional_options_description& pos,
                      const char* usage) {
  CommonArgs c;
  desc.add_options()("help,h", "")("allowlist", po::value<std::vector<std::string>>()->composing(), "");
  try {
    po::store(po::command_line_parser(args).options(desc).positional(pos).run(), c.vm);
    po::notify(c.vm);
  } catch (const po::error& e) {
    std::fprintf(stderr, "dnsward: %s: %s\n", cmd, e.what());
    c.code = 2;
    return c;
  }
  if (c.vm.count("help")) {
    std::fputs(usage, stdout);
    c.code = 0;
    return c;
  }
  if (c.vm.count("allowlist")) c.allowlists = c.vm["allowlist"].as<std::vector<std::string>>();
  return c;
}

// Report output: when an entry or name was last used.
std::string date_of(int64_t t) { return t <= 0 ? "never" : date::format_time(t); }

}  // namespace

int explain_main(const std::vector<std::string>& args) {
  po::options_description desc;
  desc.add_options()("name", po::value<std::string>(), "");
  po::positional_options_description pos;
  pos.add("name", 1);
  auto c = parse_args("explain", args, desc, pos,
                      "usage: dnsward explain NAME [--allowlist FILE]...\n\n"
                      "Prints the verdict for NAME, the entry and FILE:LINE that decide it and its\n"
                      "justification. Inside the sandbox the same answer comes from\n"
                      "`dig CH TXT why.NAME` against dnsward.\n");
  if (c.code >= 0) return c.code;
  if (!c.vm.count("name")) {
    std::fprintf(stderr, "dnsward: explain: no NAME given\n");
    return 2;
  }
  std::vector<std::string> errors;
  const auto policy = load_policy(c.allowlists, errors);
  for (const auto& e : errors) std::fprintf(stderr, "dnsward: explain: %s\n", e.c_str());
  if (!policy) return 2;
  for (const auto& l : explain_lines(*policy, c.vm["name"].as<std::string>())) std::printf("%s\n", l.c_str());
  return 0;
}

int report_main(const std::vector<std::string>& args) {
  po::options_description desc;
  desc.add_options()("state", po::value<std::string>(), "")("since", po::value<int>()->default_value(90), "")
      ("json", po::bool_switch(), "")("top", po::value<int>()->default_value(20), "")
      ("now", po::value<int64_t>(), "");
  auto c = parse_args("report", args, desc, {},
                      "usage: dnsward report --state FILE [--allowlist FILE]... [--since DAYS] [--top N] [--json]\n\n"
                      "For the quarterly review: entries not used in the last DAYS (default 90), entries\n"
                      "past their review, the most denied names and, from audit mode, the names that\n"
                      "would have been denied, each as a ready-to-fill allowlist line.\n");
  if (c.code >= 0) return c.code;
  if (!c.vm.count("state")) {
    std::fprintf(stderr, "dnsward: report: --state FILE is required\n");
    return 2;
  }
  const std::string state = c.vm["state"].as<std::string>();
  Usage usage;
  std::string err;
  switch (Usage::load(state, usage, err)) {
    case Usage::Load::Ok: break;
    case Usage::Load::Missing:
      std::fprintf(stderr, "dnsward: report: %s: no such state file\n", state.c_str());
      return 2;
    case Usage::Load::Corrupt:
      std::fprintf(stderr, "dnsward: report: %s\n", err.c_str());
      return 2;
  }
  std::vector<std::string> errors;
  const auto policy = load_policy(c.allowlists, errors);
  for (const auto& e : errors) std::fprintf(stderr, "dnsward: report: %s\n", e.c_str());
  if (!policy) return 2;
  const int64_t now = c.vm.count("now") ? c.vm["now"].as<int64_t>() : int64_t(time(nullptr));
  const int since = c.vm["since"].as<int>();
  const int64_t cutoff = now - int64_t(since) * 86400;
  const std::string today = date::format_day(date::day_of(now));

  struct Row { std::string pattern, where; uint64_t count; int64_t last; };
  std::vector<Row> unused, stale;
  for (std::size_t i = 0; i < policy->size(); ++i) {
    const Entry e = policy->entry(i);
    const auto it = usage.entries().find(e.pattern);
    const uint64_t count = it == usage.entries().end() ? 0 : it->second.count;
    const int64_t last = it == usage.entries().end() ? 0 : it->second.last;
    if (last < cutoff) unused.push_back({e.pattern, e.where(), count, last});
    const auto age = date::days_between(e.reviewed, today);
    if (!e.shipped && (e.reviewed.empty() || (age && *age > 90)))
      stale.push_back({e.pattern, e.where(), count, last});
  }
  struct Name { std::string name; UsageRecord r; };
  auto top = [&](const Usage::Table& t) {
    std::vector<Name> v;
    for (const auto& [n, r] : t)
      if (policy->match_text(n).verdict != Match::Verdict::Allow) v.push_back({n, r});
    std::sort(v.begin(), v.end(), [](const Name& a, const Name& b) {
      return a.r.count != b.r.count ? a.r.count > b.r.count : a.name < b.name;
    });
    if (v.size() > std::size_t(c.vm["top"].as<int>())) v.resize(std::size_t(c.vm["top"].as<int>()));
    return v;
  };
  const auto denied = top(usage.denied());
  const auto would = top(usage.would_deny());
  auto line_for = [](const std::string& n) { return fill_in_line(n, ""); };

  if (c.vm["json"].as<bool>()) {
    std::string j = "{\"policy\":" + json::quoted(policy->version()) + ",\"since_days\":" + std::to_string(since);
    auto rows = [&](const char* key, const std::vector<Row>& v) {
      j += fmt::format(",\"{}\":[", key);
      for (std::size_t i = 0; i < v.size(); ++i)
        j += fmt::format("{}{{\"pattern\":{},\"where\":{},\"count\":{},\"last\":{}}}", i ? "," : "",
                         json::quoted(v[i].pattern), json::quoted(v[i].where), v[i].count, v[i].last);
      j += "]";
    };
    auto names = [&](const char* key, const std::vector<Name>& v) {
      j += fmt::format(",\"{}\":[", key);
      for (std::size_t i = 0; i < v.size(); ++i)
        j += fmt::format("{}{{\"name\":{},\"count\":{},\"last\":{},\"line\":{}}}", i ? "," : "",
                         json::quoted(v[i].name), v[i].r.count, v[i].r.last, json::quoted(line_for(v[i].name)));
      j += "]";
    };
    rows("unused", unused);
    rows("past_review", stale);
    names("most_denied", denied);
    names("would_deny", would);
    std::printf("%s}\n", j.c_str());
    return 0;
  }
  std::printf("dnsward report: policy %s, state %s, window %d days\n\n", policy->version().c_str(),
              state.c_str(), since);
  std::printf("Entries not used in the last %d days (candidates for removal):\n", since);
  if (unused.empty()) std::printf("  (none)\n");
  for (const auto& r : unused)
    std::printf("  %-40s %s  last use: %s, %llu queries in all\n", r.pattern.c_str(), r.where.c_str(),
                date_of(r.last).c_str(), static_cast<unsigned long long>(r.count));
  std::printf("\nEntries past their quarterly review:\n");
  if (stale.empty()) std::printf("  (none)\n");
  for (const auto& r : stale) std::printf("  %-40s %s\n", r.pattern.c_str(), r.where.c_str());
  std::printf("\nMost denied names (fill in the justification before adding any):\n");
  if (denied.empty()) std::printf("  (none)\n");
  for (const auto& n : denied)
    std::printf("  %s    # %llu queries, last %s\n", line_for(n.name).c_str(),
                static_cast<unsigned long long>(n.r.count), date_of(n.r.last).c_str());
  std::printf("\nAudit mode: names the policy would have denied (lines to add):\n");
  if (would.empty()) std::printf("  (none)\n");
  for (const auto& n : would)
    std::printf("  %s    # %llu queries, last %s\n", line_for(n.name).c_str(),
                static_cast<unsigned long long>(n.r.count), date_of(n.r.last).c_str());
  return 0;
}



int check_main(const std::vector<std::string>& args) {
  po::options_description desc;
  desc.add_options()("help,h", "")("strict", po::bool_switch(), "")
      ("psl", po::value<std::string>()->default_value(""), "")
      ("today", po::value<std::string>()->default_value(""), "")
      ("review-days", po::value<int>()->default_value(90), "")
      ("file", po::value<std::vector<std::string>>(), "");
  po::positional_options_description pos;
  pos.add("file", -1);
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(args).options(desc).positional(pos).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    std::fprintf(stderr, "dnsward: check: %s\n", e.what());
    return 2;
  }
  if (vm.count("help")) {
    std::fputs(
        "usage: dnsward check [--strict] [--psl FILE] [--today YYYY-MM-DD] [--review-days N] FILE...\n\n"
        "Lints allowlist files. Prints FILE:LINE: error|warning: message for each finding.\n"
        "Exit codes: 0 no errors (warnings allowed), 1 errors, 2 unusable input.\n"
        "  --strict        every warning is an error, as -Werror makes it (exit 1)\n"
        "  --psl FILE      a Public Suffix List to use instead of Debian's (publicsuffix package)\n"
        "  --today DATE    the date to judge reviews and expiry against (default: today, UTC)\n",
        stdout);
    return 0;
  }
  const auto files = vm.count("file") ? vm["file"].as<std::vector<std::string>>() : std::vector<std::string>{};
  if (files.empty()) {
    std::fprintf(stderr, "dnsward: check: no allowlist file given\n");
    return 2;
  }
  LintOptions o;
  o.strict = vm["strict"].as<bool>();
  o.today = vm["today"].as<std::string>().empty() ? date::today() : vm["today"].as<std::string>();
  o.review_days = vm["review-days"].as<int>();
  if (!date::parse_day(o.today)) {
    std::fprintf(stderr, "dnsward: check: --today %s: not a date of the form YYYY-MM-DD\n", o.today.c_str());
    return 2;
  }
  std::vector<std::string> errors;
  const auto sources = read_allowlists(files, errors);
  if (!errors.empty()) {
    for (const auto& e : errors) std::fprintf(stderr, "dnsward: check: %s\n", e.c_str());
    return 2;
  }
  std::string err;
  const auto psl = PublicSuffixList::load(vm["psl"].as<std::string>(), err);
  if (!psl) {
    std::fprintf(stderr, "dnsward: check: %s\n", err.c_str());
    return 2;
  }
  const Policy p = Policy::parse(sources, errors);
  std::vector<Finding> findings;
  for (const auto& e : errors) {  // "FILE:LINE: reason"
    const auto colon = e.find(": ");
    findings.push_back({e.substr(0, colon), true, e.substr(colon + 2)});
  }
  for (auto& f : lint(p, *psl, o)) findings.push_back(std::move(f));
  // Sorted by file (in command-line order) and line, so output follows the files.
  auto key = [&files](const std::string& where) {
    const auto colon = where.rfind(':');
    const std::string file = where.substr(0, colon);
    const auto it = std::find(files.begin(), files.end(), file);
    return std::make_pair(it - files.begin(), std::stol(where.substr(colon + 1)));
  };
  std::stable_sort(findings.begin(), findings.end(),
                   [&](const Finding& a, const Finding& b) { return key(a.where) < key(b.where); });
  std::size_t n_err = 0, n_warn = 0;
  for (const auto& f : findings) {
    std::printf("%s: %s: %s\n", f.where.c_str(), f.error ? "error" : "warning", f.message.c_str());
    (f.error ? n_err : n_warn)++;
  }
  std::fprintf(stderr, "dnsward: check: %zu entries, %zu errors, %zu warnings (policy %s)\n",
               p.size(), n_err, n_warn, p.version().c_str());
  return n_err ? 1 : 0;
}

}  // namespace dnsward
