# Sourced by init: dnsward in-guest, as the README's microVM section describes it, checked
# from inside a Debian 12 guest kernel. Each check prints one DWVM line; a failed check does
# not stop the others. The log modules are held back at boot (dw.late=nft_log,nf_log_syslog),
# as in a minimal guest that lacks them, so the first checks see the ruleset fail to load.

work() {  # the workload: an unprivileged user without capabilities
  /usr/bin/setpriv --reuid=1000 --regid=1000 --clear-groups --inh-caps=-all --bounding-set=-all "$@"
}
poll() {  # poll TRIES CMD...: run CMD every 0.1 s until it succeeds, at most TRIES times
  n=$1; shift
  while [ "$n" -gt 0 ]; do "$@" && return 0; n=$((n - 1)); sleep 0.1; done
  return 1
}
is() {  # is NAME EXPECTED ACTUAL: ok when equal
  if [ "$2" = "$3" ]; then check "$1" ok "$3"; else check "$1" fail "expected [$2] got [$3]"; fi
}
status() { dig +short +time=2 +tries=1 @127.0.0.1 CH TXT status.dnsward. 2>&1 | tr -d '"\n'; }
in_force() { status | grep -q 'ruleset=in-force'; }
set4() { nft list set inet dnsward allowed4 2>/dev/null; }
http() {  # http URL [curl options]: the HTTP status, or curl's exit code as "exitN"
  url=$1; shift
  out=$(work curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" "$url")
  rc=$?
  if [ $rc -eq 0 ]; then echo "$out"; else echo "exit$rc"; fi
}

RULES=/etc/dnsward.nft
LOG=/tmp/dnsward.log
ip link set lo up
dnsward nft-rules --upstream "$dw_upstream" --user dnsward > $RULES

# --- A ruleset that fails to load is noticed -------------------------------------------------
if nft -f $RULES 2>/tmp/nft.err; then
  check ruleset_without_log_modules_fails_to_load fail "nft -f loaded it without nft_log"
else
  check ruleset_without_log_modules_fails_to_load ok "$(head -c 200 /tmp/nft.err | tr '\n' ' ')"
fi
is nothing_of_the_failed_ruleset_is_loaded "" "$(nft list ruleset)"

caps=+net_admin,+net_bind_service
/usr/bin/setpriv --reuid=dnsward --regid=dnsward --clear-groups --inh-caps=-all,$caps \
  --ambient-caps=$caps --bounding-set=-all,$caps \
  dnsward serve --upstream "$dw_upstream" --allowlist /world.allow --min-ttl 1 --grace 1 \
  --require-ruleset > $LOG 2>&1 &
DW=$!
if poll 100 sh -c 'dig +short +time=1 +tries=1 @127.0.0.1 CH TXT status.dnsward. | grep -q ruleset'; then
  check dnsward_answers ok "pid $DW"
else
  check dnsward_answers fail "$(tail -5 $LOG | tr '\n' ' ')"
fi
s=$(status)
case "$s" in *ruleset=not-in-force*) check status_says_the_ruleset_is_not_in_force ok "$s" ;;
  *) check status_says_the_ruleset_is_not_in_force fail "$s" ;; esac
if grep -q 'event=ruleset-not-in-force' $LOG; then
  check log_says_the_ruleset_is_not_in_force ok "$(grep -m1 'event=ruleset-not-in-force' $LOG)"
else
  check log_says_the_ruleset_is_not_in_force fail "$(tail -5 $LOG | tr '\n' ' ')"
fi
r=$(dig +time=2 +tries=1 www.allowed.test)
case "$r" in *"status: SERVFAIL"*"EDE: 14"*) check require_ruleset_gives_servfail_with_ede_14 ok ;;
  *) check require_ruleset_gives_servfail_with_ede_14 fail "$(echo "$r" | grep -E 'status|EDE')" ;; esac

# The modules the README lists, then the same file: loaded, and noticed without a restart.
for m in nft_log nf_log_syslog; do insmod "$(awk -v m=$m '$1 == m {print $2}' /modules.load)"; done
if nft -f $RULES 2>/tmp/nft.err; then check ruleset_loads_with_the_listed_modules ok
else check ruleset_loads_with_the_listed_modules fail "$(head -c 300 /tmp/nft.err)"; fi
if poll 100 in_force; then check loading_the_ruleset_is_noticed ok "$(status)"
else check loading_the_ruleset_is_noticed fail "$(status)"; fi

