// Small state files (usage counts, the vouch ledger): written so that a crash leaves the old
// file or the new one, never half of either; read whole.
#pragma once
#include <cstdint>
#include <string>

namespace dnsward {

/// Writes PATH.tmp, fsyncs it, renames it over PATH. Returns false with err on failure.
bool write_file_atomically(const std::string& path, const std::string& text, std::string& err);

enum class ReadFile { Ok, Missing, Error };
/// Reads a whole file into text; Missing if it does not exist; Error if it is longer than
/// max_bytes.
ReadFile read_file(const std::string& path, std::string& text, std::string& err,
                   std::size_t max_bytes = SIZE_MAX);

}  // namespace dnsward
