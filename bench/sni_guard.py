"""The first-flight guard's cost (issue 13), in the world of test/e2e/test_sni_guard.py (an
"internet" namespace with knot and a front end, a "vm" namespace with dnsward as its only
resolver and the ruleset of `nft-rules --sni-guard`):

- dnsward's CPU per guarded connection: utime+stime from /proc/PID/stat over N connections
  that each send one canned ClientHello (built once, so the client spends no crypto) to a
  bare server on port 8443 that answers with a canned ServerHello; no DNS during the run.
- the added connection-setup latency, p50 and p99: connect() to the server's first bytes,
  the same N connections with the guard and then without it (the ruleset reloaded without
  --sni-guard and the address vouched again), run after run alternating.
- memory per bound name: dnsward's RSS before and after binding ELEMENTS x 32 names (a
  wildcard zone, each name its own query, 32 names to each address).
- with PERF=1, where dnsward's CPU goes: one more guarded run (not in the medians) under
  `perf record -g -p PID`, its samples split into the packet carried on after a verdict
  (everything under nfqnl_reinject, the receiving side's TCP included), task switches
  (finish_task_switch: dnsward sleeps in epoll_wait between packets), dnsward's own code
  (user space) and the rest of the kernel (reading packets and writing verdicts).

Run as root from the repository: bench/run-sni-guard [build-dir]."""
import os
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "test", "e2e"))
build = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "build")
os.environ["DNSWARD_BIN"] = os.path.abspath(os.path.join(build, "dnsward"))

import sni_polyglot  # noqa: E402 - its ClientHello maker
import test_sni_guard as world  # noqa: E402

N = int(os.environ.get("CONNS", "3000"))
RUNS = int(os.environ.get("RUNS", "3"))
ELEMENTS = int(os.environ.get("ELEMENTS", "500"))
NAMES = 32  # per element: the default --max-names-per-element

# The bare front end on 8443: reads the first bytes, answers with a TLS 1.3 ServerHello
# record (canned: the guard reads the server's first record, which says that no second
# ClientHello comes, RFC 8446 4.1.4), reads the client's next flight, answers a byte, closes.
BARE = r"""
import socket, threading
body = bytes([3, 3]) + bytes(range(0x40, 0x60)) + bytes([32]) + bytes(range(0xa0, 0xc0)) + bytes([0x13, 1, 0, 0, 6, 0, 43, 0, 2, 3, 4])
SH = bytes([22, 3, 3]) + (len(body) + 4).to_bytes(2, "big") + bytes([2]) + len(body).to_bytes(3, "big") + body
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8443))
s.listen(1024)
print("ready", flush=True)
def one(c):
    try:
        c.settimeout(5)
        if c.recv(65536):
            c.sendall(SH)
            if c.recv(65536):
                c.sendall(b"y")
    except OSError:
        pass
    finally:
        c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=one, args=(c,), daemon=True).start()
"""

# In the vm: N connections one after another, each sending the canned ClientHello (TLS 1.3),
# waiting for the ServerHello, then sending a next flight as a TLS 1.3 client does (an
# application_data record the size of an encrypted Finished) and waiting for the second
# answer; prints each setup latency (connect() to the first answer) in microseconds (0:
# failed).
CLIENT = r"""
import socket, sys, time
addr, n, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
SH_LEN = 87  # the bare front end's ServerHello record
hello = open(path, "rb").read()
out = []
for _ in range(n):
    t0 = time.perf_counter_ns()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect((addr, 8443))
        s.sendall(hello)
        got = s.recv(SH_LEN)
        t1 = time.perf_counter_ns()
        while got and len(got) < SH_LEN:  # the rest of the ServerHello, if it came in parts
            more = s.recv(SH_LEN - len(got))
            if not more:
                break
            got += more
        ok = len(got) == SH_LEN and got[0] == 22
        s.sendall(bytes([23, 3, 3, 0, 53]) + bytes(53))
        ok = ok and s.recv(1) == b"y"
    except OSError:
        ok = False
    s.close()
    out.append((t1 - t0) // 1000 if ok else 0)
print(" ".join(map(str, out)))
"""


def canned_hello(name):
    return sni_polyglot.hello(name, ["http/1.1"])[3]


def cpu_ticks(pid):
    """(utime, stime) in clock ticks: fields 14 and 15 of /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def machine_ticks():
    """Busy clock ticks of the whole machine (every process and the kernel's softirqs)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[0] + v[1] + v[2] + v[5] + v[6]  # user nice system irq softirq


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * p / 100))]


