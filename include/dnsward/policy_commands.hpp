// The policy commands, each the whole of a `dnsward COMMAND`: arguments after the command
// name in, exit code out (0 success, 1 findings or failure, 2 usage error).
#pragma once
#include <string>
#include <vector>

namespace dnsward {

/// `dnsward explain NAME [--allowlist FILE]...`: the verdict for NAME and why.
int explain_main(const std::vector<std::string>& args);
/// `dnsward report --state FILE`: unused entries, stale reviews, most denied names.
int report_main(const std::vector<std::string>& args);
/// `dnsward check [--strict] FILE...`: the allowlist linter (0 clean, 1 errors, 2 unusable input).
int check_main(const std::vector<std::string>& args);

}  // namespace dnsward
