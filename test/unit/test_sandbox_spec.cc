// A sandbox's registration: the checks, the registration file (round trip, FILE:LINE
// errors) and the control socket's JSON request (accept/refuse tables, round trip).
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "dnsward/sandbox_spec.hpp"

using namespace dnsward;

namespace {

IpAddr ip(const char* s) {
  IpAddr a;
  REQUIRE(IpAddr::parse(s, a));
  return a;
}

SandboxSpec full_spec() {
  SandboxSpec s;
  s.id = "vm-1.a_b";
  s.addrs = {ip("100.64.1.2"), ip("fd64:1::2")};
  s.iface = "tap1";
  s.allowlists = {"/etc/dnsward/python.allow", "/srv/with space/x.allow"};
  // Entries may hold '#', '=', "inline = ", leading and trailing spaces, tabs, UTF-8, and
  // empty lines: every one must come back as it was.
  s.allowlist_text = "pypi.org\n# comment = yes\n\n  *.example.com  \ninline = x\ta\tb\nb\xc3\xbc\x63her.de\n";
  s.default_list = false;
  s.audit = true;
  return s;
}

}  // namespace

TEST_CASE("sandbox ids are 1-64 of [A-Za-z0-9_.-] and never start with a dot") {
  const struct { std::string id; bool ok; } cases[] = {
      {"a", true}, {"vm-1.a_B", true}, {std::string(64, 'x'), true}, {"a.", true}, {"-a", true},
      {"", false}, {std::string(65, 'x'), false}, {".hidden", false}, {".", false}, {"..", false},
      {"a/b", false}, {"a b", false}, {"a\"b", false}, {std::string("a\0b", 3), false}, {"\xc3\xa9", false},
  };
  for (const auto& c : cases) {
    CAPTURE(c.id);
    CHECK(check_sandbox_id(c.id).empty() == c.ok);
  }
  CHECK(check_sandbox_id(".x") == "the sandbox id \".x\" starts with '.'");
  CHECK(check_sandbox_id("") == "the sandbox id is empty");
}

TEST_CASE("guest addresses may be private but not unspecified, loopback, multicast, link-local or mapped") {
  const struct { const char* addr; bool ok; } cases[] = {
      {"100.64.1.2", true}, {"10.0.0.5", true}, {"192.168.1.1", true}, {"203.0.113.9", true},
      {"fd64:1::2", true}, {"2001:db8::1", true},
      {"0.0.0.0", false}, {"0.1.2.3", false}, {"127.0.0.1", false}, {"169.254.169.254", false},
      {"224.0.0.1", false}, {"240.0.0.1", false}, {"255.255.255.255", false},
      {"::", false}, {"::1", false}, {"ff02::1", false}, {"fe80::1", false}, {"::ffff:100.64.1.2", false},
  };
  for (const auto& c : cases) {
    CAPTURE(c.addr);
    CHECK(check_guest_addr(ip(c.addr)).empty() == c.ok);
  }
  CHECK(check_guest_addr(IpAddr{}) == "not an IPv4 or IPv6 address");
  CHECK(check_guest_addr(ip("::")) == "address :: is unspecified");
}

