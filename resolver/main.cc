// Wiring only: parse the command line, build the parts, run the loop.
#include <signal.h>
#include <unistd.h>
#include <sys/epoll.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <functional>
#include <fstream>
#include <iostream>
#include <sstream>

#include "dnsward/allowlist_files.hpp"
#include "dnsward/atomic_file.hpp"
#include "dnsward/clock.hpp"
#include "dnsward/config.hpp"
#include "dnsward/control.hpp"
#include "dnsward/host_mode.hpp"
#include "dnsward/event_loop.hpp"
#include "dnsward/explain.hpp"
#include "dnsward/lint.hpp"
#include "dnsward/metrics.hpp"
#include "dnsward/nfqueue.hpp"
#include "dnsward/queue_rules.hpp"
#include "dnsward/sni_guard.hpp"
#include "dnsward/log.hpp"
#include "dnsward/nft_rules.hpp"
#include "dnsward/policy_commands.hpp"
#include "dnsward/nft_sets.hpp"
#include "dnsward/pipeline.hpp"
#include "dnsward/privilege.hpp"
#include "dnsward/sd_notify.hpp"
#include "dnsward/policy.hpp"
#include "dnsward/transport.hpp"
#include "dnsward/upstream.hpp"
#include "dnsward/usage.hpp"


using namespace dnsward;

