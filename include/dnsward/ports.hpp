// The pipeline's parts that do I/O, as small interfaces, so that tests drive the pipeline
// with fakes (a scripted upstream, an in-memory set writer, a clock they advance) and replay
// scenarios deterministically, the way Unbound's fake_event.c replays its .rpl files.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "dnsward/clock.hpp"
#include "dnsward/vouch_ledger.hpp"

namespace dnsward {

/// Where allowed queries go. The real one is a c-ares channel (Upstream).
class UpstreamPort {
 public:
  /// Called once per send(), never from inside send(): status is an ARES_* code; the
  /// answer is valid only during the call.
  using OnAnswer = std::function<void(uint64_t token, int status, const uint8_t* answer,
                                      std::size_t len)>;
  virtual ~UpstreamPort() = default;
  /// Where answers go; set once, before the first send().
  virtual void set_receiver(OnAnswer on_answer) = 0;
  /// Sends a built query (its ID is token's low 16 bits).
  virtual void send(const uint8_t* query, std::size_t len, uint64_t token) = 0;
  /// Longest time the port can take before it answers a send().
  virtual uint64_t worst_case_ms() const = 0;
  /// Answers nothing more from now on: queries still pending are forgotten.
  virtual void stop() = 0;
};

/// What a revocation really did.
struct RevokeOutcome {
  bool ok = true;
  std::size_t deleted = 0;       ///< elements the kernel held and no longer does
  std::size_t already_gone = 0;  ///< elements that had expired or been deleted meanwhile
  std::string err;
};

/// Where vouched addresses go. The real one is NftSets (the kernel's sets over netlink).
class SetWriter {
 public:
  virtual ~SetWriter() = default;
  /// Makes the firewall hold every item at least its timeout before returning true; false
  /// (with err) if any could not be added: the caller must then not send the answer.
  virtual bool vouch(const std::vector<VouchItem>& items, uint64_t now_ms, const Provenance& who,
                     std::string& err) = 0;
  /// Deletes every element whose vouchers keep(pattern) all reject (audit-vouched ones:
  /// unless keep_audit(name) holds for one of their names; port elements also when
  /// keep_port, given, says their entry no longer names their port).
  virtual RevokeOutcome revoke_unless(const VoucherJudge& keep, const AuditJudge& keep_audit,
                                      uint64_t now_ms, const PortJudge& keep_port = {}) = 0;
  /// Whether vouching items for who would bind an element to more than cap names (who.name
  /// and its CNAME chain, each once, added to those it has); which gets that element and
  /// bound how many names it has. The caller must then withhold the answer: a name left
  /// unbound would make the SNI guard reset connections the answer allowed.
  virtual bool would_overflow_names(const std::vector<VouchItem>& items, const Provenance& who,
                                    std::size_t cap, uint64_t now_ms, SetKey& which,
                                    std::size_t& bound) const = 0;
  /// Host mode: elements held for guest (what its cap counts), and how many of items the
  /// sets hold no record of (what vouching them would add).
  virtual std::size_t elements_of(const IpAddr& /*guest*/) const { return 0; }
  virtual std::size_t would_add(const std::vector<VouchItem>& items) const { return items.size(); }
};

}  // namespace dnsward
