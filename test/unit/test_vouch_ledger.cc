// The vouch ledger and the batch commit, against a fake kernel that keeps nftables'
// semantics: a batch is all or nothing; an exclusive add of a held element is EEXIST; a
// delete of a missing one is ENOENT; a plain re-add refreshes the timeout only where the
// kernel can update in place (6.12+); a full set is ENFILE.
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "dnsward/vouch_ledger.hpp"
#include "dnsward/policy.hpp"

using namespace dnsward;

namespace {

/// A judge that lists only pattern (with private=yes, so it keeps every address).
VoucherJudge listed_if(std::string pattern, Voucher how = Voucher::ListedPrivate) {
  return [pattern, how](const IpAddr&, std::string_view p) { return p == pattern ? how : Voucher::Gone; };
}

IpAddr v4(uint8_t last) {
  const uint8_t b[4] = {198, 18, 0, last};
  return IpAddr::v4(b);
}
IpAddr v6(uint8_t last) {
  uint8_t b[16] = {0x20, 0x01, 0x0d, 0xb8};
  b[15] = last;
  return IpAddr::v6(b);
}

struct FakeKernel : ElementPort {
  bool update_in_place = false;  // kernel 6.12+
  std::size_t size = 0;          // 0: unlimited
  // key text -> expiry (ms, fake clock); a port set's elements under "ports:" + key text, so
  // an element sent in a message for the other kind of set lands where no lookup finds it.
  std::map<std::string, uint64_t> held;
  uint64_t now = 1'000'000;
  std::vector<std::vector<ElemMsg>> batches;

  bool lose_answers = false;  // apply the batch, then lose its answers (no ACK in time)

  bool transact(const std::vector<ElemMsg>& msgs, std::vector<int>& results, std::string& err) override {
    if (lose_answers) {
      lose_answers = false;
      std::vector<int> ignored;
      transact(msgs, ignored, err);
      err = "no netlink answer from the kernel in time";
      return false;
    }
    batches.push_back(msgs);
    auto next = held;
    results.assign(msgs.size(), 0);
    bool failed = false;
    for (std::size_t i = 0; i < msgs.size(); ++i) {
      for (const ElemChange& c : msgs[i].elems) {
        const std::string k = (msgs[i].ported ? "ports:" : "") + c.key().text();
        const bool has = next.count(k) && next[k] > now;
        if (msgs[i].op == ElemOp::Del) {
          if (!has) results[i] = ENOENT;
          else next.erase(k);
        } else if (has) {
          if (msgs[i].op == ElemOp::AddExcl || msgs[i].op == ElemOp::AddIfMissing) results[i] = EEXIST;
          else if (update_in_place && with_expiration) next[k] = now + c.timeout_ms;
          // else: ACKed, and nothing changes (kernels before 6.12)
        } else if (size && next.size() >= size) {
          results[i] = ENFILE;
        } else {
          next[k] = now + c.timeout_ms;
        }
      }
      failed |= results[i] != 0;
    }
    if (!failed) held = next;
    return true;
  }
  static std::string at(const SetKey& a) { return (a.port ? "ports:" : "") + a.text(); }
  uint64_t left(const SetKey& a) { return held.count(at(a)) ? held[at(a)] - now : 0; }
  bool element_left(const SetKey& key, bool& exists, uint64_t& left_ms, std::string&) override {
    const std::string a = at(key);
    exists = held.count(a) && held[a] > now;
    left_ms = !exists ? 0 : held[a] >= UINT64_MAX / 4 ? kNoExpiry : held[a] - now;
    return true;
  }
};

bool vouch(VouchLedger& l, FakeKernel& k, const std::vector<VouchItem>& items, RefreshMode mode,
           const char* pattern = "www.test", const char* name = "www.test",
           const std::vector<std::string>* chain = nullptr) {
  std::vector<uint64_t> eff;
  const auto changes = l.plan(items, k.now, mode, eff);
  std::vector<ChangeResult> res;
  std::vector<uint64_t> left;
  std::string err;
  int e = 0;
  const bool ok = changes.empty() || commit_changes(k, changes, res, err, e, nullptr, &left);
  l.committed(items, changes, eff, res, Provenance{pattern, name, chain}, k.now, &left);
  return ok;
}

/// The names a record is bound to; each must be there once.
std::set<std::string> names_of(const VouchLedger& l, const SetKey& key) {
  std::set<std::string> out;
  const LedgerRecord* r = l.find(key);
  REQUIRE(r);
  std::size_t n = 0;
  for_each_name(r->names, [&](std::string_view name) {
    out.emplace(name);
    ++n;
  });
  CHECK_MESSAGE(n == out.size(), "a name is bound twice: " << r->names);
  return out;
}

}  // namespace

TEST_CASE("an answer's addresses are added once and the same answer within a second costs nothing") {
  FakeKernel k;
  VouchLedger l;
  REQUIRE(vouch(l, k, {{v4(1), 300}, {v6(1), 300}}, RefreshMode::Replace));
  CHECK(k.left(v4(1)) == 300000);
  CHECK(k.left(v6(1)) == 300000);
  CHECK(k.batches.size() == 1);
  k.now += 500;
  REQUIRE(vouch(l, k, {{v4(1), 300}, {v6(1), 300}}, RefreshMode::Replace));
  CHECK(k.batches.size() == 1);  // held long enough (within the second of slack)
  k.now += 10000;
  REQUIRE(vouch(l, k, {{v4(1), 300}}, RefreshMode::Replace));
  CHECK(k.batches.size() == 2);  // ten seconds on, the element is extended
  CHECK(k.left(v4(1)) == 300000);
}

TEST_CASE("replace mode extends a held element by delete and add in one batch") {
  FakeKernel k;  // a 6.1 kernel: a plain re-add would change nothing
  VouchLedger l;
  REQUIRE(vouch(l, k, {{v4(1), 60}}, RefreshMode::Replace));
  k.now += 30000;
  REQUIRE(vouch(l, k, {{v4(1), 600}}, RefreshMode::Replace));
  CHECK(k.left(v4(1)) == 600000);
  REQUIRE(k.batches.size() == 2);
  REQUIRE(k.batches[1].size() == 2);
  CHECK(k.batches[1][0].op == ElemOp::Del);
  CHECK(k.batches[1][1].op == ElemOp::Add);
}

