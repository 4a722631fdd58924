"""Resolve, then connect at once: N names over glibc's resolver (UDP), N over DNS over TCP to
127.0.0.1, each name answered with an address of its own (harness.race_zone). Any failed
connection means an answer reached the client before its address was in the set. Prints
`fails=F of 2N` and the first few. Run inside the sandbox: e2e_world's vm namespace, and the
microVM test's guest.  Usage: race.py N"""
import socket
import sys

import dns.message
import dns.query

race = int(sys.argv[1])
fails = []
for i in range(race):
    name = f"r{i}.udprace.test"
    try:
        addr = socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
        socket.create_connection((addr, 80), timeout=5).close()
    except OSError as e:
        fails.append((name, repr(e)))
for i in range(race):
    name = f"r{i}.tcprace.test."
    try:
        r = dns.query.tcp(dns.message.make_query(name, "A"), "127.0.0.1", timeout=5)
        addr = r.answer[0][0].address
        socket.create_connection((addr, 80), timeout=5).close()
    except Exception as e:  # noqa: BLE001 - every failure is counted and shown
        fails.append((name, repr(e)))
print(f"fails={len(fails)} of {2 * race}", *fails[:5])
