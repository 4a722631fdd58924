"""Real microVMs for dnsward's tests: Debian 12's guest kernel (6.1) booted by qemu, with an
initramfs built here from busybox-static, the kernel modules the guest needs and the
programs it runs (dnsward, nft, dig, curl, setpriv, with the shared libraries they load),
on a tap device in a network namespace of its own, beside a stand-in internet.

    ns "host" (the machine a VM runs on)            ns "net" (the internet)
      tapN 100.64.N.1/24, fd64:N::1/64  <-veth->      knot on 198.18.0.53 and .54, HTTP
      routes 198.18/16, 10.99/16, 169.254.169.254,    on all of 198.18.0.0/19 (AnyIP) and
      2001:db8::/32 to "net"; nothing else            2001:db8:1::/64, 10.99.0.1 (private),
                                                       169.254.169.254 (metadata); TLS on
                                                       the same, for a shared front end

Everything is torn down by Vm.stop() and World.stop(), also when a test fails. Every boot has a
deadline; the guest reports on its serial console, one line per check:
    DWVM check NAME ok|fail DETAIL
and ends with `DWVM end rc=N`. Run as a program, this module boots the in-guest guest with a
shell on the console for debugging (scripts/vm-shell)."""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "test", "e2e"))
from harness import race_zone, write_knot_config  # noqa: E402 - shared with the e2e suites
BIN = os.environ.get("DNSWARD_BIN") or os.path.join(ROOT, "build", "dnsward")
CACHE = os.environ.get("DNSWARD_VM_CACHE", "/var/cache/dnsward-vm")

UPSTREAM = "198.18.0.53"      # the guest's dnsward asks this one
OTHER_DNS = "198.18.0.54"     # another resolver the workload must not reach
PRIVATE = "10.99.0.1"         # answered for rebind.allowed.test: never vouched
METADATA = "169.254.169.254"  # answered for meta.allowed.test: never vouched
RACE = 500                    # resolve-then-connect iterations per transport
# A shared front end (a CDN's address): two names on one address, served over TLS (443) and
# HTTP (80) with one certificate naming both. Only FRONT_ALLOWED is on the allowlist; the
# first-flight guard (--sni-guard) must tell them apart on the vouched address.
FRONT = "198.18.4.1"
FRONT_ALLOWED = "shared.allowed.test"
FRONT_OTHER = "neighbour.test"

ZONE = f"""$ORIGIN test.
$TTL 300
@ SOA ns.test. hostmaster.test. 1 3600 600 86400 60
@ NS ns
ns A {UPSTREAM}
www.allowed A 198.18.1.1
www.allowed AAAA 2001:db8:1::1
other A 198.18.1.2
alias.allowed CNAME target.elsewhere
target.elsewhere A 198.18.1.3
short.allowed 1 A 198.18.1.4
rebind.allowed A {PRIVATE}
meta.allowed A {METADATA}
{FRONT_ALLOWED.removesuffix(".test")} A {FRONT}
{FRONT_OTHER.removesuffix(".test")} A {FRONT}
""" + race_zone(RACE)

# Host mode (test_vm_host.py): one dnsward on the host, one sandbox per guest, each allowed
# only its own name, each name on an address of its own that the internet serves.
HOST_SANDBOXES = {
    "a": ("198.18.2.1", "2001:db8:1::2:1"),
    "b": ("198.18.2.2", "2001:db8:1::2:2"),
    "c": ("198.18.2.3", "2001:db8:1::2:3"),
}
HOST_ZONE = "".join(f"{k}.sandbox A {v4}\n{k}.sandbox AAAA {v6}\n"
                    for k, (v4, v6) in HOST_SANDBOXES.items())
ZONE += HOST_ZONE

ALLOW = f"""www.allowed.test
alias.allowed.test
short.allowed.test
rebind.allowed.test
meta.allowed.test
{FRONT_ALLOWED}
*.udprace.test
*.tcprace.test
"""

