// Readiness and status for a service manager (systemd's Type=notify), spoken directly: the
// protocol of sd_notify(3) is one datagram of newline-separated VARIABLE=value assignments
// sent to the AF_UNIX socket named by $NOTIFY_SOCKET. Linking libsystemd for it would map
// libsystemd, gcrypt, lzma, zstd and lz4 into every dnsward (issue 10).
#pragma once
#include <sys/socket.h>
#include <sys/un.h>

#include <string>
#include <string_view>

namespace dnsward {

/// Sends state ("READY=1", "RELOADING=1", "STOPPING=1", "STATUS=...", several joined by
/// '\n') to $NOTIFY_SOCKET. Returns 1 if it was sent, 0 if NOTIFY_SOCKET is unset (not run by a
/// service manager: nothing to do), or -errno (-EINVAL for an address it cannot use).
int sd_notify(std::string_view state);

/// The socket address a NOTIFY_SOCKET value names: an absolute path, or an abstract socket
/// written with a leading '@' (sd_notify(3)). False for anything else (relative paths, or
/// vsock:, which dnsward does not speak) or a name too long for sun_path.
bool notify_socket_address(std::string_view value, sockaddr_un& addr, socklen_t& len);

}  // namespace dnsward
