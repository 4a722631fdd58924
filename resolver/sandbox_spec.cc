// A sandbox's registration in its three forms: checks, the registration file (line based,
// FILE:LINE errors) and the control socket's JSON request (a small strict parser of the
// subset the protocol uses). Pure: no I/O.
#include "dnsward/sandbox_spec.hpp"

#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <map>

#include "dnsward/json.hpp"

namespace dnsward {
namespace {

bool name_char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '.' || c == '-';
}

// A control byte, as text must not hold it: C0 (but tab, when allowed) and DEL.
bool control_byte(char c, bool tab_ok) {
  const auto u = static_cast<unsigned char>(c);
  return (u < 0x20 && !(tab_ok && c == '\t')) || u == 0x7f;
}

bool has_control(std::string_view s, bool tab_ok) {
  return std::any_of(s.begin(), s.end(), [tab_ok](char c) { return control_byte(c, tab_ok); });
}

// A value as an error message shows it: quoted (escaped) and cut, so that one hostile value
// can neither break the line nor make it megabytes long.
std::string shown(std::string_view s) {
  constexpr std::size_t kMax = 64;
  std::string out = json::quoted(s.substr(0, kMax));
  if (s.size() > kMax) out.insert(out.size() - 1, "...");
  return out;
}

// The length of the valid UTF-8 sequence that starts at s[i] with a byte >= 0x80 (RFC 3629
// 4), 0 if there is none: overlong forms, surrogates and code points above U+10FFFF are not.
std::size_t utf8_len(std::string_view s, std::size_t i) {
  const auto c = uint8_t(s[i]);
  const std::size_t n = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
  if (n == 0 || s.size() - i < n) return 0;
  for (std::size_t k = 1; k < n; ++k)
    if ((uint8_t(s[i + k]) & 0xc0) != 0x80) return 0;
  const auto c1 = uint8_t(s[i + 1]);
  if ((c == 0xe0 && c1 < 0xa0) || (c == 0xed && c1 >= 0xa0) || (c == 0xf0 && c1 < 0x90) || (c == 0xf4 && c1 >= 0x90))
    return 0;
  return n;
}

// Text that travels in JSON must be valid UTF-8: json::append_quoted writes any other byte
// as its Latin-1 reading, and the value would not read back the same.
bool valid_utf8(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    if (uint8_t(s[i]) < 0x80) {
      ++i;
      continue;
    }
    const std::size_t n = utf8_len(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

std::string check_allowlist_path(std::string_view p) {
  if (p.empty() || p[0] != '/') return "allowlist path " + shown(p) + " is not absolute";
  if (p.size() > kMaxAllowlistPath) return "allowlist path " + shown(p) + " is longer than 4096 bytes";
  if (has_control(p, false)) return "allowlist path " + shown(p) + " has a control character";
  // The sandbox file's `allowlist = PATH` line loses trailing blanks when read back (found
  // by the ctl_request fuzz target's round-trip oracle): such a path is refused, not changed.
  if (p.back() == ' ' || p.back() == '\t') return "allowlist path " + shown(p) + " ends with a blank";
  if (!valid_utf8(p)) return "allowlist path " + shown(p) + " is not valid UTF-8";
  return "";
}

std::string check_allowlist_text(std::string_view t) {
  if (t.size() > kMaxAllowlistText) return "the inline allowlist is longer than 1 MiB";
  // Tab may separate an entry from its comment; '\n' ends each line; nothing else below
  // 0x20 (a '\r' would be lost or kept depending on the reader).
  for (char c : t)
    if (c != '\n' && control_byte(c, true)) return "the inline allowlist has a control character";
  if (!valid_utf8(t)) return "the inline allowlist is not valid UTF-8";
  if (!t.empty() && t.back() != '\n') return "the inline allowlist does not end with a newline";
  return "";
}

std::string check_explain_name(std::string_view n) {
  if (n.empty()) return "the name is empty";
  if (n.size() > 255) return "the name is longer than 255 bytes";
  if (has_control(n, false) || n.find(' ') != std::string_view::npos)
    return "the name has a space or a control character";
  if (!valid_utf8(n)) return "the name is not valid UTF-8";
  return "";
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

}  // namespace

std::string check_sandbox_id(std::string_view id) {
  if (id.empty()) return "the sandbox id is empty";
  if (id.size() > 64) return "the sandbox id is longer than 64 characters";
  if (!std::all_of(id.begin(), id.end(), name_char))
    return "the sandbox id " + shown(id) + " may hold only A-Z a-z 0-9 _ . -";
  // The id names its file in --sandboxes DIR: no ".", "..", or hidden (temporary) files.
  if (id[0] == '.') return "the sandbox id " + shown(id) + " starts with '.'";
  return "";
}

std::string check_iface_name(std::string_view name) {
  if (name.empty()) return "the interface name is empty";
  if (name.size() > 15) return "the interface name " + shown(name) + " is longer than 15 bytes";  // IFNAMSIZ - 1
  if (!std::all_of(name.begin(), name.end(), name_char))
    return "the interface name " + shown(name) + " may hold only A-Z a-z 0-9 _ . -";
  if (name == "." || name == "..") return "the interface name " + shown(name) + " is not one";
  return "";
}

std::string check_guest_addr(const IpAddr& a) {
  if (a.family != AF_INET && a.family != AF_INET6) return "not an IPv4 or IPv6 address";
  const uint8_t* b = a.bytes;
  const std::string t = a.text();
  if (a.family == AF_INET) {
    if (b[0] == 0) return "address " + t + " is in 0.0.0.0/8, not a host's";
    if (b[0] == 127) return "address " + t + " is loopback";
    if (b[0] == 169 && b[1] == 254) return "address " + t + " is link-local, not unique on the host";
    if (b[0] >= 224) return "address " + t + " is multicast, reserved or broadcast";
    return "";
  }
  static constexpr uint8_t zero[16] = {};
  static constexpr uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (std::memcmp(b, zero, 16) == 0) return "address " + t + " is unspecified";
  if (std::memcmp(b, zero, 15) == 0 && b[15] == 1) return "address " + t + " is loopback";
  if (b[0] == 0xff) return "address " + t + " is multicast";
  // Every guest may use the same fe80:: address on its own link: a source address that does
  // not tell sandboxes apart cannot identify one.
  if (b[0] == 0xfe && (b[1] & 0xC0) == 0x80) return "address " + t + " is link-local, not unique on the host";
  // The kernel shows an IPv4 guest's packets with its IPv4 address, never this form.
  if (std::memcmp(b, mapped, 12) == 0) return "address " + t + " is IPv4-mapped: give the IPv4 address";
  return "";
}

std::string check_sandbox_spec(const SandboxSpec& s) {
  if (auto e = check_sandbox_id(s.id); !e.empty()) return e;
  if (s.addrs.empty()) return "the sandbox has no address";
  if (s.addrs.size() > kMaxSandboxAddrs) return "the sandbox has more than 16 addresses";
  for (std::size_t i = 0; i < s.addrs.size(); ++i) {
    if (auto e = check_guest_addr(s.addrs[i]); !e.empty()) return e;
    for (std::size_t k = 0; k < i; ++k)
      if (s.addrs[k] == s.addrs[i]) return "address " + s.addrs[i].text() + " is given twice";
  }
  if (auto e = check_iface_name(s.iface); !e.empty()) return e;
  if (s.allowlists.size() > kMaxSandboxAllowlists) return "the sandbox has more than 64 allowlist files";
  for (const auto& p : s.allowlists)
    if (auto e = check_allowlist_path(p); !e.empty()) return e;
  return check_allowlist_text(s.allowlist_text);
}

void normalise_allowlist_text(std::string& text) {
  if (!text.empty() && text.back() != '\n') text += '\n';
}

// ---------------------------------------------------------------------------------------
// The registration file.

std::string render_sandbox_file(const SandboxSpec& s) {
  std::string out = "# dnsward sandbox\nversion = 1\nid = " + s.id + "\n";
  for (const auto& a : s.addrs) out += "addr = " + a.text() + "\n";
  out += "iface = " + s.iface + "\n";
  for (const auto& p : s.allowlists) out += "allowlist = " + p + "\n";
  out += s.default_list ? "default = yes\n" : "default = no\n";
  out += s.audit ? "mode = audit\n" : "mode = enforce\n";
  // One line of text per `inline` line, in order; an empty line as "inline =" so that no
  // line ends in a space an editor would strip.
  std::string_view t = s.allowlist_text;
  while (!t.empty()) {
    const auto nl = t.find('\n');
    const std::string_view line = t.substr(0, nl);
    out += line.empty() ? "inline =\n" : "inline = " + std::string(line) + "\n";
    t.remove_prefix(nl == std::string_view::npos ? t.size() : nl + 1);
  }
  return out;
}

bool parse_sandbox_file(std::string_view text, const std::string& path, SandboxSpec& out,
                        std::string& err) {
  SandboxSpec s;
  std::map<std::string, std::size_t, std::less<>> seen;  // single keys -> line
  std::size_t lineno = 0;
  auto fail = [&](const std::string& why) {
    err = path + ":" + std::to_string(lineno) + ": " + why;
    return false;
  };
  while (!text.empty()) {
    ++lineno;
    const auto nl = text.find('\n');
    const std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);

    if (has_control(line, true)) return fail("control character in the line");
    if (!valid_utf8(line)) return fail("the line is not valid UTF-8");
    const std::string_view body = trim(line);
    if (body.empty() || body[0] == '#') continue;
    const auto eq = line.find('=');
    if (eq == std::string_view::npos) return fail("not a 'key = value' line");
    const std::string_view key = trim(line.substr(0, eq));
    const std::string_view value = trim(line.substr(eq + 1));

    if (key == "inline") {
      // The entry is everything after "inline = ", '#' and '=' and spaces included.
      std::string_view entry;
      if (line == "inline =") {
        entry = "";
      } else if (line.substr(0, 9) == "inline = ") {
        entry = line.substr(9);
      } else {
        return fail("write an inline entry as 'inline = LINE'");
      }
      if (s.allowlist_text.size() + entry.size() + 1 > kMaxAllowlistText)
        return fail("the inline allowlist is longer than 1 MiB");
      s.allowlist_text.append(entry);
      s.allowlist_text += '\n';
      continue;
    }
    if (key == "version" || key == "id" || key == "iface" || key == "default" || key == "mode") {
      const auto it = seen.find(key);
      if (it != seen.end())
        return fail("duplicate key '" + std::string(key) + "' (first on line " + std::to_string(it->second) + ")");
      seen.emplace(std::string(key), lineno);
    }
    if (key == "version") {
      if (value != "1") return fail("unsupported version " + shown(value) + " (this dnsward reads version 1)");
    } else if (key == "id") {
      if (auto e = check_sandbox_id(value); !e.empty()) return fail(e);
      s.id = value;
    } else if (key == "iface") {
      if (auto e = check_iface_name(value); !e.empty()) return fail(e);
      s.iface = value;
    } else if (key == "addr") {
      IpAddr a;
      if (!IpAddr::parse(std::string(value), a)) return fail(shown(value) + " is not an IPv4 or IPv6 address");
      if (auto e = check_guest_addr(a); !e.empty()) return fail(e);
      if (std::find(s.addrs.begin(), s.addrs.end(), a) != s.addrs.end())
        return fail("address " + a.text() + " is given twice");
      if (s.addrs.size() == kMaxSandboxAddrs) return fail("the sandbox has more than 16 addresses");
      s.addrs.push_back(a);
    } else if (key == "allowlist") {
      if (auto e = check_allowlist_path(value); !e.empty()) return fail(e);
      if (s.allowlists.size() == kMaxSandboxAllowlists) return fail("the sandbox has more than 64 allowlist files");
      s.allowlists.emplace_back(value);
    } else if (key == "default") {
      if (value != "yes" && value != "no") return fail("default must be yes or no, not " + shown(value));
      s.default_list = value == "yes";
    } else if (key == "mode") {
      if (value != "enforce" && value != "audit") return fail("mode must be enforce or audit, not " + shown(value));
      s.audit = value == "audit";
    } else {
      return fail("unknown key " + shown(key));
    }
  }
  auto fail_file = [&](const std::string& why) {
    err = path + ": " + why;
    return false;
  };
  if (s.id.empty()) return fail_file("no id");
  if (s.iface.empty()) return fail_file("no iface");
  if (s.addrs.empty()) return fail_file("no addr");
  if (auto e = check_sandbox_spec(s); !e.empty()) return fail_file(e);  // nothing left, by the lines' checks
  out = std::move(s);
  return true;
}

// ---------------------------------------------------------------------------------------
// The control request: one JSON object (RFC 8259) on one line, of the subset the protocol
// needs: member values are strings, true/false, or arrays of strings. Numbers, null and
// nested objects or arrays are refused, so there is no recursion and nothing to bound but
// the line.

namespace {

struct JValue {
  enum class Kind : uint8_t { String, Bool, Array } kind = Kind::String;
  std::string str;
  bool boolean = false;
  std::vector<std::string> array;
};

class JsonReader {
 public:
  explicit JsonReader(std::string_view in) : in_(in) {}

  // The members of the one object the line holds, in a map (so a duplicate is seen).
  bool object(std::map<std::string, JValue>& members) {
    ws();
    if (!eat('{')) return fail("a request is a JSON object: expected '{'");
    ws();
    if (!eat('}')) {
      for (;;) {
        ws();
        std::string key;
        if (peek() != '"') return fail("expected a member name");
        if (!string(key)) return false;
        ws();
        if (!eat(':')) return fail("expected ':' after member " + shown(key));
        ws();
        JValue v;
        if (!value(key, v)) return false;
        if (!members.emplace(key, std::move(v)).second) return fail("duplicate member " + shown(key));
        ws();
        if (eat(',')) continue;
        if (eat('}')) break;
        return fail("expected ',' or '}'");
      }
    }
    ws();
    if (i_ != in_.size()) return fail("trailing characters after the object");
    return true;
  }

  const std::string& error() const { return err_; }

 private:
  char peek() const { return i_ < in_.size() ? in_[i_] : '\0'; }
  bool eat(char c) {
    if (i_ < in_.size() && in_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  // RFC 8259 2: insignificant whitespace (the line's '\n' is already gone).
  void ws() {
    while (i_ < in_.size() && (in_[i_] == ' ' || in_[i_] == '\t' || in_[i_] == '\r' || in_[i_] == '\n')) ++i_;
  }
  bool fail(const std::string& why) {
    if (err_.empty()) err_ = why + " (at byte " + std::to_string(i_ + 1) + ")";
    return false;
  }
  bool literal(std::string_view word) {
    if (in_.substr(i_, word.size()) != word) return false;
    i_ += word.size();
    return true;
  }

  bool value(const std::string& key, JValue& v) {
    const char c = peek();
    if (c == '"') {
      v.kind = JValue::Kind::String;
      return string(v.str);
    }
    if (c == 't' || c == 'f') {
      v.kind = JValue::Kind::Bool;
      v.boolean = c == 't';
      if (literal(c == 't' ? "true" : "false")) return true;
      return fail("member " + shown(key) + ": not a JSON value");
    }
    if (c == '[') {
      ++i_;
      v.kind = JValue::Kind::Array;
      ws();
      if (eat(']')) return true;
      for (;;) {
        ws();
        if (peek() != '"') return fail("member " + shown(key) + ": array elements must be strings");
        v.array.emplace_back();
        if (!string(v.array.back())) return false;
        ws();
        if (eat(',')) continue;
        if (eat(']')) return true;
        return fail("member " + shown(key) + ": expected ',' or ']'");
      }
    }
    if (c == '{') return fail("member " + shown(key) + ": nested objects are not accepted");
    if (c == 'n') return fail("member " + shown(key) + ": null is not accepted");
    if (c == '-' || (c >= '0' && c <= '9')) return fail("member " + shown(key) + ": numbers are not accepted");
    return fail("member " + shown(key) + ": not a JSON value");
  }

  bool hex4(uint32_t& cp) {
    if (in_.size() - i_ < 4) return fail("\\u needs four hex digits");
    cp = 0;
    for (int k = 0; k < 4; ++k) {
      const char h = in_[i_++];
      cp <<= 4;
      if (h >= '0' && h <= '9') cp |= uint32_t(h - '0');
      else if (h >= 'a' && h <= 'f') cp |= uint32_t(h - 'a' + 10);
      else if (h >= 'A' && h <= 'F') cp |= uint32_t(h - 'A' + 10);
      else return fail("\\u needs four hex digits");
    }
    return true;
  }

  static void put_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += char(cp);
    } else if (cp < 0x800) {
      out += char(0xC0 | (cp >> 6));
      out += char(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += char(0xE0 | (cp >> 12));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    } else {
      out += char(0xF0 | (cp >> 18));
      out += char(0x80 | ((cp >> 12) & 0x3F));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    }
  }

  bool string(std::string& out) {
    ++i_;  // the opening quote
    for (;;) {
      if (i_ >= in_.size()) return fail("unterminated string");
      const char c = in_[i_];
      const auto u = uint8_t(c);
      if (c == '"') {
        ++i_;
        return true;
      }
      if (u < 0x20) return fail("control character in a string (RFC 8259 7: escape it)");
      if (u >= 0x80) {
        // Invalid UTF-8 is refused, not passed on (see valid_utf8).
        const std::size_t n = utf8_len(in_, i_);
        if (n == 0) return fail("invalid UTF-8 in a string");
        out.append(in_.substr(i_, n));
        i_ += n;
        continue;
      }
      ++i_;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (i_ >= in_.size()) return fail("unterminated string");
      const char e = in_[i_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t cp;
          if (!hex4(cp)) return false;
          if (cp >= 0xDC00 && cp <= 0xDFFF) return fail("a lone low surrogate in \\u escapes");
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            // RFC 8259 7: a character outside the BMP is a surrogate pair of \u escapes.
            uint32_t lo;
            if (!literal("\\u")) return fail("a high surrogate not followed by a low one");
            if (!hex4(lo)) return false;
            if (lo < 0xDC00 || lo > 0xDFFF) return fail("a high surrogate not followed by a low one");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          put_utf8(out, cp);
          break;
        }
        default:
          --i_;
          return fail("unknown escape in a string");
      }
    }
  }

  std::string_view in_;
  std::size_t i_ = 0;
  std::string err_;
};

const char* cmd_name(CtlRequest::Cmd c) {
  switch (c) {
    case CtlRequest::Cmd::Add: return "add";
    case CtlRequest::Cmd::Remove: return "remove";
    case CtlRequest::Cmd::List: return "list";
    case CtlRequest::Cmd::Show: return "show";
    case CtlRequest::Cmd::Explain: return "explain";
  }
  return "?";
}

}  // namespace

bool parse_ctl_request(std::string_view line, CtlRequest& out, std::string& err) {
  if (line.size() > kMaxCtlLine) {
    err = "request longer than 2 MiB";
    return false;
  }
  if (trim(line).empty() || trim(line) == "\r") {
    err = "empty request";
    return false;
  }
  std::map<std::string, JValue> m;
  JsonReader r(line);
  if (!r.object(m)) {
    err = r.error();
    return false;
  }
  auto fail = [&err](const std::string& why) {
    err = why;
    return false;
  };
  static const std::map<std::string_view, CtlRequest::Cmd> cmds = {
      {"add", CtlRequest::Cmd::Add}, {"remove", CtlRequest::Cmd::Remove}, {"list", CtlRequest::Cmd::List},
      {"show", CtlRequest::Cmd::Show}, {"explain", CtlRequest::Cmd::Explain}};
  const auto cmd_it = m.find("cmd");
  if (cmd_it == m.end()) return fail("missing member \"cmd\"");
  if (cmd_it->second.kind != JValue::Kind::String) return fail("member \"cmd\" must be a string");
  const auto c = cmds.find(cmd_it->second.str);
  if (c == cmds.end()) return fail("unknown cmd " + shown(cmd_it->second.str) + " (add, remove, list, show, explain)");

  CtlRequest req;
  req.cmd = c->second;
  // Which members each command takes: anything else is refused, never ignored, so a typo
  // ("allowlist" for "allowlists") cannot silently register a weaker policy.
  static const std::vector<std::string_view> known = {"cmd", "id", "addrs", "iface", "allowlists",
                                                      "allowlist_text", "default", "mode", "name"};
  std::vector<std::string_view> takes = {"cmd"};
  switch (req.cmd) {
    case CtlRequest::Cmd::Add: takes = {"cmd", "id", "addrs", "iface", "allowlists", "allowlist_text", "default", "mode"}; break;
    case CtlRequest::Cmd::Remove:
    case CtlRequest::Cmd::Show: takes = {"cmd", "id"}; break;
    case CtlRequest::Cmd::List: break;
    case CtlRequest::Cmd::Explain: takes = {"cmd", "id", "name"}; break;
  }
  for (const auto& kv : m) {
    if (std::find(known.begin(), known.end(), kv.first) == known.end()) return fail("unknown member " + shown(kv.first));
    if (std::find(takes.begin(), takes.end(), kv.first) == takes.end())
      return fail("member " + shown(kv.first) + " is not used by \"" + cmd_name(req.cmd) + "\"");
  }
  auto str = [&](const char* key, std::string& to, bool required) {
    const auto it = m.find(key);
    if (it == m.end()) return required ? fail(std::string("missing member \"") + key + "\"") : true;
    if (it->second.kind != JValue::Kind::String) return fail(std::string("member \"") + key + "\" must be a string");
    to = it->second.str;
    return true;
  };
  auto strings = [&](const char* key, std::vector<std::string>& to, bool required) {
    const auto it = m.find(key);
    if (it == m.end()) return required ? fail(std::string("missing member \"") + key + "\"") : true;
    if (it->second.kind != JValue::Kind::Array)
      return fail(std::string("member \"") + key + "\" must be an array of strings");
    to = it->second.array;
    return true;
  };

  if (req.cmd != CtlRequest::Cmd::List && !str("id", req.spec.id, true)) return false;
  if (req.cmd == CtlRequest::Cmd::Explain) {
    if (!str("name", req.name, true)) return false;
    if (auto e = check_explain_name(req.name); !e.empty()) return fail(e);
  }
  if (req.cmd == CtlRequest::Cmd::Add) {
    std::vector<std::string> addrs;
    if (!strings("addrs", addrs, true) || !str("iface", req.spec.iface, true) ||
        !strings("allowlists", req.spec.allowlists, false) || !str("allowlist_text", req.spec.allowlist_text, false))
      return false;
    if (addrs.size() > kMaxSandboxAddrs) return fail("the sandbox has more than 16 addresses");
    for (const auto& a : addrs) {
      IpAddr ip;
      // IpAddr::parse reads a C string: an embedded NUL would cut the text short.
      if (a.find('\0') != std::string::npos || !IpAddr::parse(a, ip))
        return fail(shown(a) + " is not an IPv4 or IPv6 address");
      req.spec.addrs.push_back(ip);
    }
    if (const auto it = m.find("default"); it != m.end()) {
      if (it->second.kind != JValue::Kind::Bool) return fail("member \"default\" must be true or false");
      req.spec.default_list = it->second.boolean;
    }
    std::string mode = "enforce";
    if (!str("mode", mode, false)) return false;
    if (mode != "enforce" && mode != "audit") return fail("mode must be \"enforce\" or \"audit\", not " + shown(mode));
    req.spec.audit = mode == "audit";
    normalise_allowlist_text(req.spec.allowlist_text);
    if (auto e = check_sandbox_spec(req.spec); !e.empty()) return fail(e);
  } else if (req.cmd != CtlRequest::Cmd::List) {
    if (auto e = check_sandbox_id(req.spec.id); !e.empty()) return fail(e);
  }
  out = std::move(req);
  return true;
}

std::string render_ctl_request(const CtlRequest& r) {
  std::string out = "{\"cmd\":\"";
  out += cmd_name(r.cmd);
  out += '"';
  if (r.cmd == CtlRequest::Cmd::List) return out + "}";
  out += ",\"id\":";
  json::append_quoted(out, r.spec.id);
  if (r.cmd == CtlRequest::Cmd::Explain) {
    out += ",\"name\":";
    json::append_quoted(out, r.name);
  }
  if (r.cmd == CtlRequest::Cmd::Add) {
    const SandboxSpec& s = r.spec;
    out += ",\"addrs\":[";
    for (std::size_t i = 0; i < s.addrs.size(); ++i) {
      if (i) out += ',';
      json::append_quoted(out, s.addrs[i].text());
    }
    out += "],\"iface\":";
    json::append_quoted(out, s.iface);
    if (!s.allowlists.empty()) {
      out += ",\"allowlists\":[";
      for (std::size_t i = 0; i < s.allowlists.size(); ++i) {
        if (i) out += ',';
        json::append_quoted(out, s.allowlists[i]);
      }
      out += ']';
    }
    if (!s.allowlist_text.empty()) {
      out += ",\"allowlist_text\":";
      json::append_quoted(out, s.allowlist_text);
    }
    out += s.default_list ? ",\"default\":true" : ",\"default\":false";
    out += s.audit ? ",\"mode\":\"audit\"" : ",\"mode\":\"enforce\"";
  }
  return out + "}";
}

}  // namespace dnsward
