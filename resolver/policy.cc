#include "dnsward/policy.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>

#include "dnsward/wire.hpp"

namespace dnsward {
namespace {

bool valid_date(std::string_view s) {
  if (s.size() != 10 || s[4] != '-' || s[7] != '-') return false;
  for (std::size_t i : {0, 1, 2, 3, 5, 6, 8, 9})
    if (!std::isdigit(static_cast<unsigned char>(s[i]))) return false;
  const int y = std::stoi(std::string(s.substr(0, 4)));
  const int m = std::stoi(std::string(s.substr(5, 2)));
  const int d = std::stoi(std::string(s.substr(8, 2)));
  static constexpr int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (m < 1 || m > 12 || d < 1) return false;
  const bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  return d <= days[m - 1] + (m == 2 && leap ? 1 : 0);
}

// Splits a line into tokens: whitespace separates, "double quotes" group (with \" and \\),
// and # outside quotes starts a comment.
bool tokenize(std::string_view line, std::vector<std::string>& out, std::string& err) {
  std::size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r')) ++i;
    if (i >= line.size() || line[i] == '#') break;
    std::string tok;
    while (i < line.size() && line[i] != ' ' && line[i] != '\t' && line[i] != '\r') {
      if (line[i] == '"') {
        ++i;
        bool closed = false;
        while (i < line.size()) {
          if (line[i] == '\\' && i + 1 < line.size()) {
            tok += line[i + 1];
            i += 2;
          } else if (line[i] == '"') {
            closed = true;
            ++i;
            break;
          } else {
            tok += line[i++];
          }
        }
        if (!closed) {
          err = "unterminated double quote";
          return false;
        }
      } else if (line[i] == '#') {
        break;
      } else {
        tok += line[i++];
      }
    }
    out.push_back(std::move(tok));
  }
  return true;
}

bool valid_label(std::string_view l, std::string& err) {
  if (l.empty()) { err = "empty label"; return false; }
  if (l.size() > wire::kMaxLabel) { err = fmt::format("label '{}' is longer than 63 bytes", l); return false; }
  for (char c : l) {
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x80) { err = "non-ASCII name: write IDNs in punycode (xn--...)"; return false; }
    if (c == '*') { err = "'*' and '**' are allowed only as the whole first label"; return false; }
    if (!std::isalnum(u) && c != '-' && c != '_') {
      err = fmt::format("invalid character '{}' in a name", c);
      return false;
    }
  }
  if (l.front() == '-' || l.back() == '-') {
    err = fmt::format("label '{}' starts or ends with '-'", l);
    return false;
  }
  return true;
}

}  // namespace

bool text_to_wire(std::string_view text, std::string& out) {
  out.clear();
  if (!text.empty() && text.back() == '.') text.remove_suffix(1);
  while (!text.empty()) {
    const std::size_t dot = text.find('.');
    const std::string_view label = text.substr(0, dot);
    if (label.empty() || label.size() > wire::kMaxLabel) return false;
    out += char(label.size());
    for (char c : label) out += char(wire::lower(uint8_t(c)));
    if (dot == std::string_view::npos) break;
    text.remove_prefix(dot + 1);
    if (text.empty()) return false;  // "a..": empty label
  }
  out += '\0';
  return out.size() <= wire::kMaxNameWire;
}

void Policy::add(Entry e, const std::string& key) {
  const auto idx = int32_t(entries_.size());
  Node& n = nodes_[key];
  int32_t& slot = e.kind == Entry::Kind::Exact ? n.exact
                  : e.kind == Entry::Kind::OneLabel ? n.one : n.many;
  if (slot < 0) slot = idx;  // a duplicate keeps the first entry; `check` reports it
  // Every proper ancestor of a matched name is an ancestor; for wildcards the base name
  // itself is one too, since the matched names lie strictly below it.
  std::size_t off = e.kind == Entry::Kind::Exact ? std::size_t(uint8_t(key[0])) + 1u : 0;
  while (off < key.size()) {
    nodes_[key.substr(off)].ancestor = true;
    if (key[off] == 0) break;
    off += std::size_t(uint8_t(key[off])) + 1u;
  }
  entries_.push_back(std::move(e));
}

