// The one JSON string escaper (RFC 8259 7), for log lines, `report --json` and anything
// else that writes JSON. Header-only: small, and pure.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace dnsward::json {

/// Appends s to out as a JSON string, quotes included. '"' and '\' are escaped, control
/// bytes and DEL become \n, \t, \r or \u00XX, so a value can never end the string, add a
/// member or break the line. Valid UTF-8 is copied as it is; a byte that is not part of a
/// valid UTF-8 sequence becomes \u00XX (its Latin-1 reading), so the output is always
/// valid JSON whatever bytes come in.
inline void append_quoted(std::string& out, std::string_view s) {
  static constexpr char hex[] = "0123456789abcdef";
  auto escape_byte = [&out](uint8_t c) {
    out += "\\u00";
    out += hex[c >> 4];
    out += hex[c & 15];
  };
  out += '"';
  for (std::size_t i = 0; i < s.size();) {
    const auto c = uint8_t(s[i]);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += char(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c < 0x20 || c == 0x7f) {
      escape_byte(c);
    } else if (c >= 0x80) {
      // The length of a UTF-8 sequence from its lead byte; overlong forms (C0, C1, E0 80..9F,
      // F0 80..8F), surrogates (ED A0..BF) and code points above U+10FFFF are not valid.
      std::size_t n = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3
                    : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
      if (n && i + n <= s.size()) {
        for (std::size_t k = 1; k < n; ++k)
          if ((uint8_t(s[i + k]) & 0xc0) != 0x80) n = 0;
        const auto c1 = n ? uint8_t(s[i + 1]) : 0;
        if ((c == 0xe0 && c1 < 0xa0) || (c == 0xed && c1 >= 0xa0) || (c == 0xf0 && c1 < 0x90) ||
            (c == 0xf4 && c1 >= 0x90))
          n = 0;
      } else {
        n = 0;
      }
      if (n == 0) {
        escape_byte(c);
      } else {
        out.append(s.data() + i, n);
        i += n;
        continue;
      }
    } else {
      out += char(c);
    }
    ++i;
  }
  out += '"';
}

/// s as a JSON string, quotes included (see append_quoted).
inline std::string quoted(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 2);
  append_quoted(out, s);
  return out;
}

}  // namespace dnsward::json
