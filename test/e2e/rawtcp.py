"""Raw TCP for the guard's attack scripts (CAP_NET_RAW in-guest, a guest's root in host
mode): the checksum, and IPv4 segments of one four-tuple written whole and read back."""
import socket
import struct
import time

SYN, ACK, PSH, RST, FIN = 0x02, 0x10, 0x08, 0x04, 0x01
MSS = struct.pack("!BBH", 2, 4, 1460)  # an MSS option, as a kernel's SYN carries
MARK = 0x77  # the callers' rules let this host's RSTs out only with this mark: the raw ones


def csum(b):
    """The Internet checksum (RFC 1071) of b: TCP's, over its pseudo-header and segment."""
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff


class Raw:
    """Segments from src:sport to dst:port through a raw socket (its packets marked MARK),
    and the segments dst:port sends back, read through another."""

    def __init__(self, src, dst, port, sport):
        self.src, self.dst, self.port, self.sport = src, dst, port, sport
        self.raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
        self.raw.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, MARK)
        self.sniff = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
        self.sniff.settimeout(0.2)

    def send(self, seq, ack, flags, payload=b"", opts=b""):
        tcp = struct.pack("!HHIIBBHHH", self.sport, self.port, seq & 0xffffffff, ack & 0xffffffff,
                          (20 + len(opts)) // 4 << 4, flags, 65535, 0, 0) + opts + payload
        pseudo = socket.inet_aton(self.src) + socket.inet_aton(self.dst) + struct.pack("!BBH", 0, 6, len(tcp))
        tcp = tcp[:16] + struct.pack("!H", csum(pseudo + tcp)) + tcp[18:]
        try:
            self.raw.sendto(tcp, (self.dst, 0))
        except OSError as e:  # the ruleset rejected it (EPERM)
            print("send failed", e, flush=True)

    def packets(self, timeout):
        """dst:port's segments to sport (dicts: seq, ack, flags, data) until timeout s pass."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                pkt = self.sniff.recv(65535)
            except socket.timeout:
                continue
            ihl = (pkt[0] & 15) * 4
            sp, dp, seq, ack, off, fl = struct.unpack("!HHIIBB", pkt[ihl:ihl + 14])
            if socket.inet_ntoa(pkt[12:16]) == self.dst and sp == self.port and dp == self.sport:
                yield dict(seq=seq, ack=ack, flags=fl, data=pkt[ihl + (off >> 4) * 4:])

    def until(self, pred, timeout=5):
        """dst:port's segments until one satisfies pred (the last), or timeout s pass."""
        got = []
        for p in self.packets(timeout):
            got.append(p)
            if pred(p):
                break
        return got

    def synack(self, isn):
        """Sends a SYN at isn; the ISN of the SYN-ACK that answers it, or None."""
        self.send(isn, 0, SYN, opts=MSS)
        got = self.until(lambda p: p["flags"] & 0x12 == 0x12 and p["ack"] == (isn + 1) & 0xffffffff)
        return got[-1]["seq"] if got and got[-1]["flags"] & 0x12 == 0x12 else None


def answer(got):
    """What an attack script prints of the server's packets after its request: `error reset`,
    the answer's last line, or `error no answer`."""
    if any(p["flags"] & RST for p in got):
        return "error reset"
    text = b"".join(p["data"] for p in got).decode(errors="replace").strip()
    return text.splitlines()[-1] if text else "error no answer"


def tries(attack, n=3):
    """attack() again while it returns None (the cookie changed between its SYNs: Linux's
    cookies count minutes, and a minute's turn twice in three tries takes minutes)."""
    for _ in range(n):
        out = attack()
        if out is not None:
            return out
    return "error the cookie changed each time"