def children_cpu_us():
    """User + system time of the finished child processes (the clients), in microseconds."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (ru.ru_utime + ru.ru_stime) * 1e6


def run_clients(path):
    r = world.in_vm("/usr/bin/python3", os.path.join(world.workdir, "bench_client.py"), world.SHARED,
                    str(N), path, timeout=600)
    lat = [int(x) for x in r.stdout.split()]
    failed = sum(1 for x in lat if x == 0)
    return [x for x in lat if x], failed


def perf_split(data):
    """Shares of dnsward's perf samples (percent): the packet carried on after a verdict, task
    switches, user space, the rest of the kernel."""
    def report(*args):
        return subprocess.run(["perf", "report", "-i", data, "--stdio", *args], capture_output=True, text=True,
                              timeout=300).stdout
    def share(text, symbol, column):
        for line in text.splitlines():
            f = line.split()
            if len(f) >= 4 and f[3] == symbol and f[0].endswith("%"):
                return float(f[column].rstrip("%"))
        return 0.0
    children = report("--children", "--sort", "symbol", "-g", "none")
    onward = share(children, "nfqnl_reinject", 0)
    switches = share(children, "finish_task_switch.isra.0", 1) or share(children, "finish_task_switch", 1)
    kernel = sum(float(l.split()[0].rstrip("%")) for l in report("--no-children", "--sort", "dso", "-g", "none").splitlines()
                 if "[kernel.kallsyms]" in l.split()[1:2] and l.split()[0].endswith("%"))
    user = 100.0 - kernel
    return onward, switches, user, 100.0 - onward - switches - user


def load_rules(guard):
    extra = ["--sni-guard", "--queue-backend", world.backend, *world.GUARD_OPTIONS] if guard else []
    rules = world.sh(world.BIN, "nft-rules", "--upstream", world.DNS_IP, "--user", "dnsward", *extra).stdout
    world.in_vm("nft", "-f", "-", input=rules)
    if world.backend == "xt":
        world.in_vm("iptables-nft", "-t", "mangle", "-F", "DNSWARD_GUARD")
        if guard:
            xt = world.sh(world.BIN, "nft-rules", "--sni-guard", "--queue-backend", "xt", "--print", "iptables",
                          *world.GUARD_OPTIONS).stdout
            world.in_vm("iptables-nft-restore", "--noflush", input=xt)
    # A reloaded table is empty: vouch the front end again.
    world.wait_for(lambda: world.curl("http://www.allowed.test/")[1] == 200, timeout=20,
                   what="the front end vouched again")


def main():
    world.LOG_LEVEL = "info"
    world.GUARD_OPTIONS = ["--sni-ports", "443", "--sni-ports", "8443"]
    world.ZONE += "".join(f"*.e{i}.bench A 198.18.{2 + i // 250}.{1 + i % 250}\n" for i in range(ELEMENTS))
    world.ALLOW += "**.bench.test\n"
    world.setUpModule()
    try:
        with open(os.path.join(world.workdir, "bench_client.py"), "w") as f:
            f.write(CLIENT)
        with open(os.path.join(world.workdir, "bare.py"), "w") as f:
            f.write(BARE)
        hello = os.path.join(world.workdir, "hello.bin")
        with open(hello, "wb") as f:
            f.write(canned_hello("www.allowed.test"))
        log = open(os.path.join(world.workdir, "bare.log"), "w")
        world.logs.append(log)
        world.start(world.INET, "/usr/bin/python3", os.path.join(world.workdir, "bare.py"), log=log)
        world.wait_for(lambda: "ready" in open(os.path.join(world.workdir, "bare.log")).read(), timeout=10,
                       what="the bare front end")
        pid = world.dnsward.pid
        print(f"backend={world.backend} connections={N} runs={RUNS} clienthello_bytes={os.path.getsize(hello)}")
        print(f"load average before: {open('/proc/loadavg').read().split()[0]}")
        # Memory per bound name: 32 names to each of ELEMENTS addresses, first (the heap the
        # connections' state leaves behind would take them in unseen).
        load_rules(True)
        rss0 = rss_kib(pid)
        prog = ("import dns.message, dns.query, sys\n"
                f"for i in range({ELEMENTS}):\n"
                f"  for j in range({NAMES}):\n"
                "    q = dns.message.make_query(f'n{j}.e{i}.bench.test', 'A')\n"
                "    r = dns.query.udp(q, '127.0.0.1', timeout=3)\n"
                "    assert r.rcode() == 0, r\n")
        world.in_vm("/usr/bin/python3", "-c", prog, timeout=1200)
        rss1 = rss_kib(pid)
        names = ELEMENTS * NAMES
        print(f"memory: RSS {rss0} KiB -> {rss1} KiB after binding {names} names to {ELEMENTS} elements: "
              f"{(rss1 - rss0) * 1024 / names:.0f} bytes per bound name (element, cache entry and name)")
        guarded, plain, cpu_us, machine_added, pair_added = [], [], [], [], []
        for run in range(RUNS):
            load_rules(True)
            u0, s0 = cpu_ticks(pid)
            m0 = machine_ticks()
            c0 = children_cpu_us()
            lat, failed = run_clients(hello)
            client_guard = children_cpu_us() - c0
            u1, s1 = cpu_ticks(pid)
            m_guard = machine_ticks() - m0
            assert failed == 0, f"{failed} guarded connections failed"
            tick_us = 1e6 / os.sysconf("SC_CLK_TCK") / N
            cpu_us.append((u1 - u0 + s1 - s0) * tick_us)
            # System time includes what a verdict sets going in the kernel: the reinjected
            # packet's way through the rest of the stack and across the veth.
            print(f"run {run + 1}: user {(u1 - u0) * tick_us:.1f} us, system {(s1 - s0) * tick_us:.1f} us")
            guarded += lat
            load_rules(False)
            m0 = machine_ticks()
            c0 = children_cpu_us()
            lat, failed = run_clients(hello)
            client_plain = children_cpu_us() - c0
            m_plain = machine_ticks() - m0
            assert failed == 0, f"{failed} unguarded connections failed"
            # The whole machine's CPU, guard minus no guard: what the guard adds, wherever it
            # is charged (noisy on a shared machine: other work lands in both).
            machine_added.append((m_guard - m_plain) * tick_us)
            # The client and dnsward together, guard minus none: a verdict carries the
            # packet on through the stack in dnsward's time that the client's send would
            # otherwise have spent, so dnsward's system time alone overstates what is added.
            pair_added.append((client_guard + (u1 - u0 + s1 - s0) * 1e6 / os.sysconf("SC_CLK_TCK") - client_plain) / N)
            print(f"run {run + 1}: client CPU per connection {client_guard / N:.1f} us with the guard, "
                  f"{client_plain / N:.1f} us without")
            plain += lat
            print(f"run {run + 1}: dnsward CPU per guarded connection {cpu_us[-1]:.1f} us")
        print(f"CPU per guarded connection: median {statistics.median(cpu_us):.1f} us "
              f"(runs: {', '.join(f'{c:.1f}' for c in cpu_us)})")
        print(f"client + dnsward CPU added per connection (guard minus none): median "
              f"{statistics.median(pair_added):.1f} us (runs: {', '.join(f'{c:.1f}' for c in pair_added)})")
        print(f"machine CPU added per connection (guard minus none): median {statistics.median(machine_added):.1f} us "
              f"(runs: {', '.join(f'{c:.1f}' for c in machine_added)})")
        if os.environ.get("PERF") == "1" and not shutil.which("perf"):
            print("profiled run: not run, perf is missing (scripts/install-deps bench installs linux-perf)")
        elif os.environ.get("PERF") == "1":
            load_rules(True)
            data = os.path.join(world.workdir, "perf.data")
            u0, s0 = cpu_ticks(pid)
            rec = subprocess.Popen(["perf", "record", "-q", "-g", "-o", data, "-p", str(pid)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                _, failed = run_clients(hello)
            finally:
                rec.send_signal(signal.SIGINT)  # perf writes its file and exits
                rec.wait(timeout=120)
            u1, s1 = cpu_ticks(pid)
            total = (u1 - u0 + s1 - s0) * 1e6 / os.sysconf("SC_CLK_TCK") / N
            parts = perf_split(data)
            print(f"profiled run (perf attached, not in the medians): {total:.1f} us per connection, of it "
                  + ", ".join(f"{label} {share:.0f}% ({share * total / 100:.0f} us)" for label, share in
                              zip(("the packet carried on after the verdict", "task switches", "user space",
                                   "the rest of the kernel"), parts)))
        for label, v in (("with the guard", guarded), ("without", plain)):
            print(f"setup latency {label}: p50 {pct(v, 50)} us, p99 {pct(v, 99)} us ({len(v)} connections)")
        print(f"added latency: p50 {pct(guarded, 50) - pct(plain, 50)} us, p99 {pct(guarded, 99) - pct(plain, 99)} us")

        print(f"load average after: {open('/proc/loadavg').read().split()[0]}")
    finally:
        world.tearDownModule()


if __name__ == "__main__":
    main()
