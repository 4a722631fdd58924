"""Resource bounds, each exceeded on purpose, and upstream faults: dnsward stays bounded,
keeps answering what it can answer itself, and recovers on its own."""
import os
import random
import socket
import time
import unittest

import dns.message
import dns.rcode

from harness import (Dnsward, Knot, LO, LoopbackServer, Relay, ede, free_port, require,
                     shared_tempdir, wait_for)

knot = None


def setUpModule():
    global knot
    require("knotd")
    knot = Knot()


def tearDownModule():
    knot.stop()


def rss_kb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fire(port, names, rdtype="A"):
    """Sends one UDP query per name without waiting; returns the socket for the replies."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    for i, n in enumerate(names):
        q = dns.message.make_query(n, rdtype, use_edns=0)
        q.id = i & 0xffff
        s.sendto(q.to_wire(), (LO, port))
    return s


def collect(sock, want, timeout):
    got = {}
    sock.settimeout(0.1)
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        try:
            r = dns.message.from_wire(sock.recv(65535))
            got[r.id] = (r, time.monotonic())
        except socket.timeout:
            pass
    return got


class Garbage(LoopbackServer):
    """An upstream that answers every query with random bytes."""

    def handle(self, wire, transport):
        return bytes(random.getrandbits(8) for _ in range(random.randrange(0, 120)))


class WrongSource(LoopbackServer):
    """An upstream whose answers come from another port than the one asked (spoofing)."""

    def handle(self, wire, transport):
        if transport == "udp":
            r = dns.message.make_response(dns.message.from_wire(wire))
            self.last = r.to_wire()
        return None

    def _udp_one(self, data, peer):
        self.handle(data, "udp")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
            other.sendto(self.last, peer)


class Bounds(unittest.TestCase):
    def test_queries_beyond_max_inflight_get_servfail_at_once(self):
        hole = Relay(knot.port, blackhole=True)
        d = Dnsward(hole.port, extra=["--max-inflight", "3", "--upstream-timeout", "1500",
                                      "--upstream-tries", "1"])
        try:
            t0 = time.monotonic()
            s = fire(d.port, [f"n{i}.wild.test." for i in range(6)])
            got = collect(s, 3, 1.0)  # only the three over the cap answer this soon
            self.assertEqual(len(got), 3)
            for r, t in got.values():
                self.assertEqual(r.rcode(), dns.rcode.SERVFAIL)
                self.assertIn("too many queries in flight", ede(r)[1])
                self.assertLess(t - t0, 0.5)
            # Names answered locally are not held up by the full upstream table.
            self.assertEqual(d.query("evil.test.").rcode(), dns.rcode.NXDOMAIN)
            got = collect(s, 3, 4.0)  # the three in flight end in SERVFAIL after the timeout
            self.assertEqual(len(got), 3)
            s.close()
        finally:
            d.stop()
            hole.stop()

    def test_the_cache_holds_at_most_cache_size_answers(self):
        relay = Relay(knot.port)
        d = Dnsward(relay.port, extra=["--cache-size", "2"])
        try:
            for n in ("a.wild.test.", "b.wild.test.", "c.wild.test.", "c.wild.test.", "a.wild.test."):
                self.assertEqual(d.query(n).rcode(), dns.rcode.NOERROR)
            # c was cached; a was evicted by b and c (least recently used), so asked again.
            self.assertEqual(relay.names(), ["a.wild.test.", "b.wild.test.", "c.wild.test.",
                                             "a.wild.test."])
        finally:
            d.stop()
            relay.stop()

    def test_the_state_file_keeps_at_most_state_max_names_denied_names(self):
        state = os.path.join(shared_tempdir(), "state")
        d = Dnsward(knot.port, extra=["--state", state, "--state-max-names", "5"])
        try:
            for i in range(40):
                d.query(f"denied{i}.example.")
        finally:
            self.assertEqual(d.stop(), 0)
        denied = [l for l in open(state) if l.startswith("denied\t")]
        self.assertLessEqual(len(denied), 5)
        self.assertTrue(any("denied39.example" in l for l in denied))  # the newest stay

    def test_a_flood_of_unique_names_to_a_dead_upstream_stays_bounded(self):
        hole = Relay(knot.port)  # alive at first, so that one name gets cached
        # Under ASan, freed memory waits in a 256 MB quarantine and would count as ours:
        # a small quarantine keeps this about dnsward's own bounds.
        saved = os.environ.get("ASAN_OPTIONS")
        os.environ["ASAN_OPTIONS"] = (saved + ":" if saved else "") + "quarantine_size_mb=1"
        try:
            d = Dnsward(hole.port, extra=["--max-inflight", "500", "--upstream-timeout", "300",
                                          "--upstream-tries", "1"])
        finally:
            if saved is None:
                del os.environ["ASAN_OPTIONS"]
            else:
                os.environ["ASAN_OPTIONS"] = saved
        try:
            self.assertEqual(d.query("www.allowed.test.").rcode(), dns.rcode.NOERROR)
            hole.blackhole = True  # now the upstream swallows everything
            base = rss_kb(d.proc.pid)
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            worst = 0.0
            t_end = time.monotonic() + 4
            i = 0
            while time.monotonic() < t_end:  # about 4 s of flood, bounded by time and count
                for _ in range(200):
                    q = dns.message.make_query(f"f{i}.wild.test.", "A")
                    sock.sendto(q.to_wire(), (LO, d.port))
                    i += 1
                t0 = time.monotonic()
                self.assertEqual(d.query("evil.test.", timeout=2).rcode(), dns.rcode.NXDOMAIN)
                cached = d.query("www.allowed.test.", timeout=2)  # from the cache, not upstream
                self.assertEqual([x.address for x in cached.answer[0]], ["198.18.0.1"])
                worst = max(worst, time.monotonic() - t0)
                if i > 60000:
                    break
            sock.close()
            self.assertLess(worst, 0.5)  # denials and cache hits stay prompt under the flood
            self.assertLess(rss_kb(d.proc.pid) - base, 20000)  # and memory bounded
            self.assertTrue(d.alive())
        finally:
            d.stop()
            hole.stop()


class UpstreamFaults(unittest.TestCase):
    def test_an_upstream_that_sends_garbage_gives_servfail_and_no_harm(self):
        bad = Garbage()
        d = Dnsward(bad.port, extra=["--upstream-timeout", "200", "--upstream-tries", "1"])
        try:
            for i in range(20):
                r = d.query(f"g{i}.wild.test.", use_edns=0, timeout=5)
                self.assertEqual(r.rcode(), dns.rcode.SERVFAIL)
            self.assertEqual(d.query("evil.test.").rcode(), dns.rcode.NXDOMAIN)
            self.assertTrue(d.alive())
        finally:
            d.stop()
            bad.stop()

    def test_answers_from_the_wrong_address_are_ignored(self):
        spoof = WrongSource()
        d = Dnsward(spoof.port, extra=["--upstream-timeout", "200", "--upstream-tries", "1"])
        try:
            r = d.query("www.allowed.test.", use_edns=0, timeout=5)
            self.assertEqual(r.rcode(), dns.rcode.SERVFAIL)  # not the spoofed NOERROR
        finally:
            d.stop()
            spoof.stop()

    def test_it_recovers_on_its_own_when_the_upstream_comes_back(self):
        port = free_port()
        d = Dnsward(port, extra=["--upstream-timeout", "200", "--upstream-tries", "1",
                                 "--cache-size", "0"])
        relay = None
        try:
            self.assertEqual(d.query("www.allowed.test.", timeout=5).rcode(), dns.rcode.SERVFAIL)
            relay = RelayOn(port, knot.port)  # the upstream comes back on the same address
            r = wait_for(lambda: d.query("www.allowed.test.", timeout=2).rcode() == dns.rcode.NOERROR,
                         timeout=10, what="answers again")
            self.assertTrue(r)
        finally:
            d.stop()
            if relay:
                relay.stop()


class RelayOn(Relay):
    """A relay on a given port."""

    def __init__(self, port, upstream_port):
        self._want = port
        super().__init__(upstream_port)



class ExfiltrationBudget(unittest.TestCase):
    def test_wildcards_forward_only_connection_types_and_types_widens_it(self):
        relay = Relay(knot.port)
        d = Dnsward(relay.port, allowlist="*.wild.test\n**.deep.test types=A,TXT\nwww.allowed.test\n",
                    extra=["--cache-size", "0"])
        try:
            r = d.query("t1.wild.test.", "TXT", use_edns=0)
            self.assertEqual(r.rcode(), dns.rcode.NOERROR)
            self.assertEqual(r.answer, [])
            code, text = ede(r)
            self.assertEqual(code, 17)  # Filtered
            self.assertIn("type TXT is not allowed under '*.wild.test'", text)
            self.assertEqual(relay.names(), [])  # never left the machine
            d.query("x.a.b.deep.test.", "TXT")
            d.query("www.allowed.test.", "TXT")  # exact names are not limited
            d.query("t2.wild.test.", "A")
            self.assertEqual(relay.names(), ["x.a.b.deep.test.", "www.allowed.test.", "t2.wild.test."])
        finally:
            d.stop()
            relay.stop()

    def test_a_budget_of_new_names_per_minute_is_enforced(self):
        d = Dnsward(knot.port, allowlist="*.wild.test budget=3\n")
        try:
            for i in range(3):
                self.assertEqual(d.query(f"b{i}.wild.test.").rcode(), dns.rcode.NOERROR)
            r = d.query("b3.wild.test.", use_edns=0)
            self.assertEqual(r.rcode(), dns.rcode.NXDOMAIN)
            self.assertIn("allows 3 new names a minute", ede(r)[1])
            self.assertEqual(d.query("b1.wild.test.").rcode(), dns.rcode.NOERROR)  # seen: fine
            self.assertIn("event=over-budget name=b3.wild.test", d.logtext())
        finally:
            d.stop()


if __name__ == "__main__":
    unittest.main()
