"""What the side-by-side benchmarks (peers.py, footprint.py) share: the names each resolver
allows, and how knot (the upstream), dnsmasq and unbound are configured to allow exactly
those and forward them to knot, so that every bench compares the same job."""
import os

LO = "127.0.0.1"
UPSTREAM_PORT = 5399
ALLOWED = ["pypi.org", "files.pythonhosted.org", "registry.npmjs.org", "crates.io",
           "static.crates.io", "proxy.golang.org", "github.com", "c.bench", "m.bench", "n.bench"]
ZONE_HEAD = ["$ORIGIN bench.", "$TTL 3600", "@ SOA ns.bench. h.bench. 1 3600 600 86400 60",
             "@ NS ns", "ns A 127.0.0.1", "c A 198.18.0.1", "*.m A 198.18.0.2"]


def write(work, name, text):
    """Writes text to WORK/NAME and returns the path."""
    path = os.path.join(work, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def write_upstream_files(work, zone_lines):
    """What every bench starts from: knot's zone (ZONE_HEAD and zone_lines), knot's config,
    and dnsward's allowlist, in WORK."""
    write(work, "bench.zone", "\n".join(ZONE_HEAD + list(zone_lines)) + "\n")
    write(work, "knot.conf", knot_conf(work))
    write(work, "bench.allow", allowlist())


def knot_conf(work):
    return f"""server:
    rundir: "{work}"
    listen: {LO}@{UPSTREAM_PORT}
database:
    storage: "{work}"
log:
  - target: stderr
    any: error
zone:
  - domain: bench
    file: "{work}/bench.zone"
"""


def allowlist():
    """dnsward's list: exact names, and "**." for the two subtrees the benches query."""
    return "".join((f"**.{n}\n" if n in ("m.bench", "n.bench") else f"{n}\n") for n in ALLOWED)


def dnsmasq_args(port, nft):
    args = ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
            f"--listen-address={LO}", "--bind-interfaces", f"--port={port}", "--user=root",
            "--cache-size=10000", "--dns-forward-max=1000", "--log-facility=/dev/null",
            "--address=/#/"]
    args += [f"--server=/{n}/{LO}#{UPSTREAM_PORT}" for n in ALLOWED]
    if nft:
        args.append("--nftset=/" + "/".join(ALLOWED) + "/4#inet#dnsward#allowed4,6#inet#dnsward#allowed6")
    return args


def unbound_conf(work, port, extra=""):
    """unbound as a filtering forwarder: everything NXDOMAIN but the allowed names, which go
    to knot. extra: more server: lines (each indented by four spaces, newline-terminated)."""
    zones = "".join(f'    local-zone: "{n}." transparent\n' for n in ALLOWED)
    fwd = "".join(f'forward-zone:\n    name: "{n}."\n    forward-addr: {LO}@{UPSTREAM_PORT}\n'
                  for n in ALLOWED)
    return f"""server:
    interface: {LO}@{port}
    port: {port}
    do-daemonize: no
    use-syslog: no
    logfile: ""
    verbosity: 0
    username: ""
    chroot: ""
    directory: "{work}"
    pidfile: ""
    do-ip6: no
    num-threads: 1
    do-not-query-localhost: no
    so-reuseport: no
    access-control: 127.0.0.0/8 allow
    local-zone: "." always_nxdomain
{zones}{extra}    harden-referral-path: no
    qname-minimisation: no
    module-config: "iterator"
{fwd}"""
