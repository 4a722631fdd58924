#include "dnsward/policy.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cstring>

#include "dnsward/dates.hpp"
#include "dnsward/wire.hpp"

namespace dnsward {
namespace {

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

namespace {
// The index of a Text or Date key's value in Meta::text.
std::size_t text_slot(const AllowlistKey& key) {
  std::size_t n = 0;
  for (const AllowlistKey* k = kAllowlistKeys; k != &key; ++k) n += k->text != nullptr;
  return n;
}
}  // namespace

const AllowlistKey* find_allowlist_key(std::string_view name) {
  for (const auto& k : kAllowlistKeys)
    if (k.name == name) return &k;
  return nullptr;
}

std::string allowlist_key_names() {
  std::string s;
  for (const auto& k : kAllowlistKeys) s += fmt::format("{}{}", s.empty() ? "" : ", ", k.name);
  return s;
}

std::string ports_text(const std::vector<PortSpec>& ports) {
  std::string s;
  for (const PortSpec& p : ports) s += (s.empty() ? "" : ",") + p.text();
  return s;
}

bool check_key_value(const AllowlistKey& key, std::string_view v, std::string& reason,
                     std::vector<uint16_t>* types, uint32_t* budget, std::vector<PortSpec>* ports) {
  if (v.empty()) {
    reason = fmt::format("key '{}' has an empty value", key.name);
    return false;
  }
  switch (key.kind) {
    case KeyKind::Text:
      return true;
    case KeyKind::Date:
      if (date::parse_day(v)) return true;
      reason = fmt::format("{}={} is not a date of the form YYYY-MM-DD", key.name, v);
      return false;
    case KeyKind::YesNo:
      if (v == "yes" || v == "no") return true;
      reason = fmt::format("{}={}: must be yes or no", key.name, v);
      return false;
    case KeyKind::Any:
      if (v == "any") return true;
      reason = fmt::format("{}={}: the only value is any", key.name, v);
      return false;
    case KeyKind::TypeList: {
      std::vector<uint16_t> list;
      for (std::string_view rest = v;;) {
        const std::size_t comma = rest.find(',');
        const std::string_view t = rest.substr(0, comma);
        uint16_t code = 0;
        if (!wire::type::from_text(t, code)) {
          reason = fmt::format("{}: unknown type '{}' (a type name such as A, AAAA, HTTPS, TXT, "
                               "or TYPEnnn)", key.name, t);
          return false;
        }
        list.push_back(code);
        if (comma == std::string_view::npos) break;
        rest.remove_prefix(comma + 1);
      }
      if (types) *types = std::move(list);
      return true;
    }
    case KeyKind::PerMinute: {
      uint32_t n = 0;
      if (v.size() <= 7 && v.find_first_not_of("0123456789") == std::string_view::npos)
        for (char c : v) n = n * 10 + uint32_t(c - '0');
      if (n == 0) {
        reason = fmt::format("{}={}: must be a number of names per minute, 1 to 9999999", key.name, v);
        return false;
      }
      if (budget) *budget = n;
      return true;
    }
    case KeyKind::PortList: {
      std::vector<PortSpec> list;
      for (std::string_view rest = v;;) {
        const std::size_t comma = rest.find(',');
        std::string_view t = rest.substr(0, comma);
        PortSpec p;
        std::string_view num = t;
        if (const std::size_t slash = t.find('/'); slash != std::string_view::npos) {
          const std::string_view proto = t.substr(slash + 1);
          num = t.substr(0, slash);
          if (proto == "udp") p.proto = 17;
          else if (proto != "tcp") {
            reason = fmt::format("{}: '{}' names no protocol dnsward opens (N for TCP, N/udp for UDP)", key.name, t);
            return false;
          }
        }
        uint32_t n = 0;
        if (num.empty() || num.size() > 5 || num.find_first_not_of("0123456789") != std::string_view::npos) {
          reason = fmt::format("{}: '{}' is not a port (N for TCP, N/udp for UDP, N from 1 to 65535)", key.name, t);
          return false;
        }
        for (char c : num) n = n * 10 + uint32_t(c - '0');
        if (n == 0 || n > 65535) {
          reason = fmt::format("{}: port {} is out of range (1 to 65535)", key.name, num);
          return false;
        }
        p.port = uint16_t(n);
        if (std::find(list.begin(), list.end(), p) != list.end()) {
          reason = fmt::format("{}: {} given twice", key.name, p.text());
          return false;
        }
        list.push_back(p);
        if (list.size() > kMaxEntryPorts) {
          reason = fmt::format("{}: more than {} ports; give the sandbox's service an address of its own "
                               "instead", key.name, kMaxEntryPorts);
          return false;
        }
        if (comma == std::string_view::npos) break;
        rest.remove_prefix(comma + 1);
      }
      if (ports) *ports = std::move(list);
      return true;
    }
  }
  return false;
}

std::string fill_in_line(std::string_view name, std::string_view reviewed) {
  std::string s(name);
  for (const auto& k : kAllowlistKeys) {
    if (!k.justification) continue;
    const bool dated = k.kind == KeyKind::Date && !reviewed.empty();
    s += fmt::format(" {}={}", k.name, dated ? reviewed : std::string_view("\"\""));
  }
  return s;
}

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

namespace {
uint64_t fnv(uint64_t h, const void* p, std::size_t n) {
  const auto* b = static_cast<const uint8_t*>(p);
  for (std::size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  return h;
}
constexpr uint64_t kFnvBasis = 1469598103934665603ull;
}  // namespace

uint32_t Policy::find_child(uint32_t parent, const uint8_t* label, std::size_t len) const {
  if (slots_.empty()) return kNone;
  const uint64_t h = fnv(fnv(kFnvBasis, &parent, sizeof parent), label, len);
  const std::size_t mask = slots_.size() - 1;
  for (std::size_t i = h & mask;; i = (i + 1) & mask) {
    const uint32_t s = slots_[i];
    if (s == 0) return kNone;
    const Node& n = nodes_[s - 1];
    const uint8_t* l = labels_.data() + (n.label & ~kWildBit);
    if (n.parent == parent && l[0] == len && std::memcmp(l + 1, label, len) == 0) return s - 1;
  }
}

void Policy::grow() {
  std::vector<uint32_t> bigger(slots_.empty() ? 1024 : slots_.size() * 2, 0);
  const std::size_t mask = bigger.size() - 1;
  for (uint32_t id = 1; id < nodes_.size(); ++id) {
    const Node& n = nodes_[id];
    const uint8_t* l = labels_.data() + (n.label & ~kWildBit);
    const uint64_t h = fnv(fnv(kFnvBasis, &n.parent, sizeof n.parent), l + 1, l[0]);
    std::size_t i = h & mask;
    while (bigger[i]) i = (i + 1) & mask;
    bigger[i] = id + 1;
  }
  slots_.swap(bigger);
}

uint32_t Policy::add_child(uint32_t parent, const uint8_t* label, std::size_t len) {
  // At most half full, so a probe for a missing label ends quickly.
  if ((nodes_.size() + 1) * 2 > slots_.size()) grow();
  const auto id = uint32_t(nodes_.size());
  nodes_.push_back({parent, uint32_t(labels_.size()), kNone});
  labels_.push_back(uint8_t(len));
  labels_.insert(labels_.end(), label, label + len);
  const uint64_t h = fnv(fnv(kFnvBasis, &parent, sizeof parent), label, len);
  const std::size_t mask = slots_.size() - 1;
  std::size_t i = h & mask;
  while (slots_[i]) i = (i + 1) & mask;
  slots_[i] = id + 1;
  return id;
}

uint32_t Policy::walk(const uint8_t* wire, std::size_t len, bool create) {
  std::size_t offs[128];
  std::size_t n = 0;
  for (std::size_t i = 0; i < len && wire[i] != 0; i += 1u + wire[i]) {
    if (n == 128 || i + 1u + wire[i] >= len) return kNone;
    offs[n++] = i;
  }
  uint32_t node = 0;
  while (n > 0) {
    const std::size_t o = offs[--n];
    uint32_t child = find_child(node, wire + o + 1, wire[o]);
    if (child == kNone) {
      if (!create) return kNone;
      child = add_child(node, wire + o + 1, wire[o]);
    }
    node = child;
  }
  return node;
}

Policy Policy::parse(const std::vector<PolicySource>& sources, std::vector<std::string>& errors) {
  Policy p;
  p.nodes_.push_back({kNone, 0, kNone});  // the root
  p.labels_.push_back(0);
  uint64_t version_sum = 0;  // order-independent: a sum of per-entry hashes
  for (const auto& src : sources) {
    const auto source_index = uint16_t(p.sources_.size());
    p.sources_.push_back(src.name);
    std::string_view text = src.text;
    uint32_t lineno = 0;
    std::vector<std::string> tok;
    std::string err, pat, key;
    while (!text.empty()) {
      ++lineno;
      const std::size_t nl = text.find('\n');
      const std::string_view line = text.substr(0, nl);
      text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
      auto fail = [&](const std::string& reason) {
        errors.push_back(fmt::format("{}:{}: {}", src.name, lineno, reason));
      };
      tok.clear();
      if (!tokenize(line, tok, err)) { fail(err); continue; }
      if (tok.empty()) continue;

      pat = tok[0];
      for (char& c : pat) c = char(std::tolower(static_cast<unsigned char>(c)));
      if (!pat.empty() && pat.back() == '.') pat.pop_back();
      Entry::Kind kind = Entry::Kind::Exact;
      std::string_view base = pat;
      if (base.rfind("**.", 0) == 0) {
        kind = Entry::Kind::AnyLabels;
        base.remove_prefix(3);
      } else if (base.rfind("*.", 0) == 0) {
        kind = Entry::Kind::OneLabel;
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
      if (ok && !text_to_wire(base, key)) {
        ok = false;
        err = "name longer than 255 bytes";
      }
      if (!ok) { fail(fmt::format("bad pattern '{}': {}", tok[0], err)); continue; }

      Meta meta;
      bool has_meta = false, allow_private = false, sni_any = false;
      static_assert(std::size(kAllowlistKeys) <= 32, "seen holds one bit a key");
      uint32_t seen = 0;  // bit i: kAllowlistKeys[i] given on this line
      for (std::size_t i = 1; i < tok.size() && ok; ++i) {
        const std::size_t eq = tok[i].find('=');
        if (eq == std::string::npos || eq == 0) {
          fail(fmt::format("expected key=value, got '{}'", tok[i]));
          ok = false;
          break;
        }
        const std::string_view k = std::string_view(tok[i]).substr(0, eq);
        const std::string_view v = std::string_view(tok[i]).substr(eq + 1);
        const AllowlistKey* known = find_allowlist_key(k);
        if (!known) {
          fail(fmt::format("unknown key '{}' (known: {})", k, allowlist_key_names()));
          ok = false;
          break;
        }
        const auto bit = uint32_t(1) << (known - kAllowlistKeys);
        if (seen & bit) {
          fail(fmt::format("key '{}' given twice", k));
          ok = false;
          break;
        }
        seen |= bit;
        if (!check_key_value(*known, v, err, &meta.types, &meta.budget, &meta.ports)) {
          fail(err);
          ok = false;
          break;
        }
        if (known->kind == KeyKind::YesNo) {  // private= is the only one: kept as a flag
          allow_private = v == "yes";
        } else if (known->kind == KeyKind::Any) {  // sni=any, the only one: a flag too
          sni_any = true;
        } else {
          if (known->text) meta.text[text_slot(*known)] = v;
          has_meta = true;
        }
      }
      if (!ok) continue;

      const auto index = uint32_t(p.entries_.size());
      const uint32_t node = p.walk(reinterpret_cast<const uint8_t*>(key.data()), key.size(), true);
      Rec r{node, lineno, kNone, source_index, uint8_t(kind),
            uint8_t((allow_private ? kPrivate : 0) | (src.shipped ? kShipped : 0) | (sni_any ? kSniAny : 0))};
      if (has_meta) {
        r.meta = uint32_t(p.meta_.size());
        p.meta_.push_back(std::move(meta));
      }
      p.entries_.push_back(r);
      // A duplicate keeps the first entry; `check` reports it.
      if (kind == Entry::Kind::Exact) {
        if (p.nodes_[node].exact == kNone) p.nodes_[node].exact = index;
      } else {
        Wild& w = p.wild_[node];
        uint32_t& slot = kind == Entry::Kind::OneLabel ? w.one : w.many;
        if (slot == kNone) slot = index;
        p.nodes_[node].label |= kWildBit;
      }
      uint64_t h = fnv(kFnvBasis, pat.data(), pat.size());
      if (has_meta) {
        const Meta& m = p.meta_[r.meta];
        for (const std::string& f : m.text) h = fnv(fnv(h, "|", 1), f.data(), f.size());
        h = fnv(fnv(h, m.types.data(), m.types.size() * sizeof(uint16_t)), &m.budget, sizeof m.budget);
        // Only entries with ports= hash them: every other list's version stays as it was.
        if (!m.ports.empty()) {
          const std::string pt = "ports=" + ports_text(m.ports);
          h = fnv(h, pt.data(), pt.size());
        }
      }
      h = fnv(h, &allow_private, 1);
      if (sni_any) h = fnv(h, "sni=any", 7);  // leaves every other list's version as it was
      version_sum += h;
    }
  }
  p.version_ = fmt::format("{:08x}", uint32_t(version_sum ^ (version_sum >> 32)));
  if (p.slots_.empty()) p.grow();
  // Growth by doubling left up to half of each array unused: a million entries must fit in
  // a few tens of MiB.
  p.nodes_.shrink_to_fit();
  p.labels_.shrink_to_fit();
  p.entries_.shrink_to_fit();
  p.meta_.shrink_to_fit();
  return p;
}

Entry Policy::entry(std::size_t i) const {
  const Rec& r = entries_[i];
  Entry e;
  e.pattern = pattern(i);
  e.kind = Entry::Kind(r.kind);
  e.source = sources_[r.source];
  e.line = r.line;
  e.allow_private = r.flags & kPrivate;
  e.sni_any = r.flags & kSniAny;
  e.shipped = r.flags & kShipped;
  if (e.kind != Entry::Kind::Exact)
    e.types = {wire::type::A, wire::type::AAAA, wire::type::CNAME, wire::type::HTTPS, wire::type::SVCB};
  if (r.meta != kNone) {
    const Meta& m = meta_[r.meta];
    if (!m.types.empty()) e.types = m.types;
    e.budget = m.budget;
    e.ports = m.ports;
    for (const auto& key : kAllowlistKeys)
      if (key.text) e.*key.text = m.text[text_slot(key)];
  }
  return e;
}

bool Policy::allows_type(std::size_t i, uint16_t qtype) const {
  const Rec& r = entries_[i];
  if (r.kind == uint8_t(Entry::Kind::Exact)) return true;
  if (r.meta != kNone && !meta_[r.meta].types.empty()) {
    const auto& t = meta_[r.meta].types;
    return std::find(t.begin(), t.end(), qtype) != t.end();
  }
  using namespace wire::type;
  return qtype == A || qtype == AAAA || qtype == CNAME || qtype == HTTPS || qtype == SVCB;
}

uint32_t Policy::budget(std::size_t i) const {
  const Rec& r = entries_[i];
  return r.meta == kNone ? 0 : meta_[r.meta].budget;
}

const std::vector<PortSpec>& Policy::ports(std::size_t i) const {
  static const std::vector<PortSpec> kNone_;
  const Rec& r = entries_[i];
  return r.meta == kNone ? kNone_ : meta_[r.meta].ports;
}

std::string Policy::pattern(std::size_t i) const {
  const Rec& r = entries_[i];
  std::string s = r.kind == uint8_t(Entry::Kind::OneLabel) ? "*" : r.kind == uint8_t(Entry::Kind::AnyLabels) ? "**" : "";
  for (uint32_t n = r.node; n != 0; n = nodes_[n].parent) {
    const uint8_t* l = labels_.data() + (nodes_[n].label & ~kWildBit);
    if (!s.empty()) s += '.';
    s.append(reinterpret_cast<const char*>(l + 1), l[0]);
  }
  return s;
}

int32_t Policy::find_pattern(std::string_view pat) const {
  Entry::Kind kind = Entry::Kind::Exact;
  if (pat.rfind("**.", 0) == 0) {
    kind = Entry::Kind::AnyLabels;
    pat.remove_prefix(3);
  } else if (pat.rfind("*.", 0) == 0) {
    kind = Entry::Kind::OneLabel;
    pat.remove_prefix(2);
  }
  std::string w;
  if (!text_to_wire(pat, w)) return -1;
  const uint32_t node =
      const_cast<Policy*>(this)->walk(reinterpret_cast<const uint8_t*>(w.data()), w.size(), false);
  if (node == kNone) return -1;
  uint32_t idx = kNone;
  if (kind == Entry::Kind::Exact) {
    idx = nodes_[node].exact;
  } else if (const auto it = wild_.find(node); it != wild_.end()) {
    idx = kind == Entry::Kind::OneLabel ? it->second.one : it->second.many;
  }
  return idx == kNone ? -1 : int32_t(idx);
}

std::vector<std::string> missing_justification(const Entry& e) {
  std::vector<std::string> missing;
  if (e.shipped) return missing;
  for (const auto& key : kAllowlistKeys)
    if (key.justification && key.text && (e.*key.text).empty()) missing.emplace_back(key.name);
  return missing;
}

Match Policy::match(const uint8_t* name, std::size_t len) const {
  if (len == 0) return {};
  std::size_t offs[128];
  std::size_t n = 0;
  // Callers pass names parse_query checked; still, a label that runs past the end (found
  // by fuzzing) denies rather than reads out of bounds.
  for (std::size_t i = 0; i < len && name[i] != 0; i += 1u + name[i]) {
    if (n == 128 || name[i] > wire::kMaxLabel || i + 1u + name[i] >= len) return {};
    offs[n++] = i;
  }
  // Down the trie from the root, one probe per label. On the way, "**.x" at a node matches
  // (the deepest one is the most specific) and "*.x" matches when one label is left.
  uint32_t node = 0, many = kNone, one = kNone;
  bool whole = true;
  for (std::size_t k = n; k > 0; --k) {
    if (nodes_[node].label & kWildBit) {
      const Wild& w = wild_.at(node);
      if (w.many != kNone) many = w.many;
      if (k == 1 && w.one != kNone) one = w.one;
    }
    const std::size_t o = offs[k - 1];
    const uint32_t child = find_child(node, name + o + 1, name[o]);
    if (child == kNone) {
      whole = false;
      break;
    }
    node = child;
  }
  if (whole && nodes_[node].exact != kNone) return {Match::Verdict::Allow, int32_t(nodes_[node].exact)};
  if (one != kNone) return {Match::Verdict::Allow, int32_t(one)};
  if (many != kNone) return {Match::Verdict::Allow, int32_t(many)};
  // The whole name is in the trie but matched nothing: entries lie below it (RFC 8020).
  if (whole && !entries_.empty()) return {Match::Verdict::Ancestor, -1};
  return {};
}

Match Policy::match_text(std::string_view name) const {
  std::string w;
  if (!text_to_wire(name, w)) return {};
  return match(reinterpret_cast<const uint8_t*>(w.data()), w.size());
}

}  // namespace dnsward
