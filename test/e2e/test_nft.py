"""The enforcement hook against the real kernel: this test process moves into a network
namespace of its own, where dnsward fills nftables sets that `nft` then reads back."""
import os
import re
import signal
import socket
import subprocess
import threading
import unittest

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from harness import (BIN, Dnsward, Knot, LO, LoopbackServer, drop_table, ede, enter_new_netns,
                     free_port, nft, nft_set, nft_set_info, require, run, shared_tempdir,
                     wait_for)

ZONE = """$ORIGIN test.
$TTL 300
@ SOA ns.test. hostmaster.test. 1 3600 600 86400 60
@ NS ns
ns A 127.0.0.1
www A 198.18.0.1
www AAAA 2001:db8::1
alias CNAME target.other
target.other A 198.18.0.2
zero 0 A 198.18.0.3
long 86400 A 198.18.0.4
short 10 A 198.18.0.5
priv A 10.1.2.3
meta A 169.254.169.254
mixed A 10.1.2.4
mixed A 198.18.0.6
lo6 AAAA ::1
mapped AAAA ::ffff:10.0.0.1
nat64 AAAA 64:ff9b::a00:1
optin A 10.5.5.5
svc HTTPS 1 . alpn=h2 ipv4hint=198.18.0.8
svcbad HTTPS 1 . ipv4hint=10.0.0.8
deleg NS ns.deleg
ns.deleg A 198.18.0.9
*.wild A 198.18.4.1
samelong 86400 A 198.18.0.40
sameshort 10 A 198.18.0.40
pair A 198.18.0.41
pair A 198.18.0.42
other A 198.18.0.43
fivemin A 198.18.0.50
""" + "".join(f"nine A 198.18.5.{i}\n" for i in range(1, 10)) + "".join(
    f"many A 198.18.3.{i}\n" for i in range(1, 41))

ALLOW = """www.test
alias.test
zero.test
long.test
short.test
priv.test
meta.test
mixed.test
lo6.test
mapped.test
nat64.test
optin.test private=yes why="an internal mirror on purpose"
svc.test
svcbad.test
**.deleg.test
*.wild.test
many.test
samelong.test
sameshort.test
pair.test
other.test
nine.test
fivemin.test
"""

knot = None


def setUpModule():
    global knot
    require("knotd", "nft", "ip", "setpriv", "unshare")
    enter_new_netns()
    knot = Knot(ZONE)


def tearDownModule():
    knot.stop()


def load_printed_ruleset(test):
    """Loads what `nft-rules` prints (user root, forwarding to knot) in place of any table."""
    drop_table()
    r = run([BIN, "nft-rules", "--upstream", f"{LO}:{knot.port}", "--user", "root"])
    test.assertEqual(r.returncode, 0, r.stderr)
    load = nft("-f", "-", stdin=r.stdout, check=False)
    test.assertEqual(load.returncode, 0, load.stderr)


def kernel_updates_in_place():
    """Element timeouts are updated in place from kernel 6.12 on (Debian 12 runs 6.1)."""
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    return (major, minor) >= (6, 12)


def addrs(r):
    return sorted(x.address for rrset in r.answer
                  if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA) for x in rrset)


class Hook(unittest.TestCase):
    """One dnsward with the hook on, as the operator would start it."""

    @classmethod
    def setUpClass(cls):
        drop_table()
        cls.dw = Dnsward(knot.port, allowlist=ALLOW, nft=True,
                         extra=["--max-ttl", "600", "--min-ttl", "30", "--grace", "30"])

    @classmethod
    def tearDownClass(cls):
        assert cls.dw.stop() == 0
        drop_table()

    def v4(self):
        return nft_set("dnsward", "allowed4")

    def v6(self):
        return nft_set("dnsward", "allowed6")

    def test_sets_are_created_with_the_right_type_and_timeout_flag(self):
        self.assertEqual(nft_set_info("dnsward", "allowed4")[:2], ("ipv4_addr", ["timeout"]))
        self.assertEqual(nft_set_info("dnsward", "allowed6")[:2], ("ipv6_addr", ["timeout"]))

    def test_answered_addresses_are_in_the_sets_when_the_reply_arrives(self):
        r = self.dw.query("www.test.", "A")
        self.assertEqual(addrs(r), ["198.18.0.1"])
        self.assertIn("198.18.0.1", self.v4())  # no waiting: vouched before the reply left
        r = self.dw.query("www.test.", "AAAA")
        self.assertEqual(addrs(r), ["2001:db8::1"])
        self.assertIn("2001:db8::1", self.v6())

    def test_a_cname_target_is_vouched_without_an_entry_of_its_own(self):
        r = self.dw.query("alias.test.", "A")
        self.assertEqual(addrs(r), ["198.18.0.2"])
        self.assertIn("198.18.0.2", self.v4())

    def test_element_timeout_is_the_clamped_ttl_plus_grace(self):
        # A name no other test asks, so the answer comes from the upstream with its full
        # TTL whatever ran before (a cache hit a second later would say 299).
        r = self.dw.query("fivemin.test.", "A")  # TTL 300: element 330 s
        self.assertEqual(r.answer[0].ttl, 300)
        self.assertEqual(self.v4()["198.18.0.50"][0], 330)
        r = self.dw.query("long.test.", "A")  # TTL 86400: clamped to 600, element 630 s
        self.assertEqual(r.answer[0].ttl, 600)  # no client keeps it longer than the set
        self.assertEqual(self.v4()["198.18.0.4"][0], 630)
        r = self.dw.query("zero.test.", "A")  # TTL 0 must never become "forever"
        self.assertEqual(r.answer[0].ttl, 0)
        self.assertEqual(self.v4()["198.18.0.3"][0], 60)

    def test_special_purpose_addresses_are_never_vouched_nor_answered(self):
        for name, rdtype in (("priv.test.", "A"), ("meta.test.", "A"), ("lo6.test.", "AAAA"),
                             ("mapped.test.", "AAAA"), ("nat64.test.", "AAAA")):
            r = self.dw.query(name, rdtype, use_edns=0)  # EDE needs EDNS
            self.assertEqual(r.rcode(), dns.rcode.NOERROR, name)
            self.assertEqual(addrs(r), [], name)
            code, text = ede(r)
            self.assertEqual(code, 15, name)
            self.assertIn("rebinding", text)
        r = self.dw.query("mixed.test.", "A")
        self.assertEqual(addrs(r), ["198.18.0.6"])
        v4, v6 = self.v4(), self.v6()
        for a in ("10.1.2.3", "169.254.169.254", "10.1.2.4"):
            self.assertNotIn(a, v4)
        for a in ("::1", "::ffff:10.0.0.1", "64:ff9b::a00:1"):
            self.assertNotIn(a, v6)
        self.assertIn("198.18.0.6", v4)

    def test_an_entry_with_private_yes_may_vouch_for_a_private_address(self):
        r = self.dw.query("optin.test.", "A")
        self.assertEqual(addrs(r), ["10.5.5.5"])
        self.assertIn("10.5.5.5", self.v4())

    def test_https_hints_are_vouched_or_the_record_removed(self):
        r = self.dw.query("svc.test.", "HTTPS")
        self.assertEqual(r.answer[0].rdtype, dns.rdatatype.HTTPS)
        self.assertIn("198.18.0.8", self.v4())
        r = self.dw.query("svcbad.test.", "HTTPS")
        self.assertEqual(r.answer, [])
        self.assertNotIn("10.0.0.8", self.v4())

    def test_glue_is_neither_relayed_nor_vouched(self):
        r = self.dw.query("www.deleg.test.", "A")  # a referral with glue in additional
        self.assertEqual(r.additional, [])
        self.assertNotIn("198.18.0.9", self.v4())

    def test_answers_over_tcp_vouch_too(self):
        r = self.dw.query("tcp1.wild.test.", "A", tcp=True)
        self.assertEqual(addrs(r), ["198.18.4.1"])
        self.assertIn("198.18.4.1", self.v4())

    def test_a_flushed_set_is_refilled_by_the_next_answer_even_from_cache(self):
        self.dw.query("www.test.", "A")
        self.assertIn("198.18.0.1", self.v4())
        nft("flush", "set", "inet", "dnsward", "allowed4")
        self.assertNotIn("198.18.0.1", self.v4())
        r = self.dw.query("www.test.", "A")  # a cache hit: dnsward's view was reset
        self.assertEqual(addrs(r), ["198.18.0.1"])
        self.assertIn("198.18.0.1", self.v4())

    def test_a_deleted_table_is_recreated_and_refilled(self):
        self.dw.query("www.test.", "A")
        nft("delete", "table", "inet", "dnsward")
        wait_for(lambda: nft_set_info("dnsward", "allowed4") is not None, timeout=5,
                 what="table recreated")
        self.dw.query("www.test.", "A")
        self.assertIn("198.18.0.1", self.v4())
        self.assertIn("nft-external-change", self.dw.logtext())


