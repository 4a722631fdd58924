"""Shared fixtures for the end-to-end tests: a real knot upstream serving test zones on
loopback, an optional recording relay in front of it (to see what reached the upstream),
and the real dnsward binary. Nothing here talks to the machine's own resolver."""
import contextlib
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BIN = os.environ.get("DNSWARD_BIN") or os.path.join(ROOT, "build", "dnsward")
LO = "127.0.0.1"

ZONE = """$ORIGIN test.
$TTL 300
@ SOA ns.test. hostmaster.test. 1 3600 600 86400 60
@ NS ns
ns A 127.0.0.1
www.allowed A 198.18.0.1
www.allowed AAAA 2001:db8::1
alias.allowed CNAME target.elsewhere
target.elsewhere A 198.18.0.2
*.wild A 198.18.3.1
a.b.deep A 198.18.4.1
""" + "".join(f"many.allowed A 198.18.2.{i}\n" for i in range(1, 41)) + "".join(
    f'big.allowed TXT "{str(i) * 250}"\n' for i in range(8))

ALLOWLIST = """# test allowlist
www.allowed.test owner=tests why="plain A/AAAA"
alias.allowed.test why="CNAME to an unlisted name"
many.allowed.test why="40 A records: over 512 bytes"
big.allowed.test why="TXT over 1232 bytes"
nothere.allowed.test why="allowed but absent upstream: NXDOMAIN is relayed"
*.wild.test
**.deep.test
"""


def free_port():
    """A port free for both UDP and TCP on LO."""
    for _ in range(100):
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.bind((LO, 0))
        port = t.getsockname()[1]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind((LO, port))
            return port
        except OSError:
            continue
        finally:
            u.close()
            t.close()
    raise RuntimeError("no free port")


def require(*programs, root=True):
    """Skips the whole suite (call it from setUpModule) when this machine cannot run it: not
    root, or a program it needs is missing. The reason starts with "cannot run here", and
    ctest reports such a suite as Not Run (see test/CMakeLists.txt), never as passed."""
    import shutil
    import unittest
    if root and os.geteuid() != 0:
        raise unittest.SkipTest("cannot run here: needs root (namespaces, nftables, setuid)")
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        raise unittest.SkipTest(f"cannot run here: missing {', '.join(missing)}")
    # A missing dnsward binary is no outside reason: it fails the tests, never skips them.


def fast_open_drops(chain_text):
    """Packets the guard's Fast Open rule (a SYN with payload on a guarded port, dropped) counted,
    read from `nft list chain` text."""
    for line in chain_text.splitlines():
        if "tcp flags" in line and "@ih,0,8" in line and "meta mark" not in line:
            return int(re.search(r"counter packets (\d+)", line).group(1))
    raise AssertionError("no Fast Open rule in\n" + chain_text)


@contextlib.contextmanager
def syn_cookies(server_ns, client, dst, priority=0):
    """The attacks on the guard through SYN cookies, set up and undone after: the front end in
    server_ns always answers with cookies (net.ipv4.tcp_syncookies=2, as a SYN flood makes
    any server do), and the client's namespace (client: the command prefix that runs there)
    drops its kernel's RSTs to dst, but the raw scripts' (rawtcp.MARK), at that priority
    (before dnsward's chains where they share a hook: its guard chains take a reset as a
    connection's end)."""
    import rawtcp
    key = "net.ipv4.tcp_syncookies"
    server = ("ip", "netns", "exec", server_ns)
    old = sh(*server, "sysctl", "-q", "-n", key).stdout.strip()
    sh(*client, "nft", "-f", "-", input="table inet cookie_attack {\n chain out {\n"
       f"  type filter hook output priority {priority}; policy accept;\n"
       f"  ip daddr {dst} tcp flags rst meta mark != {rawtcp.MARK:#x} drop\n }}\n}}\n")
    try:
        sh(*server, "sysctl", "-q", "-w", f"{key}=2")
        yield
    finally:
        sh(*server, "sysctl", "-q", "-w", f"{key}={old}")
        sh(*client, "nft", "delete", "table", "inet", "cookie_attack", check=False)