TEST_CASE("check_sandbox_spec refuses each kind of bad spec with its reason") {
  CHECK(check_sandbox_spec(full_spec()) == "");
  const struct { const char* what; void (*mutate)(SandboxSpec&); const char* says; } cases[] = {
      {"bad id", [](SandboxSpec& s) { s.id = "a/b"; }, "may hold only"},
      {"no address", [](SandboxSpec& s) { s.addrs.clear(); }, "the sandbox has no address"},
      {"17 addresses", [](SandboxSpec& s) {
         s.addrs.clear();
         for (int i = 1; i <= 17; ++i) s.addrs.push_back(ip(("100.64.0." + std::to_string(i)).c_str()));
       }, "the sandbox has more than 16 addresses"},
      {"duplicate", [](SandboxSpec& s) { s.addrs.push_back(ip("100.64.1.2")); }, "address 100.64.1.2 is given twice"},
      {"multicast", [](SandboxSpec& s) { s.addrs.push_back(ip("ff02::1")); }, "address ff02::1 is multicast"},
      {"empty iface", [](SandboxSpec& s) { s.iface = ""; }, "the interface name is empty"},
      {"long iface", [](SandboxSpec& s) { s.iface = std::string(16, 't'); }, "is longer than 15 bytes"},
      {"iface slash", [](SandboxSpec& s) { s.iface = "tap/1"; }, "may hold only"},
      {"relative path", [](SandboxSpec& s) { s.allowlists = {"x.allow"}; }, "allowlist path \"x.allow\" is not absolute"},
      {"control in path", [](SandboxSpec& s) { s.allowlists = {"/a\nb"}; }, "has a control character"},
      {"path ending in a blank", [](SandboxSpec& s) { s.allowlists = {"/etc/x.allow "}; }, "ends with a blank"},
      {"65 paths", [](SandboxSpec& s) { s.allowlists.assign(65, "/x"); }, "more than 64 allowlist files"},
      {"text too long", [](SandboxSpec& s) { s.allowlist_text = std::string(kMaxAllowlistText, 'a') + "\n"; }, "longer than 1 MiB"},
      {"text with CR", [](SandboxSpec& s) { s.allowlist_text = "a\r\n"; }, "has a control character"},
      {"text unnormalised", [](SandboxSpec& s) { s.allowlist_text = "a"; }, "does not end with a newline"},
      {"text with DEL", [](SandboxSpec& s) { s.allowlist_text = "a\x7f\n"; }, "has a control character"},
      // JSON carries only UTF-8: any other byte would not read back the same.
      {"path not UTF-8", [](SandboxSpec& s) { s.allowlists = {"/e \x84"}; }, "is not valid UTF-8"},
      {"text not UTF-8", [](SandboxSpec& s) { s.allowlist_text = "b\xfc\x63her.de\n"; }, "the inline allowlist is not valid UTF-8"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.what);
    SandboxSpec s = full_spec();
    c.mutate(s);
    CHECK(check_sandbox_spec(s).find(c.says) != std::string::npos);
  }
}

TEST_CASE("a registration file reads back exactly the spec it was rendered from") {
  SandboxSpec minimal;
  minimal.id = "m";
  minimal.addrs = {ip("10.1.2.3")};
  minimal.iface = "tap9";
  SandboxSpec only_empty_lines = minimal;
  only_empty_lines.allowlist_text = "\n\n";
  SandboxSpec many = minimal;
  for (int i = 1; i <= 16; ++i) many.addrs.push_back(ip(("fd00::" + std::to_string(i)).c_str()));
  many.addrs.erase(many.addrs.begin());
  many.allowlists.assign(64, "/a");
  for (const SandboxSpec& s : {full_spec(), minimal, only_empty_lines, many}) {
    REQUIRE(check_sandbox_spec(s) == "");
    const std::string text = render_sandbox_file(s);
    SandboxSpec back;
    std::string err;
    REQUIRE_MESSAGE(parse_sandbox_file(text, "/s/x", back, err), err);
    CHECK(back == s);
  }
  CHECK(render_sandbox_file(minimal) ==
        "# dnsward sandbox\nversion = 1\nid = m\naddr = 10.1.2.3\niface = tap9\ndefault = yes\nmode = enforce\n");
  CHECK(render_sandbox_file(only_empty_lines).find("inline =\ninline =\n") != std::string::npos);
}

TEST_CASE("a hand-written registration file: comments, blank lines, spaces and a missing last newline") {
  SandboxSpec s;
  std::string err;
  REQUIRE_MESSAGE(parse_sandbox_file("# mine\n\n  id=a  \n\taddr =  fd64:1:0::2\niface = tap1\n"
                                     "inline =   spaced # kept\ninline = b",
                                     "/s/a", s, err),
                  err);
  CHECK(s.id == "a");
  CHECK(s.addrs == std::vector<IpAddr>{ip("fd64:1::2")});
  CHECK(s.default_list);
  CHECK_FALSE(s.audit);
  CHECK(s.allowlist_text == "  spaced # kept\nb\n");
}

