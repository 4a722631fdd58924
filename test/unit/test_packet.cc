// The hot-path parser and the reply builders. Every reply is read back with ldns, an
// independent parser, so a malformed packet of ours cannot pass as well-formed.
#include <doctest/doctest.h>
#include <ldns/ldns.h>

#include <cstring>
#include <random>
#include <vector>

#include "dnsward/packet.hpp"
#include "dnsward/policy.hpp"

using namespace dnsward;
using namespace dnsward::wire;

namespace {

using Bytes = std::vector<uint8_t>;

Bytes make_query(const char* name, uint16_t qtype, bool edns = false, uint16_t udp = 1232,
                 uint8_t version = 0, uint16_t id = 0x1234) {
  uint8_t buf[600];
  Writer w(buf, sizeof buf);
  w.u16(id); w.u16(flag::RD); w.u16(1); w.u16(0); w.u16(0); w.u16(edns ? 1 : 0);
  w.text_name(name);
  w.u16(qtype); w.u16(klass::IN);
  if (edns) { w.u8(0); w.u16(type::OPT); w.u16(udp); w.u32(uint32_t(version) << 16); w.u16(0); }
  REQUIRE(w.ok());
  return Bytes(buf, buf + w.len());
}

Query parsed(const Bytes& b) {
  Query q;
  REQUIRE(parse_query(b.data(), b.size(), q) == ParseStatus::Ok);
  return q;
}

struct LdnsPkt {
  ldns_pkt* p = nullptr;
  explicit LdnsPkt(const uint8_t* d, std::size_t n) {
    REQUIRE(ldns_wire2pkt(&p, d, n) == LDNS_STATUS_OK);
  }
  ~LdnsPkt() { ldns_pkt_free(p); }
};

// The first EDE option (code, text) in a reply's OPT, read by ldns.
std::pair<int, std::string> ede_of(const LdnsPkt& pkt) {
  ldns_rdf* data = ldns_pkt_edns_data(pkt.p);
  if (!data) return {-1, ""};
  const uint8_t* d = ldns_rdf_data(data);
  const std::size_t n = ldns_rdf_size(data);
  for (std::size_t i = 0; i + 4 <= n;) {
    const uint16_t code = get16(d + i), len = get16(d + i + 2);
    if (i + 4 + len > n) break;
    if (code == edns::OPT_EDE && len >= 2)
      return {get16(d + i + 4), std::string(reinterpret_cast<const char*>(d + i + 6), len - 2)};
    i += 4u + len;
  }
  return {-1, ""};
}

}  // namespace

TEST_CASE("a well-formed query keeps its 0x20 letter case and its EDNS parameters") {
  const Bytes b = make_query("WwW.ExAmple.COM", type::AAAA, true, 4096);
  const Query q = parsed(b);
  CHECK(q.id == 0x1234);
  CHECK(q.qtype == type::AAAA);
  CHECK(q.qclass == klass::IN);
  CHECK(q.qname_len == 17);
  CHECK(std::memcmp(q.qname, "\x03WwW\x07" "ExAmple\x03" "COM", 16) == 0);
  CHECK(std::memcmp(q.qname_lc, "\x03www\x07" "example\x03" "com", 16) == 0);
  CHECK(q.has_edns);
  CHECK(q.edns_udp_size == 4096);
  CHECK(q.udp_limit(1232) == 1232);
  CHECK(parsed(make_query("a.b", type::A)).udp_limit(1232) == 512);
  CHECK(parsed(make_query("a.b", type::A, true, 100)).udp_limit(1232) == 512);
}

