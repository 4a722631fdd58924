"""The first-flight guard (--sni-guard) against real parts: one "internet" namespace with knot
and a TLS and HTTP server answering two names on ONE address (a shared CDN front end), and a
"vm" namespace with the ruleset from `dnsward nft-rules --sni-guard`, dnsward as its only
resolver, and real clients (curl; Python's ssl for ClientHellos written in pieces, without
server_name, or in a TCP Fast Open SYN). Only www.allowed.test is on the allowlist; other.test
lives on the same address. git.allowed.test, with ports=22, lives on an address of its own;
the internet side listens on TCP 22 and 2222 on every address, so a refused connection there
is the vm's ruleset refusing it.

The queue backend is the kernel's: nftables' own `queue` where the kernel has nft_queue (the
6.1 guest), else the xt NFQUEUE target through iptables-nft (these machines' 6.18 kernel)."""
import os
import signal
import re
import shutil
import subprocess
import tempfile
import unittest

from harness import conntrack_has, fast_open_drops, pickup_drops, syn_cookies, BIN, clean_env, queue_backend, require, sh, terminate, wait_for, write_knot_config

TAG = f"{os.getpid() % 100000}"
INET, VM = f"dwsinet{TAG}", f"dwsvm{TAG}"
DNS_IP = "198.18.0.53"
SHARED = "198.18.1.1"  # the front end both names live on

ZONE = """$ORIGIN test.
$TTL 300
@ SOA ns.test. hostmaster.test. 1 3600 600 86400 60
@ NS ns
ns A 198.18.0.53
www.allowed A 198.18.1.1
www.allowed HTTPS 1 . alpn=h2 ech=AAQBAgME ipv4hint=198.18.1.1
alias.allowed CNAME edge.cdn
edge.cdn A 198.18.1.1
other A 198.18.1.1
nosni.allowed A 198.18.1.5
git.allowed A 198.18.1.6
"""
ALLOW = ("www.allowed.test\nalias.allowed.test\n"
         'nosni.allowed.test sni=any why="a client that sends no server_name"\n'
         'git.allowed.test ports=22 why="git over ssh"\n')
NOSNI = "198.18.1.5"  # an address of its own: sni=any opens its address to any first flight
GIT = "198.18.1.6"  # git.allowed.test's, with ports=22

# A TCP service on 22 and 2222 of every address of the internet side: says "hello" and closes.
BANNER = r"""
import socket, threading
def serve(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(16)
    while True:
        c, _ = s.accept()
        c.sendall(b"hello\n")
        c.close()
for p in (22, 2222):
    threading.Thread(target=serve, args=(p,), daemon=True).start()
threading.Event().wait()
"""

# The front end (test/data/tls_front.py): TLS on 443 and plain HTTP on 80, for any name (a
# CDN serves its customers on one address); the certificate names every one, so only the
# guard can tell them apart.
FRONT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "tls_front.py")

# A TLS client whose ClientHello goes out in `parts` writes of its own, with TCP_NODELAY (each
# write its own segment on the veth's MTU of 1500), or in a TCP Fast Open SYN (tfo). Prints
# the HTTP status, or the error that ended the connection.
CLIENT = r"""
import socket, ssl, sys
host, addr, sni, parts, tfo, cafile = sys.argv[1:7]
parts = int(parts)
ctx = ssl.create_default_context(cafile=cafile)
if sni == "-":
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
tls = ctx.wrap_bio(incoming, outgoing, server_hostname=None if sni == "-" else sni)
try:
    tls.do_handshake()
except ssl.SSLWantReadError:
    pass
hello = outgoing.read()
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(5)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
try:
    if tfo == "1":
        s.sendto(hello, socket.MSG_FASTOPEN, (addr, 443))
    else:
        s.connect((addr, 443))
        step = (len(hello) + parts - 1) // parts
        for i in range(0, len(hello), step):
            s.send(hello[i:i + step])
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
    while b"\r\n\r\n" not in reply:
        try:
            reply += tls.read(65536)
        except ssl.SSLWantReadError:
            data = s.recv(65536)
            if not data:
                break
            incoming.write(data)
    print(reply.split(b" ")[1].decode())
except Exception as e:
    print("error", type(e).__name__, e)
"""