TEST_CASE("each bad line of a registration file is reported as PATH:LINE: reason") {
  const std::string head = "version = 1\nid = a\naddr = 100.64.1.2\niface = tap1\n";  // lines 1-4
  const struct { std::string text; std::string err; } cases[] = {
      {head + "colour = blue\n", "/s/a:5: unknown key \"colour\""},
      {head + "no equals sign\n", "/s/a:5: not a 'key = value' line"},
      {head + "id = b\n", "/s/a:5: duplicate key 'id' (first on line 2)"},
      {head + "iface = tap2\n", "/s/a:5: duplicate key 'iface' (first on line 4)"},
      {head + "mode = audit\nmode = audit\n", "/s/a:6: duplicate key 'mode' (first on line 5)"},
      {head + "default = yes\ndefault = no\n", "/s/a:6: duplicate key 'default' (first on line 5)"},
      {"version = 1\nversion = 1\n", "/s/a:2: duplicate key 'version' (first on line 1)"},
      {"version = 2\n", "/s/a:1: unsupported version \"2\" (this dnsward reads version 1)"},
      {"id = .a\n", "/s/a:1: the sandbox id \".a\" starts with '.'"},
      {"iface = tap/1\n", "/s/a:1: the interface name \"tap/1\" may hold only A-Z a-z 0-9 _ . -"},
      {head + "addr = 100.64.1.256\n", "/s/a:5: \"100.64.1.256\" is not an IPv4 or IPv6 address"},
      {head + "addr = 100.64.1.2\n", "/s/a:5: address 100.64.1.2 is given twice"},
      {head + "addr = 224.0.0.9\n", "/s/a:5: address 224.0.0.9 is multicast, reserved or broadcast"},
      {head + "allowlist = rel.allow\n", "/s/a:5: allowlist path \"rel.allow\" is not absolute"},
      {head + "default = maybe\n", "/s/a:5: default must be yes or no, not \"maybe\""},
      {head + "mode = strict\n", "/s/a:5: mode must be enforce or audit, not \"strict\""},
      {head + "inline=x\n", "/s/a:5: write an inline entry as 'inline = LINE'"},
      {head + " inline = x\n", "/s/a:5: write an inline entry as 'inline = LINE'"},
      {head + "inline = a\rb\n", "/s/a:5: control character in the line"},
      {head + "allowlist = /e \x84\n", "/s/a:5: the line is not valid UTF-8"},
      {head + "inline = b\xfc\x63her.de\n", "/s/a:5: the line is not valid UTF-8"},
      {head + std::string("id\0 = a\n", 8), "/s/a:5: control character in the line"},
      {"addr = 100.64.1.2\niface = tap1\n", "/s/a: no id"},
      {"id = a\naddr = 100.64.1.2\n", "/s/a: no iface"},
      {"id = a\niface = tap1\n", "/s/a: no addr"},
      {"", "/s/a: no id"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.text);
    SandboxSpec s;
    s.id = "untouched";
    std::string err;
    CHECK_FALSE(parse_sandbox_file(c.text, "/s/a", s, err));
    CHECK(err == c.err);
    CHECK(s.id == "untouched");  // out is written only on success
  }
}

TEST_CASE("a registration file's counts are bounded line by line") {
  std::string text = "id = a\niface = tap1\n";
  for (int i = 1; i <= 17; ++i) text += "addr = 100.64.0." + std::to_string(i) + "\n";
  SandboxSpec s;
  std::string err;
  CHECK_FALSE(parse_sandbox_file(text, "/s/a", s, err));
  CHECK(err == "/s/a:19: the sandbox has more than 16 addresses");

  std::string paths = "id = a\niface = tap1\naddr = 100.64.0.1\n";
  for (int i = 0; i < 65; ++i) paths += "allowlist = /x\n";
  CHECK_FALSE(parse_sandbox_file(paths, "/s/a", s, err));
  CHECK(err == "/s/a:68: the sandbox has more than 64 allowlist files");

  const std::string big = "id = a\niface = tap1\naddr = 100.64.0.1\ninline = " + std::string(kMaxAllowlistText, 'x') + "\n";
  CHECK_FALSE(parse_sandbox_file(big, "/s/a", s, err));
  CHECK(err == "/s/a:4: the inline allowlist is longer than 1 MiB");
}