def pickup_drops(chain_text):
    """Packets the guard's rule for connections picked up mid-stream (to a vouched destination on
    a guarded port, with no guarded mark) dropped, summed over the families the ruleset sees,
    read from `nft list chain` text: in-guest `ip daddr @set`, in host mode `ip saddr . ip
    daddr @set`."""
    n = [int(m.group(1)) for m in re.finditer(
        r"ct mark & 0x[0-9a-f]+ == 0x0+ (?:ip6? saddr \. )?ip6? daddr @\S+ counter packets (\d+) bytes \d+ drop ",
        chain_text)]
    if not n:
        raise AssertionError("no mid-stream pickup rule in\n" + chain_text)
    return sum(n)


def conntrack_has(sport, dport, ns=None):
    """Whether the conntrack table (of namespace ns, else this process's) has an entry of a TCP
    connection with these ports. An expired entry is not listed: listing it reaps it."""
    if ns is None:
        with open("/proc/net/nf_conntrack") as f:
            text = f.read()
    else:
        text = sh("ip", "netns", "exec", ns, "cat", "/proc/net/nf_conntrack").stdout
    return any(l.split()[2] == "tcp" and f" sport={sport} dport={dport} " in l for l in text.splitlines())


def wait_for(fn, timeout=10.0, what="condition"):
    """Polls fn until it returns something true, or fails after timeout seconds. The short
    pause between polls is the only sleep in the tests: it paces a poll that has a
    deadline, it never stands in for an event."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            r = fn()
            if r:
                return r
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last = e
        time.sleep(0.05)
    raise TimeoutError(f"{what} not reached in {timeout}s (last error: {last})")


def race_zone(count):
    """Zone lines for race.py: r{i}.udprace and r{i}.tcprace, each with its own address in
    198.18.16.0/21 and 198.18.24.0/21; allow them with *.udprace.test and *.tcprace.test."""
    return "".join(f"r{i}.udprace A 198.18.{16 + i // 250}.{i % 250 + 1}\n" for i in range(count)) \
        + "".join(f"r{i}.tcprace A 198.18.{24 + i // 250}.{i % 250 + 1}\n" for i in range(count))


def write_knot_config(directory, zone, listen):
    """knot.conf and test.zone in `directory`: knotd authoritative for test. on each
    ADDR@PORT of `listen`, logging warnings to stderr. Returns the config's path."""
    with open(os.path.join(directory, "test.zone"), "w") as f:
        f.write(zone)
    conf = os.path.join(directory, "knot.conf")
    with open(conf, "w") as f:
        f.write(f"""server:
    rundir: "{directory}"
    listen: [ {", ".join(listen)} ]
database:
    storage: "{directory}"
log:
  - target: stderr
    any: warning
zone:
  - domain: test
    file: "{directory}/test.zone"
""")
    return conf


class Knot:
    """knotd from Debian, authoritative for test. on a loopback port."""

    def __init__(self, zone=ZONE):
        self.dir = tempfile.mkdtemp(prefix="dnsward-knot-")
        self.port = free_port()
        write_knot_config(self.dir, zone, [f"{LO}@{self.port}"])
        self.log = open(os.path.join(self.dir, "knot.log"), "w")
        self.proc = subprocess.Popen(["knotd", "-c", os.path.join(self.dir, "knot.conf")],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        q = dns.message.make_query("test.", "SOA")
        wait_for(lambda: dns.query.udp(q, LO, port=self.port, timeout=0.2).answer,
                 what="knot answering")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


class LoopbackServer:
    """A DNS server on LO, UDP and TCP, for test doubles. Subclasses implement
    handle(wire, transport) -> reply bytes or None (no reply). Each UDP query is handled
    in its own thread, so a slow one delays no other."""

    def __init__(self):
        self.port = getattr(self, "_want", None) or free_port()
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((LO, self.port))
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind((LO, self.port))
        self.tcp.listen(16)
        self.running = True
        self.last = b""
        threading.Thread(target=self._udp_loop, daemon=True).start()
        threading.Thread(target=self._tcp_loop, daemon=True).start()

    def handle(self, wire, transport):
        raise NotImplementedError

    def received(self, wire, transport):
        """Called in arrival order, before handle() (which runs in a thread of its own for
        UDP): a subclass records here what must be seen in the order it came."""

    def _udp_one(self, data, peer):
        reply = self.handle(data, "udp")
        if reply is not None:
            try:
                self.udp.sendto(reply, peer)
            except OSError:
                pass

    def _udp_loop(self):
        self.udp.settimeout(0.2)
        while self.running:
            try:
                data, peer = self.udp.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            self.received(data, "udp")
            threading.Thread(target=self._udp_one, args=(data, peer), daemon=True).start()

    def _tcp_loop(self):
        self.tcp.settimeout(0.2)
        while self.running:
            try:
                conn, _ = self.tcp.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._tcp_conn, args=(conn,), daemon=True).start()

    def _tcp_conn(self, conn):
        conn.settimeout(5)
        try:
            while True:
                n = struct.unpack("!H", recv_exact(conn, 2))[0]
                wire = recv_exact(conn, n)
                self.received(wire, "tcp")
                reply = self.handle(wire, "tcp")
                if reply is not None:
                    conn.sendall(struct.pack("!H", len(reply)) + reply)
        except (OSError, EOFError):
            pass
        finally:
            conn.close()

    def stop(self):
        self.running = False
        self.udp.close()
        self.tcp.close()


