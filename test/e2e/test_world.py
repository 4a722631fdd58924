"""The proof: a small world in network namespaces. An "internet" namespace runs an
authoritative knot and an HTTP server answering on many addresses; a "vm" namespace has the
ruleset from `dnsward nft-rules`, resolv.conf naming dnsward as its only resolver, and
dnsward running as the unprivileged user `dnsward` with only CAP_NET_ADMIN and
CAP_NET_BIND_SERVICE. Real clients (curl, getent, dig, glibc) run inside the vm."""
import os
import shutil
import subprocess
import tempfile
import unittest

from harness import BIN, HERE, clean_env, race_zone, require, sh, wait_for

TAG = f"{os.getpid() % 100000}"
INET, VM = f"dwinet{TAG}", f"dwvm{TAG}"
DNS_IP = "198.18.0.53"
RACE = 1000  # iterations of resolve-then-connect, per transport

ZONE = """$ORIGIN test.
$TTL 300
@ SOA ns.test. hostmaster.test. 1 3600 600 86400 60
@ NS ns
ns A 198.18.0.53
www.allowed A 198.18.1.1
other A 198.18.1.2
alias.allowed CNAME target.elsewhere
target.elsewhere A 198.18.1.3
short.allowed 1 A 198.18.1.4
rebind.allowed A 10.0.0.1
meta.allowed A 169.254.169.254
""" + race_zone(RACE)

ALLOW = """www.allowed.test
alias.allowed.test
short.allowed.test
rebind.allowed.test
meta.allowed.test
*.udprace.test
*.tcprace.test
"""

procs = []
workdir = None

# In the vm, as nobody: receive one datagram on UDP 4444 and try to echo it to its sender.
ECHO_ONCE = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 4444))
print("ready", flush=True)
s.settimeout(20)
data, peer = s.recvfrom(100)
print("received from", peer[0], flush=True)
try:
    s.sendto(b"ECHO:" + data, peer)
    print("echo sent", flush=True)
except OSError as e:
    print("echo refused:", e, flush=True)
"""
# In the internet, from an address nothing vouched for: send to the vm, wait 3 s for an echo.
SEND_AND_WAIT = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("198.18.1.2", 0))
s.settimeout(3)
s.sendto(b"secret?", ("198.18.0.2", 4444))
try:
    print("reply:", s.recvfrom(100)[0])
except socket.timeout:
    print("no reply")
"""


def in_vm(*cmd, **kw):
    return sh("ip", "netns", "exec", VM, *cmd, **kw)


def start(ns, *cmd, log):
    p = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], stdout=log, stderr=subprocess.STDOUT,
                         env=clean_env())
    procs.append(p)
    return p


