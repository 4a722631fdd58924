#!/usr/bin/python3
"""dnsward against dnsmasq and unbound (both from Debian), side by side, in one run.

Run through bench/run-peers, which enters a network namespace of its own first: every
server listens on that namespace's loopback and the nftables sets live there.

Each resolver gets the same allowlist (ten entries) and the same upstream (knot, serving a
generated zone), is pinned to CPU 0, and is driven by dnsperf (or bench/latency_client)
pinned to CPU 1. Scenarios:
  D      denied names: NXDOMAIN from the resolver itself
  C      one allowed name, answered from the resolver's cache
  M      allowed names never asked before: every query forwarded upstream
  M+nft  M with the nftables hook on (dnsmasq --nftset into an equivalent set)
  N+nft  M+nft where every answer is a new address
For each: throughput at saturation, the resolver's own CPU time per query (from /proc),
lost queries, latency p50/p99 (closed loop), then peak RSS and start-up time (exec until
the first answer). Each run is repeated; medians and ratios against each peer are printed.
"""
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import peer_setup
from peer_setup import LO, UPSTREAM_PORT, dnsmasq_args, unbound_conf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build"))
RUNS = int(os.environ.get("RUNS", "3"))
DURATION = int(os.environ.get("DURATION", "4"))  # seconds per saturation measurement
RATE = int(os.environ.get("RATE", "5000"))  # queries per second for CPU per forwarded query
HZ = os.sysconf("SC_CLK_TCK")
N_UNIQUE = 60000  # names with their own address, for N+nft

work = tempfile.mkdtemp(prefix="dnsward-peers-")
procs = []



def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def write(name, text):
    return peer_setup.write(work, name, text)


