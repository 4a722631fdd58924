"""The policy lifecycle: `dnsward check` exit codes, usage counted and kept across restarts,
`dnsward report`, audit mode, `dnsward explain` and `dig CH TXT why.NAME`."""
import datetime
import json
import os
import re
import tempfile
import unittest

import dns.message
import dns.rcode
import dns.rdataclass

from harness import BIN, ROOT, Dnsward, LO, Stack, require, run, shared_tempdir, wait_for

JUST = ' owner=tests why="e2e" data="none" unreachable="tests fail" reviewed={today}'

stack = None


def setUpModule():
    require("knotd", "dig")
    global stack
    stack = Stack(extra=["--cache-size", "0"])


def tearDownModule():
    assert stack.stop() == 0


# `check` judges review dates against --today, so these never rot: FRESH is 12 days old on
# TODAY, STALE 151 days (over the 90-day review period).
TODAY, FRESH, STALE = "2026-06-01", "2026-05-20", "2026-01-01"


def today(days_ago=0):
    """A date relative to the wall clock (UTC, as dnsward counts), for `serve` and `report`,
    which have no --today: reviewed=today() is fresh and today(200) stale on any day."""
    d = datetime.datetime.now(datetime.timezone.utc).date() - datetime.timedelta(days=days_ago)
    return d.isoformat()


def check(*args):
    return run([BIN, "check", "--today", TODAY, *args])


def write(text, name="t.allow"):
    d = tempfile.mkdtemp(prefix="dnsward-policy-")
    os.chmod(d, 0o755)
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write(text)
    return path


class Check(unittest.TestCase):
    def test_a_justified_list_is_clean_exit_0(self):
        path = write("www.allowed.test" + JUST.format(today=FRESH) + "\n")
        r = check(path)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(r.stdout, "")

    def test_the_shipped_default_list_passes_strict(self):
        # Judged on the day it was last reviewed: whether that day is long past is the
        # quarterly review's business (`report`), not a reason for this test to rot.
        shipped = os.path.join(ROOT, "zones", "default.allow")
        with open(shipped) as f:
            reviewed = max(re.findall(r"reviewed=(\d{4}-\d\d-\d\d)", f.read()))
        r = run([BIN, "check", "--strict", "--today", reviewed, shipped])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(r.stdout, "")

    def test_errors_exit_1_with_file_line_severity_message(self):
        path = write("# bad list\n*.amazonaws.com\ndns.google" + JUST.format(today=FRESH) +
                     "\nfoo.example colour=red\nok.example" + JUST.format(today=STALE) + "\n")
        r = check(path)
        self.assertEqual(r.returncode, 1)
        lines = r.stdout.splitlines()
        self.assertTrue(all(l.startswith(path + ":") for l in lines), lines)
        self.assertIn(f"{path}:2: error: '*.amazonaws.com' is too broad", r.stdout)
        self.assertIn(f"{path}:3: error: 'dns.google' allows dns.google, a DNS-over-HTTPS/TLS resolver", r.stdout)
        self.assertIn(f"{path}:4: error: unknown key 'colour'", r.stdout)
        self.assertIn(f"{path}:5: warning: 'ok.example' was last reviewed", r.stdout)
        strict = check("--strict", write("ok.example" + JUST.format(today=STALE) + "\n"))
        self.assertEqual(strict.returncode, 1)
        self.assertIn(": error: 'ok.example' was last reviewed", strict.stdout)

    def test_a_newer_public_suffix_list_can_be_named(self):
        path = write("*.blob.core.windows.net" + JUST.format(today=FRESH) + "\n")
        self.assertEqual(check(path).returncode, 0)  # Debian's 2023 list: a warning
        r = check("--psl", os.path.join(ROOT, "test", "data", "newer_psl.dat"), path)
        self.assertEqual(r.returncode, 1)
        self.assertIn("blob.core.windows.net is a public suffix", r.stdout)

    def test_unusable_input_exits_2(self):
        self.assertEqual(run([BIN, "check"]).returncode, 2)
        r = check("/nonexistent.allow")
        self.assertEqual(r.returncode, 2)
        self.assertIn("/nonexistent.allow: cannot open", r.stderr)
        self.assertEqual(check("--psl", "/nonexistent.dat", write("a.example\n")).returncode, 2)

    def test_serve_loads_unjustified_entries_with_a_warning_each(self):
        d = Dnsward(stack.relay.port, allowlist="www.allowed.test owner=x\nalias.allowed.test\n")
        try:
            log = d.logtext()
            self.assertIn("event=unjustified-entry", log)
            self.assertIn("missing=why,data,unreachable,reviewed", log)
            self.assertEqual(log.count("event=unjustified-entry"), 2)
            self.assertEqual(d.query("www.allowed.test.").rcode(), dns.rcode.NOERROR)
        finally:
            d.stop()


