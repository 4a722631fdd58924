#!/usr/bin/python3
"""Footprint of dnsward against dnsmasq and unbound (both from Debian), in one run (issue 10).

Run through bench/run-footprint-bench, which enters a network namespace of its own first:
every server, the knot upstream and the nftables sets live on that namespace's loopback.

For each server, RUNS times (interleaved: dnsward, dnsmasq, unbound, dnsward, ...):
  start-up   exec until the first answer to a denied name (answered by the server itself)
             and until the first answer to an allowed name (forwarded to knot), each probed
             with a raw UDP query resent every 2 ms; and the CPU time the server had used by
             then (/proc/PID/schedstat), which a loaded machine disturbs far less
  idle RSS   VmRSS right after that first forwarded answer (and its anonymous / file parts)
  peak RSS   VmHWM after a burst of BURST denied and BURST allowed names, each asked once,
             every allowed name new (forwarded, cached, and for dnsward and dnsmasq put in
             the nftables set)
Medians over the runs, and ratios to dnsmasq's medians. dnsward runs with the nftables hook
on (its default), dnsmasq with --nftset into an equivalent set (and, as dnsmasq-plain, without
it: the cheapest dnsmasq); unbound has no such hook. Ratios are to dnsmasq with --nftset, and
for dnsward also to dnsmasq-plain.
"""
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import peer_setup
from peer_setup import LO, UPSTREAM_PORT, dnsmasq_args, unbound_conf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build"))
RUNS = int(os.environ.get("RUNS", "5"))
BURST = int(os.environ.get("BURST", "20000"))  # denied names, and as many allowed names
PORT = 5301

work = tempfile.mkdtemp(prefix="dnsward-footprint-")
procs = []


def write(name, text):
    return peer_setup.write(work, name, text)


def setup_files():
    peer_setup.write_upstream_files(work, [])


def dnsward_cmd():
    return [os.path.join(BUILD, "dnsward"), "serve", "--listen", f"{LO}:{PORT}", "--upstream",
            f"{LO}:{UPSTREAM_PORT}", "--allowlist", os.path.join(work, "bench.allow"),
            "--log-level", "error"]


def dnsmasq_cmd(nft=True):
    return dnsmasq_args(PORT, nft)


def unbound_cmd():
    conf = write("unbound.conf", unbound_conf(work, PORT))
    return ["unbound", "-d", "-c", conf]


def query_bytes(name, qid=0x4242):
    q = qid.to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00\x00\x01\x00\x01"


def answers(name, port=PORT, wait=0.002):
    """True once the server answers name: NXDOMAIN for a denied name, an address otherwise."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(wait)
        try:
            s.sendto(query_bytes(name), (LO, port))
            r = s.recv(4096)
        except OSError:
            return False
    if name.endswith("denied.example"):
        return len(r) > 12 and (r[3] & 0x0f) == 3
    return len(r) > 12 and (r[3] & 0x0f) == 0 and (r[6] << 8 | r[7]) > 0


def status(pid):
    """VmRSS, RssAnon, RssFile, VmHWM in kB (proc(5))."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = int(line.split()[1])
    return out


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def fresh_sets():
    """dnsward creates its table if missing; dnsmasq needs the sets to exist: the same for both."""
    subprocess.run(["nft", "delete", "table", "inet", "dnsward"], capture_output=True)
    subprocess.run(["nft", "-f", "-"], check=True, text=True, input="""table inet dnsward {
  set allowed4 { type ipv4_addr; flags timeout; size 262144; }
  set allowed6 { type ipv6_addr; flags timeout; size 262144; }
}""")


