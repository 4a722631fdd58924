"""The first-flight guard in host mode (`serve --host --sni-guard`), end to end: one dnsward in
a "host" namespace (this test process unshares into it) serves two sandboxes, A and B, each in
a namespace of its own behind a veth whose host end is a tap (tap1, tap2). A "net" namespace
beyond the host runs knot (198.18.0.53) and a TLS and plain HTTP front end answering a.test
and b.test on ONE address (test/data/tls_front.py, a shared CDN front end). A's allowlist has
a.test, B's b.test. The host loads `nft-rules --host --sni-guard` (and, where the kernel's
nftables has no queue expression, as on these machines' 6.18, the xt queue that
`--print iptables` prints, hooked into FORWARD). What it proves: a name bound for sandbox A
does not let sandbox B use it, though both vouched the same address. Real clients (dig, curl)
run in the guests through `ip netns exec`. No sleeps: each step waits for the reply or the
log line it needs, with a deadline."""
import os
import re
import shutil
import subprocess
import tempfile
import unittest

import dns.message
import dns.query

from harness import conntrack_has, fast_open_drops, pickup_drops, syn_cookies, BIN, clean_env, enter_new_netns, free_port, queue_backend, require, sh, terminate, wait_for, write_knot_config

TAG = f"{os.getpid() % 100000}"
NET = f"dwg{TAG}net"
DNS_IP = "198.18.0.53"
SHARED = "198.18.1.1"  # the front end a.test and b.test share
FRONT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "tls_front.py")

ZONE = """$ORIGIN test.
$TTL 300
@ SOA ns.test. hostmaster.test. 1 3600 600 86400 60
@ NS ns
ns A 198.18.0.53
a A 198.18.1.1
b A 198.18.1.1
"""
SANDBOXES = {"A": 1, "B": 2}  # id: its tap's number
ALLOW = {"A": "a.test\n", "B": "b.test\n"}

world = None


def guest_ns(sid):
    return f"dwg{TAG}{sid.lower()}"


def guest4(sid):
    return f"100.64.{SANDBOXES[sid]}.2"


def tap4(sid):
    return f"100.64.{SANDBOXES[sid]}.1"



