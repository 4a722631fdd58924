"""Upstream failures that c-ares reports from inside ares_send, and the EDNS switch c-ares
1.18 turns off for a whole channel: no reply is ever delivered re-entrantly, every query
gets exactly one reply, and one FORMERR does not cost later queries their large answers.

The test process moves into a network namespace of its own with only loopback, so an
upstream outside it (192.0.2.1, TEST-NET-1) has no route: c-ares fails the send at once
(ENETUNREACH) and calls back before ares_send returns."""
import socket
import threading
import unittest

import dns.flags
import dns.message
import dns.rcode
import dns.rrset

from harness import (LO, Dnsward, enter_new_netns, framed, free_port, read_reply, require,
                     wait_for)

UNROUTABLE = "192.0.2.1"  # TEST-NET-1: no route inside a namespace with only lo


def setUpModule():
    require("ip")
    enter_new_netns()


def query(name, qid, rdtype="A", **kw):
    q = dns.message.make_query(name, rdtype, **kw)
    q.id = qid
    return q


def assert_clean_exit(case, dw):
    """Stops dnsward; it must have been alive, and exit 0 with no sanitizer report."""
    code = dw.stop()
    log = dw.logtext()
    case.assertNotIn("AddressSanitizer", log)
    case.assertNotIn("runtime error", log)  # UBSan
    case.assertEqual(code, 0, f"dnsward exited with {code}; log tail:\n{log[-3000:]}")


class SendFailsAtOnce(unittest.TestCase):
    """--upstream 192.0.2.1 with no route: every forward fails inside ares_send."""

    def setUp(self):
        self.dw = Dnsward(None, allowlist="www.allowed.test\n",
                          extra=["--upstream", UNROUTABLE])

    def tearDown(self):
        assert_clean_exit(self, self.dw)

    def test_pipelined_tcp_queries_each_get_exactly_one_servfail(self):
        ids = [101, 102, 103, 104, 105]
        with socket.create_connection((LO, self.dw.port), timeout=5) as s:
            s.sendall(b"".join(framed(query("www.allowed.test.", i)) for i in ids))  # one write
            replies = [read_reply(s) for _ in ids]
            # A marker answered locally: the next message on the stream must be its reply,
            # so no query was answered twice (or forwarded again from a re-read buffer).
            s.sendall(framed(query("localhost.", 999)))
            marker = read_reply(s)
        self.assertEqual(sorted(r.id for r in replies), ids)
        for r in replies:
            self.assertEqual(r.rcode(), dns.rcode.SERVFAIL, r.id)
            self.assertEqual(r.question[0].name.to_text(), "www.allowed.test.")
        self.assertEqual(marker.id, 999)
        self.assertEqual(marker.rcode(), dns.rcode.NOERROR)
        self.assertTrue(self.dw.alive())
        log = self.dw.logtext()
        self.assertEqual(log.count("event=upstream-failed"), len(ids), log[-3000:])

    def test_tcp_connection_keeps_serving_after_more_failures_than_the_pipeline_limit(self):
        # Each failed forward must give its pipelining slot back: after more failures than
        # --tcp-max-pipelined (32) the same connection still reads and answers.
        ids = list(range(1, 41))
        with socket.create_connection((LO, self.dw.port), timeout=5) as s:
            s.sendall(b"".join(framed(query("www.allowed.test.", i)) for i in ids))
            replies = [read_reply(s) for _ in ids]
            s.sendall(framed(query("localhost.", 999)))
            marker = read_reply(s)
        self.assertEqual(sorted(r.id for r in replies), ids)
        self.assertTrue(all(r.rcode() == dns.rcode.SERVFAIL for r in replies))
        self.assertEqual(marker.id, 999)

    def test_udp_queries_each_get_exactly_one_servfail(self):
        ids = [201, 202, 203, 204, 205]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            for i in ids:
                s.sendto(query("www.allowed.test.", i).to_wire(), (LO, self.dw.port))
            replies = [dns.message.from_wire(s.recv(65535)) for _ in ids]
            s.sendto(query("localhost.", 999).to_wire(), (LO, self.dw.port))
            marker = dns.message.from_wire(s.recv(65535))
        self.assertEqual(sorted(r.id for r in replies), ids)
        self.assertTrue(all(r.rcode() == dns.rcode.SERVFAIL for r in replies))
        self.assertEqual(marker.id, 999)  # no second reply to any query came before it
        self.assertTrue(self.dw.alive())