namespace {

constexpr const char* kUsage =
    "usage: dnsward COMMAND [OPTION]...\n\n"
    "Commands:\n"
    "  serve      run the filtering resolver (dnsward serve --help)\n"
    "  nft-rules  print the nftables ruleset for a sandbox (dnsward nft-rules --help)\n"
    "  check      lint allowlist files (dnsward check --help)\n"
    "  explain    why a name is allowed or denied (dnsward explain --help)\n"
    "  report     unused entries, stale reviews, most denied names (dnsward report --help)\n"
    "  ctl        add, change, remove, list, show sandboxes of `serve --host` (dnsward ctl --help)\n";

int usage_error(const std::string& msg) {
  std::fprintf(stderr, "dnsward: %s\n", msg.c_str());
  return 2;
}

/// Logs each custom entry that lacks its justification: `serve` loads it anyway, `check`
/// calls it an error.
void warn_unjustified(const Policy& p) {
  for (std::size_t i = 0; i < p.size(); ++i) {
    const Entry e = p.entry(i);
    const auto missing = missing_justification(e);
    if (missing.empty()) continue;
    std::string keys;
    for (const auto& k : missing) keys += (keys.empty() ? "" : ",") + k;
    log::warn("event=unjustified-entry where={} pattern={} missing={}", log::quote(e.where()),
              log::quote(e.pattern), keys);
  }
}

int serve(const std::vector<std::string>& args) {
  ParseOutcome parsed = parse_serve_config(args);
  if (parsed.help_shown) {
    std::fputs(serve_help().c_str(), stdout);
    return 0;
  }
  if (!parsed.config) return usage_error("serve: " + parsed.error);
  const ServeConfig& cfg = *parsed.config;
  log::threshold = cfg.log_level;
  log::format = cfg.log_format;

  std::vector<std::string> errors;
  std::shared_ptr<const Policy> policy = load_policy(cfg.allowlists, errors);
  for (const auto& e : errors) std::fprintf(stderr, "dnsward: %s\n", e.c_str());
  if (!policy) return 2;
  // Host mode: each sandbox has its own policy, named on its lines; the global list of
  // --allowlist is no one's, so lines for no sandbox carry no policy.
  if (!parsed.config->host) log::policy_version = policy->version();

  // The usage state: a corrupt file is reported and set aside, never fatal.
  Usage usage(cfg.state_max_names);
  if (!cfg.state.empty()) {
    std::string err;
    if (Usage::load(cfg.state, usage, err) == Usage::Load::Corrupt) {
      const std::string aside = fmt::format("{}.corrupt-{}", cfg.state, long(time(nullptr)));
      std::rename(cfg.state.c_str(), aside.c_str());
      log::error("event=state-corrupt error={} moved_to={} msg={}", log::quote(err), log::quote(aside),
                 log::quote("starting with empty usage counts"));
      usage = Usage(cfg.state_max_names);
    }
  }
  // The vouch ledger (which entries vouched for which elements) lives beside the state, so
  // that a restart with an edited list revokes what the new list no longer allows.
  const std::string ledger_path = cfg.state.empty() ? std::string() : cfg.state + ".vouched";
  NftSets* nft_for_state = nullptr;
  HostMode* host_for_state = nullptr;
  auto save_state = [&] {
    if (host_for_state) host_for_state->save_usage();
    if (cfg.state.empty()) return;
    std::string err;
    if (!usage.save(cfg.state, err)) log::error("event=state-save-failed error={}", log::quote(err));
    if (nft_for_state &&
        !write_file_atomically(ledger_path,
                               nft_for_state->ledger().serialize(mono_ms(), wall_ms()), err))
      log::error("event=ledger-save-failed error={}", log::quote(err));
  };

  signal(SIGPIPE, SIG_IGN);
  try {
    EventLoop loop;
    // The hook comes first: if the sets cannot be managed, nothing is served (fail closed).
    std::unique_ptr<NftSets> nft;
    if (!cfg.no_nft) {
      NftTarget target;
      target.family = static_cast<uint16_t>(cfg.nft_family);  // NFPROTO_*
      target.table = cfg.nft_table;
      target.set4 = cfg.nft_set4;
      target.set6 = cfg.nft_set6;
      target.set_size = cfg.host ? cfg.host_set_size : cfg.nft_set_size;
      target.max_timeout_s = cfg.max_ttl + cfg.grace;
      target.host = cfg.host;
      target.guard = cfg.sni_guard;
      if (cfg.sni_guard) {  // ports=: the port sets, as `nft-rules --sni-guard` declares them
        target.ports4 = ports_set_name(cfg.nft_set4);
        target.ports6 = ports_set_name(cfg.nft_set6);
      }
      try {
        nft = std::make_unique<NftSets>(target, cfg.nft_refresh);
      } catch (const NftError& e) {
        std::fprintf(stderr, "dnsward: nftables: %s\n", e.what());
        return 1;
      }
    }
    Upstream upstream(loop, cfg);
    Pipeline pipeline(loop, cfg, policy, upstream, nft.get());
    // Host mode: the registry, restored before anything is revoked (each element is judged
    // by its sandbox's policy), and the control socket.
    Sandboxes sandboxes(cfg.sandbox_state_names);
    std::unique_ptr<HostMode> host;
    std::unique_ptr<ControlServer> control;
    if (cfg.host) {
      pipeline.set_sandboxes(&sandboxes);
      host = std::make_unique<HostMode>(cfg, sandboxes, *nft, pipeline);
      host_for_state = host.get();
      nft->on_pairs_lost([&host] { host->restore_pairs(); });
      const uint64_t t0 = mono_ms();
      const std::size_t restored = host->restore();
      log::info("event=sandboxes-restored count={} ms={} dir={}", restored, mono_ms() - t0,
                log::quote(cfg.sandboxes_dir));
      // TCP queries are taken from a sandbox only if the accepted socket carries the mark
      // the host ruleset sets in prerouting; the kernel copies it to the socket only with
      // tcp_fwmark_accept (per network namespace, IPv4 and IPv6).
      if (FILE* f = std::fopen("/proc/sys/net/ipv4/tcp_fwmark_accept", "r+")) {
        char v = '0';
        if (std::fread(&v, 1, 1, f) != 1 || v != '1') {
          std::rewind(f);
          if (std::fputs("1\n", f) < 0 || std::fflush(f) != 0)
            log::error("event=tcp-fwmark-accept-failed msg={}",
                       log::quote("cannot set net.ipv4.tcp_fwmark_accept=1: DNS over TCP from sandboxes will be refused"));
          else
            log::info("event=tcp-fwmark-accept msg={}", log::quote("set net.ipv4.tcp_fwmark_accept=1"));
        }
        std::fclose(f);
      }
      try {
        control = std::make_unique<ControlServer>(loop, cfg.control, cfg.control_group, *host);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "dnsward: --control %s: %s\n", cfg.control.c_str(), e.what());
        return 1;
      }
    }
    std::function<void()> upkeep;
    if (nft) {
      nft_for_state = nft.get();
      pipeline.set_ruleset(nft.get());
      if (!ledger_path.empty()) {
        std::string text, err;
        // At most two sets of 16,777,216 elements' worth is absurd; this bounds a damaged
        // or hostile file well above any real ledger (about 600 bytes an element).
        const ReadFile r = read_file(ledger_path, text, err, 256u << 20);
        if (r == ReadFile::Ok && !nft->ledger().merge_saved(text, mono_ms(), wall_ms(), err)) {
          const std::string aside = fmt::format("{}.corrupt-{}", ledger_path, long(time(nullptr)));
          std::rename(ledger_path.c_str(), aside.c_str());
          log::error("event=ledger-corrupt error={} moved_to={} msg={}", log::quote(err), log::quote(aside),
                     log::quote("elements a previous run vouched for are kept as they are"));
        } else if (r == ReadFile::Error) {
          log::error("event=ledger-unreadable error={}", log::quote(err));
        }
      }
      // What a previous run vouched for under entries this list no longer has goes now.
      pipeline.revoke_unlisted("not on the allowlist at start");
      loop.watch(nft->event_fd(), EPOLLIN, [&nft](uint32_t) { nft->on_events(); });
      loop.watch(nft->dump_fd(), EPOLLIN, [&nft](uint32_t) { nft->on_dump_readable(); });
      upkeep = [&] {
        nft->maintain(mono_ms());
        loop.after(10000, upkeep);
      };
      loop.after(10000, upkeep);
    }
    // The first-flight guard: its queue is bound before privileges go (CAP_NET_ADMIN would
    // do, but a refusal, e.g. another process on the queue, must stop the start).
    std::unique_ptr<NfQueue> queue;
    std::unique_ptr<LedgerBoundNames> bound_names;
    std::unique_ptr<RulesetGatedVerdicts> gated;
    std::unique_ptr<SniGuard> guard;
    if (cfg.sni_guard) {
      try {
        queue = std::make_unique<NfQueue>(uint16_t(cfg.queue_num), cfg.queue_maxlen);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "dnsward: --sni-guard: netfilter queue %u: %s\n", cfg.queue_num, e.what());
        return 1;
      }
      {
        // With conntrack liberal (kube-proxy sets it), an ACK outside a connection's window
        // passes: the bare ACK of a SYN cookie the guard never saw reaches the server, which
        // then opens a connection further into the flight (see the README: a server that
        // takes data acknowledging only the SYN-ACK seen would read it). Not refused: the
        // host's choice, said at start.
        std::FILE* f = std::fopen("/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal", "r");
        int liberal = 0;
        if (f != nullptr) {
          if (std::fscanf(f, "%d", &liberal) != 1) liberal = 0;
          std::fclose(f);
        }
        if (liberal != 0)
          log::warn("event=conntrack-liberal msg={}",
                    log::quote("net.netfilter.nf_conntrack_tcp_be_liberal=1: the first-flight guard cannot count on "
                               "conntrack to drop a SYN cookie's bare ACK; set it to 0 where you can"));
      }
      if (cfg.queue_backend == QueueBackend::Xt) {
        // The xt queue is iptables-nft's, outside the ruleset serve judges by its marks:
        // without it nothing is queued and the backstop holds every guarded connection; and
        // without the reply jump the server's packets, which confirm a verdict, never come.
        const std::vector<XtJump> jumps = xt_guard_jumps(cfg);
        for (const auto& [af, family, tool] : {std::tuple{AF_INET, uint8_t(NFPROTO_IPV4), "iptables"},
                                               std::tuple{AF_INET6, uint8_t(NFPROTO_IPV6), "ip6tables"}}) {
          if (!sees(cfg.nft_family, af)) continue;
          std::vector<XtRuleSeen> rules;
          std::string err;
          const std::string why =
              read_xt_mangle(family, rules, err) ? judge_xt_queue(rules, jumps, uint16_t(cfg.queue_num)) : err;
          if (!why.empty()) {
            std::fprintf(stderr,
                         "dnsward: --queue-backend xt: the guard's queue is not loaded (%s mangle: %s); load "
                         "`dnsward nft-rules ... --print %s | %s-nft-restore --noflush` first\n",
                         tool, why.c_str(), tool, tool);
            return 1;
          }
        }
      }
      bound_names = std::make_unique<LedgerBoundNames>(
          nft->ledger(), [&pipeline](const IpAddr& guest, std::string_view pattern) {
            return pipeline.sni_any_vouches(guest, pattern);
          });
      // A verdict of accept means what it should only under a ruleset of this layout, in
      // force (RulesetGatedVerdicts): under another, the guard's verdicts are drops.
      gated = std::make_unique<RulesetGatedVerdicts>(*queue, [&nft] { return nft->ruleset().in_force(); });
      guard = std::make_unique<SniGuard>(GuardOptions::from(cfg), *bound_names, *gated, loop);
      if (cfg.host)  // keyed (guest . destination); its lines name the guest's sandbox
        guard->set_tenant_of([&sandboxes](const IpAddr& a) {
          const auto sb = sandboxes.by_addr(a);
          return sb ? sb->spec.id : std::string();
        });
      queue->start(loop, [&guard](uint32_t id, uint32_t mark, const uint8_t* pkt, std::size_t len, bool pending) {
        guard->on_packet(id, mark, pkt, len, pending);
      });
      log::info("event=sni-guard queue={} backend={} ports={} http_ports={} marks={} keys={}", cfg.queue_num,
                option_value_name("queue-backend", cfg.queue_backend), fmt::join(cfg.sni_ports, ","),
                fmt::join(cfg.http_ports, ","), cfg.guard_marks, cfg.host ? "guest.destination" : "destination");
    }
    if (!cfg.state.empty()) pipeline.set_usage(&usage);  // counting only where it is kept
    std::vector<std::unique_ptr<UdpListener>> udp;
    std::vector<std::unique_ptr<TcpListener>> tcp;
    for (const auto& ep : cfg.listen) {
      udp.push_back(std::make_unique<UdpListener>(loop, pipeline, ep));
      tcp.push_back(std::make_unique<TcpListener>(loop, pipeline, ep, cfg));
      if (cfg.host)
        tcp.back()->set_tenant_of([&sandboxes](const IpAddr& a) {
          const auto sb = sandboxes.by_addr(a);
          return sb ? sb->spec.id : std::string();
        });
    }
    MetricsSources sources{&pipeline, nft.get(), uint64_t(time(nullptr)), guard.get(), queue.get()};
    std::unique_ptr<MetricsServer> metrics_server;
    if (!cfg.metrics_listen.empty()) metrics_server = std::make_unique<MetricsServer>(loop, cfg.metrics_listen, sources);
    std::function<void()> write_metrics;
    if (!cfg.metrics_file.empty()) {
      write_metrics = [&] {
        std::string err;
        if (!write_metrics_file(cfg.metrics_file, sources, err))
          log::error("event=metrics-write-failed error={}", log::quote(err));
        loop.after(uint64_t(cfg.metrics_interval) * 1000u, write_metrics);
      };
      write_metrics();
    }
    // SIGUSR1: the counters that matter, in the log, under their exposition names.
    loop.on_signal(SIGUSR1, [&] { log::info("event=stats {}", stats_line(take_snapshot(sources))); });
    // Everything that needed root is done: sockets bound, netlink open, sets created.
    const DropResult drop = drop_privileges(cfg.user, cfg.user_explicit, !cfg.no_nft);
    if (!drop.ok) {
      std::fprintf(stderr, "dnsward: %s\n", drop.message.c_str());
      return 1;
    }
    if (drop.dropped)
      log::info("event=privileges-dropped uid={} kept={}", getuid(), cfg.no_nft ? "none" : "CAP_NET_ADMIN");
    else if (!drop.message.empty())
      log::warn("event=still-root msg={}", log::quote(drop.message));
    loop.on_signal(SIGTERM, [&] { loop.stop(); });
    loop.on_signal(SIGINT, [&] { loop.stop(); });
    // SIGHUP re-reads the config file's list options and the allowlists. The new policy
    // replaces the old between two queries, so no query sees half a list; if anything fails,
    // the old policy stays in force and every error is logged.
    loop.on_signal(SIGHUP, [&] {
      sd_notify("RELOADING=1");
      if (host) {  // host mode: every sandbox's own allowlists
        host->reload_all();
        sd_notify("READY=1");
        return;
      }
      struct Ready {
        ~Ready() { sd_notify("READY=1"); }
      } ready_again;
      std::vector<std::string> errs;
      std::vector<std::string> lists = cfg.allowlists;
      const ParseOutcome again = parse_serve_config(args);
      if (!again.config) errs.push_back("config: " + again.error);
      else lists = again.config->allowlists;
      auto fresh = errs.empty() ? load_policy(lists, errs) : nullptr;
      if (!fresh) {
        pipeline.reload_failed();
        for (const auto& e : errs) log::error("event=reload-failed error={}", log::quote(e));
        log::error("event=reload-failed msg={} entries={}",
                   log::quote("the previous allowlist stays in force"), policy->size());
        return;
      }
      const std::string old = policy->version();
      policy = fresh;
      log::policy_version = policy->version();
      pipeline.reload(policy);
      warn_unjustified(*policy);
      log::info("event=reload entries={} previous_policy={}", policy->size(), old);
    });
    std::function<void()> periodic_save;
    if (!cfg.state.empty() || (host && !cfg.sandboxes_dir.empty())) {
      periodic_save = [&] {
        save_state();
        loop.after(uint64_t(cfg.state_interval) * 1000u, periodic_save);
      };
      loop.after(uint64_t(cfg.state_interval) * 1000u, periodic_save);
    }