TEST_CASE("an element the kernel holds without the ledger knowing gets the new timeout, not its old one") {
  FakeKernel k;  // a 6.1 kernel
  k.held[v4(7).text()] = k.now + 5000;  // left by a previous run, or added by someone else
  VouchLedger l;
  REQUIRE(vouch(l, k, {{v4(7), 300}, {v4(8), 300}}, RefreshMode::Replace));
  CHECK(k.left(v4(7)) == 300000);  // EEXIST on the exclusive add: replaced
  CHECK(k.left(v4(8)) == 300000);
  CHECK(l.find(v4(7))->kernel_ms == k.now + 300000);
}

TEST_CASE("a view rebuilt from a dump knows what the kernel holds, with its real expiry") {
  FakeKernel k;
  VouchLedger l;
  REQUIRE(vouch(l, k, {{v4(1), 3600}}, RefreshMode::Update));
  // Someone deletes the element and adds it back with one minute; the dump says so.
  k.held[v4(1).text()] = k.now + 60000;
  l.reset_kernel({{v4(1), 60000}}, k.now);
  CHECK(l.find(v4(1))->kernel_ms == k.now + 60000);
  // The next (short) answer must restore what the first answer promised, not take 30 s.
  k.update_in_place = true;
  k.with_expiration = true;
  REQUIRE(vouch(l, k, {{v4(1), 30}}, RefreshMode::Update));
  CHECK(k.left(v4(1)) == 3600000);
}

TEST_CASE("a later short-TTL answer never shortens an element an earlier answer promised for longer") {
  FakeKernel k;
  k.update_in_place = true;
  k.with_expiration = true;
  VouchLedger l;
  REQUIRE(vouch(l, k, {{v4(1), 3630}}, RefreshMode::Update));
  k.now += 1000;
  REQUIRE(vouch(l, k, {{v4(1), 60}}, RefreshMode::Update));
  CHECK(k.left(v4(1)) == 3629000);
}

TEST_CASE("the same address twice in one answer keeps the longest timeout") {
  FakeKernel k;
  VouchLedger l;
  REQUIRE(vouch(l, k, {{v4(1), 60}, {v4(1), 900}, {v4(1), 300}}, RefreshMode::Replace));
  CHECK(k.left(v4(1)) == 900000);
  REQUIRE(k.batches.size() == 1);
  CHECK(k.batches[0].size() == 1);
  CHECK(k.batches[0][0].elems.size() == 1);
}

TEST_CASE("a full set refuses the whole answer and the ledger records nothing held") {
  FakeKernel k;
  k.size = 2;
  VouchLedger l;
  CHECK_FALSE(vouch(l, k, {{v4(1), 60}, {v4(2), 60}, {v4(3), 60}}, RefreshMode::Replace));
  CHECK(k.held.empty());
  CHECK(l.held(AF_INET, k.now) == 0);
}

TEST_CASE("thousands of changes go in batches and messages of bounded size, replacements never split") {
  FakeKernel k;
  VouchLedger l;
  std::vector<VouchItem> items;
  for (int i = 0; i < 5000; ++i) {
    const uint8_t b[4] = {198, 18, uint8_t(i >> 8), uint8_t(i)};
    items.push_back({IpAddr::v4(b), 60});
  }
  REQUIRE(vouch(l, k, items, RefreshMode::Replace));
  CHECK(k.held.size() == 5000);
  for (const auto& batch : k.batches) {
    std::size_t n = 0;
    for (const auto& m : batch) {
      CHECK(m.elems.size() <= kElemsPerMsg);
      n += m.elems.size();
    }
    CHECK(n <= kChangesPerBatch + 1);
  }
  // Now all of them again, longer: delete + add pairs.
  const std::size_t before = k.batches.size();
  for (auto& i : items) i.timeout_s = 600;
  REQUIRE(vouch(l, k, items, RefreshMode::Replace));
  for (std::size_t b = before; b < k.batches.size(); ++b) {
    std::map<std::string, int> ops;  // each address deleted and added in the same batch
    for (const auto& m : k.batches[b])
      for (const auto& e : m.elems) ops[e.addr.text()] += m.op == ElemOp::Del ? 1 : 10;
    for (const auto& [a, v] : ops) CHECK_MESSAGE(v == 11, a);
  }
  CHECK(k.left(items[4999].addr) == 600000);
}

TEST_CASE("an entry that lost private=yes keeps its public addresses and revokes its special-purpose ones") {
  FakeKernel k;
  VouchLedger l;
  const uint8_t ten[4] = {10, 1, 2, 3};
  REQUIRE(vouch(l, k, {{v4(1), 300}, {IpAddr::v4(ten), 300}}, RefreshMode::Replace, "intranet.test"));
  CHECK(l.revocations(listed_if("intranet.test"), [](const IpAddr&, std::string_view) { return false; }, k.now).empty());
  const auto dels = l.revocations(listed_if("intranet.test", Voucher::Listed),
                                  [](const IpAddr&, std::string_view) { return false; }, k.now);
  REQUIRE(dels.size() == 1);
  CHECK(dels[0].addr == IpAddr::v4(ten));
  CHECK(dels[0].op == ElemOp::Del);
}

TEST_CASE("an add whose answers were lost may have been applied: a reload still revokes it") {
  FakeKernel k;
  VouchLedger l;
  k.lose_answers = true;
  CHECK_FALSE(vouch(l, k, {{v4(1), 300}}, RefreshMode::Replace, "gone.test"));
  REQUIRE(k.left(v4(1)) == 300000);  // the kernel applied it all the same
  const auto dels = l.revocations(listed_if("kept.test"), [](const IpAddr&, std::string_view) { return false; }, k.now);
  REQUIRE(dels.size() == 1);
  CHECK(dels[0].addr == v4(1));
  // And the next answer for it does not take its absence for granted: no plain add that a
  // 6.1 kernel would ACK without extending the element.
  k.now += 200000;
  REQUIRE(vouch(l, k, {{v4(1), 300}}, RefreshMode::Replace, "gone.test"));
  CHECK(k.left(v4(1)) == 300000);
}

TEST_CASE("revocation deletes what the kernel holds; a missing element never hides the others") {
  FakeKernel k;
  VouchLedger l;
  REQUIRE(vouch(l, k, {{v4(1), 300}, {v4(2), 300}, {v4(3), 300}}, RefreshMode::Replace, "gone.test"));
  REQUIRE(vouch(l, k, {{v4(4), 300}}, RefreshMode::Replace, "kept.test"));
  k.held.erase(v4(2).text());  // deleted behind our back; no dump since
  const auto dels = l.revocations(listed_if("kept.test"),
                                  [](const IpAddr&, std::string_view) { return false; }, k.now);
  CHECK(dels.size() == 3);
  std::vector<ChangeResult> res;
  std::string err;
  int e = 0;
  REQUIRE(commit_changes(k, dels, res, err, e));
  l.revoked(dels, res);
  int done = 0, gone = 0;
  for (auto r : res) (r == ChangeResult::Done ? done : gone) += 1;
  CHECK(done == 2);
  CHECK(gone == 1);
  CHECK(k.held.size() == 1);
  CHECK(k.held.count(v4(4).text()) == 1);
}

