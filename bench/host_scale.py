#!/usr/bin/python3
"""Host mode at scale (issue 12): 1,000 and 10,000 sandboxes on one `dnsward serve --host`.

Run through bench/run-host-scale, which enters a network namespace of its own first: dnsward,
its nftables table, the knot upstream and every client live on that namespace's loopback,
where 100.64.0.0/16 is made local (`ip route add local ... dev lo`, AnyIP) so that a client
can send from any sandbox's address. Sandboxes are registered with --iface lo; UDP only.

Sandbox i (1-based) has the address 100.64.(i >> 8).(i & 255) and allowlist file
pol{i % 3}.allow, registered with --no-default (the policy is that file alone, exactly
what the single-sandbox dnsward it is compared with is given with --allowlist): three
policies shared by all, each loaded once.

  1. ctl add latency: sandboxes added one at a time over the control socket (one connection,
     one JSON line each, timed from send to reply), with --sandboxes DIR on this machine's
     disk (ext4; every add is written and fsync'ed), from 0 to 1,000 and from 1,000 to 10,000;
     and `dnsward ctl add` as a process (exec to exit), ADDS_PROC times at each size (those
     sandboxes are removed again over the socket, the removes timed too).
  2. memory per sandbox: VmRSS, RssAnon, Pss and the [heap] mapping of dnsward after
     registering N minus before, over N; no element vouched yet.
  3. CPU per query, host mode with N registered against single-sandbox mode (`serve` without
     --host, same allowlist file, same knot, hook on, its own nftables table) in the same run:
     denied names, one cached allowed name, allowed names never asked before (forwarded; all
     answered by one wildcard address, so this is forwarding, not the netlink add). dnsperf
     (`-a` a sandbox's address, fixed rate) on CPU 1, dnsward on CPU 0; CPU time read from
     /proc/PID/task/*/schedstat (ns; all threads) around each run. REPS runs of each kind
     and mode, interleaved (host and single alternate first), sources rotating over four
     sandboxes; medians and the ratio host / single.
  4. vouch latency with 100,000 elements in the sets: a closed-loop client from one sandbox
     asks LAT names never asked before, each with its own address (a netlink add each), with
     the sets nearly empty; then FILL_SANDBOXES sandboxes each ask the same FILL_NAMES names of
     distinct addresses (one upstream query each, the rest cache hits, each a new
     guest . destination element: 100,000 elements); then another sandbox asks LAT other new
     names. p50/p99 of the answer latency (client side) and of dnsward_vouch_latency_seconds
     (Prometheus histogram, bucket bounds; and its mean) over each phase.
  5. restart with 10,000 sandboxes: SIGTERM, start again on the same --sandboxes DIR; the
     `event=sandboxes-restored count= ms=` line, and exec until the last sandbox's first answer
     (a denied name from its address, NXDOMAIN: REFUSED would mean not yet registered).
     RESTARTS times with the sets as left (about 100,000 elements), once with them flushed;
     and how long the SIGTERM took (dnsward writes every sandbox's usage file at exit).
Usage: bench/run-host-scale [build-dir]; environment: REPS (5), LAT (2000), ADDS_PROC (30),
RESTARTS (1), SIZES (1000,10000), FILL (50x2000), KEEP (1: keep the work directories).
"""
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import peer_setup
from peer_setup import LO, UPSTREAM_PORT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build"))
DNSWARD = os.path.join(BUILD, "dnsward")
REPS = int(os.environ.get("REPS", "5"))
LAT = int(os.environ.get("LAT", "2000"))            # names per vouch-latency phase
ADDS_PROC = int(os.environ.get("ADDS_PROC", "30"))  # `dnsward ctl add` processes per size
RESTARTS = int(os.environ.get("RESTARTS", "1"))
SIZES = tuple(int(x) for x in os.environ.get("SIZES", "1000,10000").split(","))
# 50 x 2,000 = 100,000 elements (FILL=SANDBOXESxNAMES to change, for a quick try)
FILL_SANDBOXES, FILL_NAMES = (int(x) for x in os.environ.get("FILL", "50x2000").split("x"))
HOST_PORT, SINGLE_PORT, METRICS_PORT = 5301, 5302, 9153
PROBES = [3, 6, 9, 12]                              # sandboxes (policy 0) the CPU runs ask from
LAT_EMPTY_SB, LAT_FULL_SB = 15, 18                 # the vouch-latency clients
FILL_FIRST = 21                                     # fill sandboxes: 21 .. 70
KINDS = {  # kind: (queries per run, rate)
    "denied": (20000, 20000),
    "cached": (20000, 20000),
    "forwarded": (5000, 5000),
}

