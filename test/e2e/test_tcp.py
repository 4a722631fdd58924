"""DNS over TCP (RFC 7766): pipelining, split messages, idle timeouts, the connection cap,
and clients that misbehave without stalling anyone else."""
import re
import socket
import threading
import time
import unittest

import dns.message
import dns.rcode
import dns.rrset

from harness import (Dnsward, Knot, LO, LoopbackServer, RecordingServer, Relay, framed, read_reply, require,
                     run, wait_for)

knot = dw = None


def setUpModule():
    global knot, dw
    require("knotd", "ss")
    knot = Knot()
    dw = Dnsward(knot.port, extra=["--tcp-idle-timeout", "500", "--tcp-max-connections", "4"])


def tearDownModule():
    code = dw.stop()
    knot.stop()
    assert code == 0, f"dnsward exited with {code}"


def connect():
    s = socket.create_connection((LO, dw.port), timeout=3)
    return s


def server_side_established(client_port):
    """Whether dnsward still holds an established connection from client_port."""
    out = run(["ss", "-Htn", "state", "established", f"( sport = :{dw.port} and "
               f"dport = :{client_port} )"]).stdout
    return bool(out.strip())


def server_has_read_everything(server_port, client_port):
    """Whether dnsward's side of the connection from client_port has an empty receive
    queue: every byte the client sent so far has been read by dnsward."""
    out = run(["ss", "-Htn", "state", "established", f"( sport = :{server_port} and "
               f"dport = :{client_port} )"]).stdout.split()
    return bool(out) and out[0] == "0"  # Recv-Q


def closed_by_server(sock, within):
    """True if the server closes sock within `within` seconds (data still queued for us
    is read and thrown away on the way)."""
    deadline = time.monotonic() + within
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            if sock.recv(65536) == b"":
                return True
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False


