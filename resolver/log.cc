#include "dnsward/log.hpp"

#include <cstdio>

namespace dnsward::log {

LogLevel threshold = LogLevel::Info;
std::string policy_version;

void write(LogLevel level, const std::string& line) {
  static constexpr const char* names[] = {"debug", "info", "warn", "error"};
  if (policy_version.empty())
    std::fprintf(stderr, "level=%s %s\n", names[int(level)], line.c_str());
  else
    std::fprintf(stderr, "level=%s %s policy=%s\n", names[int(level)], line.c_str(),
                 policy_version.c_str());
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