class RecordingServer(LoopbackServer):
    """A LoopbackServer that keeps the (lower-cased) names it was asked, in arrival order."""

    def __init__(self):
        self.names = []
        super().__init__()

    def received(self, wire, transport):
        self.names.append(dns.message.from_wire(wire).question[0].name.to_text().lower())


class UsageErrors:
    """For TestCases of command-line errors: one line on stderr, exit code 2, nothing on stdout."""

    def assert_usage_error(self, r, *fragments):
        self.assertEqual(r.returncode, 2, r.stderr)
        lines = r.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, r.stderr)
        for f in fragments:
            self.assertIn(f, lines[0])
        self.assertEqual(r.stdout, "")


class Relay(LoopbackServer):
    """Forwards UDP and TCP DNS to knot and records every question that passed, so tests
    can assert what reached the upstream. blackhole=True swallows queries. journal: a list
    shared by several relays, to which each appends (tag, lower-cased name) in arrival
    order, so a test can see which upstream was asked first."""

    def __init__(self, upstream_port, blackhole=False, journal=None, tag=None):
        self.upstream_port = upstream_port
        self.blackhole = blackhole
        self.seen = []  # (qname as sent, qtype, transport, message id, EDNS payload or None)
        self.lock = threading.Lock()
        self.journal, self.tag = journal, tag
        super().__init__()

    def received(self, wire, transport):
        try:
            m = dns.message.from_wire(wire)
            entry = (m.question[0].name.to_text(), m.question[0].rdtype, transport, m.id,
                     m.payload if m.edns >= 0 else None)
        except Exception:  # noqa: BLE001 - a malformed query is recorded as such
            entry = ("<malformed>", 0, transport, -1, None)
        with self.lock:
            self.seen.append(entry)
            if self.journal is not None:
                self.journal.append((self.tag, entry[0].lower()))

    def handle(self, wire, transport):
        if self.blackhole:
            return None
        try:
            if transport == "udp":
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.settimeout(2)
                    s.sendto(wire, (LO, self.upstream_port))
                    return s.recv(65535)
            with socket.create_connection((LO, self.upstream_port), timeout=5) as up:
                up.sendall(struct.pack("!H", len(wire)) + wire)
                return recv_exact(up, struct.unpack("!H", recv_exact(up, 2))[0])
        except (OSError, EOFError):
            return None

    def names(self):
        """The names that reached the upstream, lower-cased (dnsward sends them in random
        letter case, DNS 0x20)."""
        with self.lock:
            return [s[0].lower() for s in self.seen]

    def names_as_sent(self):
        with self.lock:
            return [s[0] for s in self.seen]

    def ids(self):
        with self.lock:
            return [s[3] for s in self.seen]

    def clear(self):
        with self.lock:
            self.seen.clear()