    std::string listen, ups, lists;
    for (const auto& e : cfg.listen) listen += (listen.empty() ? "" : ",") + e.text;
    for (const auto& e : cfg.upstreams) ups += (ups.empty() ? "" : ",") + e.text;
    for (const auto& l : cfg.allowlists) lists += (lists.empty() ? "" : ",") + l;
    if (host)
      log::info("event=start listen={} upstream={} upstream_from={} host=on sandboxes={} control={} "
                "sandbox_ifaces={}",
                listen, ups, log::quote(cfg.upstream_source), sandboxes.size(), log::quote(cfg.control),
                log::quote(cfg.sandbox_ifaces));
    else
      log::info("event=start listen={} upstream={} upstream_from={} allowlist={} entries={} mode={}",
                listen, ups, log::quote(cfg.upstream_source),
                lists.empty() ? "embedded-default" : lists, policy->size(), cfg.mode);
    if (!host) warn_unjustified(*policy);
    if (cfg.audit)
      log::warn("event=audit-mode msg={}", log::quote("AUDIT MODE: the allowlist is NOT enforced; every "
                                                     "name is forwarded and its addresses vouched for; "
                                                     "names it would deny are logged as would-deny"));
    if (cfg.no_nft)
      log::warn("event=no-nft msg={}", log::quote("--no-nft: answered addresses are NOT added to "
                                                  "any nftables set; the firewall enforces nothing for them"));
    else
      log::info("event=nft family={} table={} set4={} set6={} refresh={} min_ttl={} max_ttl={} grace={} "
                "ruleset={} require_ruleset={}",
                option_value_name("nft-family", cfg.nft_family), cfg.nft_table, cfg.nft_set4,
                cfg.nft_set6, option_value_name("nft-refresh", nft->mode()), cfg.min_ttl,
                cfg.max_ttl, cfg.grace, nft->ruleset().word(), cfg.require_ruleset ? "on" : "off");
    // Under systemd (Type=notify) the unit is started once dnsward answers.
    sd_notify(fmt::format("READY=1\nSTATUS=serving {} entries, policy {}", policy->size(), policy->version()));
    loop.run();
    sd_notify("STOPPING=1");
    save_state();
    log::info("event=stop");
    pipeline.shutdown();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dnsward: %s\n", e.what());
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    std::fputs(kUsage, args.empty() ? stderr : stdout);
    return args.empty() ? 2 : 0;
  }
  const std::string cmd = args[0];
  args.erase(args.begin());
  if (cmd == "serve") return serve(args);
  if (cmd == "nft-rules") return nft_rules_main(args);
  if (cmd == "check") return check_main(args);
  if (cmd == "explain") return explain_main(args);
  if (cmd == "report") return report_main(args);
  if (cmd == "ctl") return ctl_main(args);
  return usage_error("unknown command '" + cmd + "' (try dnsward --help)");
}