# --- The link comes up under the ruleset: IPv6 needs ND and MLD, nothing is dropped ---------
ip link set eth0 up
ip addr add "$dw_ip4" dev eth0
ip route add default via "$dw_gw4"
ip -6 addr add "$dw_ip6" dev eth0
ip -6 route add default via "$dw_gw6"
no_tentative() { ! ip -6 addr show dev eth0 | grep -q tentative && ip -6 addr show dev eth0 | grep -q 'scope link'; }
poll 100 no_tentative || echo "DWVM note: DAD not over:" "$(ip -6 addr show dev eth0)"
# MLD reports go out when a group is joined, before DAD ends (RFC 3810 9.11), and so do
# neighbour solicitations: once DAD is over, the ruleset has judged both.
# The ruleset's log lines only ("dnsward-drop: IN=..."): the kernel's command line, which
# dmesg shows too, may hold "dnsward-" in a path.
drops=$(dmesg | grep -E 'dnsward-[a-z-]+: IN=' | tail -5 | tr '\n' ' ')
is the_guest_link_traffic_is_never_dropped "" "$drops"

# --- The promises, as the workload sees them ------------------------------------------------
uid=$(awk '/^Uid:/ {print $2 $3 $4 $5}' /proc/$DW/status)
caps_now=$(awk '/^Cap(Prm|Eff|Bnd|Amb):/ {printf "%s=%s ", $1, $2}' /proc/$DW/status)
is dnsward_runs_as_user_dnsward 100100100100 "$uid"
# Started with the two, it gives up CAP_NET_BIND_SERVICE once port 53 is bound.
is dnsward_keeps_only_cap_net_admin_once_serving \
  "CapPrm:=0000000000001000 CapEff:=0000000000001000 CapBnd:=0000000000001400 CapAmb:=0000000000000000 " "$caps_now"
is workload_is_unprivileged "1000 0000000000000000" \
  "$(work id -u) $(work awk '/^CapEff:/ {print $2}' /proc/self/status)"

is allowed_name_connects_over_glibc 200 "$(http http://www.allowed.test/)"
is allowed_name_connects_over_ipv6 200 "$(http http://www.allowed.test/ -6)"
is dig_answers_an_allowed_name 198.18.1.1 "$(work dig +short www.allowed.test A)"
is cname_target_is_vouched 200 "$(http http://alias.allowed.test/)"
r=$(work dig +time=2 +tries=1 other.test)
case "$r" in *"status: NXDOMAIN"*"EDE: 15 (Blocked)"*"not on the allowlist"*)
  check denied_name_gets_nxdomain_with_ede ok ;;
  *) check denied_name_gets_nxdomain_with_ede fail "$(echo "$r" | grep -E 'status|EDE')" ;; esac
is denied_name_does_not_resolve_for_curl exit6 "$(http http://other.test/)"
# 198.18.1.2 serves HTTP (the internet answers on all of 198.18.1.0/24) but was never answered.
is hard_coded_unvouched_address_is_rejected exit7 "$(http http://198.18.1.2/)"
for srv in "$dw_other" "$dw_upstream"; do
  for t in +notcp +tcp; do
    r=$(work dig @"$srv" www.allowed.test $t +time=2 +tries=1 2>&1)
    case "$r" in *"ANSWER SECTION"*|*"status: NOERROR"*)
      check direct_dns_to_another_resolver_is_dropped fail "@$srv $t: answered" ;; esac
  done
done
check direct_dns_to_another_resolver_is_dropped ok "@$dw_other and @$dw_upstream, UDP and TCP"

a=$(work dig +short rebind.allowed.test A; work dig +short meta.allowed.test A)
is private_and_metadata_answers_are_not_relayed "" "$a"
s4=$(set4)
case "$s4" in *10.99.0.1*|*169.254.169.254*) check private_and_metadata_are_never_vouched fail "$s4" ;;
  *) check private_and_metadata_are_never_vouched ok ;; esac
is private_address_is_unreachable exit7 "$(http http://10.99.0.1/)"
is metadata_address_is_unreachable exit7 "$(http http://169.254.169.254/)"

# TTL 1, --min-ttl 1, --grace 1: the element lives 2 s, then the kernel removes it.
is short_lived_name_connects 200 "$(http http://short.allowed.test/)"
if ! set4 | grep -q '198.18.1.4 '; then
  check address_expires_after_ttl_plus_grace fail "198.18.1.4 was never in the set"