def setup_files():
    peer_setup.write_upstream_files(
        work, [f"r{i}.n A 198.19.{i >> 8 & 255}.{i & 255}" for i in range(N_UNIQUE)])
    write("d.txt", "".join(f"d{i}.denied.example A\n" for i in range(20000)))
    write("c.txt", "c.bench A\n")
    write("n1.txt", "".join(f"r{i}.n.bench A\n" for i in range(N_UNIQUE // 2)))
    write("n2.txt", "".join(f"r{i}.n.bench A\n" for i in range(N_UNIQUE // 2, N_UNIQUE)))


def dnsmasq_cmd(port, nft):
    return dnsmasq_args(port, nft)


def unbound_cmd(port):
    conf = write(f"unbound-{port}.conf", unbound_conf(work, port, "    msg-cache-size: 4m\n    rrset-cache-size: 8m\n    val-log-level: 0\n"))
    return ["unbound", "-d", "-c", conf]


def dnsward_cmd(port, nft, allowlist=None):
    args = [os.path.join(BUILD, "dnsward"), "serve", "--listen", f"{LO}:{port}", "--upstream",
            f"{LO}:{UPSTREAM_PORT}", "--allowlist", allowlist or os.path.join(work, "bench.allow"),
            "--log-level", "error"]
    if not nft:
        args.append("--no-nft")
    else:
        args += ["--nft-set-size", "262144"]
    return args


def query_bytes(name, qid=0x4242):
    q = qid.to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00\x00\x01\x00\x01"


def answers(port, name="c.bench", wait=0.002):
    """True if the server at port answers name with an address (NOERROR, ANCOUNT > 0)."""
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(wait)
        try:
            s.sendto(query_bytes(name), (LO, port))
            r = s.recv(4096)
        except OSError:
            return False
        if name.endswith("denied.example"):
            return len(r) > 12 and (r[3] & 0x0f) == 3  # NXDOMAIN: a denial counts as an answer
        return len(r) > 12 and (r[3] & 0x0f) == 0 and (r[6] << 8 | r[7]) > 0


def start(cmd, port, probe="c.bench"):
    """Starts a server pinned to CPU 0; returns (process, ms from exec to first answer)."""
    t0 = time.monotonic()
    p = subprocess.Popen(["taskset", "-c", "0", *cmd], stdout=subprocess.DEVNULL,
                         stderr=open(os.path.join(work, "servers.log"), "a"))
    procs.append(p)
    # The first answer needs the upstream: every resolver here is asked the same way.
    # Probed every 2 ms with a raw UDP query (no client process to start).
    while not answers(port, probe):
        if p.poll() is not None or time.monotonic() - t0 > 20:
            raise RuntimeError(f"{cmd[0]} did not start: see {work}/servers.log")
    return p, (time.monotonic() - t0) * 1000


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])  # kB
    return 0


def dnsperf(port, qfile, once=False, rate=None):
    args = ["taskset", "-c", "1", "dnsperf", "-s", LO, "-p", str(port), "-d", qfile, "-c", "4",
            "-q", "200", "-t", "2"]
    args += ["-n", "1"] if once else ["-l", str(DURATION)]
    if rate:
        args += ["-Q", str(rate)]
    out = subprocess.run(args, capture_output=True, text=True).stdout
    val = {}
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Queries completed:"):
            val["done"] = int(line.split()[2])
        elif line.startswith("Queries lost:"):
            val["lost"] = int(line.split()[2])
        elif line.startswith("Queries per second:"):
            val["qps"] = float(line.split()[3])
    return val


def latency(port, qfile, count=5000):
    out = subprocess.run(["taskset", "-c", "1", os.path.join(BUILD, "bench", "latency_client"),
                          LO, str(port), qfile, str(count)], capture_output=True, text=True).stdout
    kv = dict(x.split("=") for x in out.split())
    return float(kv["p50_us"]), float(kv["p99_us"])


def scenario(p, port, qfile, once=False, lat_file=None, rate_file=None):
    """Saturation throughput; CPU per query (at a fixed moderate rate when rate_file is
    given, so that a server that falls over at saturation is not charged for its retries)."""
    t0 = cpu_ticks(p.pid)
    r = dnsperf(port, qfile, once)
    t1 = cpu_ticks(p.pid)
    r["cpu_us"] = (t1 - t0) * 1e6 / HZ / max(r.get("done", 1), 1)
    if rate_file:
        t0 = cpu_ticks(p.pid)
        fixed = dnsperf(port, rate_file, rate=RATE)
        t1 = cpu_ticks(p.pid)
        r["cpu_us"] = (t1 - t0) * 1e6 / HZ / max(fixed.get("done", 1), 1)
        r["lost"] = r.get("lost", 0) + fixed.get("lost", 0)
    if lat_file:
        r["p50"], r["p99"] = latency(port, lat_file)
    return r


def names(tag, count, suffix="m.bench"):
    """A query file of names never asked before: tagged by run, resolver and scenario."""
    return write(f"{tag}.txt", "".join(f"q{i}.{tag}.{suffix} A\n" for i in range(count)))


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def run_once(run):
    """One run of every resolver through every scenario, each with names of its own."""
    res = {}
    # The floor for D: copy-and-patch NXDOMAIN, nothing else (bench/bare_responder.cc).
    bare = subprocess.Popen(["taskset", "-c", "0", os.path.join(BUILD, "bench", "bare_responder"), "5309"])
    procs.append(bare)
    time.sleep(0.2)
    res["bare"] = {"D": scenario(bare, 5309, os.path.join(work, "d.txt"))}
    stop(bare)
    for name in ("dnsward", "dnsmasq", "unbound"):
        port = 5301 + len(res)
        cmd = {"dnsward": dnsward_cmd(port, False), "dnsmasq": dnsmasq_cmd(port, False),
               "unbound": unbound_cmd(port)}[name]
        p, startup = start(cmd, port)
        idle = status(p.pid, "VmRSS")
        r = {"startup_ms": startup, "idle_rss_kb": idle}
        lat_d = write("lat-d.txt", "".join(f"l{i}.denied.example A\n" for i in range(5000)))
        r["D"] = scenario(p, port, os.path.join(work, "d.txt"), lat_file=lat_d)
        r["C"] = scenario(p, port, os.path.join(work, "c.txt"), lat_file=os.path.join(work, "c.txt"))
        tag = f"r{run}{name}"
        r["M"] = scenario(p, port, names(tag + "s", 250000), lat_file=names(tag + "l", 5000),
                          rate_file=names(tag + "f", 60000))
        r["peak_rss_kb"] = status(p.pid, "VmHWM")
        stop(p)
        res[name] = r
    # With the hook: dnsward and dnsmasq --nftset into the same table and sets.
    for name in ("dnsward", "dnsmasq"):
        subprocess.run(["nft", "delete", "table", "inet", "dnsward"], capture_output=True)
        sh("nft", "-f", "-", input="""table inet dnsward {
  set allowed4 { type ipv4_addr; flags timeout; size 262144; }
  set allowed6 { type ipv6_addr; flags timeout; size 262144; }
}""")
        port = 5310
        cmd = dnsward_cmd(port, True) if name == "dnsward" else dnsmasq_cmd(port, True)
        p, _ = start(cmd, port)
        tag = f"r{run}{name}nft"
        res[name]["M+nft"] = scenario(p, port, names(tag + "s", 250000), rate_file=names(tag + "f", 60000))
        # N+nft: every answer a new address; the names are split between the two passes.
        res[name]["N+nft"] = scenario(p, port, os.path.join(work, "n1.txt"), once=True,
                                      rate_file=os.path.join(work, "n2.txt"))
        listing = json.loads(sh("nft", "-j", "list", "set", "inet", "dnsward", "allowed4").stdout)
        res[name]["set_elements"] = sum(len(i["set"].get("elem", [])) for i in listing["nftables"]
                                        if "set" in i)
        stop(p)
    return res


def default_startup(trials=10):
    """dnsward on its embedded default list: exec until the first answer (a denial, which
    needs no upstream), median of several starts."""
    times = []
    for _ in range(trials):
        cmd = [os.path.join(BUILD, "dnsward"), "serve", "--listen", f"{LO}:5321", "--upstream",
               f"{LO}:{UPSTREAM_PORT}", "--no-nft", "--log-level", "error"]
        p, ms = start(cmd, 5321, probe="denied.example")
        times.append(ms)
        stop(p)
    return statistics.median(times)


def scale():
    """dnsward with allowlists of 10, 10^4 and 10^6 entries: load time, RSS, CPU per query."""
    out = {}
    for n in (10, 10000, 1000000):
        path = os.path.join(work, f"scale-{n}.allow")
        with open(path, "w") as f:
            f.write("c.bench\n")
            for i in range(n - 1):
                f.write(f"host{i}.example{i % 1000}.test\n")
        p, startup = start(dnsward_cmd(5320, False, path), 5320)
        r = {"startup_ms": startup, "rss_kb": status(p.pid, "VmRSS")}
        r["D"] = scenario(p, 5320, os.path.join(work, "d.txt"))
        stop(p)
        out[n] = r
    return out


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main():
    setup_files()
    knot = subprocess.Popen(["knotd", "-c", os.path.join(work, "knot.conf")],
                            stderr=open(os.path.join(work, "knot.log"), "w"))
    procs.append(knot)
    while not answers(UPSTREAM_PORT, wait=0.2):
        time.sleep(0.05)
    load_before = loadavg()
    runs = [run_once(i) for i in range(RUNS)]
    sc = scale()
    default_ms = default_startup()
    load_after = loadavg()

    def med(res, scen, key):
        return median([r.get(res, {}).get(scen, {}).get(key) if scen else r.get(res, {}).get(key)
                       for r in runs])

    lines = []
    say = lines.append
    say(f"runs: {RUNS} (medians below), {DURATION} s per saturation point; CPU per query of "
        f"M, M+nft, N+nft at a fixed {RATE} qps; kernel "
        f"{os.uname().release}, {os.cpu_count()} cpus")
    # The benchmark itself loads both CPUs, so only the load before it says whether something
    # else was running.
    say(f"load average before {load_before:.2f} (after {load_after:.2f}, the benchmark's own)"
        + ("  << other load on the machine before the run: treat it as unreliable" if load_before > 1.0 else ""))
    say("")
    say(f"{'scenario':8} {'resolver':8} {'qps':>9} {'cpu us/q':>9} {'lost':>6} {'p50 us':>8} {'p99 us':>8}")
    for scen in ("D", "C", "M", "M+nft", "N+nft"):
        for res in ("dnsward", "dnsmasq", "unbound", "bare"):
            if (res == "unbound" and "nft" in scen) or (res == "bare" and scen != "D"):
                continue
            q, c, l = med(res, scen, "qps"), med(res, scen, "cpu_us"), med(res, scen, "lost")
            p50, p99 = med(res, scen, "p50"), med(res, scen, "p99")
            fmt = lambda v, spec: (format(v, spec) if v is not None else "-")
            say(f"{scen:8} {res:8} {fmt(q, '9.0f')} {fmt(c, '9.1f')} {fmt(l, '6.0f')} {fmt(p50, '8.0f')} {fmt(p99, '8.0f')}")
    say("")
    say("ratios, dnsward / peer, CPU per query (lower is better):")
    for scen in ("D", "C", "M", "M+nft", "N+nft"):
        d = med("dnsward", scen, "cpu_us")
        parts = []
        for peer in ("dnsmasq", "unbound", "bare"):
            v = med(peer, scen, "cpu_us")
            if v:
                parts.append(f"{d / v:.2f}x {peer}")
        say(f"  {scen:6} " + ", ".join(parts))
    say("")
    say(f"{'resolver':8} {'start-up ms':>12} {'idle RSS kB':>12} {'peak RSS kB':>12}")
    for res in ("dnsward", "dnsmasq", "unbound"):
        say(f"{res:8} {med(res, None, 'startup_ms'):12.1f} {med(res, None, 'idle_rss_kb'):12.0f} "
            f"{med(res, None, 'peak_rss_kb'):12.0f}")
    say(f"set elements after N+nft (of {N_UNIQUE} answered): dnsward "
        f"{runs[-1]['dnsward']['set_elements']}, dnsmasq {runs[-1]['dnsmasq']['set_elements']}")
    say("")
    say(f"dnsward on its embedded default list: {default_ms:.1f} ms from exec to the first answer "
        "(median of 10 starts)")
    say("scale (dnsward, denied names): entries, start-up to first answer, RSS, CPU per query")
    for n, r in sc.items():
        say(f"  {n:>8} entries: {r['startup_ms']:8.1f} ms {r['rss_kb']:8d} kB {r['D']['cpu_us']:6.1f} us/q")
    print("\n".join(lines))
    with open(os.path.join(work, "raw.json"), "w") as f:
        json.dump({"runs": runs, "scale": {str(k): v for k, v in sc.items()}}, f, indent=1)


if __name__ == "__main__":
    try:
        main()
    finally:
        for p in procs:
            if p.poll() is None:
                stop(p)
        shutil.rmtree(work, ignore_errors=True)
