// Which addresses an answer vouches for, which records it loses, and special-purpose
// address classification. Answers are built from zone text by ldns.
#include <doctest/doctest.h>
#include <ldns/ldns.h>

#include <fmt/format.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <new>
#include <string>
#include <vector>

#include "dnsward/answer.hpp"
#include "dnsward/packet.hpp"
#include "dnsward/policy.hpp"
#include "dnsward/wire.hpp"

using namespace dnsward;

namespace {

using Bytes = std::vector<uint8_t>;

// An answer to `qname A` with the given answer and authority records (zone text).
Bytes answer(const char* qname, std::vector<std::string> an, std::vector<std::string> ns = {},
             std::vector<std::string> ar = {}, ldns_pkt_rcode rc = LDNS_RCODE_NOERROR) {
  ldns_pkt* p = ldns_pkt_new();
  ldns_pkt_set_id(p, 1);
  ldns_pkt_set_qr(p, true);
  ldns_pkt_set_rcode(p, rc);
  ldns_rr* q = nullptr;
  REQUIRE(ldns_rr_new_question_frm_str(&q, (std::string(qname) + " IN A").c_str(), nullptr, nullptr) ==
          LDNS_STATUS_OK);
  ldns_pkt_push_rr(p, LDNS_SECTION_QUESTION, q);
  auto push = [&](const std::vector<std::string>& rrs, ldns_pkt_section sec) {
    for (const auto& t : rrs) {
      ldns_rr* rr = nullptr;
      REQUIRE_MESSAGE(ldns_rr_new_frm_str(&rr, t.c_str(), 0, nullptr, nullptr) == LDNS_STATUS_OK, t);
      ldns_pkt_push_rr(p, sec, rr);
    }
  };
  push(an, LDNS_SECTION_ANSWER);
  push(ns, LDNS_SECTION_AUTHORITY);
  push(ar, LDNS_SECTION_ADDITIONAL);
  uint8_t* wire = nullptr;
  std::size_t len = 0;
  REQUIRE(ldns_pkt2wire(&wire, p, &len) == LDNS_STATUS_OK);
  Bytes b(wire, wire + len);
  LDNS_FREE(wire);
  ldns_pkt_free(p);
  return b;
}

AnswerScan scan(const Bytes& b, const char* qname, bool allow_private = false,
                std::size_t max_addresses = kDefaultMaxAddresses) {
  std::string w;
  REQUIRE(text_to_wire(qname, w));
  return scan_answer(b.data(), b.size(), reinterpret_cast<const uint8_t*>(w.data()), w.size(),
                     allow_private, max_addresses);
}

// The client's query `qname IN A` as parse_query reads it (ID 77, RD, no EDNS).
Query query(const char* qname) {
  std::string w;
  REQUIRE(text_to_wire(qname, w));
  Bytes pkt = {0, 77, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0};
  pkt.insert(pkt.end(), w.begin(), w.end());
  pkt.insert(pkt.end(), {0, 1, 0, 1});
  Query q;
  REQUIRE(parse_query(pkt.data(), pkt.size(), q) == ParseStatus::Ok);
  return q;
}

// ldns's reading of the answer section of a message, one record per line.
std::vector<std::string> answer_texts(const Bytes& msg) {
  ldns_pkt* p = nullptr;
  REQUIRE(ldns_wire2pkt(&p, msg.data(), msg.size()) == LDNS_STATUS_OK);
  std::vector<std::string> out;
  for (std::size_t i = 0; i < ldns_pkt_ancount(p); ++i) {
    char* t = ldns_rr2str(ldns_rr_list_rr(ldns_pkt_answer(p), i));
    out.emplace_back(t);
    LDNS_FREE(t);
  }
  ldns_pkt_free(p);
  return out;
}

// Runs f with the address space limited to what the process maps now plus headroom: an
// allocation larger than that throws std::bad_alloc instead of quietly succeeding. Returns
// false if f threw it. (Not under ASan, which maps terabytes of shadow memory.)
template <class F>
bool within_address_space(std::size_t headroom, F f) {
  long pages = 0;
  FILE* statm = std::fopen("/proc/self/statm", "r");
  REQUIRE(statm);
  REQUIRE(std::fscanf(statm, "%ld", &pages) == 1);
  std::fclose(statm);
  rlimit old{};
  REQUIRE(getrlimit(RLIMIT_AS, &old) == 0);
  rlimit tight = old;
  tight.rlim_cur = rlim_t(pages) * rlim_t(sysconf(_SC_PAGESIZE)) + headroom;
  REQUIRE(setrlimit(RLIMIT_AS, &tight) == 0);
  bool fit = true;
  try {
    f();
  } catch (const std::bad_alloc&) {
    fit = false;
  }
  REQUIRE(setrlimit(RLIMIT_AS, &old) == 0);
  return fit;
}

std::vector<std::string> texts(const AnswerScan& s) {
  std::vector<std::string> out;
  for (const auto& v : s.vouch) out.push_back(v.addr.text() + "/" + std::to_string(v.ttl));
  return out;
}

bool special(const char* a) {
  IpAddr ip;
  REQUIRE(IpAddr::parse(a, ip));
  return is_special_purpose(ip);
}

}  // namespace

