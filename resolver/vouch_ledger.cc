#include "dnsward/vouch_ledger.hpp"

#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <unordered_set>

#include <fmt/format.h>

namespace dnsward {

std::vector<ElemMsg> pack_messages(const std::vector<ElemChange>& changes,
                                   const std::vector<bool>& alone,
                                   std::vector<std::vector<std::size_t>>* origin) {
  std::vector<ElemMsg> msgs;
  if (origin) origin->clear();
  // Deletes first: in one batch, a delete then an add of the same element replaces it. One
  // message holds elements of one set: the address sets, then the port sets (ports=).
  for (const ElemOp op : {ElemOp::Del, ElemOp::AddExcl, ElemOp::AddIfMissing, ElemOp::Add}) {
    for (int set = 0; set < 4; ++set) {
      const uint8_t family = set % 2 ? AF_INET6 : AF_INET;
      const bool ported = set >= 2;
      std::size_t open = SIZE_MAX;  // the message being filled
      for (std::size_t i = 0; i < changes.size(); ++i) {
        const ElemChange& c = changes[i];
        if (c.op != op || c.addr.family != family || (c.port != 0) != ported) continue;
        const bool own = i < alone.size() && alone[i];
        if (own || open == SIZE_MAX || msgs[open].elems.size() >= kElemsPerMsg) {
          msgs.push_back({op, family, {}, ported});
          if (origin) origin->emplace_back();
          open = own ? SIZE_MAX : msgs.size() - 1;
          msgs.back().elems.push_back(c);
          if (origin) origin->back().push_back(i);
          continue;
        }
        msgs[open].elems.push_back(c);
        if (origin) (*origin)[open].push_back(i);
      }
    }
  }
  return msgs;
}

namespace {

/// The result slot of a change commit_batch made up itself (the delete of a replacement):
/// its outcome is not the caller's change's, whose slot stays the add's.
constexpr std::size_t kNoSlot = SIZE_MAX;

// One batch's worth of commit_changes.
bool commit_batch(ElementPort& port, std::vector<ElemChange> work, std::vector<std::size_t> from,
                  std::vector<ChangeResult>& results, std::string& err, int& errno_out,
                  SetKey* failed, std::vector<uint64_t>* held_left) {
  std::vector<bool> alone(work.size(), false);
  std::vector<bool> dropped(work.size(), false);
  // Every failed round splits a message or settles an element, so this bound is never the
  // reason a batch that could succeed fails.
  const std::size_t max_rounds = 3 * work.size() + 4;
  for (std::size_t round = 0; round < max_rounds; ++round) {
    std::vector<ElemChange> live;
    std::vector<std::size_t> live_at;  // index into work
    std::vector<bool> live_alone;
    for (std::size_t i = 0; i < work.size(); ++i) {
      if (dropped[i]) continue;
      live.push_back(work[i]);
      live_at.push_back(i);
      live_alone.push_back(alone[i]);
    }
    if (live.empty()) return true;  // everything settled (gone already, or held)
    std::vector<std::vector<std::size_t>> origin;
    const std::vector<ElemMsg> msgs = pack_messages(live, live_alone, &origin);
    std::vector<int> res(msgs.size(), 0);
    if (!port.transact(msgs, res, err)) {
      errno_out = 0;
      return false;
    }
    bool refused = false, progress = false;
    std::vector<ElemChange> extra;  // exclusive adds that become delete + add
    std::vector<std::size_t> extra_from;
    for (std::size_t m = 0; m < msgs.size(); ++m) {
      if (res[m] == 0) continue;
      refused = true;
      if (msgs[m].elems.size() > 1) {
        // Which element? The kernel only says which message: send each alone next time.
        for (const std::size_t k : origin[m]) alone[live_at[k]] = true;
        progress = true;
        continue;
      }
      const std::size_t w = live_at[origin[m][0]];
      if (work[w].op == ElemOp::Del && res[m] == ENOENT) {
        dropped[w] = true;  // gone already (expired, or deleted by someone else)
        if (from[w] != kNoSlot) results[from[w]] = ChangeResult::AlreadyGone;
        // Its add, if it was a replacement, is now exclusive: should someone add the element
        // back meanwhile, EEXIST says so (a plain add would keep their timeout before 6.12).
        for (std::size_t i = 0; i < work.size(); ++i)
          if (!dropped[i] && work[i].op == ElemOp::Add && work[i].key() == work[w].key())
            work[i].op = ElemOp::AddExcl;
        progress = true;
      } else if (work[w].op == ElemOp::AddIfMissing && res[m] == EEXIST) {
        // Held, but for how long? What the ledger knew before is only what it may be: ask.
        bool exists = false;
        uint64_t left = 0;
        std::string why;
        const bool read = port.element_left(work[w].key(), exists, left, why);
        if (read && exists && left >= work[w].timeout_ms) {
          dropped[w] = true;  // long enough (or for ever): left as it is
          results[from[w]] = ChangeResult::AlreadyHeld;
          if (held_left) (*held_left)[from[w]] = left;
        } else if (read && !exists) {
          work[w].op = ElemOp::AddExcl;  // gone meanwhile: added, exclusively again
        } else {
          // Shorter than needed (or unreadable): replaced, for at least what it had.
          if (exists && left != kNoExpiry) work[w].timeout_ms = std::max(work[w].timeout_ms, left);
          work[w].op = ElemOp::Add;
          extra.push_back({ElemOp::Del, work[w].key(), 0});
          extra_from.push_back(kNoSlot);
        }
        progress = true;
      } else if (work[w].op == ElemOp::AddExcl && res[m] == EEXIST) {
        // The kernel holds it, though we did not know: a plain re-add would keep its old
        // timeout on kernels before 6.12, so replace it.
        work[w].op = ElemOp::Add;
        extra.push_back({ElemOp::Del, work[w].key(), 0});
        extra_from.push_back(kNoSlot);
        progress = true;
      } else {
        errno_out = res[m];
        if (failed) *failed = work[w].key();
        err = fmt::format("nftables refused {} {}: {}",
                          work[w].op == ElemOp::Del ? "deleting" : "adding", work[w].key().text(),
                          std::strerror(res[m]));
        return false;
      }
    }
    if (!refused) {
      for (std::size_t i = 0; i < work.size(); ++i) {
        if (dropped[i] || from[i] == kNoSlot) continue;
        results[from[i]] = ChangeResult::Done;
        // The timeout really written (an exclusive add turned replacement may carry more).
        if (held_left && work[i].op != ElemOp::Del) (*held_left)[from[i]] = work[i].timeout_ms;
      }
      return true;
    }
    if (!progress) break;
    for (std::size_t i = 0; i < extra.size(); ++i) {
      work.push_back(extra[i]);
      from.push_back(extra_from[i]);
      alone.push_back(true);
      dropped.push_back(false);
    }
  }
  errno_out = 0;
  err = "nftables kept refusing the update";
  return false;
}

}  // namespace

bool commit_changes(ElementPort& port, const std::vector<ElemChange>& changes,
                    std::vector<ChangeResult>& results, std::string& err, int& errno_out,
                    SetKey* failed, std::vector<uint64_t>* held_left) {
  if (held_left) held_left->assign(changes.size(), 0);
  results.assign(changes.size(), ChangeResult::Failed);
  errno_out = 0;
  bool ok = true;
  std::size_t i = 0;
  while (i < changes.size()) {
    std::size_t end = std::min(changes.size(), i + kChangesPerBatch);
    // A delete + add pair (a replacement) stays in one batch, or the element would be
    // missing between two transactions.
    if (end < changes.size() && changes[end - 1].op == ElemOp::Del &&
        changes[end].op != ElemOp::Del && changes[end].key() == changes[end - 1].key())
      ++end;
    std::vector<ElemChange> work(changes.begin() + std::ptrdiff_t(i), changes.begin() + std::ptrdiff_t(end));
    std::vector<std::size_t> from(work.size());
    for (std::size_t k = 0; k < from.size(); ++k) from[k] = i + k;
    if (!commit_batch(port, std::move(work), std::move(from), results, err, errno_out, failed, held_left))
      ok = false;
    i = end;
  }
  return ok;
}

namespace {

bool plain_field(std::string_view s, bool backslash) {
  if (s.empty()) return false;
  return std::all_of(s.begin(), s.end(), [&](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '_' || c == '*' || c == '.' || (backslash && c == '\\');
  });
}

char lower(char c) { return c >= 'A' && c <= 'Z' ? char(c - 'A' + 'a') : c; }

/// A name as records hold it: lower-case, without a trailing dot (the root stays ".").
std::string_view without_dot(std::string_view n) {
  if (n.size() > 1 && n.back() == '.') n.remove_suffix(1);
  return n;
}

/// Neither held, nor maybe held, nor promised: what expire() drops.
bool dead(const LedgerRecord& r, uint64_t now_ms) {
  return r.kernel_ms <= now_ms && r.promised_ms <= now_ms && r.prior_ms <= now_ms;
}

}  // namespace

uint32_t VouchLedger::intern(std::string_view pattern) {
  const auto it = pattern_ids_.find(pattern);
  if (it != pattern_ids_.end()) return it->second;
  patterns_.emplace_back(pattern);
  pattern_ids_.emplace(std::string(pattern), uint32_t(patterns_.size() - 1));
  return uint32_t(patterns_.size() - 1);
}

std::string SetKey::text() const {
  std::string t = guest.family ? guest.text() + ">" + addr.text() : addr.text();
  if (port) t += fmt::format("@{}/{}", proto == IPPROTO_UDP ? "udp" : "tcp", port);
  return t;
}

bool SetKey::parse(std::string_view s, SetKey& out) {
  out = SetKey{};
  if (const auto at = s.find('@'); at != std::string_view::npos) {
    // A port element: "@tcp/N" or "@udp/N", N from 1 to 65535.
    const std::string_view pp = s.substr(at + 1);
    s = s.substr(0, at);
    const std::string_view num = pp.substr(std::min<std::size_t>(4, pp.size()));
    uint32_t n = 0;
    const auto [end, ec] = std::from_chars(num.data(), num.data() + num.size(), n);
    if (pp.size() < 5 || (pp.substr(0, 4) != "tcp/" && pp.substr(0, 4) != "udp/") || ec != std::errc() ||
        end != num.data() + num.size() || n == 0 || n > 65535)
      return false;
    const uint8_t proto = pp[0] == 'u' ? IPPROTO_UDP : IPPROTO_TCP;
    if (!parse(s, out)) return false;
    out.proto = proto;
    out.port = uint16_t(n);
    return true;
  }
  const auto gt = s.find('>');
  if (gt == std::string_view::npos) return IpAddr::parse(std::string(s), out.addr);
  // Host mode: a guest pairs with destinations of its own family (the sets are v4 . v4 and
  // v6 . v6).
  return IpAddr::parse(std::string(s.substr(0, gt)), out.guest) &&
         IpAddr::parse(std::string(s.substr(gt + 1)), out.addr) && out.guest.family == out.addr.family;
}

LedgerRecord& VouchLedger::record(const SetKey& k) {
  const auto [it, made] = records_.try_emplace(k);
  if (made && k.guest.family) ++per_guest_[k.guest];
  return it->second;
}

void VouchLedger::erase(const SetKey& k) {
  if (!records_.erase(k) || !k.guest.family) return;
  const auto g = per_guest_.find(k.guest);
  if (g != per_guest_.end() && --g->second == 0) per_guest_.erase(g);
}

std::size_t VouchLedger::count_of(const IpAddr& guest) const {
  const auto g = per_guest_.find(guest);
  return g == per_guest_.end() ? 0 : g->second;
}

std::size_t VouchLedger::unknown(const std::vector<VouchItem>& items) const {
  // Linear: an answer's items are its addresses times the sandbox's guest addresses.
  std::unordered_set<SetKey, SetKeyHash> seen;
  std::size_t n = 0;
  for (const VouchItem& i : items)
    if (!records_.count(i.key()) && seen.insert(i.key()).second) ++n;
  return n;
}

std::vector<ElemChange> VouchLedger::removals_of(const std::vector<IpAddr>& guests,
                                                 uint64_t now_ms) const {
  std::vector<ElemChange> dels;
  for (const auto& [k, r] : records_) {
    if (!k.guest.family || std::find(guests.begin(), guests.end(), k.guest) == guests.end()) continue;
    // Maybe held counts: a delete of what is gone costs an ENOENT, never a hole.
    if (r.kernel_ms <= now_ms && r.prior_ms <= now_ms) continue;
    dels.push_back({ElemOp::Del, k, 0});
  }
  return dels;
}

void VouchLedger::for_each_of(const IpAddr& guest,
                              const std::function<void(const SetKey&, const LedgerRecord&)>& fn) const {
  if (!count_of(guest)) return;
  for (const auto& [k, r] : records_)
    if (k.guest == guest) fn(k, r);
}

const LedgerRecord* VouchLedger::find(const SetKey& a) const {
  const auto it = records_.find(a);
  return it == records_.end() ? nullptr : &it->second;
}

std::vector<ElemChange> VouchLedger::plan(const std::vector<VouchItem>& items, uint64_t now_ms,
                                          RefreshMode mode,
                                          std::vector<uint64_t>& effective_ms) const {
  // The same address twice in one answer (two chain names, an A record and a hint) is one
  // element: it gets the longest timeout asked for.
  std::vector<VouchItem> uniq;
  for (const VouchItem& i : items) {
    auto same = std::find_if(uniq.begin(), uniq.end(), [&](const VouchItem& u) { return u.key() == i.key(); });
    if (same == uniq.end()) uniq.push_back(i);
    else same->timeout_s = std::max(same->timeout_s, i.timeout_s);
  }
  std::vector<ElemChange> changes;
  effective_ms.clear();
  for (const VouchItem& i : uniq) {
    uint64_t want = now_ms + uint64_t(i.timeout_s) * 1000u;
    const LedgerRecord* r = find(i.key());
    // Never below what an earlier answer promised: a later short TTL must not cut short
    // a client that was told it may use the address longer. Nor, while the view is being
    // reread, below what the kernel held before: an exclusive add that finds the element
    // replaces it.
    if (r && r->promised_ms > want) want = r->promised_ms;
    // Never longer than dnsward would give any answer (a promise from a ledger file written
    // under another clock): what dnsward writes is clamped.
    want = std::min(want, now_ms + std::max<uint64_t>(max_timeout_ms_, uint64_t(i.timeout_s) * 1000u));
    const bool held = r && r->kernel_ms > now_ms;
    if (!held && r && r->prior_ms >= want) {
      // The kernel may still hold it at least this long (or for ever: someone else's
      // permanent element): add it if it is missing, and leave it as it is if not.
      changes.push_back({ElemOp::AddIfMissing, i.key(), want - now_ms});
      effective_ms.push_back(r->prior_ms);
      continue;
    }
    // Held long enough already (a second of slack spares a netlink round trip per hit).
    if (held && (r->kernel_ms == kNoExpiry || r->kernel_ms + 1000 >= want)) continue;
    const uint64_t timeout = want - now_ms;
    if (!held) {
      // Exclusive: if the kernel holds it after all, EEXIST says so, instead of a silent
      // no-op that would keep its old, shorter timeout (kernels before 6.12).
      changes.push_back({ElemOp::AddExcl, i.key(), timeout});
      effective_ms.push_back(want);
    } else if (mode == RefreshMode::Update) {
      changes.push_back({ElemOp::Add, i.key(), timeout});  // in place, with an expiration
      effective_ms.push_back(want);
    } else {
      changes.push_back({ElemOp::Del, i.key(), 0});
      effective_ms.push_back(0);
      changes.push_back({ElemOp::Add, i.key(), timeout});
      effective_ms.push_back(want);
    }
  }
  return changes;
}

void VouchLedger::committed(const std::vector<VouchItem>& items,
                            const std::vector<ElemChange>& changes,
                            const std::vector<uint64_t>& effective_ms,
                            const std::vector<ChangeResult>& results, const Provenance& who,
                            uint64_t now_ms, const std::vector<uint64_t>* held_left) {
  // An element that expired (its record not yet dropped by expire()) starts its names
  // afresh, as would_overflow_names counted it.
  for (const VouchItem& i : items) {
    const auto it = records_.find(i.key());
    if (it != records_.end() && dead(it->second, now_ms)) it->second.names.clear();
  }
  for (std::size_t k = 0; k < changes.size() && k < results.size(); ++k) {
    if (results[k] == ChangeResult::Failed) {
      // A failed add may still have been applied: a batch whose answers were lost or came
      // too late (no ACK in time, ENOBUFS) has an unknown outcome. The element counts as
      // maybe held until its timeout, so that revocations delete it and later adds do not
      // take its absence for granted (a refused batch, applied by nothing, costs at most an
      // ENOENT or an EEXIST then).
      if (changes[k].op != ElemOp::Del) {
        LedgerRecord& r = record(changes[k].key());
        r.prior_ms = std::max(r.prior_ms, now_ms + changes[k].timeout_ms);
      }
      continue;
    }
    LedgerRecord& r = record(changes[k].key());
    r.written = epoch_;  // newer than any dump already asked for
    if (changes[k].op == ElemOp::Del) {
      r.kernel_ms = 0;
      continue;
    }
    // What the kernel holds now: read back (AlreadyHeld) or written, as commit_changes
    // reports it; without that report, what the plan meant to write.
    const bool reported = held_left && k < held_left->size() && (*held_left)[k] != 0;
    const uint64_t left = reported ? (*held_left)[k] : 0;
    if (results[k] == ChangeResult::AlreadyHeld) {
      r.kernel_ms = left == kNoExpiry ? kNoExpiry : now_ms + left;
    } else if (results[k] == ChangeResult::Done) {
      r.kernel_ms = reported ? now_ms + left
                    : changes[k].op == ElemOp::AddIfMissing ? now_ms + changes[k].timeout_ms
                                                           : effective_ms[k];
      r.prior_ms = 0;
    }
  }
  const bool all_done = std::none_of(results.begin(), results.end(),
                                     [](ChangeResult r) { return r == ChangeResult::Failed; });
  const uint32_t pid = who.pattern.empty() ? UINT32_MAX : intern(who.pattern);
  const std::vector<std::string> names = names_of(who);
  for (const VouchItem& i : items) {
    const auto it = records_.find(i.key());
    // Not held, not maybe held: nothing to answer for.
    if (it == records_.end() || (it->second.kernel_ms <= now_ms && it->second.prior_ms <= now_ms)) continue;
    LedgerRecord& r = it->second;
    // A promise is made only by an answer that reached the client.
    if (all_done) r.promised_ms = std::max(r.promised_ms, now_ms + uint64_t(i.timeout_s) * 1000u);
    if (pid == UINT32_MAX) r.audit = true;
    else if (std::find(r.patterns.begin(), r.patterns.end(), pid) == r.patterns.end())
      r.patterns.push_back(pid);
    // The guard judges connections by the address element's names; a port element's port
    // is never guarded (its rule comes after the guard's), so it binds none.
    if (!i.port)
      for (const std::string& n : names) add_name(r, n);
  }
}

std::vector<std::string> VouchLedger::names_of(const Provenance& who) {
  std::vector<std::string> out;
  for_each_bound_name(who, [&](std::string_view n) {
    n = without_dot(n);
    if (!plain_field(n, true)) return;  // never from name_to_text; a file could not hold it
    // A hostile upstream's CNAME to `*.` names "*": it must not look like sni=any in a log
    // or a ledger file (review).
    if (n == kAnyName) return;
    std::string lc(n);
    std::transform(lc.begin(), lc.end(), lc.begin(), lower);
    if (std::find(out.begin(), out.end(), lc) == out.end()) out.push_back(std::move(lc));
  });
  return out;
}

void VouchLedger::add_name(LedgerRecord& r, std::string_view name) {
  std::string lc(without_dot(name));
  std::transform(lc.begin(), lc.end(), lc.begin(), lower);
  bool seen = false;
  for_each_name(r.names, [&](std::string_view n) { seen = seen || n == lc; });
  if (seen) return;
  if (!r.names.empty()) r.names += ',';
  r.names += lc;
}

bool VouchLedger::would_overflow_names(const std::vector<VouchItem>& items, const Provenance& who,
                                       std::size_t cap, uint64_t now_ms, SetKey* which,
                                       std::size_t* bound) const {
  const std::vector<std::string> names = names_of(who);
  std::vector<bool> seen;
  for (const VouchItem& i : items) {
    if (i.port) continue;  // binds no name (committed)
    const auto it = records_.find(i.key());
    // One pass over the names it has, whatever their number (a hostile zone may send the
    // longest chains it can).
    std::size_t have = 0, fresh = names.size();
    if (it != records_.end() && !dead(it->second, now_ms)) {
      seen.assign(names.size(), false);
      for_each_name(it->second.names, [&](std::string_view n) {
        ++have;
        for (std::size_t k = 0; k < names.size(); ++k)
          if (!seen[k] && names[k] == n) {
            seen[k] = true;
            --fresh;
            break;
          }
      });
    }
    if (have + fresh > cap) {
      if (which) *which = i.key();
      if (bound) *bound = have;
      return true;
    }
  }
  return false;
}

bool VouchLedger::bound(const SetKey& k, std::string_view name, uint64_t now_ms) const {
  const LedgerRecord* r = find(k);
  if (!r || (r->kernel_ms <= now_ms && r->promised_ms <= now_ms)) return false;
  name = without_dot(name);
  bool found = false;
  for_each_name(r->names, [&](std::string_view n) {
    found = found || (n.size() == name.size() &&
                      std::equal(n.begin(), n.end(), name.begin(),
                                 [](char a, char b) { return a == lower(b); }));
  });
  return found;
}

void VouchLedger::reset_kernel(const std::vector<std::pair<SetKey, uint64_t>>& held,
                               uint64_t now_ms) {
  forget_kernel();
  for (const auto& [a, left] : held) merge_held(a, left, now_ms);
  reread_done();
}

void VouchLedger::forget_kernel() {
  ++epoch_;
  rereading_ = true;
  for (auto& [a, r] : records_) {
    r.prior_ms = std::max(r.prior_ms, r.kernel_ms);
    r.kernel_ms = 0;
  }
}

void VouchLedger::merge_held(const SetKey& a, uint64_t left_ms, uint64_t at_ms) {
  LedgerRecord& r = record(a);
  if (r.written == epoch_) return;  // dnsward changed it after the dump was asked for
  r.kernel_ms = left_ms == kNoExpiry ? kNoExpiry : at_ms + left_ms;
}

void VouchLedger::reread_done() {
  rereading_ = false;
  // prior_ms stays: an element the dump did not show may still be held (a dump walks the
  // set by position, and elements collected between two datagrams shift the rest).
}

std::vector<ElemChange> VouchLedger::revocations(const VoucherJudge& keep, const AuditJudge& keep_audit,
                                                 uint64_t now_ms, const PortJudge& keep_port) const {
  std::vector<ElemChange> dels;
  // Each (guest, pattern) judged once: a Voucher, or -1. Single-VM mode has one guest (none).
  std::unordered_map<IpAddr, std::vector<int8_t>, IpAddrHash> kept_by_guest;
  // Plain locals, not a structured binding: clang 14 (the fuzz build) cannot capture one.
  for (const auto& entry : records_) {
    const SetKey& key = entry.first;
    const LedgerRecord& r = entry.second;
    const IpAddr& a = key.addr;
    // Held, or maybe held: while the view is reread (or after a failed reread) the kernel
    // may still hold what it held before; a delete of what is gone costs an ENOENT, never
    // a hole.
    if (r.kernel_ms <= now_ms && r.prior_ms <= now_ms) continue;
    if (r.patterns.empty() && !r.audit) continue;  // not ours to judge
    // Nor is an element the kernel is seen holding without a timeout: dnsward never writes
    // one, so it is someone else's (an operator's static entry) even if dnsward answered for
    // its address. Only a current view says so: a prior "for ever" may be stale (its owner
    // deleted it, and dnsward added its own since), so it is revoked (fail closed).
    if (r.kernel_ms == kNoExpiry) continue;
    bool stays = false;
    // An entry that lost private=yes keeps no special-purpose address it vouched for:
    // answers no longer carry it (rebinding protection), so neither may the firewall.
    const bool special = is_special_purpose(a);
    std::vector<int8_t>& kept = kept_by_guest[key.guest];
    if (kept.size() < patterns_.size()) kept.resize(patterns_.size(), -1);
    for (const uint32_t p : r.patterns) {
      if (kept[p] < 0) kept[p] = int8_t(keep(key.guest, patterns_[p]));
      const auto v = Voucher(kept[p]);
      if (v == Voucher::ListedPrivate || (v == Voucher::Listed && !special)) {
        // A port element: only while the entry still names its port.
        if (key.port && keep_port && !keep_port(key.guest, patterns_[p], key.proto, key.port)) continue;
        stays = true;
        break;
      }
    }
    if (!stays && r.audit)
      for_each_name(r.names, [&](std::string_view n) { stays = stays || keep_audit(key.guest, n); });
    if (!stays) dels.push_back({ElemOp::Del, key, 0});
  }
  return dels;
}

void VouchLedger::revoked(const std::vector<ElemChange>& dels,
                          const std::vector<ChangeResult>& results) {
  for (std::size_t k = 0; k < dels.size() && k < results.size(); ++k) {
    if (results[k] == ChangeResult::Failed) {
      // A failed delete may still have been applied (its answers lost or late): the element
      // counts as maybe gone. Answers add it again (exclusively, so a kernel that still holds
      // it says so), and revocations still cover it until its old expiry.
      const auto it = records_.find(dels[k].key());
      if (it != records_.end()) {
        it->second.prior_ms = std::max(it->second.prior_ms, it->second.kernel_ms);
        it->second.kernel_ms = 0;
        it->second.written = epoch_;  // a dump asked for before it must not undo this
      }
      continue;
    }
    if (!rereading_) {
      erase(dels[k].key());
      continue;
    }
    // Kept, empty, as a mark that dnsward deleted it: a dump asked for before the delete
    // must not bring it back.
    LedgerRecord& r = record(dels[k].key());
    r = LedgerRecord{};
    r.written = epoch_;
  }
}

void VouchLedger::expire(uint64_t now_ms) {
  for (auto it = records_.begin(); it != records_.end();) {
    const LedgerRecord& r = it->second;
    const bool dead = r.kernel_ms <= now_ms && r.promised_ms <= now_ms && r.prior_ms <= now_ms &&
                      !(rereading_ && r.written == epoch_);
    if (dead && it->first.guest.family) {
      const auto g = per_guest_.find(it->first.guest);
      if (g != per_guest_.end() && --g->second == 0) per_guest_.erase(g);
    }
    it = dead ? records_.erase(it) : std::next(it);
  }
}

std::size_t VouchLedger::held(uint8_t family, uint64_t now_ms) const {
  std::size_t n = 0;
  for (const auto& [k, r] : records_) n += k.addr.family == family && !k.port && r.kernel_ms > now_ms;
  return n;
}

namespace {
constexpr std::string_view kMagic = "dnsward-vouch-ledger 1";

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  for (;;) {
    const auto at = s.find(sep);
    out.push_back(s.substr(0, at));
    if (at == std::string_view::npos) return out;
    s.remove_prefix(at + 1);
  }
}
}  // namespace

