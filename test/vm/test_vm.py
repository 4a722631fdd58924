"""dnsward in real microVMs: Debian 12's guest kernel (6.1) under qemu, on taps in a
namespace of their own, beside a stand-in internet in another (test/vm/vmlib.py draws it).

Two guests boot at once, each running many checks in one boot (boots are the cost):
  - "in-guest": dnsward as the README's microVM section says (ruleset from nft-rules,
    resolv.conf naming only dnsward, dnsward as user dnsward with two capabilities, the
    workload unprivileged), checked with curl, dig and glibc from inside the guest; then
    the first-flight guard (--sni-guard) with nftables' own queue, which only this 6.1
    kernel has here, against a TLS and HTTP front end serving two names on one address;
  - "e2e": e2e_nft's cases (and e2e_ruleset's) run by python inside the guest, against the
    guest's kernel, from the host's root shared read only over virtio-9p.
A failed check fails its test here with the guest's console around it."""
import os
import shutil
import sys
import tempfile
import threading
import unittest

import vmlib

# Seconds per guest, boot to power-off, under TCG on a busy machine.
BOOT_DEADLINE = int(os.environ.get("DNSWARD_VM_DEADLINE", "420"))

# Every check the in-guest guest must report, in its order: a check it never reports fails.
IN_GUEST = """
ruleset_without_log_modules_fails_to_load nothing_of_the_failed_ruleset_is_loaded
dnsward_answers status_says_the_ruleset_is_not_in_force log_says_the_ruleset_is_not_in_force
require_ruleset_gives_servfail_with_ede_14 ruleset_loads_with_the_listed_modules
loading_the_ruleset_is_noticed the_guest_link_traffic_is_never_dropped
dnsward_runs_as_user_dnsward dnsward_keeps_only_cap_net_admin_once_serving
workload_is_unprivileged allowed_name_connects_over_glibc allowed_name_connects_over_ipv6
dig_answers_an_allowed_name cname_target_is_vouched denied_name_gets_nxdomain_with_ede
denied_name_does_not_resolve_for_curl hard_coded_unvouched_address_is_rejected
direct_dns_to_another_resolver_is_dropped private_and_metadata_answers_are_not_relayed
private_and_metadata_are_never_vouched private_address_is_unreachable
metadata_address_is_unreachable short_lived_name_connects address_expires_after_ttl_plus_grace
race_resolve_then_connect_udp_and_tcp auto_refresh_picks_replace_on_6_1
forced_update_refresh_is_refused_on_6_1 later_modules_are_loaded nft_queue_rules_load_on_6_1
root_can_flush_the_ruleset_and_reach_anything a_flushed_ruleset_is_noticed
""".split() + """
sni_guard_ruleset_loads_with_nft_queue_on_6_1 sni_guard_serve_finds_the_ruleset_in_force
shared_address_is_vouched_by_the_allowed_name tls_to_the_allowed_name_passes_the_guard
plain_http_to_the_allowed_name_passes_the_guard
tls_naming_another_name_on_the_vouched_address_is_reset
plain_http_with_another_host_on_the_vouched_address_is_reset
tls_to_the_allowed_name_still_passes_after_the_resets
a_first_flight_after_the_element_expired_is_still_judged
with_dnsward_stopped_a_guarded_connection_times_out
""".split()  # the first-flight guard with --queue-backend nft (guest/sni_guard.sh)

# The python suites run inside the e2e guest, and cases that must have run there, not been
# skipped: refresh by replacement is what a 6.1 kernel needs.
E2E_SUITES = ["test_nft", "test_ruleset"]
MUST_RUN = ["test_nft.Refresh.test_delete_and_add",
            "test_nft.View.test_replace_mode_gives_an_element_the_kernel_already_held_the_new_timeout"]

world = None
consoles = {}
seconds = {}