TEST_CASE("special-purpose addresses are recognised, ordinary ones are not") {
  for (const char* a : {"0.0.0.0", "0.1.2.3", "10.0.0.1", "127.0.0.1", "127.255.0.9", "100.64.0.1",
                        "100.127.255.255", "169.254.169.254", "172.16.0.1", "172.31.255.255",
                        "192.168.1.1", "192.0.0.8", "224.0.0.1", "239.1.1.1", "240.0.0.1",
                        "255.255.255.255", "::", "::1", "fe80::1", "febf::1", "fec0::1", "fc00::1",
                        "fd12:3456::1", "ff02::1", "::ffff:10.0.0.1", "::ffff:127.0.0.1",
                        "::ffff:169.254.169.254", "64:ff9b::a00:1", "64:ff9b::7f00:1",
                        "64:ff9b:1::1", "::10.0.0.1", "2002:a00:1::1", "2002:c0a8:101::1"}) {
    CAPTURE(a);
    CHECK(special(a));
  }
  for (const char* a : {"1.1.1.1", "8.8.8.8", "151.101.0.223", "198.18.0.1", "100.63.255.255",
                        "100.128.0.0", "172.15.255.255", "172.32.0.0", "192.169.0.1",
                        "169.253.0.1", "223.255.255.255", "2001:db8::1", "2a04:4e42::223",
                        "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1", "fe00::1"}) {
    CAPTURE(a);
    CHECK_FALSE(special(a));
  }
}

TEST_CASE("A and AAAA of the query name are vouched for with their TTLs") {
  const auto s = scan(answer("www.example.", {"www.example. 300 IN A 198.18.0.1",
                                              "www.example. 60 IN A 198.18.0.2"}),
                      "www.example");
  REQUIRE(s.ok);
  CHECK(texts(s) == std::vector<std::string>{"198.18.0.1/300", "198.18.0.2/60"});
  CHECK(s.drop.empty());
  CHECK(s.cache_ttl == 60);
  CHECK(s.ttl_offsets.size() == 2);
}

TEST_CASE("the CNAME chain is followed from the query name; targets need no entry") {
  const auto s = scan(answer("alias.example.", {"alias.example. 300 IN CNAME mid.cdn.",
                                                "mid.cdn. 300 IN CNAME edge.cdn.",
                                                "edge.cdn. 20 IN A 198.18.1.1",
                                                "unrelated.example. 300 IN A 198.18.9.9"}),
                      "ALIAS.example.");
  REQUIRE(s.ok);
  CHECK(texts(s) == std::vector<std::string>{"198.18.1.1/20"});
  CHECK(s.drop == std::vector<uint16_t>{3});  // an address off the chain never reaches the client
}

