"""The resolver against a real upstream (knot) over UDP and TCP: what clients get, and
what reaches the upstream."""
import time
import unittest

import dns.flags
import dns.name
import dns.rdataclass
import dns.rrset
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype

from harness import (Dnsward, LO, LoopbackServer, NoEdnsUpstream, RecordingServer, Relay, Stack, ede, free_port,
                     require, run, wait_for)

stack = knot = relay = dw = None


def setUpModule():
    global stack, knot, relay, dw
    require("knotd", "dig", "kdig")
    # Without the cache every allowed query reaches the relay, which these tests watch.
    stack = Stack(extra=["--cache-size", "0"])
    knot, relay, dw = stack.knot, stack.relay, stack.dw


def tearDownModule():
    code = stack.stop()
    assert code == 0, f"dnsward exited with {code} on SIGTERM"


class DeniedNames(unittest.TestCase):
    def test_denied_name_gets_nxdomain_with_soa_and_ede_15_naming_it(self):
        for tcp in (False, True):
            r = dw.query("evil.test.", "A", tcp=tcp, use_edns=0)
            self.assertEqual(r.rcode(), dns.rcode.NXDOMAIN)
            self.assertEqual(len(r.answer), 0)
            self.assertEqual(len(r.authority), 1)
            soa = r.authority[0]
            self.assertEqual(soa.rdtype, dns.rdatatype.SOA)
            self.assertLessEqual(soa.ttl, 30)  # a short negative TTL (RFC 2308)
            code, text = ede(r)
            self.assertEqual(code, 15)
            self.assertRegex(text, r"^dnsward: evil\.test is not on the allowlist "
                                   r"\(policy [0-9a-f]{8}; dig CH TXT why\.evil\.test\)$")
            self.assertTrue(r.flags & dns.flags.RA)

    def test_dig_shows_the_reason(self):
        out = run(["dig", f"@{LO}", "-p", str(dw.port), "blocked.example.", "A"]).stdout
        self.assertIn("status: NXDOMAIN", out)
        self.assertIn("EDE: 15 (Blocked): (dnsward: blocked.example is not on the allowlist", out)

    def test_kdig_shows_the_reason_too(self):
        out = run(["kdig", f"@{LO}", "-p", str(dw.port), "+edns", "blocked.example.",
                   "A"]).stdout
        self.assertIn("NXDOMAIN", out)
        self.assertIn("dnsward: blocked.example is not on the allowlist", out)

    def test_denial_echoes_id_question_case_and_rd(self):
        q = dns.message.make_query("EvIl.TeSt.", "AAAA")
        q.id = 0x5A5A
        q.flags &= ~dns.flags.RD
        r = dw.udp(q)
        self.assertEqual(r.id, 0x5A5A)
        self.assertEqual(r.question[0].name.to_text(), "EvIl.TeSt.")
        self.assertFalse(r.flags & dns.flags.RD)

    def test_without_edns_the_denial_has_no_opt(self):
        r = dw.query("evil.test.", "A", use_edns=False)
        self.assertEqual(r.rcode(), dns.rcode.NXDOMAIN)
        self.assertEqual(r.edns, -1)

    def test_denied_names_never_reach_the_upstream_in_any_case(self):
        relay.clear()
        names = ["evil.test.", "EVIL.TEST.", "eViL.tEsT.", "www.allowed.test.evil.",
                 "notwww.allowed.test.", "x.www.allowed.test.", "a.b.wild.test.",
                 "wild.test.", "deep.test."]
        for n in names:
            for tcp in (False, True):
                r = dw.query(n, "A", tcp=tcp)
                self.assertIn(r.rcode(), (dns.rcode.NXDOMAIN, dns.rcode.NOERROR), n)
                self.assertEqual(len(r.answer), 0, n)
        # An allowed name afterwards proves the relay is recording.
        dw.query("www.allowed.test.", "A")
        seen = [n.lower() for n in relay.names()]
        self.assertEqual(seen, ["www.allowed.test."])

    def test_ancestor_of_an_entry_gets_nodata_not_nxdomain(self):
        for name in ("allowed.test.", "test.", "wild.test.", "deep.test."):
            r = dw.query(name, "A")
            self.assertEqual(r.rcode(), dns.rcode.NOERROR, name)
            self.assertEqual(len(r.answer), 0, name)
            self.assertEqual(r.authority[0].rdtype, dns.rdatatype.SOA, name)