std::string VouchLedger::serialize(uint64_t now_ms, int64_t wall_now_ms) const {
  std::string out(kMagic);
  out += '\n';
  std::size_t n = 0;
  for (const auto& [a, r] : records_) {
    if (r.patterns.empty() && !r.audit) continue;
    if (r.kernel_ms <= now_ms && r.promised_ms <= now_ms) continue;
    const int64_t promised =
        r.promised_ms > now_ms ? wall_now_ms + int64_t(r.promised_ms - now_ms) : 0;
    std::string pats;
    for (const uint32_t p : r.patterns) (pats.empty() ? pats : pats += ',') += patterns_[p];
    out += fmt::format("{}\t{}\t{}\t{}\t{}\n", a.text(), promised, pats.empty() ? "-" : pats,
                       r.audit ? 1 : 0, r.names.empty() ? "-" : r.names);
    ++n;
  }
  out += fmt::format("end {}\n", n);
  return out;
}

bool VouchLedger::merge_saved(std::string_view text, uint64_t now_ms, int64_t wall_now_ms,
                              std::string& err) {
  // Parsed completely before anything is merged: a corrupt file changes nothing.
  struct Line {
    SetKey addr;
    uint64_t promised;
    std::vector<std::string_view> patterns, names;
    bool audit;
  };
  std::vector<Line> lines;
  std::size_t lineno = 0;
  bool ended = false;
  for (std::string_view rest = text; !rest.empty();) {
    const auto nl = rest.find('\n');
    if (nl == std::string_view::npos) {
      err = fmt::format("line {}: truncated", lineno + 1);
      return false;
    }
    const std::string_view line = rest.substr(0, nl);
    rest.remove_prefix(nl + 1);
    ++lineno;
    if (ended) {
      err = fmt::format("line {}: text after the end line", lineno);
      return false;
    }
    if (lineno == 1) {
      if (line != kMagic) {
        err = "line 1: not a dnsward vouch ledger (version 1)";
        return false;
      }
      continue;
    }
    if (line.substr(0, 4) == "end ") {
      std::size_t count = 0;
      const auto num = line.substr(4);
      const auto [p, ec] = std::from_chars(num.data(), num.data() + num.size(), count);
      if (ec != std::errc() || p != num.data() + num.size() || count != lines.size()) {
        err = fmt::format("line {}: the end line does not count {} records", lineno, lines.size());
        return false;
      }
      ended = true;
      continue;
    }
    const auto f = split(line, '\t');
    Line l;
    int64_t promised = 0;
    if (f.size() != 5 || !SetKey::parse(f[0], l.addr) ||
        std::from_chars(f[1].data(), f[1].data() + f[1].size(), promised).ec != std::errc() ||
        (f[3] != "0" && f[3] != "1")) {
      err = fmt::format("line {}: expected ADDRESS, PROMISED, PATTERNS, AUDIT, NAMES", lineno);
      return false;
    }
    l.audit = f[3] == "1";
    // A promise from another clock (a restored snapshot, a clock step) is clamped to the
    // longest timeout dnsward gives.
    l.promised = promised > wall_now_ms
                     ? now_ms + std::min<uint64_t>(uint64_t(promised - wall_now_ms), max_timeout_ms_)
                     : 0;
    if (f[2] != "-") l.patterns = split(f[2], ',');
    if (f[4] != "-") l.names = split(f[4], ',');
    for (const auto p : l.patterns)
      if (!plain_field(p, false)) {
        err = fmt::format("line {}: bad pattern", lineno);
        return false;
      }
    for (const auto n : l.names)
      if (!plain_field(n, true)) {
        err = fmt::format("line {}: bad name", lineno);
        return false;
      }
    lines.push_back(std::move(l));
  }
  if (!ended) {
    err = "no end line: the file is truncated";
    return false;
  }
  for (const Line& l : lines) {
    LedgerRecord& r = record(l.addr);
    r.promised_ms = std::max(r.promised_ms, l.promised);
    r.audit = r.audit || l.audit;
    for (const auto p : l.patterns) {
      const uint32_t id = intern(p);
      if (std::find(r.patterns.begin(), r.patterns.end(), id) == r.patterns.end()) r.patterns.push_back(id);
    }
    for (const auto n : l.names) add_name(r, n);
  }
  return true;
}

}  // namespace dnsward