TEST_CASE("the chain names are the query name and each CNAME target followed, as qname_text() writes them") {
  const Bytes b = answer("Alias.Example.", {"alias.example. 300 IN CNAME Mid.CDN.",
                                            "mid.cdn. 300 IN CNAME edge.cdn.",
                                            "edge.cdn. 20 IN A 198.18.1.1",
                                            "other.example. 300 IN CNAME elsewhere.cdn.",
                                            "unrelated.example. 300 IN A 198.18.9.9"});
  const std::vector<std::string> want = {"alias.example", "mid.cdn", "edge.cdn"};
  const auto s = scan(b, "Alias.Example.");
  REQUIRE(s.ok);
  CHECK(s.chain == want);
  const Query q = query("Alias.Example.");
  CHECK(s.chain.front() == q.qname_text());
  // The same after the rebuild that drops the off-chain address.
  const PreparedAnswer p = prepare_answer(q, 1, b.data(), b.size(), {});
  REQUIRE(p.status == PrepareStatus::Ok);
  CHECK(p.dropped_off_chain == 1);
  CHECK(p.scan.chain == want);
  // No CNAME: the query name alone.
  CHECK(scan(answer("www.example.", {"www.example. 300 IN A 198.18.1.2"}), "www.example").chain ==
        std::vector<std::string>{"www.example"});
  // A loop lists each name once.
  CHECK(scan(answer("a.example.", {"a.example. 300 IN CNAME b.example.", "b.example. 300 IN CNAME a.example."}),
             "a.example")
            .chain == std::vector<std::string>{"a.example", "b.example"});
}

TEST_CASE("a CNAME loop or an over-long chain stops safely") {
  const auto loop = scan(answer("a.example.", {"a.example. 300 IN CNAME b.example.",
                                               "b.example. 300 IN CNAME a.example.",
                                               "a.example. 300 IN A 198.18.1.1"}),
                         "a.example");
  REQUIRE(loop.ok);
  CHECK(texts(loop) == std::vector<std::string>{"198.18.1.1/300"});
  std::vector<std::string> rrs;
  for (int i = 0; i < 20; ++i)
    rrs.push_back(fmt::format("n{}.example. 300 IN CNAME n{}.example.", i, i + 1));
  rrs.push_back("n20.example. 300 IN A 198.18.1.2");
  const auto longchain = scan(answer("n0.example.", rrs), "n0.example");
  REQUIRE(longchain.ok);
  CHECK(longchain.vouch.empty());  // beyond kMaxChain links: not vouched, dropped
  CHECK(longchain.drop == std::vector<uint16_t>{20});
}

TEST_CASE("special-purpose addresses are dropped unless the entry says private=yes") {
  const Bytes b = answer("mixed.example.", {"mixed.example. 300 IN A 10.1.2.3",
                                            "mixed.example. 300 IN A 198.18.0.7",
                                            "mixed.example. 300 IN A 169.254.169.254"});
  const auto s = scan(b, "mixed.example");
  REQUIRE(s.ok);
  CHECK(texts(s) == std::vector<std::string>{"198.18.0.7/300"});
  CHECK(s.drop == std::vector<uint16_t>{0, 2});
  CHECK(s.dropped_special == 2);
  const auto p = scan(b, "mixed.example", true);
  CHECK(p.vouch.size() == 3);
  CHECK(p.drop.empty());

  Bytes rebuilt;
  REQUIRE(rebuild_without(b.data(), b.size(), s.drop, rebuilt));
  const auto again = scan(rebuilt, "mixed.example");
  REQUIRE(again.ok);
  CHECK(texts(again) == std::vector<std::string>{"198.18.0.7/300"});
  CHECK(again.drop.empty());
  CHECK(wire::get16(rebuilt.data() + 6) == 1);  // ANCOUNT
}

TEST_CASE("address records outside the answer section are dropped, never vouched") {
  const auto s = scan(answer("www.deleg.example.", {}, {"deleg.example. 300 IN NS ns.deleg.example.",
                                                        "www.deleg.example. 300 IN A 198.18.3.3"},
                             {"ns.deleg.example. 300 IN A 198.18.8.8"}),
                      "www.deleg.example");
  REQUIRE(s.ok);
  CHECK(s.vouch.empty());
  CHECK(s.drop == std::vector<uint16_t>{1});
}

TEST_CASE("SVCB/HTTPS hints are vouched for, or the record is dropped") {
  const auto s = scan(answer("svc.example.", {"svc.example. 300 IN HTTPS 1 . alpn=h2 ipv4hint=198.18.5.5 ipv6hint=2001:db8::5",
                                              "svc.example. 300 IN A 198.18.5.5"}),
                      "svc.example");
  REQUIRE(s.ok);
  CHECK(texts(s) == std::vector<std::string>{"198.18.5.5/300", "2001:db8::5/300"});
  const auto bad = scan(answer("svc.example.", {"svc.example. 300 IN HTTPS 1 . ipv4hint=10.0.0.1",
                                                "svc.example. 300 IN HTTPS 2 . alpn=h3"}),
                        "svc.example");
  REQUIRE(bad.ok);
  CHECK(bad.vouch.empty());
  CHECK(bad.drop == std::vector<uint16_t>{0});
  CHECK(bad.dropped_special == 1);
}

