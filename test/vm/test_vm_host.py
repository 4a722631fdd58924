"""Host mode in real microVMs: ONE `dnsward serve --host` in the World's "host" namespace
enforces each guest's own allowlist on its tap (test/vm/vmlib.py draws the World), where
nothing the guest does, root included, can widen it. The guests run no dnsward and no
ruleset (test/vm/guest/host_guest.sh).

Three guests boot at once, each a sandbox with its own policy (only its own name,
ROLE.sandbox.test, on an address of its own):
  - A (vm-a) and B (vm-b), registered with `dnsward ctl add` before they boot: each reaches
    its own name, gets NXDOMAIN for the other's and cannot reach what the other's lookup
    vouched; root flushes the guest's ruleset, points resolv.conf elsewhere and asks
    8.8.8.8 and the internet's resolvers directly, and still reaches nothing unvouched;
    spoofing the other guest's source address gets nothing through; then A is removed with
    `ctl remove` and is cut off at once, while B goes on;
  - C (vm-c), registered only once A and B are running: before it, its tap gets nothing;
    after it, its own name works.
dnsward runs the first-flight guard (--sni-guard, on TLS port 443 only: the checks above use
plain HTTP on port 80 with addresses for Host). A's list also has one name of the shared front
end (vmlib.FRONT), B's the other: both guests vouch the same address, and each may name only
its own over TLS there; naming the other guest's is reset.
The host orders the guests' steps: a guest prints `DWVM wait STEP` and polls (bounded) for
the file ROLE.STEP in a directory of the host's that it sees over virtio-9p; the host does
its part (a registration, a removal, reading counters), then creates that file. Checks made
on the host (the sets, packet counters) are tests of their own, as are the guests'."""
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import unittest

import vmlib

BOOT_DEADLINE = int(os.environ.get("DNSWARD_VM_DEADLINE", "420"))

# role: (tap index, sandbox id, what its resolv.conf names, whose source address it spoofs)
GUESTS = {
    "a": (1, "vm-a", vmlib.OTHER_DNS, "b"),
    "b": (2, "vm-b", "8.8.8.8", "a"),
    "c": (3, "vm-c", vmlib.OTHER_DNS, "a"),
}

# The guard on the shared front end (A and B): the same address vouched for both guests.
GUARD = """shared_front_own_name_resolves shared_front_own_name_passes_the_guard
shared_front_name_bound_for_the_other_sandbox_is_reset""".split()
# Each guest's name on the front end (its list has it, the other's has the other).
FRONT_NAMES = {"a": vmlib.FRONT_ALLOWED, "b": vmlib.FRONT_OTHER}
OWN = """own_name_resolves own_name_connects own_name_connects_over_ipv6
status_names_its_own_sandbox other_guests_name_is_nxdomain
other_guests_name_does_not_resolve_for_curl other_guests_vouched_address_is_unreachable""".split()
ROOT_AND_SPOOF = """other_guests_vouched_address_is_unreachable_over_ipv6
root_own_name_still_resolves_whatever_resolv_conf_names root_direct_query_gets_dnswards_answer
root_other_guests_vouched_address_is_unreachable root_unvouched_address_is_unreachable
root_hard_coded_address_is_unreachable root_metadata_address_is_unreachable
root_private_address_is_unreachable root_dns_over_tls_port_is_dropped
spoofed_source_gets_no_dns spoofed_source_cannot_reach_the_others_vouched_address
unregistered_source_cannot_reach_its_own_vouched_address unregistered_source_gets_no_dns
own_address_still_connects_from_its_own_source""".split()
# Every check each guest must report: a check it never reports fails.
CHECKS = {
    "a": OWN + GUARD + ROOT_AND_SPOOF + """held_connection_gets_answers_before_removal
removed_guest_cannot_connect_to_its_own_address
removed_guest_gets_no_dns_answer removed_guest_loses_its_established_connection""".split(),
    "b": OWN + GUARD + ROOT_AND_SPOOF + """own_name_still_connects_after_the_others_changed
own_name_still_resolves_after_the_others_changed""".split(),
    "c": ["unregistered_guest_gets_no_dns", "unregistered_guest_reaches_nothing"] + OWN,
}
# What the host checks, in the kernel's sets and counters and in ctl's replies.
HOST_CHECKS = """ctl_add_registers_a_and_b_before_they_boot
each_guests_lookup_opens_only_its_own_pairs spoofed_packets_from_a_reach_neither_forward_nor_input
spoofed_packets_from_b_reach_neither_forward_nor_input
unregistered_guest_traffic_reaches_neither_forward_nor_input ctl_add_while_others_run
ctl_remove_deletes_the_pairs_and_elements_of_the_sandbox no_pair_ever_crosses_guests
denied_queries_are_logged_with_their_sandbox dnsward_ran_throughout
guarded_host_ruleset_is_in_force guard_lets_each_sandbox_name_its_own_front_name
guard_resets_each_sandbox_naming_the_others_front_name""".split()