class Reload(unittest.TestCase):
    def test_sighup_revokes_removed_entries_and_a_broken_list_changes_nothing(self):
        drop_table()
        import tempfile
        work = tempfile.mkdtemp(prefix="dnsward-reload-")
        os.chmod(work, 0o755)
        first, second = os.path.join(work, "first.allow"), os.path.join(work, "second.allow")
        with open(first, "w") as f:
            f.write("www.test\nalias.test\n")
        conf = os.path.join(work, "dnsward.conf")
        with open(conf, "w") as f:
            f.write(f"allowlist = {first}\n")
        d = Dnsward(knot.port, allowlist=None, nft=True, extra=["--config", conf])
        try:
            self.assertEqual(addrs(d.query("www.test.", "A")), ["198.18.0.1"])
            self.assertEqual(addrs(d.query("alias.test.", "A")), ["198.18.0.2"])
            self.assertLessEqual({"198.18.0.1", "198.18.0.2"}, set(nft_set("dnsward", "allowed4")))
            # The config now names another list: www stays, alias goes, short comes.
            with open(second, "w") as f:
                f.write("www.test\nshort.test\n")
            with open(conf, "w") as f:
                f.write(f"allowlist = {second}\n")
            d.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: "event=reload " in d.logtext(), timeout=5, what="the reload")
            held = set(nft_set("dnsward", "allowed4"))
            self.assertNotIn("198.18.0.2", held)  # revoked at once, before any new query
            self.assertIn("198.18.0.1", held)
            self.assertIn("event=revoked deleted=1 already_gone=0", d.logtext())
            self.assertEqual(d.query("alias.test.", "A").rcode(), dns.rcode.NXDOMAIN)
            self.assertEqual(addrs(d.query("short.test.", "A")), ["198.18.0.5"])
            # A broken list: logged with FILE:LINE, and the second list stays in force.
            with open(second, "w") as f:
                f.write("www.test\nbad pattern here\n")
            d.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: "reload-failed" in d.logtext(), timeout=5, what="the failed reload")
            self.assertIn(f"{second}:2: expected key=value", d.logtext())
            self.assertEqual(addrs(d.query("short.test.", "A")), ["198.18.0.5"])
            self.assertEqual(d.query("alias.test.", "A").rcode(), dns.rcode.NXDOMAIN)
            self.assertTrue(d.alive())
        finally:
            d.stop()
            drop_table()


