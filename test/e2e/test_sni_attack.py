"""Attacks on the first-flight guard found by review (of 4206357), kept as regression tests,
in the world of test_sni_guard: a front end on 198.18.1.1 serving www.allowed.test (allowed)
and other.test (not allowed). Each test tries to reach other.test through the guard; the
front end reports the TLS server_name and HTTP Host it saw. Clients run as `nobody` without
capabilities unless the test says otherwise (the raw SYN needs CAP_NET_RAW alone, which
container runtimes grant by default). The scripts need no waits: an attacker's packets
reach dnsward through one queue, in the order sent; the tests wait for the scripts' exit."""
import inspect
import os
import re
import shutil
import subprocess
import unittest

import rawtcp
import test_sni_guard as g

# Finishes a TLS handshake whose ClientHello was already sent on s, asks for other.test and
# prints the reply's last line.
FINISH = r"""
def finish(s, tls, incoming, outgoing, host="other.test"):
    import ssl
    try:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                out = outgoing.read()
                if out:
                    s.sendall(out)
                data = s.recv(65536)
                if not data:
                    raise ConnectionError("closed")
                incoming.write(data)
        out = outgoing.read()
        if out:
            s.sendall(out)
        tls.write(("GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % host).encode())
        s.sendall(outgoing.read())
        reply = b""
        while True:
            try:
                reply += tls.read(65536)
            except ssl.SSLWantReadError:
                try:
                    data = s.recv(65536)
                except ConnectionResetError:
                    data = b""
                if not data:
                    break
                incoming.write(data)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
        print(reply.decode(errors="replace").strip().splitlines()[-1])
    except Exception as e:
        print("error", type(e).__name__, e)
"""

URGENT = FINISH + r"""
import socket, sys
sys.path.insert(0, sys.argv[1])
import sni_polyglot
addr, cafile, mode = sys.argv[2:5]
tls, incoming, outgoing, S, D, u = sni_polyglot.build("other.test", "www.allowed.test", cafile)
s = socket.create_connection((addr, 443), timeout=5)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
if mode == "oob":
    # D[u], the byte that makes dnsward read www.allowed.test, is urgent data: the server's
    # kernel takes it out of the stream, and its TLS reads S, which names other.test.
    s.send(D[:u + 1], socket.MSG_OOB)
    s.sendall(D[u + 1:])
elif mode == "S":
    s.sendall(S)
else:
    s.sendall(D)
finish(s, tls, incoming, outgoing)
"""

# The TCP checksum (RFC 9293 3.1) of a segment a raw socket sends: rawtcp's, written into the
# scripts below (some run without the test's directory on their path).
CSUM = "\nimport struct\n" + inspect.getsource(rawtcp.csum)

RAW_SYN = FINISH + CSUM + r"""
import socket, ssl, struct, sys
sys.path.insert(0, sys.argv[1])
from sni_polyglot import hello as make_hello
addr, cafile = sys.argv[2:4]
def hello(name):
    return make_hello(name, ["http/1.1"], cafile)
s = socket.create_connection((addr, 443), timeout=5)   # handshake by the kernel: SYN passes
src, sport = s.getsockname()
# A SYN on the same ports carrying a ClientHello for the allowed name: dnsward judges it as a
# TCP Fast Open flight and allows the connection (the conntrack mark), which the kernel's
# socket then uses for a ClientHello naming other.test, never queued.
_, _, _, good = hello("www.allowed.test")
tcp = struct.pack("!HHIIBBHHH", sport, 443, 12345, 0, 5 << 4, 0x02, 65535, 0, 0) + good
pseudo = socket.inet_aton(src) + socket.inet_aton(addr) + struct.pack("!BBH", 0, 6, len(tcp))
tcp = tcp[:16] + struct.pack("!H", csum(pseudo + tcp)) + tcp[18:]
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
raw.sendto(tcp, (addr, 0))
# No wait needed: the SYN and the data after it go through the same queue, in order.
tls, incoming, outgoing, evil = hello("other.test")
s.sendall(evil)
finish(s, tls, incoming, outgoing)
"""

BARE_CR = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], 80), timeout=5)
# dnsward splits lines at LF only: "X-A: a\rHost: other.test" is one field X-A, and the Host
# it judges is www.allowed.test. Python's header parser splits at the bare CR too and takes
# the first Host.
s.sendall(b"GET / HTTP/1.1\r\nX-A: a\rHost: other.test\r\nHost: www.allowed.test\r\n"
          b"Connection: close\r\n\r\n")
r = b""
try:
    while True:
        d = s.recv(65536)
        if not d:
            break
        r += d
    print(r.decode(errors="replace").strip().splitlines()[-1])
except Exception as e:
    print("error", type(e).__name__, e)
"""

# A front end that ends each connection with a reset and no FIN (SO_LINGER 0), as load
# balancers configured with `nolinger` and servers that close with unread data do.
RST_SERVER = r"""
import socket, ssl, struct, sys, threading
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
def remember(sock, name, c):
    sock.sni_seen = name
ctx.sni_callback = remember
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("0.0.0.0", 8443))
ls.listen(16)
def serve(c):
    try:
        c.settimeout(5)
        t = ctx.wrap_socket(c, server_side=True)
        req = b""
        while b"\r\n\r\n" not in req:
            d = t.recv(4096)
            if not d:
                break
            req += d
        host = [l.split(b":", 1)[1].strip() for l in req.split(b"\r\n") if l.lower().startswith(b"host:")]
        body = ("hello %s sni=%s\n" % (host[0].decode() if host else "?", getattr(t, "sni_seen", "-"))).encode()
        t.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        t.close()
    except Exception as e:
        print("server", e, flush=True)
while True:
    c, _ = ls.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

