"""Operations: Prometheus metrics over loopback HTTP and as a textfile, SIGUSR1 stats."""
import os
import signal
import unittest

import dns.rcode

from harness import BIN, Dnsward, Knot, LO, free_port, require, run, shared_tempdir, wait_for

knot = None


def setUpModule():
    global knot
    require("knotd", "curl")
    knot = Knot()


def tearDownModule():
    knot.stop()


def curl(url, *extra):
    r = run(["curl", "-s", "--noproxy", "*", "-o", "-", "-w", "\n%{http_code}", *extra, url])
    body, _, code = r.stdout.rpartition("\n")
    return int(code), body


class Metrics(unittest.TestCase):
    def test_metrics_are_served_on_loopback_in_prometheus_format(self):
        port = free_port()
        d = Dnsward(knot.port, extra=["--metrics-listen", f"{LO}:{port}"])
        try:
            d.query("evil.test.")
            d.query("evil2.test.")
            d.query("www.allowed.test.")
            code, body = curl(f"http://{LO}:{port}/metrics")
            self.assertEqual(code, 200)
            self.assertIn('dnsward_queries_total{verdict="denied"} 2\n', body)
            self.assertIn('dnsward_queries_total{verdict="forwarded"} 1\n', body)
            self.assertIn("# TYPE dnsward_queries_total counter\n", body)
            self.assertRegex(body, r'dnsward_policy_info\{version="[0-9a-f]{8}"\} 1\n')
            self.assertIn("dnsward_upstream_latency_seconds_count 1\n", body)
            self.assertIn('dnsward_upstream_latency_seconds_bucket{le="+Inf"} 1\n', body)
            self.assertIn("# TYPE dnsward_vouch_latency_seconds histogram\n", body)
            for line in body.splitlines():  # every sample line is "name{labels} value"
                if line and not line.startswith("#"):
                    name, value = line.rsplit(" ", 1)
                    float(value)
                    self.assertTrue(name.startswith("dnsward_"), line)
            self.assertEqual(curl(f"http://{LO}:{port}/other")[0], 404)
            self.assertEqual(curl(f"http://{LO}:{port}/metrics", "-X", "POST")[0], 405)
            self.assertEqual(d.query("www.allowed.test.").rcode(), dns.rcode.NOERROR)  # still serving DNS
        finally:
            self.assertEqual(d.stop(), 0)

    def test_metrics_are_written_atomically_to_a_file(self):
        # Atomically: each version is a new file renamed over the old one (a new inode each
        # time, never the old file rewritten in place), and a reader never sees part of one.
        path = os.path.join(shared_tempdir(), "dnsward.prom")
        d = Dnsward(knot.port, extra=["--metrics-file", path, "--metrics-interval", "1"])
        versions, partial = {}, []

        def read_version():
            with open(path) as f:
                inode, text = os.fstat(f.fileno()).st_ino, f.read()
            if not text.endswith("\n") or "# TYPE dnsward_queries_total counter\n" not in text:
                partial.append(text)
            versions.setdefault(inode, text)
            return text

        try:
            d.query("evil.test.")
            wait_for(lambda: 'dnsward_queries_total{verdict="denied"} 1\n' in read_version(),
                     timeout=5, what="the metrics file updated")
            wait_for(lambda: read_version() and len(versions) >= 3, timeout=6,
                     what="three versions of the file")
        finally:
            self.assertEqual(d.stop(), 0)
        self.assertEqual(partial, [])
        for text in versions.values():
            for line in text.splitlines():
                if line and not line.startswith("#"):
                    float(line.rsplit(" ", 1)[1])
        self.assertFalse(os.path.exists(path + ".tmp"))

    def test_metrics_only_on_loopback(self):
        r = run([BIN, "serve", "--listen", f"{LO}:{free_port()}", "--upstream", f"{LO}:{knot.port}",
                 "--no-nft", "--metrics-listen", "0.0.0.0:9153"])
        self.assertEqual(r.returncode, 1)
        self.assertIn("metrics are served on loopback only", r.stderr)

    def test_sigusr1_logs_the_counters(self):
        d = Dnsward(knot.port)
        try:
            d.query("evil.test.")
            d.proc.send_signal(signal.SIGUSR1)
            wait_for(lambda: "event=stats" in d.logtext(), timeout=5, what="stats in the log")
            # The denied count is 1, whether named "denied=" or after the metric it is
            # ('dnsward_queries_total{verdict:denied}=', the names of the metrics table).
            self.assertRegex(d.logtext(), r"event=stats .*\bdenied\}?=1 ")
        finally:
            d.stop()



class Daemon(unittest.TestCase):
    def test_json_logs_carry_the_same_fields(self):
        import json
        d = Dnsward(knot.port, extra=["--log-format", "json", "--log-level", "debug"])
        try:
            d.query("evil.test.")
            wait_for(lambda: '"event":"denied"' in d.logtext(), timeout=5, what="a denial logged")
        finally:
            d.stop()
        lines = [json.loads(l) for l in d.logtext().splitlines() if l.startswith("{")]
        self.assertTrue(lines)
        denied = [l for l in lines if l.get("event") == "denied"][0]
        for key in ("ts", "level", "name", "type", "client", "policy"):
            self.assertIn(key, denied)
        self.assertEqual(denied["name"], "evil.test")
        self.assertEqual(denied["type"], "A")
        self.assertRegex(denied["ts"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

    def test_systemd_readiness_reload_and_stop_are_notified(self):
        import socket as s
        path = os.path.join(shared_tempdir(), "notify")
        sock = s.socket(s.AF_UNIX, s.SOCK_DGRAM)
        sock.bind(path)
        os.chmod(path, 0o777)
        os.environ["NOTIFY_SOCKET"] = path
        try:
            d = Dnsward(knot.port, wait=False)
        finally:
            del os.environ["NOTIFY_SOCKET"]
        sock.settimeout(10)
        try:
            first = sock.recv(4096).decode()
            self.assertIn("READY=1", first)
            self.assertIn("STATUS=serving", first)
            self.assertEqual(d.query("evil.test.").rcode(), dns.rcode.NXDOMAIN)  # ready means ready
            d.proc.send_signal(signal.SIGHUP)
            self.assertIn("RELOADING=1", sock.recv(4096).decode())
            self.assertIn("READY=1", sock.recv(4096).decode())
            d.proc.send_signal(signal.SIGTERM)
            self.assertIn("STOPPING=1", sock.recv(4096).decode())
        finally:
            d.stop()
            sock.close()


if __name__ == "__main__":
    unittest.main()