class Privilege(unittest.TestCase):
    def test_after_start_up_it_runs_unprivileged_with_cap_net_admin_only_and_still_vouches(self):
        drop_table()
        d = Dnsward(knot.port, allowlist=ALLOW, nft=True)
        try:
            with open(f"/proc/{d.proc.pid}/status") as st:
                status = st.read()
            f = dict(l.split(":\t", 1) for l in status.splitlines() if ":\t" in l)
            uid = int(subprocess.run(["id", "-u", "dnsward"], capture_output=True, text=True).stdout)
            self.assertEqual([int(x) for x in f["Uid"].split()], [uid] * 4)
            cap_net_admin = 1 << 12
            for field in ("CapEff", "CapPrm", "CapBnd"):
                self.assertEqual(int(f[field], 16), cap_net_admin, field)
            self.assertEqual(int(f["CapInh"], 16), 0)
            self.assertEqual(int(f["CapAmb"], 16), 0)
            self.assertEqual(f["NoNewPrivs"].strip(), "1")
            self.assertIn(f"event=privileges-dropped uid={uid} kept=CAP_NET_ADMIN", d.logtext())
            # And the hook still works, including after the kernel's set was flushed.
            self.assertEqual(addrs(d.query("www.test.", "A")), ["198.18.0.1"])
            self.assertIn("198.18.0.1", nft_set("dnsward", "allowed4"))
            nft("flush", "set", "inet", "dnsward", "allowed4")
            self.assertEqual(addrs(d.query("www.test.", "A")), ["198.18.0.1"])
            self.assertIn("198.18.0.1", nft_set("dnsward", "allowed4"))
        finally:
            d.stop()
            drop_table()

    def test_an_unknown_user_named_explicitly_is_a_start_up_error(self):
        drop_table()
        r = subprocess.run([BIN, "serve", "--listen", f"{LO}:{free_port()}", "--upstream",
                            f"{LO}:{knot.port}", "--no-nft", "--user", "no-such-user-here"],
                           capture_output=True, text=True, timeout=20)
        self.assertEqual(r.returncode, 1)
        self.assertIn("--user no-such-user-here: no such user", r.stderr)


    def test_without_a_dnsward_user_and_without_user_it_serves_as_root_and_says_so(self):
        # The default user is missing (a mount namespace shows dnsward an /etc/passwd
        # without it) and --user was not given: it keeps running as root, warns, and serves.
        work = shared_tempdir("dnsward-noroot-")
        passwd = os.path.join(work, "passwd")
        with open("/etc/passwd") as src, open(passwd, "w") as dst:
            dst.writelines(l for l in src if not l.startswith("dnsward:"))
        os.chmod(passwd, 0o644)
        d = Dnsward(knot.port, allowlist=ALLOW, prefix=[
            "unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount --bind "$0" /etc/passwd && exec "$@"', passwd])
        try:
            self.assertIn("event=still-root", d.logtext())
            self.assertIn("there is no user 'dnsward' to drop to", d.logtext())
            self.assertNotIn("event=privileges-dropped", d.logtext())
            with open(f"/proc/{d.proc.pid}/status") as f:
                status = f.read()
            self.assertIn(os.path.basename(BIN), status.splitlines()[0])  # dnsward itself
            uids = next(l for l in status.splitlines() if l.startswith("Uid:")).split()[1:]
            self.assertEqual(uids, ["0"] * 4)
            self.assertEqual(addrs(d.query("www.test.", "A")), ["198.18.0.1"])
            self.assertEqual(d.query("evil.test.", "A").rcode(), dns.rcode.NXDOMAIN)
        finally:
            self.assertEqual(d.stop(), 0)


class Options(unittest.TestCase):
    """The options that shape what dnsward creates and fills."""

    def tearDown(self):
        for family in ("inet", "ip", "ip6"):
            nft("delete", "table", family, "dnsward", check=False)

    def tables(self):
        import json
        out = json.loads(nft("-j", "list", "tables").stdout)["nftables"]
        return sorted((t["table"]["family"], t["table"]["name"]) for t in out if "table" in t)

    def test_nft_set_size_is_the_size_of_the_sets_it_creates(self):
        drop_table()
        d = Dnsward(knot.port, allowlist=ALLOW, nft=True, extra=["--nft-set-size", "2048"])
        try:
            self.assertEqual(nft_set_info("dnsward", "allowed4"), ("ipv4_addr", ["timeout"], 2048))
            self.assertEqual(nft_set_info("dnsward", "allowed6"), ("ipv6_addr", ["timeout"], 2048))
            self.assertIn("size4=2048", d.logtext())
        finally:
            d.stop()

    def check_family(self, family, rdtype, address, set_name, set_type):
        self.tearDown()
        d = Dnsward(knot.port, allowlist=ALLOW, nft=True, extra=["--nft-family", family])
        try:
            self.assertEqual(self.tables(), [(family, "dnsward")])  # no inet table
            self.assertEqual(nft_set_info("dnsward", set_name, family)[:2], (set_type, ["timeout"]))
            self.assertEqual(addrs(d.query("www.test.", rdtype)), [address])
            self.assertIn(address, nft_set("dnsward", set_name, family))
        finally:
            d.stop()

    def test_nft_family_ip_creates_and_fills_a_table_ip(self):
        self.check_family("ip", "A", "198.18.0.1", "allowed4", "ipv4_addr")

    def test_nft_family_ip6_creates_and_fills_a_table_ip6(self):
        self.check_family("ip6", "AAAA", "2001:db8::1", "allowed6", "ipv6_addr")

    def test_audit_mode_with_the_hook_on_vouches_for_what_enforce_would_deny(self):
        drop_table()
        d = Dnsward(knot.port, allowlist="www.test\n", nft=True, extra=["--mode", "audit"])
        try:
            self.assertEqual(addrs(d.query("other.test.", "A")), ["198.18.0.43"])  # off the list
            self.assertIn("198.18.0.43", nft_set("dnsward", "allowed4"))  # in the set already
            self.assertIn("event=would-deny name=other.test", d.logtext())
            self.assertEqual(addrs(d.query("www.test.", "A")), ["198.18.0.1"])
            self.assertIn("198.18.0.1", nft_set("dnsward", "allowed4"))
        finally:
            d.stop()


class Refresh(unittest.TestCase):
    """Re-answering a name extends its element, whether the kernel updates in place or
    dnsward has to delete and add (the only way on kernels before 6.12, Debian 12's 6.1)."""

    def check_mode(self, mode):
        drop_table()
        d = Dnsward(knot.port, allowlist=ALLOW, nft=True,
                    extra=["--nft-refresh", mode, "--cache-size", "0", "--min-ttl", "1",
                           "--grace", "1"])
        try:
            d.query("short.test.", "A")  # TTL 10: element 11 s
            self.assertEqual(nft_set("dnsward", "allowed4")["198.18.0.5"][0], 11)
            # The kernel counts the element down; once it has lost two seconds, a fresh
            # answer must take it back up.
            wait_for(lambda: nft_set("dnsward", "allowed4")["198.18.0.5"][1] <= 9, timeout=10,
                     what="the element ageing")
            d.query("short.test.", "A")  # a fresh upstream answer: 11 s from now
            expires = nft_set("dnsward", "allowed4")["198.18.0.5"][1]
            self.assertGreaterEqual(expires, 10, mode)
            # One name for the mode, the option's, in the start-up line and the probe's.
            log = d.logtext()
            self.assertRegex(log, rf"event=nft-probe timeout_update=(yes|no) refresh={mode} ")
            self.assertRegex(log, rf"event=nft family=inet .* refresh={mode} ")
            for other in ("delete+add", "update-in-place"):
                self.assertNotIn(other, log)
        finally:
            d.stop()
            drop_table()

    @unittest.skipUnless(kernel_updates_in_place(), "needs kernel 6.12+ (in-place timeout update)")
    def test_update_in_place(self):
        self.check_mode("update")

    def test_delete_and_add(self):
        self.check_mode("replace")


class FailClosed(unittest.TestCase):
    def tearDown(self):
        drop_table()

    def test_a_full_set_gives_servfail_not_an_unvouched_answer(self):
        drop_table()
        r = subprocess.run(["nft", "-f", "-"], input="""
table inet dnsward {
  set allowed4 { type ipv4_addr; flags timeout; size 4; }
  set allowed6 { type ipv6_addr; flags timeout; size 4; }
}""", capture_output=True, text=True, timeout=10)
        self.assertEqual(r.returncode, 0, r.stderr)
        d = Dnsward(knot.port, allowlist=ALLOW, nft=True)
        try:
            r = d.query("many.test.", "A", use_edns=0)  # 40 addresses into a set of 4
            self.assertEqual(r.rcode(), dns.rcode.SERVFAIL)
            self.assertEqual(r.answer, [])
            self.assertIn("firewall update failed", ede(r)[1])
            self.assertEqual(nft_set("dnsward", "allowed4"), {})  # the batch was all or nothing
            self.assertIn("vouch-failed", d.logtext())
            # Said as what it is, not as the kernel's ENFILE ("Too many open files").
            self.assertIn("set dnsward allowed4 is full (declared size 4", d.logtext())
            self.assertNotIn("Too many open files", d.logtext())
            r = d.query("www.test.", "A")  # others still work
            self.assertEqual(addrs(r), ["198.18.0.1"])
        finally:
            d.stop()

    def test_a_set_80_percent_full_is_warned_of_and_its_size_logged(self):
        drop_table()
        r = subprocess.run(["nft", "-f", "-"], input="""
table inet dnsward {
  set allowed4 { type ipv4_addr; flags timeout; size 10; }
  set allowed6 { type ipv6_addr; flags timeout; }
}""", capture_output=True, text=True, timeout=10)
        self.assertEqual(r.returncode, 0, r.stderr)
        d = Dnsward(knot.port, allowlist=ALLOW, nft=True)
        try:
            self.assertIn("size4=10 held4=0 set6=allowed6 size6=unlimited", d.logtext())
            self.assertEqual(len(addrs(d.query("nine.test.", "A"))), 9)
            self.assertIn("event=nft-set-filling set=allowed4 held=9 size=10", d.logtext())
        finally:
            d.stop()

    def start_expecting_failure(self, *extra, prefix=()):
        port = free_port()
        return subprocess.run([*prefix, BIN, "serve", "--listen", f"{LO}:{port}", "--upstream",
                               f"{LO}:{knot.port}", *extra], capture_output=True, text=True,
                              timeout=20)

    def test_a_set_of_the_wrong_type_is_a_start_up_error(self):
        drop_table()
        nft("add", "table", "inet", "dnsward")
        nft("add", "set", "inet", "dnsward", "allowed4", "{ type ipv6_addr; flags timeout; }")
        r = self.start_expecting_failure()
        self.assertEqual(r.returncode, 1)
        self.assertIn("allowed4 exists with another type", r.stderr)

    def test_a_set_without_the_timeout_flag_is_a_start_up_error(self):
        drop_table()
        nft("add", "table", "inet", "dnsward")
        nft("add", "set", "inet", "dnsward", "allowed4", "{ type ipv4_addr; }")
        r = self.start_expecting_failure()
        self.assertEqual(r.returncode, 1)
        self.assertIn("without 'flags timeout'", r.stderr)

    def test_without_cap_net_admin_it_refuses_to_start_and_names_no_nft(self):
        drop_table()
        r = self.start_expecting_failure(
            "--allowlist", "/dev/null",
            prefix=["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                    "--inh-caps=-all", "--bounding-set=-all"])
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("CAP_NET_ADMIN", r.stderr)
        self.assertIn("--no-nft", r.stderr)
        self.assertIsNone(nft_set_info("dnsward", "allowed4"))


class Rules(unittest.TestCase):
    def test_nft_rules_output_passes_nft_check_and_serve_accepts_its_sets(self):
        drop_table()
        r = run([BIN, "nft-rules", "--upstream", f"{LO}:{knot.port}", "--user", "root",
                 "--listen", f"{LO}:53", "--allow", "192.0.2.0/24", "--allow", "2001:db8::/32"])
        self.assertEqual(r.returncode, 0, r.stderr)
        rules = r.stdout
        for needle in ("ct direction original ct state established,related accept",
                       'meta skuid "root"',
                       "ip daddr @allowed4 accept", "ip6 daddr @allowed6 accept",
                       'log prefix "dnsward-drop: "', "reject", "policy drop",
                       'oif "lo" accept', "udp dport 53", "tcp dport 53",
                       "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } "
                       "ip6 hoplimit 255 accept",
                       "icmpv6 type { mld-listener-report, mld-listener-done, mld2-listener-report } "
                       "ip6 saddr { fe80::/10, :: } ip6 daddr ff02::/16 ip6 hoplimit 1 accept",
                       'comment "dnsward ruleset id='):
            self.assertIn(needle, rules)
        # Every rule carries its place, which serve reads back (e2e_ruleset).
        chain = rules[rules.index("\tchain output {"):]
        rule_lines = [l for l in chain.splitlines() if l.startswith("\t\t") and
                      not l.startswith("\t\t#") and not l.startswith("\t\ttype ") and
                      not l.startswith("\t\tcomment ")]
        n = len(rule_lines)
        for i, l in enumerate(rule_lines):
            self.assertRegex(l, rf' comment "dnsward {i}/{n} id=[0-9a-f]{{16}}"$')
        check = subprocess.run(["nft", "-c", "-f", "-"], input=rules, capture_output=True,
                               text=True, timeout=10)
        self.assertEqual(check.returncode, 0, check.stderr)
        load = subprocess.run(["nft", "-f", "-"], input=rules, capture_output=True, text=True,
                              timeout=10)
        self.assertEqual(load.returncode, 0, load.stderr)
        load = subprocess.run(["nft", "-f", "-"], input=rules, capture_output=True, text=True,
                              timeout=10)
        self.assertEqual(load.returncode, 0, "loading twice must work too: " + load.stderr)
        d = Dnsward(knot.port, allowlist=ALLOW, nft=True)
        try:
            self.assertEqual(addrs(d.query("www.test.", "A")), ["198.18.0.1"])
            self.assertIn("198.18.0.1", nft_set("dnsward", "allowed4"))
            self.assertIn("event=ruleset-in-force", d.logtext())
        finally:
            d.stop()
            drop_table()

    def test_the_links_own_ipv6_traffic_nd_and_mld_reports_passes_the_ruleset(self):
        # An interface coming up under the ruleset: its link-local address's duplicate
        # address detection (neighbour solicitations) and the MLD reports for its
        # solicited-node groups (MLDv2, ICMPv6 type 143, RFC 3810) leave through the output
        # hook. A table of the test's own, before dnsward's chain, counts the reports sent;
        # dnsward's drop rules must count none of them.
        load_printed_ruleset(self)
        nft("add", "table", "inet", "watch")
        nft("add", "chain", "inet", "watch", "out",
            "{ type filter hook output priority -10 ; policy accept ; }")
        nft("add", "rule", "inet", "watch", "out", "icmpv6", "type", "mld2-listener-report",
            "counter")
        nft("add", "rule", "inet", "watch", "out", "icmpv6", "type", "nd-neighbor-solicit",
            "counter")
        try:
            subprocess.run(["ip", "link", "add", "dwv0", "type", "veth", "peer", "name", "dwv1"],
                           check=True)
            subprocess.run(["ip", "link", "set", "dwv1", "up"], check=True)
            subprocess.run(["ip", "link", "set", "dwv0", "up"], check=True)

            def counted():
                out = nft("list", "chain", "inet", "watch", "out").stdout
                return [int(x) for x in re.findall(r"counter packets (\d+)", out)]

            wait_for(lambda: all(n > 0 for n in counted()), timeout=10,
                     what="an MLD report and a neighbour solicitation sent")
            chain = nft("list", "chain", "inet", "dnsward", "output").stdout
            drops = re.findall(r"counter packets (\d+) bytes \d+ log prefix \"dnsward-(?:dns-)?drop", chain)
            self.assertEqual(len(drops), 3, chain)
            self.assertEqual(drops, ["0", "0", "0"], chain)
        finally:
            subprocess.run(["ip", "link", "del", "dwv0"], capture_output=True)
            nft("delete", "table", "inet", "watch", check=False)
            drop_table()

    def test_of_icmpv6_only_nd_at_hop_limit_255_and_a_hosts_mld_reports_to_link_groups_pass(self):
        # What the link rules let out, packet by packet, sent by root through a raw socket:
        # each that is not ND at hop limit 255 or a host's MLD report from a link-local
        # address to a link-scope group at hop limit 1 is counted by dnsward's drop rules.
        # Joined groups (ff0e::<secret>) and unicast "reports" were a channel out of the
        # sandbox; queries are what routers send.
        load_printed_ruleset(self)

        def dropped():
            chain = nft("list", "chain", "inet", "dnsward", "output").stdout
            return sum(int(n) for n in re.findall(
                r"counter packets (\d+) bytes \d+ log prefix \"dnsward-(?:dns-)?drop", chain))

        try:
            subprocess.run(["ip", "link", "add", "dwl0", "type", "veth", "peer", "name", "dwl1"],
                           check=True)
            for link in ("dwl0", "dwl1"):
                subprocess.run(["sysctl", "-qw", f"net.ipv6.conf.{link}.accept_dad=0"], check=True)
                subprocess.run(["ip", "link", "set", link, "up"], check=True)
            subprocess.run(["ip", "-6", "addr", "add", "2001:db8:77::1/64", "dev", "dwl0", "nodad"],
                           check=True)
            idx = socket.if_nametoindex("dwl0")
            wait_for(lambda: "fe80::" in subprocess.run(
                ["ip", "-6", "addr", "show", "dev", "dwl0", "scope", "link"],
                capture_output=True, text=True).stdout, timeout=5, what="a link-local address")

            def send(icmp_type, dst, hops, src=None):
                before = dropped()
                with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as sk:
                    if src:
                        sk.bind((src, 0))
                    sk.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, hops)
                    sk.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, hops)
                    sk.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, idx)
                    try:
                        sk.sendto(bytes([icmp_type, 0, 0, 0]) + b"EXFIL-payload-0123456789",
                                  (dst, 0, 0, idx))
                    except PermissionError:
                        pass  # dropped in the output hook
                return dropped() - before

            cases = [
                ("an MLDv1 report to a global-scope group", 131, "ff0e::4558:4649:4c", 1, None, 1),
                ("an MLDv2 report to a unicast address", 143, "2001:db8:77::5", 1, None, 1),
                ("an MLD query (routers send those)", 130, "ff02::1", 1, None, 1),
                ("an MLDv2 report from a global address", 143, "ff02::16", 1, "2001:db8:77::1", 1),
                ("an MLDv2 report at hop limit 2", 143, "ff02::16", 2, None, 1),
                ("a neighbour solicitation at hop limit 64", 135, "2001:db8:77::5", 64, None, 1),
                ("a router solicitation at hop limit 1", 133, "ff02::2", 1, None, 1),
                ("an echo request", 128, "2001:db8:77::5", 64, None, 1),
                ("an MLDv2 report to ff02::16 from a link-local address", 143, "ff02::16", 1, None, 0),
                ("an MLDv1 done to ff02::2", 132, "ff02::2", 1, None, 0),
                ("a neighbour solicitation at hop limit 255", 135, "ff02::1:ff00:5", 255, None, 0),
                ("a neighbour solicitation to a global unicast next hop (NUD)", 135, "2001:db8:77::5",
                 255, None, 0),
            ]
            for what, icmp_type, dst, hops, src, want in cases:
                with self.subTest(what):
                    self.assertEqual(send(icmp_type, dst, hops, src), want, what)
        finally:
            subprocess.run(["ip", "link", "del", "dwl0"], capture_output=True)
            drop_table()

    def test_nft_rules_rejects_bad_arguments(self):
        r = run([BIN, "nft-rules", "--allow", "not-a-cidr"])
        self.assertEqual(r.returncode, 2)
        self.assertIn("--allow not-a-cidr", r.stderr)


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o644)


