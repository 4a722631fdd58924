#include "dnsward/log.hpp"

#include <time.h>

#include <cstdio>

namespace dnsward::log {

LogLevel threshold = LogLevel::Info;
Format format = Format::Logfmt;
std::string policy_version;

namespace {
std::string timestamp() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  tm g{};
  gmtime_r(&ts.tv_sec, &g);
  char buf[40];
  const std::size_t n = strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &g);
  return std::string(buf, n) + fmt::format(".{:03d}Z", ts.tv_nsec / 1000000);
}

// The events are written as logfmt by the call sites; JSON is made from the same pairs, so
// both formats carry the same fields.
std::string to_json(const std::string& logfmt) {
  std::string out = "{";
  std::size_t i = 0;
  bool first = true;
  while (i < logfmt.size()) {
    while (i < logfmt.size() && logfmt[i] == ' ') ++i;
    const std::size_t eq = logfmt.find('=', i);
    if (eq == std::string::npos) break;
    const std::string key = logfmt.substr(i, eq - i);
    std::string value;
    i = eq + 1;
    if (i < logfmt.size() && logfmt[i] == '"') {
      for (++i; i < logfmt.size() && logfmt[i] != '"'; ++i) {
        if (logfmt[i] == '\\' && i + 1 < logfmt.size()) ++i;
        value += logfmt[i];
      }
      ++i;
    } else {
      const std::size_t sp = logfmt.find(' ', i);
      value = logfmt.substr(i, sp == std::string::npos ? std::string::npos : sp - i);
      i = sp == std::string::npos ? logfmt.size() : sp;
    }
    std::string esc;
    for (char c : value) {
      if (c == '"' || c == '\\') esc += '\\', esc += c;
      else if (static_cast<unsigned char>(c) < 0x20) esc += fmt::format("\\u{:04x}", c);
      else esc += c;
    }
    out += fmt::format("{}\"{}\":\"{}\"", first ? "" : ",", key, esc);
    first = false;
  }
  return out + "}";
}
}  // namespace

void write(LogLevel level, const std::string& line) {
  static constexpr const char* names[] = {"debug", "info", "warn", "error"};
  std::string l = fmt::format("ts={} level={} {}", timestamp(), names[int(level)], line);
  if (!policy_version.empty()) l += " policy=" + policy_version;
  if (format == Format::Json) l = to_json(l);
  std::fprintf(stderr, "%s\n", l.c_str());
  std::fflush(stderr);
}

std::string quote(std::string_view v) {
  bool plain = !v.empty();
  for (char c : v)
    if (c == ' ' || c == '"' || c == '=' || c == '\\' || static_cast<unsigned char>(c) < 0x20)
      plain = false;
  if (plain) return std::string(v);
  std::string q = "\"";
  for (char c : v) {
    if (c == '"' || c == '\\') q += '\\';
    if (static_cast<unsigned char>(c) < 0x20) q += fmt::format("\\x{:02x}", c);
    else q += c;
  }
  return q + "\"";
}

}  // namespace dnsward::log
