// How large a set dnsward fills, and what a reread of it costs the event loop. Creates
// dnsward's table with sets declared WITHOUT a size (the kernel then sets no limit), vouches
// for N fresh addresses one answer each, then deletes one element as someone else would and
// reads the sets again the way the event loop does (one datagram per pass), timing each pass.
// Run as root inside a network namespace of its own:
//   unshare -n build/bench/set_fill [N=70000]
#include <poll.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "dnsward/clock.hpp"
#include "dnsward/nft_sets.hpp"

using namespace dnsward;

int main(int argc, char** argv) {
  const int n = argc > 1 ? std::atoi(argv[1]) : 70000;
  if (n < 1 || n > 131072) return 2;  // 198.18.0.0/15
  if (std::system("nft add table inet dnsward && "
                  "nft add set inet dnsward allowed4 '{ type ipv4_addr; flags timeout; }' && "
                  "nft add set inet dnsward allowed6 '{ type ipv6_addr; flags timeout; }'") != 0) {
    std::fprintf(stderr, "cannot create the sets (root, in a namespace of its own?)\n");
    return 1;
  }
  NftSets sets(NftTarget{}, RefreshMode::Auto);
  const uint64_t t0 = mono_ms();
  for (int i = 0; i < n; ++i) {
    const uint8_t b[4] = {198, uint8_t(18 + ((i >> 16) & 1)), uint8_t(i >> 8), uint8_t(i)};
    std::string err;
    if (!sets.vouch({{IpAddr::v4(b), 600}}, mono_ms(), Provenance{"bench.example", "bench.example"}, err)) {
      std::printf("vouch %d failed: %s\n", i, err.c_str());
      return 1;
    }
  }
  std::printf("vouched %d addresses, one answer each, in %llu ms\n", n,
              static_cast<unsigned long long>(mono_ms() - t0));
  if (std::system("nft delete element inet dnsward allowed4 '{ 198.18.0.5 }'") != 0) return 1;
  const uint64_t d0 = mono_ms();
  sets.on_events();  // sees the delete, starts the reread
  uint64_t worst = 0, passes = 0;
  while (sets.rereading() && passes < 1000000) {
    pollfd p{sets.dump_fd(), POLLIN, 0};
    poll(&p, 1, 1000);
    const uint64_t s0 = mono_ns();
    sets.on_dump_readable();
    worst = std::max(worst, mono_ns() - s0);
    ++passes;
  }
  std::printf("reread: %llu ms in all, %llu passes, longest pass %.2f ms, %zu elements held\n",
              static_cast<unsigned long long>(mono_ms() - d0),
              static_cast<unsigned long long>(passes), double(worst) / 1e6, sets.held(2, mono_ms()));
  return 0;
}