class World:
    """The namespaces, knot, the front end, the host ruleset and dnsward, for the module."""

    def __init__(self, backend):
        self.backend = backend
        self.cleanups = []
        self.procs = []
        self.dir = tempfile.mkdtemp(prefix="dnsward-hostguard-")
        self.cleanups.append(lambda: shutil.rmtree(self.dir, ignore_errors=True))
        self.port = free_port()
        self.control = os.path.join(self.dir, "control")
        self.dnsward = None

    def close(self):
        for p in reversed(self.procs):
            terminate(p)
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception:  # noqa: BLE001 - clean up the rest
                pass

    def add_ns(self, name):
        sh("ip", "netns", "add", name)
        self.cleanups.append(lambda: sh("ip", "netns", "del", name, check=False))
        sh("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")

    def start(self, ns, *cmd, log):
        p = subprocess.Popen(["ip", "netns", "exec", ns, *cmd] if ns else list(cmd), stdout=log,
                             stderr=subprocess.STDOUT, env=clean_env())
        self.procs.append(p)
        return p

    def rules(self, *extra):
        return sh(BIN, "nft-rules", "--host", "--sandbox-ifaces", "tap*", "--listen", f"0.0.0.0:{self.port}",
                  "--listen", f"[::]:{self.port}", "--queue-backend", self.backend, *extra).stdout

    def build(self):
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1")
        # The host sends no ICMP time exceeded (many routers do not): a guest's SYN sent with an
        # IP TTL of 1 dies here silently, and its socket keeps trying (the Fast Open attack).
        sh("nft", "-f", "-", input="table inet quiet {\n chain out {\n  type filter hook output priority 0; policy accept;\n  icmp type time-exceeded drop\n }\n}\n")
        for sid, n in SANDBOXES.items():
            ns = guest_ns(sid)
            self.add_ns(ns)
            sh("ip", "link", "add", f"tap{n}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "addr", "add", f"{tap4(sid)}/24", "dev", f"tap{n}")
            sh("ip", "link", "set", f"tap{n}", "mtu", "1500", "up")
            g = ("ip", "netns", "exec", ns)
            sh(*g, "ip", "addr", "add", f"{guest4(sid)}/24", "dev", "eth0")
            sh(*g, "ip", "link", "set", "eth0", "mtu", "1500", "up")
            sh(*g, "ip", "route", "add", "default", "via", tap4(sid))
        # net: the internet beyond the host, with knot and the shared front end.
        self.add_ns(NET)
        sh("ip", "link", "add", "uplink", "type", "veth", "peer", "name", "eth0", "netns", NET)
        sh("ip", "addr", "add", "203.0.113.1/24", "dev", "uplink")
        sh("ip", "link", "set", "uplink", "up")
        n = ("ip", "netns", "exec", NET)
        sh(*n, "ip", "addr", "add", "203.0.113.2/24", "dev", "eth0")
        sh(*n, "ip", "link", "set", "eth0", "up")
        sh(*n, "ip", "route", "add", "default", "via", "203.0.113.1")
        for a in (DNS_IP, SHARED):
            sh(*n, "ip", "addr", "add", f"{a}/32", "dev", "lo")
        sh("ip", "route", "add", "198.18.0.0/16", "via", "203.0.113.2")

        self.cert, key = os.path.join(self.dir, "cert.pem"), os.path.join(self.dir, "key.pem")
        sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
           "-keyout", key, "-out", self.cert, "-days", "2", "-subj", "/CN=a.test",
           "-addext", "subjectAltName=DNS:a.test,DNS:b.test")
        self.servers_log = open(os.path.join(self.dir, "servers.log"), "w")
        self.cleanups.append(self.servers_log.close)
        kdir = os.path.join(self.dir, "knot")
        os.makedirs(kdir)
        self.start(NET, "knotd", "-c", write_knot_config(kdir, ZONE, [f"{DNS_IP}@53"]), log=self.servers_log)
        self.start(NET, "/usr/bin/python3", FRONT, self.cert, key, "--plain", log=self.servers_log)
        q = dns.message.make_query("a.test.", "A")
        wait_for(lambda: dns.query.udp(q, DNS_IP, port=53, timeout=0.3).answer, what="knot answering")
        wait_for(lambda: sh("curl", "-s", "--noproxy", "*", f"http://{SHARED}/", check=False).returncode == 0,
                 timeout=20, what="the front end answering")

        # The host ruleset with the guard, and its queue where nftables has none.
        sh("nft", "-f", "-", input=self.rules("--sni-guard"))
        if self.backend == "xt":
            for tool in ("iptables", "ip6tables"):
                xt = self.rules("--sni-guard", "--print", tool)
                sh(f"{tool}-nft-restore", "--noflush", input=xt)

        for sid in SANDBOXES:
            with open(os.path.join(self.dir, f"{sid}.allow"), "w") as f:
                f.write(ALLOW[sid])
        self.log_path = os.path.join(self.dir, "dnsward.log")
        self.dnsward_log = open(self.log_path, "a")
        self.cleanups.append(self.dnsward_log.close)
        self.dnsward = self.start(None, BIN, "serve", "--host", "--sni-guard", "--queue-backend", self.backend,
                                  "--listen", f"0.0.0.0:{self.port}", "--listen", f"[::]:{self.port}",
                                  "--upstream", f"{DNS_IP}:53", "--control", self.control, "--user", "root",
                                  "--require-ruleset", "--log-level", "debug", log=self.dnsward_log)
        wait_for(lambda: self.dnsward.poll() is None and self.ctl("list").returncode == 0, timeout=20,
                 what="dnsward's control socket")
        for sid, n in SANDBOXES.items():
            r = self.ctl("add", sid, "--addr", guest4(sid), "--iface", f"tap{n}", "--allowlist",
                         os.path.join(self.dir, f"{sid}.allow"), "--no-default")
            if r.returncode != 0 or '"ok":true' not in r.stdout.replace(" ", ""):
                raise RuntimeError(f"ctl add {sid}: {r.stdout} {r.stderr}")

    def ctl(self, *args):
        return sh(BIN, "ctl", "--control", self.control, *args, check=False)

    def log(self):
        self.dnsward_log.flush()
        with open(self.log_path) as f:
            return f.read()