# The modules a guest loads at boot, each with what it depends on (modules.dep) and what it
# asks for first (modules.softdep "pre:"), in that order. On-demand loading is off in the
# guest (kernel.modprobe points nowhere), so this list is exactly what the guest has.
#   NET: virtio transport (PCI on q35) and network, 9p for the host's root (python e2e
#        cases), overlay over it, veth and tun for the namespaces those cases make.
#   RULESET: what `dnsward nft-rules` needs (the README lists it; the in-guest check proves
#        that this list is enough).
#   LATER: what the host-mode and SNI issues use (queue verdicts, conntrack over netlink,
#        redirection; nft_socket, which the guard's ruleset no longer uses), loaded so that the guest shows they load
#        on 6.1.
NET = ["virtio_pci", "virtio_net", "9pnet_virtio", "9p", "overlay", "veth", "tun"]
RULESET = ["nf_tables", "nft_ct", "nft_reject_inet", "nft_log", "nf_log_syslog"]
LATER = ["nft_queue", "nfnetlink_queue", "nf_conntrack_netlink", "nft_redir", "nft_nat",
         "nft_chain_nat", "nft_socket"]
# Loaded late by the in-guest check, to show that serve notices a ruleset that failed to load.
LOG_MODULES = ["nft_log", "nf_log_syslog"]

# Programs copied into the initramfs with every shared library ldd names.
PROGRAMS = ["nft", "dig", "curl", "setpriv"]


class CannotRun(Exception):
    """This machine cannot boot guests (no qemu, no kernel in the cache, not root): the test
    is reported as skipped, never as passed."""


def sh(*cmd, check=True, timeout=60, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr.strip()}")
    return r


def kernel_dir():
    """The unpacked guest kernel (test/vm/fetch-kernel puts it there)."""
    if not os.path.isdir(CACHE):
        raise CannotRun(f"cannot run here: no guest kernel in {CACHE} "
                        "(scripts/install-deps vm runs test/vm/fetch-kernel)")
    dirs = sorted(d for d in os.listdir(CACHE) if os.path.exists(os.path.join(CACHE, d, "ready")))
    if not dirs:
        raise CannotRun(f"cannot run here: no guest kernel in {CACHE} "
                        "(scripts/install-deps vm runs test/vm/fetch-kernel)")
    root = os.path.join(CACHE, dirs[-1], "root")
    version = os.listdir(os.path.join(root, "lib/modules"))[0]
    return root, version


def require():
    if os.geteuid() != 0:
        raise CannotRun("cannot run here: needs root (namespaces, taps)")
    missing = [p for p in ["qemu-system-x86_64", "ip", "knotd", "cpio", "openssl", *PROGRAMS]
               if shutil.which(p) is None]
    if not os.path.exists("/usr/bin/busybox"):
        missing.append("busybox (busybox-static)")
    if missing:
        raise CannotRun(f"cannot run here: missing {', '.join(missing)}")
    if not os.path.exists("/dev/net/tun"):
        raise CannotRun("cannot run here: no /dev/net/tun")
    kernel_dir()


def module_order(root, version, names):
    """Module files to insmod, dependencies (and soft "pre:" dependencies) first."""
    mdir = os.path.join(root, "lib/modules", version)
    deps, paths = {}, {}

    def key(path):
        return os.path.basename(path).split(".ko")[0].replace("-", "_")

    with open(os.path.join(mdir, "modules.dep")) as f:
        for line in f:
            path, rest = line.split(":", 1)
            deps[key(path)] = [key(d) for d in rest.split()]
            paths[key(path)] = path
    soft = {}
    with open(os.path.join(mdir, "modules.softdep")) as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and parts[0] == "softdep":
                pre = []
                for w in parts[2:]:
                    if w == "post:":
                        break
                    if w != "pre:":
                        pre.append(w.replace("-", "_"))
                soft[parts[1].replace("-", "_")] = pre
    aliases = {}
    with open(os.path.join(mdir, "modules.alias")) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[0] == "alias":
                aliases.setdefault(parts[1].replace("-", "_"), []).append(parts[2])
    order = []

    def resolve(name):
        """A soft dependency may name an alias ("crc32c"): take its generic C
        implementation, which needs no CPU feature (TCG's CPU lacks SSE4.2)."""
        if name in paths:
            return name
        choices = [m for m in aliases.get(name, []) if m in paths]
        generic = [m for m in choices if m.endswith("_generic")]
        return (generic or choices or [name])[0]

    def add(name, depth=0):
        if depth > 50:
            raise RuntimeError(f"module dependency loop at {name}")
        if name in order or name not in paths:
            return
        for d in soft.get(name, []):
            add(resolve(d), depth + 1)
        # modules.dep lists the whole closure, the direct ones first: walk it backwards so
        # that virtio_ring comes before virtio, which comes before virtio_net.
        for d in reversed(deps[name]):
            add(d, depth + 1)
        if name not in order:
            order.append(name)

    for n in names:
        if n not in paths:
            raise RuntimeError(f"no module {n} in {mdir}")
        add(n)
    return [(n, paths[n]) for n in order]