# What the bench (bench/sni_guard.py) changes: dnsward's log level, and options given to both
# `nft-rules` and `serve` (more guarded ports).
LOG_LEVEL = "debug"
GUARD_OPTIONS = []

procs = []
logs = []
workdir = None
dnsward = None
dnsward_log = None
backend = None


def in_vm(*cmd, **kw):
    return sh("ip", "netns", "exec", VM, *cmd, **kw)


def start(ns, *cmd, log):
    p = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], stdout=log, stderr=subprocess.STDOUT,
                         env=clean_env())
    procs.append(p)
    return p



def start_dnsward():
    global dnsward, dnsward_log
    if dnsward_log is None:
        dnsward_log = open(os.path.join(workdir, "dnsward.log"), "a")
    allow = os.path.join(workdir, "world.allow")
    caps = "+net_admin,+net_bind_service"
    dnsward = start(VM, "setpriv", "--reuid=dnsward", "--regid=dnsward", "--clear-groups",
                    f"--inh-caps=-all,{caps}", f"--ambient-caps={caps}",
                    f"--bounding-set=-all,{caps}", BIN, "serve", "--listen", "127.0.0.1:53",
                    "--upstream", DNS_IP, "--allowlist", allow, "--sni-guard",
                    "--queue-backend", backend, "--log-level", LOG_LEVEL, *GUARD_OPTIONS,
                    log=dnsward_log)
    wait_for(lambda: "NOERROR" in in_vm("dig", "@127.0.0.1", "www.allowed.test", "+tries=1",
                                        "+time=1", check=False).stdout,
             timeout=20, what="dnsward answering inside the vm")


def setUpModule():
    global workdir, backend
    require("knotd", "nft", "ip", "setpriv", "curl", "dig", "openssl")
    backend = queue_backend(f"dwsprobe{TAG}")
    if backend is None:
        raise unittest.SkipTest("this kernel queues with neither nft_queue nor xt NFQUEUE (iptables-nft)")
    try:
        set_up_world()
    except BaseException:
        tearDownModule()  # unittest skips tearDownModule when setUpModule fails
        raise


