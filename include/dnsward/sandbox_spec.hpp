// A sandbox as the host knows it (host mode, `dnsward serve --host`): its id, its guest
// addresses, the host interface it arrives on, and its policy's sources. The same record
// comes in three forms, all handled here and nowhere else: a `ctl` request (JSON over the
// control socket), a registration file in --sandboxes DIR (line based, so that a bad one is
// reported as FILE:LINE), and the JSON that `ctl list`/`ctl show` print. Pure: no I/O.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "dnsward/answer.hpp"

namespace dnsward {

/// Bounds of a registration (check_sandbox_spec) and of a request line (parse_ctl_request).
inline constexpr std::size_t kMaxSandboxAddrs = 16;
inline constexpr std::size_t kMaxSandboxAllowlists = 64;
inline constexpr std::size_t kMaxAllowlistPath = 4096;          ///< PATH_MAX
inline constexpr std::size_t kMaxAllowlistText = 1u << 20;      ///< 1 MiB of inline entries
inline constexpr std::size_t kMaxCtlLine = 2u << 20;            ///< 2 MiB, newline excluded

/// What a sandbox is registered with.
struct SandboxSpec {
  std::string id;                       ///< check_sandbox_id(): 1-64 of [A-Za-z0-9_.-]
  std::vector<IpAddr> addrs;            ///< the guest's addresses, at least one, no duplicates
  std::string iface;                    ///< its host interface (the tap), 1-15 bytes, no '/', ' ', '"'
  std::vector<std::string> allowlists;  ///< allowlist files on the host (absolute paths)
  /// Inline allowlist entries: "" (none) or lines each ending with '\n' (normalised by the
  /// parsers, see normalise_allowlist_text), no control byte but tab and newline.
  std::string allowlist_text;
  bool default_list = true;             ///< the embedded default list is part of its policy
  bool audit = false;                   ///< audit mode for this sandbox only
  bool operator==(const SandboxSpec&) const = default;
};

/// "" or why id is not a sandbox id.
std::string check_sandbox_id(std::string_view id);
/// "" or why the spec cannot be registered (id, addresses, interface, paths, inline text).
/// Every spec it accepts survives both round trips (file and request) unchanged.
std::string check_sandbox_spec(const SandboxSpec& s);
/// "" or why a is not a guest address (unspecified, loopback, multicast, broadcast and
/// reserved, link-local, IPv4-mapped): sandboxes are told apart by source address alone.
std::string check_guest_addr(const IpAddr& a);
/// "" or why name is not a host interface name (1-15 bytes of [A-Za-z0-9_.-], not . or ..).
std::string check_iface_name(std::string_view name);
/// Appends the '\n' a non-empty inline allowlist lacks at its end: the registration file
/// keeps text as lines, so "a" and "a\n" are the same policy and are stored as "a\n".
void normalise_allowlist_text(std::string& text);

/// The registration file's text (format version 1): `key = value` lines; the inline
/// allowlist as one `inline = LINE` per line of it.
std::string render_sandbox_file(const SandboxSpec& s);
/// Parses a registration file; false with err = "PATH:LINE: reason" (or "PATH: reason"
/// for what no line can be blamed for: a missing id, iface or addr). Strict: an unknown
/// key, a second id/iface/version/default/mode, or a bad value is an error. Blank lines and
/// lines starting with '#' are skipped. parse(render(s)) == s for every s that
/// check_sandbox_spec accepts.
bool parse_sandbox_file(std::string_view text, const std::string& path, SandboxSpec& out,
                        std::string& err);

/// One request on the control socket, parsed from a JSON object on one line.
struct CtlRequest {
  enum class Cmd : uint8_t { Add, Remove, List, Show, Explain };
  Cmd cmd = Cmd::List;
  SandboxSpec spec;  ///< add (spec.id: the id of remove/show/explain too)
  std::string name;  ///< explain
};
/// Parses one request line (a JSON object, RFC 8259, without numbers or null; see
/// README "Control socket"); false with err (one line, for the reply) if it is not one.
/// An accepted `add` carries a spec check_sandbox_spec accepts (its text normalised).
bool parse_ctl_request(std::string_view line, CtlRequest& out, std::string& err);
/// The request line `dnsward ctl` sends (parse_ctl_request reads it back to an equal request).
std::string render_ctl_request(const CtlRequest& r);

}  // namespace dnsward