class AllowedNames(unittest.TestCase):
    def test_allowed_a_and_aaaa_are_relayed_over_udp_and_tcp(self):
        for tcp in (False, True):
            r = dw.query("www.allowed.test.", "A", tcp=tcp)
            self.assertEqual(r.rcode(), dns.rcode.NOERROR)
            self.assertEqual([x.address for x in r.answer[0]], ["198.18.0.1"])
            r = dw.query("www.allowed.test.", "AAAA", tcp=tcp)
            self.assertEqual([x.address for x in r.answer[0]], ["2001:db8::1"])

    def test_cname_to_an_unlisted_name_is_relayed_whole(self):
        r = dw.query("alias.allowed.test.", "A")
        self.assertEqual(r.rcode(), dns.rcode.NOERROR)
        types = {rr.rdtype for rr in r.answer}
        self.assertEqual(types, {dns.rdatatype.CNAME, dns.rdatatype.A})
        a = [rr for rr in r.answer if rr.rdtype == dns.rdatatype.A][0]
        self.assertEqual(a.name.to_text(), "target.elsewhere.test.")

    def test_wildcard_entries_forward_their_names(self):
        r = dw.query("anything.wild.test.", "A")
        self.assertEqual([x.address for x in r.answer[0]], ["198.18.3.1"])
        r = dw.query("a.b.deep.test.", "A")
        self.assertEqual([x.address for x in r.answer[0]], ["198.18.4.1"])

    def test_upstream_nxdomain_is_relayed_as_is(self):
        r = dw.query("nothere.allowed.test.", "A")
        self.assertEqual(r.rcode(), dns.rcode.NXDOMAIN)
        self.assertIsNone(ede(r))  # the upstream's NXDOMAIN, not a policy denial
        self.assertEqual(r.authority[0].name.to_text(), "test.")

    def test_reply_has_the_clients_id_and_0x20_question(self):
        q = dns.message.make_query("WwW.AlLoWeD.tEsT.", "A")
        q.id = 4242
        r = dw.udp(q)
        self.assertEqual(r.id, 4242)
        self.assertEqual(r.question[0].name.to_text(), "WwW.AlLoWeD.tEsT.")
        self.assertEqual([x.address for x in r.answer[0]], ["198.18.0.1"])

    def test_upstream_sees_a_random_id_not_the_clients(self):
        relay.clear()
        for _ in range(20):
            q = dns.message.make_query("www.allowed.test.", "A")
            q.id = 7
            self.assertEqual(dw.udp(q).id, 7)
        ids = relay.ids()
        self.assertEqual(len(ids), 20)
        self.assertNotIn(7, ids)
        self.assertGreater(len(set(ids)), 15)  # 20 draws from 65536: repeats are rare

    def test_localhost_is_answered_locally_and_never_forwarded(self):
        relay.clear()
        r = dw.query("localhost.", "A")
        self.assertEqual([x.address for x in r.answer[0]], ["127.0.0.1"])
        r = dw.query("db.LocalHost.", "AAAA")
        self.assertEqual([x.address for x in r.answer[0]], ["::1"])
        r = dw.query("localhost.", "MX")
        self.assertEqual(r.rcode(), dns.rcode.NOERROR)
        self.assertEqual(len(r.answer), 0)
        self.assertEqual(relay.names(), [])

    def test_any_gets_the_rfc8482_minimal_answer_and_is_not_forwarded(self):
        relay.clear()
        r = dw.query("www.allowed.test.", "ANY")
        self.assertEqual(r.rcode(), dns.rcode.NOERROR)
        self.assertEqual(r.answer[0].rdtype, dns.rdatatype.HINFO)
        self.assertEqual(r.answer[0][0].cpu, b"RFC8482")
        self.assertEqual(relay.names(), [])
        self.assertEqual(dw.query("evil.test.", "ANY").rcode(), dns.rcode.NXDOMAIN)

    def test_zone_transfers_are_refused(self):
        for t in ("AXFR", "IXFR"):
            q = dns.message.make_query("www.allowed.test.", t)
            self.assertEqual(dw.tcp(q).rcode(), dns.rcode.REFUSED, t)
        out = run(["dig", f"@{LO}", "-p", str(dw.port), "test.", "AXFR"]).stdout
        self.assertIn("Transfer failed", out)

    def test_other_opcodes_get_notimp(self):
        q = dns.message.make_query("www.allowed.test.", "A")
        q.set_opcode(dns.opcode.NOTIFY)
        r = dns.message.from_wire(dw.raw_udp(q.to_wire()), question_only=True)
        self.assertEqual(r.rcode(), dns.rcode.NOTIMP)
        self.assertEqual(r.opcode(), dns.opcode.NOTIFY)

    def test_other_classes_are_refused(self):
        q = dns.message.make_query("www.allowed.test.", "A", rdclass="CH")
        self.assertEqual(dw.udp(q).rcode(), dns.rcode.REFUSED)


