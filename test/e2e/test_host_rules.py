"""`dnsward nft-rules --host`, loaded on a host in a world of network namespaces, against
real traffic. The host ("h") has a tap per guest (veth pairs named tapg1, tapg2, tapg3 on
its side, so `tap*` matches them; g1 and g2 registered in sandboxes4/6, g3 not) and an
uplink to "n", which holds the destinations (198.18.0.0/16, 2001:db8:1::/64) and a TCP echo
server. The sets are filled with `nft add element` as dnsward would. Every namespace is
created here and deleted in tearDownModule; no traffic leaves them. No sleeps: a dropped
packet is a socket timeout, a rejected one an error at once."""
import ctypes
import json
import os
import socket
import subprocess
import threading
import unittest

from harness import BIN, require, run

CLONE_NEWNET = 0x40000000
SO_MARK = 36
PREFIX = f"dwh{os.getpid() % 100000}"
H, G1, G2, G3, N = (f"{PREFIX}-{x}" for x in ("h", "g1", "g2", "g3", "n"))
NAMESPACES = (H, G1, G2, G3, N)
MARK = 1 << 20
DNS_PORT = 5353
DEST4, DEST6 = "198.18.1.10", "2001:db8:1::10"
GUEST = {  # namespace: (tap on the host, host address, guest address, host v6, guest v6)
    G1: ("tapg1", "100.64.1.1", "100.64.1.2", "fd64:1::1", "fd64:1::2"),
    G2: ("tapg2", "100.64.2.1", "100.64.2.2", "fd64:2::1", "fd64:2::2"),
    G3: ("tapg3", "100.64.3.1", "100.64.3.2", "fd64:3::1", "fd64:3::2"),
}
DROPPED = 1.0  # seconds a connection attempt waits before a silent drop counts as one

libc = ctypes.CDLL(None, use_errno=True)
ruleset_text = None
servers = []


def sh(*cmd):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r.stdout


def ns_run(ns, *cmd):
    return sh("ip", "netns", "exec", ns, *cmd)


