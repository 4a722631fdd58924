// `dnsward ctl`: the control socket's client. Builds one request from the command line,
// sends it as one JSON line, prints the one reply line, and exits by its "ok".
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "dnsward/config.hpp"
#include "dnsward/control.hpp"

namespace dnsward {
namespace {

constexpr int kReplyTimeoutMs = 30000;
constexpr std::size_t kMaxReply = 64u << 20;  // `list` of 10,000 sandboxes fits many times

const char kUsage[] =
    "usage: dnsward ctl [--control PATH] add ID --addr ADDR... --iface IF [--allowlist FILE]...\n"
    "                   [--allowlist-text TEXT]... [--allowlist-stdin] [--no-default]\n"
    "                   [--mode enforce|audit]\n"
    "       dnsward ctl [--control PATH] remove ID | list | show ID | explain ID NAME\n"
    "Sends one request to `dnsward serve --host` over its control socket and prints the JSON\n"
    "reply. Exit status: 0 if the reply says ok, 1 if not or if dnsward cannot be reached,\n"
    "2 for a usage error.\n";

int usage_error(const std::string& why) {
  std::fprintf(stderr, "dnsward ctl: %s (see dnsward ctl --help)\n", why.c_str());
  return 2;
}

int unreachable(const std::string& path, const std::string& why) {
  std::fprintf(stderr, "dnsward ctl: %s: %s\n", path.c_str(), why.c_str());
  return 1;
}

// Whether a reply line is {"ok":true,...}: the server writes "ok" as the first member.
bool reply_ok(const std::string& r) {
  std::size_t i = 0;
  auto ws = [&]() {
    while (i < r.size() && (r[i] == ' ' || r[i] == '\t' || r[i] == '\r')) ++i;
  };
  auto lit = [&](const char* s) {
    const std::size_t n = std::strlen(s);
    if (r.compare(i, n, s) != 0) return false;
    i += n;
    return true;
  };
  ws();
  if (!lit("{")) return false;
  ws();
  if (!lit("\"ok\"")) return false;
  ws();
  if (!lit(":")) return false;
  ws();
  return lit("true");
}

std::string absolute(const std::string& p) {
  if (!p.empty() && p[0] == '/') return p;
  char* cwd = realpath(".", nullptr);
  if (cwd == nullptr) return p;  // check_sandbox_spec refuses it, with the path shown
  std::string out = cwd;
  free(cwd);
  return out + "/" + p;
}

// Sends line and reads one reply line; "" and why on failure.
bool exchange(const std::string& path, const std::string& line, std::string& reply, std::string& why) {
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof sa.sun_path) {
    why = "not a socket path (1 to 107 bytes)";
    return false;
  }
  std::memcpy(sa.sun_path, path.data(), path.size());
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    why = std::string("socket: ") + std::strerror(errno);
    return false;
  }
  struct Closer {
    int fd;
    ~Closer() { close(fd); }
  } closer{fd};
  if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    why = std::string("cannot reach dnsward: ") + std::strerror(errno);
    if (errno == ENOENT) why += " (is `dnsward serve --host` running with this --control?)";
    if (errno == EACCES) why += " (the socket is for root and --control-group only)";
    return false;
  }
  auto wait_for = [fd](short what) {
    pollfd p{fd, what, 0};
    int rc;
    do rc = poll(&p, 1, kReplyTimeoutMs);
    while (rc < 0 && errno == EINTR);
    return rc;
  };
  std::size_t sent = 0;
  while (sent < line.size()) {
    const ssize_t n = send(fd, line.data() + sent, line.size() - sent, MSG_NOSIGNAL);
    if (n >= 0) {
      sent += std::size_t(n);
      continue;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN) {
      if (wait_for(POLLOUT) == 0) {
        why = "timed out sending the request";
        return false;
      }
      continue;
    }
    break;  // EPIPE: dnsward closed early, perhaps with an error reply to read
  }
  std::string buf;
  for (;;) {
    const auto nl = buf.find('\n');
    if (nl != std::string::npos) {
      reply = buf.substr(0, nl);
      return true;
    }
    const int rc = wait_for(POLLIN);
    if (rc == 0) {
      why = "no reply within 30 s";
      return false;
    }
    char chunk[65536];
    const ssize_t n = recv(fd, chunk, sizeof chunk, 0);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) {
      why = n == 0 ? "dnsward closed the connection without a reply"
                   : std::string("reading the reply: ") + std::strerror(errno);
      return false;
    }
    buf.append(chunk, std::size_t(n));
    if (buf.size() > kMaxReply) {
      why = "the reply is longer than 64 MiB";
      return false;
    }
  }
}

}  // namespace

