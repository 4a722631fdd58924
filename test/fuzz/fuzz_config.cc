// libFuzzer: a config file (key = value lines), and the same bytes split into command-line
// arguments, through the option table's parser and checks.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "dnsward/config.hpp"

using namespace dnsward;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  // The config "file" lives in memory (memfd): nothing is left on disk.
  static const int fd = memfd_create("dnsward-fuzz-config", 0);
  static const std::string path = "/proc/self/fd/" + std::to_string(fd);
  if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != ssize_t(size)) return 0;
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