class Edns(unittest.TestCase):
    def test_opt_in_query_gets_opt_in_reply_and_none_without(self):
        r = dw.query("www.allowed.test.", "A", use_edns=0)
        self.assertEqual(r.edns, 0)
        self.assertEqual(r.payload, 1232)
        r = dw.query("www.allowed.test.", "A", use_edns=False)
        self.assertEqual(r.edns, -1)

    def test_unknown_edns_version_gets_badvers(self):
        q = dns.message.make_query("www.allowed.test.", "A")
        q.use_edns(edns=1)
        self.assertEqual(q.edns, 1)
        r = dw.udp(q)
        self.assertEqual(r.rcode(), dns.rcode.BADVERS)
        self.assertEqual(r.edns, 0)
        out = run(["dig", f"@{LO}", "-p", str(dw.port), "+edns=1", "+noednsnegotiation",
                   "www.allowed.test."]).stdout
        self.assertIn("BADVERS", out)

    def test_do_bit_is_copied(self):
        r = dw.query("www.allowed.test.", "A", want_dnssec=True)
        self.assertTrue(r.ednsflags & dns.flags.DO)
        r = dw.query("evil.test.", "A", want_dnssec=True)
        self.assertTrue(r.ednsflags & dns.flags.DO)

    def test_large_answer_is_truncated_for_udp_and_whole_over_tcp(self):
        # 40 A records: about 700 bytes. Without EDNS the limit is 512 bytes.
        q = dns.message.make_query("many.allowed.test.", "A", use_edns=False)
        r = dw.udp(q)
        self.assertTrue(r.flags & dns.flags.TC)
        self.assertEqual(len(r.answer), 0)
        self.assertEqual(r.question[0].name.to_text(), "many.allowed.test.")
        r = dw.tcp(q)
        self.assertFalse(r.flags & dns.flags.TC)
        self.assertEqual(len(r.answer[0]), 40)
        # With EDNS 1232 the same answer fits over UDP.
        r = dw.query("many.allowed.test.", "A", use_edns=0, payload=1232)
        self.assertFalse(r.flags & dns.flags.TC)
        self.assertEqual(len(r.answer[0]), 40)

    def test_answer_over_our_payload_is_truncated_even_with_edns_4096(self):
        r = dw.query("big.allowed.test.", "TXT", use_edns=0, payload=4096)
        self.assertTrue(r.flags & dns.flags.TC)
        r = dw.query("big.allowed.test.", "TXT", tcp=True, use_edns=0)
        self.assertEqual(len(r.answer[0]), 8)

    def test_udp_payload_bounds_our_udp_replies_and_is_the_size_we_advertise(self):
        # --udp-payload 600: the 40-record answer (about 700 bytes) fits the client's 1232
        # but not ours, so it is truncated; the OPT says 600, and the upstream is offered 600
        # too. A small answer still comes whole, and TCP is not bounded by it.
        relay = Relay(knot.port)
        d = Dnsward(relay.port, extra=["--udp-payload", "600", "--cache-size", "0"])
        try:
            r = d.query("many.allowed.test.", "A", use_edns=0, payload=1232)
            self.assertTrue(r.flags & dns.flags.TC)
            self.assertEqual(r.answer, [])
            self.assertEqual(r.edns, 0)
            self.assertEqual(r.payload, 600)
            self.assertLessEqual(len(r.to_wire()), 600)
            r = d.query("www.allowed.test.", "A", use_edns=0, payload=1232)
            self.assertFalse(r.flags & dns.flags.TC)
            self.assertEqual([x.address for x in r.answer[0]], ["198.18.0.1"])
            self.assertEqual(r.payload, 600)
            r = d.query("many.allowed.test.", "A", tcp=True, use_edns=0, payload=1232)
            self.assertEqual(len(r.answer[0]), 40)
            udp_payloads = {e[4] for e in relay.seen if e[2] == "udp"}
            self.assertEqual(udp_payloads, {600})
        finally:
            d.stop()
            relay.stop()

    def test_dig_retries_over_tcp_after_truncation(self):
        out = run(["dig", f"@{LO}", "-p", str(dw.port), "+noedns", "many.allowed.test.",
                   "A"]).stdout
        self.assertIn("Truncated, retrying in TCP mode", out)
        self.assertIn("ANSWER: 40", out)


