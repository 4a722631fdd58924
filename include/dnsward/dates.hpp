// The one date parser and formatter: allowlist dates (reviewed=, expires=), `check --today`,
// the ready-to-fill lines of explain, usage times in reports and log timestamps. Calendar
// arithmetic on days since 1970-01-01 (UTC), proleptic Gregorian, with no time zone and no
// locale (strptime and strftime depend on both). Header-only: small, and pure.
#pragma once
#include <cstdint>
#include <ctime>
#include <optional>
#include <string>
#include <string_view>

#include <fmt/format.h>

namespace dnsward::date {

/// Days since 1970-01-01 of a calendar day (H. Hinnant's days_from_civil).
constexpr int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const auto yoe = unsigned(y - era * 400);
  const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + int64_t(doe) - 719468;
}

/// A calendar day of a day number (the inverse of days_from_civil).
struct Civil {
  int64_t y;
  unsigned m, d;
};
constexpr Civil civil_from_days(int64_t z) {
  z += 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const auto doe = unsigned(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  const unsigned d = doy - (153 * mp + 2) / 5 + 1;
  const unsigned m = mp < 10 ? mp + 3 : mp - 9;
  return {int64_t(yoe) + era * 400 + (m <= 2), m, d};
}

/// Parses exactly "YYYY-MM-DD", a day that exists (2024-02-29 does, 2026-02-29 and
/// 2026-04-31 do not), into days since 1970-01-01; nullopt for anything else.
constexpr std::optional<int64_t> parse_day(std::string_view s) {
  if (s.size() != 10 || s[4] != '-' || s[7] != '-') return std::nullopt;
  int v[8] = {};
  for (std::size_t i = 0, k = 0; i < 10; ++i) {
    if (i == 4 || i == 7) continue;
    if (s[i] < '0' || s[i] > '9') return std::nullopt;
    v[k++] = s[i] - '0';
  }
  const int y = v[0] * 1000 + v[1] * 100 + v[2] * 10 + v[3];
  const unsigned m = unsigned(v[4] * 10 + v[5]), d = unsigned(v[6] * 10 + v[7]);
  if (m < 1 || m > 12 || d < 1) return std::nullopt;
  constexpr unsigned days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  const bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  if (d > days[m - 1] + (m == 2 && leap ? 1u : 0u)) return std::nullopt;
  return days_from_civil(y, m, d);
}

/// "YYYY-MM-DD" of a day number.
inline std::string format_day(int64_t days) {
  const Civil c = civil_from_days(days);
  return fmt::format("{:04}-{:02}-{:02}", c.y, c.m, c.d);
}

/// Days from a to b (each "YYYY-MM-DD"); nullopt if either is not a date.
inline std::optional<int64_t> days_between(std::string_view a, std::string_view b) {
  const auto x = parse_day(a), y = parse_day(b);
  if (!x || !y) return std::nullopt;
  return *y - *x;
}

/// Floor division: the day of a time before 1970 is the day before, not day 0.
constexpr int64_t day_of(int64_t unix_seconds) {
  return unix_seconds >= 0 ? unix_seconds / 86400 : -((-unix_seconds + 86399) / 86400);
}

/// "YYYY-MM-DD HH:MM:SSZ" of a unix time (report output).
inline std::string format_time(int64_t unix_seconds) {
  const int64_t day = day_of(unix_seconds), sec = unix_seconds - day * 86400;
  return fmt::format("{} {:02}:{:02}:{:02}Z", format_day(day), sec / 3600, sec / 60 % 60, sec % 60);
}

/// RFC 3339 with milliseconds, "YYYY-MM-DDTHH:MM:SS.mmmZ" (log timestamps).
inline std::string format_timestamp_ms(int64_t unix_ms) {
  const int64_t s = unix_ms >= 0 ? unix_ms / 1000 : -((-unix_ms + 999) / 1000);
  const int64_t day = day_of(s), sec = s - day * 86400;
  return fmt::format("{}T{:02}:{:02}:{:02}.{:03}Z", format_day(day), sec / 3600, sec / 60 % 60,
                     sec % 60, unix_ms - s * 1000);
}

/// Today in UTC, "YYYY-MM-DD".
inline std::string today() { return format_day(day_of(int64_t(std::time(nullptr)))); }

}  // namespace dnsward::date