class NoEdnsUpstream(LoopbackServer):
    """An old-style server that answers FORMERR (without OPT) to any query carrying EDNS,
    as RFC 6891 7 describes for servers that do not implement it, and otherwise answers
    A 198.18.9.9 (40 addresses for names starting with "many"). UDP answers obey the
    512-byte limit with TC=1, so clients must retry over TCP."""

    def __init__(self):
        self.queries = []  # (had_opt, transport)
        super().__init__()

    def handle(self, wire, transport):
        q = dns.message.from_wire(wire)
        self.queries.append((q.edns >= 0, transport))
        r = dns.message.make_response(q)
        r.use_edns(False)
        if q.edns >= 0:
            r.set_rcode(dns.rcode.FORMERR)
            return r.to_wire()
        name = q.question[0].name
        n = 40 if name.labels[0].lower().startswith(b"many") else 1
        r.answer.append(dns.rrset.from_text_list(name, 300, "IN", "A",
                                                 [f"198.18.9.{i + 9}" for i in range(n)]))
        w = r.to_wire()
        if transport == "udp" and len(w) > 512:
            r.answer.clear()
            r.flags |= dns.flags.TC
            w = r.to_wire()
        return w


class Stack:
    """The usual test world: knot, a recording relay in front of it, and dnsward."""

    def __init__(self, **dnsward_kw):
        self.knot = Knot()
        self.relay = Relay(self.knot.port)
        self.dw = Dnsward(self.relay.port, **dnsward_kw)

    def stop(self):
        """Stops everything; returns dnsward's exit code (0 after a clean SIGTERM)."""
        code = self.dw.stop()
        self.relay.stop()
        self.knot.stop()
        return code


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return buf


def framed(msg):
    """A DNS message as sent over TCP: two-byte length, then the message (RFC 7766 8)."""
    w = msg.to_wire()
    return struct.pack("!H", len(w)) + w


def read_reply(sock):
    """One length-prefixed DNS message read from a TCP socket."""
    n = struct.unpack("!H", recv_exact(sock, 2))[0]
    return dns.message.from_wire(recv_exact(sock, n))


def ensure_user(name="dnsward"):
    """The unprivileged user dnsward drops to after start-up (tests run as root)."""
    if subprocess.run(["id", name], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        name], check=True, capture_output=True)


def shared_tempdir(prefix="dnsward-"):
    """A temporary directory the dropped dnsward user can write to (state files)."""
    d = tempfile.mkdtemp(prefix=prefix)
    os.chmod(d, 0o777)
    return d


