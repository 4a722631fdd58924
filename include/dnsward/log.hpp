// One line per event on stderr: logfmt (ts=... level=... event=... key=value ... policy=...)
// or one JSON object with the same fields.
//
// Call sites write log::info("event=x name={} count={}", log::quote(name), n): a trusted,
// compile-time format string of key={} pairs. The line is built from fields, never by
// re-parsing formatted text: the format string is split into its pairs, each argument is
// formatted on its own and becomes (part of) one field's value, and only then is the field
// written as logfmt (quoted when needed) or as a JSON member (escaped). A value holding
// spaces, quotes, '=' or newlines stays one field in both formats.
#pragma once
#include <fmt/format.h>

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "dnsward/config.hpp"

namespace dnsward::log {

extern LogLevel threshold;
/// One line per event: logfmt (key=value) or one JSON object.
enum class Format { Logfmt, Json };
extern Format format;
/// The loaded policy's version, carried by every line so an operator can tell which list
/// decided ("" before one is loaded).
extern std::string policy_version;
/// Host mode: the sandbox whose query is being handled ("": none), on every line as sandbox=ID.
extern std::string sandbox;

/// Text from outside (names, error messages): a value type, so that it stays one field's
/// value whatever it holds; logfmt quotes it when needed and JSON escapes it. Formatted with
/// fmt outside a log call, it gives its logfmt form.
struct Quoted {
  std::string text;
  /// The logfmt form, for code that still wants a string.
  operator std::string() const;
};
Quoted quote(std::string_view v);
/// v as a logfmt value: as it is when plain, else in double quotes with '"' and '\'
/// escaped and control bytes as \xNN.
std::string logfmt_value(std::string_view v);

/// One field of a log line.
struct Field {
  std::string key, value;
  bool operator==(const Field&) const = default;
};

/// Where lines go (stderr by default) and what time they carry: replaceable by tests.
extern void (*sink)(std::string_view line);
extern int64_t (*now_ms)();

namespace detail {
/// One replacement field "{...}" of a format string: its argument and its format spec.
struct Placeholder {
  std::size_t begin, end;  ///< the braces' place in the format string
  std::size_t arg;         ///< argument index (automatic or given)
  std::string_view spec;   ///< ":..." or empty
};
/// The replacement fields of a (compile-time checked) format string, "{{" and "}}" skipped.
std::vector<Placeholder> placeholders(std::string_view f);

template <typename T>
std::string format_erased(std::string_view spec, const void* p) {
  const T& v = *static_cast<const T*>(p);
  if constexpr (std::is_same_v<T, Quoted>) {
    return v.text;  // the raw text: quoting is the writer's job, per format
  } else {
    std::string f = "{";
    f.append(spec);
    f += '}';
    return fmt::vformat(f, fmt::make_format_args(v));
  }
}
using Formatter = std::string (*)(std::string_view spec, const void* p);
}  // namespace detail

/// The fields of one event: f split at its spaces into key=value pairs, with the text of the
/// replacement field for argument i taken from values[i] (formatted with that field's spec).
/// A value is never split, whatever it holds. Two exceptions, for trusted text only: a "{}"
/// standing alone as a word is a fragment of key=value words (the stats line), each word a
/// field; a word without a key joins the previous field's value ("table={} {}" gives one
/// field, "inet dnsward").
std::vector<Field> fields_of(std::string_view f, const std::vector<std::string>& values);

/// fields_of() for a format string and its arguments, each formatted on its own.
template <typename... A>
std::vector<Field> make_fields(fmt::format_string<A...> f, A&&... a) {
  const fmt::string_view fs = f;
  const std::string_view s(fs.data(), fs.size());
  const std::array<const void*, sizeof...(A)> ptrs = {static_cast<const void*>(&a)...};
  const std::array<detail::Formatter, sizeof...(A)> fns = {
      &detail::format_erased<std::remove_cvref_t<A>>...};
  std::vector<std::string> values;
  for (const auto& ph : detail::placeholders(s))
    values.push_back(ph.arg < sizeof...(A) ? fns[ph.arg](ph.spec, ptrs[ph.arg]) : std::string());
  return fields_of(s, values);
}

/// One line in the given format: ts and level first, the event's fields, then policy= if
/// policy is not empty. No newline.
std::string render(Format fmt_, LogLevel level, std::string_view ts, const std::vector<Field>& fields,
                   std::string_view policy,
                   std::string_view sandbox = {});

/// Writes one event (render() with the current format, time and policy version, to sink).
void write(LogLevel level, const std::vector<Field>& fields);
/// The same for a trusted literal line of key=value pairs.
void write(LogLevel level, const std::string& line);

inline bool enabled(LogLevel l) { return l >= threshold; }

template <typename... A>
void debug(fmt::format_string<A...> f, A&&... a) {
  if (enabled(LogLevel::Debug)) write(LogLevel::Debug, make_fields(f, std::forward<A>(a)...));
}
template <typename... A>
void info(fmt::format_string<A...> f, A&&... a) {
  if (enabled(LogLevel::Info)) write(LogLevel::Info, make_fields(f, std::forward<A>(a)...));
}
template <typename... A>
void warn(fmt::format_string<A...> f, A&&... a) {
  if (enabled(LogLevel::Warn)) write(LogLevel::Warn, make_fields(f, std::forward<A>(a)...));
}
template <typename... A>
void error(fmt::format_string<A...> f, A&&... a) {
  write(LogLevel::Error, make_fields(f, std::forward<A>(a)...));
}

}  // namespace dnsward::log

/// A Quoted value in a plain fmt::format gives its logfmt form.
template <>
struct fmt::formatter<dnsward::log::Quoted> : fmt::formatter<std::string_view> {
  template <typename Ctx>
  auto format(const dnsward::log::Quoted& q, Ctx& ctx) const {
    return fmt::formatter<std::string_view>::format(dnsward::log::logfmt_value(q.text), ctx);
  }
};
