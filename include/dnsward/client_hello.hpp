// The first flight of a guarded TCP connection: the TLS ClientHello's server_name (and the
// few other facts a guard may judge), or a plain HTTP request's Host. Pure functions over the
// bytes received so far: no I/O, no state, nothing read past the length given; every length
// in the input is hostile. Fuzzed by test/fuzz/fuzz_client_hello.cc.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace dnsward {

/// What a first-flight parser made of the bytes received so far.
enum class FlightStatus {
  Complete,   ///< the whole message was parsed and is well-formed
  NeedMore,   ///< a valid prefix: more bytes are needed to decide
  NotTls,     ///< not a TLS handshake record (parse_client_hello only)
  NotHttp,    ///< not an HTTP/1.x request line (parse_http_host only)
  Malformed,  ///< inconsistent lengths or a value the guard must not accept
  TooLarge,   ///< over our bounds (bytes or TLS records) before the message ended
};

/// Bounds: past them a first flight is TooLarge, never buffered further.
inline constexpr std::size_t kMaxClientHelloBody = 16384;  ///< handshake body bytes
inline constexpr std::size_t kMaxClientHelloRecords = 8;   ///< TLS records carrying it
inline constexpr std::size_t kMaxAlpnProtocols = 16;       ///< ALPN names kept
inline constexpr std::size_t kMaxHttpHead = 8192;          ///< bytes before the blank line

/// parse_client_hello()'s verdict and, on Complete, what the ClientHello says.
struct ClientHelloResult {
  FlightStatus status = FlightStatus::NeedMore;
  std::size_t need = 0;        ///< NeedMore: at least this many more bytes (never 0)
  std::size_t hello_end = 0;   ///< Complete: input bytes up to the end of the last record used
  /// Complete: handshake bytes after the ClientHello in its last record (RFC 8446 5.1 lets
  /// messages share a record). A client sends none: nothing follows its ClientHello before
  /// the server answers, and a second ClientHello hidden there would be read after a
  /// HelloRetryRequest without ever being a flight of its own.
  std::size_t trailing = 0;
  uint16_t legacy_version = 0; ///< ClientHello.legacy_version (0x0303 from TLS 1.3 clients)
  bool offers_tls13 = false;   ///< supported_versions lists 0x0304
  bool has_sni = false;        ///< a server_name extension with its one host_name
  std::string sni;             ///< that host_name, lower-cased, no trailing dot
  bool has_ech = false;        ///< encrypted_client_hello (0xfe0d): sni is the outer name
  bool has_early_data = false; ///< early_data (0-RTT data may follow the ClientHello)
  std::vector<std::string> alpn;  ///< ALPN protocol names in the client's order
};

/// Parses the client's first flight on a TCP connection: one or more TLS records carrying
/// one ClientHello. Pass everything received so far; on NeedMore call again with more.
ClientHelloResult parse_client_hello(const uint8_t* data, std::size_t len);

/// parse_http_host()'s verdict and, on Complete, the request's host.
struct HttpHostResult {
  FlightStatus status = FlightStatus::NeedMore;
  std::size_t head_end = 0;  ///< Complete: input bytes up to and including the blank line
  std::string host;          ///< Host header's host: port stripped, lower-cased
};

/// Parses a plain HTTP/1.x request's head (request line and header fields up to the blank
/// line) and returns its one Host. Pass everything received so far.
HttpHostResult parse_http_host(const uint8_t* data, std::size_t len);

/// The name of a status, for logs and test messages.
const char* flight_status_name(FlightStatus s);

}  // namespace dnsward