class Cache(unittest.TestCase):
    def setUp(self):
        self.relay = Relay(knot.port)
        self.d = Dnsward(self.relay.port)

    def tearDown(self):
        self.d.stop()
        self.relay.stop()

    def test_a_cached_answer_is_served_without_the_upstream_and_ages(self):
        r1 = self.d.query("www.allowed.test.", "A")
        q = dns.message.make_query("WWW.Allowed.TEST.", "A")
        q.id = 99
        # Asked again until the TTL has counted down (a second or so): every answer is a
        # cache hit, so the upstream still sees one query.
        r2 = wait_for(lambda: (lambda r: r if r.answer[0].ttl < r1.answer[0].ttl else None)(
            self.d.udp(q)), timeout=5, what="the cached TTL counting down")
        self.assertEqual(self.relay.names(), ["www.allowed.test."])  # one upstream query
        self.assertEqual(r2.id, 99)
        self.assertEqual(r2.question[0].name.to_text(), "WWW.Allowed.TEST.")  # client's case
        self.assertEqual([x.address for x in r2.answer[0]], ["198.18.0.1"])
        self.assertLess(r2.answer[0].ttl, r1.answer[0].ttl)  # TTLs count down (RFC 1035 7.4)
        r3 = self.d.query("www.allowed.test.", "A", tcp=True)  # the cache serves TCP too
        self.assertEqual([x.address for x in r3.answer[0]], ["198.18.0.1"])
        self.assertEqual(len(self.relay.names()), 1)

    def test_negative_answers_are_cached_for_the_soa_minimum(self):
        r = self.d.query("nothere.allowed.test.", "A")
        self.assertEqual(r.rcode(), dns.rcode.NXDOMAIN)
        r = self.d.query("nothere.allowed.test.", "A")
        self.assertEqual(r.rcode(), dns.rcode.NXDOMAIN)
        self.assertEqual(len(self.relay.names()), 1)
        self.assertLessEqual(r.authority[0].ttl, 60)  # min(SOA TTL 300, MINIMUM 60), RFC 2308 5

    def test_type_and_do_bit_are_part_of_the_key(self):
        self.d.query("www.allowed.test.", "A")
        self.d.query("www.allowed.test.", "AAAA")
        self.d.query("www.allowed.test.", "A", want_dnssec=True)
        self.assertEqual(len(self.relay.names()), 3)

    def test_failures_are_not_cached(self):
        hole = Relay(knot.port, blackhole=True)
        d = Dnsward(hole.port, extra=["--upstream-timeout", "100", "--upstream-tries", "1"])
        try:
            self.assertEqual(d.query("www.allowed.test.").rcode(), dns.rcode.SERVFAIL)
            self.assertEqual(d.query("www.allowed.test.").rcode(), dns.rcode.SERVFAIL)
            self.assertEqual(len(hole.names()), 2)
        finally:
            d.stop()
            hole.stop()