TEST_CASE("malformed queries give FORMERR or are dropped, never read out of bounds") {
  const Bytes good = make_query("a.example", type::A, true);
  auto with = [&](auto edit) { Bytes b = good; edit(b); return b; };
  const struct { const char* what; Bytes pkt; ParseStatus want; } cases[] = {
      {"empty", {}, ParseStatus::Drop},
      {"short header", Bytes(good.begin(), good.begin() + 11), ParseStatus::Drop},
      {"a response (QR=1)", with([](Bytes& b) { b[2] |= 0x80; }), ParseStatus::Drop},
      {"opcode NOTIFY", with([](Bytes& b) { b[2] |= 4 << 3; }), ParseStatus::NotImp},
      {"QDCOUNT 0", with([](Bytes& b) { b[5] = 0; }), ParseStatus::FormErr},
      {"QDCOUNT 2", with([](Bytes& b) { b[5] = 2; }), ParseStatus::FormErr},
      {"ANCOUNT 1", with([](Bytes& b) { b[7] = 1; }), ParseStatus::FormErr},
      {"ARCOUNT 2 with one OPT", with([](Bytes& b) { b[11] = 2; }), ParseStatus::FormErr},
      {"header only", Bytes(good.begin(), good.begin() + 12), ParseStatus::FormErr},
      {"truncated name", Bytes(good.begin(), good.begin() + 15), ParseStatus::FormErr},
      {"truncated question", Bytes(good.begin(), good.begin() + 25), ParseStatus::FormErr},
      {"truncated OPT", Bytes(good.end() - 3, good.end()), ParseStatus::Drop},
      {"OPT cut short", Bytes(good.begin(), good.end() - 1), ParseStatus::FormErr},
      {"trailing garbage", with([](Bytes& b) { b.push_back(0); }), ParseStatus::FormErr},
      {"label over 63", with([](Bytes& b) { b[12] = 64; }), ParseStatus::FormErr},
      {"pointer in qname", with([](Bytes& b) { b[12] = 0xC0; b[13] = 12; }), ParseStatus::FormErr},
      {"label type 0x40", with([](Bytes& b) { b[12] = 0x41; }), ParseStatus::FormErr},
      {"OPT rdlen beyond end", with([](Bytes& b) { b[b.size() - 1] = 9; }), ParseStatus::FormErr},
  };
  for (const auto& c : cases) {
    CAPTURE(c.what);
    Query q;
    CHECK(int(parse_query(c.pkt.data(), c.pkt.size(), q)) == int(c.want));
  }

  // A name of 256 bytes: 4 labels of 63 plus root = 257 > 255.
  Bytes big = {0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0};
  for (int l = 0; l < 4; ++l) { big.push_back(63); big.insert(big.end(), 63, 'a'); }
  big.insert(big.end(), {0, 0, 1, 0, 1});
  Query q;
  CHECK(parse_query(big.data(), big.size(), q) == ParseStatus::FormErr);

  // Two OPT records; an OPT not owned by the root; a malformed option inside the OPT.
  Bytes two_opt = good;
  two_opt[11] = 2;
  two_opt.insert(two_opt.end(), good.end() - 11, good.end());
  CHECK(parse_query(two_opt.data(), two_opt.size(), q) == ParseStatus::FormErr);
  Bytes bad_owner = good;
  bad_owner.insert(bad_owner.end() - 11, {1, 'x'});
  CHECK(parse_query(bad_owner.data(), bad_owner.size(), q) == ParseStatus::FormErr);
  Bytes bad_option(good.begin(), good.end() - 1);
  bad_option.push_back(4);
  bad_option.insert(bad_option.end(), {0, 10, 0, 9});  // option claims 9 bytes, has 0
  CHECK(parse_query(bad_option.data(), bad_option.size(), q) == ParseStatus::FormErr);
}

