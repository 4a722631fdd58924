"""The command line and the config file: errors are one line with exit code 2 and start
nothing; the embedded default list, config files and IPv6 listeners work."""
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import unittest

import dns.message
import dns.query
import dns.rcode

from harness import BIN, HERE, Dnsward, Knot, LO, Relay, UsageErrors, free_port, require, run, wait_for

knot = None


def setUpModule():
    global knot
    require("knotd", "unshare", "ip")
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


class Errors(UsageErrors, unittest.TestCase):
    def test_unknown_option_is_one_line_exit_2(self):
        self.assert_usage_error(serve("--bogus", "--no-nft"), "bogus")

    def test_out_of_bounds_value_names_option_and_bounds(self):
        self.assert_usage_error(serve("--upstream-timeout", "5", "--upstream", "127.0.0.2"),
                                "--upstream-timeout 5", "50 and 30000")

    def test_require_ruleset_without_the_hook_is_refused(self):
        # --no-nft leaves no ruleset to check: the two together would SERVFAIL for ever.
        self.assert_usage_error(serve("--require-ruleset", "--no-nft", "--upstream", "127.0.0.2"),
                                "--require-ruleset needs the nftables hook")

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

    # Every option of `serve`, as documented in README.md's "Command line" table. Adding an
    # option means adding it here too: --help must list exactly these, no more, no fewer.
    SERVE_OPTIONS = {
        "--config", "--listen", "--upstream", "--allowlist", "--no-nft", "--require-ruleset",
        "--nft-family",
        "--nft-table", "--nft-set4", "--nft-set6", "--nft-set-size", "--nft-refresh",
        "--min-ttl", "--max-ttl", "--grace", "--cache-size", "--cache-bytes",
        "--max-answer-addresses", "--mode", "--state", "--state-interval", "--negative-ttl",
        "--udp-payload", "--upstream-timeout", "--upstream-tries", "--max-inflight",
        "--tcp-max-connections", "--tcp-idle-timeout", "--tcp-max-pipelined", "--log-level",
        "--log-format", "--user", "--metrics-listen", "--metrics-file", "--metrics-interval",
        "--state-max-names", "--host", "--sandbox-ifaces", "--host-mark", "--control",
        "--control-group", "--sandboxes", "--host-set-size", "--sandbox-max-elements",
        "--sandbox-max-inflight", "--sandbox-max-tcp", "--sandbox-state-names",
        "--max-names-per-element", "--sni-guard", "--sni-ports", "--http-ports", "--queue-num",
        "--queue-maxlen", "--queue-backend", "--guard-marks", "--first-flight-timeout", "--help",
    }

    def test_help_lists_every_option(self):
        r = serve("--help")
        self.assertEqual(r.returncode, 0)
        listed = re.findall(r"^  (--[a-z0-9-]+)", r.stdout, re.M)
        self.assertEqual(len(listed), len(set(listed)), "an option listed twice")
        self.assertEqual(set(listed), self.SERVE_OPTIONS)
        # And each one listed is one the parser knows (a value it rejects is fine here).
        for opt in sorted(self.SERVE_OPTIONS - {"--help"}):
            r = serve("--listen", f"{LO}:{free_port()}", "--upstream", f"{LO}:{knot.port}",
                      "--no-nft", opt, "--x", "--not-an-option")
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertNotIn(f"unrecognised option '{opt}'", r.stderr)
            self.assertNotIn(f"unknown option '{opt}'", r.stderr)
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
        # In a network namespace of its own, lo carries a second address of each family
        # (10.53.0.2, fd53::2); dnsward listens on 0.0.0.0 and [::] and is asked on every
        # address, from the other address of the family, for a name it answers itself (a
        # denial) and for one it forwards to knot (whose reply goes out later, from another
        # code path). A reply from any other source address than the one asked would be
        # dropped by a real client: each reply's source is recorded.
        script = f"""
import json, socket, subprocess, sys
sys.path.insert(0, {HERE!r})
import dns.message, dns.query
from harness import Dnsward, Knot, LO
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
subprocess.run(["ip", "addr", "add", "10.53.0.2/32", "dev", "lo"], check=True)
subprocess.run(["ip", "addr", "add", "fd53::2/128", "dev", "lo", "nodad"], check=True)
knot = Knot()
d = Dnsward(knot.port, allowlist="www.allowed.test\\n",
            listen=["0.0.0.0:{{port}}", "[::]:{{port}}"], extra=["--cache-size", "0"])
out = []
try:
    # Each query is sent from the other address of its family, so that the kernel's own
    # choice of source for a reply to the client would be the wrong one.
    for addr, client in (("127.0.0.1", "10.53.0.2"), ("10.53.0.2", "127.0.0.1"),
                         ("::1", "fd53::2"), ("fd53::2", "::1")):
        fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
        for name in ("evil.test.", "www.allowed.test."):
            q = dns.message.make_query(name, "A")
            with socket.socket(fam, socket.SOCK_DGRAM) as s:
                s.settimeout(3)
                s.bind((client, 0))
                s.sendto(q.to_wire(), (addr, d.port))
                data, src = s.recvfrom(65535)
            r = dns.message.from_wire(data)
            t = dns.query.tcp(q, addr, port=d.port, timeout=3)
            out.append([addr, name, src[0], r.rcode(), t.rcode()])
finally:
    d.stop()
    knot.stop()
print(json.dumps(out))
"""
        r = run(["unshare", "-n", "/usr/bin/python3", "-c", script])
        self.assertEqual(r.returncode, 0, r.stderr)
        got = json.loads(r.stdout)
        self.assertEqual(len(got), 8, got)
        for addr, name, src, udp_rcode, tcp_rcode in got:
            self.assertEqual(src, addr, (addr, name))
            want = dns.rcode.NXDOMAIN if name == "evil.test." else dns.rcode.NOERROR
            self.assertEqual((udp_rcode, tcp_rcode), (want, want), (addr, name))

    def test_sigterm_stops_cleanly(self):
        d = Dnsward(knot.port)
        self.assertEqual(d.stop(), 0)
        self.assertIn("event=stop", d.logtext())


if __name__ == "__main__":
    unittest.main()