elif poll 100 sh -c "! nft list set inet dnsward allowed4 | grep -q '198.18.1.4 '"; then
  is address_expires_after_ttl_plus_grace exit7 "$(http http://198.18.1.4/)"
else
  check address_expires_after_ttl_plus_grace fail "still in the set: $(set4 | grep 198.18.1.4)"
fi

# The race: resolve, then connect at once; python from the host's root, over virtio-9p.
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose host /host
mount -t proc proc /host/proc
mount --bind /dev /host/dev
# No tmpfs over /host/tmp: the checkout may live under /tmp (a CI clone does), and race.py
# writes nothing.
mount --bind /etc/resolv.conf /host/etc/resolv.conf
mount --bind /etc/passwd /host/etc/passwd
out=$(chroot /host /usr/bin/setpriv --reuid=1000 --regid=1000 --clear-groups --inh-caps=-all \
  --bounding-set=-all /usr/bin/python3 "$dw_root/test/e2e/race.py" "$dw_race" 2>&1)
case "$out" in "fails=0 "*) check race_resolve_then_connect_udp_and_tcp ok "$out" ;;
  *) check race_resolve_then_connect_udp_and_tcp fail "$(echo "$out" | head -c 600 | tr '\n' ' ')" ;; esac

# --- The 6.1 kernel: refresh, queue ---------------------------------------------------------
if grep -q 'event=nft .*refresh=replace' $LOG && grep -q 'event=nft-probe .*refresh=replace' $LOG; then
  check auto_refresh_picks_replace_on_6_1 ok "$(grep -m1 'event=nft-probe' $LOG)"
else
  check auto_refresh_picks_replace_on_6_1 fail "$(grep -E 'event=nft(-probe)? ' $LOG | tr '\n' ' ')"
fi
out=$(dnsward serve --listen 127.0.0.2:53 --upstream "$dw_upstream" --allowlist /world.allow \
  --nft-table forced --nft-refresh update 2>&1 </dev/null & p=$!
  # It must refuse at start; a serve that started instead is ended at the deadline.
  n=100; while [ $n -gt 0 ] && kill -0 $p 2>/dev/null; do sleep 0.1; n=$((n - 1)); done
  if kill -0 $p 2>/dev/null; then kill $p; echo "STARTED"; fi; wait $p; echo "rc=$?")
case "$out" in *STARTED*|*rc=0) check forced_update_refresh_is_refused_on_6_1 fail "$(echo "$out" | tail -3 | tr '\n' ' ')" ;;
  *update*) check forced_update_refresh_is_refused_on_6_1 ok "$(echo "$out" | grep -m1 update)" ;;
  *) check forced_update_refresh_is_refused_on_6_1 fail "$(echo "$out" | tail -3 | tr '\n' ' ')" ;; esac
nft delete table inet forced 2>/dev/null

missing=""
for m in nft_queue nfnetlink_queue nf_conntrack_netlink nft_redir nft_nat; do
  [ -d /sys/module/$m ] || missing="$missing $m"
done
is later_modules_are_loaded "" "$missing"
if printf 'table inet qtest {\n chain c {\n  type filter hook forward priority 0;\n  meta l4proto tcp th dport 443 ct state new queue num 3 bypass\n }\n}\n' | nft -f - 2>/tmp/q.err \
   && nft list table inet qtest | grep -q 'queue'; then
  check nft_queue_rules_load_on_6_1 ok
else
  check nft_queue_rules_load_on_6_1 fail "$(cat /tmp/q.err)"
fi
nft delete table inet qtest 2>/dev/null

# --- The threat model: root in the guest can undo in-guest enforcement ----------------------
nft flush ruleset
is root_can_flush_the_ruleset_and_reach_anything 200 "$(http http://198.18.1.2/)"
if poll 100 sh -c 'dig +short +time=1 +tries=1 @127.0.0.1 CH TXT status.dnsward. | grep -q not-in-force'; then
  check a_flushed_ruleset_is_noticed ok "$(status)"
else
  check a_flushed_ruleset_is_noticed fail "$(status)"
fi

kill $DW
wait $DW
echo "DWVM dnsward-log-begin"
tail -40 $LOG
echo "DWVM dnsward-log-end"

# --- The first-flight guard, with nftables' own queue on 6.1 ---------------------------------
. /sni_guard.sh