class Tcp(unittest.TestCase):
    def test_pipelined_queries_on_one_connection_are_all_answered(self):
        names = ["www.allowed.test.", "evil.test.", "localhost.", "alias.allowed.test.",
                 "many.allowed.test.", "other.evil.", "anything.wild.test."] * 3
        queries = []
        for i, n in enumerate(names):
            q = dns.message.make_query(n, "A")
            q.id = 1000 + i
            queries.append(q)
        with connect() as s:
            s.sendall(b"".join(framed(q) for q in queries))  # one write, many messages
            replies = {}
            for _ in queries:
                r = read_reply(s)
                replies[r.id] = r
        self.assertEqual(sorted(replies), [q.id for q in queries])
        for q in queries:
            r = replies[q.id]
            self.assertEqual(r.question[0].name, q.question[0].name)
            want = dns.rcode.NXDOMAIN if "evil" in q.question[0].name.to_text() else dns.rcode.NOERROR
            self.assertEqual(r.rcode(), want, q.question[0].name)

    def test_a_message_split_across_segments_is_reassembled(self):
        # A dnsward of its own with the default idle timeout (10 s): bytes that do not
        # complete a message are no activity, and this test may take longer than the 500 ms
        # the shared one allows on a busy machine.
        d = Dnsward(knot.port)
        q = dns.message.make_query("www.allowed.test.", "A")
        data = framed(q)
        try:
            with socket.create_connection((LO, d.port), timeout=5) as s:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                port = s.getsockname()[1]
                # The length prefix split in two, then the message in pieces; each piece is
                # sent only once dnsward has read the one before (its receive queue is
                # empty), so every read it does sees part of a message.
                cuts = [0, 1, 2, 5, 13, len(data) - 1, len(data)]
                for a, b in zip(cuts, cuts[1:]):
                    s.send(data[a:b])
                    if b < len(data):
                        wait_for(lambda: server_has_read_everything(d.port, port), timeout=5,
                                 what=f"dnsward reading bytes {a}..{b}")
                r = read_reply(s)
        finally:
            d.stop()
        self.assertEqual([x.address for x in r.answer[0]], ["198.18.0.1"])

    def test_idle_connection_is_closed_after_the_idle_timeout(self):
        with connect() as s:
            t0 = time.monotonic()
            self.assertTrue(closed_by_server(s, 3))
            self.assertGreater(time.monotonic() - t0, 0.4)

    def test_slow_loris_is_closed_and_does_not_stall_others(self):
        with connect() as slow:
            data = framed(dns.message.make_query("www.allowed.test.", "A"))
            slow.send(data[:3])  # a message started, never finished
            t0 = time.monotonic()
            r = dw.query("www.allowed.test.", "A", tcp=True)  # others are served meanwhile
            self.assertEqual(r.rcode(), dns.rcode.NOERROR)
            self.assertLess(time.monotonic() - t0, 0.3)
            # Dripping bytes does not keep it alive: one byte whenever 100 ms pass without
            # the server closing (never the last, so the message is never complete). With
            # --tcp-idle-timeout 500 it must close long before the drip runs out (3.2 s).
            closed = False
            for b in data[3:-1]:
                if closed_by_server(slow, 0.1):
                    closed = True
                    break
                try:
                    slow.send(bytes([b]))
                except OSError:
                    closed = True
                    break
            closed = closed or closed_by_server(slow, 3)
            self.assertTrue(closed)
            # About 0.5 s; kept alive by the drip it would be 3.2 s + 0.5 s.
            self.assertLess(time.monotonic() - t0, 2.5)

    def test_client_that_never_reads_does_not_stall_others(self):
        s = connect()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        q = framed(dns.message.make_query("big.allowed.test.", "TXT"))
        try:
            s.settimeout(0.5)
            sent = 0
            try:
                for _ in range(400):  # ~1 MB of answers requested, none read
                    s.sendall(q)
                    sent += 1
            except (socket.timeout, OSError):
                pass
            t0 = time.monotonic()
            r = dw.query("www.allowed.test.", "A", tcp=True)
            self.assertEqual(r.rcode(), dns.rcode.NOERROR)
            r = dw.query("www.allowed.test.", "A")
            self.assertEqual(r.rcode(), dns.rcode.NOERROR)
            self.assertLess(time.monotonic() - t0, 1.0)
            # The server gives up on it (idle with answers unread, or its queue of unread
            # answers over the cap), without the client reading anything.
            client_port = s.getsockname()[1]
            self.assertTrue(server_side_established(client_port))
            wait_for(lambda: not server_side_established(client_port), timeout=5,
                     what="server closing the non-reading client")
        finally:
            s.close()
        self.assertTrue(dw.alive())

    def test_half_closed_client_still_gets_its_answers(self):
        with connect() as s:
            s.sendall(framed(dns.message.make_query("www.allowed.test.", "A")) +
                      framed(dns.message.make_query("evil.test.", "A")))
            s.shutdown(socket.SHUT_WR)
            got = sorted(read_reply(s).rcode() for _ in range(2))
            self.assertEqual(got, sorted([dns.rcode.NOERROR, dns.rcode.NXDOMAIN]))
            self.assertEqual(s.recv(1), b"")


class HeldUpstream(RecordingServer):
    """Answers every A query with 198.18.9.9, but only once the test opens the gate; records
    the names it was asked in the order they arrived."""

    def __init__(self):
        self.gate = threading.Event()
        super().__init__()

    def handle(self, wire, transport):
        q = dns.message.from_wire(wire)
        if not self.gate.wait(10):
            return None
        r = dns.message.make_response(q)
        r.answer.append(dns.rrset.from_text(q.question[0].name, 300, "IN", "A", "198.18.9.9"))
        return r.to_wire()


class Pipelining(unittest.TestCase):
    def test_tcp_max_pipelined_pauses_reading_until_answers_go_out(self):
        # --tcp-max-pipelined 3, 7 queries in one write to an upstream that holds its
        # answers: only 3 reach the upstream. A UDP query sent afterwards reaching it proves
        # dnsward's loop went round since (the other 4 had their chance and were not read).
        # Once the answers go out, the rest follow, and every query gets its answer.
        up = HeldUpstream()
        d = Dnsward(up.port, allowlist="*.wild.test\n",
                    extra=["--tcp-max-pipelined", "3", "--cache-size", "0",
                           "--upstream-timeout", "5000", "--upstream-tries", "1"])
        try:
            with socket.create_connection((LO, d.port), timeout=10) as s:
                queries = [dns.message.make_query(f"p{i}.wild.test.", "A") for i in range(7)]
                for i, q in enumerate(queries):
                    q.id = 700 + i
                s.sendall(b"".join(framed(q) for q in queries))
                wait_for(lambda: len(up.names) >= 3, timeout=5, what="3 queries upstream")
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    u.sendto(dns.message.make_query("marker.wild.test.", "A").to_wire(),
                             (LO, d.port))
                    wait_for(lambda: "marker.wild.test." in up.names, timeout=5,
                             what="the UDP marker upstream")
                    self.assertEqual(sorted(n for n in up.names if n.startswith("p")),
                                     ["p0.wild.test.", "p1.wild.test.", "p2.wild.test."])
                    up.gate.set()
                    replies = {}
                    for _ in queries:
                        r = read_reply(s)
                        replies[r.id] = r
                self.assertEqual(sorted(replies), [700 + i for i in range(7)])
                for r in replies.values():
                    self.assertEqual([a.address for a in r.answer[0]], ["198.18.9.9"])
                self.assertEqual(sorted(n for n in up.names if n.startswith("p")),
                                 [f"p{i}.wild.test." for i in range(7)])
        finally:
            up.gate.set()
            d.stop()
            up.stop()