def libraries(program):
    """The shared libraries a program loads (ldd), with the dynamic loader."""
    out = sh("ldd", program, check=False).stdout  # a static program has none
    libs = []
    for line in out.splitlines():
        m = re.search(r"(/\S+)", line.split("=>")[-1])
        if m and os.path.exists(m.group(1)):
            libs.append(m.group(1))
    return libs


def build_initramfs(dest, binary=BIN):
    """An uncompressed newc cpio: busybox, the modules (with /modules.load listing them in
    load order), the programs with their libraries, the guest's scripts and the
    allowlist. Built per run (about a second)."""
    root, version = kernel_dir()
    tree = tempfile.mkdtemp(prefix="dnsward-initramfs-")
    os.chmod(tree, 0o755)  # the guest's "/": mkdtemp made it 0700
    try:
        for d in ("bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "run",
                  "etc", "host", "sysroot", "var/lib/dnsward"):
            os.makedirs(os.path.join(tree, d), exist_ok=True)
        # Debian's layout (usrmerge): /lib and /lib64 are links into /usr, so each library is
        # stored once, under its real name, with its soname as a link.
        for d in ("lib", "lib64"):
            os.makedirs(os.path.join(tree, "usr", d), exist_ok=True)
            os.symlink(f"usr/{d}", os.path.join(tree, d))
        shutil.copy("/usr/bin/busybox", os.path.join(tree, "bin/busybox"))
        files = set(libraries("/usr/bin/busybox"))  # none when static (busybox-static)
        mods = module_order(root, version, NET + RULESET + LATER)
        load = []
        for name, rel in mods:
            dst = os.path.join(tree, "lib/modules", version, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy(os.path.join(root, "lib/modules", version, rel), dst)
            load.append(f"{name} /lib/modules/{version}/{rel}\n")
        with open(os.path.join(tree, "modules.load"), "w") as f:
            f.writelines(load)
        progs = [shutil.which(p) for p in PROGRAMS] + [binary]
        for p in progs:
            files.add(os.path.realpath(p))
            files.update(libraries(p))
        for p in progs:
            dst = os.path.join(tree, "usr/bin", os.path.basename(p))
            shutil.copy(p, dst)
        for lib in files - {os.path.realpath(p) for p in progs}:
            real = os.path.realpath(lib)
            usr = lambda path: path if path.startswith("/usr/") else "/usr" + path
            dst = os.path.join(tree, usr(real).lstrip("/"))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if not os.path.exists(dst):
                shutil.copy(real, dst)
            link = os.path.join(tree, usr(lib).lstrip("/"))
            if link != dst and not os.path.lexists(link):
                os.makedirs(os.path.dirname(link), exist_ok=True)
                os.symlink(os.path.basename(real) if os.path.dirname(link) == os.path.dirname(dst)
                           else usr(real), link)
        guest = os.path.join(HERE, "guest")
        for f in os.listdir(guest):
            shutil.copy(os.path.join(guest, f), os.path.join(tree, f))
            os.chmod(os.path.join(tree, f), 0o755)
        with open(os.path.join(tree, "world.allow"), "w") as f:
            f.write(ALLOW)
        os.chmod(os.path.join(tree, "world.allow"), 0o644)
        sh("sh", "-c", f"cd {tree} && find . | cpio -o -H newc --quiet > {dest}", timeout=120)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    return os.path.join(root, "boot", f"vmlinuz-{version}")


class World:
    """The two namespaces, the veth between them, and the internet's servers."""

    def __init__(self, tag=None):
        self.tag = tag or f"{os.getpid() % 100000}"
        self.host, self.net = f"dwvmh{self.tag}", f"dwvmn{self.tag}"
        self.dir = tempfile.mkdtemp(prefix="dnsward-vmworld-")
        os.chmod(self.dir, 0o755)
        self.procs = []
        self.taps = []
        self.log = None
        try:
            self._make()
        except BaseException:
            self.stop()
            raise

    def in_host(self, *cmd, **kw):
        return sh("ip", "netns", "exec", self.host, *cmd, **kw)

    def in_net(self, *cmd, **kw):
        return sh("ip", "netns", "exec", self.net, *cmd, **kw)

    def _make(self):
        for ns in (self.host, self.net):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        h, n = f"dwh{self.tag}", f"dwn{self.tag}"
        sh("ip", "link", "add", h, "netns", self.host, "type", "veth", "peer", "name", n,
           "netns", self.net)
        H, N = self.in_host, self.in_net
        H("ip", "addr", "add", "198.19.255.1/30", "dev", h)
        H("ip", "addr", "add", "fd99::1/64", "dev", h, "nodad")
        N("ip", "addr", "add", "198.19.255.2/30", "dev", n)
        N("ip", "addr", "add", "fd99::2/64", "dev", n, "nodad")
        H("ip", "link", "set", h, "up")
        N("ip", "link", "set", n, "up")
        H("sysctl", "-qw", "net.ipv4.ip_forward=1")
        H("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        # "host" reaches the internet's ranges and nothing else: no default route.
        for dst in ("198.18.0.0/16", "10.99.0.0/16", f"{METADATA}/32"):
            H("ip", "route", "add", dst, "via", "198.19.255.2")
        H("ip", "-6", "route", "add", "2001:db8::/32", "via", "fd99::2")
        N("ip", "route", "add", "100.64.0.0/16", "via", "198.19.255.1")
        N("ip", "-6", "route", "add", "fd64::/16", "via", "fd99::1")
        # The internet answers on whole ranges (AnyIP): every race name has its own address.
        for dst in ("198.18.0.0/19", f"{PRIVATE}/32", f"{METADATA}/32"):
            N("ip", "route", "add", "local", dst, "dev", "lo")
        N("ip", "-6", "route", "add", "local", "2001:db8:1::/64", "dev", "lo")

        conf = write_knot_config(self.dir, ZONE, [f"{UPSTREAM}@53", f"{OTHER_DNS}@53"])
        self.log = log = open(os.path.join(self.dir, "servers.log"), "w")
        self._start(self.net, ["knotd", "-c", conf], log)
        www = os.path.join(self.dir, "www")
        os.makedirs(www)
        with open(os.path.join(www, "index.html"), "w") as f:
            f.write("hello from the internet\n")
        # One server, both families (IPV6_V6ONLY off), on every address of the namespace.
        self._start(self.net, ["/usr/bin/python3", "-c", HTTP_SERVER, www], log)
        # TLS on 443, the same way, with one self-signed certificate naming both names of the
        # shared front end: the guests trust it (curl --cacert dw.cacert, over virtio-9p).
        self.cert = os.path.join(self.dir, "front.pem")
        key = os.path.join(self.dir, "front.key")
        sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
           "-nodes", "-keyout", key, "-out", self.cert, "-days", "2",
           "-subj", f"/CN={FRONT_ALLOWED}",
           "-addext", f"subjectAltName=DNS:{FRONT_ALLOWED},DNS:{FRONT_OTHER}")
        os.chmod(self.cert, 0o644)
        # The guard's tests' shared front end: TLS for any name its certificate holds.
        self._start(self.net, ["/usr/bin/python3", TLS_FRONT, self.cert, key], log)
        deadline = time.monotonic() + 20
        while True:
            ok = all(self.in_net("curl", "-s", "-o", "/dev/null", "--noproxy", "*",
                                 "--max-time", "2", "--cacert", self.cert,
                                 "--resolve", f"{FRONT_ALLOWED}:443:{FRONT}", url,
                                 check=False).returncode == 0
                     for url in ("http://198.18.1.1/", "http://[2001:db8:1::1]/",
                                 f"https://{FRONT_ALLOWED}/"))
            dns = self.in_net("dig", f"@{UPSTREAM}", "+short", "+time=1", "+tries=1",
                              "www.allowed.test", check=False).stdout.strip()
            if ok and dns == "198.18.1.1":
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the internet's servers did not come up: " +
                                   open(os.path.join(self.dir, "servers.log")).read())
            time.sleep(0.1)  # paces a bounded poll for the servers; never a synchronisation

    def _start(self, ns, cmd, log):
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        self.procs.append(subprocess.Popen(["ip", "netns", "exec", ns, *cmd], stdout=log,
                                           stderr=subprocess.STDOUT, env=env))

    def add_tap(self, index):
        """A tap in "host" for guest `index`: host side 100.64.index.1, guest .2."""
        tap = f"dwtap{index}"
        self.in_host("ip", "tuntap", "add", "dev", tap, "mode", "tap")
        self.in_host("ip", "addr", "add", f"100.64.{index}.1/24", "dev", tap)
        self.in_host("ip", "addr", "add", f"fd64:{index}::1/64", "dev", tap, "nodad")
        self.in_host("ip", "link", "set", tap, "up")
        self.taps.append(tap)
        return tap

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []
        if self.log:
            self.log.close()
        for ns in (self.host, self.net):
            sh("ip", "netns", "delete", ns, check=False)  # takes its taps and veth with it
        shutil.rmtree(self.dir, ignore_errors=True)