class UpstreamFailure(unittest.TestCase):
    def test_upstream_down_gives_servfail_quickly(self):
        dead = free_port()  # nothing listens there: ICMP port unreachable
        d = Dnsward(dead, extra=["--upstream-timeout", "300", "--upstream-tries", "1"])
        try:
            t0 = time.monotonic()
            r = d.query("www.allowed.test.", "A", use_edns=0)
            elapsed = time.monotonic() - t0
            self.assertEqual(r.rcode(), dns.rcode.SERVFAIL)
            self.assertLess(elapsed, 2.0)
            code, text = ede(r)
            self.assertIn(code, (22, 23))
            self.assertIn("upstream", text)
            self.assertEqual(d.query("evil.test.").rcode(), dns.rcode.NXDOMAIN)
        finally:
            d.stop()

    def test_silent_upstream_gives_servfail_in_bounded_time(self):
        hole = Relay(knot.port, blackhole=True)
        d = Dnsward(hole.port, extra=["--upstream-timeout", "300", "--upstream-tries", "2"])
        try:
            t0 = time.monotonic()
            r = d.query("www.allowed.test.", "A", use_edns=0)
            elapsed = time.monotonic() - t0
            self.assertEqual(r.rcode(), dns.rcode.SERVFAIL)
            # 300 ms, then 600 ms on the second round: about 0.9 s, never "never".
            self.assertGreater(elapsed, 0.8)
            self.assertLess(elapsed, 2.5)
            self.assertEqual(ede(r)[0], 22)
            self.assertEqual(len(hole.names()), 2)
        finally:
            d.stop()
            hole.stop()

    def test_upstream_without_edns_is_asked_again_without_opt(self):
        # c-ares 1.18 handles the first EDNS FORMERR itself and then turns EDNS off for the
        # whole channel; dnsward must keep answering every later query too.
        old = NoEdnsUpstream()
        d = Dnsward(old.port)
        try:
            for i in range(4):
                r = d.query(f"www{i}.wild.test.", "A", use_edns=0)
                self.assertEqual(r.rcode(), dns.rcode.NOERROR, i)
                self.assertEqual([x.address for x in r.answer[0]], ["198.18.9.9"])
                self.assertEqual(r.edns, 0)  # the client still gets its OPT from us
            r = d.query("many.wild.test.", "A", tcp=True)
            self.assertEqual(len(r.answer[0]), 40)
            r = d.query("many.wild.test.", "A", use_edns=0)  # 40 A fit in our 1232 bytes
            self.assertEqual(len(r.answer[0]), 40)
            self.assertIn((True, "udp"), old.queries)
            self.assertIn((False, "tcp"), old.queries)
        finally:
            d.stop()
            old.stop()

    def test_upstreams_are_tried_in_order_and_a_silent_first_one_fails_over_to_the_second(self):
        # The first upstream records queries and never answers; the second relays to knot.
        # Both append to one journal in arrival order: the first must be asked first, every
        # time, and the answer comes from the second.
        journal = []
        first = Relay(knot.port, blackhole=True, journal=journal, tag="first")
        second = Relay(knot.port, journal=journal, tag="second")
        d = Dnsward(None, extra=["--upstream", f"{LO}:{first.port}",
                                 "--upstream", f"{LO}:{second.port}",
                                 "--upstream-timeout", "200", "--upstream-tries", "1",
                                 "--cache-size", "0"])
        try:
            for i in range(3):
                name = f"order{i}.wild.test."
                r = d.query(name, "A", timeout=5)
                self.assertEqual([x.address for x in r.answer[0]], ["198.18.3.1"], name)
                asked = [tag for tag, n in journal if n == name]
                self.assertEqual(asked, ["first", "second"], (name, journal))
        finally:
            d.stop()
            first.stop()
            second.stop()

    def test_with_two_live_upstreams_the_answer_comes_from_the_first(self):
        one, two = FixedAnswer("198.18.9.1"), FixedAnswer("198.18.9.2")
        d = Dnsward(None, extra=["--upstream", f"{LO}:{one.port}", "--upstream", f"{LO}:{two.port}",
                                 "--cache-size", "0"])
        try:
            for i in range(5):
                r = d.query(f"live{i}.wild.test.", "A")
                self.assertEqual([x.address for x in r.answer[0]], ["198.18.9.1"], i)
            self.assertEqual(len(one.names), 5)
            self.assertEqual(two.names, [])  # never asked while the first answers
        finally:
            d.stop()
            one.stop()
            two.stop()


