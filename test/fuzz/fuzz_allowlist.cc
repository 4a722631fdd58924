// libFuzzer: the allowlist parser, the matcher on names taken from the same input, the
// pattern and explain views of every entry.
#include <cstddef>
#include <cstdint>
#include <string>

#include "dnsward/explain.hpp"
#include "dnsward/policy.hpp"

using namespace dnsward;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> errors;
  const Policy p = Policy::parse({{"fuzz.allow", text, false}}, errors);
  for (std::size_t i = 0; i < p.size() && i < 64; ++i) {
    const Entry e = p.entry(i);
    if (p.find_pattern(e.pattern) < 0) __builtin_trap();  // every entry can be found again
    (void)missing_justification(e);
  }
  // Every line, read as a name, goes through the matcher and explain.
  std::size_t start = 0;
  for (int k = 0; k < 16 && start < text.size(); ++k) {
    const std::size_t nl = text.find('\n', start);
    const std::string line = text.substr(start, nl == std::string::npos ? std::string::npos : nl - start);
    (void)p.match_text(line);
    (void)explain_lines(p, line);
    if (nl == std::string::npos) break;
    start = nl + 1;
  }
  uint8_t wire[255];
  const std::size_t n = size < sizeof wire ? size : sizeof wire;
  for (std::size_t i = 0; i < n; ++i) wire[i] = data[i];
  (void)p.match(wire, n);  // raw bytes as a (possibly malformed) wire name
  return 0;
}
