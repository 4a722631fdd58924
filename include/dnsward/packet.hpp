// The query hot path: parse a client's query (header, question, EDNS) and build the
// replies dnsward synthesises itself, all without heap allocation. Upstream answers are
// checked and rewritten for the client by relay_answer().
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "dnsward/wire.hpp"

namespace dnsward {

/// What parse_query() made of a packet.
enum class ParseStatus {
  Ok,       ///< a well-formed standard query
  Drop,     ///< no reply may be sent: too short for a header, or QR=1 (never answer a response)
  FormErr,  ///< malformed; a header-only FORMERR echoing the ID is safe to send
  NotImp,   ///< an opcode other than QUERY (RFC 1035 4.1.1)
};

/// A parsed client query. The question is kept as received (0x20 letter case intact) and
/// lower-cased for matching.
struct Query {
  uint16_t id = 0;
  uint16_t flags = 0;  ///< the header's second word as received
  uint16_t qtype = 0;
  uint16_t qclass = 0;
  // Not zero-initialised: parse_query writes the first qname_len bytes, and nothing reads
  // beyond them (saves clearing half a kilobyte per query).
  uint8_t qname[wire::kMaxNameWire];     ///< wire form as received, with root byte
  uint8_t qname_lc[wire::kMaxNameWire];  ///< the same, lower-cased
  std::size_t qname_len = 0;                  ///< bytes in qname, including the root byte
  bool has_edns = false;
  uint8_t edns_version = 0;
  bool edns_do = false;
  uint16_t edns_udp_size = 0;  ///< as the client advertised it (RFC 6891 6.2.3)

