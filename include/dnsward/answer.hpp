// Reading an upstream answer for enforcement: which addresses to vouch for, which records
// must not reach the client, and where the TTLs are. Pure: no I/O.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "dnsward/packet.hpp"

namespace dnsward {

/// An IPv4 or IPv6 address as it appears on the wire.
struct IpAddr {
  uint8_t family = 0;  ///< AF_INET or AF_INET6
  uint8_t bytes[16] = {};
  std::size_t size() const { return family == 2 /*AF_INET*/ ? 4 : 16; }
  bool operator==(const IpAddr& o) const;
  std::string text() const;
  static IpAddr v4(const uint8_t* p);
  static IpAddr v6(const uint8_t* p);
  static bool parse(const std::string& s, IpAddr& out);
};
struct IpAddrHash {
  std::size_t operator()(const IpAddr& a) const;
};

/// Loopback, unspecified, RFC 1918, 100.64/10 (CGNAT), 169.254/16 (link-local, cloud
/// metadata), 224/4 and above (multicast, reserved, broadcast), 0/8; ::, ::1, fe80::/10,
/// fec0::/10, fc00::/7, ff00::/8; and the IPv4-mapped, IPv4-compatible, NAT64 (64:ff9b::/96,
/// 64:ff9b:1::/48) and 6to4 forms of special IPv4 addresses. Answers that point an allowed
/// name at these are DNS rebinding: the sandbox would reach its own host or network.
bool is_special_purpose(const IpAddr& a);

/// An address to put in the firewall set, with the TTL of the record that carried it.
struct VouchAddr {
  IpAddr addr;
  uint32_t ttl = 0;
};

/// What scan_answer() found.
struct AnswerScan {
  bool ok = false;
  uint16_t rcode = 0;
  /// Ordinary addresses on the CNAME chain, each once, with the longest TTL of the records
  /// that carried it (the set must hold it as long as any record tells the client to use it).
  std::vector<VouchAddr> vouch;
  /// The names the CNAME chain walk followed: the query name, then each target, in the
  /// form Query::qname_text() gives (lower-case, no trailing dot). What the vouched
  /// addresses are bound to in the ledger.
  std::vector<std::string> chain;
  std::vector<uint16_t> drop;             ///< records to remove, numbered over answer+authority
  /// SVCB/HTTPS records (numbered the same way) with an ech parameter, and of those the ones
  /// whose mandatory key lists it.
  std::vector<uint16_t> ech, ech_mandatory;
  uint32_t dropped_special = 0;           ///< of those, how many were special-purpose
  uint32_t dropped_off_chain = 0;         ///< of those, how many were off the chain or in authority
  uint32_t dropped_over_cap = 0;          ///< of those, how many the address cap removed
  uint32_t addresses_over_cap = 0;        ///< addresses (hints included) those records carried
  std::vector<uint32_t> ttl_offsets;      ///< TTL fields of answer+authority records
  /// How long the answer may be cached: the smallest answer TTL, or for a negative answer
  /// min(SOA TTL, SOA MINIMUM) (RFC 2308 5); -1 if it must not be cached.
  int64_t cache_ttl = -1;
};

/// The --max-answer-addresses default: distinct addresses one answer may vouch for.
inline constexpr std::size_t kDefaultMaxAddresses = 64;

/// Walks an upstream answer (already checked by relay_answer's rules: ID, question).
/// Starting from the query name it follows the CNAME chain in the answer section (at most
/// kMaxChain links), vouches for A/AAAA records owned by chain names, and for the
/// ipv4hint/ipv6hint addresses of SVCB/HTTPS records owned by chain names. Address-bearing
/// records that are off the chain, in the authority section, carry a special-purpose
/// address (unless allow_private), or would take the distinct vouched addresses beyond
/// max_addresses are listed in drop (an SVCB/HTTPS record whose hints do not all fit goes
/// whole). The additional section is never read: dnsward never relays it.
AnswerScan scan_answer(const uint8_t* ans, std::size_t len, const uint8_t* qname_lc,
                       std::size_t qname_len, bool allow_private,
                       std::size_t max_addresses = kDefaultMaxAddresses);

inline constexpr int kMaxChain = 16;

/// Lowers every TTL at the given offsets to at most max_ttl, then subtracts age (not below 0).
void rewrite_ttls(uint8_t* msg, const std::vector<uint32_t>& offsets, uint32_t max_ttl,
                  uint32_t age);

/// Rebuilds an answer without the records listed in drop (numbered over answer+authority)
/// and without its additional section (but for the OPT). Every name is written
/// uncompressed (owners, and the RDATA names of the RFC 1035 types that may be compressed,
/// RFC 3597 4), so no pointer can dangle. The SVCB/HTTPS records listed in strip_ech are
/// written without their ech parameter (key 5). Returns false if the message cannot be
/// walked.
bool rebuild_without(const uint8_t* ans, std::size_t len, const std::vector<uint16_t>& drop,
                     std::vector<uint8_t>& out, const std::vector<uint16_t>& strip_ech = {});

/// How prepare_answer() treats an answer.
struct PrepareOptions {
  bool allow_private = false;                       ///< the deciding entry says private=yes
  std::size_t max_addresses = kDefaultMaxAddresses; ///< --max-answer-addresses
  uint32_t max_ttl = 3600;                          ///< --max-ttl: every TTL is lowered to it
  /// --sni-guard: remove the `ech` parameter from relayed SVCB/HTTPS records (a record
  /// that lists ech as mandatory goes whole), so clients do not encrypt the server_name
  /// the guard judges (RFC 9460 7, draft-ietf-tls-svcb-ech).
  bool strip_ech = false;
};

/// What became of an upstream answer in prepare_answer().
enum class PrepareStatus : uint8_t {
  Ok,             ///< msg may be relayed once scan.vouch is in the firewall sets
  Mismatch,       ///< not a response to our query (ID, QR or question differ)
  Malformed,      ///< the answer cannot be walked safely
  RebuildFailed,  ///< records had to go but the answer could not be rebuilt without them
};

/// An upstream answer made ready for relaying and caching.
struct PreparedAnswer {
  PrepareStatus status = PrepareStatus::Malformed;
  std::vector<uint8_t> msg;  ///< the answer to relay (upstream ID still in it); empty unless Ok
  /// The scan of msg: vouch list (TTLs lowered like msg's), TTL offsets, cache TTL, RCODE;
  /// its drop list is empty.
  AnswerScan scan;
  uint32_t dropped_special = 0;     ///< records removed for a special-purpose address
  uint32_t dropped_over_cap = 0;    ///< records removed by the address cap
  uint32_t addresses_over_cap = 0;  ///< addresses those records carried
  uint32_t dropped_off_chain = 0;   ///< address records removed as off-chain or in authority
  uint32_t ech_stripped = 0;        ///< SVCB/HTTPS records relayed without their ech parameter
  uint32_t dropped_ech = 0;         ///< SVCB/HTTPS records removed: ech was mandatory in them
  /// Records removed for any reason.
  uint32_t dropped() const { return dropped_special + dropped_over_cap + dropped_off_chain; }
};

/// The one path from an upstream answer to the bytes relayed and the addresses vouched for:
/// check_answer (ID and question), scan_answer, rebuild without the dropped records and scan
/// the result again, then lower every TTL (in msg and in the vouch list) to max_ttl. Pure;
/// the pipeline and the answer fuzz target both call it, so the fuzz oracle checks what
/// clients get.
PreparedAnswer prepare_answer(const Query& q, uint16_t upstream_id, const uint8_t* ans,
                              std::size_t len, const PrepareOptions& o);

}  // namespace dnsward