# Counters of the test's own, outside dnsward's table: in prerouting before dnsward's
# anti-spoofing ("sent": the guest did send such packets) and in forward and input after
# dnsward's chains ("passed": a packet dnsward's ruleset let through). Only IPv4 and the
# guest's own IPv6 address count: IPv6 link traffic (ND, MLD) is the link's.
COUNTERS = """table inet dwtest {
  counter sent_a {}
  counter passed_a {}
  counter sent_b {}
  counter passed_b {}
  counter sent_c {}
  counter passed_c {}
  chain count_pre {
    type filter hook prerouting priority -400; policy accept;
    iifname "dwtap1" ip saddr != 100.64.1.2 counter name "sent_a"
    iifname "dwtap2" ip saddr != 100.64.2.2 counter name "sent_b"
    iifname "dwtap3" ip saddr 100.64.3.2 counter name "sent_c"
    iifname "dwtap3" ip6 saddr fd64:3::2 counter name "sent_c"
  }
  chain count_forward {
    type filter hook forward priority 100; policy accept;
    iifname "dwtap1" ip saddr != 100.64.1.2 counter name "passed_a"
    iifname "dwtap2" ip saddr != 100.64.2.2 counter name "passed_b"
    iifname "dwtap3" ip saddr 100.64.3.2 counter name "passed_c"
    iifname "dwtap3" ip6 saddr fd64:3::2 counter name "passed_c"
  }
  chain count_input {
    type filter hook input priority 100; policy accept;
    iifname "dwtap1" ip saddr != 100.64.1.2 counter name "passed_a"
    iifname "dwtap2" ip saddr != 100.64.2.2 counter name "passed_b"
    iifname "dwtap3" ip saddr 100.64.3.2 counter name "passed_c"
    iifname "dwtap3" ip6 saddr fd64:3::2 counter name "passed_c"
  }
}
"""

consoles = {}
seconds = {}
host = {}        # host check -> (ok, detail)
host_log = ""    # dnsward's log, for failure messages
timeline = []    # (seconds since boot, what the host did), for failure messages


def guest_addr(role):
    return f"100.64.{GUESTS[role][0]}.2"


def note(name, ok, detail):
    prev = host.get(name)
    if prev is None or prev[0]:  # a check made twice keeps its failure
        host[name] = (bool(ok), str(detail)[:1500])