TEST_CASE("an element vouched by two entries survives the removal of one of them") {
  FakeKernel k;
  VouchLedger l;
  REQUIRE(vouch(l, k, {{v4(1), 300}}, RefreshMode::Replace, "a.test"));
  REQUIRE(vouch(l, k, {{v4(1), 300}}, RefreshMode::Replace, "b.test"));
  CHECK(l.revocations(listed_if("b.test"),
                      [](const IpAddr&, std::string_view) { return false; }, k.now).empty());
  CHECK(l.revocations(listed_if(""),
                      [](const IpAddr&, std::string_view) { return false; }, k.now).size() == 1);
}

TEST_CASE("audit-mode elements are judged by their names; elements without provenance are kept") {
  FakeKernel k;
  VouchLedger l;
  REQUIRE(vouch(l, k, {{v4(1), 300}}, RefreshMode::Replace, "", "ok.test"));
  REQUIRE(vouch(l, k, {{v4(2), 300}}, RefreshMode::Replace, "", "bad.test"));
  l.reset_kernel({{v4(1), 300000}, {v4(2), 300000}, {v4(9), 300000}}, k.now);  // 9: unknown
  const auto dels = l.revocations(listed_if(""),
                                  [](const IpAddr&, std::string_view n) { return n == "ok.test"; }, k.now);
  REQUIRE(dels.size() == 1);
  CHECK(dels[0].addr == v4(2));
}

TEST_CASE("the ledger file round-trips provenance and promises, and a damaged one changes nothing") {
  FakeKernel k;
  VouchLedger l;
  REQUIRE(vouch(l, k, {{v4(1), 300}, {v6(1), 300}}, RefreshMode::Replace, "**.deep.test", "a.b.deep.test"));
  REQUIRE(vouch(l, k, {{v4(1), 300}}, RefreshMode::Replace, "www.test", "www.test"));
  const int64_t wall = 1'700'000'000'000;
  const std::string text = l.serialize(k.now, wall);
  VouchLedger back;
  std::string err;
  REQUIRE(back.merge_saved(text, 5000, wall + 1000, err));  // a restart, one second later
  const LedgerRecord* r = back.find(v4(1));
  REQUIRE(r);
  CHECK(r->kernel_ms == 0);  // only a dump says what the kernel holds
  CHECK(r->promised_ms == 5000 + 299000);
  REQUIRE(r->patterns.size() == 2);
  CHECK(back.pattern(r->patterns[0]) == "**.deep.test");
  CHECK(back.pattern(r->patterns[1]) == "www.test");
  CHECK(r->names == "a.b.deep.test,www.test");

  for (const std::string& bad : {text.substr(0, text.size() - 8), text + "x\n",
                                std::string("dnsward-vouch-ledger 1\n198.18.0.1\t0\twww.test\t2\t-\nend 1\n"),
                                std::string("dnsward-vouch-ledger 1\nnot-an-address\t0\t-\t1\t-\nend 1\n"),
                                std::string("dnsward-vouch-ledger 1\n198.18.0.1\t0\tw w\t0\t-\nend 1\n"),
                                std::string("dnsward-vouch-ledger 1\nend 2\n"), std::string("other 1\n")}) {
    VouchLedger fresh;
    CHECK_FALSE(fresh.merge_saved(bad, 0, wall, err));
    CHECK(fresh.size() == 0);
  }
}

// While the view is reread (after someone else changed the sets), answers and reloads go on.

TEST_CASE("a dump asked for before dnsward's own change never overrides it") {
  FakeKernel k;
  VouchLedger l;
  l.forget_kernel();  // someone deleted an element: the view is being reread
  REQUIRE(vouch(l, k, {{v4(1), 60}}, RefreshMode::Replace));
  l.merge_held(v4(1), 3030000, k.now - 5);  // the dump shows an older, longer element
  l.reread_done();
  CHECK(l.find(v4(1))->kernel_ms == k.now + 60000);  // what dnsward wrote, not the dump
  k.now += 1000;
  REQUIRE(vouch(l, k, {{v4(1), 3000}}, RefreshMode::Replace));
  CHECK(k.left(v4(1)) == 3000000);  // so a longer answer does extend it
}

TEST_CASE("an element re-added during a reread keeps at least the expiry it had before") {
  FakeKernel k;  // 6.1: the exclusive add finds it, and it is replaced
  VouchLedger l;
  // Left by a previous run (no promise known to this one), read at start.
  k.held[v4(1).text()] = k.now + 3030000;
  l.reset_kernel({{v4(1), 3030000}}, k.now);
  k.now += 1000;
  l.forget_kernel();
  REQUIRE(vouch(l, k, {{v4(1), 60}}, RefreshMode::Replace));
  CHECK(k.left(v4(1)) == 3029000);  // not cut to 60 s
}

TEST_CASE("a revocation during a reread deletes what the kernel may hold, and a stale dump does not bring it back") {
  FakeKernel k;
  VouchLedger l;
  REQUIRE(vouch(l, k, {{v4(1), 300}}, RefreshMode::Replace, "gone.test"));
  REQUIRE(vouch(l, k, {{v4(2), 300}}, RefreshMode::Replace, "kept.test"));
  l.forget_kernel();
  const auto dels = l.revocations(listed_if("kept.test"),
                                  [](const IpAddr&, std::string_view) { return false; }, k.now);
  REQUIRE(dels.size() == 1);
  std::vector<ChangeResult> res;
  std::string err;
  int e = 0;
  REQUIRE(commit_changes(k, dels, res, err, e));
  l.revoked(dels, res);
  CHECK(k.held.count(v4(1).text()) == 0);
  l.expire(k.now);  // the upkeep timer must not drop the mark mid-reread
  l.merge_held(v4(1), 299000, k.now - 5);  // asked for before the delete
  l.merge_held(v4(2), 299000, k.now - 5);
  l.reread_done();
  CHECK(l.held(AF_INET, k.now) == 1);
  CHECK(l.find(v4(2))->kernel_ms == k.now + 299000 - 5);
}

