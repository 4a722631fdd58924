# CAP_NET_RAW only (the second review). A bare raw SYN with another ISN on a followed
# connection, before its data, moved where dnsward thought the first flight starts (then the
# client's SYN said; now the server's SYN-ACK does, and the raw SYN is not even queued).
# dnsward then judged P || D, where P (raw, k bytes just before the real stream) plus the
# kernel socket's ClientHello D parse as one ClientHello naming www.allowed.test. The server's
# TCP drops P as old data (before rcv_nxt) and reads D alone: a ClientHello naming other.test.
import socket, struct, sys
sys.path.insert(0, sys.argv[1])
from sni_polyglot import hello
addr, cafile = sys.argv[2:4]
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
def seg(src, sport, seq, ack, flags, payload=b""):
    tcp = struct.pack("!HHIIBBHHH", sport, 443, seq & 0xffffffff, ack & 0xffffffff, 5 << 4, flags, 65535, 0, 0) + payload
    pseudo = socket.inet_aton(src) + socket.inet_aton(addr) + struct.pack("!BBH", 0, 6, len(tcp))
    return tcp[:16] + struct.pack("!H", csum(pseudo + tcp)) + tcp[18:]
def u16(b): return struct.pack("!H", len(b)) + b
def u24(b): return struct.pack("!I", len(b))[1:] + b
tls, incoming, outgoing, D = hello("other.test", ["http/1.1"], cafile)
msg = D[5:]  # the kernel socket's handshake message (one record)
assert len(D) == 5 + int.from_bytes(D[3:5], "big")
# P's fragment: a ClientHello naming www.allowed.test whose last extension (unknown type
# 0xff77) holds D's handshake message (the guard reads D's record header as a record header).
sni = struct.pack("!H", 0) + u16(u16(b"\x00" + u16(b"www.allowed.test")))
exts_len = len(sni) + 4 + len(msg)
body_prefix = (b"\x03\x03" + b"\x11" * 32 + b"\x00" + u16(b"\x13\x01") + b"\x01\x00" +
               struct.pack("!H", exts_len) + sni + struct.pack("!HH", 0xff77, len(msg)))
frag = b"\x01" + struct.pack("!I", len(body_prefix) + len(msg))[1:] + body_prefix
P = b"\x16\x03\x01" + u16(frag)
k = len(P)
sniff = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
sniff.settimeout(5)
s = socket.create_connection((addr, 443), timeout=5)
src, sport = s.getsockname()
# The SYN-ACK tells both ISNs: its seq is the server's, its ack our ISN + 1.
while True:
    pkt = sniff.recv(65535)
    ihl = (pkt[0] & 15) * 4
    sp, dp, seq, ack, _, fl = struct.unpack("!HHIIBB", pkt[ihl:ihl + 14])
    if sp == 443 and dp == sport and fl & 0x12 == 0x12:
        break
a1, srv1 = ack, seq + 1   # a1: where the kernel socket's data starts
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
# The three go through dnsward's queue in the order sent: no waits between them.
raw.sendto(seg(src, sport, a1 - k - 1, 0, 0x02), (addr, 0))        # bare SYN: start = a1 - k
try:
    raw.sendto(seg(src, sport, a1 - k, srv1, 0x18, P), (addr, 0))   # P at offset 0, held
except PermissionError:
    # Rejected at once: the flight starts where the server's SYN-ACK said (a1), and P is
    # before it (the ruleset's drop makes sendto say EPERM).
    print("dropped", flush=True)
s.sendall(D)                                                        # D at offset k
finish(s, tls, incoming, outgoing)
