"""Hostile packets: every malformation gets FORMERR when a reply can be formed safely, or
is dropped, and dnsward keeps answering. Each case is followed by a liveness query."""
import os
import random
import socket
import struct
import unittest

import dns.flags
import dns.message
import dns.rcode

from harness import LO, Stack, recv_exact, require, wait_for

stack = knot = relay = dw = None


def setUpModule():
    require("knotd")
    global stack, knot, relay, dw
    stack = Stack()
    knot, relay, dw = stack.knot, stack.relay, stack.dw


def tearDownModule():
    code = stack.stop()
    assert code == 0, f"dnsward exited with {code} on SIGTERM"


def header(id=0x1111, flags=0x0100, qd=1, an=0, ns=0, ar=0):
    return struct.pack("!HHHHHH", id, flags, qd, an, ns, ar)


# An allowed name (under *.wild.test) that nothing else asks, of the same length as
# www.allowed.test so the pointer offsets below hold: if any malformed packet were
# forwarded, the relay would see this name.
QUESTION = b"\x06malfrm\x04wild\x04test\x00" + struct.pack("!HH", 1, 1)
OPT = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)

# (what, packet, expected): "formerr", "notimp" or None (no reply at all).
CASES = [
    ("empty datagram", b"", None),
    ("short header", header()[:11], None),
    ("a response: never answered (reflection)", header(flags=0x8100) + QUESTION, None),
    ("QDCOUNT 0", header(qd=0), "formerr"),
    ("QDCOUNT 2", header(qd=2) + QUESTION + QUESTION, "formerr"),
    ("ANCOUNT 1 in a query", header(an=1) + QUESTION, "formerr"),
    ("question missing", header(), "formerr"),
    ("truncated name", header() + b"\x03www\x07all", "formerr"),
    ("truncated type/class", header() + QUESTION[:-3], "formerr"),
    ("label longer than 63", header() + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01", "formerr"),
    ("name longer than 255",
     header() + (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01", "formerr"),
    ("compression loop in the question", header() + b"\x01a\xc0\x0c\x00\x01\x00\x01", "formerr"),
    ("pointer out of range", header() + b"\xc0\xff\x00\x01\x00\x01", "formerr"),
    ("pointer into the header", header() + b"\xc0\x02\x00\x01\x00\x01", "formerr"),
    ("reserved label type 0x40", header() + b"\x41a\x00\x00\x01\x00\x01", "formerr"),
    ("trailing garbage", header() + QUESTION + b"\xde\xad", "formerr"),
    ("ARCOUNT with no record", header(ar=1) + QUESTION, "formerr"),
    ("two OPT records", header(ar=2) + QUESTION + OPT + OPT, "formerr"),
    ("OPT owned by a name", header(ar=1) + QUESTION + b"\x01x" + OPT[1:], "formerr"),
    ("OPT rdata longer than the packet",
     header(ar=1) + QUESTION + b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 50), "formerr"),
    ("EDNS option overrunning its OPT",
     header(ar=1) + QUESTION + b"\x00" + struct.pack("!HHIHHH", 41, 1232, 0, 4, 10, 9), "formerr"),
    ("additional record with a looping owner",
     header(ar=1) + QUESTION + b"\xc0\x22" + struct.pack("!HHIH", 1, 1, 0, 0), "formerr"),
    ("opcode UPDATE", header(flags=5 << 11) + QUESTION, "notimp"),
    ("qtype OPT", header() + QUESTION[:-4] + struct.pack("!HH", 41, 1), "formerr"),
]


class Malformed(unittest.TestCase):
    def assert_alive(self):
        # Retried: after a flood a UDP query may be lost in a full buffer (ours or the
        # relay's); what matters is that answers keep coming.
        r = wait_for(lambda: dw.query("www.allowed.test.", "A"), timeout=15, what="an answer")
        self.assertEqual([x.address for x in r.answer[0]], ["198.18.0.1"])
        self.assertTrue(dw.alive())

    def check_reply(self, what, pkt, expected, reply):
        if expected is None:
            self.assertIsNone(reply, what)
            return
        self.assertIsNotNone(reply, what)
        self.assertGreaterEqual(len(reply), 12, what)
        rid, flags = struct.unpack("!HH", reply[:4])
        self.assertEqual(rid, struct.unpack("!H", pkt[:2])[0], what)
        self.assertTrue(flags & 0x8000, what)
        want = dns.rcode.FORMERR if expected == "formerr" else dns.rcode.NOTIMP
        self.assertEqual(flags & 0xF, want, what)

    def test_each_malformed_udp_packet_gets_formerr_or_nothing(self):
        relay.clear()
        for what, pkt, expected in CASES:
            with self.subTest(what):
                self.check_reply(what, pkt, expected, dw.raw_udp(pkt))
                self.assert_alive()
        # None of them was forwarded: only the liveness queries reached the upstream.
        self.assertNotIn("malfrm.wild.test.", relay.names())
        self.assertLessEqual(set(relay.names()), {"www.allowed.test."})

    def test_each_malformed_tcp_message_gets_formerr_or_nothing(self):
        relay.clear()
        for what, pkt, expected in CASES:
            with self.subTest(what):
                with socket.create_connection((LO, dw.port), timeout=2) as s:
                    s.sendall(struct.pack("!H", len(pkt)) + pkt)
                    s.settimeout(0.5 if expected is None else 2)
                    try:
                        n = struct.unpack("!H", recv_exact(s, 2))[0]
                        reply = recv_exact(s, n)
                    except (socket.timeout, EOFError):
                        reply = None
                    self.check_reply(what, pkt, expected, reply)
                self.assert_alive()
        self.assertNotIn("malfrm.wild.test.", relay.names())

    def test_random_garbage_and_mutations_never_stop_the_server(self):
        rng = random.Random(1234)
        good = header() + QUESTION + OPT
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(3000):
                if i % 2:
                    pkt = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 80)))
                else:
                    b = bytearray(good)
                    for _ in range(rng.randrange(1, 5)):
                        b[rng.randrange(len(b))] = rng.getrandbits(8)
                    pkt = bytes(b[:rng.randrange(len(b) + 1)])
                s.sendto(pkt, (LO, dw.port))
        self.assert_alive()

    def test_a_tcp_stream_of_garbage_is_survived(self):
        with socket.create_connection((LO, dw.port), timeout=2) as s:
            s.sendall(os.urandom(20000))
        self.assert_alive()


if __name__ == "__main__":
    unittest.main()
