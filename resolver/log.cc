#include "dnsward/log.hpp"

#include <cstdio>

#include "dnsward/clock.hpp"
#include "dnsward/dates.hpp"
#include "dnsward/json.hpp"

namespace dnsward::log {

LogLevel threshold = LogLevel::Info;
Format format = Format::Logfmt;
std::string policy_version;
std::string sandbox;

namespace {
void to_stderr(std::string_view line) {
  std::fprintf(stderr, "%.*s\n", int(line.size()), line.data());
  std::fflush(stderr);
}
}  // namespace

void (*sink)(std::string_view line) = to_stderr;
int64_t (*now_ms)() = wall_ms;

Quoted quote(std::string_view v) { return Quoted{std::string(v)}; }

Quoted::operator std::string() const { return logfmt_value(text); }

std::string logfmt_value(std::string_view v) {
  bool plain = !v.empty();
  for (char c : v)
    if (c == ' ' || c == '"' || c == '=' || c == '\\' || static_cast<unsigned char>(c) < 0x20 ||
        c == 0x7f)
      plain = false;
  if (plain) return std::string(v);
  std::string q = "\"";
  for (char c : v) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') q += '\\';
    if (u < 0x20 || u == 0x7f) q += fmt::format("\\x{:02x}", u);
    else q += c;
  }
  return q + "\"";
}

namespace detail {
std::vector<Placeholder> placeholders(std::string_view f) {
  std::vector<Placeholder> out;
  std::size_t next_auto = 0;
  for (std::size_t i = 0; i < f.size(); ++i) {
    if (f[i] == '}') {
      ++i;  // "}}": fmt accepts no lone '}', so this is one
      continue;
    }
    if (f[i] != '{') continue;
    if (i + 1 < f.size() && f[i + 1] == '{') {
      ++i;
      continue;
    }
    const std::size_t close = f.find('}', i);
    if (close == std::string_view::npos) break;  // fmt refused it at compile time already
    const std::string_view inside = f.substr(i + 1, close - i - 1);
    const std::size_t colon = inside.find(':');
    const std::string_view id = inside.substr(0, colon);
    std::size_t arg = 0;
    if (id.empty()) {
      arg = next_auto++;
    } else {
      for (char c : id) arg = arg * 10 + std::size_t(c - '0');
    }
    out.push_back({i, close + 1, arg, colon == std::string_view::npos ? "" : inside.substr(colon)});
    i = close;
  }
  return out;
}
}  // namespace detail

std::vector<Field> fields_of(std::string_view f, const std::vector<std::string>& values) {
  const auto phs = detail::placeholders(f);
  std::vector<Field> out;
  enum { Between, Key, Value } state = Between;
  std::string key;
  // Text that is not part of a key=value pair (a bare "{}" or word) joins the previous
  // field's value after a space, or a "msg" field at the start.
  auto join = [&out](std::string_view text) {
    if (out.empty()) out.push_back({"msg", std::string(text)});
    else out.back().value.append(" ").append(text);
  };
  std::size_t ph = 0;  // the next replacement field
  for (std::size_t i = 0; i < f.size();) {
    if (ph < phs.size() && i == phs[ph].begin) {
      const std::size_t arg = phs[ph].arg;
      const std::string_view v = arg < values.size() ? std::string_view(values[arg]) : "";
      const std::size_t after = phs[ph++].end;
      if (state == Between && (after == f.size() || f[after] == ' ')) {
        // A "{}" that is a whole word of its own is a fragment of key=value words built by
        // trusted code (the SIGUSR1 stats line): each word with a key is a field. Text from
        // outside must never stand alone like this; it goes in key={}.
        for (std::size_t w = 0; w < v.size();) {
          std::size_t sp = v.find(' ', w);
          if (sp == std::string_view::npos) sp = v.size();
          const std::string_view word = v.substr(w, sp - w);
          const std::size_t eq = word.find('=');
          if (eq != std::string_view::npos && eq > 0)
            out.push_back({std::string(word.substr(0, eq)), std::string(word.substr(eq + 1))});
          else if (!word.empty())
            join(word);
          w = sp + 1;
        }
        state = Between;
        i = after;
        continue;
      }
      if (state == Between) join("");
      else if (state == Key) join(key);
      state = Value;
      out.back().value.append(v);
      i = after;
      continue;
    }
    const char c = f[i];
    i += (c == '{' || c == '}') ? 2 : 1;  // "{{" and "}}" are one brace
    if (c == ' ') {  // the separator, in the trusted format string only
      if (state == Key) join(key);
      state = Between;
    } else if (state == Between) {
      key.assign(1, c);
      state = Key;
    } else if (state == Key) {
      if (c == '=' && !key.empty()) {
        out.push_back({key, ""});
        state = Value;
      } else {
        key += c;
      }
    } else {
      out.back().value += c;
    }
  }
  if (state == Key) join(key);
  return out;
}

std::string render(Format fmt_, LogLevel level, std::string_view ts, const std::vector<Field>& fields,
                   std::string_view policy, std::string_view sandbox_id) {
  static constexpr const char* names[] = {"debug", "info", "warn", "error"};
  std::string l;
  if (fmt_ == Format::Json) {
    l = "{\"ts\":";
    json::append_quoted(l, ts);
    l += ",\"level\":";
    json::append_quoted(l, names[int(level)]);
    for (const auto& f : fields) {
      l += ',';
      json::append_quoted(l, f.key);
      l += ':';
      json::append_quoted(l, f.value);
    }
    if (!sandbox_id.empty()) {
      l += ",\"sandbox\":";
      json::append_quoted(l, sandbox_id);
    }
    if (!policy.empty()) {
      l += ",\"policy\":";
      json::append_quoted(l, policy);
    }
    return l + "}";
  }
  l = fmt::format("ts={} level={}", ts, names[int(level)]);
  for (const auto& f : fields) l += fmt::format(" {}={}", f.key, logfmt_value(f.value));
  if (!sandbox_id.empty()) l += " sandbox=" + logfmt_value(sandbox_id);
  if (!policy.empty()) l += " policy=" + logfmt_value(policy);
  return l;
}

void write(LogLevel level, const std::vector<Field>& fields) {
  sink(render(format, level, date::format_timestamp_ms(now_ms()), fields, policy_version, sandbox));
}

void write(LogLevel level, const std::string& line) { write(level, fields_of(line, {})); }

}  // namespace dnsward::log
