// One line per event on stderr, logfmt style: level=info event=... key=value.
#pragma once
#include <fmt/format.h>

#include "dnsward/config.hpp"

namespace dnsward::log {

extern LogLevel threshold;
/// One line per event: logfmt (key=value) or one JSON object.
enum class Format { Logfmt, Json };
extern Format format;
/// The loaded policy's version, carried by every line so an operator can tell which list
/// decided ("" before one is loaded).
extern std::string policy_version;
void write(LogLevel level, const std::string& line);

inline bool enabled(LogLevel l) { return l >= threshold; }

template <typename... A>
void debug(fmt::format_string<A...> f, A&&... a) {
  if (enabled(LogLevel::Debug)) write(LogLevel::Debug, fmt::format(f, std::forward<A>(a)...));
}
template <typename... A>
void info(fmt::format_string<A...> f, A&&... a) {
  if (enabled(LogLevel::Info)) write(LogLevel::Info, fmt::format(f, std::forward<A>(a)...));
}
template <typename... A>
void warn(fmt::format_string<A...> f, A&&... a) {
  if (enabled(LogLevel::Warn)) write(LogLevel::Warn, fmt::format(f, std::forward<A>(a)...));
}
template <typename... A>
void error(fmt::format_string<A...> f, A&&... a) {
  write(LogLevel::Error, fmt::format(f, std::forward<A>(a)...));
}

/// Quotes a value for logfmt when it holds spaces, quotes or control bytes.
std::string quote(std::string_view v);

}  // namespace dnsward::log