TEST_CASE("negative answers are cached for min(SOA TTL, SOA MINIMUM)") {
  const auto s = scan(answer("nx.example.", {},
                             {"example. 300 IN SOA ns.example. h.example. 1 2 3 4 45"}, {},
                             LDNS_RCODE_NXDOMAIN),
                      "nx.example");
  REQUIRE(s.ok);
  CHECK(s.cache_ttl == 45);
  const auto nosoa = scan(answer("nx.example.", {}, {}, {}, LDNS_RCODE_NXDOMAIN), "nx.example");
  CHECK(nosoa.cache_ttl == -1);
  const auto servfail = scan(answer("x.example.", {}, {}, {}, LDNS_RCODE_SERVFAIL), "x.example");
  CHECK(servfail.cache_ttl == -1);
}

TEST_CASE("TTLs are clamped to max-ttl and aged, never below zero") {
  Bytes b = answer("t.example.", {"t.example. 7200 IN A 198.18.0.1", "t.example. 10 IN A 198.18.0.2"});
  const auto s = scan(b, "t.example");
  rewrite_ttls(b.data(), s.ttl_offsets, 3600, 0);
  CHECK(wire::get32(b.data() + s.ttl_offsets[0]) == 3600);
  CHECK(wire::get32(b.data() + s.ttl_offsets[1]) == 10);
  rewrite_ttls(b.data(), s.ttl_offsets, UINT32_MAX, 20);
  CHECK(wire::get32(b.data() + s.ttl_offsets[0]) == 3580);
  CHECK(wire::get32(b.data() + s.ttl_offsets[1]) == 0);
}

TEST_CASE("truncated or corrupted answers are rejected without reading out of bounds") {
  const Bytes b = answer("www.example.", {"www.example. 300 IN CNAME e.cdn.", "e.cdn. 300 IN A 198.18.0.1"});
  std::string w;
  text_to_wire("www.example", w);
  for (std::size_t cut = 12; cut < b.size(); ++cut) {
    CAPTURE(cut);
    const auto s = scan_answer(b.data(), cut, reinterpret_cast<const uint8_t*>(w.data()), w.size(), false);
    CHECK_FALSE(s.ok);
  }
}

