"""The command line and the config file: errors are one line with exit code 2 and start
nothing; the embedded default list, config files and IPv6 listeners work."""
import os
import signal
import socket
import subprocess
import tempfile
import unittest

import dns.message
import dns.query
import dns.rcode

from harness import BIN, Dnsward, Knot, LO, Relay, free_port, run, wait_for

knot = None


def setUpModule():
    global knot
    knot = Knot()


def tearDownModule():
    knot.stop()


def serve(*args):
    return run([BIN, "serve", *args])


def has_ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class Errors(unittest.TestCase):
    def assert_usage_error(self, r, *fragments):
        self.assertEqual(r.returncode, 2, r.stderr)
        lines = r.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, r.stderr)
        for f in fragments:
            self.assertIn(f, lines[0])
        self.assertEqual(r.stdout, "")

    def test_unknown_option_is_one_line_exit_2(self):
        self.assert_usage_error(serve("--bogus", "--no-nft"), "bogus")

    def test_out_of_bounds_value_names_option_and_bounds(self):
        self.assert_usage_error(serve("--upstream-timeout", "5", "--upstream", "127.0.0.2"),
                                "--upstream-timeout 5", "50 and 30000")

    def test_malformed_listen_address(self):
        self.assert_usage_error(serve("--listen", "localhost:53", "--upstream", "127.0.0.2"),
                                "--listen localhost:53")

    def test_forwarding_loop_is_refused(self):
        port = free_port()
        self.assert_usage_error(serve("--listen", f"{LO}:{port}", "--upstream", f"{LO}:{port}",
                                      "--no-nft"), "forwarding loop")
        # Nothing was started on that port.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((LO, port))

    def test_no_command_and_unknown_command(self):
        r = run([BIN])
        self.assertEqual(r.returncode, 2)
        self.assertIn("usage", r.stderr)
        self.assert_usage_error(run([BIN, "frobnicate"]), "unknown command 'frobnicate'")

    def test_help_lists_every_option(self):
        r = serve("--help")
        self.assertEqual(r.returncode, 0)
        for opt in ("--listen", "--upstream", "--allowlist", "--config", "--no-nft",
                    "--upstream-timeout", "--upstream-tries", "--negative-ttl",
                    "--udp-payload", "--tcp-max-connections", "--tcp-idle-timeout"):
            self.assertIn(opt, r.stdout)
        self.assertEqual(run([BIN, "--help"]).returncode, 0)

    def test_bad_allowlist_reports_every_file_line_and_starts_nothing(self):
        d = tempfile.mkdtemp()
        path = os.path.join(d, "bad.allow")
        with open(path, "w") as f:
            f.write("good.example\n*.com.*\nok.example colour=blue\n**\n")
        port = free_port()
        r = serve("--listen", f"{LO}:{port}", "--upstream", f"{LO}:{knot.port}", "--no-nft",
                  "--allowlist", path)
        self.assertEqual(r.returncode, 2)
        lines = r.stderr.strip().splitlines()
        self.assertEqual([l.split(": ")[1] for l in lines],
                         [f"{path}:2", f"{path}:3", f"{path}:4"])
        self.assertIn("unknown key 'colour'", lines[1])

    def test_missing_allowlist_file(self):
        r = serve("--upstream", f"{LO}:{knot.port}", "--no-nft", "--allowlist", "/nonexistent.allow")
        self.assertEqual(r.returncode, 2)
        self.assertIn("/nonexistent.allow: cannot open", r.stderr)

    def test_port_in_use_is_a_clear_start_up_error(self):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((LO, 0))
            port = s.getsockname()[1]
            r = subprocess.run([BIN, "serve", "--listen", f"{LO}:{port}", "--upstream",
                                f"{LO}:{knot.port}", "--no-nft"], capture_output=True,
                               text=True, timeout=10)
        self.assertEqual(r.returncode, 1)
        self.assertIn(f"bind udp {LO}:{port}", r.stderr)
        self.assertIn("Address already in use", r.stderr)


