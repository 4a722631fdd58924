"""The footprint promise: a library is mapped only when its feature is used (issue 10).

A serving dnsward, with the nftables hook on as in production, maps neither libmicrohttpd
(nor the TLS stack it links), nor libsystemd (nor its compressors), nor libpsl (nor idn2,
unistring). --metrics-listen loads libmicrohttpd and /metrics works; `check` loads libpsl;
a library that cannot be loaded is a clear error. sd_notify is spoken directly: READY=1 with
STATUS=, RELOADING=1 and READY=1 around SIGHUP, STOPPING=1 on SIGTERM, over a filesystem
and an abstract ('@') NOTIFY_SOCKET.

The module runs in a network namespace of its own (the hook's table lives there)."""
import contextlib
import os
import signal
import socket
import tempfile
import unittest

import dns.rcode

from harness import (BIN, Dnsward, Knot, LO, enter_new_netns, free_port, require, run,
                     shared_tempdir, wait_for)

# What linking libmicrohttpd, libsystemd and libpsl mapped into every dnsward before.
OPTIONAL = ("libmicrohttpd", "libgnutls", "libp11-kit", "libnettle", "libhogweed", "libgmp",
            "libtasn1", "libsystemd", "libgcrypt", "liblzma", "libzstd", "liblz4", "libpsl",
            "libidn2", "libunistring")

knot = None


def setUpModule():
    global knot
    require("knotd", "nft", "ip", "unshare", "curl")
    enter_new_netns()
    knot = Knot()


def tearDownModule():
    knot.stop()


def mapped(pid):
    """Basenames of the files mapped into a process (/proc/PID/maps, proc(5))."""
    names = set()
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].startswith("/"):
                names.add(os.path.basename(parts[5].strip()))
    return names


def optional_libraries(pid):
    return sorted(n for n in mapped(pid) if n.startswith(tuple(o + "." for o in OPTIONAL)))


def maps_library(pid, soname):
    """Whether soname ("libnftnl.so.11") is mapped: the file is its real name (.so.11.6.0)."""
    return any(n == soname or n.startswith(soname + ".") for n in mapped(pid))


def curl(url):
    r = run(["curl", "-s", "--noproxy", "*", "-o", "-", "-w", "\n%{http_code}", url])
    body, _, code = r.stdout.rpartition("\n")
    return int(code or 0), body


@contextlib.contextmanager
def notify_env(value):
    """NOTIFY_SOCKET set for the dnsward started inside (harness.Dnsward inherits os.environ)."""
    old = os.environ.get("NOTIFY_SOCKET")
    os.environ["NOTIFY_SOCKET"] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ["NOTIFY_SOCKET"]
        else:
            os.environ["NOTIFY_SOCKET"] = old


def bogus_library_dir(soname):
    """A directory holding a file named soname that is not a library: with LD_LIBRARY_PATH
    pointing at it, dlopen(soname) finds it first and fails (ld.so(8) search order)."""
    d = tempfile.mkdtemp(prefix="dnsward-bogus-")
    with open(os.path.join(d, soname), "w") as f:
        f.write("not an ELF file\n")
    return d