TEST_CASE("a rebuilt answer has no pointer into a dropped record, and keeps the OPT") {
  // ldns compresses: the A owners point into the CNAME's RDATA or into each other, and the
  // first A (a special-purpose address) is dropped.
  ldns_pkt* p = ldns_pkt_new();
  ldns_pkt_set_id(p, 9);
  ldns_pkt_set_qr(p, true);
  ldns_rr* q = nullptr;
  REQUIRE(ldns_rr_new_question_frm_str(&q, "Alias.Example. IN A", nullptr, nullptr) == LDNS_STATUS_OK);
  ldns_pkt_push_rr(p, LDNS_SECTION_QUESTION, q);
  for (const char* t : {"alias.example. 300 IN CNAME x.cdn.example.", "x.cdn.example. 300 IN A 10.1.1.1",
                        "x.cdn.example. 300 IN A 198.18.0.1"}) {
    ldns_rr* rr = nullptr;
    REQUIRE(ldns_rr_new_frm_str(&rr, t, 0, nullptr, nullptr) == LDNS_STATUS_OK);
    ldns_pkt_push_rr(p, LDNS_SECTION_ANSWER, rr);
  }
  ldns_rr* soa = nullptr;
  REQUIRE(ldns_rr_new_frm_str(&soa, "example. 60 IN SOA ns.example. h.example. 1 2 3 4 5", 0, nullptr, nullptr) ==
          LDNS_STATUS_OK);
  ldns_pkt_push_rr(p, LDNS_SECTION_AUTHORITY, soa);
  ldns_pkt_set_edns_udp_size(p, 1232);
  ldns_pkt_set_edns_data(p, ldns_rdf_new_frm_data(LDNS_RDF_TYPE_UNKNOWN, 6, "\x00\x0f\x00\x02\x00\x16"));
  uint8_t* wire = nullptr;
  std::size_t len = 0;
  REQUIRE(ldns_pkt2wire(&wire, p, &len) == LDNS_STATUS_OK);
  const Bytes b(wire, wire + len);
  LDNS_FREE(wire);
  ldns_pkt_free(p);

  const auto s = scan(b, "alias.example");
  REQUIRE(s.drop == std::vector<uint16_t>{1});
  Bytes out;
  REQUIRE(rebuild_without(b.data(), b.size(), s.drop, out));
  CHECK(std::memcmp(out.data() + 12, "\x05" "Alias\x07" "Example", 14) == 0);  // question case kept
  ldns_pkt* back = nullptr;
  REQUIRE(ldns_wire2pkt(&back, out.data(), out.size()) == LDNS_STATUS_OK);
  REQUIRE(ldns_pkt_ancount(back) == 2);
  char* a0 = ldns_rr2str(ldns_rr_list_rr(ldns_pkt_answer(back), 0));
  char* a1 = ldns_rr2str(ldns_rr_list_rr(ldns_pkt_answer(back), 1));
  char* ns0 = ldns_rr2str(ldns_rr_list_rr(ldns_pkt_authority(back), 0));
  CHECK(std::string(a0) == "alias.example.\t300\tIN\tCNAME\tx.cdn.example.\n");
  CHECK(std::string(a1) == "x.cdn.example.\t300\tIN\tA\t198.18.0.1\n");
  CHECK(std::string(ns0) == "example.\t60\tIN\tSOA\tns.example. h.example. 1 2 3 4 5\n");
  CHECK(ldns_pkt_edns(back));
  CHECK(ldns_pkt_edns_udp_size(back) == 1232);
  LDNS_FREE(a0);
  LDNS_FREE(a1);
  LDNS_FREE(ns0);
  ldns_pkt_free(back);
  const auto again = scan(out, "alias.example");
  CHECK(texts(again) == std::vector<std::string>{"198.18.0.1/300"});
}

TEST_CASE("an answer vouches for at most max_addresses addresses; A records beyond go") {
  std::vector<std::string> rrs;
  for (int i = 0; i < 3500; ++i)
    rrs.push_back(fmt::format("many.example. 300 IN A 198.18.{}.{}", i / 250, i % 250));
  const Bytes b = answer("many.example.", rrs);  // about 56 KB: a TCP answer
  const auto s = scan(b, "many.example", false, 64);
  REQUIRE(s.ok);
  CHECK(s.vouch.size() == 64);
  CHECK(s.vouch.front().addr.text() == "198.18.0.0");  // the first 64, in answer order
  CHECK(s.vouch.back().addr.text() == "198.18.0.63");
  CHECK(s.drop.size() == 3436);
  CHECK(s.dropped_over_cap == 3436);
  CHECK(s.addresses_over_cap == 3436);
  CHECK(s.dropped_special == 0);
  CHECK(s.dropped_off_chain == 0);

  const PreparedAnswer p = prepare_answer(query("many.example"), 1, b.data(), b.size(), {false, 64, 3600});
  REQUIRE(p.status == PrepareStatus::Ok);
  CHECK(p.scan.vouch.size() == 64);
  CHECK(p.scan.drop.empty());
  CHECK(p.dropped_over_cap == 3436);
  CHECK(p.addresses_over_cap == 3436);
  CHECK(wire::get16(p.msg.data() + 6) == 64);  // ANCOUNT
  const auto left = answer_texts(p.msg);
  REQUIRE(left.size() == 64);
  for (std::size_t i = 0; i < left.size(); ++i)
    CHECK(left[i] == "many.example.\t300\tIN\tA\t" + p.scan.vouch[i].addr.text() + "\n");
}

