"""Is the ruleset in force? `dnsward serve` reads its table back from the kernel and judges
it against the chain `dnsward nft-rules` prints (a base chain on the output hook, policy
drop, exactly its rules, by the comments they carry), at start and at the end of every
transaction that changes the table's chains or rules. It says so in the log, in the metric
dnsward_ruleset_in_force and in `dig CH TXT status.dnsward`; --require-ruleset answers
SERVFAIL with EDE 14 while it is not. Against the real kernel, in a network namespace this
test process enters; no sleeps: each step waits for the answer or the log line it needs."""
import re
import subprocess
import tempfile
import unittest
import urllib.request

import dns.message
import dns.rcode

from harness import (BIN, Dnsward, Knot, LO, drop_table, ede, enter_new_netns, ensure_user,
                     free_port, nft, nft_set, require, run, wait_for)

ALLOW = "www.allowed.test\n"
knot = None


def setUpModule():
    global knot
    require("knotd", "nft", "ip", "setpriv")
    enter_new_netns()
    ensure_user()
    knot = Knot()


def tearDownModule():
    knot.stop()


def ruleset():
    """The ruleset `nft-rules` prints for dnsward (user dnsward) forwarding to knot. The
    test's own queries to dnsward's port, and dnsward's to knot, are loopback traffic to
    ports other than 53 and 853, which it accepts."""
    r = run([BIN, "nft-rules", "--upstream", f"{LO}:{knot.port}", "--user", "dnsward"])
    assert r.returncode == 0, r.stderr
    return r.stdout


def load(text):
    nft("-f", "-", stdin=text)


def ruleset_id(text):
    return re.search(r'comment "dnsward ruleset id=([0-9a-f]{16}) rules=', text).group(1)


def status(d):
    """The TXT strings of `dig CH TXT status.dnsward`, one per record."""
    r = d.udp(dns.message.make_query("status.dnsward.", "TXT", "CH"))
    assert r.rcode() == dns.rcode.NOERROR, r
    return [b"".join(rd.strings).decode() for rrset in r.answer for rd in rrset]


def state(d):
    """ruleset=... and reason=..., from the status answer."""
    s = status(d)
    reason = next((x[len("reason="):] for x in s if x.startswith("reason=")), "")
    return s[0], reason


