"""Host mode, end to end: one dnsward in a "host" namespace (this test process unshares into
it) serves two guests, each in a namespace of its own behind a veth whose host end is a tap
(tap1, tap2). A "net" namespace beyond the host runs knot (198.18.0.53) and a TCP echo
server on every address of 198.18.0.0/19 (AnyIP), 2001:db8:1::/64 and 10.99.0.0/24. The
host loads the ruleset `dnsward nft-rules --host` prints, and forwards. Each guest has its
own policy: g1 the one.test names, g2 the two.test names, both of them both.test. Real
clients: dig (through `ip netns exec`) and Python sockets created in a thread that entered
the guest's namespace (setns), so that a connection can be held open across steps. Every
test gets a fresh dnsward (fresh cache, empty sets: the ruleset is loaded again first). No
sleeps: each step waits for the reply, the log line or the set it needs, or for a socket
timeout."""
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import unittest

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from harness import BIN, ede, enter_new_netns, free_port, require, terminate, wait_for, write_knot_config

TAG = f"{os.getpid() % 100000}"
NET = f"dwh{TAG}net"
DNS_IP = "198.18.0.53"


def guest_ns(n):
    return f"dwh{TAG}g{n}"


def guest4(n):
    return f"100.64.{n}.2"


def guest6(n):
    return f"fd64:{n}::2"


def tap4(n):
    return f"100.64.{n}.1"


ONE_A, ONE_A6, ONE_B, ONE_C, ONE_D = "198.18.1.1", "2001:db8:1::11", "198.18.1.2", "198.18.1.3", "198.18.1.4"
TWO_A, TWO_A6, TWO_B = "198.18.2.1", "2001:db8:1::21", "198.18.2.2"
BOTH = "198.18.3.1"
THREE = "198.18.5.1"
UNVOUCHED = "198.18.9.9"  # served in net, named by no zone entry

ZONE = """$ORIGIN test.
$TTL 300
@ SOA ns.test. hostmaster.test. 1 3600 600 86400 60
@ NS ns
ns A 198.18.0.53
one-a.one A 198.18.1.1
one-a.one AAAA 2001:db8:1::11
one-b.one A 198.18.1.2
one-c.one A 198.18.1.3
one-d.one A 198.18.1.4
two-a.two A 198.18.2.1
two-a.two AAAA 2001:db8:1::21
two-b.two A 198.18.2.2
both A 198.18.3.1
inner1 A 10.99.0.1
inner2 A 10.99.0.2
three A 198.18.5.1
""" + "".join(f"many.one A 198.18.4.{i}\n" for i in range(1, 41))

G1_ALLOW = """one-a.one.test
one-b.one.test
one-c.one.test
one-d.one.test
many.one.test
both.test
inner1.test private=yes why="an internal mirror, for g1 only"
inner2.test private=yes why="an internal mirror, for g1 only"
"""
G2_ALLOW = """two-a.two.test
two-b.two.test
both.test
inner1.test
inner2.test
"""

# In net: echo every line back, on TCP 80 and 853, IPv4 and IPv6, any local address.
ECHO_SERVER = """
import socket, threading
def echo(c):
    with c:
        c.settimeout(120)
        try:
            while True:
                d = c.recv(4096)
                if not d:
                    return
                c.sendall(d)
        except OSError:
            return
def serve(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    s.listen(128)
    while True:
        c, _ = s.accept()
        threading.Thread(target=echo, args=(c,), daemon=True).start()
for p in (80, 853):
    threading.Thread(target=serve, args=(p,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000
world = None


def sh(*cmd, check=True, input=None, timeout=30):
    r = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr}")
    return r


def in_ns(ns, fn, *args, timeout=30):
    """fn(*args) run in a thread that entered network namespace ns: the sockets it creates are
    the guest's (a socket keeps its namespace, so one returned can be used from here)."""
    out = {}

    def body():
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {ns}")
            finally:
                os.close(fd)
            out["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed back to the caller
            out["error"] = e

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"{fn.__name__} in {ns} did not finish in {timeout}s")
    if "error" in out:
        raise out["error"]
    return out["value"]