class Host:
    """The host's side of the scenario: dnsward, its sandboxes, the guests' handshakes."""

    def __init__(self, world, dw):
        self.world, self.dw = world, dw
        self.sync = os.path.join(world.dir, "sync")
        os.makedirs(self.sync)
        os.chmod(self.sync, 0o755)
        self.released = set()
        self.t0 = time.monotonic()

    def log(self, what):
        timeline.append((time.monotonic() - self.t0, what))

    def allowlist(self, role):
        path = os.path.join(self.world.dir, f"{role}.allow")
        with open(path, "w") as f:
            # Plain HTTP on port 80, which the guard leaves unjudged here (--http-ports 8080):
            # with the guard on, a vouched pair is open only on the guarded ports and those
            # its entry names (ports=).
            f.write(f'{role}.sandbox.test ports=80 why="the host checks\' plain HTTP on port 80"\n')
            if role in FRONT_NAMES:
                f.write(f"{FRONT_NAMES[role]}\n")
        return path

    def add(self, role):
        index, sid, _, _ = GUESTS[role]
        r = self.dw.ctl("add", sid, "--addr", guest_addr(role), "--addr", f"fd64:{index}::2",
                        "--iface", f"dwtap{index}", "--allowlist", self.allowlist(role),
                        "--no-default", check=False)
        self.log(f"ctl add {sid}: rc={r.returncode} {r.stdout.strip()} {r.stderr.strip()}")
        return r

    def nft(self, *args):
        return self.world.in_host("nft", *args, check=False).stdout

    def counter(self, name):
        m = re.search(r"packets (\d+)", self.nft("list", "counter", "inet", "dwtest", name))
        return int(m.group(1)) if m else -1

    def pairs(self):
        """The (guest . destination) elements of allowed4 and allowed6."""
        out = set()
        for s in ("allowed4", "allowed6"):
            text = self.nft("list", "set", "inet", "dnsward", s)
            out.update(re.findall(r"([0-9a-f:.]+) \. ([0-9a-f:.]+)", text))
        return out

    def crossing(self):
        """Pairs that open one guest's name for another guest: each name's addresses may be
        paired only with its own guest's addresses."""
        bad = []
        for guest, dst in self.pairs():
            for role, (index, _, _, _) in GUESTS.items():
                v4, v6 = vmlib.HOST_SANDBOXES[role]
                if dst in (v4, v6) and guest not in (guest_addr(role), f"fd64:{index}::2"):
                    bad.append(f"{guest} . {dst}")
        return bad

    def release(self, role, step):
        if (role, step) in self.released:
            return
        self.released.add((role, step))
        with open(os.path.join(self.sync, f"{role}.{step}"), "w") as f:
            f.write("go\n")
        self.log(f"released {role}.{step}")

    # --- What the host does at each step --------------------------------------------------
    def on_resolved(self):
        pairs = self.pairs()
        want = {(guest_addr(r), vmlib.HOST_SANDBOXES[r][0]) for r in ("a", "b")}
        missing = want - pairs
        bad = self.crossing()
        note("each_guests_lookup_opens_only_its_own_pairs", not missing and not bad,
             f"missing={sorted(missing)} crossing={bad} pairs={sorted(pairs)}")

    def on_register_c(self):
        sent, passed = self.counter("sent_c"), self.counter("passed_c")
        note("unregistered_guest_traffic_reaches_neither_forward_nor_input",
             sent > 0 and passed == 0, f"sent={sent} passed={passed} (before ctl add vm-c)")
        r = self.add("c")
        listed = self.dw.ctl("list", check=False).stdout
        note("ctl_add_while_others_run", r.returncode == 0 and "vm-c" in listed
             and "vm-a" in listed and "vm-b" in listed,
             f"add: {r.stdout.strip()} {r.stderr.strip()}; list: {listed.strip()}")

    def on_spoofed(self, role):
        sent, passed = self.counter(f"sent_{role}"), self.counter(f"passed_{role}")
        note(f"spoofed_packets_from_{role}_reach_neither_forward_nor_input",
             sent > 0 and passed == 0, f"sent={sent} passed={passed}")

    def on_remove_a(self):
        before = [p for p in self.pairs() if p[0] in (guest_addr("a"), "fd64:1::2")]
        t = time.monotonic()
        r = self.dw.ctl("remove", "vm-a", check=False)
        took = time.monotonic() - t
        self.log(f"ctl remove vm-a: rc={r.returncode} {r.stdout.strip()} {r.stderr.strip()} "
                 f"in {took:.2f} s")
        after = [p for p in self.pairs() if p[0] in (guest_addr("a"), "fd64:1::2")]
        spoof = self.nft("list", "set", "inet", "dnsward", "sandboxes4") + \
            self.nft("list", "set", "inet", "dnsward", "sandboxes6")
        listed = self.dw.ctl("list", check=False).stdout
        note("ctl_remove_deletes_the_pairs_and_elements_of_the_sandbox",
             r.returncode == 0 and before and not after and "dwtap1" not in spoof
             and "vm-a" not in listed,
             f"reply={r.stdout.strip()} elements before={sorted(before)} after={sorted(after)} "
             f"dwtap1 pair left={'dwtap1' in spoof} list={listed.strip()}")

    def run(self, vms, deadline):
        """Watches the consoles and answers each guest's `DWVM wait STEP` once its condition
        holds; a guest that ended without reaching a step releases whoever waits for it."""
        def reached(role, step):
            return role not in vms or f"DWVM wait {step}" in texts[role] \
                or vms[role].ended.is_set()

        def waiting(role, step):
            return role in vms and f"DWVM wait {step}" in texts[role] \
                and (role, step) not in self.released

        while time.monotonic() < deadline and not all(v.ended.is_set() for v in vms.values()):
            texts = {r: v.text() for r, v in vms.items()}
            for role, v in vms.items():
                if v.ended.is_set() and role not in seconds:
                    seconds[role] = time.monotonic() - v.started
            if (waiting("a", "resolved") or waiting("b", "resolved")) \
                    and reached("a", "resolved") and reached("b", "resolved"):
                self.on_resolved()
                self.release("a", "resolved")
                self.release("b", "resolved")
            if waiting("c", "registered") and reached("a", "resolved") \
                    and reached("b", "resolved"):
                self.on_register_c()
                self.release("c", "registered")
            for role in ("a", "b"):
                if waiting(role, "spoofed"):
                    self.on_spoofed(role)
                    self.release(role, "spoofed")
            if waiting("a", "remove"):
                self.on_remove_a()
                self.release("a", "remove")
            if waiting("b", "final") and ("a" not in vms or vms["a"].ended.is_set()) \
                    and ("c" not in vms or vms["c"].ended.is_set()):
                self.release("b", "final")
            time.sleep(0.2)  # paces a bounded poll of the consoles