def boot_all():
    global world
    tmp = tempfile.mkdtemp(prefix="dnsward-vm-")
    try:
        initrd = os.path.join(tmp, "initrd")
        kernel = vmlib.build_initramfs(initrd)
        world = vmlib.World()
        suites = [s for s in E2E_SUITES
                  if os.path.exists(os.path.join(vmlib.ROOT, "test", "e2e", s + ".py"))]
        vms = {
            "in-guest": vmlib.Vm(world, 1, kernel, initrd, "in_guest", memory=768, share=True,
                                 extra=f"dw.late={','.join(vmlib.LOG_MODULES)}"),
            "e2e": vmlib.Vm(world, 2, kernel, initrd, "e2e", memory=1536, share=True,
                            extra=f"dw.suites={','.join(suites)} dw.bin={vmlib.BIN}"),
        }
        only = os.environ.get("DNSWARD_VM_GUESTS")  # for debugging: e.g. "in-guest"
        if only:
            for k in set(vms) - set(only.split(",")):
                vms.pop(k).stop()
        try:
            threads = [threading.Thread(target=lambda k=k, v=v: consoles.__setitem__(
                k, v.wait(BOOT_DEADLINE))) for k, v in vms.items()]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            keep = os.environ.get("DNSWARD_VM_CONSOLES")  # a directory to keep them in
            for k, v in vms.items():
                if keep:
                    os.makedirs(keep, exist_ok=True)
                    shutil.copy(v.console_path, os.path.join(keep, f"{k}.log"))
                seconds[k] = v.seconds
                print(f"vm: {k} guest ran {v.seconds:.0f} s", file=sys.stderr, flush=True)
        finally:
            for v in vms.values():
                v.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def setUpModule():
    try:
        vmlib.require()
    except vmlib.CannotRun as e:
        raise unittest.SkipTest(str(e))
    try:
        boot_all()
    finally:
        if world:
            world.stop()


class Guest(unittest.TestCase):
    def check(self, guest, name):
        text = consoles.get(guest, "")
        checks, rc = vmlib.results(text)
        if name not in checks:
            self.fail(f"the {guest} guest never reported {name} (end rc={rc}, "
                      f"{seconds.get(guest, 0):.0f} s); its console ends:\n"
                      + vmlib.excerpt(text))
        ok, detail = checks[name]
        self.assertTrue(ok, f"{guest} guest: {name}: {detail}\nconsole:\n"
                        + vmlib.excerpt(text, f"DWVM check {name} "))


class InGuest(Guest):
    """dnsward inside the guest, as the README's microVM section runs it."""

    def test_the_guest_booted_debian_12s_kernel_and_finished(self):
        text = consoles.get("in-guest", "")
        self.assertRegex(text, r"DWVM up kernel=6\.1\.", vmlib.excerpt(text))
        self.assertIn("DWVM end rc=0", text, vmlib.excerpt(text))
        self.assertNotIn("DWVM insmod", text, vmlib.excerpt(text, "DWVM insmod"))

    def test_no_check_is_reported_that_this_test_does_not_know(self):
        checks, _ = vmlib.results(consoles.get("in-guest", ""))
        self.assertEqual(sorted(set(checks) - set(IN_GUEST)), [])


def _in_guest_test(name):
    def test(self):
        self.check("in-guest", name)
    test.__doc__ = name.replace("_", " ")
    return test


for _n in IN_GUEST:
    setattr(InGuest, f"test_{_n}", _in_guest_test(_n))


class E2eInGuest(Guest):
    """e2e_nft's cases (and e2e_ruleset's) against the guest's 6.1 kernel."""

    def test_every_case_passes_on_the_guest_kernel(self):
        text = consoles.get("e2e", "")
        checks, _ = vmlib.results(text)
        failed = [n for n, (ok, _) in checks.items() if not ok]
        details = "\n".join(f"{n}: {checks[n][1]}" for n in failed)
        self.assertEqual(failed, [], details + "\nconsole:\n" + vmlib.excerpt(text))
        self.check("e2e", "e2e.summary")

    def test_refresh_by_replacement_ran_there_not_skipped(self):
        checks, _ = vmlib.results(consoles.get("e2e", ""))
        for name in MUST_RUN:
            self.assertIn(f"e2e.{name}", checks, vmlib.excerpt(consoles.get("e2e", "")))

    def test_the_guest_ran_kernel_6_1(self):
        self.assertRegex(consoles.get("e2e", ""), r"DWVM up kernel=6\.1\.")


if __name__ == "__main__":
    unittest.main()
