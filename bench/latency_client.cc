// A closed-loop DNS client: one query at a time over UDP, names read from a file, and the
// p50/p99 of the reply latency. Used to compare dnsward with the hook on and off.
//   latency_client ADDR PORT NAMES_FILE [count]
#include <arpa/inet.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "dnsward/wire.hpp"

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s ADDR PORT NAMES_FILE [count]\n", argv[0]);
    return 2;
  }
  std::ifstream in(argv[3]);
  std::vector<std::string> names;
  for (std::string l; std::getline(in, l);)
    if (!l.empty()) names.push_back(l.substr(0, l.find(' ')));
  const std::size_t count = argc > 4 ? std::size_t(std::atol(argv[4])) : names.size();
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(uint16_t(std::atoi(argv[2])));
  inet_pton(AF_INET, argv[1], &to.sin_addr);
  const int fd = socket(AF_INET, SOCK_DGRAM, 0);
  timeval tv{2, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to);
  std::vector<double> lat;
  std::size_t lost = 0, bad = 0;
  for (std::size_t i = 0; i < count && i < names.size(); ++i) {
    uint8_t q[512];
    dnsward::wire::Writer w(q, sizeof q);
    w.u16(uint16_t(i)); w.u16(0x0100); w.u16(1); w.u16(0); w.u16(0); w.u16(0);
    w.text_name(names[i].c_str());
    w.u16(1); w.u16(1);
    timespec a{}, b{};
    clock_gettime(CLOCK_MONOTONIC, &a);
    send(fd, q, w.len(), 0);
    uint8_t r[4096];
    const ssize_t n = recv(fd, r, sizeof r, 0);
    clock_gettime(CLOCK_MONOTONIC, &b);
    if (n < 12) { ++lost; continue; }
    if ((r[3] & 0x0f) != 0) ++bad;
    lat.push_back((b.tv_sec - a.tv_sec) * 1e6 + (b.tv_nsec - a.tv_nsec) / 1e3);
  }
  std::sort(lat.begin(), lat.end());
  if (lat.empty()) return 1;
  std::printf("queries=%zu lost=%zu not_noerror=%zu p50_us=%.1f p99_us=%.1f\n", lat.size(), lost,
              bad, lat[lat.size() / 2], lat[lat.size() * 99 / 100]);
  return 0;
}