def nft_h(*args, stdin=None):
    r = subprocess.run(["ip", "netns", "exec", H, "nft", *args], input=stdin, capture_output=True,
                       text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"nft {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def in_ns(ns, fn):
    """fn() run on a thread that entered namespace ns: a socket it creates stays in ns,
    whichever thread uses it afterwards."""
    out = {}

    def enter():
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns {ns}")
        finally:
            os.close(fd)
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised on the caller's thread
            out["error"] = e

    t = threading.Thread(target=enter)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def sock(ns, family, kind):
    return in_ns(ns, lambda: socket.socket(family, kind))


def family_of(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def connect(ns, addr, port, src=None, timeout=DROPPED):
    """A TCP connection from namespace ns; raises ConnectionRefusedError when rejected
    (tcp reset), TimeoutError when dropped."""
    s = sock(ns, family_of(addr), socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        if src:
            s.bind((src, 0))
        s.connect((addr, port))
    except BaseException:
        s.close()
        raise
    return s


def echoes(s, payload=b"ping"):
    s.sendall(payload)
    return s.recv(64) == payload


class Server:
    """A TCP echo server (and optionally a DNS-ish UDP/TCP responder) on one address of a
    namespace, on its own thread; it records each peer and, for TCP, each accepted
    socket's SO_MARK."""

    def __init__(self, ns, addr, port, udp=False, reply=None, v6only=False):
        self.peers, self.marks, self.reply = [], [], reply
        self.stopping = False
        family = family_of(addr)
        self.tcp = sock(ns, family, socket.SOCK_STREAM)
        self.udp = sock(ns, family, socket.SOCK_DGRAM) if udp else None
        for s in filter(None, (self.tcp, self.udp)):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if v6only:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((addr, port))
            s.settimeout(0.2)
        self.tcp.listen(16)
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        if self.udp:
            self.threads.append(threading.Thread(target=self._udp, daemon=True))
        for t in self.threads:
            t.start()
        servers.append(self)

    def _answer(self, data, peer):
        return self.reply(data, peer) if self.reply else data

    def _accept(self):
        while not self.stopping:
            try:
                c, peer = self.tcp.accept()
            except (TimeoutError, OSError):
                continue
            self.peers.append(peer[0])
            self.marks.append(c.getsockopt(socket.SOL_SOCKET, SO_MARK))
            threading.Thread(target=self._serve, args=(c, peer), daemon=True).start()

    def _serve(self, c, peer):
        c.settimeout(5)
        with c:
            try:
                while not self.stopping:
                    data = c.recv(4096)
                    if not data:
                        return
                    c.sendall(self._answer(data, peer))
            except OSError:
                return

    def _udp(self):
        while not self.stopping:
            try:
                data, peer = self.udp.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            self.peers.append(peer[0])
            self.udp.sendto(self._answer(data, peer), peer)

    def stop(self):
        self.stopping = True
        for t in self.threads:
            t.join(timeout=2)
        for s in filter(None, (self.tcp, self.udp)):
            s.close()


def delete_namespaces():
    for ns in NAMESPACES:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def build_world():
    for ns in NAMESPACES:
        sh("ip", "netns", "add", ns)
        ns_run(ns, "ip", "link", "set", "lo", "up")
    for ns, (tap, h4, g4, h6, g6) in GUEST.items():
        sh("ip", "link", "add", tap, "netns", H, "type", "veth", "peer", "name", "eth0", "netns", ns)
        ns_run(H, "ip", "addr", "add", f"{h4}/24", "dev", tap)
        ns_run(H, "ip", "addr", "add", f"{h6}/64", "dev", tap, "nodad")
        ns_run(H, "ip", "link", "set", tap, "up")
        ns_run(ns, "ip", "addr", "add", f"{g4}/24", "dev", "eth0")
        ns_run(ns, "ip", "addr", "add", f"{g6}/64", "dev", "eth0", "nodad")
        ns_run(ns, "ip", "link", "set", "eth0", "up")
        ns_run(ns, "ip", "route", "add", "default", "via", h4)
        ns_run(ns, "ip", "-6", "route", "add", "default", "via", h6)
    sh("ip", "link", "add", "uplink", "netns", H, "type", "veth", "peer", "name", "eth0", "netns", N)
    ns_run(H, "ip", "addr", "add", "192.0.2.1/24", "dev", "uplink")
    ns_run(H, "ip", "addr", "add", "2001:db8:ff::1/64", "dev", "uplink", "nodad")
    ns_run(H, "ip", "link", "set", "uplink", "up")
    ns_run(N, "ip", "addr", "add", "192.0.2.2/24", "dev", "eth0")
    ns_run(N, "ip", "addr", "add", "2001:db8:ff::2/64", "dev", "eth0", "nodad")
    ns_run(N, "ip", "link", "set", "eth0", "up")
    for a in (f"{DEST4}/32", "198.18.0.53/32"):
        ns_run(N, "ip", "addr", "add", a, "dev", "lo")
    ns_run(N, "ip", "addr", "add", f"{DEST6}/128", "dev", "lo", "nodad")
    ns_run(N, "ip", "route", "add", "100.64.0.0/16", "via", "192.0.2.1")
    ns_run(N, "ip", "-6", "route", "add", "fd64::/16", "via", "2001:db8:ff::1")
    ns_run(H, "ip", "route", "add", "198.18.0.0/16", "via", "192.0.2.2")
    ns_run(H, "ip", "-6", "route", "add", "2001:db8:1::/64", "via", "2001:db8:ff::2")
    ns_run(H, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
           "net.ipv4.tcp_fwmark_accept=1")


def register(ns):
    tap, _, g4, _, g6 = GUEST[ns]
    nft_h("add", "element", "inet", "dnsward", "sandboxes4", f'{{ "{tap}" . {g4} }}')
    nft_h("add", "element", "inet", "dnsward", "sandboxes6", f'{{ "{tap}" . {g6} }}')


def vouch(guest, dest):
    s = "allowed6" if ":" in dest else "allowed4"
    nft_h("add", "element", "inet", "dnsward", s, f"{{ {guest} . {dest} timeout 300s }}")


def unvouch(guest, dest):
    s = "allowed6" if ":" in dest else "allowed4"
    subprocess.run(["ip", "netns", "exec", H, "nft", "delete", "element", "inet", "dnsward", s,
                    f"{{ {guest} . {dest} }}"], capture_output=True, timeout=30)


def counter(chain, rule_text):
    """The packets counted by the rule of chain whose printed body is rule_text (found by the
    mark `nft-rules` put on it)."""
    mark = None
    for line in ruleset_text.splitlines():
        line = line.strip()
        if line.startswith(rule_text + ' comment "dnsward '):
            mark = line[len(rule_text) + len(' comment "'):-1]
    assert mark, rule_text
    for item in json.loads(nft_h("-j", "list", "chain", "inet", "dnsward", chain))["nftables"]:
        r = item.get("rule")
        if r and r.get("comment") == mark:
            for e in r["expr"]:
                if "counter" in e:
                    return e["counter"]["packets"]
    raise AssertionError(f"no counter on {rule_text}")


SPOOF4 = 'iifname . ip saddr != @sandboxes4 counter drop'
SPOOF6 = 'iifname . ip6 saddr != @sandboxes6 counter drop'


def setUpModule():
    global ruleset_text
    require("nft", "ip", "sysctl")
    delete_namespaces()
    try:
        build_world()
        r = run([BIN, "nft-rules", "--host", "--listen", f"0.0.0.0:{DNS_PORT}", "--listen",
                 f"[::]:{DNS_PORT}"])
        assert r.returncode == 0, r.stderr
        ruleset_text = r.stdout
        nft_h("-f", "-", stdin=ruleset_text)
        register(G1)
        register(G2)
        # Destinations in n: an echo server on each; port 853 for DoT.
        Server(N, DEST4, 8080)
        Server(N, DEST6, 8080)
        Server(N, DEST4, 853, udp=True)
        Server(N, DEST4, 443, udp=True)
        # dnsward's stand-in on the host: wildcard listeners on its port, answering with a
        # marker and the source address they saw.
        answer = lambda data, peer: b"dnsward:" + peer[0].encode() + b":" + data  # noqa: E731
        Server(H, "0.0.0.0", DNS_PORT, udp=True, reply=answer)
        Server(H, "::", DNS_PORT, udp=True, reply=answer, v6only=True)
        Server(H, "192.0.2.1", 7000)
    except BaseException:
        tearDownModule()
        raise


def tearDownModule():
    for s in servers:
        s.stop()
    servers.clear()
    delete_namespaces()


def server(addr, port):
    """The Server set up on addr:port."""
    for s in servers:
        if s.tcp.getsockname()[:2] == (addr, port):
            return s
    raise KeyError((addr, port))


class HostRules(unittest.TestCase):
    def test_a_unvouched_destination_is_rejected_and_a_vouched_pair_opens_it_for_that_guest_only(self):
        g1, g2 = GUEST[G1][2], GUEST[G2][2]
        with self.assertRaises(ConnectionRefusedError):
            connect(G1, DEST4, 8080)
        vouch(g1, DEST4)
        try:
            with connect(G1, DEST4, 8080) as s:
                self.assertTrue(echoes(s))
            with self.assertRaises(ConnectionRefusedError):
                connect(G2, DEST4, 8080)
        finally:
            unvouch(g1, DEST4)

    def test_a_udp_443_goes_only_to_a_vouched_pair_and_is_rejected_otherwise(self):
        g1 = GUEST[G1][2]
        quic = server(DEST4, 443)

        def exchange():
            u = sock(G1, socket.AF_INET, socket.SOCK_DGRAM)
            with u:
                u.settimeout(3)
                u.connect((DEST4, 443))
                u.send(b"initial")
                return u.recv(64)

        # Rejected with ICMP admin-prohibited: the connected socket sees an error at once.
        with self.assertRaises(OSError) as e:
            exchange()
        self.assertNotIsInstance(e.exception, TimeoutError)
        self.assertNotIn(g1, quic.peers)
        vouch(g1, DEST4)
        try:
            self.assertEqual(exchange(), b"initial")
            self.assertIn(g1, quic.peers)
        finally:
            unvouch(g1, DEST4)

    def test_h_ipv6_unvouched_is_rejected_and_a_vouched_pair_opens_it_for_that_guest_only(self):
        g1, g2 = GUEST[G1][4], GUEST[G2][4]
        with self.assertRaises(ConnectionRefusedError):
            connect(G1, DEST6, 8080)
        vouch(g1, DEST6)
        try:
            with connect(G1, DEST6, 8080) as s:
                self.assertTrue(echoes(s))
            with self.assertRaises(ConnectionRefusedError):
                connect(G2, DEST6, 8080)
        finally:
            unvouch(g1, DEST6)

    def test_b_a_guest_sending_from_anothers_address_is_dropped_and_counted(self):
        g2 = GUEST[G2][2]
        # The pair is vouched: only anti-spoofing stands between g1 and the destination.
        vouch(g2, DEST4)
        ns_run(G1, "ip", "addr", "add", f"{g2}/32", "dev", "eth0")
        try:
            before = counter("prerouting", SPOOF4)
            echo = server(DEST4, 8080)
            with self.assertRaises(TimeoutError):
                connect(G1, DEST4, 8080, src=g2)
            self.assertGreater(counter("prerouting", SPOOF4), before)
            self.assertNotIn(g2, echo.peers)
            # g2 itself, from its own tap, gets through: the pair is what counts.
            with connect(G2, DEST4, 8080) as s:
                self.assertTrue(echoes(s))
        finally:
            ns_run(G1, "ip", "addr", "del", f"{g2}/32", "dev", "eth0")
            unvouch(g2, DEST4)

    def test_b_ipv6_a_guest_sending_from_anothers_address_is_dropped_and_counted(self):
        g2 = GUEST[G2][4]
        vouch(g2, DEST6)
        ns_run(G1, "ip", "addr", "add", f"{g2}/128", "dev", "eth0", "nodad")
        try:
            before = counter("prerouting", SPOOF6)
            with self.assertRaises(TimeoutError):
                connect(G1, DEST6, 8080, src=g2)
            self.assertGreater(counter("prerouting", SPOOF6), before)
            self.assertNotIn(g2, server(DEST6, 8080).peers)
            with connect(G2, DEST6, 8080) as s:
                self.assertTrue(echoes(s))
        finally:
            ns_run(G1, "ip", "addr", "del", f"{g2}/128", "dev", "eth0")
            unvouch(g2, DEST6)

    def test_c_an_unregistered_tap_gets_nothing_forwarded_nor_answered(self):
        g3 = GUEST[G3][2]
        vouch(g3, DEST4)
        try:
            before = counter("prerouting", SPOOF4)
            with self.assertRaises(TimeoutError):
                connect(G3, DEST4, 8080)
            u = sock(G3, socket.AF_INET, socket.SOCK_DGRAM)
            with u:
                u.settimeout(DROPPED)
                u.sendto(b"query", ("198.18.0.53", 53))
                with self.assertRaises(TimeoutError):
                    u.recvfrom(512)
            self.assertGreater(counter("prerouting", SPOOF4), before)
            self.assertNotIn(g3, server(DEST4, 8080).peers)
        finally:
            unvouch(g3, DEST4)

    def test_d_dns_to_any_address_is_redirected_to_dnsward_over_udp_and_tcp_with_the_mark(self):
        g1 = GUEST[G1][2]
        for dest in ("198.18.0.53", "8.8.8.8"):
            u = sock(G1, socket.AF_INET, socket.SOCK_DGRAM)
            with u:
                u.settimeout(3)
                u.sendto(b"q1", (dest, 53))
                data, peer = u.recvfrom(512)
            # Answered by the host's listener, which saw the guest's own address, and the
            # answer comes back from the address the guest asked.
            self.assertEqual(data, f"dnsward:{g1}:q1".encode())
            self.assertEqual(peer, (dest, 53))
        h = server("0.0.0.0", DNS_PORT)
        marks = len(h.marks)
        with connect(G1, "198.18.0.53", 53, timeout=3) as s:
            s.sendall(b"q2")
            self.assertEqual(s.recv(64), f"dnsward:{g1}:q2".encode())
        self.assertEqual(len(h.marks), marks + 1)
        self.assertEqual(h.marks[-1] & MARK, MARK)
        # And IPv6, to a resolver the guest names itself.
        u = sock(G1, socket.AF_INET6, socket.SOCK_DGRAM)
        with u:
            u.settimeout(3)
            u.sendto(b"q3", ("2001:db8:1::53", 53))
            data, _ = u.recvfrom(512)
        self.assertEqual(data, f"dnsward:{GUEST[G1][4]}:q3".encode())

    def test_d_the_host_itself_takes_nothing_from_a_guest_but_dns(self):
        with self.assertRaises(ConnectionRefusedError):
            connect(G1, GUEST[G1][1], 22)
        with self.assertRaises(ConnectionRefusedError):
            connect(G1, "192.0.2.1", 7000)  # the host's listener on its uplink address
        with connect(G1, GUEST[G1][1], DNS_PORT, timeout=3) as s:  # dnsward's port itself
            s.sendall(b"q")
            self.assertTrue(s.recv(64).startswith(b"dnsward:"))

    def test_e_dns_over_tls_and_quic_is_dropped_even_to_a_vouched_destination(self):
        g1 = GUEST[G1][2]
        vouch(g1, DEST4)
        try:
            dot = server(DEST4, 853)
            with self.assertRaises(TimeoutError):
                connect(G1, DEST4, 853)
            u = sock(G1, socket.AF_INET, socket.SOCK_DGRAM)
            with u:
                u.settimeout(DROPPED)
                u.sendto(b"quic", (DEST4, 853))
                with self.assertRaises(TimeoutError):
                    u.recvfrom(512)
            self.assertNotIn(g1, dot.peers)
            with connect(G1, DEST4, 8080) as s:  # the pair itself is open
                self.assertTrue(echoes(s))
        finally:
            unvouch(g1, DEST4)

    def test_f_removing_a_sandbox_cuts_its_established_connection_at_once(self):
        g1 = GUEST[G1][2]
        tap = GUEST[G1][0]
        vouch(g1, DEST4)
        try:
            with connect(G1, DEST4, 8080, timeout=3) as s:
                self.assertTrue(echoes(s))
                nft_h("delete", "element", "inet", "dnsward", "sandboxes4", f'{{ "{tap}" . {g1} }}')
                s.settimeout(DROPPED)
                s.sendall(b"after")
                with self.assertRaises(TimeoutError):
                    s.recv(64)
        finally:
            subprocess.run(["ip", "netns", "exec", H, "nft", "add", "element", "inet", "dnsward",
                            "sandboxes4", f'{{ "{tap}" . {g1} }}'], capture_output=True, timeout=30)
            unvouch(g1, DEST4)

    def test_g_traffic_not_from_a_sandbox_interface_is_untouched(self):
        # n to the host (input from the uplink, from a source no set holds), and the host to
        # n (its own output); none of it counted as spoofed.
        before = counter("prerouting", SPOOF4)
        with connect(N, "192.0.2.1", 7000, timeout=3) as s:
            self.assertTrue(echoes(s))
        with connect(H, DEST4, 8080, timeout=3) as s:
            self.assertTrue(echoes(s))
        self.assertIn("192.0.2.2", server("192.0.2.1", 7000).peers)
        self.assertEqual(counter("prerouting", SPOOF4), before)

    def test_host_is_refused_with_another_family_in_one_line_exit_2(self):
        for family, listen in (("ip", "0.0.0.0:53"), ("ip6", "[::]:53")):
            r = run([BIN, "nft-rules", "--host", "--nft-family", family, "--listen", listen])
            self.assertEqual(r.returncode, 2)
            self.assertEqual(r.stdout, "")
            self.assertEqual(len(r.stderr.splitlines()), 1, r.stderr)
            self.assertIn("--host needs --nft-family inet", r.stderr)


if __name__ == "__main__":
    unittest.main()