TEST_CASE("after a failed reread, revocations still cover what the kernel may hold") {
  FakeKernel k;
  VouchLedger l;
  REQUIRE(vouch(l, k, {{v4(1), 300}}, RefreshMode::Replace, "gone.test"));
  l.forget_kernel();
  l.reread_failed();
  CHECK(l.revocations(listed_if(""), [](const IpAddr&, std::string_view) { return false; },
                      k.now).size() == 1);
}

TEST_CASE("an element is bound to exactly the query name and its CNAME chain, lower-cased, each name once") {
  FakeKernel k;
  VouchLedger l;
  const std::vector<std::string> chain = {"www.test", "Edge.CDN.test.", "e1.cdn.test", "edge.cdn.test"};
  REQUIRE(vouch(l, k, {{v4(1), 300}, {v6(1), 300}}, RefreshMode::Replace, "www.test", "WWW.Test.", &chain));
  const std::set<std::string> want = {"www.test", "edge.cdn.test", "e1.cdn.test"};
  CHECK(names_of(l, v4(1)) == want);
  CHECK(names_of(l, v6(1)) == want);
  // The same answer again binds nothing new.
  k.now += 20000;
  REQUIRE(vouch(l, k, {{v4(1), 300}}, RefreshMode::Replace, "www.test", "www.test", &chain));
  CHECK(names_of(l, v4(1)) == want);
  // Without a chain, the name alone.
  REQUIRE(vouch(l, k, {{v4(2), 300}}, RefreshMode::Replace, "www.test", "Other.Test"));
  CHECK(names_of(l, v4(2)) == std::set<std::string>{"other.test"});
  // What the SNI guard asks: any letter case, a trailing dot ignored; the key must match.
  CHECK(l.bound(v4(1), "EDGE.cdn.test.", k.now));
  CHECK(l.bound(v4(1), "www.test", k.now));
  CHECK_FALSE(l.bound(v4(1), "other.test", k.now));
  CHECK_FALSE(l.bound(v4(1), "cdn.test", k.now));
  CHECK_FALSE(l.bound(v4(1), "www.test.evil", k.now));
  CHECK_FALSE(l.bound(v4(3), "www.test", k.now));
  CHECK_FALSE(l.bound(SetKey(v4(101), v4(1)), "www.test", k.now));  // another guest's key
}

TEST_CASE("binding up to the names cap succeeds; one more is refused before anything changes") {
  FakeKernel k;
  VouchLedger l;
  constexpr std::size_t kCap = 4;
  // The pipeline's order: ask, then vouch only if it fits.
  auto vouch_capped = [&](const std::vector<VouchItem>& items, std::string_view name,
                          const std::vector<std::string>* chain, SetKey* which, std::size_t* bound) {
    if (l.would_overflow_names(items, Provenance{"*.wild.test", name, chain}, kCap, k.now, which, bound))
      return false;
    REQUIRE(vouch(l, k, items, RefreshMode::Replace, "*.wild.test", std::string(name).c_str(), chain));
    return true;
  };
  const std::vector<std::string> chain = {"n0.wild.test", "n1.wild.test"};
  CHECK(vouch_capped({{v4(1), 300}}, "n0.wild.test", &chain, nullptr, nullptr));
  CHECK(vouch_capped({{v4(1), 300}}, "n2.wild.test", nullptr, nullptr, nullptr));
  CHECK(vouch_capped({{v4(1), 300}}, "N3.wild.test.", nullptr, nullptr, nullptr));  // the fourth
  REQUIRE(names_of(l, v4(1)).size() == kCap);
  const std::string before = l.find(v4(1))->names;
  const uint64_t promised = l.find(v4(1))->promised_ms;
  const std::size_t batches = k.batches.size();
  // A fifth name, with a fresh address first: refused, naming the full element.
  k.now += 60000;
  SetKey which;
  std::size_t bound = 0;
  CHECK_FALSE(vouch_capped({{v4(2), 300}, {v4(1), 300}}, "n4.wild.test", nullptr, &which, &bound));
  CHECK(which == SetKey(v4(1)));
  CHECK(bound == kCap);
  CHECK(l.find(v4(1))->names == before);
  CHECK(l.find(v4(1))->promised_ms == promised);
  CHECK_FALSE(l.find(v4(2)));
  CHECK(k.batches.size() == batches);
  // Names it has count once: an answer of bound names, in another case, still fits.
  const std::vector<std::string> known = {"n1.wild.test", "n2.wild.test"};
  CHECK(vouch_capped({{v4(1), 300}}, "N0.WILD.test", &known, nullptr, nullptr));
  CHECK(l.find(v4(1))->names == before);
  // A fresh element whose answer alone is over the cap: refused, with nothing bound yet.
  const std::vector<std::string> longchain = {"a.test", "b.test", "c.test", "d.test", "e.test"};
  bound = 99;
  CHECK_FALSE(vouch_capped({{v4(3), 300}}, "a.test", &longchain, &which, &bound));
  CHECK(which == SetKey(v4(3)));
  CHECK(bound == 0);
  CHECK_FALSE(l.find(v4(3)));
  // Without the cap check nothing is ever dropped: long names, many of them, all kept.
  for (int i = 0; i < 100; ++i) {
    std::string name(200, 'x');
    name += std::to_string(i);
    REQUIRE(vouch(l, k, {{v4(4), 300}}, RefreshMode::Replace, "*.wild.test", name.c_str()));
  }
  CHECK(names_of(l, v4(4)).size() == 100);
}

TEST_CASE("bound() is false once the element expires, and then its names start afresh") {
  FakeKernel k;
  VouchLedger l;
  const std::vector<std::string> chain = {"a.test", "cdn.test"};
  REQUIRE(vouch(l, k, {{v4(1), 300}}, RefreshMode::Replace, "a.test", "a.test", &chain));
  k.now += 299000;
  CHECK(l.bound(v4(1), "cdn.test", k.now));
  k.now += 1000;  // held and promised until exactly now
  CHECK_FALSE(l.bound(v4(1), "cdn.test", k.now));
  CHECK_FALSE(l.bound(v4(1), "a.test", k.now));
  REQUIRE(l.find(v4(1)));  // expire() has not run: the record is still there
  // Its old names no longer count against the cap, nor stay bound.
  const Provenance b{"b.test", "b.test"};
  CHECK_FALSE(l.would_overflow_names({{v4(1), 300}}, b, 1, k.now));
  REQUIRE(vouch(l, k, {{v4(1), 300}}, RefreshMode::Replace, "b.test", "b.test"));
  CHECK(names_of(l, v4(1)) == std::set<std::string>{"b.test"});
  CHECK(l.bound(v4(1), "b.test", k.now));
  CHECK_FALSE(l.bound(v4(1), "a.test", k.now));
}