TEST_CASE("compression pointers must point strictly backwards: loops are refused") {
  // header + "\x01a\xC0\x0C": the pointer leads back to the label before it, for ever.
  const uint8_t loop[] = {0, 0, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 'a', 0xC0, 12};
  Reader r(loop, sizeof loop, 12);
  CHECK_FALSE(read_name(r));
  const uint8_t forward[] = {0, 0, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 14, 1, 'a', 0};
  Reader r2(forward, sizeof forward, 12);
  CHECK_FALSE(read_name(r2));
  const uint8_t into_header[] = {0, 0, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 'a', 0xC0, 2};
  Reader r3(into_header, sizeof into_header, 12);
  CHECK_FALSE(read_name(r3));
  // A legal chain: "b" + pointer to "a." at 12.
  const uint8_t ok[] = {0, 0, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 'A', 0, 1, 'B', 0xC0, 12};
  Reader r4(ok, sizeof ok, 15);
  uint8_t out[255];
  std::size_t n = 0;
  REQUIRE(read_name(r4, out, &n));
  CHECK(n == 5);
  CHECK(std::memcmp(out, "\x01" "b\x01" "a", 5) == 0);
  CHECK(r4.pos() == sizeof ok);
}

TEST_CASE("a denial is NXDOMAIN with the question, an SOA and EDE 15 naming the name") {
  const Bytes b = make_query("Evil.Example", type::A, true, 1232, 0, 0xBEEF);
  const Query q = parsed(b);
  ReplyOptions o;
  o.negative_ttl = 7;
  uint8_t out[1500];
  const std::size_t n = build_negative(q, rcode::NXDOMAIN, o, out, sizeof out, edns::EDE_BLOCKED,
                                       "dnsward: evil.example is not on the allowlist");
  REQUIRE(n > 0);
  LdnsPkt pkt(out, n);
  CHECK(ldns_pkt_id(pkt.p) == 0xBEEF);
  CHECK(ldns_pkt_get_rcode(pkt.p) == LDNS_RCODE_NXDOMAIN);
  CHECK(ldns_pkt_qr(pkt.p));
  CHECK(ldns_pkt_rd(pkt.p));
  CHECK(ldns_pkt_ra(pkt.p));
  CHECK(ldns_pkt_qdcount(pkt.p) == 1);
  CHECK(ldns_pkt_ancount(pkt.p) == 0);
  REQUIRE(ldns_pkt_nscount(pkt.p) == 1);
  ldns_rr* soa = ldns_rr_list_rr(ldns_pkt_authority(pkt.p), 0);
  CHECK(ldns_rr_get_type(soa) == LDNS_RR_TYPE_SOA);
  CHECK(ldns_rr_ttl(soa) == 7);
  CHECK(std::memcmp(out + 12, "\x04" "Evil\x07" "Example", 13) == 0);  // 0x20 case echoed
  const auto [code, text] = ede_of(pkt);
  CHECK(code == 15);
  CHECK(text == "dnsward: evil.example is not on the allowlist");

  // Without EDNS in the query there is no OPT (RFC 6891 7) and so no EDE.
  const Query plain = parsed(make_query("evil.example", type::A));
  const std::size_t m = build_negative(plain, rcode::NXDOMAIN, o, out, sizeof out,
                                       edns::EDE_BLOCKED, "x");
  LdnsPkt pkt2(out, m);
  CHECK_FALSE(ldns_pkt_edns(pkt2.p));
  CHECK(ldns_pkt_arcount(pkt2.p) == 0);
}

TEST_CASE("BADVERS travels in the OPT's extended RCODE bits") {
  const Query q = parsed(make_query("a.example", type::A, true, 1232, 1));
  uint8_t out[512];
  const std::size_t n = build_rcode(q, rcode::BADVERS, ReplyOptions{}, out, sizeof out);
  REQUIRE(n > 0);
  CHECK((get16(out + 2) & 0x0f) == 0);
  CHECK(out[n - 11 + 5] == 1);  // OPT TTL's first byte: 16 >> 4
}

