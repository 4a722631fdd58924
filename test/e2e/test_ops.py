"""Operations: Prometheus metrics over loopback HTTP and as a textfile, SIGUSR1 stats."""
import os
import signal
import subprocess
import unittest

import dns.rcode

from harness import BIN, Dnsward, Knot, LO, free_port, run, shared_tempdir, wait_for

knot = None


def setUpModule():
    global knot
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
        path = os.path.join(shared_tempdir(), "dnsward.prom")
        d = Dnsward(knot.port, extra=["--metrics-file", path, "--metrics-interval", "1"])
        try:
            d.query("evil.test.")
            wait_for(lambda: 'dnsward_queries_total{verdict="denied"} 1' in open(path).read(),
                     timeout=5, what="the metrics file updated")
            self.assertFalse(os.path.exists(path + ".tmp"))
        finally:
            d.stop()

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
            self.assertRegex(d.logtext(), r"event=stats received=\d+ denied=1 ")
        finally:
            d.stop()


if __name__ == "__main__":
    unittest.main()
