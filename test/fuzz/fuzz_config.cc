// libFuzzer: a config file (key = value lines), and the same bytes split into command-line
// arguments, through the option table's parser and checks.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "dnsward/config.hpp"

using namespace dnsward;

namespace {
const std::string& scratch_path() {
  static const std::string path = [] {
    std::string p = "/tmp/dnsward-fuzz-config-" + std::to_string(getpid());
    std::atexit([] { std::remove(scratch_path().c_str()); });
    return p;
  }();
  return path;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  const std::string& path = scratch_path();
  if (FILE* f = std::fopen(path.c_str(), "wb")) {
    std::fwrite(data, 1, size, f);
    std::fclose(f);
  }
  (void)parse_serve_config({"--config", path, "--upstream", "192.0.2.1"}, "/dev/null");
  std::vector<std::string> args;
  std::string cur;
  for (std::size_t i = 0; i < size; ++i) {
    if (data[i] == 0 || data[i] == '\n' || data[i] == ' ') {
      if (!cur.empty()) args.push_back(cur);
      cur.clear();
    } else {
      cur += char(data[i]);
    }
  }
  if (!cur.empty()) args.push_back(cur);
  (void)parse_serve_config(args, "/dev/null");
  return 0;
}