TEST_CASE("localhost is answered locally with loopback addresses") {
  CHECK(is_localhost(reinterpret_cast<const uint8_t*>("\x09localhost"), 11));
  CHECK(is_localhost(reinterpret_cast<const uint8_t*>("\x01" "a\x09localhost"), 13));
  CHECK_FALSE(is_localhost(reinterpret_cast<const uint8_t*>("\x0anotlocalhost"), 12));
  CHECK_FALSE(is_localhost(reinterpret_cast<const uint8_t*>("\x09localhost\x03" "com"), 15));
  uint8_t out[512];
  const Query q = parsed(make_query("LocalHost", type::AAAA));
  const std::size_t n = build_localhost(q, ReplyOptions{}, out, sizeof out);
  LdnsPkt pkt(out, n);
  REQUIRE(ldns_pkt_ancount(pkt.p) == 1);
  ldns_rr* rr = ldns_rr_list_rr(ldns_pkt_answer(pkt.p), 0);
  CHECK(ldns_rr_get_type(rr) == LDNS_RR_TYPE_AAAA);
  CHECK(ldns_rdf_data(ldns_rr_rdf(rr, 0))[15] == 1);
}

namespace {
std::string fmt_answer(const char* qname, int i) {
  return std::string(qname) + " 300 IN A 198.18." + std::to_string(i / 250) + "." +
         std::to_string(i % 250 + 1);
}

// An upstream answer with compression, an additional record and an OPT, built by ldns.
Bytes upstream_answer(uint16_t id, const char* qname, int n_answers, bool with_opt = true,
                      const char* extra_txt = nullptr) {
  ldns_pkt* p = ldns_pkt_new();
  ldns_pkt_set_id(p, id);
  ldns_pkt_set_qr(p, true);
  ldns_pkt_set_aa(p, true);
  ldns_pkt_set_rd(p, true);
  ldns_rr* q = nullptr;
  REQUIRE(ldns_rr_new_question_frm_str(&q, (std::string(qname) + " IN A").c_str(), nullptr, nullptr) == LDNS_STATUS_OK);
  ldns_pkt_push_rr(p, LDNS_SECTION_QUESTION, q);
  for (int i = 0; i < n_answers; ++i) {
    ldns_rr* rr = nullptr;
    REQUIRE(ldns_rr_new_frm_str(&rr, fmt_answer(qname, i).c_str(), 0, nullptr, nullptr) == LDNS_STATUS_OK);
    ldns_pkt_push_rr(p, LDNS_SECTION_ANSWER, rr);
  }
  ldns_rr* ns = nullptr;
  REQUIRE(ldns_rr_new_frm_str(&ns, "example. 300 IN NS ns1.example.", 0, nullptr, nullptr) == LDNS_STATUS_OK);
  ldns_pkt_push_rr(p, LDNS_SECTION_AUTHORITY, ns);
  ldns_rr* glue = nullptr;
  REQUIRE(ldns_rr_new_frm_str(&glue, "ns1.example. 300 IN A 192.0.2.53", 0, nullptr, nullptr) == LDNS_STATUS_OK);
  ldns_pkt_push_rr(p, LDNS_SECTION_ADDITIONAL, glue);
  if (extra_txt) {
    ldns_rr* t = nullptr;
    REQUIRE(ldns_rr_new_frm_str(&t, extra_txt, 0, nullptr, nullptr) == LDNS_STATUS_OK);
    ldns_pkt_push_rr(p, LDNS_SECTION_ANSWER, t);
  }
  if (with_opt) {
    ldns_pkt_set_edns_udp_size(p, 1232);
    ldns_pkt_set_edns_data(p, ldns_rdf_new_frm_data(LDNS_RDF_TYPE_UNKNOWN, 6,
                                                    "\x00\x0f\x00\x02\x00\x16"));  // EDE 22
  }
  uint8_t* wire = nullptr;
  std::size_t len = 0;
  REQUIRE(ldns_pkt2wire(&wire, p, &len) == LDNS_STATUS_OK);
  Bytes b(wire, wire + len);
  LDNS_FREE(wire);
  ldns_pkt_free(p);
  return b;
}
}  // namespace

