#include "dnsward/usage.hpp"

#include "dnsward/atomic_file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fmt/format.h>
#include <fstream>
#include <sstream>
#include <vector>

namespace dnsward {

void Usage::bump(Table& t, const std::string& key, int64_t now) {
  UsageRecord& r = t[key];
  if (r.count++ == 0) r.first = now;
  r.last = now;
}

void Usage::bump_bounded(Table& t, const std::string& key, int64_t now) {
  auto it = t.find(key);
  if (it == t.end() && t.size() >= max_names_) {
    // Full: forget the tenth least recently seen names at once, so this stays rare.
    std::vector<std::pair<int64_t, std::string>> by_last;
    by_last.reserve(t.size());
    for (const auto& [k, r] : t) by_last.emplace_back(r.last, k);
    const std::size_t drop = std::max<std::size_t>(1, t.size() / 10);
    std::nth_element(by_last.begin(), by_last.begin() + std::ptrdiff_t(drop - 1), by_last.end());
    for (std::size_t i = 0; i < drop; ++i) t.erase(by_last[i].second);
  }
  bump(t, key, now);
}

std::string Usage::serialize() const {
  std::string s = "# dnsward state, version 1: kind, key, count, first use, last use (unix s)\n";
  std::size_t n = 0;
  auto table = [&](const char* kind, const Table& t) {
    std::vector<const Table::value_type*> rows;
    for (const auto& kv : t) rows.push_back(&kv);
    std::sort(rows.begin(), rows.end(), [](auto* a, auto* b) { return a->first < b->first; });
    for (const auto* kv : rows) {
      s += fmt::format("{}\t{}\t{}\t{}\t{}\n", kind, kv->first, kv->second.count, kv->second.first,
                       kv->second.last);
      ++n;
    }
  };
  table("entry", entries_);
  table("denied", denied_);
  table("would-deny", would_deny_);
  s += fmt::format("end\t{}\n", n);
  return s;
}

bool Usage::parse(std::string_view text, Usage& out, std::string& err) {
  Usage u(out.max_names_);
  std::size_t lineno = 0, records = 0;
  bool ended = false;
  while (!text.empty()) {
    ++lineno;
    const std::size_t nl = text.find('\n');
    if (nl == std::string_view::npos) {
      err = fmt::format("line {}: no newline at the end (truncated?)", lineno);
      return false;
    }
    const std::string line(text.substr(0, nl));
    text.remove_prefix(nl + 1);
    if (ended) {
      err = fmt::format("line {}: text after the end line", lineno);
      return false;
    }
    if (line.empty() || line[0] == '#') continue;
    std::vector<std::string> f;
    std::stringstream ss(line);
    for (std::string x; std::getline(ss, x, '\t');) f.push_back(x);
    auto num = [](const std::string& v, int64_t& o) {
      if (v.empty() || v.size() > 19 || v.find_first_not_of("0123456789") != std::string::npos)
        return false;
      o = std::stoll(v);
      return true;
    };
    if (f.size() == 2 && f[0] == "end") {
      int64_t n = 0;
      if (!num(f[1], n) || std::size_t(n) != records) {
        err = fmt::format("line {}: the end line counts {} records, the file has {}", lineno, f[1], records);
        return false;
      }
      ended = true;
      continue;
    }
    int64_t count, first, last;
    if (f.size() != 5 || f[1].empty() || !num(f[2], count) || !num(f[3], first) ||
        !num(f[4], last) || first > last) {
      err = fmt::format("line {}: not a record", lineno);
      return false;
    }
    Table* t = f[0] == "entry" ? &u.entries_ : f[0] == "denied" ? &u.denied_
             : f[0] == "would-deny" ? &u.would_deny_ : nullptr;
    if (!t) {
      err = fmt::format("line {}: unknown kind '{}'", lineno, f[0]);
      return false;
    }
    (*t)[f[1]] = UsageRecord{uint64_t(count), first, last};
    ++records;
  }
  if (!ended) {
    err = "no end line (truncated?)";
    return false;
  }
  out = std::move(u);
  return true;
}

Usage::Load Usage::load(const std::string& path, Usage& out, std::string& err) {
  std::string text;
  switch (read_file(path, text, err)) {
    case ReadFile::Missing: return Load::Missing;
    case ReadFile::Error: return Load::Corrupt;
    case ReadFile::Ok: break;
  }
  if (!parse(text, out, err)) {
    err = path + ": " + err;
    return Load::Corrupt;
  }
  return Load::Ok;
}

bool Usage::save(const std::string& path, std::string& err) const {
  return write_file_atomically(path, serialize(), err);
}

}  // namespace dnsward