Policy Policy::parse(const std::vector<PolicySource>& sources, std::vector<std::string>& errors) {
  Policy p;
  for (const auto& src : sources) {
    std::string_view text = src.text;
    uint32_t lineno = 0;
    while (!text.empty()) {
      ++lineno;
      const std::size_t nl = text.find('\n');
      const std::string_view line = text.substr(0, nl);
      text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
      auto fail = [&](const std::string& reason) {
        errors.push_back(fmt::format("{}:{}: {}", src.name, lineno, reason));
      };
      std::vector<std::string> tok;
      std::string err;
      if (!tokenize(line, tok, err)) { fail(err); continue; }
      if (tok.empty()) continue;

      Entry e;
      e.source = src.name;
      e.line = lineno;
      e.shipped = src.shipped;
      std::string pat = tok[0];
      for (char& c : pat) c = char(std::tolower(static_cast<unsigned char>(c)));
      if (!pat.empty() && pat.back() == '.') pat.pop_back();
      std::string_view base = pat;
      if (base.rfind("**.", 0) == 0) {
        e.kind = Entry::Kind::AnyLabels;
        base.remove_prefix(3);
      } else if (base.rfind("*.", 0) == 0) {
        e.kind = Entry::Kind::OneLabel;
        base.remove_prefix(2);
      }
      if (pat == "*" || pat == "**" || base.empty()) {
        fail(fmt::format("'{}' would allow every name; list the names the sandbox needs", tok[0]));
        continue;
      }
      bool ok = true;
      std::string_view rest = base;
      while (ok) {
        const std::size_t dot = rest.find('.');
        ok = valid_label(rest.substr(0, dot), err);
        if (dot == std::string_view::npos) break;
        rest.remove_prefix(dot + 1);
      }
      std::string key;
      if (ok && !text_to_wire(base, key)) {
        ok = false;
        err = "name longer than 255 bytes";
      }
      if (!ok) { fail(fmt::format("bad pattern '{}': {}", tok[0], err)); continue; }
      e.pattern = pat;

      for (std::size_t i = 1; i < tok.size() && ok; ++i) {
        const std::size_t eq = tok[i].find('=');
        if (eq == std::string::npos || eq == 0) {
          fail(fmt::format("expected key=value, got '{}'", tok[i]));
          ok = false;
          break;
        }
        const std::string k = tok[i].substr(0, eq), v = tok[i].substr(eq + 1);
        if (k == "private") {
          if (v != "yes" && v != "no") {
            fail(fmt::format("private={}: must be yes or no", v));
            ok = false;
          }
          e.allow_private = v == "yes";
          continue;
        }
        std::string* field = k == "owner" ? &e.owner : k == "why" ? &e.why
                           : k == "data" ? &e.data : k == "unreachable" ? &e.unreachable
                           : k == "reviewed" ? &e.reviewed : k == "expires" ? &e.expires
                           : nullptr;
        if (!field) {
          fail(fmt::format("unknown key '{}' (known: owner, why, data, unreachable, reviewed, expires, private)", k));
          ok = false;
        } else if (!field->empty()) {
          fail(fmt::format("key '{}' given twice", k));
          ok = false;
        } else if (v.empty()) {
          fail(fmt::format("key '{}' has an empty value", k));
          ok = false;
        } else if ((k == "reviewed" || k == "expires") && !valid_date(v)) {
          fail(fmt::format("{}={} is not a date of the form YYYY-MM-DD", k, v));
          ok = false;
        } else {
          *field = v;
        }
      }
      if (ok) p.add(std::move(e), key);
    }
  }
  // FNV-1a over the canonical form of every entry: the same list in another file order or
  // with other comments has the same version.
  std::vector<std::string> canon;
  for (const Entry& e : p.entries_)
    canon.push_back(fmt::format("{}|{}|{}|{}|{}|{}|{}|{}", e.pattern, e.owner, e.why, e.data,
                                e.unreachable, e.reviewed, e.expires, e.allow_private));
  std::sort(canon.begin(), canon.end());
  uint64_t h = 1469598103934665603ull;
  for (const auto& c : canon)
    for (char ch : c + "\n") h = (h ^ uint8_t(ch)) * 1099511628211ull;
  p.version_ = fmt::format("{:08x}", uint32_t(h ^ (h >> 32)));
  return p;
}

bool Policy::has_pattern(const std::string& pattern) const {
  for (const Entry& e : entries_)
    if (e.pattern == pattern) return true;
  return false;
}

std::vector<std::string> missing_justification(const Entry& e) {
  std::vector<std::string> missing;
  if (e.shipped) return missing;
  const std::string* fields[] = {&e.owner, &e.why, &e.data, &e.unreachable, &e.reviewed};
  for (std::size_t i = 0; i < 5; ++i)
    if (fields[i]->empty()) missing.push_back(kJustificationKeys[i]);
  return missing;
}

const Policy::Node* Policy::find(const uint8_t* p, std::size_t n) const {
  const auto it = nodes_.find(std::string_view(reinterpret_cast<const char*>(p), n));
  return it == nodes_.end() ? nullptr : &it->second;
}

Match Policy::match(const uint8_t* name, std::size_t len) const {
  if (len == 0) return {};
  const Node* self = find(name, len);
  if (self && self->exact >= 0) return {Match::Verdict::Allow, self->exact};
  if (name[0] != 0) {
    // "*.base" and "**.base" for base = the name less its first label, then "**." for every
    // shorter suffix: the longest matching suffix is the most specific entry.
    std::size_t off = 1u + name[0];
    const Node* parent = find(name + off, len - off);
    if (parent && parent->one >= 0) return {Match::Verdict::Allow, parent->one};
    while (off < len && name[off] != 0) {
      const Node* n = off == 1u + name[0] ? parent : find(name + off, len - off);
      if (n && n->many >= 0) return {Match::Verdict::Allow, n->many};
      off += 1u + name[off];
    }
  }
  if (self && self->ancestor) return {Match::Verdict::Ancestor, -1};
  return {};
}

Match Policy::match_text(std::string_view name) const {
  std::string w;
  if (!text_to_wire(name, w)) return {};
  return match(reinterpret_cast<const uint8_t*>(w.data()), w.size());
}

}  // namespace dnsward