class HostDnsward:
    """Host mode in the World's "host" namespace: the ruleset of `dnsward nft-rules --host`
    loaded, then one `dnsward serve --host` (as root there) for every guest's tap, driven
    over its control socket with `dnsward ctl`. stop() ends only the serve it started.
    guard: options given to both commands (--sni-guard and its own); with --sni-guard the
    queue backend is the host kernel's (nftables' own queue, else the xt queue that
    `nft-rules --print iptables|ip6tables` prints, loaded through iptables-nft)."""

    PORT = 5353
    IFACES = "dwtap*"

    def __init__(self, world, binary=BIN, extra=(), guard=()):
        self.world, self.bin = world, binary
        self.control = os.path.join(world.dir, "control")
        self.log_path = os.path.join(world.dir, "dnsward-host.log")
        self.rules_path = os.path.join(world.dir, "host.nft")
        self.proc = None
        self.log = None
        common = ["--sandbox-ifaces", self.IFACES, "--listen", f"0.0.0.0:{self.PORT}",
                  "--listen", f"[::]:{self.PORT}", "--upstream", UPSTREAM, *guard]
        self.backend = None
        if "--sni-guard" in guard:
            probe = "table inet dwprobe { chain c { type filter hook forward priority 0; queue num 1; } }\n"
            self.backend = "nft" if world.in_host("nft", "-c", "-f", "-", input=probe,
                                                  check=False).returncode == 0 else "xt"
            common += ["--queue-backend", self.backend]
        rules = sh(binary, "nft-rules", "--host", *common)
        with open(self.rules_path, "w") as f:
            f.write(rules.stdout)
        world.in_host("nft", "-f", self.rules_path)
        if self.backend == "xt":
            for tool in ("iptables", "ip6tables"):
                xt = sh(binary, "nft-rules", "--host", *common, "--print", tool).stdout
                world.in_host(f"{tool}-nft-restore", "--noflush", input=xt)
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", world.host, binary, "serve", "--host", *common,
             "--control", self.control, "--user", "root", *extra],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while self.ctl("list", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dnsward serve --host did not come up: {self.text()}")
            time.sleep(0.1)  # paces a bounded poll for the control socket

    def ctl(self, *args, check=True):
        """`dnsward ctl` in the host namespace; its reply (JSON) is the result's stdout."""
        return self.world.in_host(self.bin, "ctl", "--control", self.control, *args,
                                  check=check)

    def text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log:
            self.log.close()
            self.log = None


TLS_FRONT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "tls_front.py")