class Starting(unittest.TestCase):
    def test_embedded_default_list_is_used_without_allowlist(self):
        relay = Relay(knot.port)
        d = Dnsward(relay.port, allowlist=None)
        try:
            self.assertIn("allowlist=embedded-default", d.logtext())
            self.assertEqual(d.query("evil.example.").rcode(), dns.rcode.NXDOMAIN)
            self.assertEqual(d.query("org.").rcode(), dns.rcode.NOERROR)  # pypi.org below
            d.query("pypi.org.")
            d.query("files.pythonhosted.org.")
            d.query("registry.npmjs.org.")
            self.assertEqual(relay.names(), ["pypi.org.", "files.pythonhosted.org.",
                                             "registry.npmjs.org."])
        finally:
            d.stop()
            relay.stop()

    def test_config_file_gives_the_same_options(self):
        port = free_port()
        d = tempfile.mkdtemp()
        allow = os.path.join(d, "c.allow")
        with open(allow, "w") as f:
            f.write("www.allowed.test\n")
        conf = os.path.join(d, "dnsward.conf")
        with open(conf, "w") as f:
            f.write(f"# test config\nlisten = {LO}:{port}\nupstream = {LO}:{knot.port}\n"
                    f"allowlist = {allow}\nno-nft = true\nnegative-ttl = 4\n")
        p = subprocess.Popen([BIN, "serve", "--config", conf], stderr=subprocess.PIPE, text=True)
        try:
            q = dns.message.make_query("www.allowed.test.", "A")
            r = wait_for(lambda: dns.query.udp(q, LO, port=port, timeout=0.2), what="answer")
            self.assertEqual([x.address for x in r.answer[0]], ["198.18.0.1"])
            r = dns.query.udp(dns.message.make_query("evil.test.", "A"), LO, port=port, timeout=2)
            self.assertEqual(r.authority[0].ttl, 4)
        finally:
            p.terminate()
            self.assertEqual(p.wait(10), 0)

    @unittest.skipUnless(has_ipv6_loopback(), "no IPv6 loopback here")
    def test_ipv6_listener_serves_udp_and_tcp(self):
        port = free_port()
        d = Dnsward(knot.port, listen=f"[::1]:{port}", wait=False)
        try:
            q = dns.message.make_query("www.allowed.test.", "A")
            r = wait_for(lambda: dns.query.udp(q, "::1", port=port, timeout=0.2), what="v6 answer")
            self.assertEqual([x.address for x in r.answer[0]], ["198.18.0.1"])
            r = dns.query.tcp(q, "::1", port=port, timeout=2)
            self.assertEqual([x.address for x in r.answer[0]], ["198.18.0.1"])
        finally:
            d.stop()

    def test_sighup_reloads_and_a_broken_file_keeps_the_old_list(self):
        d = Dnsward(knot.port, allowlist="www.allowed.test\n")
        try:
            self.assertEqual(d.query("www.allowed.test.").rcode(), dns.rcode.NOERROR)
            self.assertEqual(d.query("a.wild.test.").rcode(), dns.rcode.NXDOMAIN)
            with open(d.allowlist, "w") as f:
                f.write("*.wild.test\n")
            d.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: d.query("a.wild.test.").rcode() == dns.rcode.NOERROR,
                     timeout=5, what="new list in force")
            self.assertEqual(d.query("www.allowed.test.").rcode(), dns.rcode.NXDOMAIN)
            with open(d.allowlist, "w") as f:
                f.write("www.allowed.test\nbad*.test\n")
            d.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: "reload-failed" in d.logtext(), timeout=5, what="reload failure")
            self.assertIn(f"{d.allowlist}:2: bad pattern", d.logtext())
            # The old list (*.wild.test) still answers; nothing of the broken file took hold.
            self.assertEqual(d.query("a.wild.test.").rcode(), dns.rcode.NOERROR)
            self.assertEqual(d.query("www.allowed.test.").rcode(), dns.rcode.NXDOMAIN)
            self.assertTrue(d.alive())
        finally:
            d.stop()

    def test_wildcard_listener_answers_from_the_address_it_was_asked_on(self):
        # In a network namespace of its own (only loopback exists there), dnsward listens on
        # 0.0.0.0 and [::] and is asked on 127.0.0.5 and ::1; dnspython refuses a reply from
        # any other source address.
        script = f"""
import subprocess, sys, time
import dns.message, dns.query, dns.rcode
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
p = subprocess.Popen(["{BIN}", "serve", "--no-nft", "--listen", "0.0.0.0:5353",
                      "--listen", "[::]:5353", "--upstream", "127.0.0.1:1"])
try:
    q = dns.message.make_query("evil.test.", "A")
    for addr in ("127.0.0.5", "::1"):
        for _ in range(100):
            try:
                r = dns.query.udp(q, addr, port=5353, timeout=0.2)
                break
            except dns.exception.Timeout:
                time.sleep(0.05)
        assert r.rcode() == dns.rcode.NXDOMAIN, r
        r = dns.query.tcp(q, addr, port=5353, timeout=2)
        assert r.rcode() == dns.rcode.NXDOMAIN, r
    print("ok")
finally:
    p.terminate()
    p.wait()
"""
        r = run(["unshare", "-n", "/usr/bin/python3", "-c", script])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.strip(), "ok")

    def test_sigterm_stops_cleanly(self):
        d = Dnsward(knot.port)
        self.assertEqual(d.stop(), 0)
        self.assertIn("event=stop", d.logtext())


if __name__ == "__main__":
    unittest.main()