REUSE = FINISH + r"""
import socket, ssl, sys, time
addr, cafile = sys.argv[1:3]
def conn(sni, port=None):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.settimeout(5)
    if port:
        s.bind(("0.0.0.0", port))
    s.connect((addr, 8443))
    ctx = ssl.create_default_context(cafile=cafile)
    i, o = ssl.MemoryBIO(), ssl.MemoryBIO()
    t = ctx.wrap_bio(i, o, server_hostname=sni)
    try:
        t.do_handshake()
    except ssl.SSLWantReadError:
        pass
    s.sendall(o.read())
    return s, t, i, o
# 1: the allowed name; the front end answers, then resets (no FIN on either side).
s, t, i, o = conn("www.allowed.test")
port = s.getsockname()[1]
finish(s, t, i, o, host="www.allowed.test")
s.close()  # finish() returned: the front end's reset has arrived
if len(sys.argv) > 3:  # the test ends the element's life first, and says "go"
    print("expire", flush=True)
    if sys.stdin.readline().strip() != "go":
        sys.exit(1)
# 2: the same ports again, within the 10 s conntrack keeps a closed entry: the SYN is
# "ignored" by conntrack and rides the old entry, whose mark says allowed.
s, t, i, o = conn("other.test", port)
finish(s, t, i, o)
"""

# CAP_NET_RAW, the third review's attack on the old confirmation: the kernel socket opens the
# connection; a raw socket sends a ClientHello naming the allowed name over the bytes the
# socket will send, with an IP TTL of 1 (the guard judges it, the router drops it: the server
# never reads it, as with a segment it discards by PAWS), then an encrypted-looking record
# after it acknowledging server data that was never sent (which once confirmed the
# connection). The socket then sends its own ClientHello, naming other.test.
RAW_LOST = FINISH + CSUM + r"""
import socket, struct, sys
sys.path.insert(0, sys.argv[1])
from sni_polyglot import hello
addr, cafile, name = sys.argv[2:5]
def seg(src, sport, seq, ack, flags, payload=b"", urg=0):
    tcp = struct.pack("!HHIIBBHHH", sport, 443, seq & 0xffffffff, ack & 0xffffffff, 5 << 4, flags, 65535, 0, urg) + payload
    pseudo = socket.inet_aton(src) + socket.inet_aton(addr) + struct.pack("!BBH", 0, 6, len(tcp))
    return tcp[:16] + struct.pack("!H", csum(pseudo + tcp)) + tcp[18:]
sniff = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
sniff.settimeout(5)
s = socket.create_connection((addr, 443), timeout=5)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
src, sport = s.getsockname()
while True:  # the SYN-ACK: its seq is the server's ISN, its ack where our data starts
    pkt = sniff.recv(65535)
    ihl = (pkt[0] & 15) * 4
    sp, dp, seq, ack, _, fl = struct.unpack("!HHIIBB", pkt[ihl:ihl + 14])
    if sp == 443 and dp == sport and fl & 0x12 == 0x12:
        break
a1, srv1 = ack, seq + 1
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
raw.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 1)
good = hello(name, ["http/1.1"], cafile)[3]
def send_raw(pkt):
    try:
        raw.sendto(pkt, (addr, 0))
    except PermissionError:  # the ruleset dropped it (a verdict, or a rule): sendto says EPERM
        print("dropped", flush=True)
send_raw(seg(src, sport, a1, srv1, 0x18, good))
send_raw(seg(src, sport, a1 + len(good), srv1 + 4000, 0x18, bytes([23, 3, 3, 0, 1, 0])))
tls, incoming, outgoing, evil = hello("other.test", ["http/1.1"], cafile)
try:
    s.sendall(evil)
except OSError as e:  # reset already
    print("error", type(e).__name__, e)
    sys.exit(0)
finish(s, tls, incoming, outgoing)
"""

# CAP_NET_RAW: a bare ACK (no payload, so never queued) with an urgent pointer into the
# first flight not sent yet; then the socket sends the polyglot D, which the guard reads as
# naming www.allowed.test, and whose byte u the server's kernel would take out of the
# stream, leaving S, which names other.test.
RAW_URGENT_ACK = RAW_LOST.split("raw = socket.socket(")[0] + r"""
import sni_polyglot
tls, incoming, outgoing, S, D, u = sni_polyglot.build("other.test", "www.allowed.test", cafile)
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
# BSD urgent semantics (Linux's default): the pointer points one past the urgent byte.
try:
    raw.sendto(seg(src, sport, a1, srv1, 0x30, b"", urg=u + 1), (addr, 0))
except PermissionError:  # dropped by the ruleset
    print("dropped", flush=True)
s.sendall(D)
finish(s, tls, incoming, outgoing)
"""

# Unprivileged: a connection opened, and left idle until conntrack forgets it (an idle
# connection outlives its entry: five days by default, seconds where a host shortened it).
# Its first flight then comes with no SYN before it: conntrack picks it up mid-stream
# (nf_conntrack_tcp_loose) as a new entry, which no SYN rule marked guarded.
PICKUP = FINISH + r"""
import socket, sys
sys.path.insert(0, sys.argv[1])
from sni_polyglot import hello
addr, cafile = sys.argv[2:4]
s = socket.create_connection((addr, 443), timeout=5)
print(s.getsockname()[1], flush=True)
if sys.stdin.readline().strip() != "go":
    sys.exit(1)
tls, incoming, outgoing, evil = hello("other.test", ["http/1.1"], cafile)
s.sendall(evil)
finish(s, tls, incoming, outgoing)
"""

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all",
          "--bounding-set=-all"]
NET_RAW_ONLY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                "--inh-caps=-all,+net_raw", "--ambient-caps=+net_raw", "--bounding-set=-all,+net_raw"]