def open_conn(addr, port=80, timeout=2.0, source=None):
    """A TCP connection that echoed one line, or the outcome's name: refused (a reset),
    timeout (dropped), or the error's class."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        if source:
            s.bind((source, 0))
        s.connect((addr, port))
        s.sendall(b"hello\n")
        if s.recv(100) != b"hello\n":
            s.close()
            return "no echo"
        return s
    except ConnectionRefusedError:
        s.close()
        return "refused"
    except socket.timeout:
        s.close()
        return "timeout"
    except OSError as e:
        s.close()
        return type(e).__name__ + f" {e.errno}"


def connect(n, addr, port=80, timeout=2.0, source=None):
    """ok, or why guest n could not exchange a line with addr:port."""
    r = in_ns(guest_ns(n), open_conn, addr, port, timeout, source)
    if isinstance(r, socket.socket):
        r.close()
        return "ok"
    return r


def query(n, name, rdtype="A", server=None, tcp=False, timeout=2.0, source=None, rdclass="IN"):
    """A dnspython query from inside guest n (to its tap's address by default, port 53)."""
    server = server or tap4(n)
    q = dns.message.make_query(name, rdtype, rdclass, use_edns=0)
    fn = dns.query.tcp if tcp else dns.query.udp
    return in_ns(guest_ns(n), lambda: fn(q, server, port=53, timeout=timeout, source=source))


def dig(n, name, rdtype="A", server=None, tcp=False, extra=()):
    """dig in guest n: (status, [addresses], EDE code or None). server None: its tap."""
    cmd = ["ip", "netns", "exec", guest_ns(n), "dig", "+tries=1", "+time=2", name, rdtype]
    if server != "resolv.conf":
        cmd.append(f"@{server or tap4(n)}")
    if tcp:
        cmd.append("+tcp")
    r = sh(*cmd, *extra, check=False)
    m = re.search(r"status: ([A-Z]+)", r.stdout)
    if not m:
        return "no answer", [], None
    answers, in_answer = [], False
    for line in r.stdout.splitlines():
        if line.startswith(";; ANSWER SECTION"):
            in_answer = True
        elif in_answer and not line.strip():
            in_answer = False
        elif in_answer and not line.startswith(";"):
            f = line.split()
            if f[3] in ("A", "AAAA"):
                answers.append(f[4])
    code = re.search(r"; EDE: (\d+)", r.stdout)
    return m.group(1), sorted(answers), int(code.group(1)) if code else None


def ede_code(msg):
    """The first EDE's code, or None (a reply without one)."""
    e = ede(msg)
    return e[0] if e else None


def txt(msg):
    """The strings of a TXT answer, one per record."""
    return [b"".join(rd.strings).decode() for rrset in msg.answer for rd in rrset]


def addrs(msg):
    return sorted(x.address for rrset in msg.answer
                  if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA) for x in rrset)


def nft_elements(name):
    """The keys of a set of table inet dnsward: tuples for concatenations ({"concat": [...]}
    in `nft -j`), so (guest, destination) or (interface, guest)."""
    r = sh("nft", "-j", "list", "set", "inet", "dnsward", name)
    out = set()
    for item in json.loads(r.stdout)["nftables"]:
        for e in item.get("set", {}).get("elem", []):
            v = e["elem"]["val"] if isinstance(e, dict) and "elem" in e else e
            out.add(tuple(v["concat"]) if isinstance(v, dict) and "concat" in v else v)
    return out


def conntrack_lines(addr):
    """Conntrack entries of this (host) namespace with addr as a source or destination."""
    with open("/proc/net/nf_conntrack") as f:
        return [l for l in f if f"src={addr} " in l or f"dst={addr} " in l]


def ruleset_text(port):
    r = sh(BIN, "nft-rules", "--host", "--sandbox-ifaces", "tap*", "--listen", f"0.0.0.0:{port}",
           "--listen", f"[::]:{port}", "--upstream", f"{DNS_IP}:53", "--user", "root")
    return r.stdout


