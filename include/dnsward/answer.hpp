// Reading an upstream answer for enforcement: which addresses to vouch for, which records
// must not reach the client, and where the TTLs are. Pure: no I/O.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

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
  std::vector<VouchAddr> vouch;           ///< ordinary addresses on the CNAME chain
  std::vector<uint16_t> drop;             ///< records to remove, numbered over answer+authority
  uint32_t dropped_special = 0;           ///< of those, how many were special-purpose
  std::vector<uint32_t> ttl_offsets;      ///< TTL fields of answer+authority records
  /// How long the answer may be cached: the smallest answer TTL, or for a negative answer
  /// min(SOA TTL, SOA MINIMUM) (RFC 2308 5); -1 if it must not be cached.
  int64_t cache_ttl = -1;
};

/// Walks an upstream answer (already checked by relay_answer's rules: ID, question).
/// Starting from the query name it follows the CNAME chain in the answer section (at most
/// kMaxChain links), vouches for A/AAAA records owned by chain names, and for the
/// ipv4hint/ipv6hint addresses of SVCB/HTTPS records owned by chain names. Address-bearing
/// records that are off the chain, in the authority section, or carry a special-purpose
/// address (unless allow_private) are listed in drop. The additional section is never read:
/// dnsward never relays it.
AnswerScan scan_answer(const uint8_t* ans, std::size_t len, const uint8_t* qname_lc,
                       std::size_t qname_len, bool allow_private);

inline constexpr int kMaxChain = 16;

/// Lowers every TTL at the given offsets to at most max_ttl, then subtracts age (not below 0).
void rewrite_ttls(uint8_t* msg, const std::vector<uint32_t>& offsets, uint32_t max_ttl,
                  uint32_t age);

/// Rebuilds an answer without the records listed in drop (numbered over answer+authority)
/// and without its additional section (but for the OPT). Every name is written
/// uncompressed (owners, and the RDATA names of the RFC 1035 types that may be compressed,
/// RFC 3597 4), so no pointer can dangle. Returns false if the message cannot be walked.
bool rebuild_without(const uint8_t* ans, std::size_t len, const std::vector<uint16_t>& drop,
                     std::vector<uint8_t>& out);

}  // namespace dnsward