def setUpModule():
    global world
    require("knotd", "nft", "ip", "dig", "curl", "openssl", "sysctl")
    enter_new_netns()
    backend = queue_backend(f"dwg{TAG}probe", "forward")
    if backend is None:
        raise unittest.SkipTest("cannot run here: this kernel queues with neither nft_queue nor xt NFQUEUE "
                                "(iptables-nft)")
    world = World(backend)
    try:
        world.build()
    except BaseException:
        world.close()
        raise


def tearDownModule():
    world.close()


def in_guest(sid, *cmd, **kw):
    return sh("ip", "netns", "exec", guest_ns(sid), *cmd, check=False, **kw)


def dig(sid, name, rdtype="A", rdclass="IN"):
    """The answer's lines (+short) from sandbox sid's resolver (its tap; redirected to dnsward)."""
    r = in_guest(sid, "dig", "+short", "+tries=1", "+time=2", f"@{tap4(sid)}", name, rdtype, "-c", rdclass)
    return r.stdout.split("\n")


def curl(sid, *args):
    """(curl's exit code, the body or None) of curl in sandbox sid."""
    r = in_guest(sid, "curl", "-s", "--max-time", "5", "--noproxy", "*", "--cacert", world.cert, *args)
    return r.returncode, (r.stdout if r.returncode == 0 else None)


def tfo_drops():
    """Packets the guard_forward chain's Fast Open rule dropped (a SYN with payload on a guarded
    port), before the queue."""
    return fast_open_drops(sh("nft", "list", "chain", "inet", "dnsward", "guard_forward").stdout)


def events(kind, **fields):
    """Log lines of event=kind whose fields include every one given (values as logged)."""
    out = []
    for line in world.log().splitlines():
        if f"event={kind} " not in line + " ":
            continue
        if all(re.search(rf"\b{k}={re.escape(v)}(\s|$)", line) for k, v in fields.items()):
            out.append(line)
    return out


def pairs():
    """The (guest, destination) pairs in allowed4."""
    r = sh("nft", "-j", "list", "set", "inet", "dnsward", "allowed4")
    return set(re.findall(r'"concat": \[\s*"([0-9.]+)",\s*"([0-9.]+)"\s*\]', r.stdout))