class Dnsward:
    """The real binary on a loopback port. Started as root, as in production, it drops to
    the user dnsward after binding (so the tests run the drop too). listen: the --listen
    value(s), "{port}" standing for the port wait_ready() asks on (LO:port by default)."""

    def __init__(self, upstream_port=None, allowlist=ALLOWLIST, extra=(), listen=None,
                 wait=True, nft=False, prefix=()):
        self.dir = tempfile.mkdtemp(prefix="dnsward-")
        self.port = free_port()
        os.chmod(self.dir, 0o755)  # readable by an unprivileged dnsward (prefix: setpriv)
        ensure_user()
        # listen: one address or a list; "{port}" in it stands for self.port.
        listens = [listen] if isinstance(listen, str) else list(listen or [f"{LO}:{{port}}"])
        args = [*prefix, BIN, "serve"]
        for a in listens:
            args += ["--listen", a.replace("{port}", str(self.port))]
        if not prefix:
            args += ["--user", "dnsward"]
        if not nft:
            args.append("--no-nft")
        if allowlist is not None:  # None: the embedded default list
            self.allowlist = os.path.join(self.dir, "test.allow")
            with open(self.allowlist, "w") as f:
                f.write(allowlist)
            os.chmod(self.allowlist, 0o644)
            args += ["--allowlist", self.allowlist]
        if upstream_port:
            args += ["--upstream", f"{LO}:{upstream_port}"]
        args += list(extra)
        self.logpath = os.path.join(self.dir, "dnsward.log")
        self.log = open(self.logpath, "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready()

    def wait_ready(self):
        q = dns.message.make_query("localhost.", "A")  # answered locally: needs no upstream
        wait_for(lambda: self.alive() and self.udp(q, timeout=0.2), what="dnsward answering")

    def alive(self):
        return self.proc.poll() is None

    def udp(self, q, timeout=3.0):
        return dns.query.udp(q, LO, port=self.port, timeout=timeout)

    def tcp(self, q, timeout=3.0):
        return dns.query.tcp(q, LO, port=self.port, timeout=timeout)

    def query(self, name, rdtype="A", tcp=False, timeout=3.0, **kw):
        q = dns.message.make_query(name, rdtype, **kw)
        return self.tcp(q, timeout) if tcp else self.udp(q, timeout)

    def raw_udp(self, data, timeout=0.5):
        """Sends raw bytes; returns the reply's bytes, or None if none came."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(data, (LO, self.port))
            try:
                return s.recv(65535)
            except socket.timeout:
                return None

    def logtext(self):
        if not self.log.closed:
            self.log.flush()
        with open(self.logpath) as f:
            return f.read()

    def stop(self):
        try:
            return terminate(self.proc)
        finally:
            self.log.close()


def terminate(proc):
    """SIGTERM to a process the test started, SIGKILL if it is not gone in 10 s; its exit
    code (None if it had to be killed)."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def ede(msg):
    """(code, text) of the first Extended DNS Error in a reply, or None."""
    for o in msg.options:
        if o.otype == dns.edns.EDE:
            return o.code, o.text
    return None


def nft(*args, stdin=None, check=True):
    """Runs nft (in the test's namespace); raises with nft's message when check is set."""
    r = subprocess.run(["nft", *args], input=stdin, capture_output=True, text=True, timeout=10)
    if check and r.returncode != 0:
        raise RuntimeError(f"nft {' '.join(args)}: {r.stderr}")
    return r


def drop_table():
    """Deletes dnsward's default table, if there is one."""
    nft("delete", "table", "inet", "dnsward", check=False)


def enter_new_netns():
    """Moves this process (and so every child it starts) into a network namespace of its
    own with only loopback: nftables changes made there never touch the machine's."""
    import ctypes
    CLONE_NEWNET = 0x40000000
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def nft_set(table, name, family="inet"):
    """The elements of an nftables set: {address: (timeout s, expires s)} via `nft -j`."""
    import json
    r = subprocess.run(["nft", "-j", "list", "set", family, table, name], capture_output=True,
                       text=True, timeout=10)
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    out = {}
    for item in json.loads(r.stdout)["nftables"]:
        s = item.get("set")
        if not s:
            continue
        for e in s.get("elem", []):
            if isinstance(e, dict) and "elem" in e:
                out[e["elem"]["val"]] = (e["elem"].get("timeout"), e["elem"].get("expires"))
            else:
                out[e] = (None, None)
    return out


def nft_set_info(table, name, family="inet"):
    """(type, flags, size) of a set."""
    import json
    r = subprocess.run(["nft", "-j", "list", "set", family, table, name], capture_output=True,
                       text=True, timeout=10)
    if r.returncode != 0:
        return None
    for item in json.loads(r.stdout)["nftables"]:
        if "set" in item:
            s = item["set"]
            return s.get("type"), s.get("flags", []), s.get("size")
    return None


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)


def sh(*cmd, check=True, input=None, timeout=60):
    """Runs cmd; raises with its stderr if it fails and check is set."""
    r = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.returncode}: {r.stderr}")
    return r


def clean_env():
    """The environment without proxies: none may stand between clients and the world under test."""
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


def queue_backend(ns, hook="output"):
    """The first-flight guard's queue backend on this kernel: nft where its nftables has a
    queue expression, else xt (iptables-nft's NFQUEUE), else None. Asked of the kernel in
    the namespace ns, made here and deleted after (`nft -c` still sends the batch)."""
    sh("ip", "netns", "add", ns)
    try:
        r = sh("ip", "netns", "exec", ns, "nft", "-c", "-f", "-", check=False,
               input=f"table inet p {{ chain c {{ type filter hook {hook} priority 0; queue num 1; }} }}\n")
        if r.returncode == 0:
            return "nft"
        if shutil.which("iptables-nft-restore"):
            r = sh("ip", "netns", "exec", ns, "iptables-nft", "-t", "mangle", "-A", hook.upper(), "-j",
                   "NFQUEUE", "--queue-num", "1", check=False)
            if r.returncode == 0:
                return "xt"
        return None
    finally:
        sh("ip", "netns", "del", ns, check=False)