class ConnectionCap(unittest.TestCase):
    """--tcp-max-connections: idle connections give way to new ones (RFC 7766 6.2.3);
    connections with a query in progress do not."""

    def test_connection_cap_refuses_a_new_connection_when_every_slot_has_a_query_pending(self):
        relay = Relay(knot.port, blackhole=True)  # forwarded queries stay pending
        cap = Dnsward(relay.port, extra=["--tcp-max-connections", "4", "--upstream-timeout", "2000"])
        held = []
        try:
            for i in range(4):
                s = socket.create_connection((LO, cap.port), timeout=10)
                held.append(s)
                q = dns.message.make_query("www.allowed.test.", "A")
                q.id = 500 + i
                s.sendall(framed(q))
            wait_for(lambda: len(relay.ids()) >= 4, timeout=5, what="4 queries upstream")
            extra = socket.create_connection((LO, cap.port), timeout=3)
            self.assertTrue(closed_by_server(extra, 1))
            extra.close()
            # UDP is unaffected while TCP is full.
            self.assertEqual(cap.query("localhost.", "A").rcode(), dns.rcode.NOERROR)
            # Once their queries are answered (c-ares asks again; now the relay forwards),
            # those connections are idle, and a new one is admitted in place of one of them.
            relay.blackhole = False
            self.assertEqual(sorted(read_reply(s).id for s in held), [500, 501, 502, 503])
            r = cap.query("localhost.", "A", tcp=True)
            self.assertEqual(r.rcode(), dns.rcode.NOERROR)
        finally:
            for s in held:
                s.close()
            code = cap.stop()
            relay.stop()
        self.assertEqual(code, 0)

    def test_idle_and_half_sent_connections_cannot_deny_tcp_service(self):
        # The default cap (256), filled and overfilled by 300 connections that never finish
        # a query (every other one sends half a length prefix), with no idle timeout to
        # rescue anyone. A real client must still get its answer over TCP.
        dw2 = Dnsward(knot.port, extra=["--tcp-idle-timeout", "600000", "--log-level", "debug"])
        idle, dripped = [], set()
        try:
            for i in range(300):
                s = socket.create_connection((LO, dw2.port), timeout=3)
                if i % 2 == 0:
                    s.send(b"\x00")  # one byte of a two-byte length prefix
                    dripped.add(s.getsockname()[1])
                idle.append(s)
            # Every one of them has been taken in, or turned away (as before the fix).
            wait_for(lambda: len(re.findall(r"event=tcp-(?:evict|refused)", dw2.logtext())) >= 44,
                     timeout=10, what="300 connections accepted")
            r = dw2.query("www.allowed.test.", "A", tcp=True)
            self.assertEqual(r.rcode(), dns.rcode.NOERROR)
            self.assertEqual([a.address for a in r.answer[0]], ["198.18.0.1"])
            evicted = [int(p) for p in re.findall(r"event=tcp-evict client=127\.0\.0\.1:(\d+)",
                                                  dw2.logtext())]
            ours = {s.getsockname()[1] for s in idle}
            self.assertEqual(len(evicted), 45)  # 44 over the cap, and one for the real client
            self.assertTrue(set(evicted) <= ours)
            self.assertTrue(set(evicted) & dripped)  # half a prefix is no activity
            # The oldest went first: the evicted are the first 45 connections opened.
            self.assertEqual(set(evicted), {s.getsockname()[1] for s in idle[:45]})
        finally:
            for s in idle:
                s.close()
            code = dw2.stop()
        self.assertEqual(code, 0)


if __name__ == "__main__":
    unittest.main()
