// forget_flows_from() / count_flows_from() against the REAL kernel's conntrack table.
//
// The process enters a network namespace of its own first (unshare(CLONE_NEWNET)): its
// conntrack table starts empty and the host's is never touched. The guest addresses are put
// on lo, a tiny nftables ruleset makes conntrack track (any rule using ct does), and real
// TCP connections and UDP flows from those sources to listeners on 127.0.0.1 / ::1 create
// the entries. Without root (or without namespaces) it exits with kSkipCode, which ctest
// reports as Not Run.
//
// No sleeps: on loopback, connect() returns with the handshake done and sendto() has
// passed the packet through conntrack before it returns.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "dnsward/answer.hpp"
#include "dnsward/conntrack.hpp"

using namespace dnsward;

namespace {

constexpr int kSkipCode = 77;  // SKIP_RETURN_CODE of the ctest entry

/// Runs a command line through the shell, in this process's network namespace.
int sh(const std::string& cmd) {
  const int st = std::system(cmd.c_str());
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

IpAddr addr(const char* s) {
  IpAddr a;
  REQUIRE_MESSAGE(IpAddr::parse(s, a), s);
  return a;
}

sockaddr_storage sockaddr_of(const IpAddr& a, uint16_t port, socklen_t& len) {
  sockaddr_storage ss{};
  if (a.family == AF_INET) {
    auto* s4 = reinterpret_cast<sockaddr_in*>(&ss);
    s4->sin_family = AF_INET;
    s4->sin_port = htons(port);
    std::memcpy(&s4->sin_addr, a.bytes, 4);
    len = sizeof(sockaddr_in);
  } else {
    auto* s6 = reinterpret_cast<sockaddr_in6*>(&ss);
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons(port);
    std::memcpy(&s6->sin6_addr, a.bytes, 16);
    len = sizeof(sockaddr_in6);
  }
  return ss;
}

/// Sockets kept open for the length of a test (a flow's entry does not need them, but
/// closing them would send FINs and change states mid-test).
struct Fds {
  std::vector<int> fds;
  ~Fds() {
    for (int fd : fds) close(fd);
  }
  int add(int fd) {
    REQUIRE_MESSAGE(fd >= 0, std::strerror(errno));
    fds.push_back(fd);
    // TCP sockets close with a RST (no FIN exchange whose last ACK conntrack would take up
    // as a new, mid-stream entry); clean() deletes what the RSTs leave.
    const linger l{1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    return fd;
  }
};

/// A socket of type bound to a:port (port 0: any), kept in fds.
int bound(Fds& fds, int type, const IpAddr& a, uint16_t port) {
  const int fd = fds.add(socket(a.family, type | SOCK_CLOEXEC, 0));
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  socklen_t len = 0;
  const sockaddr_storage ss = sockaddr_of(a, port, len);
  REQUIRE_MESSAGE(bind(fd, reinterpret_cast<const sockaddr*>(&ss), len) == 0,
                  a.text() << ": " << std::strerror(errno));
  return fd;
}

uint16_t local_port(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  REQUIRE(getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0);
  return ntohs(ss.ss_family == AF_INET ? reinterpret_cast<sockaddr_in*>(&ss)->sin_port
                                       : reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
}

/// Listeners (TCP and UDP) on the loopback address of each family.
struct Servers {
  Fds fds;
  IpAddr lo4 = addr("127.0.0.1"), lo6 = addr("::1");
  int tcp4, tcp6, udp4, udp6;
  uint16_t tcp4_port, tcp6_port, udp4_port, udp6_port;
  Servers() {
    tcp4 = bound(fds, SOCK_STREAM, lo4, 0);
    tcp6 = bound(fds, SOCK_STREAM, lo6, 0);
    REQUIRE(listen(tcp4, 128) == 0);
    REQUIRE(listen(tcp6, 128) == 0);
    udp4 = bound(fds, SOCK_DGRAM, lo4, 0);
    udp6 = bound(fds, SOCK_DGRAM, lo6, 0);
    tcp4_port = local_port(tcp4);
    tcp6_port = local_port(tcp6);
    udp4_port = local_port(udp4);
    udp6_port = local_port(udp6);
  }
};

/// Opens n TCP connections and n UDP flows from src to the servers: 2n entries whose
/// original source is src.
void flows_from(Fds& fds, Servers& sv, const IpAddr& src, int n) {
  const bool v4 = src.family == AF_INET;
  for (int i = 0; i < n; ++i) {
    const int c = bound(fds, SOCK_STREAM, src, 0);
    socklen_t len = 0;
    const sockaddr_storage to = sockaddr_of(v4 ? sv.lo4 : sv.lo6, v4 ? sv.tcp4_port : sv.tcp6_port, len);
    REQUIRE_MESSAGE(connect(c, reinterpret_cast<const sockaddr*>(&to), len) == 0,
                    src.text() << ": " << std::strerror(errno));
    fds.add(accept4(v4 ? sv.tcp4 : sv.tcp6, nullptr, nullptr, SOCK_CLOEXEC));

    const int u = bound(fds, SOCK_DGRAM, src, 0);
    const sockaddr_storage uto = sockaddr_of(v4 ? sv.lo4 : sv.lo6, v4 ? sv.udp4_port : sv.udp6_port, len);
    REQUIRE(sendto(u, "x", 1, 0, reinterpret_cast<const sockaddr*>(&uto), len) == 1);
  }
}

std::size_t count(const std::vector<IpAddr>& addrs) {
  std::size_t n = 0;
  std::string err;
  REQUIRE_MESSAGE(count_flows_from(addrs, n, err), err);
  return n;
}

std::size_t forget(const std::vector<IpAddr>& addrs) {
  std::size_t n = 0;
  std::string err;
  REQUIRE_MESSAGE(forget_flows_from(addrs, n, err), err);
  return n;
}

/// Every conntrack entry of this namespace, counted through /proc (independent of the
/// code under test).
std::size_t proc_count() {
  FILE* f = std::fopen("/proc/sys/net/netfilter/nf_conntrack_count", "r");
  REQUIRE(f);
  unsigned long n = 0;
  REQUIRE(std::fscanf(f, "%lu", &n) == 1);
  std::fclose(f);
  return n;
}

void setup_namespace();

/// Starts a test case on an empty table: what earlier cases (or the closing of their
/// sockets) left is deleted, and /proc confirms the table is empty.
void clean() {
  setup_namespace();
  std::vector<IpAddr> all;
  for (const char* s : {"127.0.0.1", "::1", "100.64.1.2", "100.64.1.3", "100.64.1.4", "100.64.2.2",
                        "100.64.3.2", "fd64:1::2", "fd64:2::2", "fd64:3::2"})
    all.push_back(addr(s));
  forget(all);
  REQUIRE(proc_count() == 0);
}

/// The namespace's setup, once: lo up with the guest addresses, and a ruleset that tracks
/// (and puts two sources into zones: 100.64.1.3 into zone 7 both ways, 100.64.1.4 into
/// zone 9 for the original direction only).
void setup_namespace() {
  static bool done = false;  // once, even if it fails (the first case reports why)
  if (done) return;
  done = true;
  REQUIRE(sh("ip link set lo up") == 0);
  for (const char* a : {"100.64.1.2/32", "100.64.1.3/32", "100.64.1.4/32", "100.64.2.2/32", "100.64.3.2/32"})
    REQUIRE(sh(std::string("ip addr add ") + a + " dev lo") == 0);
  for (const char* a : {"fd64:1::2/128", "fd64:2::2/128", "fd64:3::2/128"})
    REQUIRE(sh(std::string("ip addr add ") + a + " dev lo nodad") == 0);
  const char* ruleset =
      "table inet ctt {\n"
      "  chain raw_out { type filter hook output priority raw;\n"
      "    ip saddr 100.64.1.3 ct zone set 7\n"
      "    ip daddr 100.64.1.3 ct zone set 7\n"
      "    ip saddr 100.64.1.4 ct original zone set 9\n"
      "    ip daddr 100.64.1.4 ct original zone set 9\n"
      "  }\n"
      "  chain out { type filter hook output priority filter;\n"
      "    ct state new counter\n"
      "  }\n"
      "}\n";
  char path[] = "/tmp/dnsward-ct-XXXXXX";
  const int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  const std::size_t len = std::strlen(ruleset);
  const bool written = write(fd, ruleset, len) == ssize_t(len);
  close(fd);
  const int rc = written ? sh(std::string("nft -f ") + path) : -1;
  unlink(path);
  REQUIRE(rc == 0);
}

}  // namespace

TEST_CASE("forget_flows_from deletes exactly the entries of the given original sources") {
  clean();
  Servers sv;
  Fds fds;
  const IpAddr a1 = addr("100.64.1.2"), a2 = addr("100.64.2.2"), a6 = addr("fd64:1::2"),
               b6 = addr("fd64:2::2"), lo4 = addr("127.0.0.1");
  const std::size_t before = proc_count();
  flows_from(fds, sv, a1, 5);
  flows_from(fds, sv, a2, 4);
  flows_from(fds, sv, a6, 3);
  flows_from(fds, sv, b6, 2);
  // A flow whose REPLY comes from 100.64.1.2: its original source is 127.0.0.1, so it stays.
  {
    const int u = bound(fds, SOCK_DGRAM, lo4, 0);
    const int r = bound(fds, SOCK_DGRAM, a1, 0);
    socklen_t len = 0;
    const sockaddr_storage to = sockaddr_of(a1, local_port(r), len);
    REQUIRE(sendto(u, "x", 1, 0, reinterpret_cast<const sockaddr*>(&to), len) == 1);
  }
  REQUIRE(proc_count() == before + 2 * (5 + 4 + 3 + 2) + 1);

  CHECK(count({a1}) == 10);
  CHECK(count({a2}) == 8);
  CHECK(count({a6}) == 6);
  CHECK(count({b6}) == 4);
  CHECK(count({a1, a6}) == 16);
  CHECK(count({a1, a1, a6}) == 16);  // duplicates count once
  const std::size_t from_lo = count({lo4});
  CHECK(from_lo >= 1);
  // More IPv4 addresses than get a filtered dump each: one family dump, the same answer.
  std::vector<IpAddr> many{a1};
  for (int i = 0; i < 12; ++i) many.push_back(addr(("198.51.100." + std::to_string(i + 1)).c_str()));
  CHECK(count(many) == 10);

  SUBCASE("an empty list deletes nothing") {
    CHECK(forget({}) == 0);
    CHECK(count({a1}) == 10);
    CHECK(count({a2}) == 8);
  }
  SUBCASE("forget, then forget again") {
    CHECK(forget({a1, a6}) == 16);
    CHECK(count({a1}) == 0);
    CHECK(count({a6}) == 0);
    CHECK(count({a2}) == 8);  // exact: the neighbours' entries all remain
    CHECK(count({b6}) == 4);
    CHECK(count({lo4}) == from_lo);
    CHECK(proc_count() == before + 2 * (4 + 2) + 1);
    // A second call finds nothing and is no error.
    CHECK(forget({a1, a6}) == 0);
    CHECK(count({a2}) == 8);
  }
  SUBCASE("many IPv4 addresses at once") {
    CHECK(forget(many) == 10);
    CHECK(count({a1}) == 0);
    CHECK(count({a2}) == 8);
  }
}

TEST_CASE("entries in other zones go too, whether the zone covers both directions or one") {
  clean();
  Servers sv;
  Fds fds;
  const IpAddr z7 = addr("100.64.1.3"), z9 = addr("100.64.1.4"), other = addr("100.64.2.2");
  flows_from(fds, sv, z7, 3);
  flows_from(fds, sv, z9, 2);
  flows_from(fds, sv, other, 2);
  CHECK(count({z7}) == 6);
  CHECK(count({z9}) == 4);
  CHECK(forget({z7, z9}) == 10);
  CHECK(count({z7, z9}) == 0);
  CHECK(count({other}) == 4);
}

TEST_CASE("timing: forgetting a few flows among 10,000 others") {
  clean();
  Servers sv;
  Fds fds;
  const IpAddr a1 = addr("100.64.1.2"), a6 = addr("fd64:1::2"), noise4 = addr("100.64.3.2"),
               noise6 = addr("fd64:3::2");
  flows_from(fds, sv, a1, 5);
  flows_from(fds, sv, a6, 5);
  // 10,000 UDP entries of each family from other sources: one socket, distinct ports. No
  // listener: the port unreachable errors are RELATED to these entries and add none.
  for (const IpAddr& src : {noise4, noise6}) {
    const int u = bound(fds, SOCK_DGRAM, src, 0);
    for (int p = 0; p < 10000; ++p) {
      socklen_t len = 0;
      const sockaddr_storage to = sockaddr_of(src.family == AF_INET ? sv.lo4 : sv.lo6, uint16_t(20000 + p), len);
      REQUIRE(sendto(u, "x", 1, 0, reinterpret_cast<const sockaddr*>(&to), len) == 1);
    }
  }
  CHECK(count({noise4}) == 10000);
  CHECK(count({noise6}) == 10000);
  const auto t0 = std::chrono::steady_clock::now();
  CHECK(forget({a1}) == 10);
  const auto t1 = std::chrono::steady_clock::now();
  CHECK(forget({a6}) == 10);
  const auto t2 = std::chrono::steady_clock::now();
  const auto us = [](auto d) { return std::chrono::duration_cast<std::chrono::microseconds>(d).count(); };
  MESSAGE("forget 10 IPv4 flows (filtered dump) in a table of 20,020 entries: " << us(t1 - t0)
          << " us; 10 IPv6 flows (dump of the 10,010 IPv6 entries) in a table of 20,010: "
          << us(t2 - t1) << " us");
  // The whole of the noise at once: deletes in chunks.
  const auto t3 = std::chrono::steady_clock::now();
  CHECK(forget({noise4, noise6}) == 20000);
  const auto t4 = std::chrono::steady_clock::now();
  MESSAGE("forget 20,000 entries: " << us(t4 - t3) << " us");
  CHECK(count({noise4, noise6}) == 0);
}

TEST_CASE("more matches than one round collects: deleted in rounds") {
  clean();
  Fds fds;
  const IpAddr noise4 = addr("100.64.3.2"), other = addr("100.64.2.2");
  const std::size_t n = kConntrackRoundEntries + 464;  // 66,000
  const int u = bound(fds, SOCK_DGRAM, noise4, 0);
  for (std::size_t i = 0; i < n; ++i) {
    socklen_t len = 0;
    const sockaddr_storage to = sockaddr_of(addr(i % 2 ? "127.0.0.2" : "127.0.0.1"), uint16_t(1024 + i / 2), len);
    if (sendto(u, "x", 1, 0, reinterpret_cast<const sockaddr*>(&to), len) != 1) REQUIRE(false);
  }
  const int v = bound(fds, SOCK_DGRAM, other, 0);
  socklen_t len = 0;
  const sockaddr_storage to = sockaddr_of(addr("127.0.0.1"), 9, len);
  REQUIRE(sendto(v, "x", 1, 0, reinterpret_cast<const sockaddr*>(&to), len) == 1);
  REQUIRE(proc_count() == n + 1);
  CHECK(count({noise4}) == n);
  CHECK(forget({noise4}) == n);
  CHECK(count({noise4}) == 0);
  CHECK(count({other}) == 1);
  CHECK(proc_count() == 1);
}

int main(int argc, char** argv) {
  // A network namespace of our own: an empty conntrack table of the real kernel, the
  // host's untouched. Needs root (CAP_SYS_ADMIN); otherwise the tests cannot run at all.
  if (geteuid() != 0 || unshare(CLONE_NEWNET) != 0) {
    std::fprintf(stderr, "kernel conntrack tests skipped: need root and unshare(CLONE_NEWNET) (%s)\n",
                 geteuid() != 0 ? "not root" : std::strerror(errno));
    return kSkipCode;
  }
  // A wait that never ends (a deadline lost) must fail the run, not hang it.
  alarm(120);
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