class Usage(unittest.TestCase):
    def start(self, state, allow, *extra):
        return Dnsward(stack.relay.port, allowlist=allow,
                       extra=["--state", state, "--state-interval", "1", "--cache-size", "0", *extra])

    def test_report_after_a_mix_of_queries(self):
        state = os.path.join(shared_tempdir(), "state")
        allow = ("www.allowed.test" + JUST.format(today=today()) + "\n" +
                 "alias.allowed.test" + JUST.format(today=today()) + "\n" +
                 "never.allowed.test" + JUST.format(today=today(200)) + "\n")
        d = self.start(state, allow)
        for _ in range(3):
            d.query("www.allowed.test.")
            d.query("evil1.test.")
        d.query("alias.allowed.test.")
        d.query("evil2.test.")
        self.assertEqual(d.stop(), 0)  # SIGTERM writes the state
        r = run([BIN, "report", "--state", state, "--allowlist", d.allowlist])
        self.assertEqual(r.returncode, 0, r.stderr)
        unused = r.stdout.split("Entries not used")[1].split("Entries past")[0]
        self.assertIn("never.allowed.test", unused)
        self.assertNotIn("www.allowed.test", unused)
        stale = r.stdout.split("Entries past their quarterly review:")[1].split("Most denied")[0]
        self.assertIn("never.allowed.test", stale)
        denied = r.stdout.split("Most denied names")[1].split("Audit mode")[0].strip().splitlines()[1:]
        self.assertTrue(denied[0].strip().startswith(
            'evil1.test owner="" why="" data="" unreachable="" reviewed=""'), denied)
        self.assertIn("3 queries", denied[0])
        self.assertIn("evil2.test", denied[1])
        j = json.loads(run([BIN, "report", "--json", "--state", state, "--allowlist", d.allowlist]).stdout)
        self.assertEqual([x["name"] for x in j["most_denied"]], ["evil1.test", "evil2.test"])
        self.assertEqual([x["pattern"] for x in j["unused"]], ["never.allowed.test"])

    def test_state_survives_a_restart_and_a_corrupt_file_is_set_aside(self):
        state = os.path.join(shared_tempdir(), "state")
        allow = "www.allowed.test" + JUST.format(today=today()) + "\n"
        d = self.start(state, allow)
        d.query("www.allowed.test.")
        d.query("www.allowed.test.")
        self.assertEqual(d.stop(), 0)
        d = self.start(state, allow)
        for _ in range(3):
            d.query("www.allowed.test.")
        wait_for(lambda: "entry\twww.allowed.test\t5\t" in open(state).read(), timeout=5,
                 what="the periodic save")  # written every second, without a signal
        d.proc.kill()  # a crash loses at most one interval
        d.stop()
        self.assertIn("entry\twww.allowed.test\t5\t", open(state).read())
        with open(state, "w") as f:
            f.write("entry\tbroken\n")
        d = self.start(state, allow)
        try:
            self.assertIn("event=state-corrupt", d.logtext())
            self.assertTrue(any(n.startswith("state.corrupt-") for n in os.listdir(os.path.dirname(state))))
            self.assertEqual(d.query("www.allowed.test.").rcode(), dns.rcode.NOERROR)
        finally:
            self.assertEqual(d.stop(), 0)
        self.assertIn("entry\twww.allowed.test\t1\t", open(state).read())

    def test_audit_mode_forwards_what_enforce_denies_and_reports_it(self):
        state = os.path.join(shared_tempdir(), "state")
        d = self.start(state, "www.allowed.test" + JUST.format(today=today()) + "\n",
                       "--mode", "audit")
        try:
            self.assertIn("AUDIT MODE", d.logtext())
            stack.relay.clear()
            r = d.query("alias.allowed.test.")  # not on the list: forwarded anyway
            self.assertEqual(r.rcode(), dns.rcode.NOERROR)
            self.assertEqual(r.answer[-1][0].address, "198.18.0.2")
            self.assertIn("alias.allowed.test.", stack.relay.names())
            self.assertIn("event=would-deny name=alias.allowed.test", d.logtext())
            self.assertIn("audit mode: not enforced", d.logtext())
        finally:
            self.assertEqual(d.stop(), 0)
        r = run([BIN, "report", "--state", state, "--allowlist", d.allowlist])
        audit = r.stdout.split("Audit mode: names the policy would have denied")[1]
        self.assertIn('alias.allowed.test owner="" why=""', audit)


class Explain(unittest.TestCase):
    def test_explain_names_the_entry_file_line_and_justification(self):
        path = write("# list\nwww.allowed.test owner=ml why=\"pip install\" data=d unreachable=u reviewed=2026-11-01\n")
        r = run([BIN, "explain", "WWW.allowed.test", "--allowlist", path])
        self.assertEqual(r.returncode, 0)
        self.assertIn(f"www.allowed.test: allowed by 'www.allowed.test' at {path}:2", r.stdout)
        self.assertIn("  why: pip install", r.stdout)
        r = run([BIN, "explain", "evil.test", "--allowlist", path])
        self.assertIn("evil.test: denied (NXDOMAIN)", r.stdout)
        r = run([BIN, "explain", "pypi.org"])  # the embedded default list
        self.assertIn("allowed by 'pypi.org' at default.allow (embedded)", r.stdout)

    def test_dig_ch_txt_why_answers_in_band(self):
        dw = stack.dw
        out = run(["dig", f"@{LO}", "-p", str(dw.port), "CH", "TXT", "why.evil.test", "+short"]).stdout
        self.assertIn("evil.test: denied (NXDOMAIN)", out)
        out = run(["dig", f"@{LO}", "-p", str(dw.port), "CH", "TXT", "why.www.allowed.test", "+short"]).stdout
        self.assertIn("www.allowed.test: allowed by 'www.allowed.test' at", out)
        self.assertIn("policy ", out)
        q = dns.message.make_query("why.evil.test.", "TXT", rdclass=dns.rdataclass.CH)
        stack.relay.clear()
        r = dw.udp(q)
        self.assertEqual(r.rcode(), dns.rcode.NOERROR)
        self.assertEqual(stack.relay.names(), [])  # answered locally

    def test_the_denial_ede_points_at_the_in_band_question_and_logs_carry_the_version(self):
        out = run(["dig", f"@{LO}", "-p", str(stack.dw.port), "evil.test"]).stdout
        self.assertRegex(out, r"\(policy [0-9a-f]{8}; dig CH TXT why\.evil\.test\)")
        self.assertRegex(stack.dw.logtext(), r"event=start .* policy=[0-9a-f]{8}\n")


if __name__ == "__main__":
    unittest.main()