TEST_CASE("control requests: accepted lines and what they mean") {
  CtlRequest r;
  std::string err;
  REQUIRE_MESSAGE(parse_ctl_request(
                      R"({"cmd":"add","id":"a","addrs":["100.64.1.2","fd64:1::2"],"iface":"tap1",)"
                      R"("allowlists":["/etc/x.allow"],"allowlist_text":"pypi.org\n*.x.org","default":false,"mode":"audit"})",
                      r, err),
                  err);
  CHECK(r.cmd == CtlRequest::Cmd::Add);
  CHECK(r.spec.id == "a");
  CHECK(r.spec.addrs == std::vector<IpAddr>{ip("100.64.1.2"), ip("fd64:1::2")});
  CHECK(r.spec.iface == "tap1");
  CHECK(r.spec.allowlists == std::vector<std::string>{"/etc/x.allow"});
  CHECK(r.spec.allowlist_text == "pypi.org\n*.x.org\n");  // normalised: a newline at the end
  CHECK_FALSE(r.spec.default_list);
  CHECK(r.spec.audit);

  // Defaults of add: the default list on, enforce mode, no files, no text.
  REQUIRE(parse_ctl_request(R"( { "iface" : "tap1" , "addrs" : [ "10.0.0.2" ] , "id":"b", "cmd":"add" } )", r, err));
  CHECK(r.spec.default_list);
  CHECK_FALSE(r.spec.audit);
  CHECK(r.spec.allowlists.empty());
  CHECK(r.spec.allowlist_text.empty());

  REQUIRE(parse_ctl_request(R"({"cmd":"remove","id":"a"})", r, err));
  CHECK(r.cmd == CtlRequest::Cmd::Remove);
  REQUIRE(parse_ctl_request(R"({"cmd":"list"})", r, err));
  CHECK(r.cmd == CtlRequest::Cmd::List);
  REQUIRE(parse_ctl_request(R"({"cmd":"show","id":"a"})", r, err));
  CHECK(r.cmd == CtlRequest::Cmd::Show);
  REQUIRE(parse_ctl_request(R"({"cmd":"explain","id":"a","name":"example.com"})" "\r", r, err));
  CHECK(r.cmd == CtlRequest::Cmd::Explain);
  CHECK(r.name == "example.com");
}

TEST_CASE("JSON string escapes decode, surrogate pairs included") {
  const struct { const char* json; std::string text; } cases[] = {
      {R"("a\"b\\c\/d")", "a\"b\\c/d\n"},
      {R"("\b\f\t|")", "\b\f\t|\n"},
      {R"("\u0041\u00e9\u20AC")", "A\xc3\xa9\xe2\x82\xac\n"},
      {R"("\ud83d\ude00")", "\xf0\x9f\x98\x80\n"},             // U+1F600 as a surrogate pair
      {R"("\uDBFF\uDFFF")", "\xf4\x8f\xbf\xbf\n"},             // U+10FFFF, the last one
      {"\"b\xc3\xbc\x63her \xf0\x9f\x98\x80\"", "b\xc3\xbc\x63her \xf0\x9f\x98\x80\n"},  // raw UTF-8
      {R"("a\nb\n")", "a\nb\n"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.json);
    CtlRequest r;
    std::string err;
    const std::string line = std::string(R"({"cmd":"add","id":"a","addrs":["10.0.0.2"],"iface":"t","allowlist_text":)") + c.json + "}";
    // \b and \f are control characters the allowlist text refuses: the string decoded, the
    // spec check then said no, and said so.
    if (c.text.find('\b') != std::string::npos) {
      CHECK_FALSE(parse_ctl_request(line, r, err));
      CHECK(err == "the inline allowlist has a control character");
      continue;
    }
    REQUIRE_MESSAGE(parse_ctl_request(line, r, err), err);
    CHECK(r.spec.allowlist_text == c.text);
  }
  // Escapes in member names count too.
  CtlRequest r;
  std::string err;
  REQUIRE_MESSAGE(parse_ctl_request(R"({"\u0063md":"show","i\u0064":"a"})", r, err), err);
  CHECK(r.cmd == CtlRequest::Cmd::Show);
}