TEST_CASE("the ledger file keeps every name bound, also more than a lowered cap allows") {
  FakeKernel k;
  VouchLedger l;
  const std::vector<std::string> chain = {"n0.wild.test", "n1.wild.test", "n2.wild.test", "n3.wild.test",
                                          "n4.wild.test"};
  REQUIRE(vouch(l, k, {{v4(1), 300}}, RefreshMode::Replace, "*.wild.test", "n0.wild.test", &chain));
  const int64_t wall = 1'700'000'000'000;
  const std::string text = l.serialize(k.now, wall);
  VouchLedger back;
  std::string err;
  REQUIRE_MESSAGE(back.merge_saved(text, 5000, wall, err), err);
  CHECK(names_of(back, v4(1)) == std::set<std::string>(chain.begin(), chain.end()));
  CHECK(back.bound(v4(1), "n4.wild.test", 5000));  // promised, from the file
  // Restarted with a cap of 3: the record is kept whole, and answers for it fail closed,
  // even ones that bind nothing new, until it expires.
  SetKey which;
  std::size_t bound = 0;
  CHECK(back.would_overflow_names({{v4(1), 300}}, Provenance{"*.wild.test", "n0.wild.test"}, 3, 5000,
                                  &which, &bound));
  CHECK(which == SetKey(v4(1)));
  CHECK(bound == 5);
  CHECK_FALSE(back.would_overflow_names({{v4(1), 300}}, Provenance{"*.wild.test", "n0.wild.test"}, 3,
                                        5000 + 300001));
  // Names written in another case (by hand, or an older dnsward) are read lower-cased.
  VouchLedger mixed;
  REQUIRE(mixed.merge_saved("dnsward-vouch-ledger 1\n198.18.0.1\t" + std::to_string(wall + 60000) +
                                "\ta.test\t0\tA.Test,CDN.test,a.test\nend 1\n",
                            5000, wall, err));
  CHECK(names_of(mixed, v4(1)) == std::set<std::string>{"a.test", "cdn.test"});
}

TEST_CASE("a promise from a ledger written under another clock is clamped to the longest timeout") {
  VouchLedger l;
  l.set_max_timeout_ms(3630000);
  std::string err;
  const int64_t wall = 1'700'000'000'000;
  const std::string text = "dnsward-vouch-ledger 1\n198.18.0.1\t" + std::to_string(wall + 400ll * 86400000) +
                           "\twww.test\t0\t-\n198.18.0.2\t9223372036854775807\twww.test\t0\t-\nend 2\n";
  REQUIRE(l.merge_saved(text, 1000, wall, err));
  CHECK(l.find(IpAddr{v4(1)})->promised_ms == 1000 + 3630000);
  CHECK(l.find(IpAddr{v4(2)})->promised_ms == 1000 + 3630000);
  FakeKernel k;
  k.now = 1000;
  std::vector<uint64_t> eff;
  const auto changes = l.plan({{v4(1), 60}}, k.now, RefreshMode::Replace, eff);
  REQUIRE(changes.size() == 1);
  CHECK(changes[0].timeout_ms == 3630000);
}

TEST_CASE("an answer during a reread leaves someone else's permanent or longer element as it is") {
  FakeKernel k;
  VouchLedger l;
  l.set_max_timeout_ms(3630000);
  k.held[v4(1).text()] = UINT64_MAX / 2;            // added without a timeout
  k.held[v4(2).text()] = k.now + 7 * 86400000ull;   // a week, longer than dnsward sets
  l.reset_kernel({{v4(1), kNoExpiry}, {v4(2), 7 * 86400000ull}}, k.now);
  l.forget_kernel();  // someone changed the sets: the view is reread
  REQUIRE(vouch(l, k, {{v4(1), 60}, {v4(2), 60}}, RefreshMode::Replace));
  CHECK(k.held[v4(1).text()] == UINT64_MAX / 2);
  CHECK(k.left(v4(2)) == 7 * 86400000ull);
  CHECK(l.find(v4(1))->kernel_ms == kNoExpiry);
  // And if it was gone after all, it is added, for what the answer needs.
  k.held.erase(v4(2).text());
  l.forget_kernel();
  REQUIRE(vouch(l, k, {{v4(2), 60}}, RefreshMode::Replace));
  CHECK(k.left(v4(2)) == 60000);
}

TEST_CASE("a dump's silence never takes an element out of a later revocation") {
  FakeKernel k;
  VouchLedger l;
  REQUIRE(vouch(l, k, {{v4(1), 300}}, RefreshMode::Replace, "gone.test"));
  l.forget_kernel();
  l.reread_done();  // the dump missed it (positional walks skip elements)
  CHECK(l.revocations(listed_if(""), [](const IpAddr&, std::string_view) { return false; },
                      k.now).size() == 1);
}

TEST_CASE("during a reread, an element someone re-added with a short timeout is not trusted to live long") {
  FakeKernel k;
  VouchLedger l;
  REQUIRE(vouch(l, k, {{v4(1), 3630}}, RefreshMode::Replace));
  l.forget_kernel();  // someone deleted it
  k.held.erase(v4(1).text());
  l.reread_done();    // the dump confirms it is gone; the prior expiry stays (an upper bound)
  k.held[v4(1).text()] = k.now + 2000;  // and re-added it with 2 s
  l.forget_kernel();  // that event starts another reread; an answer comes first
  REQUIRE(vouch(l, k, {{v4(1), 300}}, RefreshMode::Replace));
  CHECK(k.left(v4(1)) >= 300000);  // replaced: the kernel holds it as long as the answer says
  CHECK(l.find(v4(1))->kernel_ms == k.now + k.left(v4(1)));
}

namespace {
// Someone deletes the element just as dnsward reads it, then adds it back with 2 s before
// dnsward's next batch.
struct RacyKernel : FakeKernel {
  bool armed = false;
  bool element_left(const SetKey& a, bool& exists, uint64_t& left_ms, std::string& err) override {
    held.erase(a.text());
    armed = true;
    return FakeKernel::element_left(a, exists, left_ms, err);
  }
  bool transact(const std::vector<ElemMsg>& msgs, std::vector<int>& results, std::string& err) override {
    if (armed) held[v4(1).text()] = now + 2000;
    armed = false;
    return FakeKernel::transact(msgs, results, err);
  }
};
}  // namespace