class FixedAnswer(RecordingServer):
    """An upstream that answers every A query with one address of its own, and records the
    names it was asked."""

    def __init__(self, address):
        self.address = address
        super().__init__()

    def handle(self, wire, transport):
        q = dns.message.from_wire(wire)
        r = dns.message.make_response(q)
        r.answer.append(dns.rrset.from_text(q.question[0].name, 300, "IN", "A", self.address))
        return r.to_wire()

class CaseKeeper(LoopbackServer):
    """An upstream that does not preserve the letter case of the question: it answers in
    lower case, with 198.18.9.1 to a query in mixed case and 198.18.9.2 to one in lower
    case, so the test can see which answer reached the client."""

    def __init__(self):
        self.sent = []
        super().__init__()

    def handle(self, wire, transport):
        q = dns.message.from_wire(wire)
        name = q.question[0].name.to_text()
        self.sent.append(name)
        r = dns.message.make_response(q)
        lower = dns.name.from_text(name.lower())
        r.question[0] = dns.rrset.RRset(lower, dns.rdataclass.IN, q.question[0].rdtype)
        addr = "198.18.9.2" if name == name.lower() else "198.18.9.1"
        r.answer.append(dns.rrset.from_text(lower, 300, "IN", "A", addr))
        return r.to_wire()


class Dns0x20(unittest.TestCase):
    def test_forwarded_names_go_out_in_random_letter_case(self):
        relay = Relay(knot.port)
        d = Dnsward(relay.port, extra=["--cache-size", "0"])
        try:
            for _ in range(8):
                self.assertEqual(d.query("www.allowed.test.", "A").rcode(), dns.rcode.NOERROR)
            sent = relay.names_as_sent()
            self.assertEqual(len(sent), 8)
            self.assertEqual({n.lower() for n in sent}, {"www.allowed.test."})
            # 14 letters a name: eight all-lower-case names by chance has odds of 2^-112.
            self.assertGreater(len(set(sent)), 1)
            self.assertNotEqual(sent, ["www.allowed.test."] * 8)
        finally:
            d.stop()
            relay.stop()

    def test_an_answer_in_another_letter_case_is_not_used_and_the_name_is_asked_again_without_0x20(self):
        up = CaseKeeper()
        d = Dnsward(up.port, extra=["--cache-size", "0"])
        try:
            r = d.query("www.allowed.test.", "A")
            self.assertEqual([x.address for x in r.answer[0]], ["198.18.9.2"])
            self.assertEqual(len(up.sent), 2)
            self.assertNotEqual(up.sent[0], "www.allowed.test.")
            self.assertEqual(up.sent[1], "www.allowed.test.")  # the client's own case
            self.assertIn("event=upstream-case-mismatch", d.logtext())
        finally:
            d.stop()
            up.stop()


if __name__ == "__main__":
    unittest.main()