TEST_CASE("an HTTPS record whose hints exceed the cap is dropped whole, nothing vouched from it") {
  std::string hints;
  for (int i = 0; i < 5000; ++i)
    hints += fmt::format("{}198.19.{}.{}", i ? "," : "", i / 250, i % 250);
  const Bytes b = answer("svc.example.", {"svc.example. 300 IN HTTPS 1 . alpn=h2 ipv4hint=" + hints,
                                          "svc.example. 300 IN A 198.18.0.1"});
  const auto s = scan(b, "svc.example", false, 64);
  REQUIRE(s.ok);
  CHECK(texts(s) == std::vector<std::string>{"198.18.0.1/300"});
  CHECK(s.drop == std::vector<uint16_t>{0});
  CHECK(s.dropped_over_cap == 1);
  CHECK(s.addresses_over_cap == 5000);

  const PreparedAnswer p = prepare_answer(query("svc.example"), 1, b.data(), b.size(), {false, 64, 3600});
  REQUIRE(p.status == PrepareStatus::Ok);
  CHECK(answer_texts(p.msg) == std::vector<std::string>{"svc.example.\t300\tIN\tA\t198.18.0.1\n"});
}

TEST_CASE("an HTTPS record fits if its new hints fit the budget left, else it goes whole") {
  const Bytes b = answer("svc.example.", {"svc.example. 300 IN A 198.18.0.1",
                                          "svc.example. 300 IN HTTPS 1 . ipv4hint=198.18.0.1,198.18.0.2,198.18.0.3"});
  const auto fits = scan(b, "svc.example", false, 3);  // 1 vouched + 2 new hints = 3
  CHECK(texts(fits) == std::vector<std::string>{"198.18.0.1/300", "198.18.0.2/300", "198.18.0.3/300"});
  CHECK(fits.drop.empty());
  const auto over = scan(b, "svc.example", false, 2);  // 1 vouched + 2 new hints > 2
  CHECK(texts(over) == std::vector<std::string>{"198.18.0.1/300"});
  CHECK(over.drop == std::vector<uint16_t>{1});
  CHECK(over.dropped_over_cap == 1);
  CHECK(over.addresses_over_cap == 3);
}

TEST_CASE("an address carried twice is vouched once, with the longest TTL, and counts once") {
  const Bytes b = answer("dup.example.", {"dup.example. 60 IN A 198.18.0.1",
                                          "dup.example. 300 IN A 198.18.0.1",
                                          "dup.example. 100 IN A 198.18.0.2",
                                          "dup.example. 900 IN HTTPS 1 . ipv4hint=198.18.0.2,198.18.0.1",
                                          "dup.example. 20 IN A 198.18.0.1",
                                          "dup.example. 300 IN A 198.18.0.3"});
  const auto s = scan(b, "dup.example", false, 2);
  REQUIRE(s.ok);
  CHECK(texts(s) == std::vector<std::string>{"198.18.0.1/900", "198.18.0.2/900"});
  CHECK(s.drop == std::vector<uint16_t>{5});  // only the third distinct address is over the cap
  CHECK(s.dropped_over_cap == 1);
}

TEST_CASE("a header claiming 65535 answers with a short body is refused, allocating little") {
  std::string w;
  REQUIRE(text_to_wire("www.example", w));
  Bytes b = {0, 1, 0x81, 0x80, 0, 1, 0xff, 0xff, 0xff, 0xff, 0, 0};
  b.insert(b.end(), w.begin(), w.end());
  b.insert(b.end(), {0, 1, 0, 1});
  b.insert(b.end(), {0xc0, 12, 0, 1, 0, 1, 0, 0, 1, 0x2c, 0, 4, 198, 18, 0, 1});  // one real A
  AnswerScan s;
  s.ok = true;
#if defined(__SANITIZE_ADDRESS__)
  s = scan(b, "www.example");
#else
  // 131070 records of the header's claim, reserved up front, would be megabytes.
  CHECK(within_address_space(std::size_t(2) << 20, [&] { s = scan(b, "www.example"); }));
#endif
  CHECK_FALSE(s.ok);
  CHECK(prepare_answer(query("www.example"), 1, b.data(), b.size(), {}).status == PrepareStatus::Malformed);
}