class View(unittest.TestCase):
    """dnsward's view of the sets is what the kernel holds, whatever happened before."""

    def tearDown(self):
        drop_table()

    def test_replace_mode_gives_an_element_the_kernel_already_held_the_new_timeout(self):
        # A previous run (or anyone) left the element with 20 s. On kernels before 6.12 a
        # plain re-add is ACKed and changes nothing, so dnsward adds exclusively and replaces
        # the element on EEXIST; on newer kernels this runs that path against the real kernel
        # (the fake kernel of the unit tests covers the 6.1 behaviour).
        drop_table()
        r = subprocess.run(["nft", "-f", "-"], input="""
table inet dnsward {
  set allowed4 { type ipv4_addr; flags timeout; elements = { 198.18.0.1 timeout 20s } }
  set allowed6 { type ipv6_addr; flags timeout; }
}""", capture_output=True, text=True, timeout=10)
        self.assertEqual(r.returncode, 0, r.stderr)
        d = Dnsward(knot.port, allowlist=ALLOW, nft=True,
                    extra=["--nft-refresh", "replace", "--cache-size", "0"])
        try:
            self.assertIn("held4=1", d.logtext())  # read from the kernel at start
            self.assertEqual(addrs(d.query("www.test.", "A")), ["198.18.0.1"])
            timeout, expires = nft_set("dnsward", "allowed4")["198.18.0.1"]
            self.assertEqual(timeout, 330)
            self.assertGreaterEqual(expires, 320)
        finally:
            d.stop()

    def test_an_unrelated_delete_never_shortens_an_element_a_reply_promised_for_longer(self):
        drop_table()
        d = Dnsward(knot.port, allowlist=ALLOW, nft=True, extra=["--cache-size", "0"])
        try:
            r = d.query("samelong.test.", "A")  # TTL 86400 -> 3600 to the client
            self.assertEqual(r.answer[0].ttl, 3600)
            self.assertEqual(addrs(d.query("other.test.", "A")), ["198.18.0.43"])
            nft("delete", "element", "inet", "dnsward", "allowed4", "{ 198.18.0.43 }")
            # The same address under a name with a 10 s TTL: its element must keep the hour
            # the first reply promised.
            self.assertEqual(addrs(d.query("sameshort.test.", "A")), ["198.18.0.40"])
            self.assertGreaterEqual(nft_set("dnsward", "allowed4")["198.18.0.40"][1], 3600)
            self.assertIn("nft-external-change", d.logtext())
        finally:
            d.stop()


    def test_an_element_answered_while_the_sets_are_reread_keeps_what_the_kernel_held(self):
        # A previous run vouched 198.18.0.40 for an hour; this one knows it only from the
        # kernel. While it rereads the sets after someone else's delete, a cache hit for a
        # name with a 10 s TTL on the same address must neither shorten the element nor let
        # the (older) dump make dnsward believe the kernel holds more than it does.
        drop_table()
        d = Dnsward(knot.port, allowlist=ALLOW, nft=True)
        try:
            self.assertEqual(d.query("samelong.test.", "A").answer[0].ttl, 3600)
            self.assertEqual(addrs(d.query("other.test.", "A")), ["198.18.0.43"])
        finally:
            self.assertEqual(d.stop(), 0)
        d = Dnsward(knot.port, allowlist=ALLOW, nft=True)
        try:
            self.assertEqual(addrs(d.query("sameshort.test.", "A")), ["198.18.0.40"])  # cached
            d.proc.send_signal(signal.SIGSTOP)
            nft("delete", "element", "inet", "dnsward", "allowed4", "{ 198.18.0.43 }")
            q = dns.message.make_query("sameshort.test.", "A")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(5)
                s.sendto(q.to_wire(), (LO, d.port))  # queued until dnsward runs again
                d.proc.send_signal(signal.SIGCONT)
                r = dns.message.from_wire(s.recv(4096))
            self.assertEqual(addrs(r), ["198.18.0.40"])
            wait_for(lambda: "event=nft-reread " in d.logtext(), timeout=5, what="the reread")
            self.assertGreaterEqual(nft_set("dnsward", "allowed4")["198.18.0.40"][1], 3590)
            r = d.query("samelong.test.", "A")
            self.assertEqual(r.answer[0].ttl, 3600)
            self.assertGreaterEqual(nft_set("dnsward", "allowed4")["198.18.0.40"][1], 3600)
        finally:
            d.stop()

    def test_an_answer_during_a_reread_leaves_someone_elses_permanent_element_permanent(self):
        drop_table()
        r = subprocess.run(["nft", "-f", "-"], input="""
table inet dnsward {
  set allowed4 { type ipv4_addr; flags timeout; elements = { 198.18.0.1, 198.18.0.43 timeout 1h } }
  set allowed6 { type ipv6_addr; flags timeout; }
}""", capture_output=True, text=True, timeout=10)
        self.assertEqual(r.returncode, 0, r.stderr)
        d = Dnsward(knot.port, allowlist=ALLOW, nft=True)
        try:
            self.assertEqual(addrs(d.query("www.test.", "A")), ["198.18.0.1"])
            d.proc.send_signal(signal.SIGSTOP)
            nft("delete", "element", "inet", "dnsward", "allowed4", "{ 198.18.0.43 }")
            q = dns.message.make_query("www.test.", "A")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(5)
                s.sendto(q.to_wire(), (LO, d.port))  # a cache hit, answered during the reread
                d.proc.send_signal(signal.SIGCONT)
                self.assertEqual(addrs(dns.message.from_wire(s.recv(4096))), ["198.18.0.1"])
            wait_for(lambda: "event=nft-reread " in d.logtext(), timeout=5, what="the reread")
            self.assertEqual(nft_set("dnsward", "allowed4")["198.18.0.1"], (None, None))
        finally:
            d.stop()

    def test_changes_to_another_set_of_its_table_cause_no_reread(self):
        drop_table()
        d = Dnsward(knot.port, allowlist=ALLOW, nft=True)
        try:
            nft("add", "set", "inet", "dnsward", "misc", "{ type ipv4_addr; }")
            for i in range(5):
                nft("add", "element", "inet", "dnsward", "misc", f"{{ 192.0.2.{i} }}")
                nft("delete", "element", "inet", "dnsward", "misc", f"{{ 192.0.2.{i} }}")
            nft("delete", "element", "inet", "dnsward", "allowed6", "{ 2001:db8::99 }",
                check=False)  # ENOENT: no change, no event; then one that is an event:
            self.assertEqual(addrs(d.query("www.test.", "A")), ["198.18.0.1"])
            nft("delete", "element", "inet", "dnsward", "allowed4", "{ 198.18.0.1 }")
            wait_for(lambda: "nft-external-change" in d.logtext(), timeout=5, what="the event")
            self.assertEqual(d.logtext().count("nft-external-change"), 1)
        finally:
            d.stop()

    @unittest.skipUnless(kernel_updates_in_place(), "needs kernel 6.12+ (in-place timeout update)")
    def test_someone_elses_in_place_shortening_is_noticed(self):
        drop_table()
        d = Dnsward(knot.port, allowlist=ALLOW, nft=True)
        try:
            self.assertEqual(addrs(d.query("www.test.", "A")), ["198.18.0.1"])
            nft("add", "element", "inet", "dnsward", "allowed4",
                "{ 198.18.0.1 timeout 2s expires 2s }")
            self.assertLessEqual(nft_set("dnsward", "allowed4")["198.18.0.1"][1], 2)
            wait_for(lambda: "nft-external-change" in d.logtext(), timeout=5, what="the event")
            self.assertEqual(addrs(d.query("www.test.", "A")), ["198.18.0.1"])  # a cache hit
            self.assertGreaterEqual(nft_set("dnsward", "allowed4")["198.18.0.1"][1], 290)
        finally:
            d.stop()


    def test_a_change_during_a_reread_is_read_again_not_refused(self):
        # A netlink socket runs one dump at a time: a second change while the sets are being
        # read must wait for that dump, not ask for another (EBUSY) and give up.
        drop_table()
        elems = ", ".join(f"198.19.{i // 250}.{i % 250 + 1} timeout 1h" for i in range(60000))
        r = subprocess.run(["nft", "-f", "-"], input=f"""
table inet dnsward {{
  set allowed4 {{ type ipv4_addr; flags timeout; size 100000; elements = {{ {elems} }} }}
  set allowed6 {{ type ipv6_addr; flags timeout; }}
}}""", capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        d = Dnsward(knot.port, allowlist=ALLOW, nft=True)
        try:
            self.assertIn("held4=60000", d.logtext())
            nft("delete", "element", "inet", "dnsward", "allowed4", "{ 198.19.0.1 }")
            wait_for(lambda: "nft-external-change" in d.logtext(), timeout=5, what="the event")
            d.proc.send_signal(signal.SIGSTOP)  # most likely in the middle of its dump
            nft("delete", "element", "inet", "dnsward", "allowed4", "{ 198.19.0.2 }")
            d.proc.send_signal(signal.SIGCONT)
            wait_for(lambda: "event=nft-reread held4=59998 " in d.logtext(), timeout=10,
                     what="a reread that saw both deletes")
            self.assertNotIn("nft-reread-failed", d.logtext())
        finally:
            d.stop()

    def test_a_rule_that_changes_the_sets_from_the_packet_path_is_reported(self):
        drop_table()
        d = Dnsward(knot.port, allowlist=ALLOW, nft=True)
        try:
            nft("add", "chain", "inet", "dnsward", "sneaky",
                "{ type filter hook output priority 0; }")
            nft("add", "rule", "inet", "dnsward", "sneaky", "ip", "daddr", "@allowed4",
                "update", "@allowed4", "{ ip daddr timeout 2s }")
            wait_for(lambda: "event=nft-foreign-set-rule" in d.logtext(), timeout=5,
                     what="the report")
            self.assertIn("set=allowed4 when=added", d.logtext())
        finally:
            d.stop()
        d = Dnsward(knot.port, allowlist=ALLOW, nft=True)  # and at start
        try:
            self.assertIn("event=nft-foreign-set-rule table=dnsward set=allowed4 when=at-start",
                          d.logtext())
        finally:
            d.stop()


class Flood(LoopbackServer):
    """A hostile allowed zone: flood.test has 3,500 A records (UDP answers are truncated, so
    c-ares fetches them over TCP), hints.test one HTTPS record with 5,000 ipv4hints."""

    def handle(self, wire, transport):
        q = dns.message.from_wire(wire)
        r = dns.message.make_response(q)
        name = q.question[0].name
        text = name.to_text().lower()  # dnsward asks in random letter case (0x20)
        if text == "flood.test." and q.question[0].rdtype == dns.rdatatype.A:
            r.answer.append(dns.rrset.from_text_list(
                name, 300, "IN", "A", [f"198.19.{i // 250}.{i % 250 + 1}" for i in range(3500)]))
        elif text == "hints.test." and q.question[0].rdtype == dns.rdatatype.HTTPS:
            hints = ",".join(f"198.19.{100 + i // 250}.{i % 250 + 1}" for i in range(5000))
            r.answer.append(dns.rrset.from_text(name, 300, "IN", "HTTPS", f"1 . ipv4hint={hints}"))
        w = r.to_wire(max_size=65535)  # not the query's EDNS payload size: TC below instead
        if transport == "udp" and len(w) > 1232:
            r.answer.clear()
            r.flags |= dns.flags.TC
            w = r.to_wire()
        return w


class HostileAnswers(unittest.TestCase):
    """Answers with thousands of addresses: dnsward answers (capped), stays alive, and
    every address it relays is in the set."""

    @classmethod
    def setUpClass(cls):
        cls.up = Flood()

    @classmethod
    def tearDownClass(cls):
        cls.up.stop()

    def tearDown(self):
        drop_table()

    def start(self, *extra):
        drop_table()
        # The fake upstream builds a 3,500-record answer in python: seconds under an emulated
        # CPU (the microVM test runs this class under TCG), so a generous first timeout.
        return Dnsward(self.up.port, allowlist="flood.test\nhints.test\n", nft=True,
                       extra=["--upstream-timeout", "20000", *extra])

    def test_an_answer_of_3500_addresses_is_capped_and_every_relayed_address_is_in_the_set(self):
        d = self.start()
        try:
            r = d.query("flood.test.", "A", tcp=True, use_edns=0, timeout=60)
            got = addrs(r)
            self.assertEqual(len(got), 64)  # --max-answer-addresses 64
            held = nft_set("dnsward", "allowed4")
            self.assertEqual(len(held), 64)
            self.assertLessEqual(set(got), set(held))
            self.assertIn("--max-answer-addresses", ede(r)[1])
            self.assertIn("event=answer-capped", d.logtext())
            self.assertTrue(d.alive())
        finally:
            self.assertEqual(d.stop(), 0)

    def test_one_https_record_with_5000_hints_is_removed_and_nothing_of_it_vouched(self):
        d = self.start()
        try:
            r = d.query("hints.test.", "HTTPS", tcp=True, use_edns=0, timeout=60)
            self.assertEqual(r.rcode(), dns.rcode.NOERROR)
            self.assertEqual(r.answer, [])
            self.assertEqual(nft_set("dnsward", "allowed4"), {})
            self.assertIn("--max-answer-addresses", ede(r)[1])
            self.assertTrue(d.alive())
        finally:
            self.assertEqual(d.stop(), 0)

    def test_3500_addresses_under_a_raised_cap_go_in_several_batches_all_before_the_reply(self):
        d = self.start("--max-answer-addresses", "4096")
        try:
            r = d.query("flood.test.", "A", tcp=True, timeout=60)
            got = addrs(r)
            self.assertEqual(len(got), 3500)
            self.assertLessEqual(set(got), set(nft_set("dnsward", "allowed4")))
            r = d.query("hints.test.", "HTTPS", tcp=True, timeout=60)
            self.assertEqual(len(r.answer), 0)  # 5,000 hints are over even this cap
            # Its own 3,500 additions came back on the event socket and were recognised as
            # its own: no needless reread of the sets.
            self.assertNotIn("nft-external-change", d.logtext())
        finally:
            self.assertEqual(d.stop(), 0)


class Gate(LoopbackServer):
    """Answers slow.test A 10.9.9.9, but only once the test opens the gate."""

    def __init__(self):
        self.asked = threading.Event()
        self.open = threading.Event()
        super().__init__()

    def handle(self, wire, transport):
        q = dns.message.from_wire(wire)
        self.asked.set()
        self.open.wait(10)
        r = dns.message.make_response(q)
        r.answer.append(dns.rrset.from_text(q.question[0].name, 300, "IN", "A", "10.9.9.9"))
        return r.to_wire()


class Revocation(unittest.TestCase):
    def tearDown(self):
        drop_table()

    def reload(self, d, lists, conf):
        before = d.logtext().count("event=reload ")
        write(conf, "".join(f"allowlist = {l}\n" for l in lists))
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: d.logtext().count("event=reload ") > before, timeout=5, what="the reload")

    def test_a_reload_deletes_what_the_kernel_holds_even_after_someone_deleted_elements(self):
        drop_table()
        work = shared_tempdir("dnsward-revoke-")
        first, second, conf = (os.path.join(work, n) for n in ("1.allow", "2.allow", "d.conf"))
        write(first, "pair.test\nother.test\nwww.test\n")
        write(second, "www.test\n")
        write(conf, f"allowlist = {first}\n")
        d = Dnsward(knot.port, allowlist=None, nft=True, extra=["--config", conf])
        try:
            self.assertEqual(addrs(d.query("pair.test.", "A")), ["198.18.0.41", "198.18.0.42"])
            self.assertEqual(addrs(d.query("other.test.", "A")), ["198.18.0.43"])
            self.assertEqual(addrs(d.query("www.test.", "A")), ["198.18.0.1"])
            # Someone deletes one of them: dnsward's view is reset by the event.
            nft("delete", "element", "inet", "dnsward", "allowed4", "{ 198.18.0.41 }")
            wait_for(lambda: "nft-external-change" in d.logtext(), timeout=5, what="the event")
            self.reload(d, [second], conf)
            held = set(nft_set("dnsward", "allowed4"))
            self.assertEqual(held, {"198.18.0.1"})
            self.assertIn("event=revoked deleted=2 ", d.logtext())
        finally:
            d.stop()

    def test_a_reload_while_the_sets_are_reread_still_revokes(self):
        drop_table()
        work = shared_tempdir("dnsward-revoke-")
        first, second, conf = (os.path.join(work, n) for n in ("1.allow", "2.allow", "d.conf"))
        write(first, "www.test\nother.test\nalias.test\n")
        write(second, "www.test\nother.test\n")
        write(conf, f"allowlist = {first}\n")
        d = Dnsward(knot.port, allowlist=None, nft=True, extra=["--config", conf])
        try:
            for name, want in (("www.test.", "198.18.0.1"), ("other.test.", "198.18.0.43"),
                               ("alias.test.", "198.18.0.2")):
                self.assertEqual(addrs(d.query(name, "A")), [want])
            write(conf, f"allowlist = {second}\n")
            # Someone's delete and the reload arrive together: the reload is judged while
            # dnsward's view of the sets is being read again.
            d.proc.send_signal(signal.SIGSTOP)
            nft("delete", "element", "inet", "dnsward", "allowed4", "{ 198.18.0.43 }")
            d.proc.send_signal(signal.SIGHUP)
            d.proc.send_signal(signal.SIGCONT)
            wait_for(lambda: "event=reload " in d.logtext(), timeout=5, what="the reload")
            self.assertEqual(set(nft_set("dnsward", "allowed4")), {"198.18.0.1"})
            self.assertIn("event=revoked deleted=1 ", d.logtext())
        finally:
            d.stop()

    def test_a_restart_with_an_edited_list_revokes_what_it_no_longer_allows_and_keeps_the_rest(self):
        drop_table()
        work = shared_tempdir("dnsward-restart-")
        state = os.path.join(work, "state")
        d = Dnsward(knot.port, allowlist="www.test\nalias.test\n", nft=True,
                    extra=["--state", state])
        try:
            self.assertEqual(addrs(d.query("www.test.", "A")), ["198.18.0.1"])
            self.assertEqual(addrs(d.query("alias.test.", "A")), ["198.18.0.2"])
        finally:
            self.assertEqual(d.stop(), 0)
        with open(state + ".vouched") as f:
            ledger = f.read()
        self.assertIn("198.18.0.2\t", ledger)
        self.assertIn("\talias.test\t", ledger)
        # Bound to the query name and its CNAME chain (the SNI guard's names).
        self.assertIn("\talias.test\t0\talias.test,target.other.test\n", ledger)
        before = nft_set("dnsward", "allowed4")["198.18.0.1"]
        d = Dnsward(knot.port, allowlist="www.test\n", nft=True, extra=["--state", state])
        try:
            held = nft_set("dnsward", "allowed4")
            self.assertNotIn("198.18.0.2", held)  # revoked at start, before any query
            self.assertIn("198.18.0.1", held)     # kept, with the expiry it had
            self.assertEqual(held["198.18.0.1"][0], before[0])
            self.assertLessEqual(held["198.18.0.1"][1], before[1])
            self.assertIn("event=revoked deleted=1 already_gone=0", d.logtext())
            self.assertIn("not on the allowlist at start", d.logtext())
        finally:
            self.assertEqual(d.stop(), 0)

    def test_an_answer_that_arrives_after_a_reload_is_judged_by_the_new_entry(self):
        drop_table()
        gate = Gate()
        work = shared_tempdir("dnsward-gate-")
        first, second, conf = (os.path.join(work, n) for n in ("1.allow", "2.allow", "d.conf"))
        write(first, "slow.test\n")
        write(second, 'slow.test private=yes why="an internal mirror"\n')
        write(conf, f"allowlist = {first}\n")
        d = Dnsward(gate.port, allowlist=None, nft=True,
                    extra=["--config", conf, "--upstream-timeout", "5000"])
        try:
            result = {}
            t = threading.Thread(target=lambda: result.update(r=d.query("slow.test.", "A", timeout=10)))
            t.start()
            self.assertTrue(gate.asked.wait(5))
            self.reload(d, [second], conf)  # now private=yes: the 10.x answer is allowed
            gate.open.set()
            t.join(15)
            self.assertEqual(addrs(result["r"]), ["10.9.9.9"])
            self.assertIn("10.9.9.9", nft_set("dnsward", "allowed4"))
        finally:
            gate.open.set()
            d.stop()
            gate.stop()


if __name__ == "__main__":
    unittest.main()