TEST_CASE("an element gone when read and re-added by someone else before the next batch is replaced, not trusted") {
  RacyKernel k;  // 6.1: a plain re-add would keep the 2 s
  VouchLedger l;
  k.held[v4(1).text()] = k.now + 3630000;
  l.reset_kernel({{v4(1), 3630000}}, k.now);
  l.forget_kernel();
  REQUIRE(vouch(l, k, {{v4(1), 60}}, RefreshMode::Replace));
  CHECK(k.left(v4(1)) >= 60000);
  CHECK(l.find(v4(1))->kernel_ms == k.now + k.left(v4(1)));
}

namespace {
// After a batch refused for a delete of a missing element, someone adds it back with 2 s
// before dnsward's retry.
struct DelRacyKernel : FakeKernel {
  bool armed = false;
  bool transact(const std::vector<ElemMsg>& msgs, std::vector<int>& results, std::string& err) override {
    if (armed) held[v4(1).text()] = now + 2000;
    armed = false;
    const bool ok = FakeKernel::transact(msgs, results, err);
    for (int r : results) armed |= r == ENOENT;
    return ok;
  }
};
}  // namespace

TEST_CASE("a replacement whose delete found nothing adds exclusively, so an element re-added meanwhile is replaced") {
  DelRacyKernel k;  // 6.1
  VouchLedger l;
  REQUIRE(vouch(l, k, {{v4(1), 60}}, RefreshMode::Replace));
  k.held.erase(v4(1).text());  // deleted; the ledger has not heard yet
  k.now += 30000;
  REQUIRE(vouch(l, k, {{v4(1), 600}}, RefreshMode::Replace));
  CHECK(k.left(v4(1)) == 600000);
}

// a revocation whose answers were lost may have been applied, like an add.
TEST_CASE("a delete whose answers were lost may have been applied: the next answer re-adds the element") {
  FakeKernel k;
  VouchLedger l;
  REQUIRE(vouch(l, k, {{v4(1), 300}}, RefreshMode::Replace, "gone.test"));
  const auto dels = l.revocations(listed_if("kept.test"), [](const IpAddr&, std::string_view) { return false; }, k.now);
  REQUIRE(dels.size() == 1);
  std::vector<ChangeResult> res;
  std::string err;
  int e = 0;
  k.lose_answers = true;  // the kernel applies the delete, its ACK never comes
  CHECK_FALSE(commit_changes(k, dels, res, err, e));
  l.revoked(dels, res);
  REQUIRE(k.held.count(v4(1).text()) == 0);  // the kernel no longer holds it
  // A still-listed entry's answer carries the same address (a shared CDN address, or an
  // upstream that chose it): it must be in the set before the client sees it.
  k.now += 1000;
  REQUIRE(vouch(l, k, {{v4(1), 300}}, RefreshMode::Replace, "kept.test"));
  CHECK(k.held.count(v4(1).text()) == 1);
}

// an element someone else added for ever is not dnsward's to revoke.
TEST_CASE("a reload never deletes a permanent element dnsward did not add") {
  FakeKernel k;
  VouchLedger l;
  k.held[v4(1).text()] = UINT64_MAX / 2;  // the operator's static element, no timeout
  l.reset_kernel({{v4(1), kNoExpiry}}, k.now);
  REQUIRE(vouch(l, k, {{v4(1), 60}}, RefreshMode::Replace, "gone.test"));  // nothing written
  CHECK(k.batches.empty());
  const auto dels = l.revocations(listed_if("kept.test"), [](const IpAddr&, std::string_view) { return false; }, k.now);
  CHECK(dels.empty());
}

namespace {
// Round 1 finds the element held (EEXIST); before round 2 someone deletes it (the delete
// of the replacement finds ENOENT); round 3's exclusive add is applied, its answers lost.
struct ReplacementRaceKernel : FakeKernel {
  int round = 0;
  bool transact(const std::vector<ElemMsg>& msgs, std::vector<int>& results, std::string& err) override {
    ++round;
    if (round == 2) held.erase(v4(1).text());
    if (round == 3) lose_answers = true;
    return FakeKernel::transact(msgs, results, err);
  }
};
}  // namespace

TEST_CASE("an add whose delete found nothing and whose answers were lost still counts as maybe held") {
  ReplacementRaceKernel k;
  VouchLedger l;
  k.held[v4(1).text()] = k.now + 5000;  // someone else's, unknown to the ledger
  CHECK_FALSE(vouch(l, k, {{v4(1), 300}}, RefreshMode::Replace, "gone.test"));
  REQUIRE(k.round == 4);  // round 3 and its inner, applied call
  REQUIRE(k.left(v4(1)) == 300000);  // applied: the kernel holds it for 300 s
  const auto dels = l.revocations(listed_if("kept.test"), [](const IpAddr&, std::string_view) { return false; }, k.now);
  CHECK(dels.size() == 1);
}

// a permanent element that its owner removed leaves kNoExpiry in prior_ms for
// ever; an add of dnsward's own whose answers were lost then is never revoked.
TEST_CASE("an element dnsward added after someone's permanent one went is still revoked") {
  FakeKernel k;
  VouchLedger l;
  k.held[v4(1).text()] = UINT64_MAX / 2;  // the operator's static element
  l.reset_kernel({{v4(1), kNoExpiry}}, k.now);
  k.held.erase(v4(1).text());  // the operator deletes it: the event makes dnsward reread
  l.reset_kernel({}, k.now);
  REQUIRE(l.find(v4(1))->prior_ms == kNoExpiry);  // stale, and time never clears it
  k.now += 1000;
  k.lose_answers = true;  // dnsward's add is applied, its answers lost
  CHECK_FALSE(vouch(l, k, {{v4(1), 300}}, RefreshMode::Replace, "gone.test"));
  REQUIRE(k.left(v4(1)) == 300000);  // dnsward's element, with a timeout
  const auto dels = l.revocations(listed_if("kept.test"), [](const IpAddr&, std::string_view) { return false; }, k.now);
  CHECK(dels.size() == 1);  // README: an add whose answers were lost is revoked like any other
}