def set_up_world():
    global workdir
    workdir = tempfile.mkdtemp(prefix="dnsward-sni-")
    os.chmod(workdir, 0o755)
    if sh("id", "dnsward", check=False).returncode != 0:
        sh("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "dnsward")
    for ns in (INET, VM):
        sh("ip", "netns", "add", ns)
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
    sh("ip", "link", "add", f"dsi{TAG}", "type", "veth", "peer", "name", f"dsv{TAG}")
    sh("ip", "link", "set", f"dsi{TAG}", "netns", INET)
    sh("ip", "link", "set", f"dsv{TAG}", "netns", VM)
    ie = ("ip", "netns", "exec", INET)
    sh(*ie, "ip", "addr", "add", "198.18.0.1/24", "dev", f"dsi{TAG}")
    sh(*ie, "ip", "link", "set", f"dsi{TAG}", "mtu", "1500", "up")
    sh(*ie, "ip", "addr", "add", f"{DNS_IP}/32", "dev", "lo")
    sh(*ie, "ip", "addr", "add", f"{SHARED}/32", "dev", "lo")
    sh(*ie, "ip", "addr", "add", f"{NOSNI}/32", "dev", "lo")
    sh(*ie, "ip", "addr", "add", f"{GIT}/32", "dev", "lo")
    sh("ip", "netns", "exec", VM, "ip", "addr", "add", "198.18.0.2/24", "dev", f"dsv{TAG}")
    sh("ip", "netns", "exec", VM, "ip", "link", "set", f"dsv{TAG}", "mtu", "1500", "up")
    sh("ip", "netns", "exec", VM, "ip", "route", "add", "default", "via", "198.18.0.1")
    # TCP Fast Open without a cookie (client bit 1 | no-cookie bit 4): the SYN carries data.
    in_vm("sysctl", "-q", "-w", "net.ipv4.tcp_fastopen=5")
    os.makedirs(f"/etc/netns/{VM}", exist_ok=True)
    with open(f"/etc/netns/{VM}/resolv.conf", "w") as f:
        f.write("nameserver 127.0.0.1\noptions attempts:1 timeout:2\n")

    cert, key = os.path.join(workdir, "cert.pem"), os.path.join(workdir, "key.pem")
    sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
       "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=www.allowed.test",
       "-addext", "subjectAltName=DNS:www.allowed.test,DNS:alias.allowed.test,DNS:edge.cdn.test,DNS:other.test")
    os.chmod(key, 0o644)
    log = open(os.path.join(workdir, "servers.log"), "w")
    logs.append(log)
    start(INET, "knotd", "-c", write_knot_config(workdir, ZONE, [f"{DNS_IP}@53"]), log=log)
    with open(os.path.join(workdir, "client.py"), "w") as f:
        f.write(CLIENT)
    start(INET, "/usr/bin/python3", FRONT, cert, key, "--plain", log=log)
    start(INET, "/usr/bin/python3", "-c", BANNER, log=log)
    wait_for(lambda: sh(*ie, "curl", "-s", "--noproxy", "*", f"http://{SHARED}/",
                        check=False).returncode == 0,
             timeout=20, what="the front end answering")
    wait_for(lambda: all(tcp_from(INET, GIT, p) == "hello" for p in (22, 2222)),
             timeout=20, what="the TCP service answering on 22 and 2222")

    rules = sh(BIN, "nft-rules", "--upstream", DNS_IP, "--user", "dnsward", "--sni-guard",
               "--queue-backend", backend, *GUARD_OPTIONS).stdout
    with open(os.path.join(workdir, "rules.nft"), "w") as f:
        f.write(rules)
    in_vm("nft", "-f", os.path.join(workdir, "rules.nft"))
    if backend == "xt":
        for tool in ("iptables", "ip6tables"):
            xt = sh(BIN, "nft-rules", "--sni-guard", "--queue-backend", "xt", "--print", tool,
                    *GUARD_OPTIONS).stdout
            in_vm(f"{tool}-nft-restore", "--noflush", input=xt)
    with open(os.path.join(workdir, "world.allow"), "w") as f:
        f.write(ALLOW)
    os.chmod(os.path.join(workdir, "world.allow"), 0o644)
    start_dnsward()


def tearDownModule():
    for p in reversed(procs):
        terminate(p)
    for ns in (INET, VM):
        sh("ip", "netns", "del", ns, check=False)
    shutil.rmtree(f"/etc/netns/{VM}", ignore_errors=True)
    for f in logs + ([dnsward_log] if dnsward_log else []):
        f.close()
    if workdir:
        shutil.rmtree(workdir, ignore_errors=True)


def tcp_from(ns, addr, port):
    """What a TCP connection from ns to addr:port reads ("hello"), or "refused", "timeout"."""
    r = sh("ip", "netns", "exec", ns, "/usr/bin/python3", "-c",
           "import socket, sys\n"
           "try:\n"
           f" s = socket.create_connection(('{addr}', {port}), timeout=5)\n"
           " print(s.recv(64).decode().strip())\n"
           "except ConnectionRefusedError:\n print('refused')\n"
           "except socket.timeout:\n print('timeout')\n", check=False)
    return r.stdout.strip()


def curl(*args):
    """(exit code, HTTP status or None) of curl inside the vm."""
    r = in_vm("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
              "--noproxy", "*", "--cacert", os.path.join(workdir, "cert.pem"), *args, check=False)
    return r.returncode, (int(r.stdout) if r.returncode == 0 else None)


def client(host, sni, parts=1, tfo=False, addr=SHARED):
    r = in_vm("/usr/bin/python3", os.path.join(workdir, "client.py"), host, addr, sni, str(parts),
              "1" if tfo else "0", os.path.join(workdir, "cert.pem"), check=False, timeout=30)
    return r.stdout.strip()