g.GUARD_OPTIONS = ["--sni-ports", "443", "--sni-ports", "8443"]

# A front end one routed hop away (through the "internet" namespace), as the internet is
# from a microVM: a packet sent with an IP TTL of 1 passes the guard and dies at the router.
FAR_NS = f"dwsfar{g.TAG}"
FAR = "198.18.2.1"
g.ZONE += "far.allowed A 198.18.2.1\n"
g.ALLOW += "far.allowed.test\n"

# The third review's attack, unprivileged: the judged request is sent with MSG_ZEROCOPY and
# an IP TTL of 1, so it is allowed and then lost at the router; once the guard allowed it
# (the test sees the log line and says "go" on stdin), the user buffer is rewritten (same
# length) to name other.test, and the kernel's retransmission reads the rewritten pages.
ZEROCOPY_RESEND = r"""
import mmap, socket, sys
addr = sys.argv[1]
MSG_ZEROCOPY, SO_ZEROCOPY = 0x4000000, 60
good = b"GET / HTTP/1.1\r\nHost: far.allowed.test\r\nConnection: close\r\n\r\n"
evil = b"GET / HTTP/1.1\r\nHost: other.test\r\nX: 1\r\nConnection: close\r\n\r\n"
assert len(good) == len(evil)
buf = mmap.mmap(-1, 4096)
buf[:len(good)] = good
s = socket.create_connection((addr, 80), timeout=8)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 1)
s.send(memoryview(buf)[:len(good)], MSG_ZEROCOPY)
print("sent", flush=True)
if sys.stdin.readline().strip() != "go":
    sys.exit(1)
buf[:len(evil)] = evil
s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 64)
r = b""
try:
    while True:
        d = s.recv(65536)
        if not d:
            break
        r += d
    print(r.decode(errors="replace").strip().splitlines()[-1] if r else "error empty")
except OSError as e:
    print("error", type(e).__name__, e)
"""


def setUpModule():
    g.setUpModule()
    try:
        set_up_attackers()
    except BaseException:
        tearDownModule()  # unittest skips tearDownModule when setUpModule fails
        raise