work = tempfile.mkdtemp(prefix="dnsward-host-scale-")
# The registrations go to the machine's disk (ext4 here), as the goal asks, not to a tmpfs.
sbdir = tempfile.mkdtemp(prefix="dnsward-host-scale-sandboxes-", dir="/var/tmp")
procs = []


def addr(i):
    return f"100.64.{i >> 8}.{i & 255}"


def pol(i):
    return os.path.join(work, f"pol{i % 3}.allow")


def write(name, text):
    return peer_setup.write(work, name, text)


# ---------------------------------------------------------------------------------------
# DNS over UDP

def query_bytes(name, qid=0x4242):
    q = qid.to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00\x00\x01\x00\x01"


def ask(src, port, name, wait=0.002):
    """The reply's (rcode, ancount), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((src, 0))
        s.settimeout(wait)
        try:
            s.sendto(query_bytes(name), (LO, port))
            r = s.recv(4096)
        except OSError:
            return None
    return (r[3] & 0x0f, r[6] << 8 | r[7]) if len(r) > 12 else None


def closed_loop(src, port, names):
    """One query at a time from src; latencies in us of answers with an address, and failures."""
    lat, bad = [], 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((src, 0))
        s.settimeout(2)
        for k, name in enumerate(names):
            qid = k & 0xffff
            t0 = time.perf_counter_ns()
            s.sendto(query_bytes(name, qid), (LO, port))
            try:
                while True:
                    r = s.recv(4096)
                    if int.from_bytes(r[:2], "big") == qid:
                        break
            except OSError:
                bad += 1
                continue
            t1 = time.perf_counter_ns()
            if (r[3] & 0x0f) == 0 and (r[6] << 8 | r[7]) > 0:
                lat.append((t1 - t0) / 1000)
            else:
                bad += 1
    return lat, bad


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))] if xs else float("nan")


# ---------------------------------------------------------------------------------------
# dnsward's processes

def cpu_ns(pid):
    """ns on a CPU, every thread of pid (schedstat's first field)."""
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total


def memory(pid):
    """kB: VmRSS, RssAnon (status), Pss, Pss_Anon (smaps_rollup), heap (Rss of [heap])."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k = line.split(":")[0]
            if k in ("VmRSS", "RssAnon"):
                out[k] = int(line.split()[1])
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            k = line.split(":")[0]
            if k in ("Pss", "Pss_Anon"):
                out[k] = int(line.split()[1])
    out["heap"] = 0
    with open(f"/proc/{pid}/smaps") as f:
        in_heap = False
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                in_heap = line.rstrip().endswith("[heap]")
            elif in_heap and line.startswith("Rss:"):
                out["heap"] += int(line.split()[1])
    return out


def host_cmd():
    return [DNSWARD, "serve", "--host", "--sandbox-ifaces", "lo", "--listen", f"0.0.0.0:{HOST_PORT}", "--upstream",
            f"{LO}:{UPSTREAM_PORT}", "--control", os.path.join(work, "control"), "--sandboxes", sbdir,
            "--user", "root", "--metrics-listen", f"{LO}:{METRICS_PORT}", "--log-level", "info"]


def single_cmd():
    return [DNSWARD, "serve", "--listen", f"{LO}:{SINGLE_PORT}", "--upstream", f"{LO}:{UPSTREAM_PORT}",
            "--allowlist", pol(0), "--nft-table", "dnsward_single", "--nft-set-size", "262144",
            # Usage counted as in host mode, where --sandboxes keeps each sandbox's counts:
            # without --state the single-sandbox dnsward would count nothing per denied name.
            "--state", os.path.join(work, "single.state"),
            "--user", "root", "--log-level", "info"]


def start(cmd, logname):
    p = subprocess.Popen(["taskset", "-c", "0", *cmd], stdout=subprocess.DEVNULL,
                         stderr=open(os.path.join(work, logname), "a"))
    procs.append(p)
    return p


def stop(p, limit=20):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(limit)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def wait_answer(p, src, port, name, want_rcode, limit=30):
    t0 = time.monotonic()
    while True:
        r = ask(src, port, name)
        if r and r[0] == want_rcode:
            return (time.monotonic() - t0) * 1000
        if p.poll() is not None or time.monotonic() - t0 > limit:
            raise RuntimeError(f"no answer to {name} from {src} on {port} (rcode {r}): see {work}/*.log")


class Control:
    """The control socket, one connection, one JSON line each way."""

    def __init__(self, path):
        deadline = time.monotonic() + 20
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.s.connect(path)
                break
            except OSError:
                self.s.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        self.buf = b""

    def request(self, obj):
        self.s.sendall(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
        while b"\n" not in self.buf:
            chunk = self.s.recv(1 << 20)
            if not chunk:
                raise RuntimeError("control socket closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def add(self, i, ident=None, address=None):
        return self.request({"cmd": "add", "id": ident or f"sb{i}", "addrs": [address or addr(i)],
                             "iface": "lo", "allowlists": [pol(i)], "default": False})


STALLS = []  # (what, ms) of requests that waited over a second: dnsward's loop was busy


def metrics():
    t0 = time.monotonic()
    with urllib.request.urlopen(f"http://{LO}:{METRICS_PORT}/metrics", timeout=180) as r:
        text = r.read().decode()
    if time.monotonic() - t0 > 1:
        STALLS.append(("GET /metrics", (time.monotonic() - t0) * 1000))
    return text


def vouch_hist(text):
    """(bounds with cumulative counts, sum, count) of dnsward_vouch_latency_seconds."""
    buckets, total, count = [], 0.0, 0
    for line in text.splitlines():
        m = re.match(r'dnsward_vouch_latency_seconds_bucket\{le="([^"]+)"\} (\S+)', line)
        if m:
            buckets.append((float(m.group(1)), int(float(m.group(2)))))
        elif line.startswith("dnsward_vouch_latency_seconds_sum "):
            total = float(line.split()[1])
        elif line.startswith("dnsward_vouch_latency_seconds_count "):
            count = int(float(line.split()[1]))
    return buckets, total, count


def hist_delta(a, b):
    """p50, p99 (bucket upper bounds, us), mean (us) and count of the observations between a and b."""
    n = b[2] - a[2]
    if n <= 0:
        return float("nan"), float("nan"), float("nan"), 0
    cum = [(le, cb - ca) for (le, cb), (_, ca) in zip(b[0], a[0])]
    def q(p):
        for le, c in cum:
            if c >= p * n:
                return le * 1e6
        return float("inf")
    return q(0.5), q(0.99), (b[1] - a[1]) / n * 1e6, n


# ---------------------------------------------------------------------------------------
# The phases

def ctl_process_adds(ctl, tag, pid):
    """ADDS_PROC `dnsward ctl add` processes (exec to exit), then those sandboxes removed over
    the socket; and dnsward's CPU ms per remove."""
    times, removes = [], []
    for k in range(ADDS_PROC):
        ident = f"proc{tag}-{k}"
        t0 = time.perf_counter()
        r = subprocess.run([DNSWARD, "ctl", "--control", os.path.join(work, "control"), "add", ident,
                            "--addr", f"100.66.{k >> 8}.{(k & 255) + 1}", "--iface", "lo",
                            "--allowlist", pol(k), "--no-default"], capture_output=True, text=True)
        times.append((time.perf_counter() - t0) * 1000)
        if r.returncode != 0:
            raise RuntimeError(f"dnsward ctl add: {r.stdout} {r.stderr}")
    c0 = cpu_ns(pid)
    for k in range(ADDS_PROC):
        t0 = time.perf_counter()
        r = ctl.request({"cmd": "remove", "id": f"proc{tag}-{k}"})
        removes.append((time.perf_counter() - t0) * 1000)
        if not r.get("ok"):
            raise RuntimeError(f"remove: {r}")
    return times, removes, (cpu_ns(pid) - c0) / 1e6 / ADDS_PROC


def dnsperf(src, port, qfile, rate):
    out = subprocess.run(["taskset", "-c", "1", "dnsperf", "-s", LO, "-p", str(port), "-a", src, "-d", qfile,
                          "-n", "1", "-c", "1", "-q", "32", "-Q", str(rate), "-t", "2"],
                         capture_output=True, text=True).stdout
    done = lost = 0
    codes = ""
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Queries completed:"):
            done = int(line.split()[2])
        elif line.startswith("Queries lost:"):
            lost = int(line.split()[2])
        elif line.startswith("Response codes:"):
            codes = line.split(":", 1)[1].strip()
    return done, lost, codes


def cpu_phase(n, host, single):
    """CPU us per query, {kind: {mode: [runs]}}; and the response codes seen."""
    res = {k: {"host": [], "single": []} for k in KINDS}
    codes = {}
    for rep in range(REPS):
        src = addr(PROBES[rep % len(PROBES)])
        for kind, (count, rate) in KINDS.items():
            order = [("host", host, HOST_PORT), ("single", single, SINGLE_PORT)]
            if rep % 2:
                order.reverse()
            for mode, p, port in order:
                if kind == "denied":
                    lines = "".join(f"d{i}.r{rep}.{mode}{n}.denied.example A\n" for i in range(count))
                elif kind == "cached":
                    ask(src, port, "c.bench", wait=1)  # cached (and vouched for this source) before
                    lines = "c.bench A\n" * count
                else:
                    lines = "".join(f"q{i}.r{rep}.{mode}{n}.m.bench A\n" for i in range(count))
                qfile = write("q.txt", lines)
                c0 = cpu_ns(p.pid)
                done, lost, rc = dnsperf(src, port, qfile, rate)
                c1 = cpu_ns(p.pid)
                res[kind][mode].append((c1 - c0) / 1000 / max(done, 1))
                codes.setdefault((kind, mode), set()).add(f"{rc} lost {lost}")
    return res, codes


def vouch_phase(ctl, host):
    out = {}
    h0 = vouch_hist(metrics())
    lat, bad = closed_loop(addr(LAT_EMPTY_SB), HOST_PORT, [f"e{j}.v.bench" for j in range(LAT)])
    h1 = vouch_hist(metrics())
    out["empty"] = (lat, bad, hist_delta(h0, h1))
    # The fill: one upstream query per name (the first sandbox), cache hits for the others,
    # every answer a new guest . destination element.
    fill = write("fill.txt", "".join(f"f{j}.v.bench A\n" for j in range(FILL_NAMES)))
    t0 = time.monotonic()
    fill_lost = 0
    for k in range(FILL_SANDBOXES):
        _, lost, _ = dnsperf(addr(FILL_FIRST + k), HOST_PORT, fill, 20000)
        fill_lost += lost
    fill_s = time.monotonic() - t0
    listed = ctl.request({"cmd": "list"})
    elements = sum(s["elements"] for s in listed["sandboxes"])
    kernel = subprocess.run(["nft", "list", "set", "inet", "dnsward", "allowed4"], capture_output=True,
                            text=True).stdout.count("expires")
    h2 = vouch_hist(metrics())
    lat, bad = closed_loop(addr(LAT_FULL_SB), HOST_PORT, [f"g{j}.v.bench" for j in range(LAT)])
    h3 = vouch_hist(metrics())
    out["full"] = (lat, bad, hist_delta(h2, h3))
    out["fill"] = (fill_s, fill_lost, elements, kernel)
    return out


def fsync_floor(count=300):
    """ms per write + fsync + rename of a small file in a directory next to --sandboxes DIR:
    the least a persisted add can cost on this disk."""
    d = tempfile.mkdtemp(prefix="dnsward-host-scale-fsync-", dir="/var/tmp")
    lat = []
    try:
        for k in range(count):
            t0 = time.perf_counter_ns()
            fd = os.open(f"{d}/x.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            os.write(fd, b"x" * 200)
            os.fsync(fd)
            os.close(fd)
            os.rename(f"{d}/x.tmp", f"{d}/f{k}")
            lat.append((time.perf_counter_ns() - t0) / 1e6)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return lat


def restart(host, label):
    t0 = time.monotonic()
    stop(host, limit=180)  # dnsward writes each sandbox's usage file at exit
    stop_ms = (time.monotonic() - t0) * 1000
    log = os.path.join(work, "host.log")
    pos = os.path.getsize(log)
    t0 = time.monotonic()
    p = start(host_cmd(), "host.log")
    last = max(SIZES)
    ms = wait_answer(p, addr(last), HOST_PORT, f"probe{time.monotonic_ns()}.denied.example", 3)
    with open(log) as f:
        f.seek(pos)
        m = re.search(r"event=sandboxes-restored count=(\d+) ms=(\d+)", f.read())
    count, restored_ms = (int(m.group(1)), int(m.group(2))) if m else (-1, -1)
    return p, {"label": label, "stop_ms": stop_ms, "count": count, "restored_ms": restored_ms, "first_answer_ms": ms,
               "cpu_ms": cpu_ns(p.pid) / 1e6}


def main():
    subprocess.run(["ip", "route", "add", "local", "100.64.0.0/16", "dev", "lo"], check=True)
    zone = [f"f{j}.v A 198.19.{j >> 8}.{j & 255}" for j in range(FILL_NAMES)]
    zone += [f"e{j}.v A 198.20.{j >> 8}.{j & 255}" for j in range(LAT)]
    zone += [f"g{j}.v A 198.21.{j >> 8}.{j & 255}" for j in range(LAT)]
    peer_setup.write_upstream_files(work, zone)
    base = peer_setup.allowlist() + "**.v.bench\n"
    for k in range(3):  # three policies: the same bench names, each its own extra entries
        write(f"pol{k}.allow", base + "".join(f"p{k}-{j}.example\n" for j in range(10)))
    knot = subprocess.Popen(["taskset", "-c", "1", "knotd", "-c", os.path.join(work, "knot.conf")],
                            stderr=open(os.path.join(work, "knot.log"), "w"))
    procs.append(knot)
    deadline = time.monotonic() + 20
    while ask(LO, UPSTREAM_PORT, "c.bench", wait=0.2) is None:
        if time.monotonic() > deadline:
            raise RuntimeError("knot did not start")
    with open("/proc/loadavg") as f:
        load_before = f.read().split()[0]

    host = start(host_cmd(), "host.log")
    single = start(single_cmd(), "single.log")
    wait_answer(single, addr(3), SINGLE_PORT, "c.bench", 0)
    wait_answer(host, addr(3), HOST_PORT, "x.denied.example", 5)  # REFUSED: not registered yet
    ctl = Control(os.path.join(work, "control"))
    time.sleep(0.2)
    mem = {0: memory(host.pid)}
    adds, proc_adds, removes, cpu, codes = {}, {}, {}, {}, {}
    registered = 0
    mem_from = {}
    for n in SIZES:
        # Measured again before each batch: the CPU runs in between fill the answer cache.
        mem_before = memory(host.pid)
        lat = []
        c0 = cpu_ns(host.pid)
        for i in range(registered + 1, n + 1):
            t0 = time.perf_counter_ns()
            r = ctl.add(i)
            lat.append((time.perf_counter_ns() - t0) / 1e6)
            if not r.get("ok"):
                raise RuntimeError(f"add sb{i}: {r}")
        adds[n] = (lat, (cpu_ns(host.pid) - c0) / 1e6 / (n - registered))
        time.sleep(0.2)
        mem[n] = memory(host.pid)
        mem_from[n] = (registered, mem_before)
        registered = n
        proc_adds[n], *removes[n] = ctl_process_adds(ctl, n, host.pid)
        cpu[n], codes[n] = cpu_phase(n, host, single)
    files = len([f for f in os.listdir(sbdir) if f.endswith(".sandbox")])
    usage_files = len([f for f in os.listdir(sbdir) if f.endswith(".usage")])
    floor = fsync_floor()
    vouch = vouch_phase(ctl, host)
    ctl.s.close()
    restarts = []
    for k in range(RESTARTS):
        host, r = restart(host, "sets as left")
        restarts.append(r)
    t0 = time.monotonic()
    stop(host, limit=180)
    last_stop_ms = (time.monotonic() - t0) * 1000
    subprocess.run(["nft", "flush", "set", "inet", "dnsward", "allowed4"], check=True)
    host, r = restart(host, "sets flushed before")
    r["stop_ms"] = last_stop_ms
    restarts.append(r)
    host.kill()  # not measured: its exit writes 10,000 usage files again
    host.wait()
    stop(single)
    report(load_before, adds, proc_adds, removes, mem, mem_from, cpu, codes, vouch, restarts,
           (files, usage_files, floor))


def report(load_before, adds, proc_adds, removes, mem, mem_from, cpu, codes, vouch, restarts, disk):
    files, usage_files, floor = disk
    with open("/proc/loadavg") as f:
        load_after = f.read().split()[0]
    fs = subprocess.run(["df", "-T", sbdir], capture_output=True, text=True).stdout.splitlines()[-1].split()
    print(f"kernel {os.uname().release}, {os.cpu_count()} cpus, load average {load_before} before, "
          f"{load_after} after; --sandboxes on {fs[0]} ({fs[1]}); {files} registration files and "
          f"{usage_files} usage files after the adds and CPU runs; REPS={REPS}")
    print(f"disk floor: write + fsync + rename of a 200-byte file, p50 {pct(floor, 50):.2f}  p99 "
          f"{pct(floor, 99):.2f} ms ({len(floor)})")
    print("\n== 1. ctl add latency (ms), over the control socket, --sandboxes on disk")
    prev = 0
    for n, (lat, cpu_add) in adds.items():
        print(f"  adds {prev + 1}..{n}: p50 {pct(lat, 50):.2f}  p99 {pct(lat, 99):.2f}  max {max(lat):.2f}  "
              f"(goal p99 <= 5 ms: {'met' if pct(lat, 99) <= 5 else 'NOT met'}); dnsward CPU per add "
              f"{cpu_add:.3f} ms")
        rm, cpu_rm = removes[n]
        print(f"  `dnsward ctl add` process at {n}: p50 {pct(proc_adds[n], 50):.2f}  p99 "
              f"{pct(proc_adds[n], 99):.2f} ({ADDS_PROC}); remove over the socket p50 "
              f"{pct(rm, 50):.2f}  p99 {pct(rm, 99):.2f}, dnsward CPU per remove {cpu_rm:.2f} ms")
        prev = n
    print("\n== 2. memory per sandbox (no element vouched): (after the adds - just before them) / adds")
    print(f"  {'':18}" + "".join(f"{k:>12}" for k in mem[0]))
    for n in SIZES:
        m0, before = mem_from[n]
        print(f"  {'before, ' + str(m0):>16}: " + "".join(f"{before[k]:>9} kB" for k in mem[0]))
        print(f"  {'after, ' + str(n):>16}: " + "".join(f"{mem[n][k]:>9} kB" for k in mem[0]))
        print(f"  {'per sandbox':>16}: " + "".join(f"{(mem[n][k] - before[k]) * 1024 / (n - m0):>10.0f} B"
                                               for k in mem[0]))
    print("\n== 3. dnsward CPU per query (us), median of REPS; host mode with N registered / single-sandbox")
    for n in SIZES:
        for kind in KINDS:
            h, s = statistics.median(cpu[n][kind]["host"]), statistics.median(cpu[n][kind]["single"])
            print(f"  N={n:<6} {kind:10} host {h:7.2f}  single {s:7.2f}  ratio {h / s:5.2f}x "
                  f"(goal <= 1.1x: {'met' if h / s <= 1.1 else 'NOT met'})   runs host "
                  f"{' '.join(f'{x:.1f}' for x in cpu[n][kind]['host'])} / single "
                  f"{' '.join(f'{x:.1f}' for x in cpu[n][kind]['single'])}")
    print("  response codes seen:")
    for n in SIZES:
        for (kind, mode), seen in codes[n].items():
            print(f"    N={n} {kind} {mode}: {' | '.join(sorted(seen))}")
    print("\n== 4. vouch latency, closed loop from one sandbox, every answer a new address (us)")
    fill_s, fill_lost, elements, kernel = vouch["fill"]
    print(f"  fill: {FILL_SANDBOXES} sandboxes x {FILL_NAMES} names in {fill_s:.1f} s, {fill_lost} lost; "
          f"dnsward holds {elements} elements, the kernel's allowed4 {kernel}")
    for k in ("empty", "full"):
        lat, bad, (hp50, hp99, hmean, hn) = vouch[k]
        print(f"  sets {k:5}: answer p50 {pct(lat, 50):.0f}  p99 {pct(lat, 99):.0f}  ({len(lat)} answers, {bad} bad); "
              f"dnsward_vouch_latency_seconds p50 <= {hp50:.0f}  p99 <= {hp99:.0f}  mean {hmean:.1f} ({hn})")
    for what, ms in STALLS:
        print(f"  stall: {what} took {ms:.0f} ms")
    print("\n== 5. restart with 10,000 sandboxes (SIGTERM, start again on the same DIR)")
    for r in restarts:
        print(f"  {r['label']:20} SIGTERM to exit {r['stop_ms']:.0f} ms; restored count={r['count']} ms={r['restored_ms']}; exec to the last sandbox's "
              f"first answer {r['first_answer_ms']:.0f} ms (CPU {r['cpu_ms']:.0f} ms) "
              f"(goal < 1 s: {'met' if r['first_answer_ms'] < 1000 else 'NOT met'})")


if __name__ == "__main__":
    try:
        main()
    finally:
        for p in procs:
            if p.poll() is None:
                stop(p)
        for t in ("dnsward", "dnsward_single"):
            subprocess.run(["nft", "delete", "table", "inet", t], capture_output=True)
        if os.environ.get("KEEP") != "1":
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(sbdir, ignore_errors=True)
        else:
            print(f"kept {work} and {sbdir}", file=sys.stderr)
