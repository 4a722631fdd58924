// Latency of putting k addresses into an nftables set and reading the kernel's ACK:
// "bare" is the minimum (one libnftnl batch, send, ACK), "vouch" is dnsward's NftSets::vouch
// (event drain, view lookup, batch, ACK, view update). Fresh addresses every call, so each
// call is a real netlink round trip. Run as root inside a network namespace of its own:
//   unshare -n build/bench/vouch_latency [iterations]
// netinet/in.h before the kernel headers: linux/in.h (which they pull in) defers to it only
// when it comes first.
#include <netinet/in.h>
#include <libmnl/libmnl.h>
#include <libnftnl/set.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <time.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "dnsward/clock.hpp"
#include "dnsward/nft_sets.hpp"

using namespace dnsward;

namespace {

struct Stats {
  double p50, p99;
};

Stats stats(std::vector<uint64_t>& v) {
  std::sort(v.begin(), v.end());
  return {v[v.size() / 2] / 1000.0, v[v.size() * 99 / 100] / 1000.0};
}

IpAddr addr_for(uint32_t n) {
  // 198.18.0.0/15 holds 131072 addresses: enough for every call of a run.
  const uint8_t b[4] = {198, uint8_t(18 + ((n >> 16) & 1)), uint8_t(n >> 8), uint8_t(n)};
  return IpAddr::v4(b);
}

// The bare minimum: one batch with one NEWSETELEM of k elements, then the ACK.
uint64_t bare_add(mnl_socket* nl, uint32_t& seq, uint32_t first, int k) {
  char buf[16384];
  const uint64_t t0 = mono_ns();
  mnl_nlmsg_batch* b = mnl_nlmsg_batch_start(buf, sizeof buf);
  nftnl_batch_begin(static_cast<char*>(mnl_nlmsg_batch_current(b)), seq++);
  mnl_nlmsg_batch_next(b);
  nftnl_set* s = nftnl_set_alloc();
  nftnl_set_set_str(s, NFTNL_SET_TABLE, "bench");
  nftnl_set_set_str(s, NFTNL_SET_NAME, "bare4");
  for (int i = 0; i < k; ++i) {
    nftnl_set_elem* e = nftnl_set_elem_alloc();
    const IpAddr a = addr_for(first + uint32_t(i));
    nftnl_set_elem_set(e, NFTNL_SET_ELEM_KEY, a.bytes, 4);
    nftnl_set_elem_set_u64(e, NFTNL_SET_ELEM_TIMEOUT, 600000);
    nftnl_set_elem_add(s, e);
  }
  const uint32_t mseq = seq++;
  nlmsghdr* nlh = nftnl_nlmsg_build_hdr(static_cast<char*>(mnl_nlmsg_batch_current(b)),
                                        NFT_MSG_NEWSETELEM, NFPROTO_INET,
                                        NLM_F_CREATE | NLM_F_ACK, mseq);
  nftnl_set_elems_nlmsg_build_payload(nlh, s);
  nftnl_set_free(s);
  mnl_nlmsg_batch_next(b);
  nftnl_batch_end(static_cast<char*>(mnl_nlmsg_batch_current(b)), seq++);
  mnl_nlmsg_batch_next(b);
  if (mnl_socket_sendto(nl, mnl_nlmsg_batch_head(b), mnl_nlmsg_batch_size(b)) < 0) std::abort();
  mnl_nlmsg_batch_stop(b);
  char rbuf[8192];
  for (;;) {
    const ssize_t n = mnl_socket_recvfrom(nl, rbuf, sizeof rbuf);
    if (n < 0) std::abort();
    auto* h = reinterpret_cast<nlmsghdr*>(rbuf);
    if (h->nlmsg_seq == mseq && h->nlmsg_type == NLMSG_ERROR) {
      if (static_cast<nlmsgerr*>(mnl_nlmsg_get_payload(h))->error != 0) std::abort();
      break;
    }
  }
  return mono_ns() - t0;
}

}  // namespace

int main(int argc, char** argv) {
  const int iters = argc > 1 ? std::atoi(argv[1]) : 5000;
  if (std::system("nft add table inet bench && nft add set inet bench bare4 "
                  "'{ type ipv4_addr; flags timeout; size 262144; }'") != 0) {
    std::fprintf(stderr, "cannot create the bench set (root, in a namespace of its own?)\n");
    return 1;
  }
  mnl_socket* nl = mnl_socket_open(NETLINK_NETFILTER);
  mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID);
  uint32_t seq = 1;
  NftTarget t;
  t.table = "bench";
  t.set4 = "vouch4";
  t.set6 = "vouch6";
  t.set_size = 262144;
  NftSets sets(t, RefreshMode::Auto);

  std::printf("%-28s %10s %10s\n", "operation (fresh addresses)", "p50 us", "p99 us");
  for (int k : {1, 8}) {
    std::vector<uint64_t> bare, vouch;
    // Interleaved, so both see the same machine noise; the sets are flushed between the
    // two element counts so that neither grows large.
    uint32_t next = 0;
    for (int i = 0; i < iters; ++i) {
      bare.push_back(bare_add(nl, seq, next, k));
      std::vector<VouchItem> items;
      for (int j = 0; j < k; ++j) items.push_back({addr_for(next + uint32_t(j)), 600});
      std::string err;
      const uint64_t t0 = mono_ns();
      if (!sets.vouch(items, t0 / 1000000u, Provenance{"bench.example", "bench.example"}, err)) {
        std::fprintf(stderr, "vouch: %s\n", err.c_str());
        return 1;
      }
      vouch.push_back(mono_ns() - t0);
      next += uint32_t(k);
    }
    const Stats b = stats(bare), v = stats(vouch);
    std::printf("bare netlink add, %d addr%s   %10.1f %10.1f\n", k, k == 1 ? " " : "s", b.p50, b.p99);
    std::printf("dnsward vouch,    %d addr%s   %10.1f %10.1f\n", k, k == 1 ? " " : "s", v.p50, v.p99);
    std::printf("ratio vouch/bare            %10.2f %10.2f\n", v.p50 / b.p50, v.p99 / b.p99);
    (void)!std::system("nft flush set inet bench bare4; nft flush set inet bench vouch4");
  }
  mnl_socket_close(nl);
  (void)!std::system("nft delete table inet bench");
  return 0;
}
