// Unit tests: the metrics table (DNSWARD_METRICS) is the only declaration of a metric. Every
// counter the pipeline increments is rendered exactly once, with its labels and its own
// value; families are whole; SIGUSR1's stats line uses the exposition's names and values.
#include <doctest/doctest.h>

#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "dnsward/metrics.hpp"

using namespace dnsward;

namespace {

struct CounterRow {
  const char* member;
  const char* name;
  const char* labels;
  bool stats;
};

// The COUNTER rows, read from the table itself, with their member's name.
#define ROW_(member, name, labels, stats, help) CounterRow{#member, name, labels, stats},
#define SKIP_(...)
const std::vector<CounterRow> kCounterRows = {DNSWARD_METRICS(ROW_, SKIP_, SKIP_, SKIP_)};
#undef ROW_

// A snapshot where every counter holds a value of its own (1000 + its row), so a row that
// read another member, or a member rendered twice, shows.
MetricsSnapshot distinct() {
  MetricsSnapshot m;
  uint64_t v = 1000;
#define SET_(member, ...) m.counters.member = v++;
  DNSWARD_METRICS(SET_, SKIP_, SKIP_, SKIP_)
#undef SET_
  m.inflight = 7;
  m.cache_entries = 42;
  m.nft_known = 3;
  m.policy_version = "0f470a93";
  m.upstream_latency.observe(0.0002);
  return m;
}

std::vector<std::string> lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

std::string sample_id(const std::string& name, const std::string& labels) {
  return labels.empty() ? name : name + "{" + labels + "}";
}

// sample id ("name{labels}") -> value, from the exposition's sample lines.
std::map<std::string, std::string> samples(const std::string& exposition) {
  std::map<std::string, std::string> out;
  for (const auto& l : lines(exposition)) {
    if (l.empty() || l[0] == '#') continue;
    const auto sp = l.rfind(' ');
    out[l.substr(0, sp)] = l.substr(sp + 1);
  }
  return out;
}

}  // namespace

TEST_CASE("every counter member is in the table, and so in the exposition") {
  // Counters is generated from the table, so it has no member the table lacks: its size is
  // exactly one uint64_t per COUNTER row.
  CHECK(sizeof(Counters) == kCounterRows.size() * sizeof(uint64_t));
  CHECK(kCounterRows.size() >= 29);
}

TEST_CASE("every counter appears in the exposition exactly once, with its labels and its value") {
  const std::string text = render_metrics(distinct());
  const auto all = lines(text);
  uint64_t v = 1000;
  for (const auto& r : kCounterRows) {
    CAPTURE(r.member);
    const std::string id = sample_id(r.name, r.labels);
    int seen = 0;
    for (const auto& l : all)
      if (l.rfind(id + " ", 0) == 0) {
        ++seen;
        CHECK(l == id + " " + std::to_string(v));  // its own member's value, no other
      }
    CHECK(seen == 1);
    ++v;
  }
}

TEST_CASE("each family has one HELP and one TYPE, before all of its samples, and no sample is "
          "outside a declared family") {
  const std::string text = render_metrics(distinct());
  std::set<std::string> declared;
  std::string current;
  std::map<std::string, int> help, type;
  for (const auto& l : lines(text)) {
    if (l.rfind("# HELP ", 0) == 0) {
      current = l.substr(7, l.find(' ', 7) - 7);
      ++help[current];
      CHECK(l.size() > 8 + current.size());  // the help text is not empty
      continue;
    }
    if (l.rfind("# TYPE ", 0) == 0) {
      const std::string n = l.substr(7, l.find(' ', 7) - 7);
      CHECK(n == current);
      ++type[n];
      continue;
    }
    // A sample belongs to the family declared last: name, or name_bucket/_sum/_count of a
    // histogram; its family must not have been closed by another.
    const std::string name = l.substr(0, l.find_first_of("{ "));
    CAPTURE(l);
    CHECK((name == current || name == current + "_bucket" || name == current + "_sum" ||
           name == current + "_count"));
  }
  for (const auto& [n, k] : help) {
    CAPTURE(n);
    CHECK(k == 1);
    CHECK(type[n] == 1);
  }
}

TEST_CASE("histograms and the policy info are rendered from the table") {
  const std::string text = render_metrics(distinct());
  CHECK(text.find("# TYPE dnsward_upstream_latency_seconds histogram\n") != std::string::npos);
  CHECK(text.find("dnsward_upstream_latency_seconds_bucket{le=\"0.0001\"} 0\n") != std::string::npos);
  CHECK(text.find("dnsward_upstream_latency_seconds_bucket{le=\"0.00025\"} 1\n") != std::string::npos);
  CHECK(text.find("dnsward_upstream_latency_seconds_bucket{le=\"+Inf\"} 1\n") != std::string::npos);
  CHECK(text.find("dnsward_upstream_latency_seconds_count 1\n") != std::string::npos);
  CHECK(text.find("# TYPE dnsward_vouch_latency_seconds histogram\n") != std::string::npos);
  CHECK(text.find("dnsward_vouch_latency_seconds_count 0\n") != std::string::npos);
  CHECK(text.find("dnsward_policy_info{version=\"0f470a93\"} 1\n") != std::string::npos);
  CHECK(text.find("dnsward_upstream_inflight 7\n") != std::string::npos);
}

TEST_CASE("the SIGUSR1 stats line carries the rows marked stats, under their exposition names and "
          "with the same values") {
  const MetricsSnapshot m = distinct();
  const auto exposed = samples(render_metrics(m));
  const std::string line = stats_line(m);
  std::set<std::string> keys;
  std::istringstream in(line);
  for (std::string pair; in >> pair;) {
    CAPTURE(pair);
    const auto eq = pair.find('=');
    REQUIRE(eq != std::string::npos);
    CHECK(pair.find('"') == std::string::npos);  // a valid logfmt key: no quotes, one '='
    CHECK(pair.find('=', eq + 1) == std::string::npos);
    const std::string key = pair.substr(0, eq), value = pair.substr(eq + 1);
    // Undo the key's one rewrite (label="v" written label:v) to get the exposition's id.
    std::string id;
    const auto brace = key.find('{');
    if (brace == std::string::npos) {
      id = key;
    } else {
      id = key.substr(0, brace + 1);
      const std::string inner = key.substr(brace + 1, key.size() - brace - 2);
      const auto colon = inner.find(':');
      REQUIRE(colon != std::string::npos);
      id += inner.substr(0, colon) + "=\"" + inner.substr(colon + 1) + "\"}";
    }
    REQUIRE(exposed.count(id) == 1);
    CHECK(exposed.at(id) == value);
    keys.insert(id);
  }
  // Exactly the counters marked stats (and no counter twice).
  for (const auto& r : kCounterRows) {
    CAPTURE(r.member);
    CHECK(keys.count(sample_id(r.name, r.labels)) == (r.stats ? 1u : 0u));
  }
  CHECK(line.find("dnsward_queries_total{verdict:denied}=1001") != std::string::npos);
  CHECK(line.find("dnsward_upstream_inflight=7") != std::string::npos);
  CHECK(line.find("dnsward_cache_entries=42") != std::string::npos);
}