def log_lines(text):
    """dnsward's log: each guest's denied names are logged with its own sandbox id, the
    other guests' names and nothing else."""
    denied = {}
    unnamed = []
    for line in text.splitlines():
        if "event=denied" not in line:
            continue
        m = re.search(r"\bsandbox=(\S+)", line)
        n = re.search(r'\bname="?([^" ]+)', line)
        if not m or not n:
            unnamed.append(line)
            continue
        denied.setdefault(m.group(1), set()).add(n.group(1).rstrip(".").lower())
    want = {sid: {f"{r}.sandbox.test" for r in GUESTS if r != role}
            for role, (_, sid, _, _) in GUESTS.items()}
    note("denied_queries_are_logged_with_their_sandbox", not unnamed and denied == want,
         f"denied={ {k: sorted(v) for k, v in sorted(denied.items())} } want="
         f"{ {k: sorted(v) for k, v in sorted(want.items())} } without sandbox={unnamed[:3]}")


def guard_lines(text):
    """dnsward's log: the guard judged each guest's TLS connections on the shared front end
    by the names bound to its own (guest . front end) pair, and named its sandbox."""
    note("guarded_host_ruleset_is_in_force",
         re.search(r"event=nft .*ruleset=in-force ", text)
         and re.search(r"event=sni-guard .*keys=guest\.destination", text),
         "\n".join(l for l in text.splitlines() if "event=nft " in l or "event=sni-guard" in l
                    or "ruleset-" in l)[:1000])
    allowed, mismatched = [], []
    for role, own in FRONT_NAMES.items():
        sid, src = GUESTS[role][1], re.escape(guest_addr(role))
        peer = FRONT_NAMES["b" if role == "a" else "a"]
        fr = re.escape(vmlib.FRONT)
        if not re.search(rf"event=first-flight-allowed name={re.escape(own)} addr={fr} port=443 "
                         rf"src={src} .*sandbox={sid}\b", text):
            allowed.append(f"{sid} {own}")
        if not re.search(rf"event=sni-mismatch name={re.escape(peer)} addr={fr} port=443 src={src} "
                         rf"bound={re.escape(own)} .*sandbox={sid}\b", text):
            mismatched.append(f"{sid} {peer}")
    guard = "\n".join(l for l in text.splitlines() if "first-flight" in l or "sni-mismatch" in l)[:1500]
    note("guard_lets_each_sandbox_name_its_own_front_name", not allowed, f"missing={allowed}\n{guard}")
    note("guard_resets_each_sandbox_naming_the_others_front_name", not mismatched,
         f"missing={mismatched}\n{guard}")