TEST_CASE("control requests: refused lines, each with a one-line reason") {
  const std::string add = R"({"cmd":"add","id":"a","addrs":["10.0.0.2"],"iface":"t")";
  const struct { std::string line; std::string says; } cases[] = {
      // Not JSON, or not the subset.
      {"", "empty request"},
      {"   ", "empty request"},
      {"[]", "a request is a JSON object: expected '{' (at byte 1)"},
      {"{", "expected a member name (at byte 2)"},
      {R"({"cmd":"list"} x)", "trailing characters after the object (at byte 16)"},
      {R"({"cmd":"list"}{})", "trailing characters after the object"},
      {R"({"cmd":"list",})", "expected a member name"},
      {R"({"cmd" "list"})", "expected ':' after member \"cmd\""},
      {R"({'cmd':'list'})", "expected a member name"},
      {R"({"cmd":"list")", "expected ',' or '}'"},
      {R"({"cmd":"list" "id":"a"})", "expected ',' or '}'"},
      {R"({"cmd":"list)", "unterminated string"},
      {R"({"cmd":"li\st"})", "unknown escape in a string"},
      {R"({"cmd":"\u00zz"})", "\\u needs four hex digits"},
      {R"({"cmd":"\u12"})", "\\u needs four hex digits"},
      {R"({"cmd":"\ud83d"})", "a high surrogate not followed by a low one"},
      {R"({"cmd":"\ud83d\u0041"})", "a high surrogate not followed by a low one"},
      {R"({"cmd":"\ude00"})", "a lone low surrogate"},
      {"{\"cmd\":\"li\tst\"}", "control character in a string"},
      {"{\"cmd\":\"\xc3\"}", "invalid UTF-8 in a string"},
      {"{\"cmd\":\"\xc0\xaf\"}", "invalid UTF-8 in a string"},       // overlong '/'
      {"{\"cmd\":\"\xed\xa0\x80\"}", "invalid UTF-8 in a string"},   // a surrogate in UTF-8
      {"{\"cmd\":\"\xf4\x90\x80\x80\"}", "invalid UTF-8 in a string"},  // above U+10FFFF
      {R"({"cmd":null})", "member \"cmd\": null is not accepted"},
      {R"({"cmd":1})", "member \"cmd\": numbers are not accepted"},
      {R"({"cmd":-1})", "member \"cmd\": numbers are not accepted"},
      {R"({"cmd":{"x":"y"}})", "member \"cmd\": nested objects are not accepted"},
      {R"({"cmd":"add","addrs":[["10.0.0.2"]]})", "member \"addrs\": array elements must be strings"},
      {R"({"cmd":"add","addrs":["a",]})", "member \"addrs\": array elements must be strings"},
      {R"({"cmd":"add","addrs":["a" "b"]})", "member \"addrs\": expected ',' or ']'"},
      {R"({"cmd":tru})", "member \"cmd\": not a JSON value"},
      {R"({"cmd":True})", "member \"cmd\": not a JSON value"},
      // JSON, but not a request.
      {R"({})", "missing member \"cmd\""},
      {R"({"cmd":"list","cmd":"list"})", "duplicate member \"cmd\""},
      {R"({"cmd":"list","c\u006dd":"list"})", "duplicate member \"cmd\""},
      {R"({"cmd":"stop"})", "unknown cmd \"stop\" (add, remove, list, show, explain)"},
      {R"({"cmd":true})", "member \"cmd\" must be a string"},
      {R"({"cmd":"list","verbose":true})", "unknown member \"verbose\""},
      {R"({"cmd":"remove","id":"a","iface":"t"})", "member \"iface\" is not used by \"remove\""},
      {R"({"cmd":"list","id":"a"})", "member \"id\" is not used by \"list\""},
      {R"({"cmd":"remove"})", "missing member \"id\""},
      {R"({"cmd":"remove","id":["a"]})", "member \"id\" must be a string"},
      {R"({"cmd":"remove","id":"../etc"})", "may hold only"},
      {R"({"cmd":"explain","id":"a"})", "missing member \"name\""},
      {R"({"cmd":"explain","id":"a","name":"a b"})", "the name has a space or a control character"},
      {R"({"cmd":"explain","id":"a","name":""})", "the name is empty"},
      {add + R"(,"allowlist":["/x"]})", "unknown member \"allowlist\""},
      {R"({"cmd":"add","id":"a","iface":"t"})", "missing member \"addrs\""},
      {R"({"cmd":"add","id":"a","addrs":["10.0.0.2"]})", "missing member \"iface\""},
      {R"({"cmd":"add","id":"a","addrs":"10.0.0.2","iface":"t"})", "member \"addrs\" must be an array of strings"},
      {R"({"cmd":"add","id":"a","addrs":[],"iface":"t"})", "the sandbox has no address"},
      {R"({"cmd":"add","id":"a","addrs":["10.0.0.256"],"iface":"t"})", "\"10.0.0.256\" is not an IPv4 or IPv6 address"},
      {R"({"cmd":"add","id":"a","addrs":["10.0.0.2\u0000x"],"iface":"t"})", "\"10.0.0.2\\u0000x\" is not an IPv4 or IPv6 address"},
      {R"({"cmd":"add","id":"a","addrs":["10.0.0.2","10.0.0.2"],"iface":"t"})", "address 10.0.0.2 is given twice"},
      {R"({"cmd":"add","id":"a","addrs":["::"],"iface":"t"})", "address :: is unspecified"},
      {add + R"(,"default":"yes"})", "member \"default\" must be true or false"},
      {add + R"(,"mode":"strict"})", "mode must be \"enforce\" or \"audit\", not \"strict\""},
      {add + R"(,"allowlists":["x.allow"]})", "allowlist path \"x.allow\" is not absolute"},
      {add + R"(,"allowlist_text":"a\u0000b"})", "the inline allowlist has a control character"},
      {add + R"(,"allowlist_text":"a\r\nb"})", "the inline allowlist has a control character"},
      {R"({"cmd":"add","id":"a","addrs":["10.0.0.2"],"iface":"tap\u0000"})", "may hold only"},
      {std::string(kMaxCtlLine + 1, ' '), "request longer than 2 MiB"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.line.substr(0, 200));
    CtlRequest r;
    r.name = "untouched";
    std::string err;
    CHECK_FALSE(parse_ctl_request(c.line, r, err));
    CHECK(err.find(c.says) != std::string::npos);
    CHECK(err.find('\n') == std::string::npos);
    CHECK(r.name == "untouched");
  }
  // A hostile member name is cut in the message, not echoed whole.
  CtlRequest r;
  std::string err;
  CHECK_FALSE(parse_ctl_request("{\"cmd\":\"list\",\"" + std::string(100000, 'k') + "\":true}", r, err));
  CHECK(err.size() < 200);
}