class HostSniGuard(unittest.TestCase):
    def setUp(self):
        # Every test starts with both names resolved, each by its own sandbox: a.test binds
        # (A . SHARED), b.test (B . SHARED). The same address is vouched for both guests.
        self.assertEqual(dig("A", "a.test"), [SHARED, ""])
        self.assertEqual(dig("B", "b.test"), [SHARED, ""])
        self.assertLessEqual({(guest4("A"), SHARED), (guest4("B"), SHARED)}, pairs())

    def test_sandbox_a_reaches_the_name_it_resolved(self):
        self.assertEqual(curl("A", "--resolve", f"a.test:443:{SHARED}", "https://a.test/"),
                         (0, "hello a.test sni=a.test\n"))
        self.assertTrue(events("first-flight-allowed", name="a.test", addr=SHARED, port="443", src=guest4("A"),
                               sandbox="A"))
        self.assertEqual(curl("A", "-H", "Host: a.test", f"http://{SHARED}/"), (0, "hello a.test sni=-\n"))

    def test_a_name_bound_for_sandbox_a_does_not_let_sandbox_b_use_it(self):
        mismatch = dict(name="a.test", addr=SHARED, port="443", src=guest4("B"), sandbox="B")
        before = len(events("sni-mismatch", **mismatch))
        code, body = curl("B", "--resolve", f"a.test:443:{SHARED}", "https://a.test/")
        self.assertIsNone(body)
        self.assertIn(code, (35, 56), "curl should see the connection reset during the handshake")
        lines = events("sni-mismatch", **mismatch)
        self.assertEqual(len(lines), before + 1, world.log()[-2000:])
        # The names bound to (B . SHARED): B's own, never the one A resolved.
        self.assertEqual(re.search(r"bound=(\S+)", lines[-1]).group(1), "b.test")
        # A still reaches it: the reset was B's alone.
        self.assertEqual(curl("A", "--resolve", f"a.test:443:{SHARED}", "https://a.test/")[0], 0)

    def test_plain_http_naming_sandbox_a_s_host_from_sandbox_b_is_reset(self):
        code, body = curl("B", "-H", "Host: a.test", f"http://{SHARED}/")
        self.assertIsNone(body)
        self.assertEqual(code, 56, "curl should see the connection reset")
        self.assertTrue(events("sni-mismatch", name="a.test", port="80", src=guest4("B"), sandbox="B"))

    def test_a_guest_s_root_cannot_make_a_lost_fast_open_syn_confirm_a_flight(self):
        """The fifth review (of 87f6510), from a guest's root: a raw Fast Open SYN naming b.test
        with a TCP MD5 option (the front end, which has no key, discards it), then the
        socket's own SYN at the ISN just past its data; the SYN-ACK acknowledged exactly that
        data and the host guard confirmed it, and B reached a.test ("hello a.test sni=-").
        Fast Open SYNs are dropped now."""
        here = os.path.dirname(os.path.abspath(__file__))
        # Dropped by the ruleset, or by the guard when xt queued it first (the kernel's own SYN,
        # sent before, had the connection marked guarded already).
        dropped = lambda: tfo_drops() + len(events("first-flight-rejected", reason="tfo"))
        before = dropped()
        r = in_guest("B", "/usr/bin/python3", os.path.join(here, "tfo_rebase_attack.py"), SHARED, "80", "http",
                     here, world.cert, "b.test", "a.test", "md5", timeout=40)
        out = (r.stdout + r.stderr).strip()
        self.assertNotIn("hello a.test", out)
        self.assertTrue(out.splitlines()[-1].startswith("error"), out)
        self.assertNotIn("no connect", out)  # the socket's own SYN got through: the attack ran
        self.assertEqual(dropped(), before + 1, out)  # the raw Fast Open SYN

    def test_a_flight_after_the_host_forgot_the_idle_connection_is_dropped(self):
        """The seventh review (of 58a883e): a guest's connection left idle until the host's
        conntrack entry is gone (a guest's root can end it sooner: a raw reset with an IP TTL
        of 1, which the front end never sees) sends its request with no SYN before it. The
        host's conntrack picks it up mid-stream (nf_conntrack_tcp_loose) as a new entry that
        no SYN rule marked guarded, and it was forwarded as going to a vouched pair: A asked
        for b.test. It is dropped now."""
        if not os.path.exists("/proc/net/nf_conntrack"):
            self.skipTest("no /proc/net/nf_conntrack: conntrack entries cannot be watched here")
        script = ("import socket, sys\n"
                  f"s = socket.create_connection(('{SHARED}', 80), timeout=5)\n"
                  "print(s.getsockname()[1], flush=True)\n"
                  "if sys.stdin.readline().strip() != 'go':\n"
                  "    sys.exit(1)\n"
                  "s.sendall(b'GET / HTTP/1.1\\r\\nHost: b.test\\r\\nConnection: close\\r\\n\\r\\n')\n"
                  "r = b''\n"
                  "try:\n"
                  "    while True:\n"
                  "        d = s.recv(65536)\n"
                  "        if not d:\n"
                  "            break\n"
                  "        r += d\n"
                  "    print(r.decode(errors='replace').strip().splitlines()[-1] if r else 'error empty')\n"
                  "except OSError as e:\n"
                  "    print('error', type(e).__name__)\n")
        key = "net.netfilter.nf_conntrack_tcp_timeout_established"
        old = sh("sysctl", "-q", "-n", key).stdout.strip()
        chain = lambda: sh("nft", "list", "chain", "inet", "dnsward", "guard_forward").stdout
        before = pickup_drops(chain())
        # The host's established entries live for a second, as if the connection had been
        # idle for days; only this test's connection is open meanwhile.
        sh("sysctl", "-q", "-w", f"{key}=1")
        p = subprocess.Popen(["ip", "netns", "exec", guest_ns("A"), "/usr/bin/python3", "-c", script],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            try:
                port = p.stdout.readline().strip()
                self.assertTrue(port.isdigit(), port)
                self.assertTrue(conntrack_has(port, 80), "the connection's host entry, before it expires")
                wait_for(lambda: not conntrack_has(port, 80), timeout=20,
                         what="the idle connection's host conntrack entry gone")
            finally:
                sh("sysctl", "-q", "-w", f"{key}={old}")
            out, _ = p.communicate("go\n", timeout=40)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        out = out.strip()
        self.assertNotIn("b.test", out, out)
        self.assertTrue(out.startswith("error"), out)
        self.assertGreater(pickup_drops(chain()), before, out)  # the request, and its retransmissions

    def test_a_guest_s_root_cannot_have_a_syn_cookie_server_read_the_flight_from_further_in(self):
        """The ninth review (of 357ab82): with the front end sending SYN cookies (as a SYN flood
        makes any server do; here always, tcp_syncookies=2), B's root had it open its
        connection d bytes into a request for b.test, at a cookie predicted from the one the
        guard saw, and read a request for a.test hidden there ("hello a.test sni=-"); the
        cookie's ACK came with data, or alone. A second SYN-ACK with another ISN now rejects
        the connection, and the guard takes only acknowledgments of server bytes it saw sent
        and server packets that continue the stream it saw start."""
        here = os.path.dirname(os.path.abspath(__file__))
        for mode in ("data", "bare"):
            with self.subTest(mode=mode):
                # The first of the cookie's SYN-ACK (conflict) and the ACK of it (unsent_ack) to
                # reach the guard rejects the connection; the other meets the reset.
                rejected = lambda: sum(len(events("first-flight-rejected", reason=why, sandbox="B"))
                                       for why in ("conflict", "unsent_ack"))
                before = rejected()
                with syn_cookies(NET, ("ip", "netns", "exec", guest_ns("B")), SHARED):
                    r = in_guest("B", "/usr/bin/python3", os.path.join(here, "cookie_shift_attack.py"), guest4("B"),
                                 SHARED, "80", mode, "b.test", "a.test", timeout=40)
                out = (r.stdout + r.stderr).strip()
                self.assertNotIn("a.test", out, out)
                self.assertNotIn("no SYN-ACK", out)  # the attack ran
                self.assertTrue(out.startswith("error reset"), out)
                self.assertEqual(rejected(), before + 1, out)

    def test_a_syn_cookie_cannot_open_a_connection_on_an_entry_allowed_for_another_name(self):
        """The ninth review (of 357ab82), from B's root, against a front end sending SYN
        cookies: a cookie got for one handshake (rejected), a second handshake on the same
        ports allowed for b.test, that connection ended by a raw reset, and
        the first cookie's ACK with a request for a.test on the entry still allowed: the
        front end opened a connection from the cookie and answered ("hello a.test sni=-"). A
        connection's end in either direction (a reset; the server's FIN) now marks its entry
        closed: the client's data after it is reset."""
        here = os.path.dirname(os.path.abspath(__file__))
        # http: the front end's FIN ends the connection; tls: it waits after its ServerHello,
        # and the guest's reset alone ends it.
        for mode in ("http", "tls"):
            with self.subTest(mode=mode):
                with syn_cookies(NET, ("ip", "netns", "exec", guest_ns("B")), SHARED):
                    r = in_guest("B", "/usr/bin/python3", os.path.join(here, "cookie_resurrect_attack.py"), guest4("B"),
                                 SHARED, mode, "b.test", "a.test", timeout=60)
                out = (r.stdout + r.stderr).strip()
                self.assertNotIn("a.test", out, out)
                self.assertEqual(out, "error reset")  # and not an earlier step's error: the attack ran

    def test_a_new_handshake_with_the_same_numbers_does_not_ride_the_last_verdict(self):
        """The tenth review (of 0fcd89b), from B's root, against a front end sending SYN
        cookies: a connection allowed for b.test and ended by a raw reset, a SYN with the same
        ISN within dnsward's linger, the same cookie back, and a request for a.test, which
        passed on the old Allow ("hello a.test sni=-"). Judged anew now."""
        here = os.path.dirname(os.path.abspath(__file__))
        with syn_cookies(NET, ("ip", "netns", "exec", guest_ns("B")), SHARED):
            r = in_guest("B", "/usr/bin/python3", os.path.join(here, "cookie_linger_attack.py"), guest4("B"), SHARED,
                         "b.test", "a.test", timeout=60)
        out = (r.stdout + r.stderr).strip()
        self.assertNotIn("a.test", out, out)
        self.assertEqual(out, "error reset")  # and not an earlier step's error: the attack ran

    def test_sandbox_b_reaches_its_own_name_on_the_same_address(self):
        self.assertEqual(curl("B", "--resolve", f"b.test:443:{SHARED}", "https://b.test/"),
                         (0, "hello b.test sni=b.test\n"))
        self.assertEqual(curl("B", "-H", "Host: b.test", f"http://{SHARED}/"), (0, "hello b.test sni=-\n"))

    def test_quic_to_a_vouched_pair_is_rejected(self):
        r = in_guest("B", "/usr/bin/python3", "-c",
                     "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
                     f"s.connect(('{SHARED}', 443)); s.send(b'x'*1200); s.settimeout(2)\n"
                     "try:\n s.recv(10); print('answered')\nexcept OSError as e:\n print('refused', e.errno)")
        self.assertIn("refused 111", r.stdout)  # ECONNREFUSED: forward's reject, an ICMP port unreachable

    def test_the_status_answer_says_the_guarded_host_ruleset_is_in_force(self):
        txt = " ".join(dig("A", "status.dnsward", "TXT", "CH"))
        self.assertIn('"ruleset=in-force"', txt)

    def test_zzz_a_host_ruleset_printed_without_the_guard_is_not_in_force(self):
        # serve runs with --sni-guard: the host ruleset without the guard's rules would forward
        # connections on guarded ports unjudged. The judge tells by the forward chain's mark.
        out, back = len(events("ruleset-not-in-force")), len(events("ruleset-in-force"))
        try:
            sh("nft", "-f", "-", input=world.rules())
            wait_for(lambda: any("printed without --sni-guard" in l for l in events("ruleset-not-in-force")[out:]),
                     what="the unguarded ruleset judged not in force, for that reason")
            # The guest asks once its pair is back in the reloaded table (dnsward restores it).
            wait_for(lambda: '"ruleset=not-in-force"' in " ".join(dig("A", "status.dnsward", "TXT", "CH")),
                     what="sandbox A told the ruleset is not in force")
        finally:
            sh("nft", "-f", "-", input=world.rules("--sni-guard"))
            wait_for(lambda: len(events("ruleset-in-force")) > back, what="the guarded ruleset in force again")
        # dnsward puts the sandboxes' pairs back into the reloaded table.
        wait_for(lambda: 'status: NOERROR' in in_guest("A", "dig", "+tries=1", "+time=1", f"@{tap4('A')}",
                                                        "a.test").stdout,
                 what="sandbox A answered again")

    def test_zz_the_backstop_never_had_to_drop_anything(self):
        # The rules after the queue drop payload to a vouched pair on a connection nothing
        # judged: a count here means the queue passed something unjudged.
        chain = sh("nft", "list", "chain", "inet", "dnsward", "forward").stdout
        backstops = [l for l in chain.splitlines()
                     if "@ih,0,8" in l and "meta mark" in l and l.split(" comment")[0].rstrip().endswith("drop")]
        self.assertEqual(len(backstops), 1, chain)  # by the conntrack mark: both families
        for line in backstops:
            self.assertIn("counter packets 0 bytes 0 drop", line)


if __name__ == "__main__":
    unittest.main()