TEST_CASE("an upstream answer reaches the client with its own ID and 0x20 question") {
  const Query q = parsed(make_query("WwW.Example", type::A, true, 1232, 0, 0x4242));
  const Bytes ans = upstream_answer(0x9999, "www.example.", 2);
  uint8_t out[65536];
  std::size_t n = 0;
  REQUIRE(relay_answer(q, 0x9999, ans.data(), ans.size(), 1232, ReplyOptions{}, out, sizeof out, n) ==
          RelayStatus::Ok);
  LdnsPkt pkt(out, n);
  CHECK(ldns_pkt_id(pkt.p) == 0x4242);
  CHECK(std::memcmp(out + 12, "\x03WwW\x07" "Example", 12) == 0);
  CHECK(ldns_pkt_ancount(pkt.p) == 2);
  CHECK(ldns_pkt_nscount(pkt.p) == 1);
  CHECK(ldns_pkt_arcount(pkt.p) == 0);  // no glue: additional data is never relayed
  CHECK(ldns_pkt_edns(pkt.p));
  CHECK(ede_of(pkt).first == 22);       // the upstream's EDE is relayed
  CHECK_FALSE(ldns_pkt_aa(pkt.p));      // we are not the authority for what we relay
  CHECK(ldns_pkt_ra(pkt.p));
}

TEST_CASE("a client without EDNS gets no OPT even when the upstream sent one") {
  const Query q = parsed(make_query("www.example", type::A));
  const Bytes ans = upstream_answer(7, "www.example.", 1);
  uint8_t out[65536];
  std::size_t n = 0;
  REQUIRE(relay_answer(q, 7, ans.data(), ans.size(), 512, ReplyOptions{}, out, sizeof out, n) ==
          RelayStatus::Ok);
  LdnsPkt pkt(out, n);
  CHECK_FALSE(ldns_pkt_edns(pkt.p));
  CHECK(ldns_pkt_arcount(pkt.p) == 0);
}

TEST_CASE("answers too big for the client are truncated; additional data never counts") {
  const Query q = parsed(make_query("www.example", type::A));
  // 30 A records: 12+17 + 30*16 + NS + glue: fits 512 without the glue? Check both ways.
  const Bytes ans = upstream_answer(7, "www.example.", 29);
  uint8_t out[65536];
  std::size_t n = 0;
  REQUIRE(ans.size() > 512);
  REQUIRE(relay_answer(q, 7, ans.data(), ans.size(), 512, ReplyOptions{}, out, sizeof out, n) ==
          RelayStatus::Ok);
  {
    LdnsPkt pkt(out, n);
    CHECK(n <= 512);
    CHECK(ldns_pkt_ancount(pkt.p) == 29);
    CHECK(ldns_pkt_arcount(pkt.p) == 0);
    CHECK_FALSE(ldns_pkt_tc(pkt.p));  // it fits once the (never relayed) glue is gone
  }
  const Bytes huge = upstream_answer(7, "www.example.", 60);
  REQUIRE(relay_answer(q, 7, huge.data(), huge.size(), 512, ReplyOptions{}, out, sizeof out, n) ==
          RelayStatus::Ok);
  LdnsPkt pkt(out, n);
  CHECK(ldns_pkt_tc(pkt.p));
  CHECK(ldns_pkt_ancount(pkt.p) == 0);
  CHECK(ldns_pkt_qdcount(pkt.p) == 1);
  // Over TCP the limit is 65535 and everything goes through.
  REQUIRE(relay_answer(q, 7, huge.data(), huge.size(), 65535, ReplyOptions{}, out, sizeof out, n) ==
          RelayStatus::Ok);
  LdnsPkt full(out, n);
  CHECK(ldns_pkt_ancount(full.p) == 60);
}

