"""Options declared once: `nft-rules` takes the nft group from serve's option table, honours
--nft-family with a ruleset the real `nft` accepts, and refuses names that would inject
statements; config files report FILE:LINE and lose to the command line. Runs in a network
namespace of its own, so no ruleset here touches the machine's."""
import json
import os
import subprocess
import tempfile
import unittest

import dns.message
import dns.query

from harness import BIN, LO, Dnsward, UsageErrors, enter_new_netns, ensure_user, free_port, nft_set_info, require, run


def setUpModule():
    require("nft", "ip")
    enter_new_netns()
    ensure_user()


def nft(*args, stdin=None):
    return subprocess.run(["nft", *args], input=stdin, capture_output=True, text=True, timeout=10)


def set_names(family, table):
    r = nft("-j", "list", "table", family, table)
    if r.returncode != 0:
        return None
    return {i["set"]["name"] for i in json.loads(r.stdout)["nftables"] if "set" in i}


class NftRules(UsageErrors, unittest.TestCase):
    def test_no_name_nft_rules_accepts_gives_a_ruleset_nft_refuses(self):
        # Every word of nftables' scanner and every identifier in libnftables, in each name
        # position: refused with exit 2, or printed into a ruleset the real nft accepts.
        words = open(os.path.join(os.path.dirname(__file__), "..", "data", "nft_words.txt")).read().split()
        self.assertGreater(len(words), 300)
        refused = 0
        for w in words:
            for opt in ("--nft-table", "--nft-set4", "--nft-set6"):
                r = run([BIN, "nft-rules", "--upstream", "192.0.2.1", "--user", "root", opt, w])
                if r.returncode == 2:
                    self.assertIn("an nft keyword", r.stderr)
                    refused += 1
                    continue
                self.assertEqual(r.returncode, 0, r.stderr)
                check = nft("-c", "-f", "-", stdin=r.stdout)
                self.assertEqual(check.returncode, 0, f"{opt} {w}: {check.stderr}")
        self.assertEqual(refused, 3 * 153)  # the words nft 1.0.6 reads as keywords there

    def test_each_family_gives_a_ruleset_nft_accepts_whose_sets_serve_then_uses(self):
        own_sets = {"inet": {"allowed4", "allowed6"}, "ip": {"allowed4"}, "ip6": {"allowed6"}}
        for family, sets in own_sets.items():
            with self.subTest(family=family):
                # The addresses must be of a family the table sees.
                host = "[::1]" if family == "ip6" else LO
                port, upstream = free_port(), free_port()
                r = run([BIN, "nft-rules", "--nft-family", family, "--listen", f"{host}:{port}",
                         "--upstream", f"{host}:{upstream}", "--user", "dnsward"])
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertIn(f"\ntable {family} dnsward {{\n", r.stdout)
                other = {"inet", "ip", "ip6"} - {family}
                for o in other:
                    self.assertNotIn(f"table {o} ", r.stdout)
                check = nft("-c", "-f", "-", stdin=r.stdout)
                self.assertEqual(check.returncode, 0, check.stderr + r.stdout)
                load = nft("-f", "-", stdin=r.stdout)
                self.assertEqual(load.returncode, 0, load.stderr)
                try:
                    self.assertEqual(set_names(family, "dnsward"), sets)
                    # serve, with the same family, takes the table the ruleset declared: it
                    # accepts the sets it finds and adds the one a single-family ruleset
                    # leaves out.
                    d = Dnsward(upstream, nft=True, extra=["--nft-family", family])
                    try:
                        self.assertRegex(d.logtext(), rf'event=nft family={family} table=dnsward ')
                        # and finds it in force: a table of family ip needs no IPv6 lookup.
                        self.assertRegex(d.logtext(), rf'event=ruleset-in-force id=[0-9a-f]{{16}} '
                                                      rf'table="{family} dnsward" chain=output ')
                        self.assertEqual(set_names(family, "dnsward"), {"allowed4", "allowed6"})
                        self.assertEqual(nft_set_info("dnsward", "allowed4", family)[0], "ipv4_addr")
                        self.assertEqual(nft_set_info("dnsward", "allowed6", family)[0], "ipv6_addr")
                    finally:
                        self.assertEqual(d.stop(), 0, d.logtext())
                    for o in other:
                        self.assertIsNone(set_names(o, "dnsward"), f"serve made a table {o}")
                finally:
                    nft("delete", "table", family, "dnsward")

    def test_a_name_that_would_inject_statements_is_refused_naming_the_option(self):
        evil = "x { } ; flush ruleset ; table inet y"
        for opt in ("--nft-table", "--nft-set4", "--nft-set6"):
            with self.subTest(opt=opt):
                self.assert_usage_error(run([BIN, "nft-rules", opt, evil]),
                                        f"{opt} {evil}: not an nftables name")
                # serve refuses the very same value, with the same words.
                self.assert_usage_error(run([BIN, "serve", "--upstream", "192.0.2.1", opt, evil]),
                                        f"{opt} {evil}: not an nftables name")
        self.assert_usage_error(run([BIN, "nft-rules", "--user", 'x" accept ; flush ruleset ; "']),
                                "--user")

    def test_an_address_the_family_cannot_see_is_refused(self):
        self.assert_usage_error(run([BIN, "nft-rules", "--nft-family", "ip", "--listen", "[::1]:53"]),
                                "--listen [::1]:53", "--nft-family ip")
        self.assert_usage_error(run([BIN, "nft-rules", "--nft-family", "ip6", "--listen", "[::1]:53",
                                     "--allow", "192.0.2.0/24"]),
                                "--allow 192.0.2.0/24", "--nft-family ip6")

    def test_help_comes_from_the_option_table(self):
        r = run([BIN, "nft-rules", "--help"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("one of: inet, ip, ip6; default: inet", r.stdout)
        for opt in ("--nft-table NAME", "--nft-set4 NAME", "--nft-set6 NAME", "--nft-set-size N",
                    "--listen ADDR:PORT", "--upstream ADDR[:PORT]", "--user NAME", "--allow CIDR"):
            self.assertIn(f"\n  {opt} ", r.stdout)
        for serve_only in ("--cache-size", "--config", "--allowlist", "--nft-refresh"):
            self.assertNotIn(serve_only, r.stdout)
            self.assert_usage_error(run([BIN, "nft-rules", serve_only, "1"]), serve_only)


class ConfigFile(unittest.TestCase):
    def write_conf(self, text):
        d = tempfile.mkdtemp(prefix="dnsward-opt-")
        os.chmod(d, 0o755)
        path = os.path.join(d, "dnsward.conf")
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o644)
        return path

    def test_a_bad_line_is_reported_as_file_and_line_and_nothing_starts(self):
        conf = self.write_conf("# dnsward\nno-nft = true\nupstream-tries = 9\n")
        r = run([BIN, "serve", "--config", conf, "--upstream", "192.0.2.1"])
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertEqual(r.stderr.strip().splitlines(),
                         [f"dnsward: serve: {conf}:3: upstream-tries = 9: must be between 1 and 5"])

    def test_the_command_line_wins_over_the_config_file(self):
        conf = self.write_conf("negative-ttl = 4\nlog-level = debug\n")
        d = Dnsward(free_port(), allowlist="www.allowed.test\n",
                    extra=["--config", conf, "--negative-ttl", "7", "--log-level", "warn"])
        try:
            r = dns.query.udp(dns.message.make_query("evil.test.", "A"), LO, port=d.port, timeout=2)
            self.assertEqual(r.authority[0].ttl, 7)
            # warn, not the file's debug: a denial is logged at debug only.
            self.assertNotIn("evil.test", d.logtext())
        finally:
            self.assertEqual(d.stop(), 0, d.logtext())


if __name__ == "__main__":
    unittest.main()