TEST_CASE("prepare_answer refuses other answers, drops and counts, and clamps TTLs") {
  const Query q = query("Mix.Example");
  const Bytes b = answer("mix.example.", {"mix.example. 7200 IN A 198.18.0.1",
                                          "mix.example. 300 IN A 10.0.0.1",
                                          "other.example. 300 IN A 198.18.9.9"},
                         {"mix.example. 300 IN A 198.18.8.8"});
  CHECK(prepare_answer(q, 2, b.data(), b.size(), {}).status == PrepareStatus::Mismatch);
  CHECK(prepare_answer(q, 1, b.data(), 11, {}).status == PrepareStatus::Malformed);
  CHECK(prepare_answer(q, 1, b.data(), b.size() - 1, {}).status == PrepareStatus::Malformed);

  const PreparedAnswer p = prepare_answer(q, 1, b.data(), b.size(), {false, 64, 3600});
  REQUIRE(p.status == PrepareStatus::Ok);
  CHECK(p.dropped_special == 1);
  CHECK(p.dropped_off_chain == 2);  // off the chain, and in the authority section
  CHECK(p.dropped_over_cap == 0);
  CHECK(p.dropped() == 3);
  CHECK(texts(p.scan) == std::vector<std::string>{"198.18.0.1/3600"});
  CHECK(answer_texts(p.msg) == std::vector<std::string>{"mix.example.\t3600\tIN\tA\t198.18.0.1\n"});
  CHECK(wire::get16(p.msg.data()) == 1);  // the upstream ID: relay_answer puts the client's

  const PreparedAnswer priv = prepare_answer(q, 1, b.data(), b.size(), {true, 64, 60});
  REQUIRE(priv.status == PrepareStatus::Ok);
  CHECK(priv.dropped_special == 0);
  CHECK(texts(priv.scan) == std::vector<std::string>{"198.18.0.1/60", "10.0.0.1/60"});

  const Bytes clean = answer("mix.example.", {"mix.example. 300 IN A 198.18.0.1"});
  const PreparedAnswer same = prepare_answer(q, 1, clean.data(), clean.size(), {});
  REQUIRE(same.status == PrepareStatus::Ok);
  CHECK(same.msg == clean);  // nothing to drop, TTL under max-ttl: relayed byte for byte
}

TEST_CASE("prepare_answer fails closed when records must go but the rest cannot be rebuilt") {
  // The additional section is not read by the scan, but the rebuild walks it (for the OPT):
  // a cut one leaves records to drop and no way to drop them.
  Bytes b = answer("cut.example.", {"cut.example. 300 IN A 10.0.0.1", "cut.example. 300 IN A 198.18.0.1"},
                   {}, {"x.example. 300 IN TXT \"some text to cut\""});
  b.resize(b.size() - 3);
  const PreparedAnswer p = prepare_answer(query("cut.example"), 1, b.data(), b.size(), {});
  CHECK(p.status == PrepareStatus::RebuildFailed);
  CHECK(p.msg.empty());
}

TEST_CASE("with strip_ech, HTTPS records lose their ech parameter and keep the rest; ech made mandatory drops the record") {
  const Bytes b = answer("svc.example.", {"svc.example. 300 IN HTTPS 1 . alpn=h2 ech=AAQBAgME ipv4hint=198.18.5.5",
                                          "svc.example. 300 IN HTTPS 2 . mandatory=ech ech=AAQBAgME",
                                          "svc.example. 300 IN HTTPS 3 . alpn=h3",
                                          "svc.example. 300 IN A 198.18.5.5"});
  const auto s = scan(b, "svc.example");
  REQUIRE(s.ok);
  CHECK(s.ech == std::vector<uint16_t>{0, 1});
  CHECK(s.ech_mandatory == std::vector<uint16_t>{1});

  PrepareOptions o{false, 64, 3600};
  const PreparedAnswer kept = prepare_answer(query("svc.example"), 1, b.data(), b.size(), o);
  REQUIRE(kept.status == PrepareStatus::Ok);
  CHECK(kept.msg == b);  // without the guard, relayed as it came
  o.strip_ech = true;
  const PreparedAnswer p = prepare_answer(query("svc.example"), 1, b.data(), b.size(), o);
  REQUIRE(p.status == PrepareStatus::Ok);
  CHECK(p.ech_stripped == 1);
  CHECK(p.dropped_ech == 1);
  CHECK(p.scan.ech.empty());
  // Read back by ldns, the reference parser: the first record without ech, the second gone.
  CHECK(answer_texts(p.msg) == std::vector<std::string>{
                                   "svc.example.\t300\tIN\tHTTPS\t1 . alpn=h2 ipv4hint=198.18.5.5\n",
                                   "svc.example.\t300\tIN\tHTTPS\t3 . alpn=h3\n",
                                   "svc.example.\t300\tIN\tA\t198.18.5.5\n"});
  CHECK(texts(p.scan) == std::vector<std::string>{"198.18.5.5/300"});
}