def metric(port, name):
    with urllib.request.urlopen(f"http://{LO}:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return line.rsplit(" ", 1)[1]
    return None


def wait_state(d, want, reason_has="", what=None):
    """Waits until the status answer says ruleset=want (with reason_has in the reason):
    noticed by the event the change sent, dnsward checks nothing on a timer."""
    return wait_for(lambda: state(d)[0] == f"ruleset={want}" and reason_has in state(d)[1] and state(d),
                    timeout=5, what=what or f"ruleset={want} {reason_has}")


def handles(chain="output"):
    """The rule handles of the chain, in order."""
    out = nft("-a", "list", "chain", "inet", "dnsward", chain).stdout
    return [int(m) for m in re.findall(r"^\t\t.*# handle (\d+)$", out, re.M)]


class InForce(unittest.TestCase):
    def tearDown(self):
        drop_table()

    def test_a_ruleset_loaded_before_serve_is_in_force_by_status_metric_and_log(self):
        drop_table()
        text = ruleset()
        load(text)
        mport = free_port()
        d = Dnsward(knot.port, allowlist=ALLOW, nft=True, extra=["--metrics-listen", f"{LO}:{mport}"])
        try:
            s = status(d)
            self.assertEqual(s[0], "ruleset=in-force", s)
            rules = len(re.findall(r'comment "dnsward \d+/', text))
            self.assertIn(f"id={ruleset_id(text)} rules={rules} chain=output table=inet dnsward", s)
            self.assertIn("require-ruleset=off", s)
            self.assertIn("mode=enforce", s)
            self.assertTrue(any(x.startswith("policy=") for x in s), s)
            self.assertEqual(metric(mport, "dnsward_ruleset_in_force"), "1")
            log = d.logtext()
            self.assertRegex(log, rf"level=info event=ruleset-in-force id={ruleset_id(text)} "
                                  rf'table="inet dnsward" chain=output rules={rules} ')
            self.assertRegex(log, r"event=nft .* ruleset=in-force require_ruleset=off")
            self.assertNotIn("ruleset-not-in-force", log)
            # And it serves, through the ruleset, as always.
            r = d.query("www.allowed.test.", "A")
            self.assertEqual([x.address for x in r.answer[0]], ["198.18.0.1"])
            self.assertIn("198.18.0.1", nft_set("dnsward", "allowed4"))
        finally:
            self.assertEqual(d.stop(), 0, d.logtext())


class NotInForce(unittest.TestCase):
    def tearDown(self):
        drop_table()

    def test_serve_without_the_ruleset_says_so_loudly_and_notices_it_loaded_later_without_restart(self):
        drop_table()
        mport = free_port()
        d = Dnsward(knot.port, allowlist=ALLOW, nft=True, extra=["--metrics-listen", f"{LO}:{mport}"])
        try:
            # serve created the table and its sets, which no chain uses: egress is open.
            ruleset_state, reason = state(d)
            self.assertEqual(ruleset_state, "ruleset=not-in-force")
            self.assertIn("no chain of table inet dnsward carries the comment", reason)
            self.assertEqual(metric(mport, "dnsward_ruleset_in_force"), "0")
            self.assertRegex(d.logtext(), r"level=error event=ruleset-not-in-force "
                                          r'table="inet dnsward" reason="no chain of table')
            pid = d.proc.pid
            text = ruleset()
            load(text)
            wait_state(d, "in-force")
            self.assertIn(f"event=ruleset-in-force id={ruleset_id(text)}", d.logtext())
            self.assertEqual(metric(mport, "dnsward_ruleset_in_force"), "1")
            self.assertTrue(d.alive())
            self.assertEqual(d.proc.pid, pid)
        finally:
            self.assertEqual(d.stop(), 0, d.logtext())


class Changes(unittest.TestCase):
    """One dnsward; for each change, the ruleset is loaded and in force first, then the one
    change takes it out of force, noticed by its event, with its reason."""

    @classmethod
    def setUpClass(cls):
        drop_table()
        cls.text = ruleset()
        load(cls.text)
        cls.dw = Dnsward(knot.port, allowlist=ALLOW, nft=True)

    @classmethod
    def tearDownClass(cls):
        assert cls.dw.stop() == 0, cls.dw.logtext()
        drop_table()

    def setUp(self):
        load(self.text)
        wait_state(self.dw, "in-force")
        self.errors = self.dw.logtext().count("event=ruleset-not-in-force")

    def check_noticed(self, reason_has):
        wait_state(self.dw, "not-in-force", reason_has)
        # Said loudly, once per transition, with the same reason.
        wait_for(lambda: self.dw.logtext().count("event=ruleset-not-in-force") == self.errors + 1,
                 timeout=5, what="the error line")
        last = [l for l in self.dw.logtext().splitlines() if "event=ruleset-not-in-force" in l][-1]
        self.assertIn("level=error", last)
        self.assertIn(reason_has, last)

    def test_a_deleted_rule_takes_it_out_of_force(self):
        nft("delete", "rule", "inet", "dnsward", "output", "handle", str(handles()[3]))
        self.check_noticed("rule 3 of chain output")

    def test_an_inserted_accept_rule_takes_it_out_of_force(self):
        nft("insert", "rule", "inet", "dnsward", "output", "accept")
        self.check_noticed("rule 0 of chain output")

    def test_policy_accept_takes_it_out_of_force(self):
        nft("chain", "inet", "dnsward", "output", "{ policy accept ; }")
        self.check_noticed("chain output has policy accept, not drop")

    def test_a_deleted_chain_takes_it_out_of_force(self):
        nft("delete", "chain", "inet", "dnsward", "output")
        self.check_noticed("no chain of table inet dnsward carries the comment")

    def test_an_unhooked_chain_with_the_same_rules_is_not_in_force(self):
        # The same chain, comments and rules, minus its hook: a regular chain, which no
        # packet reaches unless a base chain jumps to it. One transaction (the file deletes
        # and rebuilds the table), as an operator's edited ruleset would be loaded.
        unhooked = self.text.replace("\t\ttype filter hook output priority filter; policy drop;\n", "")
        self.assertNotEqual(unhooked, self.text)
        load(unhooked)
        self.assertIn("chain output {", nft("list", "table", "inet", "dnsward").stdout)
        self.check_noticed("chain output is not a base chain (no hook)")

    def test_another_chain_of_its_table_rewriting_after_the_filter_takes_it_out_of_force(self):
        # Root's postrouting chain in dnsward's own table: the output filter let an address
        # of the set through, then `ip daddr set` sends the packet elsewhere.
        nft("add", "chain", "inet", "dnsward", "post",
            "{ type filter hook postrouting priority 0 ; policy accept ; }")
        nft("add", "rule", "inet", "dnsward", "post", "ip", "daddr", "198.51.100.7", "ip", "daddr",
            "set", "192.0.2.99")
        self.check_noticed("table inet dnsward holds 2 chains where `nft-rules` prints one "
                           "(output); besides it: post")

    def test_sets_reloaded_with_flags_interval_take_it_out_of_force_and_withhold_answers(self):
        # In an interval set each address dnsward adds would open a range to the top of
        # the address space (93.184.216.34-255.255.255.255).
        load(self.text.replace("flags timeout", "flags interval, timeout"))
        self.check_noticed("set allowed4 of table inet dnsward has flags interval, timeout")
        r = self.dw.query("www.allowed.test.", "A", use_edns=0)
        self.assertEqual(r.rcode(), dns.rcode.SERVFAIL, r)
        self.assertIn("firewall update failed", ede(r)[1])
        self.assertEqual(nft_set("dnsward", "allowed4"), {})
        self.assertTrue(any("event=vouch-failed" in l and "flags interval, timeout" in l
                            for l in self.dw.logtext().splitlines()), self.dw.logtext()[-2000:])


class RequireRuleset(unittest.TestCase):
    def tearDown(self):
        drop_table()

    def test_a_table_owned_by_the_process_that_loaded_it_is_not_in_force(self):
        # `nft -i` loading the ruleset with `flags owner` on its table: the table is the
        # session's, and goes, chain and all, with no event, when the session ends.
        drop_table()
        owned = ruleset().replace("table inet dnsward {\n", "table inet dnsward {\n\tflags owner;\n", 1)
        self.assertIn("flags owner;", owned)
        with tempfile.NamedTemporaryFile("w", suffix=".nft") as f:
            f.write(owned)
            f.flush()
            session = subprocess.Popen(["nft", "-i"], stdin=subprocess.PIPE,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
            try:
                session.stdin.write(f'include "{f.name}"\n')
                session.stdin.flush()
                wait_for(lambda: "flags owner" in nft("list", "table", "inet", "dnsward",
                                                      check=False).stdout,
                         timeout=5, what="the owned table loaded")
                d = Dnsward(knot.port, allowlist=ALLOW, nft=True, extra=["--require-ruleset"])
                try:
                    ruleset_state, reason = state(d)
                    self.assertEqual(ruleset_state, "ruleset=not-in-force", reason)
                    self.assertIn("table inet dnsward is owned by the process that loaded it "
                                  "(flags owner", reason)
                    r = d.query("www.allowed.test.", "A", use_edns=0)
                    self.assertEqual(r.rcode(), dns.rcode.SERVFAIL)
                    self.assertEqual(ede(r)[0], 14)
                    self.assertEqual(nft_set("dnsward", "allowed4"), {})
                    # The session ends: the table goes without an event. Still no answer.
                    session.stdin.close()
                    session.wait(timeout=5)
                    r = d.query("www.allowed.test.", "A", use_edns=0)
                    self.assertEqual(r.rcode(), dns.rcode.SERVFAIL)
                    self.assertEqual(ede(r)[0], 14)
                finally:
                    self.assertEqual(d.stop(), 0, d.logtext())
            finally:
                if session.poll() is None:
                    session.kill()
                    session.wait()

    def test_require_ruleset_gives_servfail_with_ede_14_until_the_ruleset_is_in_force(self):
        drop_table()
        d = Dnsward(knot.port, allowlist=ALLOW, nft=True, extra=["--require-ruleset"])
        try:
            self.assertIn("require-ruleset=on", status(d))
            self.assertEqual(state(d)[0], "ruleset=not-in-force")
            for name in ("www.allowed.test.", "denied.test.", "localhost."):
                r = d.query(name, "A", use_edns=0)
                self.assertEqual(r.rcode(), dns.rcode.SERVFAIL, name)
                self.assertEqual(r.answer, [])
                code, text = ede(r)
                self.assertEqual(code, 14, name)  # RFC 8914 4.15 Not Ready
                self.assertIn("ruleset is not in force, and --require-ruleset withholds", text)
                self.assertIn("status.dnsward): no chain of table inet dnsward", text)
            self.assertEqual(nft_set("dnsward", "allowed4"), {})  # nothing vouched
            # The CH diagnostics still answer.
            why = d.udp(dns.message.make_query("why.www.allowed.test.", "TXT", "CH"))
            self.assertEqual(why.rcode(), dns.rcode.NOERROR)
            # In force: normal answers, without a restart.
            load(ruleset())
            wait_state(d, "in-force")
            r = d.query("www.allowed.test.", "A")
            self.assertEqual(r.rcode(), dns.rcode.NOERROR)
            self.assertEqual([x.address for x in r.answer[0]], ["198.18.0.1"])
            self.assertIn("198.18.0.1", nft_set("dnsward", "allowed4"))
            self.assertEqual(d.query("denied.test.", "A").rcode(), dns.rcode.NXDOMAIN)
            # Out of force again: SERVFAIL again, with the new reason.
            nft("chain", "inet", "dnsward", "output", "{ policy accept ; }")
            wait_state(d, "not-in-force", "policy accept")
            r = d.query("www.allowed.test.", "A", use_edns=0)
            self.assertEqual(r.rcode(), dns.rcode.SERVFAIL)
            self.assertEqual(ede(r)[0], 14)
            self.assertIn("chain output has policy accept, not drop", ede(r)[1])
        finally:
            self.assertEqual(d.stop(), 0, d.logtext())


if __name__ == "__main__":
    unittest.main()