HTTP_SERVER = r"""
import http.server, socket, sys, functools
class S(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
class H(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass
S(("::", 80), functools.partial(H, directory=sys.argv[1])).serve_forever()
"""


_accel = None


def accel(kernel, initrd):
    """KVM when /dev/kvm is usable, otherwise TCG. These machines are microVMs without nested
    virtualisation: /dev/kvm exists but a KVM guest hangs in early boot. So a guest that only
    says it is up is booted under KVM with a short deadline; if it does not say so, TCG."""
    global _accel
    if _accel:
        return _accel
    _accel = "tcg"
    if os.environ.get("DNSWARD_VM_ACCEL") in ("tcg", "kvm"):
        _accel = os.environ["DNSWARD_VM_ACCEL"]
    elif os.access("/dev/kvm", os.R_OK | os.W_OK):
        cmd = qemu_cmd("kvm", kernel, initrd, "dw.scenario=probe", memory=256)
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
            if "DWVM end rc=0" in r.stdout:
                _accel = "kvm"
        except subprocess.TimeoutExpired:
            pass  # subprocess.run killed it (its own child, by PID)
    print(f"vm: accelerator {_accel}", file=sys.stderr, flush=True)
    return _accel


def qemu_cmd(accel_name, kernel, initrd, append, memory=512, tap=None, index=0, share=False,
             console="stdio"):
    # q35, not microvm: under TCG on a busy machine the kernel's TSC calibration against the
    # PIT can fail, and microvm has no HPET or ACPI PM timer to fall back on, so the guest
    # hung in early boot ("tsc: Unable to calibrate against PIT ... Marking TSC unstable",
    # then nothing; seen in 1 boot of 3 with the other core loaded). q35 has both ("using
    # HPET reference calibration") and boots as fast here. reboot=t: the guest's reboot is
    # a triple fault, which -no-reboot turns into qemu's exit (microvm's ACPI reset left
    # qemu running after "reboot: machine restart").
    cmd = ["qemu-system-x86_64", "-M", "q35", "-accel", accel_name,
           "-m", str(memory), "-smp", "1", "-nodefaults", "-no-user-config", "-nographic",
           "-no-reboot", "-kernel", kernel, "-initrd", initrd,
           "-append", f"console=ttyS0 panic=-1 reboot=t quiet loglevel=4 {append}"]
    # TCG's default CPU model: "-cpu max" stalled this kernel in early boot under TCG.
    cmd += ["-cpu", "host"] if accel_name == "kvm" else []
    cmd += ["-serial", "mon:stdio" if console == "interactive" else "stdio"]
    if tap:
        cmd += ["-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
                "-device", f"virtio-net-pci,netdev=n0,mac=52:54:00:64:00:{index:02x}"]
    if share:
        # The host's root, read only: the guest runs the e2e suites' python from it.
        cmd += ["-fsdev", "local,id=h,path=/,security_model=none,readonly=on,multidevs=remap",
                "-device", "virtio-9p-pci,fsdev=h,mount_tag=host"]
    return cmd