def boot_all():
    global host_log
    tmp = tempfile.mkdtemp(prefix="dnsward-vmhost-")
    world = dw = None
    vms = {}
    try:
        initrd = os.path.join(tmp, "initrd")
        kernel = vmlib.build_initramfs(initrd)
        world = vmlib.World(tag=f"h{os.getpid() % 100000}")
        world.in_host("nft", "-f", "-", input=COUNTERS)
        # The guard on TLS alone: --http-ports names a port nothing uses, so the plain HTTP
        # checks (port 80, an address for Host) stay unjudged, as without it.
        dw = vmlib.HostDnsward(world, extra=["--log-level", "debug"],
                               guard=["--sni-guard", "--http-ports", "8080"])
        h = Host(world, dw)
        ra, rb = h.add("a"), h.add("b")
        listed = dw.ctl("list", check=False).stdout
        note("ctl_add_registers_a_and_b_before_they_boot",
             ra.returncode == 0 and rb.returncode == 0 and "vm-a" in listed and "vm-b" in listed,
             f"a: {ra.stdout.strip()} {ra.stderr.strip()}; b: {rb.stdout.strip()} "
             f"{rb.stderr.strip()}; list: {listed.strip()}")
        only = os.environ.get("DNSWARD_VM_GUESTS")  # for debugging: e.g. "a,b"
        for role, (index, sid, dns, spoof) in GUESTS.items():
            if only and role not in only.split(","):
                continue
            peers = ",".join(f"{r}={vmlib.HOST_SANDBOXES[r][0]}" for r in GUESTS if r != role)
            v4, v6 = vmlib.HOST_SANDBOXES[role]
            front = ""
            if role in FRONT_NAMES:
                front = (f" dw.front={vmlib.FRONT} dw.front_own={FRONT_NAMES[role]} "
                         f"dw.front_peer={FRONT_NAMES['b' if role == 'a' else 'a']} "
                         f"dw.cacert={world.cert}")
            vms[role] = vmlib.Vm(world, index, kernel, initrd, "host_guest", memory=512,
                                 share=True,
                                 extra=f"dw.role={role} dw.id={sid} dw.addr4={v4} dw.addr6={v6} "
                                       f"dw.peers={peers} dw.peerip4={guest_addr(spoof)} "
                                       f"dw.dns={dns} dw.sync={h.sync}{front}")
        h.t0 = min(v.started for v in vms.values())
        deadline = time.monotonic() + BOOT_DEADLINE
        h.run(vms, deadline)
        for role, v in vms.items():
            consoles[role] = v.wait(max(1, deadline - time.monotonic()))
            seconds.setdefault(role, v.seconds)
            print(f"vm: host-mode guest {role} ran {seconds[role]:.0f} s", file=sys.stderr,
                  flush=True)
        bad = h.crossing()
        note("no_pair_ever_crosses_guests", not bad, f"crossing={bad}")
        alive = dw.proc.poll() is None
        note("dnsward_ran_throughout", alive, f"exit={dw.proc.poll()}")
        log_lines(dw.text())
        guard_lines(dw.text())
        for name in HOST_CHECKS:
            ok, detail = host.get(name, (False, "never checked"))
            print(f"vm: host check {name} {'ok' if ok else 'fail'} {detail[:300]}",
                  file=sys.stderr, flush=True)
        keep = os.environ.get("DNSWARD_VM_CONSOLES")  # a directory to keep them in
        if keep:
            os.makedirs(keep, exist_ok=True)
            for role, v in vms.items():
                shutil.copy(v.console_path, os.path.join(keep, f"host-{role}.log"))
            shutil.copy(dw.log_path, os.path.join(keep, "host-dnsward.log"))
    finally:
        for v in vms.values():
            v.stop()
        if dw:
            dw.stop()
            host_log = dw.text()
        if world:
            world.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def setUpModule():
    try:
        vmlib.require()
    except vmlib.CannotRun as e:
        raise unittest.SkipTest(str(e))
    boot_all()


