#!/usr/bin/python3
"""Soak: dnsward under mixed load for SOAK_SECONDS (default 600) while its upstream
misbehaves on a schedule; RSS and open file descriptors are sampled every 10 s and must
stay flat. Run through bench/run-soak (a network namespace of its own). Not a CI test."""
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "test", "e2e"))
BUILD = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build"))
os.environ.setdefault("DNSWARD_BIN", os.path.join(BUILD, "dnsward"))

import dns.message  # noqa: E402
import dns.rcode  # noqa: E402

from harness import Dnsward, Knot, LO, Relay  # noqa: E402

SECONDS = int(os.environ.get("SOAK_SECONDS", "600"))
MODES = ["ok", "drop", "ok", "servfail", "ok", "garbage", "ok", "slow"]
PERIOD = 20  # seconds per fault mode


class FaultyUpstream(Relay):
    """Relays to knot, but on a schedule drops, SERVFAILs, sends garbage or answers late."""

    def __init__(self, knot_port):
        self.t0 = time.monotonic()
        super().__init__(knot_port)

    def mode(self):
        return MODES[int((time.monotonic() - self.t0) / PERIOD) % len(MODES)]

    def handle(self, wire, transport):
        m = self.mode()
        if m == "drop":
            return None
        if m == "garbage":
            return bytes(random.getrandbits(8) for _ in range(random.randrange(1, 100)))
        if m == "servfail":
            try:
                r = dns.message.make_response(dns.message.from_wire(wire))
                r.set_rcode(dns.rcode.SERVFAIL)
                return r.to_wire()
            except Exception:  # noqa: BLE001
                return None
        if m == "slow":
            time.sleep(0.5)
        with self.lock:
            self.seen.clear()  # a relay remembers what it saw; a soak must not
        return super().handle(wire, transport)


def sample(pid):
    rss = 0
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def main():
    work = tempfile.mkdtemp(prefix="dnsward-soak-")
    os.chmod(work, 0o777)
    knot = Knot()
    up = FaultyUpstream(knot.port)
    d = Dnsward(up.port, nft=True, extra=[
        "--state", os.path.join(work, "state"), "--state-interval", "5",
        "--metrics-file", os.path.join(work, "m.prom"), "--metrics-interval", "5",
        "--upstream-timeout", "300", "--upstream-tries", "1", "--log-level", "error"])
    names = os.path.join(work, "mix.txt")
    with open(names, "w") as f:
        for i in range(600000):
            k = i % 10
            if k < 4:
                f.write(f"d{i}.denied.example A\n")
            elif k < 7:
                f.write("www.allowed.test A\n")
            else:
                f.write(f"q{i}.wild.test A\n")
    load = [subprocess.Popen(["dnsperf", "-s", LO, "-p", str(d.port), "-d", names, "-l", str(SECONDS),
                              "-Q", "3000", "-c", "2", "-q", "200"], stdout=subprocess.PIPE, text=True),
            subprocess.Popen(["dnsperf", "-s", LO, "-p", str(d.port), "-d", names, "-l", str(SECONDS),
                              "-Q", "200", "-m", "tcp", "-c", "4", "-q", "20"], stdout=subprocess.PIPE,
                             text=True)]
    samples = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < SECONDS:
        time.sleep(10)
        if not d.alive():
            break
        samples.append((round(time.monotonic() - t0), *sample(d.proc.pid), up.mode()))
    outs = [p.communicate()[0] for p in load]
    alive = d.alive()
    answer = d.query("evil.test.").rcode() if alive else None
    code = d.stop()
    up.stop()
    knot.stop()
    print(f"soak: {SECONDS} s, fault modes every {PERIOD} s: {' '.join(MODES)}")
    print("t(s)  rss(kB)  fds  upstream")
    for t, rss, fds, mode in samples:
        print(f"{t:4d} {rss:8d} {fds:4d}  {mode}")
    rss = [s[1] for s in samples]
    fds = [s[2] for s in samples]
    half = len(samples) // 2
    print(f"RSS min {min(rss)} max {max(rss)} kB; second half min {min(rss[half:])} max {max(rss[half:])} kB")
    print(f"fds min {min(fds)} max {max(fds)}")
    for name, out in zip(("udp 3000 qps", "tcp 200 qps"), outs):
        got = {l.split(":")[0].strip(): l.split(":")[1].strip() for l in out.splitlines() if ":" in l}
        print(f"{name}: sent {got.get('Queries sent')}, completed {got.get('Queries completed')}, "
              f"lost {got.get('Queries lost')}, rcodes {got.get('Response codes')}")
    print(f"alive at the end: {alive}; a denial then: {answer}; exit code on SIGTERM: {code}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