def log():
    with open(os.path.join(workdir, "dnsward.log")) as f:
        return f.read()


def tfo_drops():
    """Packets the guard_output chain's Fast Open rule dropped (a SYN with payload on a guarded
    port), before the queue."""
    return fast_open_drops(in_vm("nft", "list", "chain", "inet", "dnsward", "guard_output").stdout)


def events(kind, **fields):
    """Log lines of event=kind whose fields include every one given (values as logged)."""
    out = []
    for line in log().splitlines():
        if f"event={kind} " not in line + " ":
            continue
        if all(re.search(rf"\b{k}={re.escape(v)}(\s|$)", line) for k, v in fields.items()):
            out.append(line)
    return out


class SniGuard(unittest.TestCase):
    def setUp(self):
        # Every test starts from a vouched front end: the allowed name resolved.
        self.assertEqual(curl("http://www.allowed.test/"), (0, 200))

    def test_tls_to_the_allowed_name_passes(self):
        self.assertEqual(curl("https://www.allowed.test/"), (0, 200))

    def test_tls_naming_another_customer_of_the_same_address_is_reset(self):
        before = len(events("sni-mismatch", name='other.test', addr=SHARED, port="443"))
        code, status = curl("--resolve", f"other.test:443:{SHARED}", "https://other.test/")
        self.assertIsNone(status)
        self.assertIn(code, (35, 56), "curl should see the connection reset during the handshake")
        lines = events("sni-mismatch", name='other.test', addr=SHARED, port="443")
        self.assertEqual(len(lines), before + 1, log()[-2000:])
        # The names bound to the address: every allowed name that resolved to it, never other.test.
        bound = re.search(r"bound=(\S+)", lines[-1]).group(1).split(",")
        self.assertIn("www.allowed.test", bound)
        self.assertNotIn("other.test", bound)

    def test_plain_http_with_another_host_is_reset(self):
        code, status = curl("-H", "Host: other.test", "http://www.allowed.test/")
        self.assertIsNone(status)
        self.assertEqual(code, 56, "curl should see the connection reset")
        self.assertTrue(events("sni-mismatch", name='other.test', port="80"))

    def test_a_cname_target_is_bound_too(self):
        # alias.allowed.test -> edge.cdn -> the shared address: both names resolved to it.
        self.assertEqual(curl("https://alias.allowed.test/"), (0, 200))
        self.assertEqual(client("edge.cdn.test", "edge.cdn.test"), "200")
        self.assertFalse(events("sni-mismatch", name='edge.cdn.test'))

    def test_a_client_hello_in_two_segments_is_reassembled_and_passes(self):
        before = len(events("first-flight-allowed", name='www.allowed.test', segments="2"))
        self.assertEqual(client("www.allowed.test", "www.allowed.test", parts=2), "200")
        self.assertEqual(len(events("first-flight-allowed", name='www.allowed.test', segments="2")),
                         before + 1, "the guard saw the ClientHello in exactly two segments")

    def test_a_client_hello_without_server_name_is_reset(self):
        before = len(events("first-flight-rejected", reason="no_name"))
        out = client("www.allowed.test", "-")
        self.assertTrue(out.startswith("error"), out)
        self.assertEqual(len(events("first-flight-rejected", reason="no_name")), before + 1)

    def test_an_sni_any_entry_lets_a_client_hello_without_server_name_through_to_its_address(self):
        self.assertIn(NOSNI, in_vm("dig", "+short", "@127.0.0.1", "nosni.allowed.test").stdout)
        self.assertEqual(client("nosni.allowed.test", "-", addr=NOSNI), "200")
        self.assertTrue(events("first-flight-allowed", name="*", addr=NOSNI))
        # The shared address, vouched by entries without sni=any, still wants a bound name.
        self.assertTrue(client("www.allowed.test", "-").startswith("error"))

    def test_taking_sni_any_off_a_listed_entry_closes_its_address_at_the_reload(self):
        # The entry stays listed, so its address stays vouched (and its answers would keep
        # refreshing it); only sni=any goes. The next first flight without server_name to it
        # is judged by the policy now in force, not by what the entry said when it vouched.
        self.assertIn(NOSNI, in_vm("dig", "+short", "@127.0.0.1", "nosni.allowed.test").stdout)
        self.assertEqual(client("nosni.allowed.test", "-", addr=NOSNI), "200")
        allow = os.path.join(workdir, "world.allow")
        try:
            self.reload(ALLOW.replace(' sni=any why="a client that sends no server_name"', ""))
            self.assertIn(NOSNI, in_vm("dig", "+short", "@127.0.0.1", "nosni.allowed.test").stdout)
            before = len(events("first-flight-rejected", reason="no_name", addr=NOSNI))
            self.assertTrue(client("nosni.allowed.test", "-", addr=NOSNI).startswith("error"))
            self.assertEqual(len(events("first-flight-rejected", reason="no_name", addr=NOSNI)), before + 1)
            # The name itself still passes the guard, which bound it: the front end answers
            # with its certificate (which does not name it: the client refuses that).
            out = client("nosni.allowed.test", "nosni.allowed.test", addr=NOSNI)
            self.assertIn("certificate is not valid for 'nosni.allowed.test'", out)
        finally:
            self.reload(ALLOW)
        self.assertEqual(client("nosni.allowed.test", "-", addr=NOSNI), "200")
        self.assertTrue(os.path.exists(allow))

    def test_serve_refuses_to_start_on_the_xt_backend_without_its_queue_rules(self):
        # Without them nothing is queued and the backstop holds every guarded connection.
        if backend != "xt":
            self.skipTest("the xt backend is not this kernel's")
        ns = f"dwsnoxt{TAG}"
        sh("ip", "netns", "add", ns)
        try:
            def serve():
                return sh("ip", "netns", "exec", ns, BIN, "serve", "--listen", "127.0.0.1:5353",
                          "--upstream", DNS_IP, "--user", "root", "--sni-guard", "--queue-backend", "xt",
                          check=False, timeout=20)
            r = serve()
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertNotIn("event=conntrack-liberal", r.stderr)
            # With conntrack liberal, serve says at start that a SYN cookie's bare ACK is not
            # stopped by conntrack (README: the SYN-cookie defences).
            sh("ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.netfilter.nf_conntrack_tcp_be_liberal=1")
            r = serve()
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn("event=conntrack-liberal", r.stderr)
            sh("ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.netfilter.nf_conntrack_tcp_be_liberal=0")
            self.assertIn("dnsward: --queue-backend xt: the guard's queue is not loaded (iptables mangle: "
                          "chain DNSWARD_GUARD has 0 NFQUEUE rules to queue 53", r.stderr)
            # IPv4's loaded, IPv6's not: still refused, naming ip6tables.
            xt = sh(BIN, "nft-rules", "--sni-guard", "--queue-backend", "xt", "--print", "iptables").stdout
            sh("ip", "netns", "exec", ns, "iptables-nft-restore", "--noflush", input=xt)
            r = serve()
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn("(ip6tables mangle: chain DNSWARD_GUARD has 0 NFQUEUE rules", r.stderr)
        finally:
            sh("ip", "netns", "del", ns, check=False)

    def reload(self, text):
        with open(os.path.join(workdir, "world.allow"), "w") as f:
            f.write(text)
        before = log().count("event=reload ")
        dnsward.send_signal(signal.SIGHUP)
        wait_for(lambda: log().count("event=reload ") > before, what="dnsward reloading its allowlist")

    def test_a_vouched_address_without_ports_is_open_on_the_guarded_ports_only(self):
        # www.allowed.test is vouched (setUp): TLS on 443 passes the guard; TCP 22 and 2222
        # on the same address, where the service listens, are refused by the ruleset.
        self.assertEqual(curl("https://www.allowed.test/"), (0, 200))
        self.assertEqual(tcp_from(VM, SHARED, 22), "refused")
        self.assertEqual(tcp_from(VM, SHARED, 2222), "refused")

    def test_an_entry_with_ports_opens_its_address_on_those_ports_once_answered(self):
        # Before an answer vouches for it, git's address is closed on every port.
        self.assertEqual(tcp_from(VM, GIT, 22), "refused")
        self.assertIn(GIT, in_vm("dig", "+short", "@127.0.0.1", "git.allowed.test").stdout)
        # The answer reached dig only after the element was in the kernel's port set.
        elements = in_vm("nft", "list", "set", "inet", "dnsward", "allowed4_ports").stdout
        self.assertIn(f"{GIT} . tcp . 22 ", elements)
        self.assertEqual(tcp_from(VM, GIT, 22), "hello")
        self.assertEqual(tcp_from(VM, GIT, 2222), "refused")  # not named by ports=
        # ports=22 opens git's address only: the shared front end stays closed on 22.
        self.assertEqual(tcp_from(VM, SHARED, 22), "refused")

    def test_a_tfo_syn_is_dropped_and_the_connection_then_judged(self):
        # The ruleset drops a SYN with payload (the fifth review: a SYN-ACK cannot say whether
        # it took a Fast Open SYN's data); Linux sends it again plain, and the flight is judged.
        before, mismatches = tfo_drops(), len(events("sni-mismatch", name="other.test", port="443"))
        out = client("other.test", "other.test", tfo=True)
        self.assertTrue(out.startswith("error"), out)
        self.assertEqual(tfo_drops(), before + 1)
        self.assertEqual(len(events("sni-mismatch", name="other.test", port="443")), mismatches + 1)
        before = tfo_drops()
        self.assertEqual(client("www.allowed.test", "www.allowed.test", tfo=True), "200")
        self.assertEqual(tfo_drops(), before + 1)

    def test_https_records_reach_the_client_without_ech(self):
        # knot serves the record with ech (checked from the internet side); through dnsward
        # it keeps alpn and the hint, and loses ech, so clients send the server_name in clear.
        upstream = sh("ip", "netns", "exec", INET, "dig", "+short", f"@{DNS_IP}", "www.allowed.test", "HTTPS").stdout
        self.assertIn("ech=", upstream)
        r = in_vm("dig", "+short", "@127.0.0.1", "www.allowed.test", "HTTPS")
        self.assertEqual(r.stdout.strip(), '1 . alpn="h2" ipv4hint=198.18.1.1')

    def test_quic_to_a_vouched_address_is_rejected(self):
        r = in_vm("/usr/bin/python3", "-c",
                  "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
                  f"s.connect(('{SHARED}', 443));\n"
                  "try:\n s.send(b'x'*1200); print('sent')\nexcept OSError as e:\n print('refused', e.errno)",
                  check=False)
        self.assertIn("refused 1", r.stdout)  # EPERM: the output chain's reject

    def test_zzz_the_backstop_never_had_to_drop_anything(self):
        # The rule after the queue drops payload to a vouched address on a connection nothing
        # judged. It must have counted nothing: each test's first flights were judged, and with
        # dnsward gone (test_zz) the queue itself held them. A count here means the guard or the
        # queue passed something unjudged (a verdict of accept, a queue with bypass).
        chain = in_vm("nft", "list", "chain", "inet", "dnsward", "output").stdout
        backstops = [l for l in chain.splitlines() if "@ih,0,8" in l and "meta mark" in l and
                     l.rstrip().split(" comment")[0].endswith("drop")]
        self.assertEqual(len(backstops), 1, chain)  # by the conntrack mark: both families
        for line in backstops:
            self.assertIn("counter packets 0 bytes 0 drop", line)

    def test_zz_with_dnsward_gone_new_tls_connections_fail_and_none_passes(self):
        terminate(dnsward)
        try:
            code, status = curl("--connect-timeout", "3", "--resolve", f"www.allowed.test:443:{SHARED}",
                                "https://www.allowed.test/")
            self.assertIsNone(status)
            self.assertEqual(code, 28, "the queue has no listener: the first flight waits and times out")
        finally:
            start_dnsward()


if __name__ == "__main__":
    unittest.main()