class UdpOnlyUpstream:
    """An upstream that speaks UDP only (nothing listens on its TCP port, so a TCP
    connection is refused at once). To a query carrying an OPT for a name starting with
    "old", it answers FORMERR without OPT (RFC 6891 7: a server without EDNS), and one A
    record to the same query without OPT; every other query gets 40 A records, over 512
    bytes, in one UDP answer (with an OPT when the query had one). A name starting with "held" is answered (with one A record) only once
    release is set."""

    def __init__(self):
        self.port = free_port()  # free for TCP too: nobody listens there
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LO, self.port))
        self.sock.settimeout(0.2)
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.seen = []  # (first label, had OPT)
        self.running = True
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def names(self):
        with self.lock:
            return [n for n, _ in self.seen]

    def _loop(self):
        while self.running:
            try:
                data, peer = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._one, args=(data, peer), daemon=True).start()

    def _one(self, data, peer):
        q = dns.message.from_wire(data)
        name = q.question[0].name
        label = name.labels[0].decode().lower()
        with self.lock:
            self.seen.append((label, q.edns >= 0))
        r = dns.message.make_response(q)
        if label.startswith("old") and q.edns >= 0:
            r.use_edns(False)
            r.set_rcode(dns.rcode.FORMERR)
        else:
            if label.startswith("held"):
                if not self.release.wait(10):
                    return
                addrs = ["198.18.7.1"]
            elif label.startswith("old"):
                addrs = ["198.18.6.1"]  # a server without EDNS keeps within 512 bytes
            else:
                addrs = [f"198.18.8.{i + 1}" for i in range(40)]
            r.answer.append(dns.rrset.from_text_list(name, 300, "IN", "A", addrs))
        try:
            self.sock.sendto(r.to_wire(), peer)
        except OSError:
            pass

    def stop(self):
        self.running = False
        self.release.set()
        self.sock.close()
        self.thread.join(5)


class EdnsAfterFormerr(unittest.TestCase):
    """c-ares 1.18 clears ARES_FLAG_EDNS for the whole channel after one FORMERR to an OPT
    query; from then on it refetches every UDP answer over 512 bytes over TCP."""

    ALLOW = "old.edns.test\nold2.edns.test\nheld.edns.test\n**.big.test\n"

    def setUp(self):
        self.up = UdpOnlyUpstream()
        self.dw = Dnsward(self.up.port, allowlist=self.ALLOW, extra=["--cache-size", "0"])

    def tearDown(self):
        try:
            assert_clean_exit(self, self.dw)
        finally:
            self.up.stop()

    def big(self, name):
        r = self.dw.query(name, "A", use_edns=0, payload=1232)
        self.assertEqual(r.rcode(), dns.rcode.NOERROR, name)
        self.assertFalse(r.flags & dns.flags.TC, name)
        self.assertEqual(len(r.answer[0]), 40, name)

    def test_large_udp_answers_still_arrive_after_an_upstream_formerr(self):
        self.big("first.big.test.")  # over 512 bytes over UDP works before
        r = self.dw.query("old.edns.test.", "A", use_edns=0, payload=1232)
        self.assertEqual(r.rcode(), dns.rcode.NOERROR)
        self.assertEqual([a.address for a in r.answer[0]], ["198.18.6.1"])  # asked without OPT
        self.big("after.big.test.")  # and still works after the FORMERR
        # Again with a second FORMERR, which turns EDNS off on the replacement channel too.
        r = self.dw.query("old2.edns.test.", "A", use_edns=0, payload=1232)
        self.assertEqual(r.rcode(), dns.rcode.NOERROR)
        self.big("again.big.test.")
        self.assertTrue(self.dw.alive())
        # Each FORMERR cost c-ares its EDNS flag, and each time a fresh channel took over.
        self.assertEqual(self.dw.logtext().count("event=upstream-edns-reset"), 2)

    def test_query_pending_when_the_channel_is_replaced_is_still_answered(self):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held:
            held.settimeout(5)
            held.sendto(query("held.edns.test.", 77).to_wire(), (LO, self.dw.port))
            wait_for(lambda: "held" in self.up.names(), timeout=5, what="held query upstream")
            r = self.dw.query("old.edns.test.", "A", use_edns=0, payload=1232)
            self.assertEqual(r.rcode(), dns.rcode.NOERROR)
            # The channel the held query went out on has been replaced meanwhile.
            wait_for(lambda: "event=upstream-edns-reset" in self.dw.logtext(), timeout=5,
                     what="channel replaced")
            self.up.release.set()  # the held query's answer now reaches the old channel
            reply = dns.message.from_wire(held.recv(65535))
        self.assertEqual(reply.id, 77)
        self.assertEqual(reply.rcode(), dns.rcode.NOERROR)
        self.assertEqual([a.address for a in reply.answer[0]], ["198.18.7.1"])
        self.big("later.big.test.")


if __name__ == "__main__":
    unittest.main()
