// Replays fuzz inputs without libFuzzer: linked with one fuzz_<target>.cc into
// fuzz_replay_<target>, it feeds every file of the directories (or the files) named on the
// command line to LLVMFuzzerTestOneInput, so the normal and the sanitizer builds run each
// target's corpus (its regression inputs among them) under ctest. An oracle's
// __builtin_trap or a sanitizer report kills the process, which fails the test; so does
// finding no input at all (a wrong path must not pass quietly).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size);

namespace fs = std::filesystem;

int main(int argc, char** argv) {
  std::vector<fs::path> files;
  for (int i = 1; i < argc; ++i) {
    std::error_code ec;
    if (fs::is_directory(argv[i], ec)) {
      for (const auto& e : fs::directory_iterator(argv[i]))
        if (e.is_regular_file()) files.push_back(e.path());
    } else if (fs::is_regular_file(argv[i], ec)) {
      files.emplace_back(argv[i]);
    } else {
      std::fprintf(stderr, "%s: %s: no such file or directory\n", argv[0], argv[i]);
      return 2;
    }
  }
  std::sort(files.begin(), files.end());  // a stable order, for reading failures
  for (const fs::path& f : files) {
    std::ifstream in(f, std::ios::binary);
    if (!in) {
      std::fprintf(stderr, "%s: cannot read %s\n", argv[0], f.c_str());
      return 2;
    }
    // Exactly the file's bytes on the heap, so a sanitizer sees any read past the end.
    const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto* data = new uint8_t[bytes.size()];
    std::copy(bytes.begin(), bytes.end(), data);
    std::fprintf(stderr, "running %s (%zu bytes)\n", f.c_str(), bytes.size());
    LLVMFuzzerTestOneInput(data, bytes.size());
    delete[] data;
  }
  std::printf("%s: ran %zu inputs\n", argv[0], files.size());
  return files.empty() ? 1 : 0;
}