class Serving(unittest.TestCase):
    def assert_no_optional_library(self, d):
        # Queries answered first: the denial, the forward and the vouch paths have all run.
        self.assertEqual(d.query("evil.test.").rcode(), dns.rcode.NXDOMAIN)
        self.assertEqual(d.query("www.allowed.test.").rcode(), dns.rcode.NOERROR)
        libs = mapped(d.proc.pid)
        self.assertIn("libc.so.6", libs)  # the maps are read
        self.assertTrue(maps_library(d.proc.pid, "libcares.so.2"), libs)
        self.assertEqual(optional_libraries(d.proc.pid), [])

    def test_hook_on_maps_no_metrics_systemd_or_psl_library(self):
        # Under a service manager too: NOTIFY_SOCKET set must not pull libsystemd in.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind("\0dnsward-footprint-" + str(os.getpid()))
        with notify_env("@dnsward-footprint-" + str(os.getpid())):
            d = Dnsward(knot.port, nft=True)
        try:
            sock.settimeout(10)
            self.assertIn("READY=1", sock.recv(4096).decode())
            self.assertTrue(maps_library(d.proc.pid, "libnftnl.so.11"))  # the hook is on
            self.assert_no_optional_library(d)
        finally:
            self.assertEqual(d.stop(), 0)
            sock.close()

    def test_no_nft_maps_no_metrics_systemd_or_psl_library(self):
        d = Dnsward(knot.port, extra=["--metrics-file", os.path.join(shared_tempdir(), "m.prom")])
        try:
            self.assert_no_optional_library(d)  # the metrics file needs no HTTP server
        finally:
            self.assertEqual(d.stop(), 0)

    def test_metrics_listen_loads_libmicrohttpd_and_serves_metrics(self):
        port = free_port()
        d = Dnsward(knot.port, extra=["--metrics-listen", f"{LO}:{port}"])
        try:
            self.assertEqual(d.query("evil.test.").rcode(), dns.rcode.NXDOMAIN)
            self.assertTrue(maps_library(d.proc.pid, "libmicrohttpd.so.12"))
            code, body = curl(f"http://{LO}:{port}/metrics")
            self.assertEqual(code, 200)
            self.assertIn('dnsward_queries_total{verdict="denied"} 1\n', body)
            self.assertIn("# TYPE dnsward_upstream_latency_seconds histogram\n", body)
            # Loading it for metrics brings nothing of the other two features (gnutls itself
            # links idn2 and unistring, so those are not asked about here).
            for soname in ("libsystemd.so.0", "libpsl.so.5", "libgcrypt.so.20"):
                self.assertFalse(maps_library(d.proc.pid, soname), soname)
        finally:
            self.assertEqual(d.stop(), 0)

    def test_metrics_listen_without_libmicrohttpd_is_a_clear_error(self):
        env = dict(os.environ, LD_LIBRARY_PATH=bogus_library_dir("libmicrohttpd.so.12"))
        r = run([BIN, "serve", "--listen", f"{LO}:{free_port()}", "--upstream", f"{LO}:{knot.port}",
                 "--no-nft", "--metrics-listen", f"{LO}:{free_port()}"], env=env)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("--metrics-listen needs libmicrohttpd.so.12 (Debian package libmicrohttpd12)",
                      r.stderr)


class Check(unittest.TestCase):
    def write_list(self):
        d = tempfile.mkdtemp(prefix="dnsward-footprint-")
        path = os.path.join(d, "t.allow")
        with open(path, "w") as f:
            f.write("*.co.uk\n")
        return path

    def test_check_loads_libpsl_and_uses_the_public_suffix_list(self):
        r = run([BIN, "check", "--today", "2026-06-01", self.write_list()])
        # Only the Public Suffix List knows co.uk is a public suffix.
        self.assertRegex(r.stdout, r"t\.allow:1: error: .*co\.uk")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)

    def test_check_without_libpsl_is_a_clear_error(self):
        env = dict(os.environ, LD_LIBRARY_PATH=bogus_library_dir("libpsl.so.5"))
        r = run([BIN, "check", "--today", "2026-06-01", self.write_list()], env=env)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("cannot load libpsl.so.5 (Debian package libpsl5)", r.stderr)


class SdNotify(unittest.TestCase):
    """The sd_notify(3) datagrams, in order, from start to stop."""

    def lifecycle(self, sock, notify_socket):
        with notify_env(notify_socket):
            d = Dnsward(knot.port, wait=False)
        sock.settimeout(10)  # a deadline for each event, not a sleep
        try:
            first = sock.recv(4096).decode()
            self.assertEqual(first.split("\n")[0], "READY=1")
            self.assertRegex(first, r"\nSTATUS=serving 7 entries, policy [0-9a-f]{8}$")
            self.assertEqual(d.query("evil.test.").rcode(), dns.rcode.NXDOMAIN)  # ready means ready
            d.proc.send_signal(signal.SIGHUP)
            self.assertEqual(sock.recv(4096).decode(), "RELOADING=1")
            self.assertEqual(sock.recv(4096).decode(), "READY=1")
            d.proc.send_signal(signal.SIGTERM)
            self.assertEqual(sock.recv(4096).decode(), "STOPPING=1")
            self.assertEqual(d.proc.wait(10), 0)
        finally:
            d.stop()
            sock.close()

    def test_filesystem_socket(self):
        path = os.path.join(shared_tempdir(), "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        os.chmod(path, 0o777)  # dnsward sends after dropping to its own user
        self.lifecycle(sock, path)

    def test_abstract_socket(self):
        # '@' names a socket in the abstract namespace: '\0' then the name, no terminator.
        name = f"dnsward-notify-{os.getpid()}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind("\0" + name)
        self.lifecycle(sock, "@" + name)


if __name__ == "__main__":
    unittest.main()
