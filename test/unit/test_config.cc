// The option table: command line, config file, bounds, defaults, and the loop check.
#include <doctest/doctest.h>

#include <unistd.h>

#include <cstdio>
#include <fstream>

#include "dnsward/config.hpp"

using namespace dnsward;

namespace {
std::string write_temp(const std::string& text) {
  char path[] = "/tmp/dnsward-test-XXXXXX";
  const int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  close(fd);
  std::ofstream(path) << text;
  return path;
}
}  // namespace

TEST_CASE("command-line options reach the config, with defaults for the rest") {
  const auto r = parse_serve_config({"--listen", "127.0.0.1:5300", "--listen", "[::1]:5300",
                                     "--upstream", "127.0.0.2:53", "--upstream-timeout", "700",
                                     "--no-nft"});
  REQUIRE_MESSAGE(r.config, r.error);
  CHECK(r.config->listen.size() == 2);
  CHECK(r.config->listen[1].family() == AF_INET6);
  CHECK(r.config->listen[1].port() == 5300);
  CHECK(r.config->upstreams.size() == 1);
  CHECK(r.config->upstream_timeout_ms == 700);
  CHECK(r.config->no_nft);
  CHECK(r.config->negative_ttl == 30);
  CHECK(r.config->udp_payload == 1232);
}

TEST_CASE("a config file takes the same names as key = value lines") {
  const std::string f = write_temp(
      "# dnsward config\nlisten = 127.0.0.1:5301\nupstream = 127.0.0.3:5353\n"
      "upstream = 127.0.0.4\nnegative-ttl = 5\nno-nft = true\n");
  const auto r = parse_serve_config({"--config", f});
  std::remove(f.c_str());
  REQUIRE_MESSAGE(r.config, r.error);
  CHECK(r.config->listen[0].port() == 5301);
  REQUIRE(r.config->upstreams.size() == 2);
  CHECK(r.config->upstreams[0].port() == 5353);
  CHECK(r.config->upstreams[1].port() == 53);
  CHECK(r.config->negative_ttl == 5);
  CHECK(r.config->no_nft);
}

TEST_CASE("bad options and values give a one-line error naming them") {
  const struct { std::vector<std::string> args; const char* says; } cases[] = {
      {{"--bogus"}, "bogus"},
      {{"--upstream-timeout", "10", "--upstream", "127.0.0.2"}, "--upstream-timeout 10: must be between"},
      {{"--udp-payload", "abc", "--upstream", "127.0.0.2"}, "udp-payload"},
      {{"--listen", "127.0.0.1", "--upstream", "127.0.0.2"}, "--listen 127.0.0.1"},
      {{"--listen", "[::1]:99999", "--upstream", "127.0.0.2"}, "--listen [::1]:99999"},
      {{"--upstream", "not-an-ip"}, "--upstream not-an-ip"},
      {{"--log-level", "loud", "--upstream", "127.0.0.2"}, "--log-level loud"},
      {{"--config", "/nonexistent/dnsward.conf"}, "cannot open"},
      {{"extra-positional"}, ""},
  };
  for (const auto& c : cases) {
    CAPTURE(c.says);
    const auto r = parse_serve_config(c.args);
    CHECK_FALSE(r.config);
    CHECK(r.error.find(c.says) != std::string::npos);
    CHECK(r.error.find('\n') == std::string::npos);
  }
}

TEST_CASE("an upstream that is our own listen address is a forwarding loop") {
  auto r = parse_serve_config({"--listen", "127.0.0.1:5302", "--upstream", "127.0.0.1:5302"});
  CHECK_FALSE(r.config);
  CHECK(r.error.find("forwarding loop") != std::string::npos);
  r = parse_serve_config({"--listen", "0.0.0.0:5302", "--upstream", "127.0.0.9:5302"});
  CHECK_FALSE(r.config);
  CHECK(r.error.find("forwarding loop") != std::string::npos);
  r = parse_serve_config({"--listen", "127.0.0.1:5302", "--upstream", "127.0.0.1:5303"});
  CHECK(r.config);
}

TEST_CASE("without --upstream the nameservers of resolv.conf are used") {
  const std::string f = write_temp("search x\nnameserver 192.0.2.1\nnameserver ::1\n");
  const auto r = parse_serve_config({}, f);
  REQUIRE_MESSAGE(r.config, r.error);
  CHECK(r.config->upstreams.size() == 2);
  CHECK(r.config->upstream_source == f);
  const std::string empty = write_temp("search x\n");
  const auto r2 = parse_serve_config({}, empty);
  CHECK_FALSE(r2.config);
  CHECK(r2.error.find("names no nameserver") != std::string::npos);
  std::remove(f.c_str());
  std::remove(empty.c_str());
}

TEST_CASE("--help is generated from the option table") {
  const std::string h = serve_help();
  for (const char* opt : {"--listen", "--upstream", "--allowlist", "--config", "--no-nft",
                          "--upstream-timeout", "--negative-ttl", "--tcp-max-connections"})
    CHECK(h.find(opt) != std::string::npos);
  CHECK(h.find("50..30000") != std::string::npos);
}

TEST_CASE("a '%' in options is refused before Boost's error formatting loops on it (fuzzing)") {
  const auto r = parse_serve_config({"--max-infm-ptod%original_token%ime", "x"});
  CHECK_FALSE(r.config);
  CHECK(r.error.find("'%' is not allowed") != std::string::npos);
  const std::string f = write_temp("listen = 127.0.0.1:53\nbogus%value% = 1\n");
  const auto c = parse_serve_config({"--config", f});
  std::remove(f.c_str());
  CHECK_FALSE(c.config);
  CHECK(c.error.find("'%' is not allowed") != std::string::npos);
}