TEST_CASE("an answer with the wrong ID or question is refused") {
  const Query q = parsed(make_query("www.example", type::A));
  uint8_t out[65536];
  std::size_t n = 0;
  const Bytes other = upstream_answer(7, "www.other.", 1);
  CHECK(relay_answer(q, 7, other.data(), other.size(), 512, ReplyOptions{}, out, sizeof out, n) ==
        RelayStatus::Mismatch);
  const Bytes same = upstream_answer(8, "www.example.", 1);
  CHECK(relay_answer(q, 7, same.data(), same.size(), 512, ReplyOptions{}, out, sizeof out, n) ==
        RelayStatus::Mismatch);
}

TEST_CASE("every truncation and corruption of an upstream answer is handled safely") {
  const Query q = parsed(make_query("www.example", type::A, true));
  const Bytes ans = upstream_answer(7, "www.example.", 3);
  uint8_t out[65536];
  std::size_t n = 0;
  for (std::size_t cut = 0; cut < ans.size(); ++cut) {
    CAPTURE(cut);
    const RelayStatus s =
        relay_answer(q, 7, ans.data(), cut, 1232, ReplyOptions{}, out, sizeof out, n);
    CHECK(s != RelayStatus::Ok);
  }
  std::mt19937 rng(42);
  for (int i = 0; i < 20000; ++i) {
    Bytes b = ans;
    for (int k = 0; k < 3; ++k) b[12 + rng() % (b.size() - 12)] = uint8_t(rng());
    if (relay_answer(q, 7, b.data(), b.size(), 1232, ReplyOptions{}, out, sizeof out, n) ==
        RelayStatus::Ok) {
      ldns_pkt* p = nullptr;
      // Whatever we relay must at least be a message of the right shape.
      CHECK(n >= 12);
      if (ldns_wire2pkt(&p, out, n) == LDNS_STATUS_OK) ldns_pkt_free(p);
    }
  }
}

TEST_CASE("random bytes never crash the query parser") {
  std::mt19937 rng(7);
  const Bytes good = make_query("a.b.example", type::A, true);
  for (int i = 0; i < 50000; ++i) {
    Bytes b;
    if (i % 2) {
      b.resize(rng() % 64);
      for (auto& x : b) x = uint8_t(rng());
    } else {
      b = good;
      for (int k = 0; k < 4; ++k) b[rng() % b.size()] = uint8_t(rng());
      b.resize(rng() % (b.size() + 4));
    }
    Query q;
    const ParseStatus s = parse_query(b.data(), b.size(), q);
    if (s == ParseStatus::Ok) CHECK(q.qname_len >= 1);
  }
}

TEST_CASE("the upstream query carries our ID, the client's question and one plain OPT") {
  const Query q = parsed(make_query("WwW.Example", type::A, true, 4096, 0, 0x1111));
  uint8_t out[512];
  const std::size_t n = build_upstream_query(q, 0x2222, 1232, out, sizeof out);
  LdnsPkt pkt(out, n);
  CHECK(ldns_pkt_id(pkt.p) == 0x2222);
  CHECK(ldns_pkt_rd(pkt.p));
  CHECK(ldns_pkt_edns(pkt.p));
  CHECK(ldns_pkt_edns_udp_size(pkt.p) == 1232);
  CHECK(get16(out + 10) == 1);  // ARCOUNT: the OPT alone
  CHECK(std::memcmp(out + 12, "\x03WwW", 4) == 0);
  CHECK(n == 12 + 13 + 4 + 11);  // exactly 11 bytes of OPT at the end (c-ares 1.18 trap)
}