def setUpModule():
    global workdir, dnsward
    require("knotd", "nft", "ip", "setpriv", "curl", "dig", "getent")
    workdir = tempfile.mkdtemp(prefix="dnsward-world-")
    os.chmod(workdir, 0o755)
    if sh("id", "dnsward", check=False).returncode != 0:
        sh("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "dnsward")
    for ns in (INET, VM):
        sh("ip", "netns", "add", ns)
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
    sh("ip", "link", "add", f"dwi{TAG}", "type", "veth", "peer", "name", f"dwv{TAG}")
    sh("ip", "link", "set", f"dwi{TAG}", "netns", INET)
    sh("ip", "link", "set", f"dwv{TAG}", "netns", VM)
    ie = ("ip", "netns", "exec", INET)
    sh(*ie, "ip", "addr", "add", "198.18.0.1/24", "dev", f"dwi{TAG}")
    sh(*ie, "ip", "link", "set", f"dwi{TAG}", "up")
    sh(*ie, "ip", "addr", "add", f"{DNS_IP}/32", "dev", "lo")
    # The "internet" answers on whole ranges of addresses (AnyIP): every race name its own.
    for net in ("198.18.1.0/24", "198.18.16.0/20", "198.18.24.0/21"):
        sh(*ie, "ip", "route", "add", "local", net, "dev", "lo")
    sh("ip", "netns", "exec", VM, "ip", "addr", "add", "198.18.0.2/24", "dev", f"dwv{TAG}")
    sh("ip", "netns", "exec", VM, "ip", "link", "set", f"dwv{TAG}", "up")
    sh("ip", "netns", "exec", VM, "ip", "route", "add", "default", "via", "198.18.0.1")
    # The vm's only resolver is dnsward (ip netns exec mounts this over /etc/resolv.conf).
    os.makedirs(f"/etc/netns/{VM}", exist_ok=True)
    with open(f"/etc/netns/{VM}/resolv.conf", "w") as f:
        f.write("nameserver 127.0.0.1\noptions attempts:1 timeout:2\n")

    log = open(os.path.join(workdir, "servers.log"), "w")
    with open(os.path.join(workdir, "test.zone"), "w") as f:
        f.write(ZONE)
    with open(os.path.join(workdir, "knot.conf"), "w") as f:
        f.write(f"""server:
    rundir: "{workdir}"
    listen: {DNS_IP}@53
database:
    storage: "{workdir}"
log:
  - target: stderr
    any: warning
zone:
  - domain: test
    file: "{workdir}/test.zone"
""")
    start(INET, "knotd", "-c", os.path.join(workdir, "knot.conf"), log=log)
    www = os.path.join(workdir, "www")
    os.makedirs(www)
    with open(os.path.join(www, "index.html"), "w") as f:
        f.write("hello from the internet\n")
    start(INET, "/usr/bin/python3", "-m", "http.server", "80", "--bind", "0.0.0.0",
          "--directory", www, log=log)

    wait_for(lambda: sh("ip", "netns", "exec", INET, "curl", "-s", "--noproxy", "*",
                        "http://198.18.1.1/", check=False).returncode == 0,
             timeout=20, what="the HTTP server answering")

    rules = sh(BIN, "nft-rules", "--upstream", DNS_IP, "--user", "dnsward").stdout
    with open(os.path.join(workdir, "rules.nft"), "w") as f:
        f.write(rules)
    in_vm("nft", "-f", os.path.join(workdir, "rules.nft"))

    allow = os.path.join(workdir, "world.allow")
    with open(allow, "w") as f:
        f.write(ALLOW)
    os.chmod(allow, 0o644)
    caps = "+net_admin,+net_bind_service"
    dnsward = start(VM, "setpriv", "--reuid=dnsward", "--regid=dnsward", "--clear-groups",
                    f"--inh-caps=-all,{caps}", f"--ambient-caps={caps}",
                    f"--bounding-set=-all,{caps}", BIN, "serve", "--listen", "127.0.0.1:53",
                    "--upstream", DNS_IP, "--allowlist", allow, "--min-ttl", "1", "--grace", "1",
                    log=open(os.path.join(workdir, "dnsward.log"), "w"))
    wait_for(lambda: "NOERROR" in in_vm("dig", "@127.0.0.1", "www.allowed.test", "+tries=1",
                                        "+time=1", check=False).stdout,
             timeout=20, what="dnsward answering inside the vm")


def tearDownModule():
    for p in reversed(procs):
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    for ns in (INET, VM):
        sh("ip", "netns", "del", ns, check=False)
    shutil.rmtree(f"/etc/netns/{VM}", ignore_errors=True)
    if workdir:
        shutil.rmtree(workdir, ignore_errors=True)


def curl(url):
    """HTTP status from inside the vm, or None when the connection failed."""
    r = in_vm("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
              "--noproxy", "*", url, check=False)
    return int(r.stdout) if r.returncode == 0 else None


def vm_set4():
    return vm_set(4)


def vm_set(version):
    r = in_vm("nft", "-j", "list", "set", "inet", "dnsward", f"allowed{version}")
    import json
    out = set()
    for item in json.loads(r.stdout)["nftables"]:
        for e in item.get("set", {}).get("elem", []):
            out.add(e["elem"]["val"] if isinstance(e, dict) else e)
    return out


class World(unittest.TestCase):
    def test_dnsward_runs_unprivileged_and_keeps_only_cap_net_admin(self):
        # Started by setpriv with CAP_NET_ADMIN and CAP_NET_BIND_SERVICE, as a systemd unit
        # would; once port 53 is bound it keeps CAP_NET_ADMIN alone.
        status = open(f"/proc/{dnsward.pid}/status").read()
        fields = dict(l.split(":\t", 1) for l in status.splitlines() if ":\t" in l)
        self.assertNotEqual(fields["Uid"].split()[0], "0")
        cap_net_admin = 1 << 12
        self.assertEqual(int(fields["CapEff"], 16), cap_net_admin)
        self.assertEqual(int(fields["CapPrm"], 16), cap_net_admin)
        self.assertEqual(int(fields["CapAmb"], 16), 0)
        self.assertEqual(fields["NoNewPrivs"].strip(), "1")

    def test_allowed_name_is_reachable(self):
        self.assertEqual(curl("http://www.allowed.test/"), 200)
        r = in_vm("getent", "ahosts", "www.allowed.test")
        self.assertIn("198.18.1.1", r.stdout)

    def test_denied_name_does_not_resolve(self):
        r = in_vm("getent", "ahosts", "other.test", check=False)
        self.assertEqual(r.returncode, 2)  # "key not found"
        out = in_vm("dig", "@127.0.0.1", "other.test").stdout
        self.assertIn("status: NXDOMAIN", out)
        self.assertIn("EDE: 15 (Blocked)", out)
        self.assertIsNone(curl("http://other.test/"))

    def test_an_address_no_answer_vouched_for_is_unreachable(self):
        self.assertIsNone(curl("http://198.18.1.2/"))  # other.test's address, never answered

    def test_a_cname_to_an_unlisted_name_is_reachable(self):
        self.assertEqual(curl("http://alias.allowed.test/"), 200)

    def test_rebinding_answers_are_neither_vouched_nor_reachable(self):
        for name, addr in (("rebind.allowed.test", "10.0.0.1"),
                           ("meta.allowed.test", "169.254.169.254")):
            r = in_vm("getent", "ahosts", name, check=False)
            self.assertNotIn(addr, r.stdout)
            self.assertNotEqual(r.returncode, 0)
            self.assertNotIn(addr, vm_set4())
            self.assertIsNone(curl(f"http://{addr}/"))

    def test_after_the_timeout_the_address_is_unreachable_again(self):
        # TTL 1, --min-ttl 1, --grace 1: the element lives 2 s.
        self.assertEqual(curl("http://short.allowed.test/"), 200)
        self.assertIn("198.18.1.4", vm_set4())
        # The kernel removes the element when its timeout ends (2 s): polled, with a deadline.
        wait_for(lambda: "198.18.1.4" not in vm_set4(), timeout=10, what="the element expiring")
        self.assertIsNone(curl("http://198.18.1.4/"))

    def test_a_flow_someone_outside_opened_gets_no_reply_out(self):
        # A remote that sends first makes a conntrack entry whose replies are "established":
        # the sandbox must not be able to answer it (an echo of chosen data to any address).
        echo = subprocess.Popen(
            ["ip", "netns", "exec", VM, "setpriv", "--reuid=65534", "--regid=65534",
             "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "/usr/bin/python3",
             "-c", ECHO_ONCE], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(echo)
        self.assertEqual(echo.stdout.readline().strip(), "ready")  # bound: the event we need
        got = sh("ip", "netns", "exec", INET, "/usr/bin/python3", "-c", SEND_AND_WAIT,
                 check=False, timeout=30)
        out, _ = echo.communicate(timeout=30)
        self.assertIn("received from 198.18.1.2", out)  # it arrived, and the echo was tried
        self.assertIn("no reply", got.stdout, got.stdout + got.stderr + out)

    def test_dns_to_any_other_server_is_dropped(self):
        r = in_vm("dig", f"@{DNS_IP}", "www.allowed.test", "+tries=1", "+time=2", check=False)
        self.assertNotIn("ANSWER SECTION", r.stdout)
        self.assertNotIn("status: NOERROR", r.stdout)
        r = in_vm("dig", f"@{DNS_IP}", "www.allowed.test", "+tcp", "+tries=1", "+time=2",
                  check=False)
        self.assertNotIn("ANSWER SECTION", r.stdout)

    def test_the_set_holds_exactly_what_was_answered(self):
        # Emptied first (what other tests answered is theirs), then exactly the addresses of
        # the answers given since: no more (nothing unanswered, no CNAME owner's, no 10.x
        # or 169.254.x), no fewer (answers from dnsward's cache are vouched for again).
        in_vm("nft", "flush", "set", "inet", "dnsward", "allowed4")
        in_vm("nft", "flush", "set", "inet", "dnsward", "allowed6")
        self.assertEqual(vm_set4(), set())
        names = {"www.allowed.test": "198.18.1.1", "alias.allowed.test": "198.18.1.3",
                 "r7.udprace.test": "198.18.16.8"}
        for n, a in names.items():
            self.assertIn(a, in_vm("getent", "ahosts", n).stdout)
        for n in ("rebind.allowed.test", "meta.allowed.test", "other.test"):
            in_vm("getent", "ahosts", n, check=False)  # answered without an address, or denied
        self.assertEqual(vm_set4(), set(names.values()))
        self.assertEqual(vm_set(6), set())  # the zone has no AAAA for any of them

    def test_race_resolve_then_connect_at_once_udp_and_tcp(self):
        r = in_vm("/usr/bin/python3", os.path.join(HERE, "race.py"), str(RACE), timeout=600)
        self.assertTrue(r.stdout.startswith(f"fails=0 of {2 * RACE}"), r.stdout + r.stderr)
        self.assertGreaterEqual(len(vm_set4()), 2 * RACE)


if __name__ == "__main__":
    unittest.main()