def measure(name, cmd, run):
    fresh_sets()
    t0 = time.monotonic()
    p = subprocess.Popen(["taskset", "-c", "0", *cmd], stdout=subprocess.DEVNULL,
                         stderr=open(os.path.join(work, "servers.log"), "a"))
    procs.append(p)
    r = {}
    for key, probe in (("startup_denied_ms", f"first{run}.denied.example"),
                       ("startup_forwarded_ms", f"first{run}.m.bench")):
        while not answers(probe):
            if p.poll() is not None or time.monotonic() - t0 > 20:
                raise RuntimeError(f"{name} did not start: see {work}/servers.log")
        r[key] = (time.monotonic() - t0) * 1000
    with open(f"/proc/{p.pid}/schedstat") as f:  # ns on a CPU so far (sched docs)
        r["startup_cpu_ms"] = int(f.read().split()[0]) / 1e6
    idle = status(p.pid)
    r.update(idle_rss_kb=idle["VmRSS"], idle_anon_kb=idle["RssAnon"], idle_file_kb=idle["RssFile"])
    # The burst: denied and allowed names interleaved, each once, all new to this server.
    qfile = write(f"burst-{name}-{run}.txt", "".join(
        f"d{i}.r{run}.denied.example A\nq{i}.{name}{run}.m.bench A\n" for i in range(BURST)))
    out = subprocess.run(["taskset", "-c", "1", "dnsperf", "-s", LO, "-p", str(PORT), "-d", qfile,
                          "-n", "1", "-c", "1", "-q", "100", "-t", "2"],
                         capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.strip().startswith("Queries completed:"):
            r["burst_done"] = int(line.split()[2])
        elif line.strip().startswith("Queries lost:"):
            r["burst_lost"] = int(line.split()[2])
    peak = status(p.pid)
    r.update(peak_rss_kb=peak["VmHWM"], after_rss_kb=peak["VmRSS"])
    stop(p)
    return r


def main():
    setup_files()
    knot = subprocess.Popen(["knotd", "-c", os.path.join(work, "knot.conf")],
                            stderr=open(os.path.join(work, "knot.log"), "w"))
    procs.append(knot)
    deadline = time.monotonic() + 20
    while not answers("c.bench", UPSTREAM_PORT, wait=0.2):
        if time.monotonic() > deadline:
            raise RuntimeError("knot did not start")
    servers = {"dnsward": dnsward_cmd(), "dnsmasq": dnsmasq_cmd(), "unbound": unbound_cmd(),
               "dnsmasq-plain": dnsmasq_cmd(nft=False)}
    with open("/proc/loadavg") as f:
        load_before = float(f.read().split()[0])
    results = {n: [] for n in servers}
    for run in range(RUNS):
        for name, cmd in servers.items():
            results[name].append(measure(name, cmd, run))

    keys = [("startup_denied_ms", "start-up, first denial (ms)", ".1f"),
            ("startup_forwarded_ms", "start-up, first forwarded answer (ms)", ".1f"),
            ("startup_cpu_ms", "  CPU time used until then (ms)", ".1f"),
            ("idle_rss_kb", "idle RSS (kB)", ".0f"),
            ("idle_anon_kb", "  of which anonymous (kB)", ".0f"),
            ("idle_file_kb", "  of which file-backed (kB)", ".0f"),
            ("peak_rss_kb", f"peak RSS after {BURST} denied + {BURST} allowed (kB)", ".0f")]
    med = {n: {k: statistics.median(r[k] for r in rs) for k, _, _ in keys} for n, rs in results.items()}
    print(f"runs: {RUNS} (medians), kernel {os.uname().release}, {os.cpu_count()} cpus, "
          f"load average before {load_before:.2f}")
    print(f"{'':48} {'dnsward':>9} {'dnsmasq':>9} {'unbound':>9} {'dnsward/dnsmasq':>16} "
          f"{'unbound/dnsmasq':>16} {'dnsmasq-plain':>14} {'dnsward/plain':>14}")
    for k, label, spec in keys:
        d, m, u, mp = (med[n][k] for n in ("dnsward", "dnsmasq", "unbound", "dnsmasq-plain"))
        print(f"{label:48} {d:9{spec}} {m:9{spec}} {u:9{spec}} {d / m:15.2f}x {u / m:15.2f}x "
              f"{mp:14{spec}} {d / mp:13.2f}x")
    print("(dnsmasq: --nftset, the same job as dnsward's hook; dnsmasq-plain: without it)")
    print("\nevery run (start-up denied / forwarded ms, idle RSS kB, peak RSS kB, burst answered/lost):")
    for n, rs in results.items():
        print(f"  {n:8} " + "  ".join(
            f"{r['startup_denied_ms']:.1f}/{r['startup_forwarded_ms']:.1f} {r['idle_rss_kb']} "
            f"{r['peak_rss_kb']} {r.get('burst_done', 0)}/{r.get('burst_lost', 0)}" for r in rs))


if __name__ == "__main__":
    try:
        main()
    finally:
        for p in procs:
            if p.poll() is None:
                stop(p)
        subprocess.run(["nft", "delete", "table", "inet", "dnsward"], capture_output=True)
        import shutil
        shutil.rmtree(work, ignore_errors=True)
