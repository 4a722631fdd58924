// libFuzzer: the control socket's request line and the registration file, the two forms a
// sandbox arrives in from outside. Oracles: an error is one line (a file's names the file);
// whatever either parser accepts passes check_sandbox_spec, and renders (as a request line
// and as a file) to text that parses back to an equal value.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "dnsward/sandbox_spec.hpp"

using namespace dnsward;

namespace {

void require(bool ok) {
  if (!ok) __builtin_trap();
}

bool same(const CtlRequest& a, const CtlRequest& b) {
  return a.cmd == b.cmd && a.spec == b.spec && a.name == b.name;
}

// A valid spec survives both of its round trips.
void check_spec_round_trips(const SandboxSpec& s) {
  require(check_sandbox_spec(s).empty());
  SandboxSpec file_back;
  std::string err;
  require(parse_sandbox_file(render_sandbox_file(s), "f", file_back, err));
  require(file_back == s);
  CtlRequest add;
  add.cmd = CtlRequest::Cmd::Add;
  add.spec = s;
  CtlRequest req_back;
  require(parse_ctl_request(render_ctl_request(add), req_back, err));
  require(same(req_back, add));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);

  CtlRequest r;
  std::string err;
  if (parse_ctl_request(in, r, err)) {
    const std::string line = render_ctl_request(r);
    require(line.find('\n') == std::string::npos);
    CtlRequest back;
    std::string err2;
    require(parse_ctl_request(line, back, err2));
    require(same(back, r));
    require(render_ctl_request(back) == line);
    if (r.cmd == CtlRequest::Cmd::Add) check_spec_round_trips(r.spec);
  } else {
    require(!err.empty() && err.find('\n') == std::string::npos);
  }

  SandboxSpec s;
  err.clear();
  if (parse_sandbox_file(in, "f", s, err)) {
    check_spec_round_trips(s);
  } else {
    require(err.rfind("f:", 0) == 0 && err.find('\n') == std::string::npos);
  }
  return 0;
}