TEST_CASE("0x20: letters take their case from the random bits, everything else is kept") {
  // w1-x.example.com: a digit and a hyphen among the letters
  const uint8_t name[] = {4, 'w', '1', '-', 'x', 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 3, 'c', 'o', 'm', 0};
  uint8_t ones[sizeof name], zeros[sizeof name] = {}, out[sizeof name];
  std::memset(ones, 0xff, sizeof ones);
  randomize_case(name, sizeof name, ones, out);
  const uint8_t upper[] = {4, 'W', '1', '-', 'X', 7, 'E', 'X', 'A', 'M', 'P', 'L', 'E', 3, 'C', 'O', 'M', 0};
  CHECK(std::memcmp(out, upper, sizeof out) == 0);
  randomize_case(upper, sizeof upper, zeros, out);
  CHECK(std::memcmp(out, name, sizeof out) == 0);
  // Length bytes never change, whatever the random bits (a label of length 'W' | 0x20...).
  const uint8_t odd[] = {1, 'a', 0};
  uint8_t got[3];
  randomize_case(odd, 3, ones, got);
  CHECK(got[0] == 1);
  CHECK(got[1] == 'A');
  CHECK(got[2] == 0);
}

TEST_CASE("0x20: an answer's question must match the name as sent byte for byte") {
  const uint8_t sent[] = {3, 'W', 'w', 'W', 4, 't', 'E', 's', 'T', 0};
  std::vector<uint8_t> ans = {0x12, 0x34, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0};
  ans.insert(ans.end(), sent, sent + sizeof sent);
  ans.insert(ans.end(), {0, 1, 0, 1});
  CHECK(question_case_matches(ans.data(), ans.size(), sent, sizeof sent));
  ans[13] = 'w';
  CHECK_FALSE(question_case_matches(ans.data(), ans.size(), sent, sizeof sent));
  ans[5] = 0;  // no question: nothing to compare
  CHECK(question_case_matches(ans.data(), ans.size(), sent, sizeof sent));
}

TEST_CASE("the RR type table: mnemonics and RFC 3597 TYPEnnn, both ways, for every type number") {
  CHECK(type::text(type::A) == "A");
  CHECK(type::text(type::HTTPS) == "HTTPS");
  CHECK(type::text(type::CAA) == "CAA");
  CHECK(type::text(99) == "TYPE99");  // not in the table: the generic form
  CHECK(type::text(65535) == "TYPE65535");
  CHECK(type::mnemonic(99) == nullptr);
  // Every number's text reads back as that number; every TYPEnnn too, known or not.
  for (uint32_t t = 1; t <= 65535; ++t) {
    uint16_t back = 0;
    if (!type::from_text(type::text(uint16_t(t)), back) || back != t) FAIL_CHECK("type " << t);
    if (!type::from_text("TYPE" + std::to_string(t), back) || back != t) FAIL_CHECK("TYPE" << t);
  }
  const struct { const char* text; int code; } cases[] = {
      {"https", 65}, {"Aaaa", 28}, {"type65", 65}, {"TXT", 16},   // any letter case
      {"TYPE0", -1}, {"TYPE65536", -1}, {"TYPE", -1}, {"TYPE+1", -1}, {"TYPE 1", -1},
      {"TYPE1x", -1}, {"", -1}, {"A ", -1}, {"BOGUS", -1}, {"TYPE-1", -1},
  };
  for (const auto& c : cases) {
    CAPTURE(c.text);
    uint16_t code = 0;
    CHECK(type::from_text(c.text, code) == (c.code >= 0));
    if (c.code >= 0) CHECK(code == c.code);
  }
}

TEST_CASE("kNoEde, the default, writes no EDE option; any other code writes exactly one") {
  const Query q = parsed(make_query("x.example", type::A, true));
  const ReplyOptions o;
  uint8_t out[512];
  const std::size_t none = build_rcode(q, rcode::SERVFAIL, o, out, sizeof out);
  REQUIRE(none > 0);
  CHECK(ede_of(LdnsPkt(out, none)).first == -1);
  CHECK(build_rcode(q, rcode::SERVFAIL, o, out, sizeof out, edns::kNoEde, "ignored") == none);
  const std::size_t one = build_rcode(q, rcode::SERVFAIL, o, out, sizeof out, edns::EDE_OTHER, "why");
  CHECK(ede_of(LdnsPkt(out, one)) == std::pair<int, std::string>{0, "why"});
}