class World:
    """The namespaces, knot and the echo server, built once for the module."""

    def __init__(self):
        self.cleanups = []
        self.dir = tempfile.mkdtemp(prefix="dnsward-host-")
        self.cleanups.append(lambda: shutil.rmtree(self.dir, ignore_errors=True))
        self.procs = []
        self.port = free_port()

    def close(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception:  # noqa: BLE001 - clean up the rest
                pass

    def add_ns(self, name):
        sh("ip", "netns", "add", name)
        self.cleanups.append(lambda: sh("ip", "netns", "del", name, check=False))
        sh("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        # No duplicate address detection: addresses usable at once, nothing to wait for.
        for k in ("all", "default"):
            sh("ip", "netns", "exec", name, "sysctl", "-qw", f"net.ipv6.conf.{k}.accept_dad=0")

    def add_guest(self, n):
        """Guest n: namespace, veth tapN (host) <-> eth0 (guest), its two addresses."""
        ns = guest_ns(n)
        self.add_ns(ns)
        sh("ip", "link", "add", f"tap{n}", "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "addr", "add", f"{tap4(n)}/24", "dev", f"tap{n}")
        sh("ip", "-6", "addr", "add", f"fd64:{n}::1/64", "dev", f"tap{n}", "nodad")
        sh("ip", "link", "set", f"tap{n}", "up")
        g = ("ip", "netns", "exec", ns)
        sh(*g, "ip", "addr", "add", f"{guest4(n)}/24", "dev", "eth0")
        sh(*g, "ip", "-6", "addr", "add", f"{guest6(n)}/64", "dev", "eth0", "nodad")
        sh(*g, "ip", "link", "set", "eth0", "up")
        sh(*g, "ip", "route", "add", "default", "via", tap4(n))
        sh(*g, "ip", "-6", "route", "add", "default", "via", f"fd64:{n}::1")
        return ns

    def build(self):
        for k in ("all", "default"):
            sh("sysctl", "-qw", f"net.ipv6.conf.{k}.accept_dad=0")
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1")
        sh("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        for n in (1, 2):
            self.add_guest(n)
        # net: the internet beyond the host.
        self.add_ns(NET)
        sh("ip", "link", "add", "uplink", "type", "veth", "peer", "name", "eth0", "netns", NET)
        sh("ip", "addr", "add", "203.0.113.1/24", "dev", "uplink")
        sh("ip", "-6", "addr", "add", "2001:db8:ffff::1/64", "dev", "uplink", "nodad")
        sh("ip", "link", "set", "uplink", "up")
        n = ("ip", "netns", "exec", NET)
        sh(*n, "ip", "addr", "add", "203.0.113.2/24", "dev", "eth0")
        sh(*n, "ip", "-6", "addr", "add", "2001:db8:ffff::2/64", "dev", "eth0", "nodad")
        sh(*n, "ip", "link", "set", "eth0", "up")
        sh(*n, "ip", "route", "add", "default", "via", "203.0.113.1")
        sh(*n, "ip", "-6", "route", "add", "default", "via", "2001:db8:ffff::1")
        # AnyIP: every address of these ranges is net's own.
        sh(*n, "ip", "addr", "add", f"{DNS_IP}/32", "dev", "lo")
        sh(*n, "ip", "route", "add", "local", "198.18.0.0/19", "dev", "lo")
        sh(*n, "ip", "route", "add", "local", "10.99.0.0/24", "dev", "lo")
        sh(*n, "ip", "-6", "route", "add", "local", "2001:db8:1::/64", "dev", "lo")
        for dst in ("198.18.0.0/16", "10.99.0.0/24"):
            sh("ip", "route", "add", dst, "via", "203.0.113.2")
        sh("ip", "-6", "route", "add", "2001:db8:1::/64", "via", "2001:db8:ffff::2")

        kdir = os.path.join(self.dir, "knot")
        os.makedirs(kdir)
        conf = write_knot_config(kdir, ZONE, [f"{DNS_IP}@53"])
        self.knot_log = open(os.path.join(kdir, "knot.log"), "w")
        self.cleanups.append(self.knot_log.close)
        self.procs.append(subprocess.Popen(["ip", "netns", "exec", NET, "knotd", "-c", conf],
                                           stdout=self.knot_log, stderr=subprocess.STDOUT))
        echo = subprocess.Popen(["ip", "netns", "exec", NET, "/usr/bin/python3", "-c", ECHO_SERVER],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.procs.append(echo)
        self.assert_line(echo, "ready")
        q = dns.message.make_query("both.test.", "A")
        wait_for(lambda: dns.query.udp(q, DNS_IP, port=53, timeout=0.3).answer, what="knot answering")
        wait_for(lambda: self.host_echo(ONE_A), what="the echo server reachable from the host")

        self.g1_allow = os.path.join(self.dir, "g1.allow")
        self.g2_allow = os.path.join(self.dir, "g2.allow")
        # /etc/netns/NS/resolv.conf is what `ip netns exec NS` shows the guest as its
        # /etc/resolv.conf: g1 names the real upstream (knot) as its resolver.
        self.etc_netns_made = not os.path.isdir("/etc/netns")
        netns_etc = f"/etc/netns/{guest_ns(1)}"
        os.makedirs(netns_etc, exist_ok=True)
        self.cleanups.append(lambda: shutil.rmtree(netns_etc, ignore_errors=True))
        if self.etc_netns_made:
            self.cleanups.append(lambda: os.rmdir("/etc/netns") if not os.listdir("/etc/netns") else None)
        with open(os.path.join(netns_etc, "resolv.conf"), "w") as f:
            f.write(f"nameserver {DNS_IP}\n")
        self.ruleset = ruleset_text(self.port)

    @staticmethod
    def assert_line(proc, want):
        line = proc.stdout.readline().strip()  # the child prints it once listening, or dies (EOF)
        if line != want:
            raise RuntimeError(f"expected {want!r} from {proc.args}, got {line!r}")

    @staticmethod
    def host_echo(addr):
        with socket.create_connection((addr, 80), timeout=1) as s:
            s.sendall(b"x\n")
            return s.recv(10) == b"x\n"


def setUpModule():
    global world
    require("knotd", "nft", "ip", "dig", "sysctl")
    enter_new_netns()
    world = World()
    try:
        world.build()
    except BaseException:
        world.close()
        raise


def tearDownModule():
    world.close()


class Dnsward:
    """`dnsward serve --host` in the host namespace, its log in a file."""

    def __init__(self, extra=(), sandboxes=None):
        self.dir = tempfile.mkdtemp(prefix="dw-", dir=world.dir)
        self.control = os.path.join(self.dir, "control")
        self.extra = list(extra)
        self.sandboxes = sandboxes
        self.logpath = os.path.join(self.dir, "dnsward.log")
        self.log = open(self.logpath, "a")
        self.proc = None
        self.start()

    def start(self):
        args = [BIN, "serve", "--host", "--listen", f"0.0.0.0:{world.port}", "--listen",
                f"[::]:{world.port}", "--upstream", f"{DNS_IP}:53", "--control", self.control,
                "--user", "root", "--log-level", "debug", *self.extra]
        if self.sandboxes:
            args += ["--sandboxes", self.sandboxes]
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        q = dns.message.make_query("localhost.", "A")
        # From the host itself: no sandbox, so REFUSED; but answered, so serving.
        wait_for(lambda: self.proc.poll() is None
                 and dns.query.udp(q, "127.0.0.1", port=world.port, timeout=0.2)
                 and self.ctl("list")[0] == 0, what="dnsward serving and its control socket")

    def stop(self):
        """SIGTERM; returns the exit code."""
        return terminate(self.proc)

    def close(self):
        code = self.stop()
        self.log.close()
        return code

    def logtext(self):
        if not self.log.closed:
            self.log.flush()
        with open(self.logpath) as f:
            return f.read()

    def ctl(self, *args):
        """`dnsward ctl`: (exit code, the JSON reply or None, stdout)."""
        r = sh(BIN, "ctl", "--control", self.control, *args, check=False)
        try:
            reply = json.loads(r.stdout) if r.stdout.strip() else None
        except ValueError:
            reply = None
        return r.returncode, reply, r.stdout + r.stderr

    def raw(self, line):
        """One request line straight to the control socket: the reply's lines."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(self.control)
            s.sendall(line.encode() + b"\n")
            s.shutdown(socket.SHUT_WR)
            data = b""
            for _ in range(1000):  # bounded: the reply is one short line, then EOF
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        return data.decode().splitlines()

    def add(self, n, *args):
        allow = {1: world.g1_allow, 2: world.g2_allow}[n]
        code, reply, out = self.ctl("add", f"g{n}", "--addr", guest4(n), guest6(n), "--iface", f"tap{n}",
                                    "--allowlist", allow, "--no-default", *args)
        assert code == 0 and reply["ok"], out
        return reply

    def show(self, sid):
        code, reply, out = self.ctl("show", sid)
        assert code == 0, out
        return reply


class HostTest(unittest.TestCase):
    """A fresh ruleset and dnsward per test, g1 and g2 registered (unless REGISTER is off)."""

    EXTRA = ()
    REGISTER = True
    G2_MODE = ()

    def setUp(self):
        with open(world.g1_allow, "w") as f:
            f.write(G1_ALLOW)
        with open(world.g2_allow, "w") as f:
            f.write(G2_ALLOW)
        sh("nft", "-f", "-", input=world.ruleset)
        self.dw = Dnsward(self.EXTRA)
        self.addCleanup(self.close_dnsward)
        if self.REGISTER:
            self.dw.add(1)
            self.dw.add(2, *self.G2_MODE)
        self.log_mark = len(self.dw.logtext())

    def new_log(self):
        """What dnsward logged since setUp (start-up's probe from the host excluded)."""
        return self.dw.logtext()[self.log_mark:]

    def close_dnsward(self):
        self.assertEqual(self.dw.close(), 0, self.dw.logtext()[-3000:])

    def allowed4(self):
        return nft_elements("allowed4")

    def assert_resolves(self, n, name, want, rdtype="A", **kw):
        self.assertEqual(dig(n, name, rdtype, **kw), ("NOERROR", sorted(want), None), f"g{n} {name}")

    def assert_denied(self, n, name, **kw):
        self.assertEqual(dig(n, name, **kw), ("NXDOMAIN", [], 15), f"g{n} {name}")


class Isolation(HostTest):
    def test_each_guest_resolves_and_reaches_exactly_its_own_names(self):
        for name, want in (("one-a.one.test", [ONE_A]), ("one-b.one.test", [ONE_B]), ("both.test", [BOTH])):
            self.assert_resolves(1, name, want)
        self.assert_resolves(1, "one-a.one.test", [ONE_A6], "AAAA")
        for name, want in (("two-a.two.test", [TWO_A]), ("two-b.two.test", [TWO_B]), ("both.test", [BOTH])):
            self.assert_resolves(2, name, want)
        self.assert_resolves(2, "two-a.two.test", [TWO_A6], "AAAA")
        for name in ("two-a.two.test", "two-b.two.test"):
            self.assert_denied(1, name)
        for name in ("one-a.one.test", "one-b.one.test"):
            self.assert_denied(2, name)
        for addr in (ONE_A, ONE_B, BOTH, ONE_A6):
            self.assertEqual(connect(1, addr), "ok", addr)
        for addr in (TWO_A, TWO_B, BOTH, TWO_A6):
            self.assertEqual(connect(2, addr), "ok", addr)
        self.assertEqual(nft_elements("allowed6"), {(guest6(1), ONE_A6), (guest6(2), TWO_A6)})

    def test_a_lookup_of_the_other_guests_name_opens_nothing_and_its_addresses_stay_closed(self):
        self.assert_resolves(1, "one-a.one.test", [ONE_A])
        self.assertEqual(self.allowed4(), {(guest4(1), ONE_A)})
        self.assert_denied(1, "two-a.two.test")
        self.assertEqual(self.allowed4(), {(guest4(1), ONE_A)})  # the NXDOMAIN added nothing
        self.assertEqual(connect(1, TWO_A), "refused")
        self.assert_resolves(2, "two-a.two.test", [TWO_A])
        # The element's guest half is g2's address only: g1 gained nothing by g2's lookup.
        self.assertEqual(self.allowed4(), {(guest4(1), ONE_A), (guest4(2), TWO_A)})
        self.assertEqual(connect(1, TWO_A), "refused")
        self.assertEqual(connect(2, TWO_A), "ok")
        self.assertEqual(connect(2, ONE_A), "refused")
        shown = [(e["guest"], e["addr"]) for e in self.dw.show("g2")["elements"]]
        self.assertEqual(shown, [(guest4(2), TWO_A)])

    def test_the_shared_cache_never_hands_one_guests_private_answer_to_the_other(self):
        # inner1: g1 (private=yes) first, then g2 from the cache g1's lookup filled.
        self.assert_resolves(1, "inner1.test", ["10.99.0.1"])
        r = query(2, "inner1.test")
        self.assertEqual((addrs(r), r.rcode(), ede_code(r)), ([], dns.rcode.NOERROR, 15))
        # inner2: the other order.
        r = query(2, "inner2.test")
        self.assertEqual((addrs(r), r.rcode(), ede_code(r)), ([], dns.rcode.NOERROR, 15))
        self.assert_resolves(1, "inner2.test", ["10.99.0.2"])
        r = query(2, "inner2.test")  # and again after g1's answer
        self.assertEqual((r.rcode(), addrs(r)), (dns.rcode.NOERROR, []))
        self.assertEqual(self.allowed4(), {(guest4(1), "10.99.0.1"), (guest4(1), "10.99.0.2")})
        self.assertEqual(connect(1, "10.99.0.1"), "ok")  # the mirror, opened for g1 alone
        self.assertEqual(connect(2, "10.99.0.1"), "refused")
        # g1's answers were cached: its second asking is a hit, and still its own.
        hits = self.dw.show("g1")["counters"]["cache_hits"]
        self.assert_resolves(1, "inner1.test", ["10.99.0.1"])
        self.assertEqual(self.dw.show("g1")["counters"]["cache_hits"], hits + 1)
        # A name both may use: g2's hit on g1's cached answer is vouched for g2 alone.
        self.assert_resolves(1, "both.test", [BOTH])
        self.assertEqual(connect(2, BOTH), "refused")
        hits = self.dw.show("g2")["counters"]["cache_hits"]
        self.assert_resolves(2, "both.test", [BOTH])
        self.assertEqual(self.dw.show("g2")["counters"]["cache_hits"], hits + 1)
        self.assertEqual(connect(2, BOTH), "ok")
        self.assertEqual(self.allowed4(), {(guest4(1), "10.99.0.1"), (guest4(1), "10.99.0.2"),
                                           (guest4(1), BOTH), (guest4(2), BOTH)})


class Redirect(HostTest):
    def test_queries_to_any_resolver_land_at_dnsward_over_udp_and_tcp(self):
        for tcp in (False, True):
            self.assert_resolves(1, "one-a.one.test", [ONE_A], server="8.8.8.8", tcp=tcp)
            self.assert_denied(1, "two-a.two.test", server="8.8.8.8", tcp=tcp)
            self.assert_resolves(1, "one-a.one.test", [ONE_A6], "AAAA", server="2001:4860:4860::8888", tcp=tcp)
            self.assert_denied(1, "two-a.two.test", server="2001:4860:4860::8888", tcp=tcp)
            # Even the real upstream's own address: knot would have answered NOERROR.
            self.assert_denied(1, "two-a.two.test", server=DNS_IP, tcp=tcp)
        status = txt(query(1, "status.dnsward", "TXT", server="8.8.8.8", tcp=True, rdclass="CH"))
        self.assertEqual(status[0], "sandbox=g1")
        self.assertIn(f"policy={self.dw.show('g1')['policy']} entries=8", status)
        self.assertEqual(self.dw.show("g1")["counters"]["denied"], 6)
        self.assertNotIn("event=unknown-source", self.new_log())

    def test_dns_over_tls_to_a_vouched_address_is_dropped(self):
        self.assert_resolves(1, "one-a.one.test", [ONE_A])
        self.assertEqual(connect(1, ONE_A, 80), "ok")
        self.assertEqual(connect(1, ONE_A, 853, timeout=1.0), "timeout")

    def test_root_in_a_guest_flushing_its_ruleset_and_resolv_conf_widens_nothing(self):
        host_ruleset = ("nft", "--stateless", "--terse", "list", "ruleset")  # no counters, no elements
        before = sh(*host_ruleset).stdout
        self.assert_resolves(1, "one-a.one.test", [ONE_A])
        sh("ip", "netns", "exec", guest_ns(1), "nft", "flush", "ruleset")
        self.assertEqual(connect(1, UNVOUCHED), "refused")
        self.assertEqual(connect(1, TWO_A), "refused")
        # The guest's resolv.conf names knot itself: still dnsward's answers.
        self.assert_denied(1, "two-a.two.test", server="resolv.conf")
        self.assert_resolves(1, "one-b.one.test", [ONE_B], server="resolv.conf")
        self.assertEqual(self.allowed4(), {(guest4(1), ONE_A), (guest4(1), ONE_B)})
        # The host's ruleset is as it was.
        self.assertEqual(sh(*host_ruleset).stdout, before)


class Spoofing(HostTest):
    def test_a_guest_spoofing_the_other_guests_address_gets_nothing_through(self):
        self.assert_resolves(2, "two-a.two.test", [TWO_A])
        g = ("ip", "netns", "exec", guest_ns(1))
        sh(*g, "ip", "addr", "add", f"{guest4(2)}/32", "dev", "eth0")
        self.addCleanup(sh, *g, "ip", "addr", "del", f"{guest4(2)}/32", "dev", "eth0", check=False)
        queries = {sid: self.dw.show(sid)["counters"]["queries"] for sid in ("g1", "g2")}
        lines = len(self.dw.logtext().splitlines())
        for tcp in (False, True):
            with self.assertRaises((dns.exception.Timeout, socket.timeout, TimeoutError, OSError)):
                query(1, "two-a.two.test", source=guest4(2), tcp=tcp, timeout=1.0)
        self.assertEqual(connect(1, TWO_A, source=guest4(2), timeout=1.0), "timeout")
        # Not one of those reached dnsward: no query counted, no log line.
        self.assertEqual({sid: self.dw.show(sid)["counters"]["queries"] for sid in ("g1", "g2")}, queries)
        self.assertEqual(self.dw.logtext().splitlines()[lines:], [])
        self.assertEqual(self.allowed4(), {(guest4(2), TWO_A)})
        # The real g2 is untouched.
        self.assertEqual(connect(2, TWO_A), "ok")


class Registration(HostTest):
    def test_remove_cuts_a_guest_off_at_once_and_the_other_keeps_working(self):
        self.assert_resolves(1, "one-a.one.test", [ONE_A])
        self.assert_resolves(2, "two-a.two.test", [TWO_A])
        conn = in_ns(guest_ns(1), open_conn, ONE_A)
        self.assertIsInstance(conn, socket.socket, conn)
        self.addCleanup(conn.close)
        have_proc = os.path.exists("/proc/net/nf_conntrack")
        if have_proc:
            self.assertGreater(len(conntrack_lines(guest4(1))), 0)
        code, reply, out = self.dw.ctl("remove", "g1")
        self.assertEqual((code, reply["ok"]), (0, True), out)
        self.assertEqual(self.allowed4(), {(guest4(2), TWO_A)})
        self.assertEqual(nft_elements("allowed6"), set())
        self.assertEqual(nft_elements("sandboxes4"), {("tap2", guest4(2))})
        if have_proc:
            self.assertEqual(conntrack_lines(guest4(1)), [])
        conn.settimeout(1.0)
        conn.sendall(b"after remove\n")
        with self.assertRaises((socket.timeout, ConnectionError)):
            got = conn.recv(100)
            if not got:
                raise ConnectionError("closed")  # a close is cut off too
            self.fail(f"data passed after remove: {got!r}")
        self.assertEqual(dig(1, "one-a.one.test")[0], "no answer")
        self.assertEqual(connect(1, ONE_A, timeout=1.0), "timeout")
        self.assert_resolves(2, "two-b.two.test", [TWO_B])
        self.assertEqual(connect(2, TWO_A), "ok")
        self.assertEqual(connect(2, TWO_B), "ok")
        if not have_proc:
            self.skipTest("no /proc/net/nf_conntrack here: conntrack entries not counted")

    def test_a_third_guest_added_while_others_run_works_at_once(self):
        world.add_guest(3)
        self.addCleanup(sh, "ip", "netns", "del", guest_ns(3), check=False)  # and tap3 with it
        code, reply, out = self.dw.ctl("add", "g3", "--addr", guest4(3), "--iface", "tap3",
                                       "--allowlist-text", "three.test", "--no-default")
        self.assertEqual((code, reply["ok"]), (0, True), out)
        self.assert_resolves(3, "three.test", [THREE])
        self.assertEqual(connect(3, THREE), "ok")
        self.assert_denied(3, "one-a.one.test")
        self.assert_resolves(1, "one-a.one.test", [ONE_A])
        self.assertEqual(self.allowed4(), {(guest4(3), THREE), (guest4(1), ONE_A)})
        self.assertEqual({x["id"] for x in self.dw.ctl("list")[1]["sandboxes"]}, {"g1", "g2", "g3"})

    def test_bad_requests_get_a_one_line_error_and_change_nothing(self):
        before = self.dw.ctl("list")[1]
        pairs = nft_elements("sandboxes4")
        missing = os.path.join(world.dir, "no-such-dir", "x.allow")
        cases = [
            ('{"cmd":"frobnicate"}', "unknown cmd"),
            ('{"cmd":"add","id":"g9","addrs":["100.64.9.300"],"iface":"tap9","allowlist_text":"x.test\\n"}',
             "not an IPv4 or IPv6 address"),
            ('{"cmd":"add","id":"intruder","addrs":["100.64.1.2"],"iface":"tap9","allowlist_text":"x.test\\n"}',
             "registered to sandbox g1"),
            (json.dumps({"cmd": "add", "id": "g9", "addrs": ["100.64.9.2"], "iface": "tap9",
                         "allowlists": [missing]}), missing),
            # Another sandbox on g1's tap could send from g1's address past anti-spoofing.
            ('{"cmd":"add","id":"g9","addrs":["100.64.1.77"],"iface":"tap1","allowlist_text":"x.test\\n"}',
             "interface tap1 is registered to sandbox g1"),
            # An interface the host ruleset does not filter ('tap*').
            ('{"cmd":"add","id":"g9","addrs":["100.64.9.2"],"iface":"vm9","allowlist_text":"x.test\\n"}',
             "does not match --sandbox-ifaces"),
            # A device read until memory runs out would stall every sandbox's DNS.
            ('{"cmd":"add","id":"g9","addrs":["100.64.9.2"],"iface":"tap9","allowlists":["/dev/zero"]}',
             "/dev/zero: cannot read: not a file"),
        ]
        for line, fragment in cases:
            reply = self.dw.raw(line)
            self.assertEqual(len(reply), 1, reply)
            r = json.loads(reply[0])
            self.assertEqual(r["ok"], False, line)
            self.assertIn(fragment, r["error"], line)
        # The client says the same, as one line, exit 1.
        code, r, out = self.dw.ctl("add", "g9", "--addr", "100.64.9.2", "--iface", "tap9", "--allowlist", missing)
        self.assertEqual((code, r["ok"], len(out.strip().splitlines())), (1, False, 1), out)
        self.assertEqual(self.dw.ctl("list")[1], before)
        self.assertEqual(nft_elements("sandboxes4"), pairs)
        self.assertEqual(pairs, {("tap1", guest4(1)), ("tap2", guest4(2))})

    def test_sighup_revokes_per_guest_what_its_own_allowlist_dropped(self):
        for n, name, want in ((1, "one-a.one.test", ONE_A), (1, "both.test", BOTH),
                              (2, "both.test", BOTH), (2, "two-a.two.test", TWO_A)):
            self.assert_resolves(n, name, [want])
        self.assertEqual(self.allowed4(), {(guest4(1), ONE_A), (guest4(1), BOTH), (guest4(2), BOTH),
                                           (guest4(2), TWO_A)})
        with open(world.g1_allow, "w") as f:
            f.write(G1_ALLOW.replace("both.test\n", ""))
        reloads = self.dw.logtext().count("event=reload ")
        self.dw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: self.dw.logtext().count("event=reload ") > reloads, timeout=5, what="the reload")
        want = {(guest4(1), ONE_A), (guest4(2), BOTH), (guest4(2), TWO_A)}
        wait_for(lambda: self.allowed4() == want, timeout=5, what=f"allowed4 == {want}")
        self.assert_denied(1, "both.test")
        self.assert_resolves(2, "both.test", [BOTH])
        self.assertEqual(connect(1, BOTH), "refused")
        self.assertEqual(connect(2, BOTH), "ok")


class Persistence(HostTest):
    REGISTER = False

    def test_registrations_survive_a_restart_and_a_malformed_file_is_skipped_with_file_and_line(self):
        self.dw.close()
        sdir = tempfile.mkdtemp(prefix="sandboxes-", dir=world.dir)
        self.dw = Dnsward(sandboxes=sdir)
        self.dw.add(1)
        self.dw.add(2)
        self.assertEqual(sorted(os.listdir(sdir)), ["g1.sandbox", "g2.sandbox"])
        self.assertEqual(self.dw.stop(), 0)
        bad = os.path.join(sdir, "bad.sandbox")
        with open(bad, "w") as f:
            f.write("version = 1\nid = bad\nfrobnicate = yes\n")
        sh("nft", "-f", "-", input=world.ruleset)  # empty sets: the restart must refill them
        self.assertEqual(nft_elements("sandboxes4"), set())
        self.dw.start()
        self.assertIn(f"{bad}:3: unknown key", self.dw.logtext())
        self.assertEqual(sorted(x["id"] for x in self.dw.ctl("list")[1]["sandboxes"]), ["g1", "g2"])
        self.assert_resolves(1, "one-a.one.test", [ONE_A])
        self.assert_denied(1, "two-a.two.test")
        self.assert_resolves(2, "two-a.two.test", [TWO_A])
        self.assertEqual(connect(1, ONE_A), "ok")
        self.assertEqual(self.allowed4(), {(guest4(1), ONE_A), (guest4(2), TWO_A)})


class StaleState(HostTest):
    def test_a_restart_without_registrations_leaves_no_pair_element_or_flow_for_the_next_owner_of_the_address(self):
        self.assert_resolves(1, "one-a.one.test", [ONE_A])
        self.assertEqual(connect(1, ONE_A), "ok")
        self.assertEqual(self.dw.stop(), 0)
        # Started again without --sandboxes: nothing is registered, so nothing may stay open.
        self.dw.start()
        self.assertEqual(nft_elements("sandboxes4"), set())
        self.assertEqual(self.allowed4(), set())
        # The next sandbox on that tap and address, with another policy, inherits nothing.
        code, reply, out = self.dw.ctl("add", "next", "--addr", guest4(1), "--iface", "tap1",
                                       "--allowlist", world.g2_allow, "--no-default")
        self.assertEqual(code, 0, out)
        self.assertEqual(self.allowed4(), set())
        self.assertEqual(connect(1, ONE_A), "refused")
        self.assert_denied(1, "one-a.one.test")
        self.assert_resolves(1, "two-a.two.test", [TWO_A])
        self.assertIn("event=stale-sandboxes-forgotten", self.dw.logtext())

    def test_an_unknown_source_never_gets_formerr_or_notimp_only_refused_or_nothing(self):
        # qdcount 0 from the host (no sandbox): a known client would get FORMERR.
        msg = struct.pack("!HHHHHH", 0x1234, 0x0100, 0, 0, 0, 0)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as so:
            so.settimeout(1.0)
            so.sendto(msg, ("127.0.0.1", world.port))
            with self.assertRaises(socket.timeout):
                so.recv(512)
        wait_for(lambda: "event=unknown-source client=127.0.0.1" in self.new_log(), timeout=5,
                 what="the unknown-source line")


class Caps(HostTest):
    EXTRA = ("--sandbox-max-elements", "3")

    def test_a_sandbox_at_its_element_cap_gets_servfail_and_the_other_still_resolves(self):
        r = query(1, "many.one.test")  # 40 addresses: more than the cap, at once
        self.assertEqual((r.rcode(), addrs(r)), (dns.rcode.SERVFAIL, []))
        self.assertIn("--sandbox-max-elements", (ede(r) or (0, ""))[1])
        self.assertEqual(self.allowed4(), set())
        for name, want in (("one-a.one.test", ONE_A), ("one-b.one.test", ONE_B), ("one-c.one.test", ONE_C)):
            self.assert_resolves(1, name, [want])
        r = query(1, "one-d.one.test")  # the fourth
        self.assertEqual(r.rcode(), dns.rcode.SERVFAIL)
        self.assertEqual(connect(1, ONE_D), "refused")
        self.assert_resolves(2, "two-a.two.test", [TWO_A])
        self.assert_resolves(2, "both.test", [BOTH])
        self.assertEqual(connect(2, TWO_A), "ok")
        self.assertEqual(self.allowed4(), {(guest4(1), a) for a in (ONE_A, ONE_B, ONE_C)}
                         | {(guest4(2), TWO_A), (guest4(2), BOTH)})
        self.assertEqual(self.dw.show("g1")["counters"]["capped"], 2)
        self.assertEqual(self.dw.show("g2")["counters"]["capped"], 0)


class Logging(HostTest):
    def test_a_query_from_the_host_itself_is_refused_and_sandbox_lines_carry_their_id(self):
        for server in ("127.0.0.1", tap4(1)):
            q = dns.message.make_query("one-a.one.test.", "A", use_edns=0)
            r = dns.query.udp(q, server, port=world.port, timeout=2)
            self.assertEqual((r.rcode(), r.answer, ede_code(r)), (dns.rcode.REFUSED, [], 18))
        self.assertRegex(self.new_log(), r"event=unknown-source client=127\.0\.0\.1\S* claimed=- transport=udp")
        # g1's address, but from the host (lo), not through tap1: the arrival interface
        # (IP_PKTINFO) gives it away. (Sent with IP_TRANSPARENT; no reply can come back.)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_IP, 19, 1)  # IP_TRANSPARENT: send from an address not ours
            s.bind((guest4(1), 0))
            s.sendto(dns.message.make_query("one-a.one.test.", "A").to_wire(), ("127.0.0.1", world.port))
        wait_for(lambda: re.search(r"event=unknown-source client=100\.64\.1\.2:\d+ claimed=g1 transport=udp "
                                   r'msg="it came in on another interface', self.new_log()),
                 timeout=5, what="the unknown-source line for g1's address on lo")
        self.assertEqual(self.dw.show("g1")["counters"]["queries"], 0)
        self.assertEqual(self.allowed4(), set())
        lines = len(self.dw.logtext().splitlines())
        self.assert_resolves(1, "one-a.one.test", [ONE_A])
        new = self.dw.logtext().splitlines()[lines:]
        forwards = [l for l in new if "event=forward " in l]
        self.assertEqual(len(forwards), 1, new)
        self.assertIn("sandbox=g1", forwards[0])
        per_query = [l for l in new if "name=" in l]
        self.assertTrue(per_query)
        self.assertTrue(all("sandbox=g1" in l for l in per_query), per_query)
        # why. answers with the asking sandbox's own policy.
        why = txt(query(2, "why.two-a.two.test", "TXT", rdclass="CH"))
        self.assertEqual(why[0], f"two-a.two.test: allowed by 'two-a.two.test' at {world.g2_allow}:1")
        self.assertEqual(why[-1], f"policy {self.dw.show('g2')['policy']}")
        why = txt(query(1, "why.two-a.two.test", "TXT", rdclass="CH"))
        self.assertTrue(why[0].startswith("two-a.two.test: denied (NXDOMAIN)"), why)
        self.assertEqual(why[-1], f"policy {self.dw.show('g1')['policy']}")


class Audit(HostTest):
    G2_MODE = ("--mode", "audit")

    def test_audit_mode_is_per_sandbox(self):
        # g2 audits: a name its policy would deny is forwarded and vouched, for g2 only.
        self.assert_resolves(2, "one-b.one.test", [ONE_B])
        self.assertEqual(connect(2, ONE_B), "ok")
        self.assertRegex(self.dw.logtext(), r"would-deny.*sandbox=g2|sandbox=g2.*would-deny")
        # g1 enforces.
        self.assert_denied(1, "two-b.two.test")
        self.assertEqual(connect(1, TWO_B), "refused")
        self.assertEqual(self.allowed4(), {(guest4(2), ONE_B)})
        self.assertEqual(self.dw.show("g2")["mode"], "audit")
        self.assertEqual(self.dw.show("g1")["mode"], "enforce")


if __name__ == "__main__":
    unittest.main()