// a revocation whose answers were lost during a reread; the dump (asked for
// before the delete) shows the element, and merge_held makes it held again.
TEST_CASE("a delete whose answers were lost during a reread is not undone by the dump") {
  FakeKernel k;
  VouchLedger l;
  REQUIRE(vouch(l, k, {{v4(1), 300}}, RefreshMode::Replace, "gone.test"));
  const uint64_t asked = k.now;
  l.forget_kernel();  // an event: the dump is asked for; its first datagram holds 198.18.0.1
  const uint64_t left_in_dump = k.left(v4(1));
  const auto dels = l.revocations(listed_if("kept.test"), [](const IpAddr&, std::string_view) { return false; }, k.now);
  REQUIRE(dels.size() == 1);
  std::vector<ChangeResult> res;
  std::string err;
  int e = 0;
  k.lose_answers = true;  // the delete is applied, its ACK late
  CHECK_FALSE(commit_changes(k, dels, res, err, e));
  l.revoked(dels, res);
  REQUIRE(k.held.count(v4(1).text()) == 0);
  l.merge_held(v4(1), left_in_dump, asked);  // the datagram filled before the delete is read now
  l.reread_done();
  k.now += 500;
  REQUIRE(vouch(l, k, {{v4(1), 300}}, RefreshMode::Replace, "kept.test"));  // relayed
  CHECK(k.held.count(v4(1).text()) == 1);
}

// ---------------------------------------------------------------------------------------
// Host mode: elements keyed guest . destination

TEST_CASE("host mode: one destination vouched for two guests is two elements, each judged by its own guest's policy") {
  VouchLedger l;
  FakeKernel k;
  const IpAddr g1 = v4(101), g2 = v4(102), dest = v4(7);
  REQUIRE(vouch(l, k, {{dest, 300, g1}}, RefreshMode::Replace, "a.test", "a.test"));
  REQUIRE(vouch(l, k, {{dest, 300, g2}}, RefreshMode::Replace, "b.test", "b.test"));
  CHECK(k.held.count(SetKey(g1, dest).text()) == 1);
  CHECK(k.held.count(SetKey(g2, dest).text()) == 1);
  CHECK(k.held.size() == 2);
  CHECK(l.count_of(g1) == 1);
  CHECK(l.count_of(g2) == 1);
  // g1's policy no longer lists a.test; g2's still lists b.test: only g1's element goes.
  const auto dels = l.revocations(
      [&](const IpAddr& guest, std::string_view p) {
        return guest == g2 && p == "b.test" ? Voucher::Listed : Voucher::Gone;
      },
      [](const IpAddr&, std::string_view) { return false; }, k.now);
  REQUIRE(dels.size() == 1);
  CHECK(dels[0].key() == SetKey(g1, dest));
}

TEST_CASE("host mode: removals_of deletes exactly the removed guests' elements and their count goes to zero") {
  VouchLedger l;
  FakeKernel k;
  const IpAddr g1 = v4(101), g2 = v4(102);
  REQUIRE(vouch(l, k, {{v4(1), 300, g1}, {v4(2), 300, g1}, {v4(1), 300, g2}}, RefreshMode::Replace));
  CHECK(l.count_of(g1) == 2);
  const auto dels = l.removals_of({g1}, k.now);
  REQUIRE(dels.size() == 2);
  for (const auto& d : dels) CHECK(d.guest == g1);
  std::vector<ChangeResult> res;
  std::string err;
  int e = 0;
  REQUIRE(commit_changes(k, dels, res, err, e));
  l.revoked(dels, res);
  CHECK(l.count_of(g1) == 0);
  CHECK(l.count_of(g2) == 1);
  CHECK(k.held.size() == 1);
  CHECK(k.held.count(SetKey(g2, v4(1)).text()) == 1);
  // What would be added: a known key costs nothing, a new one counts once.
  CHECK(l.unknown({{v4(1), 300, g2}, {v4(3), 300, g2}, {v4(3), 300, g2}}) == 1);
}

TEST_CASE("host mode: the ledger file keeps the guest half of every key, and a guest of another family is refused") {
  VouchLedger l;
  FakeKernel k;
  const IpAddr g = v4(101);
  REQUIRE(vouch(l, k, {{v4(1), 300, g}, {v6(1), 300, v6(101)}}, RefreshMode::Replace, "a.test", "a.test"));
  const std::string text = l.serialize(k.now, 5'000'000);
  CHECK(text.find(SetKey(g, v4(1)).text() + "\t") != std::string::npos);
  VouchLedger back;
  std::string err;
  REQUIRE_MESSAGE(back.merge_saved(text, k.now, 5'000'000, err), err);
  REQUIRE(back.find(SetKey(g, v4(1))));
  CHECK(back.find(SetKey(g, v4(1)))->promised_ms > 0);
  CHECK_FALSE(back.find(v4(1)));  // not the single-VM key
  SetKey key;
  CHECK(SetKey::parse("100.64.1.2>198.18.0.1", key));
  CHECK(key.guest.text() == "100.64.1.2");
  CHECK(key.addr.text() == "198.18.0.1");
  CHECK_FALSE(SetKey::parse("100.64.1.2>2001:db8::1", key));
  CHECK_FALSE(SetKey::parse("100.64.1.2>", key));
}

TEST_CASE("only an sni=any entry binds the any-name: an answer's CNAME to '*.' does not (review)") {
  // a.example. A? -> a.example. CNAME *. ; *. A 198.51.100.7, from a hostile upstream.
  const std::vector<uint8_t> b = {
      0, 1, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0,
      1, 'a', 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 0, 0, 1, 0, 1,
      0xC0, 12, 0, 5, 0, 1, 0, 0, 1, 44, 0, 3, 1, '*', 0,
      1, '*', 0, 0, 1, 0, 1, 0, 0, 1, 44, 0, 4, 198, 51, 100, 7};
  std::string q;
  REQUIRE(text_to_wire("a.example", q));
  const AnswerScan s = scan_answer(b.data(), b.size(), reinterpret_cast<const uint8_t*>(q.data()), q.size(), false, 64);
  REQUIRE(s.ok);
  REQUIRE(s.vouch.size() == 1);
  REQUIRE(s.chain == std::vector<std::string>{"a.example", "*"});
  FakeKernel k;
  VouchLedger l;
  REQUIRE(vouch(l, k, {{s.vouch[0].addr, 300}}, RefreshMode::Replace, "a.example", "a.example", &s.chain));
  CHECK_FALSE(l.bound(s.vouch[0].addr, kAnyName, k.now));
  CHECK(l.find(s.vouch[0].addr)->names == "a.example");
}

// ports= (issue 13): an entry's port elements, (guest .) address . protocol . port.

namespace {
VouchItem ported(const IpAddr& a, uint32_t t, uint8_t proto, uint16_t port, const IpAddr& g = {}) {
  VouchItem i{a, t, g};
  i.proto = proto;
  i.port = port;
  return i;
}
}  // namespace

