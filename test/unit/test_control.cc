// The control socket with a real Unix socket in a scratch directory, driven by a real
// EventLoop: mode and owner, one reply per request line, bad lines answered without the
// handler, stale and foreign files at the path, the SO_PEERCRED check (a forked child as
// nobody), the line bound and the connection cap.
#include <doctest/doctest.h>

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "dnsward/control.hpp"
#include "dnsward/event_loop.hpp"

using namespace dnsward;

namespace {

struct TempDir {
  std::string path;
  TempDir() {
    char t[] = "/tmp/dnsward-control-XXXXXX";
    REQUIRE(mkdtemp(t) != nullptr);
    path = t;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

// Records every request; answers {"ok":true,"n":N}, or `reply` when one is set.
struct FakeHandler : ControlHandler {
  std::vector<CtlRequest> seen;
  std::string reply;
  std::string handle(const CtlRequest& r) override {
    seen.push_back(r);
    return reply.empty() ? "{\"ok\":true,\"n\":" + std::to_string(seen.size()) + "}" : reply;
  }
};

// Runs the loop until done() holds, checked from a timer every millisecond, or until the
// deadline; false on the deadline. Nothing sleeps: the loop serves the socket in between.
bool run_until(EventLoop& loop, const std::function<bool()>& done, uint64_t deadline_ms = 10000) {
  const uint64_t end = EventLoop::clock_ms() + deadline_ms;
  bool ok = false;
  std::function<void()> tick = [&]() {
    if (done()) {
      ok = true;
      loop.stop();
    } else if (EventLoop::clock_ms() >= end) {
      loop.stop();
    } else {
      loop.after(1, tick);
    }
  };
  loop.after(0, tick);
  loop.run();
  return ok;
}

int connect_to(const std::string& path) {
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::memcpy(sa.sun_path, path.data(), path.size());
  if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// A non-blocking client whose pump() the run_until predicate calls.
struct Client {
  int fd = -1;
  std::string out, in;
  bool eof = false;
  explicit Client(const std::string& path, std::string send = "") : fd(connect_to(path)), out(std::move(send)) {
    REQUIRE(fd >= 0);
  }
  ~Client() { close(fd); }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  // Writes what the socket takes, reads what has arrived.
  void pump() {
    while (!out.empty()) {
      const ssize_t n = send(fd, out.data(), out.size(), MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EPIPE || errno == ECONNRESET) out.clear();
        break;
      }
      out.erase(0, std::size_t(n));
    }
    char buf[65536];
    for (;;) {
      const ssize_t n = recv(fd, buf, sizeof buf, 0);
      if (n > 0) {
        in.append(buf, std::size_t(n));
        continue;
      }
      if (n == 0 || (errno != EAGAIN && errno != EINTR)) eof = true;  // ECONNRESET: closed too
      break;
    }
  }
  std::size_t lines() const { return std::size_t(std::count(in.begin(), in.end(), '\n')); }
  std::vector<std::string> reply_lines() const {
    std::vector<std::string> v;
    std::size_t at = 0;
    for (auto nl = in.find('\n'); nl != std::string::npos; nl = in.find('\n', at)) {
      v.push_back(in.substr(at, nl - at));
      at = nl + 1;
    }
    return v;
  }
};

gid_t group_gid(const char* name) {
  const group* g = getgrnam(name);
  REQUIRE(g != nullptr);
  return g->gr_gid;
}

}  // namespace

TEST_CASE("the control socket is 0660 root:group and answers each request line in order") {
  if (geteuid() != 0) {
    MESSAGE("skipped: chown to root:group needs root");
    return;
  }
  TempDir dir;
  const std::string path = dir.path + "/run/control";  // its directory is made: it is missing
  EventLoop loop;
  FakeHandler h;
  {
    ControlServer server(loop, path, "daemon", h);
    struct stat st {};
    REQUIRE(lstat(path.c_str(), &st) == 0);
    CHECK(S_ISSOCK(st.st_mode));
    CHECK((st.st_mode & 07777) == 0660);
    CHECK(st.st_uid == 0);
    CHECK(st.st_gid == group_gid("daemon"));
    struct stat ds {};
    REQUIRE(stat((dir.path + "/run").c_str(), &ds) == 0);
    CHECK((ds.st_mode & 07777) == 0755);

    // Three lines in one write, a bad one in the middle: each gets its reply, in order, and
    // the bad one never reaches the handler; the connection stays open after it.
    Client c(path, "{\"cmd\":\"list\"}\n{\"cmd\":\"list\",\"x\":true}\n{\"cmd\":\"show\",\"id\":\"a\"}\n");
    REQUIRE(run_until(loop, [&c]() {
      c.pump();
      return c.lines() >= 3;
    }));
    const auto replies = c.reply_lines();
    REQUIRE(replies.size() == 3);
    CHECK(replies[0] == "{\"ok\":true,\"n\":1}");
    CHECK(replies[1] == "{\"ok\":false,\"error\":\"unknown member \\\"x\\\"\"}");
    CHECK(replies[2] == "{\"ok\":true,\"n\":2}");
    REQUIRE(h.seen.size() == 2);
    CHECK(h.seen[0].cmd == CtlRequest::Cmd::List);
    CHECK(h.seen[1].cmd == CtlRequest::Cmd::Show);
    CHECK(h.seen[1].spec.id == "a");
    CHECK(server.requests() == 2);
    CHECK_FALSE(c.eof);

    // A request split across writes is served once its newline arrives; a last line
    // without a newline is served when the client closes its side.
    c.out = "{\"cmd\":\"remove\",";
    REQUIRE_FALSE(run_until(loop, [&c]() {
      c.pump();
      return c.lines() >= 4;
    }, 50));
    c.out = "\"id\":\"a\"}\n{\"cmd\":\"list\"}";
    REQUIRE(run_until(loop, [&c]() {
      c.pump();
      return c.out.empty();
    }));
    shutdown(c.fd, SHUT_WR);
    REQUIRE(run_until(loop, [&c]() {
      c.pump();
      return c.eof;
    }));
    CHECK(c.lines() == 5);
    REQUIRE(h.seen.size() == 4);
    CHECK(h.seen[2].cmd == CtlRequest::Cmd::Remove);
    CHECK(h.seen[3].cmd == CtlRequest::Cmd::List);
    CHECK(server.connections() == 0);
  }
  CHECK_FALSE(std::filesystem::exists(path));  // the destructor removed its socket
}

TEST_CASE("an empty --control-group means root's group; an unknown one is refused") {
  if (geteuid() != 0) {
    MESSAGE("skipped: needs root");
    return;
  }
  TempDir dir;
  EventLoop loop;
  FakeHandler h;
  {
    ControlServer server(loop, dir.path + "/c", "", h);
    struct stat st {};
    REQUIRE(lstat((dir.path + "/c").c_str(), &st) == 0);
    CHECK(st.st_gid == 0);
  }
  CHECK_THROWS_WITH_AS(ControlServer(loop, dir.path + "/c", "no-such-group-dnsward", h),
                       "--control-group no-such-group-dnsward: no such group", std::runtime_error);
  CHECK_FALSE(std::filesystem::exists(dir.path + "/c"));
}

TEST_CASE("a stale socket at the path is replaced; a live one, a file or a directory is not") {
  if (geteuid() != 0) {
    MESSAGE("skipped: needs root");
    return;
  }
  TempDir dir;
  const std::string path = dir.path + "/control";
  EventLoop loop;
  FakeHandler h;

  // A socket whose process died: bound, never unlinked.
  {
    const int s = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::memcpy(sa.sun_path, path.data(), path.size());
    REQUIRE(bind(s, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
    close(s);
  }
  {
    ControlServer server(loop, path, "", h);
    Client c(path, "{\"cmd\":\"list\"}\n");
    REQUIRE(run_until(loop, [&c]() {
      c.pump();
      return c.lines() >= 1;
    }));
    CHECK(c.in == "{\"ok\":true,\"n\":1}\n");
    // A second server on the same path finds the first one listening.
    CHECK_THROWS_WITH_AS(ControlServer(loop, path, "", h),
                         ("--control " + path + ": a running process is listening on it").c_str(),
                         std::runtime_error);
    // ...and did not remove its socket.
    Client again(path, "{\"cmd\":\"list\"}\n");
    REQUIRE(run_until(loop, [&again]() {
      again.pump();
      return again.lines() >= 1;
    }));
  }

  std::ofstream(path) << "someone's file\n";
  CHECK_THROWS_WITH_AS(ControlServer(loop, path, "", h),
                       ("--control " + path + ": exists and is not a socket: refusing to replace it").c_str(),
                       std::runtime_error);
  std::ifstream in(path);
  std::string kept;
  std::getline(in, kept);
  CHECK(kept == "someone's file");
  std::filesystem::remove(path);

  REQUIRE(mkdir(path.c_str(), 0700) == 0);
  CHECK_THROWS_WITH_AS(ControlServer(loop, path, "", h),
                       ("--control " + path + ": exists and is not a socket: refusing to replace it").c_str(),
                       std::runtime_error);
  CHECK(std::filesystem::is_directory(path));
}

namespace {

// Forks a child that drops to nobody (uid 65534, no supplementary groups) with the given
// gid, connects, sends a list request and writes whatever it receives into a pipe. Returns
// what the child received, read on the loop while the server runs.
std::string request_as_nobody(EventLoop& loop, const std::string& path, gid_t gid) {
  int p[2];
  REQUIRE(pipe2(p, O_CLOEXEC) == 0);
  std::fflush(nullptr);
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    close(p[0]);
    if (setgroups(0, nullptr) != 0 || setresgid(gid, gid, gid) != 0 || setresuid(65534, 65534, 65534) != 0)
      _exit(3);
    const int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::memcpy(sa.sun_path, path.data(), path.size());
    if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
      const std::string e = std::string("connect: ") + std::strerror(errno);
      (void)!write(p[1], e.data(), e.size());
      _exit(4);
    }
    const char req[] = "{\"cmd\":\"list\"}\n";
    (void)!send(fd, req, sizeof req - 1, MSG_NOSIGNAL);
    char buf[4096];
    ssize_t n;
    while ((n = recv(fd, buf, sizeof buf, 0)) > 0) {
      (void)!write(p[1], buf, std::size_t(n));
      if (std::memchr(buf, '\n', std::size_t(n))) break;  // one reply line is all it waits for
    }
    _exit(0);
  }
  close(p[1]);
  fcntl(p[0], F_SETFL, O_NONBLOCK);
  std::string got;
  bool done = false;
  run_until(loop, [&]() {
    char buf[4096];
    for (;;) {
      const ssize_t n = read(p[0], buf, sizeof buf);
      if (n > 0) {
        got.append(buf, std::size_t(n));
        continue;
      }
      if (n == 0) done = true;
      break;
    }
    return done;
  });
  close(p[0]);
  if (!done) kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  return got;
}

}  // namespace

TEST_CASE("SO_PEERCRED: a peer outside root and the control group is refused before it is read") {
  if (geteuid() != 0) {
    MESSAGE("skipped: needs root to become nobody");
    return;
  }
  TempDir dir;
  const std::string path = dir.path + "/control";
  REQUIRE(chmod(dir.path.c_str(), 0755) == 0);  // nobody must reach the socket through it
  EventLoop loop;
  FakeHandler h;
  ControlServer server(loop, path, "daemon", h);
  // Open the file to everyone, so that the kernel's permission check lets nobody connect
  // and what refuses it is the server's own check.
  REQUIRE(chmod(path.c_str(), 0666) == 0);

  const std::string refused = request_as_nobody(loop, path, 65534);
  CHECK(refused ==
        "{\"ok\":false,\"error\":\"uid 65534 may not use the control socket: it needs root or group " +
            std::to_string(group_gid("daemon")) + "\"}\n");
  CHECK(server.refused_peers() == 1);
  CHECK(h.seen.empty());

  // The same user, running with the control group as its gid, is let in.
  const std::string allowed = request_as_nobody(loop, path, group_gid("daemon"));
  CHECK(allowed == "{\"ok\":true,\"n\":1}\n");
  CHECK(server.refused_peers() == 1);
  CHECK(h.seen.size() == 1);
}

TEST_CASE("SO_PEERCRED: without --control-group only root is let in") {
  if (geteuid() != 0) {
    MESSAGE("skipped: needs root to become nobody");
    return;
  }
  TempDir dir;
  const std::string path = dir.path + "/control";
  REQUIRE(chmod(dir.path.c_str(), 0755) == 0);
  EventLoop loop;
  FakeHandler h;
  ControlServer server(loop, path, "", h);
  REQUIRE(chmod(path.c_str(), 0666) == 0);
  // gid 0 is the socket's group here, yet a non-root peer with gid 0 is still refused.
  const std::string got = request_as_nobody(loop, path, 0);
  CHECK(got.find("may not use the control socket") != std::string::npos);
  CHECK(got.find("no --control-group is set") != std::string::npos);
  CHECK(server.refused_peers() == 1);
  CHECK(h.seen.empty());
}

TEST_CASE("a line over 2 MiB gets an error reply and the connection is closed") {
  if (geteuid() != 0) {
    MESSAGE("skipped: needs root");
    return;
  }
  TempDir dir;
  const std::string path = dir.path + "/control";
  EventLoop loop;
  FakeHandler h;
  ControlServer server(loop, path, "", h);
  Client c(path, std::string(kMaxCtlLine + 4096, 'x'));
  REQUIRE(run_until(loop, [&c]() {
    c.pump();
    return c.eof;
  }));
  CHECK(c.in == "{\"ok\":false,\"error\":\"request longer than 2 MiB\"}\n");
  CHECK(h.seen.empty());
  CHECK(server.connections() == 0);

  // The bound holds with the newline present too: the line is refused, not served.
  Client d(path, "{\"cmd\":\"list\",\"x\":\"" + std::string(kMaxCtlLine, 'y') + "\"}\n");
  REQUIRE(run_until(loop, [&d]() {
    d.pump();
    return d.eof;
  }));
  CHECK(d.in == "{\"ok\":false,\"error\":\"request longer than 2 MiB\"}\n");
  CHECK(h.seen.empty());
}

TEST_CASE("a 65th connection is closed at once; a freed slot is usable again") {
  if (geteuid() != 0) {
    MESSAGE("skipped: needs root");
    return;
  }
  TempDir dir;
  const std::string path = dir.path + "/control";
  EventLoop loop;
  FakeHandler h;
  ControlServer server(loop, path, "", h);
  std::vector<std::unique_ptr<Client>> clients;
  for (int i = 0; i < 64; ++i) {
    clients.push_back(std::make_unique<Client>(path));
    if (i % 16 == 15)  // accept as they come, so the listen backlog never fills
      REQUIRE(run_until(loop, [&server, i]() { return server.connections() == std::size_t(i + 1); }));
  }
  Client extra(path, "{\"cmd\":\"list\"}\n");
  REQUIRE(run_until(loop, [&extra]() {
    extra.pump();
    return extra.eof;
  }));
  CHECK(extra.in.empty());
  CHECK(server.dropped_conns() == 1);
  CHECK(server.connections() == 64);
  CHECK(h.seen.empty());

  clients.pop_back();
  REQUIRE(run_until(loop, [&server]() { return server.connections() == 63; }));
  Client next(path, "{\"cmd\":\"list\"}\n");
  REQUIRE(run_until(loop, [&next]() {
    next.pump();
    return next.lines() == 1;
  }));
  CHECK(next.in == "{\"ok\":true,\"n\":1}\n");
}

TEST_CASE("a handler that throws costs one error reply, not the loop") {
  if (geteuid() != 0) {
    MESSAGE("skipped: needs root");
    return;
  }
  struct Throwing : ControlHandler {
    std::string handle(const CtlRequest&) override { throw std::runtime_error("boom"); }
  } h;
  TempDir dir;
  const std::string path = dir.path + "/control";
  EventLoop loop;
  ControlServer server(loop, path, "", h);
  Client c(path, "{\"cmd\":\"list\"}\n{\"cmd\":\"list\"}\n");
  REQUIRE(run_until(loop, [&c]() {
    c.pump();
    return c.lines() == 2;
  }));
  CHECK(c.in == "{\"ok\":false,\"error\":\"internal error: boom\"}\n{\"ok\":false,\"error\":\"internal error: boom\"}\n");
}

TEST_CASE("dnsward ctl: usage errors exit 2, an unreachable socket exits 1") {
  const std::vector<std::vector<std::string>> usage = {
      {},
      {"frob"},
      {"--bogus", "list"},
      {"--control"},
      {"add"},
      {"add", "--addr", "10.0.0.2", "--iface", "t"},  // no ID first
      {"add", "a", "--iface", "t"},
      {"add", "a", "--addr", "10.0.0.2"},
      {"add", "a", "--addr", "10.0.0.300", "--iface", "t"},
      {"add", "a", "--addr", "10.0.0.2", "--iface", "t", "--mode", "strict"},
      {"add", "a", "--addr", "10.0.0.2", "--iface", "t", "--iface", "u"},
      {"add", "a", "--addr", "10.0.0.2", "--iface", "t", "--colour"},
      {"add", "a", "--addr", "10.0.0.2", "10.0.0.2", "--iface", "t"},
      {"add", ".a", "--addr", "10.0.0.2", "--iface", "t"},
      {"remove"},
      {"remove", "a", "b"},
      {"show", "a/b"},
      {"list", "x"},
      {"explain", "a"},
      {"list", "--verbose"},
  };
  for (const auto& args : usage) {
    std::string shown;
    for (const auto& a : args) shown += a + " ";
    CAPTURE(shown);
    CHECK(ctl_main(args) == 2);
  }
  TempDir dir;
  CHECK(ctl_main({"--control", dir.path + "/nothing-here", "list"}) == 1);
  CHECK(ctl_main({"--control=" + dir.path + "/nothing-here", "list"}) == 1);
  CHECK(ctl_main({"--help"}) == 0);
}

namespace {

struct CtlRun {
  int status = -1;
  std::string out;
};

// Runs ctl_main(args) in a forked child (it blocks on its socket) while the loop serves the
// server; returns its exit status and standard output.
CtlRun run_ctl(EventLoop& loop, const std::vector<std::string>& args, const std::string& stdin_text = "") {
  int out[2], in[2];
  REQUIRE(pipe2(out, O_CLOEXEC) == 0);
  REQUIRE(pipe2(in, O_CLOEXEC) == 0);
  std::fflush(nullptr);  // or the child would write the parent's buffered output again
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    close(out[0]);
    close(in[1]);  // or its standard input would never end
    dup2(out[1], 1);
    dup2(in[0], 0);
    _exit(ctl_main(args));
  }
  close(out[1]);
  close(in[0]);
  (void)!write(in[1], stdin_text.data(), stdin_text.size());
  close(in[1]);
  fcntl(out[0], F_SETFL, O_NONBLOCK);
  CtlRun r;
  bool done = false;
  run_until(loop, [&]() {
    char buf[4096];
    for (;;) {
      const ssize_t n = read(out[0], buf, sizeof buf);
      if (n > 0) {
        r.out.append(buf, std::size_t(n));
        continue;
      }
      if (n == 0) done = true;
      break;
    }
    return done;
  });
  close(out[0]);
  if (!done) kill(pid, SIGKILL);
  int st = 0;
  waitpid(pid, &st, 0);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

}  // namespace

TEST_CASE("dnsward ctl sends the request it was given, prints the reply and exits by its ok") {
  if (geteuid() != 0) {
    MESSAGE("skipped: needs root");
    return;
  }
  TempDir dir;
  const std::string path = dir.path + "/control";
  EventLoop loop;
  FakeHandler h;
  ControlServer server(loop, path, "", h);

  const CtlRun add = run_ctl(loop, {"--control", path, "add", "vm1", "--addr", "100.64.1.2", "fd64:1::2",
                                    "--iface", "tap1", "--allowlist", "rel/x.allow", "--allowlist=/etc/y.allow",
                                    "--allowlist-text", "pypi.org", "--allowlist-stdin", "--no-default",
                                    "--mode", "audit"},
                             "*.example.com\n# from stdin");
  CHECK(add.status == 0);
  CHECK(add.out == "{\"ok\":true,\"n\":1}\n");
  REQUIRE(h.seen.size() == 1);
  const SandboxSpec& s = h.seen[0].spec;
  CHECK(h.seen[0].cmd == CtlRequest::Cmd::Add);
  CHECK(s.id == "vm1");
  REQUIRE(s.addrs.size() == 2);
  CHECK(s.addrs[0].text() == "100.64.1.2");
  CHECK(s.addrs[1].text() == "fd64:1::2");
  CHECK(s.iface == "tap1");
  char* cwd = realpath(".", nullptr);
  REQUIRE(cwd != nullptr);
  CHECK(s.allowlists == std::vector<std::string>{std::string(cwd) + "/rel/x.allow", "/etc/y.allow"});
  free(cwd);
  CHECK(s.allowlist_text == "pypi.org\n*.example.com\n# from stdin\n");
  CHECK_FALSE(s.default_list);
  CHECK(s.audit);

  h.reply = "{\"ok\":false,\"error\":\"no such sandbox\"}";
  const CtlRun explain = run_ctl(loop, {"--control", path, "explain", "vm2", "pypi.org"});
  CHECK(explain.status == 1);
  CHECK(explain.out == "{\"ok\":false,\"error\":\"no such sandbox\"}\n");
  REQUIRE(h.seen.size() == 2);
  CHECK(h.seen[1].cmd == CtlRequest::Cmd::Explain);
  CHECK(h.seen[1].spec.id == "vm2");
  CHECK(h.seen[1].name == "pypi.org");

  h.reply = " { \"ok\" : true, \"sandboxes\": [] }";
  const CtlRun list = run_ctl(loop, {"--control", path, "list"});
  CHECK(list.status == 0);
  REQUIRE(h.seen.size() == 3);
  CHECK(h.seen[2].cmd == CtlRequest::Cmd::List);
}