class Vm:
    """One guest on its own tap, its console captured to a file, bounded by a deadline."""

    def __init__(self, world, index, kernel, initrd, scenario, memory=512, share=False,
                 extra=""):
        self.world, self.index = world, index
        self.tap = world.add_tap(index)
        self.console_path = os.path.join(world.dir, f"console{index}.log")
        append = (f"dw.scenario={scenario} dw.ip4=100.64.{index}.2/24 dw.gw4=100.64.{index}.1 "
                  f"dw.ip6=fd64:{index}::2/64 dw.gw6=fd64:{index}::1 dw.upstream={UPSTREAM} "
                  f"dw.other={OTHER_DNS} dw.race={RACE} dw.root={ROOT} dw.cacert={world.cert} "
                  f"dw.front={FRONT} dw.front_allowed={FRONT_ALLOWED} "
                  f"dw.front_other={FRONT_OTHER} {extra}")
        cmd = qemu_cmd(accel(kernel, initrd), kernel, initrd, append, memory=memory,
                       tap=self.tap, index=index, share=share)
        self.console = open(self.console_path, "wb")
        self.ended = threading.Event()
        self.proc = subprocess.Popen(["ip", "netns", "exec", world.host, *cmd],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.started = time.monotonic()

    def _read(self):
        """Copies the console to its file and notes the guest's last line: qemu is expected
        to exit at the guest's reboot, but is not trusted to."""
        for line in self.proc.stdout:
            self.console.write(line)
            self.console.flush()
            if b"DWVM end rc=" in line:
                self.ended.set()
        self.ended.set()  # qemu exited (or was killed): nothing more will come

    def text(self):
        with open(self.console_path, errors="replace") as f:
            return f.read()

    def wait(self, timeout):
        """Waits until the guest says it is done (or qemu exits), at most `timeout` seconds,
        then gives qemu 15 s to exit before killing it. Returns the console text."""
        self.ended.wait(timeout)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(timeout=15)
        self.seconds = time.monotonic() - self.started
        self.console.close()
        return self.text()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(timeout=15)
        if not self.console.closed:
            self.console.close()


def results(text):
    """{check: (ok, detail)} from the console's DWVM lines, and the end line's rc (or None)."""
    checks, rc = {}, None
    for line in text.splitlines():
        m = re.search(r"DWVM check (\S+) (ok|fail) ?(.*)$", line)
        if m:
            # A check reported twice keeps its failure.
            prev = checks.get(m.group(1))
            if prev is None or prev[0]:
                checks[m.group(1)] = (m.group(2) == "ok", m.group(3))
        m = re.search(r"DWVM end rc=(\d+)", line)
        if m:
            rc = int(m.group(1))
    return checks, rc


def excerpt(text, needle=None, lines=60):
    """The console's last lines, or those around a check's line: for failure messages."""
    all_lines = text.splitlines()
    if needle:
        for i, line in enumerate(all_lines):
            if needle in line:
                return "\n".join(all_lines[max(0, i - lines // 2): i + 5])
    return "\n".join(all_lines[-lines:])


def main():
    """scripts/vm-shell: the in-guest guest, set up as in the test, with a shell on the
    console (serial: Ctrl-A X quits qemu)."""
    try:
        require()
    except CannotRun as e:
        print(e, file=sys.stderr)
        return 1
    world = World()
    tmp = tempfile.mkdtemp(prefix="dnsward-vmshell-")
    try:
        initrd = os.path.join(tmp, "initrd")
        kernel = build_initramfs(initrd)
        world.add_tap(1)
        append = (f"dw.scenario=shell dw.ip4=100.64.1.2/24 dw.gw4=100.64.1.1 "
                  f"dw.ip6=fd64:1::2/64 dw.gw6=fd64:1::1 dw.upstream={UPSTREAM} "
                  f"dw.other={OTHER_DNS} dw.race={RACE} dw.root={ROOT}")
        cmd = qemu_cmd(accel(kernel, initrd), kernel, initrd, append, tap="dwtap1", index=1,
                       memory=768, console="interactive")
        print("vm-shell: in the guest, try `dig www.allowed.test`, `dig other.test`, "
              "`curl http://www.allowed.test/`; `reboot -f` or Ctrl-A X ends it",
              file=sys.stderr)
        return subprocess.call(["ip", "netns", "exec", world.host, *cmd])
    finally:
        world.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