TEST_CASE("port elements go to the port sets in the same batch as their address, with the same timeout") {
  FakeKernel k;
  VouchLedger l;
  REQUIRE(vouch(l, k, {{v4(1), 300}, ported(v4(1), 300, IPPROTO_TCP, 22), ported(v4(1), 300, IPPROTO_UDP, 123),
                       {v6(1), 300}, ported(v6(1), 300, IPPROTO_TCP, 22)},
                RefreshMode::Replace));
  REQUIRE(k.batches.size() == 1);  // one transaction: the answer waits for all of it
  CHECK(k.left(v4(1)) == 300000);
  CHECK(k.left(SetKey({}, v4(1), IPPROTO_TCP, 22)) == 300000);
  CHECK(k.left(SetKey({}, v4(1), IPPROTO_UDP, 123)) == 300000);
  CHECK(k.left(SetKey({}, v6(1), IPPROTO_TCP, 22)) == 300000);
  CHECK(k.held.size() == 5);
  // Each message holds one kind of set: the port elements never go to an address set.
  for (const ElemMsg& m : k.batches[0])
    for (const ElemChange& c : m.elems) CHECK((c.port != 0) == m.ported);
  // Refreshed like their address: ten seconds on, both are extended in one batch.
  k.now += 10000;
  REQUIRE(vouch(l, k, {{v4(1), 300}, ported(v4(1), 300, IPPROTO_TCP, 22)}, RefreshMode::Replace));
  CHECK(k.batches.size() == 2);
  CHECK(k.left(v4(1)) == 300000);
  CHECK(k.left(SetKey({}, v4(1), IPPROTO_TCP, 22)) == 300000);
  // The guard's names are the address element's; port elements bind none, and the sets'
  // fill counts address elements only.
  CHECK(l.find(v4(1))->names == "www.test");
  CHECK(l.find(SetKey({}, v4(1), IPPROTO_TCP, 22))->names.empty());
  CHECK(l.held(AF_INET, k.now) == 1);
}

TEST_CASE("a full port set refuses the whole answer, its address included") {
  FakeKernel k;
  k.size = 1;  // room for the address element alone
  VouchLedger l;
  CHECK_FALSE(vouch(l, k, {{v4(1), 300}, ported(v4(1), 300, IPPROTO_TCP, 22)}, RefreshMode::Replace));
  CHECK(k.held.empty());  // all or nothing
}

TEST_CASE("a reload revokes the port elements of an entry gone, and of a port its entry no longer names") {
  FakeKernel k;
  VouchLedger l;
  REQUIRE(vouch(l, k, {{v4(1), 300}, ported(v4(1), 300, IPPROTO_TCP, 22), ported(v4(1), 300, IPPROTO_UDP, 123)},
                RefreshMode::Replace, "git.test", "git.test"));
  const auto none = [](const IpAddr&, std::string_view) { return false; };
  // Still listed, now with ports=123/udp alone: 22/tcp goes, the rest stays.
  auto dels = l.revocations(listed_if("git.test", Voucher::Listed), none, k.now,
                            [](const IpAddr&, std::string_view p, uint8_t proto, uint16_t port) {
                              return p == "git.test" && proto == IPPROTO_UDP && port == 123;
                            });
  REQUIRE(dels.size() == 1);
  CHECK(dels[0].key() == SetKey({}, v4(1), IPPROTO_TCP, 22));
  std::vector<ChangeResult> res;
  std::string err;
  int e = 0;
  REQUIRE(commit_changes(k, dels, res, err, e));
  l.revoked(dels, res);
  CHECK(k.left(SetKey({}, v4(1), IPPROTO_TCP, 22)) == 0);
  CHECK(k.left(SetKey({}, v4(1), IPPROTO_UDP, 123)) == 300000);
  CHECK(k.left(v4(1)) == 300000);
  // Gone from the list: the address and its port elements go.
  dels = l.revocations(listed_if("other.test"), none, k.now);
  CHECK(dels.size() == 2);
}

TEST_CASE("the ledger file keeps port elements apart from their address, and a bad port is refused") {
  FakeKernel k;
  VouchLedger l;
  const IpAddr g = v4(101);
  REQUIRE(vouch(l, k, {{v4(1), 300}, ported(v4(1), 300, IPPROTO_TCP, 22), ported(v4(2), 300, IPPROTO_UDP, 123, g)},
                RefreshMode::Replace, "git.test", "git.test"));
  const std::string text = l.serialize(k.now, 5'000'000);
  CHECK(text.find("198.18.0.1@tcp/22\t") != std::string::npos);
  CHECK(text.find("198.18.0.101>198.18.0.2@udp/123\t") != std::string::npos);
  VouchLedger back;
  std::string err;
  REQUIRE_MESSAGE(back.merge_saved(text, k.now, 5'000'000, err), err);
  REQUIRE(back.find(SetKey({}, v4(1), IPPROTO_TCP, 22)));
  CHECK(back.find(SetKey({}, v4(1), IPPROTO_TCP, 22))->promised_ms > 0);
  CHECK(back.find(SetKey(g, v4(2), IPPROTO_UDP, 123)));
  CHECK_FALSE(back.find(SetKey({}, v4(1), IPPROTO_UDP, 22)));  // the protocol is part of the key
  SetKey key;
  for (const char* bad : {"198.18.0.1@tcp/0", "198.18.0.1@tcp/65536", "198.18.0.1@sctp/22", "198.18.0.1@tcp/",
                          "198.18.0.1@tcp/22x", "198.18.0.1@", "@tcp/22", "198.18.0.1@udp/-1"}) {
    CAPTURE(bad);
    CHECK_FALSE(SetKey::parse(bad, key));
  }
  REQUIRE(SetKey::parse("198.18.0.1@udp/65535", key));
  CHECK(key.proto == IPPROTO_UDP);
  CHECK(key.port == 65535);
}

TEST_CASE("host mode: a port element is keyed by guest too, and removals_of takes it with the guest") {
  FakeKernel k;
  VouchLedger l;
  const IpAddr g1 = v4(101), g2 = v4(102);
  REQUIRE(vouch(l, k, {{v4(1), 300, g1}, ported(v4(1), 300, IPPROTO_TCP, 22, g1), {v4(1), 300, g2}},
                RefreshMode::Replace, "a.test", "a.test"));
  CHECK(k.left(SetKey(g1, v4(1), IPPROTO_TCP, 22)) == 300000);
  CHECK(k.left(SetKey(g2, v4(1), IPPROTO_TCP, 22)) == 0);
  const auto dels = l.removals_of({g1}, k.now);
  CHECK(dels.size() == 2);
  for (const auto& d : dels) CHECK(d.guest == g1);
}