TEST_CASE("a rendered request parses back to an equal request") {
  CtlRequest add;
  add.cmd = CtlRequest::Cmd::Add;
  add.spec = full_spec();
  add.spec.allowlist_text += "quote\" backslash\\ tab\t \xe2\x82\xac\n";
  CtlRequest minimal_add;
  minimal_add.cmd = CtlRequest::Cmd::Add;
  minimal_add.spec.id = "m";
  minimal_add.spec.addrs = {ip("10.0.0.2")};
  minimal_add.spec.iface = "t";
  CtlRequest remove, list, show, explain;
  remove.cmd = CtlRequest::Cmd::Remove;
  remove.spec.id = "a";
  list.cmd = CtlRequest::Cmd::List;
  show.cmd = CtlRequest::Cmd::Show;
  show.spec.id = "a";
  explain.cmd = CtlRequest::Cmd::Explain;
  explain.spec.id = "a";
  explain.name = "b\xc3\xbc\x63her.example";
  for (const CtlRequest& r : {add, minimal_add, remove, list, show, explain}) {
    const std::string line = render_ctl_request(r);
    CAPTURE(line);
    CHECK(line.find('\n') == std::string::npos);
    CtlRequest back;
    std::string err;
    REQUIRE_MESSAGE(parse_ctl_request(line, back, err), err);
    CHECK(back.cmd == r.cmd);
    CHECK(back.spec == r.spec);
    CHECK(back.name == r.name);
  }
  CHECK(render_ctl_request(remove) == R"({"cmd":"remove","id":"a"})");
  CHECK(render_ctl_request(minimal_add) ==
        R"({"cmd":"add","id":"m","addrs":["10.0.0.2"],"iface":"t","default":true,"mode":"enforce"})");
}