  /// Largest UDP reply the client accepts: 512 without EDNS (RFC 1035 4.2.1), else its
  /// advertised size (values below 512 count as 512, RFC 6891 6.2.5), capped at our own.
  std::size_t udp_limit(std::size_t our_max) const;
  std::string qname_text() const { return wire::name_to_text(qname_lc, qname_len); }
};

/// Parses a client's query. Malformed input never reads out of bounds: a short header,
/// QDCOUNT != 1, records in the answer or authority sections, a compressed or oversized
/// question name, a truncated question, more than one OPT or an OPT with a non-root owner,
/// or bytes after the last record all give FormErr.
ParseStatus parse_query(const uint8_t* pkt, std::size_t len, Query& q);

/// Options for the replies dnsward writes itself.
struct ReplyOptions {
  uint16_t our_udp_size = 1232;  ///< advertised in our OPT (DNS flag day 2020)
  uint32_t negative_ttl = 30;    ///< TTL and MINIMUM of the synthetic SOA (RFC 2308 5)
};

/// Header-only error reply (FORMERR, NOTIMP) for a packet we could not or would not parse:
/// no question is echoed because we cannot vouch for it. Needs only the first 4 bytes.
std::size_t build_header_error(const uint8_t* pkt, std::size_t len, uint16_t rcode,
                               uint8_t* out, std::size_t cap);

/// Reply echoing the question with the given RCODE and no records; OPT (with an optional
/// EDE) when the query had EDNS. rcode may be extended (BADVERS).
std::size_t build_rcode(const Query& q, uint16_t rcode, const ReplyOptions& o, uint8_t* out,
                        std::size_t cap, uint16_t ede = wire::edns::kNoEde, std::string_view ede_text = {});

/// NXDOMAIN or NODATA (rcode NOERROR) with the synthetic SOA in the authority section so
/// stub caches keep the denial only briefly (RFC 2308), and EDE when the query had EDNS.
std::size_t build_negative(const Query& q, uint16_t rcode, const ReplyOptions& o, uint8_t* out,
                           std::size_t cap, uint16_t ede = wire::edns::kNoEde,
                           std::string_view ede_text = {});

/// Local answer for localhost and names below it (RFC 6761 6.3): A 127.0.0.1, AAAA ::1,
/// NODATA for other types.
std::size_t build_localhost(const Query& q, const ReplyOptions& o, uint8_t* out,
                            std::size_t cap);

/// Minimal answer to qtype ANY: one HINFO "RFC8482" "" (RFC 8482 4.2).
std::size_t build_any_hinfo(const Query& q, const ReplyOptions& o, uint8_t* out,
                            std::size_t cap);

/// A local TXT answer in the query's class (CHAOS for `why.NAME`): one TXT record per line,
/// each line cut into character-strings of at most 255 bytes, TTL 0.
std::size_t build_txt(const Query& q, const std::vector<std::string>& lines,
                      const ReplyOptions& o, uint8_t* out, std::size_t cap);

/// True if the lower-cased wire name is "localhost." or below it (RFC 6761 6.3).
bool is_localhost(const uint8_t* name_lc, std::size_t len);

/// The query sent upstream: a fresh header with our ID and the client's RD/CD/AD bits, the
/// client's question as received, and (with_opt) exactly one plain OPT of 11 bytes (our
/// payload size, the client's DO bit, no options). The client's own additional records are
/// never forwarded. Always ending in our plain OPT also keeps c-ares 1.18 safe: after an
/// upstream FORMERR it cuts 11 bytes off the query, which then removes exactly that OPT.
/// qname_sent: the name to send, of q.qname_len bytes (see randomize_case); null sends the
/// client's own.
std::size_t build_upstream_query(const Query& q, uint16_t upstream_id, uint16_t payload,
                                 uint8_t* out, std::size_t cap, bool with_opt = true,
                                 const uint8_t* qname_sent = nullptr);

/// DNS 0x20 (draft-vixie-dnsext-dns0x20): writes name (wire form, len bytes) to out with the
/// case of each letter taken from one bit of random (len bytes), so that an off-path
/// spoofer must also guess the letter case of the question. Labels' length bytes are kept.
void randomize_case(const uint8_t* name, std::size_t len, const uint8_t* random, uint8_t* out);

/// True if the answer's question name is byte for byte qname_sent (the answer already
/// passed check_answer, which compares case-insensitively). An answer without a question
/// carries nothing to compare and passes.
bool question_case_matches(const uint8_t* ans, std::size_t len, const uint8_t* qname_sent,
                           std::size_t qname_len);

/// True for a FORMERR answer without an OPT: the mark of a server that does not speak EDNS
/// (RFC 6891 7), to be asked again without one.
bool is_edns_formerr(const uint8_t* ans, std::size_t len);

/// Result of relay_answer().
enum class RelayStatus {
  Ok,
  Malformed,  ///< the answer could not be walked safely
  Mismatch,   ///< wrong ID or a question other than the one we asked
  Unrelayable ///< an extended RCODE the client (without EDNS) cannot receive
};

/// Rewrites an upstream answer for the client: the client's ID and question bytes (0x20 case
/// preserved), answer and authority sections verbatim, no additional records (never relayed:
/// their addresses are not vouched for), and our own OPT (with the upstream's EDE options)
/// only if the client sent EDNS. If that exceeds limit, the reply carries only the question,
/// with TC=1.
/// extra_ede/extra_text add an Extended DNS Error of dnsward's own after the upstream's.
RelayStatus relay_answer(const Query& q, uint16_t upstream_id, const uint8_t* ans,
                         std::size_t ans_len, std::size_t limit, const ReplyOptions& o,
                         uint8_t* out, std::size_t cap, std::size_t& out_len,
                         uint16_t extra_ede = wire::edns::kNoEde, std::string_view extra_text = {});

/// relay_answer() for an answer that passed check_answer() already (prepare_answer checks
/// it): the same rewrite for the client, without comparing an upstream ID again, so that a
/// cached answer needs none.
RelayStatus relay_checked_answer(const Query& q, const uint8_t* ans, std::size_t ans_len,
                                 std::size_t limit, const ReplyOptions& o, uint8_t* out,
                                 std::size_t cap, std::size_t& out_len,
                                 uint16_t extra_ede = wire::edns::kNoEde, std::string_view extra_text = {});

/// The checks relay_answer() starts with: a response with our ID and exactly our question
/// (compared case-insensitively). Nothing may be taken from an answer that fails them.
RelayStatus check_answer(const Query& q, uint16_t upstream_id, const uint8_t* ans,
                         std::size_t ans_len);

}  // namespace dnsward