def story():
    return "\n".join(f"  {t:6.1f} s  {what}" for t, what in timeline)


class HostModeGuest(unittest.TestCase):
    role = None

    def check(self, name):
        text = consoles.get(self.role, "")
        checks, rc = vmlib.results(text)
        if name not in checks:
            self.fail(f"guest {self.role} never reported {name} (end rc={rc}, "
                      f"{seconds.get(self.role, 0):.0f} s); the host did:\n{story()}\n"
                      f"its console ends:\n" + vmlib.excerpt(text))
        ok, detail = checks[name]
        self.assertTrue(ok, f"guest {self.role}: {name}: {detail}\nconsole:\n"
                        + vmlib.excerpt(text, f"DWVM check {name} "))

    def finished(self):
        text = consoles.get(self.role, "")
        self.assertRegex(text, r"DWVM up kernel=6\.1\.", vmlib.excerpt(text))
        self.assertIn("DWVM end rc=0", text, vmlib.excerpt(text))
        self.assertNotIn("DWVM note the host never answered", text,
                         story() + "\n" + vmlib.excerpt(text, "DWVM note the host"))

    def unknown(self):
        checks, _ = vmlib.results(consoles.get(self.role, ""))
        self.assertEqual(sorted(set(checks) - set(CHECKS[self.role])), [])


def _guest_class(role):
    sid = GUESTS[role][1]
    doc = {"a": "guest A: its own name only; removed with ctl remove and cut off at once",
           "b": "guest B: its own name only; goes on while A is removed and C added",
           "c": "guest C: registered while A and B run"}[role]
    cls = type(f"HostModeGuest{role.upper()}", (HostModeGuest,), {"role": role, "__doc__": doc})
    cls.test_the_guest_booted_debian_12s_kernel_and_finished = lambda self: self.finished()
    cls.test_no_check_is_reported_that_this_test_does_not_know = lambda self: self.unknown()
    for n in CHECKS[role]:
        def test(self, n=n):
            self.check(n)
        test.__doc__ = f"{sid}: {n.replace('_', ' ')}"
        setattr(cls, f"test_{n}", test)
    return cls


HostModeGuestA = _guest_class("a")
HostModeGuestB = _guest_class("b")
HostModeGuestC = _guest_class("c")


class HostModeHost(unittest.TestCase):
    """What the host sees: dnsward's sets, packet counters, ctl's replies."""


def _host_test(name):
    def test(self):
        if name not in host:
            self.fail(f"the host never checked {name}; it did:\n{story()}\n"
                      f"dnsward's log ends:\n" + "\n".join(host_log.splitlines()[-30:]))
        ok, detail = host[name]
        self.assertTrue(ok, f"{name}: {detail}\nthe host did:\n{story()}\n"
                        f"dnsward's log ends:\n" + "\n".join(host_log.splitlines()[-30:]))
    test.__doc__ = name.replace("_", " ")
    return test


for _n in HOST_CHECKS:
    setattr(HostModeHost, f"test_{_n}", _host_test(_n))


if __name__ == "__main__":
    unittest.main()