def set_up_far():
    ie, fe = ("ip", "netns", "exec", g.INET), ("ip", "netns", "exec", FAR_NS)
    g.sh("ip", "netns", "add", FAR_NS)
    g.sh("ip", "link", "add", f"dwsr{g.TAG}", "type", "veth", "peer", "name", f"dwsq{g.TAG}")
    g.sh("ip", "link", "set", f"dwsr{g.TAG}", "netns", g.INET)
    g.sh("ip", "link", "set", f"dwsq{g.TAG}", "netns", FAR_NS)
    g.sh(*ie, "ip", "addr", "add", "198.18.2.254/24", "dev", f"dwsr{g.TAG}")
    g.sh(*ie, "ip", "link", "set", f"dwsr{g.TAG}", "up")
    g.sh(*ie, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
    # The router sends no ICMP time exceeded (many do not): a SYN sent with an IP TTL of 1 dies
    # there silently, and its socket keeps trying (the Fast Open attack below).
    g.sh(*ie, "nft", "-f", "-", input="table inet quiet {\n chain out {\n  type filter hook output priority 0; policy accept;\n  icmp type time-exceeded drop\n }\n}\n")
    g.sh(*fe, "ip", "link", "set", "lo", "up")
    g.sh(*fe, "ip", "addr", "add", f"{FAR}/24", "dev", f"dwsq{g.TAG}")
    g.sh(*fe, "ip", "link", "set", f"dwsq{g.TAG}", "up")
    g.sh(*fe, "ip", "route", "add", "default", "via", "198.18.2.254")
    g.start(FAR_NS, "/usr/bin/python3", g.FRONT, os.path.join(g.workdir, "cert.pem"),
            os.path.join(g.workdir, "key.pem"), "--plain", log=g.logs[0])


def set_up_attackers():
    set_up_far()
    with open(os.path.join(g.workdir, "rst_server.py"), "w") as f:
        f.write(RST_SERVER)
    g.start(g.INET, "/usr/bin/python3", os.path.join(g.workdir, "rst_server.py"),
            os.path.join(g.workdir, "cert.pem"), os.path.join(g.workdir, "key.pem"), log=g.logs[0])
    here = os.path.dirname(os.path.abspath(__file__))
    shutil.copy(os.path.join(here, "sni_polyglot.py"), g.workdir)
    shutil.copy(os.path.join(here, "hrr_client.py"), g.workdir)
    shutil.copy(os.path.join(here, "rawtcp.py"), g.workdir)
    for name, source in (("rebase.py", "rebase_attack.py"), ("tfo_rebase.py", "tfo_rebase_attack.py")):
        with open(os.path.join(here, source)) as src, open(os.path.join(g.workdir, name), "w") as f:
            f.write(FINISH + src.read())
    for name, text in (("zerocopy_resend.py", ZEROCOPY_RESEND), ("urgent.py", URGENT), ("raw_syn.py", RAW_SYN), ("raw_lost.py", RAW_LOST), ("raw_urgent_ack.py", RAW_URGENT_ACK), ("bare_cr.py", BARE_CR), ("reuse.py", REUSE), ("pickup.py", PICKUP)):
        with open(os.path.join(g.workdir, name), "w") as f:
            f.write(text)


def tearDownModule():
    g.tearDownModule()
    g.sh("ip", "netns", "del", FAR_NS, check=False)


def run(prefix, script, *args):
    r = g.in_vm(*prefix, "/usr/bin/python3", os.path.join(g.workdir, script), *args, check=False, timeout=40)
    return (r.stdout + r.stderr).strip()


class Attack(unittest.TestCase):
    """Each attack must end with the connection refused: the front end never answers for
    other.test (it says which server_name and Host it saw when it does answer)."""

    def setUp(self):
        self.assertEqual(g.curl("http://www.allowed.test/"), (0, 200))
        self.cert = os.path.join(g.workdir, "cert.pem")

    def assertRefused(self, out):
        self.assertNotIn("other.test", out.replace("error", ""), out)
        self.assertTrue(out.startswith("error") or not out.startswith("hello"), out)

    def test_the_polyglot_sent_plainly_is_judged_as_the_allowed_name_it_reads_as(self):
        # D parses as a ClientHello for www.allowed.test (the guard allows it) while its
        # real server_name bytes sit in an unknown extension: the front end's TLS, reading
        # D whole, fails the handshake. The control for the urgent-byte case below.
        out = run(NOBODY, "urgent.py", g.workdir, g.SHARED, self.cert, "D")
        self.assertRefused(out)

    def test_an_urgent_byte_that_would_make_the_server_read_other_test_is_dropped_before_the_queue(self):
        # The ruleset drops an urgent segment of an undecided connection before the queue
        # (guard_output), with either backend: it never reaches dnsward (which would reject
        # it too: reason=urgent) nor the server.
        before, rejected = urgent_drops(), len(g.events("first-flight-rejected", reason="urgent"))
        out = run(NOBODY, "urgent.py", g.workdir, g.SHARED, self.cert, "oob")
        self.assertRefused(out)
        self.assertGreater(urgent_drops(), before, out)
        self.assertEqual(len(g.events("first-flight-rejected", reason="urgent")), rejected)

    def test_reusing_the_ports_of_an_allowed_connection_that_ended_in_a_reset_is_judged_anew(self):
        before = len(g.events("sni-mismatch", name="other.test", port="8443"))
        out = run(NOBODY, "reuse.py", g.SHARED, self.cert)
        self.assertRefused(out.splitlines()[-1])
        self.assertEqual(len(g.events("sni-mismatch", name="other.test", port="8443")), before + 1)

    def test_reusing_the_ports_after_the_element_expired_is_judged_too(self):
        """The seventh review (of 58a883e), unprivileged: the same reuse, but the address's
        element expires in between. The SYN cleared the verdict and, the element gone, did not
        mark the connection guarded again; conntrack took the reused entry as established, and
        the ClientHello naming other.test went out unjudged. A SYN on an entry that was guarded
        makes it guarded again, whatever the sets say."""
        judged = lambda: len(g.events("sni-mismatch", port="8443")) + len(
            g.events("first-flight-rejected", reason="no_state", port="8443"))
        before = judged()
        p = subprocess.Popen(["ip", "netns", "exec", g.VM, *NOBODY, "/usr/bin/python3",
                              os.path.join(g.workdir, "reuse.py"), g.SHARED, self.cert, "expire"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            first = p.stdout.readline().strip()
            self.assertEqual(p.stdout.readline().strip(), "expire", first)
            # As its timeout would: the element leaves the kernel's set (dnsward notices, and
            # rereads the set: nothing adds it back before the next answer).
            g.in_vm("nft", "delete", "element", "inet", "dnsward", "allowed4", "{ %s }" % g.SHARED)
            out, _ = p.communicate("go\n", timeout=40)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.assertRefused(out.strip().splitlines()[-1])
        self.assertEqual(judged(), before + 1, out)

    def test_a_bare_cr_cannot_hide_a_second_host(self):
        before = len(g.events("first-flight-rejected", reason="malformed", port="80"))
        out = run(NOBODY, "bare_cr.py", g.SHARED)
        self.assertRefused(out)
        self.assertEqual(len(g.events("first-flight-rejected", reason="malformed", port="80")), before + 1)

    def test_a_raw_syn_with_payload_on_an_open_connection_allows_nothing(self):
        # Dropped by the ruleset before the queue (guard_output's Fast Open rule), with either
        # backend; dnsward would drop it too (reason=tfo) were it queued.
        dropped = lambda: g.tfo_drops() + len(g.events("first-flight-rejected", reason="tfo"))
        before = dropped()
        out = run(NET_RAW_ONLY, "raw_syn.py", g.workdir, g.SHARED, self.cert)
        self.assertRefused(out)
        self.assertEqual(dropped(), before + 1, out)

    def test_a_raw_syn_cannot_move_where_the_flight_starts(self):
        # Second review: a bare raw SYN at ISN - k on a followed connection, then k raw bytes
        # the server discards as old, which with the socket's real ClientHello (other.test)
        # read as one ClientHello naming the allowed name.
        # The raw SYN is not even queued now: where the flight starts is what the server's
        # SYN-ACK acknowledged, and P, before it, rejects the connection.
        before = len(g.events("first-flight-rejected", reason="malformed"))
        out = run(NET_RAW_ONLY, "rebase.py", g.workdir, g.SHARED, self.cert)
        self.assertRefused(out.splitlines()[-1] if out else out)
        self.assertGreater(len(g.events("first-flight-rejected", reason="malformed")), before)

    def test_a_hello_retry_request_does_not_let_the_second_client_hello_name_another_server(self):
        """The second review's bypass: an unprivileged client whose first ClientHello names the
        allowed name with no usable key share gets a HelloRetryRequest, and its second
        ClientHello names other.test; OpenSSL's server takes the new name. The guard follows
        a TLS 1.3 connection to the client's next flight and rejects the second name."""
        before = len(g.events("sni-mismatch"))
        try:
            import cryptography  # noqa: F401 - the client writes its own TLS 1.3 handshake
        except ImportError:
            self.skipTest("python3-cryptography is not installed (scripts/install-deps test)")
        out = run(NOBODY, "hrr_client.py", g.SHARED, "443", "www.allowed.test", "other.test")
        self.assertRefused(out)
        mismatches = g.events("sni-mismatch")[before:]
        self.assertEqual(len(mismatches), 1, mismatches)
        self.assertIn(" name=other.test ", mismatches[0])

    def test_a_hello_retry_request_with_the_same_name_again_completes(self):
        """The same client, its second ClientHello repeating the allowed name: the handshake
        completes through the guard (what a real client does after a HelloRetryRequest)."""
        try:
            import cryptography  # noqa: F401
        except ImportError:
            self.skipTest("python3-cryptography is not installed (scripts/install-deps test)")
        out = run(NOBODY, "hrr_client.py", g.SHARED, "443", "www.allowed.test", "www.allowed.test")
        self.assertTrue(out.startswith("hello") and "www.allowed.test" in out, out)



class LostPastTheGuard(unittest.TestCase):
    def test_a_request_lost_past_the_guard_and_resent_rewritten_is_reset(self):
        """The third review's attack (unprivileged): allowed, lost at the router, resent from
        rewritten zero-copy pages. The guard keeps watching until the server answered, and
        resent bytes that differ from those judged reset the connection."""
        g.wait_for(lambda: g.curl("http://far.allowed.test/") == (0, 200), timeout=20,
                   what="the far front end reachable and vouched")
        before = len(g.events("first-flight-rejected", reason="conflict", addr=FAR))
        allowed = len(g.events("first-flight-allowed", name="far.allowed.test"))
        p = subprocess.Popen(["ip", "netns", "exec", g.VM, *NOBODY, "/usr/bin/python3",
                              os.path.join(g.workdir, "zerocopy_resend.py"), FAR],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            self.assertEqual(p.stdout.readline().strip(), "sent")
            # The guard allowed the request (and it went on, to die at the router).
            g.wait_for(lambda: len(g.events("first-flight-allowed", name="far.allowed.test")) > allowed,
                       what="the guard's verdict on the request")
            out, _ = p.communicate("go\n", timeout=40)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        out = out.strip()
        self.assertFalse(out.startswith("hello"), out)
        self.assertTrue(out.startswith("error"), out)
        self.assertEqual(len(g.events("first-flight-rejected", reason="conflict", addr=FAR)), before + 1)


class SecondHelloLostPastTheGuard(unittest.TestCase):
    def test_a_second_client_hello_lost_past_the_guard_and_resent_rewritten_is_reset(self):
        """The fourth review's attack (unprivileged): after a HelloRetryRequest, the second
        ClientHello, naming the allowed name, is judged, lost at the router and resent from
        pages rewritten to name other.test. The server's HelloRetryRequest answered the
        first ClientHello, not the second: the second waits for its own answer, and the
        rewritten resend resets the connection."""
        try:
            import cryptography  # noqa: F401
        except ImportError:
            self.skipTest("python3-cryptography is not installed (scripts/install-deps test)")
        g.wait_for(lambda: g.curl("http://far.allowed.test/") == (0, 200), timeout=20,
                   what="the far front end reachable and vouched")
        before = len(g.events("first-flight-rejected", reason="conflict", addr=FAR))
        allowed = len(g.events("first-flight-allowed", name="far.allowed.test", port="443"))
        p = subprocess.Popen(["ip", "netns", "exec", g.VM, *NOBODY, "/usr/bin/python3",
                              os.path.join(g.workdir, "hrr_client.py"), FAR, "443", "far.allowed.test",
                              "other.test", "lost"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            self.assertEqual(p.stdout.readline().strip(), "sent")
            g.wait_for(lambda: len(g.events("first-flight-allowed", name="far.allowed.test", port="443")) > allowed,
                       what="the guard's verdict on the second ClientHello")
            out, _ = p.communicate("go\n", timeout=40)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.assertNotIn("hello other.test", out)
        self.assertEqual(len(g.events("first-flight-rejected", reason="conflict", addr=FAR)), before + 1, out)


class RawSocketPastTheGuard(unittest.TestCase):
    """CAP_NET_RAW (root in a guest, in host mode): segments the server never reads and
    acknowledgments it never sent. The guard takes confirmation from the server's own
    packets (its SYN-ACK says where the flight starts, its acknowledgment that it holds
    it), so neither allows anything."""

    def test_a_raw_client_hello_lost_past_the_guard_and_a_forged_acknowledgment_allow_nothing(self):
        g.wait_for(lambda: g.curl("http://far.allowed.test/") == (0, 200), timeout=20,
                   what="the far front end reachable and vouched")
        before = len(g.events("first-flight-rejected", reason="unsent_ack", addr=FAR))
        # conntrack marks an acknowledgment of data the server never sent invalid, and the
        # ruleset drops invalid packets on guarded ports; but not when it is liberal (which
        # some hosts set, Kubernetes' kube-proxy among them): the guard must hold either way.
        liberal = ("ip", "netns", "exec", g.VM, "sysctl", "-q", "-w", "net.netfilter.nf_conntrack_tcp_be_liberal=")
        g.sh(*liberal[:-1], liberal[-1] + "1")
        try:
            out = run(NET_RAW_ONLY, "raw_lost.py", g.workdir, FAR, os.path.join(g.workdir, "cert.pem"),
                      "far.allowed.test")
        finally:
            g.sh(*liberal[:-1], liberal[-1] + "0")
        self.assertNotIn("other.test", out.replace("error", ""), out)
        self.assertTrue(out.startswith("error"), out)
        # The record after the ClientHello acknowledges server data never sent: rejected (once
        # as early_data, a record before the server answered; the acknowledgment is checked
        # first now, since the ninth review's SYN cookies).
        self.assertEqual(len(g.events("first-flight-rejected", reason="unsent_ack", addr=FAR)), before + 1)

    def test_a_lost_fast_open_syn_cannot_make_the_next_syn_ack_confirm_its_flight(self):
        """The fifth review (of 87f6510): the SYN-ACK of the kernel's own SYN at the ISN just
        past a lost raw Fast Open SYN's data acknowledged exactly that data, and confirmed a
        flight the server never read; the socket then named other.test over HTTP and TLS 1.2
        ("hello other.test sni=other.test"). Fast Open SYNs are dropped now."""
        g.wait_for(lambda: g.curl("http://far.allowed.test/") == (0, 200), timeout=20,
                   what="the far front end reachable and vouched")
        for port, mode in ((80, "http"), (443, "tls")):
            with self.subTest(mode=mode):
                # Dropped by the ruleset, or by the guard when xt queued it first (the kernel's
                # own SYN, sent before, had the connection marked guarded already).
                dropped = lambda: g.tfo_drops() + len(g.events("first-flight-rejected", reason="tfo"))
                before = dropped()
                out = run(NET_RAW_ONLY, "tfo_rebase.py", FAR, str(port), mode, g.workdir,
                          os.path.join(g.workdir, "cert.pem"), "far.allowed.test", "other.test", "ttl1")
                self.assertNotIn("other.test", out.replace("error", ""), out)
                self.assertTrue(out.splitlines()[-1].startswith("error"), out)
                self.assertNotIn("no connect", out)  # the socket's own SYN got through: the attack ran
                self.assertEqual(dropped(), before + 1, out)  # the raw Fast Open SYN

    def test_an_urgent_pointer_on_a_raw_bare_ack_never_reaches_the_server(self):
        out = run(NET_RAW_ONLY, "raw_urgent_ack.py", g.workdir, g.SHARED, os.path.join(g.workdir, "cert.pem"),
                  "www.allowed.test")
        self.assertNotIn("other.test", out.replace("error", ""), out)
        # The ACK never left (the ruleset's drop); the server read the polyglot whole, which
        # is no ClientHello it takes.
        self.assertEqual(out.splitlines()[0], "dropped", out)
        self.assertTrue(out.splitlines()[-1].startswith("error"), out)


class PickedUpMidStream(unittest.TestCase):
    def test_a_first_flight_after_conntrack_forgot_the_idle_connection_is_dropped(self):
        """The seventh review (of 58a883e), unprivileged in-guest: a connection left idle until
        its conntrack entry is gone sends its ClientHello (naming other.test) with no SYN
        before it. conntrack picks it up as a new entry (nf_conntrack_tcp_loose) with no
        guarded mark: neither queued nor held back, it was accepted as going to a vouched
        address, and the front end answered for other.test. It is dropped now."""
        if not os.path.exists("/proc/net/nf_conntrack"):
            self.skipTest("no /proc/net/nf_conntrack: conntrack entries cannot be watched here")
        self.assertEqual(g.curl("http://www.allowed.test/"), (0, 200))
        timeout = ("ip", "netns", "exec", g.VM, "sysctl", "-q", "-n", "net.netfilter.nf_conntrack_tcp_timeout_established")
        old = g.sh(*timeout).stdout.strip()
        chain = lambda: g.in_vm("nft", "list", "chain", "inet", "dnsward", "guard_output").stdout
        before = g.pickup_drops(chain())
        # An established entry lives for a second, as if the connection had been idle for
        # days; only this test's connection is open meanwhile.
        g.sh(*timeout[:6], "-w", f"{timeout[-1]}=1")
        p = subprocess.Popen(["ip", "netns", "exec", g.VM, *NOBODY, "/usr/bin/python3",
                              os.path.join(g.workdir, "pickup.py"), g.workdir, g.SHARED,
                              os.path.join(g.workdir, "cert.pem")],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            try:
                port = p.stdout.readline().strip()
                self.assertTrue(port.isdigit(), port)
                self.assertTrue(g.conntrack_has(port, 443, g.VM), "the connection's entry, before it expires")
                g.wait_for(lambda: not g.conntrack_has(port, 443, g.VM), timeout=20,
                           what="the idle connection's conntrack entry gone")
            finally:
                g.sh(*timeout[:6], "-w", f"{timeout[-1]}={old}")
            out, _ = p.communicate("go\n", timeout=40)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        out = out.strip()
        self.assertNotIn("other.test", out.replace("error", ""), out)
        self.assertTrue(out.splitlines()[-1].startswith("error"), out)
        self.assertGreater(g.pickup_drops(chain()), before, out)  # the flight itself, and its retransmissions


class SynCookieServer(unittest.TestCase):
    """The ninth review's attacks through a front end's SYN cookies, with CAP_NET_RAW in-guest
    (e2e_host_sni_guard runs them from a guest's root). The VM's kernel's RSTs are dropped
    before dnsward's chains see them (priority -300, before conntrack's -200): an attacker
    without CAP_NET_ADMIN cannot, and its kernel's reset of the raw handshake marks the entry
    closed at once."""

    def setUp(self):
        self.here = os.path.dirname(os.path.abspath(__file__))

    def attack(self, script, *args):
        with g.syn_cookies(g.INET, ("ip", "netns", "exec", g.VM), g.SHARED, priority=-300):
            r = g.in_vm(*NET_RAW_ONLY, "/usr/bin/python3", os.path.join(self.here, script), "198.18.0.2", g.SHARED,
                        *args, check=False, timeout=60)
        return (r.stdout + r.stderr).strip()

    def test_a_syn_cookie_server_cannot_be_made_to_read_the_flight_from_further_in(self):
        """A raw SYN's cookie predicts the cookie of a SYN d further, and its ACK would open the
        front end's connection d bytes into a request for the allowed name, where one for
        other.test hides. The cookie's ACK with data, and alone."""
        for mode in ("data", "bare"):
            with self.subTest(mode=mode):
                rejected = lambda: sum(len(g.events("first-flight-rejected", reason=why, addr=g.SHARED))
                                       for why in ("conflict", "unsent_ack"))
                before = rejected()
                out = self.attack("cookie_shift_attack.py", "80", mode, "www.allowed.test", "other.test")
                self.assertNotIn("other.test", out, out)
                # (Sends after the reset fail locally: the ruleset rejects them, EPERM.)
                self.assertEqual(out.splitlines()[-1], "error reset", out)  # not "error no SYN-ACK": it ran
                self.assertEqual(rejected(), before + 1, out)

    def test_a_syn_cookie_cannot_open_a_connection_on_an_entry_allowed_for_another_name(self):
        """A cookie got for a handshake the guard rejected, a second handshake on the same ports
        allowed for www.allowed.test and ended by a raw reset, then the first cookie's ACK with
        a request for other.test on the entry still allowed. The reset marks the entry closed
        now: the request is reset, unread."""
        # http: the front end's FIN ends the connection; tls: it waits after its ServerHello,
        # and the client's reset alone ends it.
        for mode in ("http", "tls"):
            with self.subTest(mode=mode):
                out = self.attack("cookie_resurrect_attack.py", mode, "www.allowed.test", "other.test")
                self.assertNotIn("other.test", out, out)
                self.assertEqual(out.splitlines()[-1], "error reset", out)  # not an earlier step's error: it ran

    def test_a_new_handshake_with_the_same_numbers_does_not_ride_the_last_verdict(self):
        """The tenth review: an allowed connection ended by a raw reset, a SYN with the same ISN
        within dnsward's linger of the decided connection, the front end's same cookie, and a
        request for other.test: taken as the old connection's SYN-ACK sent again, the request
        passed on the old Allow, and the front end opened a connection from the cookie. The
        SYN-ACK of a decided connection starts a new one now, judged anew."""
        out = self.attack("cookie_linger_attack.py", "www.allowed.test", "other.test")
        self.assertNotIn("other.test", out, out)
        self.assertEqual(out.splitlines()[-1], "error reset", out)  # not an earlier step's error: it ran

    def test_a_new_handshake_dnsward_never_saw_does_not_ride_the_last_verdict(self):
        """The eleventh review: the same, but the new handshake never reaches dnsward (its SYN
        has a wrong checksum, which the server's side drops; its SYN-ACK is forged on lo,
        never queued): the request, queued, met the lingering Allow and passed. It gets no
        verdict bit now, and the ruleset's backstop drops it on the undecided entry."""
        g.sh("ip", "netns", "exec", g.INET, "nft", "-f", "-", input="table inet bad_checksum {\n chain pre {\n"
             "  type filter hook prerouting priority -400; policy accept;\n  tcp checksum 0xdead drop\n }\n}\n")
        try:
            out = self.attack("cookie_unseen_attack.py", "www.allowed.test", "other.test")
        finally:
            g.sh("ip", "netns", "exec", g.INET, "nft", "delete", "table", "inet", "bad_checksum", check=False)
        self.assertNotIn("other.test", out, out)
        self.assertEqual(out.splitlines()[-1], "error no answer", out)  # REQ1 was answered: the attack ran


# The allowed bit of the default --guard-marks (0x00200000 judged, 0x00400000 allowed,
# 0x00800000 rejected).
ALLOWED_BIT = 0x00400000

# CAP_NET_RAW (SO_MARK needs only that since Linux 5.17): the kernel's own socket opens the
# connection unmarked (its SYN marks it guarded), then sends its ClientHello naming other.test
# with the socket marked with the guard's allowed bit, and unmarks the socket at once. Before
# dnsward's verdict became NF_ACCEPT, on the xt backend the mangle chain's CONNMARK rules
# moved that mark into the conntrack mark (the nft ruleset's `socket mark` drop came later, in
# the filter chain, and dropped that one segment); the socket's retransmission, unmarked, then
# went out on a connection allowed for good. (A TCP socket's SO_MARK control message marks
# nothing: on this 6.18 kernel TCP takes only timestamping flags from sendmsg's cmsgs; a raw
# socket's or a UDP socket's does mark its datagram.)
MARKED_AFTER_CONNECT = FINISH + r"""
import socket, ssl, sys
addr, cafile, bit = sys.argv[1], sys.argv[2], int(sys.argv[3], 0)
ctx = ssl.create_default_context(cafile=cafile)
incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
tls = ctx.wrap_bio(incoming, outgoing, server_hostname="other.test")
try:
    tls.do_handshake()
except ssl.SSLWantReadError:
    pass
hello = outgoing.read()
s = socket.create_connection((addr, 443), timeout=5)
s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, bit)
s.sendall(hello)
s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, 0)
finish(s, tls, incoming, outgoing)
"""

# CAP_NET_RAW, the control message: the kernel's own socket opens the connection, then a raw
# socket sends one bare ACK on its ports whose packet mark (an SO_MARK control message)
# carries the guard's allowed bit; the socket then sends its ClientHello naming other.test.
# While dnsward's verdict was NF_REPEAT the mark rules (the mangle chain's CONNMARK on the xt
# backend, the output chain's on the nft one) moved that mark into the conntrack mark, and
# the ClientHello went out never queued. The ACK's numbers are made up: conntrack is made
# liberal for it (as some hosts run it), so that it is not dropped as invalid first.
RAW_MARKED = FINISH + CSUM + r"""
import socket, ssl, struct, sys
addr, cafile, bit = sys.argv[1], sys.argv[2], int(sys.argv[3], 0)
ctx = ssl.create_default_context(cafile=cafile)
incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
tls = ctx.wrap_bio(incoming, outgoing, server_hostname="other.test")
try:
    tls.do_handshake()
except ssl.SSLWantReadError:
    pass
hello = outgoing.read()
s = socket.create_connection((addr, 443), timeout=5)
src, sport = s.getsockname()
tcp = struct.pack("!HHIIBBHHH", sport, 443, 1, 1, 5 << 4, 0x10, 65535, 0, 0)
pseudo = socket.inet_aton(src) + socket.inet_aton(addr) + struct.pack("!BBH", 0, 6, len(tcp))
tcp = tcp[:16] + struct.pack("!H", csum(pseudo + tcp)) + tcp[18:]
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
raw.sendmsg([tcp], [(socket.SOL_SOCKET, socket.SO_MARK, struct.pack("I", bit))], 0, (addr, 0))
s.sendall(hello)
finish(s, tls, incoming, outgoing)
"""


def guard_output_counter(picks):
    """The packets counted by the first rule of guard_output whose text picks accepts; -1
    without such a rule (a ruleset of another layout: the assertions on what the attack
    reached come first, and say more)."""
    text = g.in_vm("nft", "list", "chain", "inet", "dnsward", "guard_output", check=False).stdout
    for line in text.splitlines():
        if picks(line):
            return int(re.search(r"counter packets (\d+)", line).group(1))
    return -1


def urgent_drops():
    """Urgent segments of undecided connections the ruleset dropped before the queue."""
    return guard_output_counter(lambda l: "tcp flags urg counter" in l)


def cleared_marks():
    """Packets the output hook's guard chain found carrying guard mark bits (and cleared)."""
    return guard_output_counter(lambda l: "meta mark set meta mark &" in l)


class MarkedSocket(unittest.TestCase):
    """A packet mark is its sender's to set with CAP_NET_RAW; the guard's verdict travels as a
    packet mark. Every packet's verdict bits are cleared before the queue, and only dnsward's
    verdict (NF_ACCEPT, on to the filter chain) carries them to the rules that read them."""

    def setUp(self):
        self.assertEqual(g.curl("http://www.allowed.test/"), (0, 200))
        for name, text in (("marked_after_connect.py", MARKED_AFTER_CONNECT), ("raw_marked.py", RAW_MARKED)):
            with open(os.path.join(g.workdir, name), "w") as f:
                f.write(text)

    def test_a_client_hello_marked_allowed_by_its_sender_is_judged_and_reset(self):
        before = len(g.events("sni-mismatch", name="other.test", port="443"))
        cleared = cleared_marks()
        out = run(NET_RAW_ONLY, "marked_after_connect.py", g.SHARED, os.path.join(g.workdir, "cert.pem"),
                  hex(ALLOWED_BIT))
        # The front end never read other.test (it would have answered naming it).
        self.assertNotIn("other.test", out.replace("error", ""), out)
        self.assertTrue(out.startswith("error"), out)
        # The forged mark was cleared before the queue, and the ClientHello judged.
        self.assertGreater(cleared_marks(), cleared, out)
        self.assertEqual(len(g.events("sni-mismatch", name="other.test", port="443")), before + 1, out)

    def test_a_raw_packet_marked_allowed_by_a_control_message_allows_nothing(self):
        before = len(g.events("sni-mismatch", name="other.test", port="443"))
        cleared = cleared_marks()
        liberal = ("ip", "netns", "exec", g.VM, "sysctl", "-q", "-w", "net.netfilter.nf_conntrack_tcp_be_liberal=")
        g.sh(*liberal[:-1], liberal[-1] + "1")
        try:
            out = run(NET_RAW_ONLY, "raw_marked.py", g.SHARED, os.path.join(g.workdir, "cert.pem"), hex(ALLOWED_BIT))
        finally:
            g.sh(*liberal[:-1], liberal[-1] + "0")
        self.assertNotIn("other.test", out.replace("error", ""), out)
        self.assertTrue(out.startswith("error"), out)
        self.assertGreater(cleared_marks(), cleared, out)  # the raw ACK's mark, cleared before the queue
        self.assertEqual(len(g.events("sni-mismatch", name="other.test", port="443")), before + 1, out)

    def test_a_socket_marked_with_the_allowed_bit_from_the_start_is_judged_too(self):
        """The third review: a socket marked with the allowed bit before it connects. Its
        packets' bits are cleared like any others', so its ClientHello is judged and reset."""
        before = len(g.events("sni-mismatch", name="other.test", port="443"))
        script = ("import socket, ssl\n"
                  "s = socket.socket()\n"
                  f"s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, {ALLOWED_BIT})\n"
                  "s.settimeout(5)\n"
                  "try:\n"
                  f"    s.connect(('{g.SHARED}', 443))\n"
                  "    ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE\n"
                  "    t = ctx.wrap_socket(s, server_hostname='other.test')\n"
                  "    t.sendall(b'GET / HTTP/1.1\\r\\nHost: other.test\\r\\nConnection: close\\r\\n\\r\\n')\n"
                  "    print(t.recv(4096).decode(errors='replace').strip().splitlines()[-1])\n"
                  "except OSError as e:\n"
                  "    print('error', type(e).__name__)\n")
        r = g.in_vm(*NET_RAW_ONLY, "/usr/bin/python3", "-c", script, check=False, timeout=30)
        out = (r.stdout + r.stderr).strip()
        self.assertNotIn("other.test", out.replace("error", ""), out)
        self.assertTrue(out.startswith("error"), out)
        self.assertEqual(len(g.events("sni-mismatch", name="other.test", port="443")), before + 1, out)


if __name__ == "__main__":
    unittest.main()
