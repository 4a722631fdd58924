"""DNS over TCP (RFC 7766): pipelining, split messages, idle timeouts, the connection cap,
and clients that misbehave without stalling anyone else."""
import socket
import struct
import time
import unittest

import dns.message
import dns.rcode

from harness import Dnsward, Knot, LO, recv_exact, run, wait_for

knot = dw = None


def setUpModule():
    global knot, dw
    knot = Knot()
    dw = Dnsward(knot.port, extra=["--tcp-idle-timeout", "500", "--tcp-max-connections", "4"])


def tearDownModule():
    code = dw.stop()
    knot.stop()
    assert code == 0, f"dnsward exited with {code}"


def framed(msg):
    w = msg.to_wire()
    return struct.pack("!H", len(w)) + w


def read_reply(sock):
    n = struct.unpack("!H", recv_exact(sock, 2))[0]
    return dns.message.from_wire(recv_exact(sock, n))


def connect():
    s = socket.create_connection((LO, dw.port), timeout=3)
    return s


def server_side_established(client_port):
    """Whether dnsward still holds an established connection from client_port."""
    out = run(["ss", "-Htn", "state", "established", f"( sport = :{dw.port} and "
               f"dport = :{client_port} )"]).stdout
    return bool(out.strip())


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
        q = dns.message.make_query("www.allowed.test.", "A")
        data = framed(q)
        with connect() as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for b in data:
                s.send(bytes([b]))
                time.sleep(0.005)
            r = read_reply(s)
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
            for b in data[3:8]:  # dripping bytes does not keep it alive
                time.sleep(0.15)
                try:
                    slow.send(bytes([b]))
                except OSError:
                    break
            self.assertTrue(closed_by_server(slow, 3))

    def test_connection_cap_refuses_extra_connections_and_recovers(self):
        held = [connect() for _ in range(4)]
        try:
            time.sleep(0.1)
            extra = connect()
            self.assertTrue(closed_by_server(extra, 1))
            extra.close()
            # UDP is unaffected while TCP is full.
            self.assertEqual(dw.query("www.allowed.test.", "A").rcode(), dns.rcode.NOERROR)
        finally:
            for s in held:
                s.close()
        time.sleep(0.2)
        r = dw.query("www.allowed.test.", "A", tcp=True)
        self.assertEqual(r.rcode(), dns.rcode.NOERROR)

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


if __name__ == "__main__":
    unittest.main()
