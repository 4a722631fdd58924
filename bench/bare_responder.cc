// The floor for the denied scenario: a UDP responder that does nothing but turn each query
// into an NXDOMAIN by patching its header (copy-and-patch), with the same recvmmsg/sendmmsg
// batching as dnsward. No parsing, no policy, no EDNS: what loopback UDP itself costs.
//   bare_responder PORT
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdlib>
#include <cstring>

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  const int fd = socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(uint16_t(std::atoi(argv[1])));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return 1;
  constexpr int kBatch = 32;
  static unsigned char buf[kBatch][4096];
  sockaddr_in peers[kBatch];
  iovec iov[kBatch];
  mmsghdr msgs[kBatch];
  for (;;) {
    for (int i = 0; i < kBatch; ++i) {
      iov[i] = {buf[i], sizeof buf[i]};
      std::memset(&msgs[i], 0, sizeof msgs[i]);
      msgs[i].msg_hdr.msg_name = &peers[i];
      msgs[i].msg_hdr.msg_namelen = sizeof peers[i];
      msgs[i].msg_hdr.msg_iov = &iov[i];
      msgs[i].msg_hdr.msg_iovlen = 1;
    }
    const int n = recvmmsg(fd, msgs, kBatch, MSG_WAITFORONE, nullptr);
    if (n <= 0) continue;
    for (int i = 0; i < n; ++i) {
      unsigned char* q = buf[i];
      if (msgs[i].msg_len < 12) continue;
      q[2] = static_cast<unsigned char>(0x80 | (q[2] & 0x79));  // QR, keep opcode and RD
      q[3] = 0x83;                                               // RA, NXDOMAIN
      iov[i].iov_len = msgs[i].msg_len;
    }
    sendmmsg(fd, msgs, unsigned(n), 0);
  }
}