int ctl_main(const std::vector<std::string>& args) {
  const OptionSpec* control_opt = find_option("control");
  std::string control = control_opt && control_opt->def ? control_opt->def : "/run/dnsward/control";
  std::size_t i = 0;
  // An option's value: "--name=value" or "--name value"; false if it has none.
  auto value_of = [&args, &i](const std::string& name, std::string& v) {
    const std::string& a = args[i];
    if (a.size() > name.size() && a.compare(0, name.size(), name) == 0 && a[name.size()] == '=') {
      v = a.substr(name.size() + 1);
      return true;
    }
    if (a != name || i + 1 >= args.size()) return false;
    v = args[++i];
    return true;
  };
  auto is_opt = [&args, &i](const std::string& name) {
    const std::string& a = args[i];
    return a == name || (a.size() > name.size() && a.compare(0, name.size(), name) == 0 && a[name.size()] == '=');
  };

  for (; i < args.size() && args[i].size() > 1 && args[i][0] == '-'; ++i) {
    if (args[i] == "-h" || args[i] == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (!is_opt("--control")) return usage_error("unknown option " + args[i]);
    if (!value_of("--control", control)) return usage_error("--control needs a PATH");
  }
  if (i >= args.size()) return usage_error("no command (add, remove, list, show, explain)");
  const std::string cmd = args[i++];

  CtlRequest req;
  std::vector<std::string> pos;
  if (cmd == "add") {
    req.cmd = CtlRequest::Cmd::Add;
    if (i >= args.size() || args[i].empty() || args[i][0] == '-') return usage_error("add needs an ID first");
    req.spec.id = args[i++];
    bool have_iface = false;
    bool have_mode = false;
    for (; i < args.size(); ++i) {
      std::string v;
      if (is_opt("--addr")) {
        if (!value_of("--addr", v)) return usage_error("--addr needs an address");
        // --addr A B ...: the words after it, up to the next option, are addresses too.
        std::vector<std::string> addrs = {v};
        while (i + 1 < args.size() && !args[i + 1].empty() && args[i + 1][0] != '-') addrs.push_back(args[++i]);
        for (const auto& a : addrs) {
          IpAddr ip;
          if (a.find('\0') != std::string::npos || !IpAddr::parse(a, ip))
            return usage_error("--addr " + a + ": not an IPv4 or IPv6 address");
          req.spec.addrs.push_back(ip);
        }
      } else if (is_opt("--iface")) {
        if (have_iface) return usage_error("--iface given twice");
        if (!value_of("--iface", req.spec.iface)) return usage_error("--iface needs an interface name");
        have_iface = true;
      } else if (is_opt("--allowlist")) {
        if (!value_of("--allowlist", v)) return usage_error("--allowlist needs a FILE");
        req.spec.allowlists.push_back(absolute(v));
      } else if (is_opt("--allowlist-text")) {
        if (!value_of("--allowlist-text", v)) return usage_error("--allowlist-text needs TEXT");
        req.spec.allowlist_text += v;
        normalise_allowlist_text(req.spec.allowlist_text);
      } else if (args[i] == "--allowlist-stdin") {
        std::string text;
        char chunk[65536];
        std::size_t n;
        while ((n = std::fread(chunk, 1, sizeof chunk, stdin)) > 0 && text.size() <= kMaxAllowlistText)
          text.append(chunk, n);
        if (std::ferror(stdin)) return usage_error("--allowlist-stdin: cannot read standard input");
        req.spec.allowlist_text += text;
        normalise_allowlist_text(req.spec.allowlist_text);
      } else if (args[i] == "--no-default") {
        req.spec.default_list = false;
      } else if (is_opt("--mode")) {
        if (have_mode) return usage_error("--mode given twice");
        if (!value_of("--mode", v) || (v != "enforce" && v != "audit"))
          return usage_error("--mode needs enforce or audit");
        req.spec.audit = v == "audit";
        have_mode = true;
      } else {
        return usage_error("add: unexpected argument " + args[i]);
      }
    }
    if (req.spec.addrs.empty()) return usage_error("add needs --addr");
    if (!have_iface) return usage_error("add needs --iface");
    if (auto e = check_sandbox_spec(req.spec); !e.empty()) return usage_error(e);
  } else {
    for (; i < args.size(); ++i) {
      if (args[i].size() > 1 && args[i][0] == '-') return usage_error(cmd + ": unknown option " + args[i]);
      pos.push_back(args[i]);
    }
    std::size_t want;
    if (cmd == "remove") {
      req.cmd = CtlRequest::Cmd::Remove;
      want = 1;
    } else if (cmd == "show") {
      req.cmd = CtlRequest::Cmd::Show;
      want = 1;
    } else if (cmd == "list") {
      req.cmd = CtlRequest::Cmd::List;
      want = 0;
    } else if (cmd == "explain") {
      req.cmd = CtlRequest::Cmd::Explain;
      want = 2;
    } else {
      return usage_error("unknown command " + cmd + " (add, remove, list, show, explain)");
    }
    if (pos.size() != want)
      return usage_error(cmd + (want == 0 ? " takes no argument" : want == 1 ? " needs one ID" : " needs an ID and a NAME"));
    if (want >= 1) {
      req.spec.id = pos[0];
      if (auto e = check_sandbox_id(req.spec.id); !e.empty()) return usage_error(e);
    }
    if (want == 2) req.name = pos[1];
  }

  // The request as the server will read it: what parses here is what the server sees.
  const std::string line = render_ctl_request(req);
  CtlRequest back;
  std::string err;
  if (!parse_ctl_request(line, back, err)) return usage_error(err);

  std::string reply, why;
  if (!exchange(control, line + "\n", reply, why)) return unreachable(control, why);
  std::fwrite(reply.data(), 1, reply.size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
  return reply_ok(reply) ? 0 : 1;
}

}  // namespace dnsward
