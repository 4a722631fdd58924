# Sourced by init: a guest of host mode (test_vm_host.py). No dnsward, no ruleset of its own:
# one dnsward on the host serves every guest, each registered as a sandbox with its own
# allowlist (dw.role's name only), and the host's ruleset on the guest's tap is the only
# enforcement. Each check prints one DWVM line. The host orders the guests' steps: a guest
# prints `DWVM wait STEP`, the host does its part, then creates the file $dw_sync/ROLE.STEP
# on its root, which the guest sees over virtio-9p (a bounded poll).
#   dw.role (a, b or c), dw.id (its sandbox id), dw.addr4/dw.addr6 (its name's addresses), dw.peers (the other roles,
#   "name=address" pairs: b=198.18.2.2,c=198.18.2.3), dw.peerip4 (another guest's source
#   address, to spoof), dw.dns (what resolv.conf names), dw.sync (the host's directory).
#   A and B also: dw.front (the shared front end's address), dw.front_own (the name on it
#   that this guest's list has), dw.front_peer (the one the other guest's has), dw.cacert
#   (the front end's certificate, the host's file): the host runs the first-flight guard.

poll() {  # poll TRIES CMD...: run CMD every 0.1 s until it succeeds, at most TRIES times
  n=$1; shift
  while [ "$n" -gt 0 ]; do "$@" && return 0; n=$((n - 1)); sleep 0.1; done
  return 1
}
is() {  # is NAME EXPECTED ACTUAL: ok when equal
  if [ "$2" = "$3" ]; then check "$1" ok "$3"; else check "$1" fail "expected [$2] got [$3]"; fi
}
http() {  # http URL [curl options]: the HTTP status, or curl's exit code as "exitN"
  url=$1; shift
  out=$(curl -s -o /dev/null -w '%{http_code}' --max-time 4 "$@" "$url")
  rc=$?
  if [ $rc -eq 0 ]; then echo "$out"; else echo "exit$rc"; fi
}
fails() {  # fails NAME RESULT: ok when RESULT is a curl failure (exitN), not an HTTP status
  case "$2" in exit*) check "$1" ok "$2" ;; *) check "$1" fail "got HTTP $2" ;; esac
}
nxdomain() {  # nxdomain NAME DIG-ARGS...: ok when dnsward answers NXDOMAIN
  c=$1; shift
  r=$(dig +time=2 +tries=2 "$@" 2>&1)
  case "$r" in *"status: NXDOMAIN"*) check "$c" ok "$*" ;;
    *) check "$c" fail "$*: $(echo "$r" | grep -E 'status|EDE|timed out|refused|ANSWER SECTION' -A1 | tr '\n' ' ')" ;; esac
}
no_answer() {  # no_answer NAME DIG-ARGS...: ok when nothing answers (or dnsward refuses)
  c=$1; shift
  r=$(dig +time=2 +tries=1 "$@" 2>&1)
  case "$r" in *"status: REFUSED"*|*"timed out"*|*"no servers could be reached"*)
      check "$c" ok "$(echo "$r" | grep -E 'status|timed out|no servers' | head -1)" ;;
    *) check "$c" fail "$*: $(echo "$r" | grep -E 'status|EDE|ANSWER SECTION' -A1 | tr '\n' ' ')" ;; esac
}
dropped() {  # dropped NAME DIG-ARGS...: ok when nothing answers: the host dropped the query
  c=$1; shift
  r=$(dig +time=2 +tries=1 "$@" 2>&1)
  case "$r" in *"status: "*) check "$c" fail "$*: answered: $(echo "$r" | grep -E 'status|EDE' | tr '\n' ' ')" ;;
    *"timed out"*|*"no servers could be reached"*)
      check "$c" ok "$(echo "$r" | grep -E 'timed out|no servers' | head -1)" ;;
    *) check "$c" fail "$*: $(echo "$r" | tail -3 | tr '\n' ' ')" ;; esac
}
wait_host() {  # wait_host STEP: tell the host, then wait (bounded) for its file
  echo "DWVM wait $1"
  if poll 3000 [ -e "/host$dw_sync/$dw_role.$1" ]; then return 0; fi
  echo "DWVM note the host never answered $1"
  return 1
}

own="$dw_role.sandbox.test"
ip link set lo up
ip link set eth0 up
ip addr add "$dw_ip4" dev eth0
ip route add default via "$dw_gw4"
ip -6 addr add "$dw_ip6" dev eth0
ip -6 route add default via "$dw_gw6"
no_tentative() { ! ip -6 addr show dev eth0 | grep -q tentative && ip -6 addr show dev eth0 | grep -q 'scope link'; }
poll 100 no_tentative || echo "DWVM note: DAD not over:" "$(ip -6 addr show dev eth0)"
# No resolver in the guest: resolv.conf names some address; the host redirects port 53.
echo "nameserver $dw_dns" > /etc/resolv.conf
mount -t 9p -o trans=virtio,version=9p2000.L,ro host /host || echo "DWVM note: no 9p share"
peers=$(echo "$dw_peers" | tr , ' ')

if [ "$dw_role" = c ]; then
  # --- C boots before the host registers it: its tap is not a sandbox's yet ---------------
  dropped unregistered_guest_gets_no_dns "$own"
  fails unregistered_guest_reaches_nothing "$(http "http://$dw_addr4/" --max-time 3)"
  wait_host registered
fi

# --- Its own name, through whatever resolv.conf names ------------------------------------
is own_name_resolves "$dw_addr4" "$(dig +short +time=2 +tries=2 "$own" A)"
is own_name_connects 200 "$(http "http://$own/")"
is own_name_connects_over_ipv6 200 "$(http "http://$own/" -6)"
s=$(dig +short +time=2 +tries=2 CH TXT status.dnsward. | tr -d '"\n')
case "$s" in *"$dw_id"*) check status_names_its_own_sandbox ok "$s" ;;
  *) check status_names_its_own_sandbox fail "[$s]" ;; esac
# --- The other guests' names are not its to use -------------------------------------------
for p in $peers; do
  # Not "name": init's check() sets that one.
  oname=${p%%=*}.sandbox.test
  nxdomain other_guests_name_is_nxdomain "$oname"
  is other_guests_name_does_not_resolve_for_curl exit6 "$(http "http://$oname/")"
done

if [ "$dw_role" != c ]; then
  # The shared front end: this guest's list has one of its names, the other guest's the
  # other, so the same address is vouched for both guests, each with its own name bound.
  is shared_front_own_name_resolves "$dw_front" "$(dig +short +time=2 +tries=2 "$dw_front_own" A)"
  # The host waits until A and B both resolved their own names: each one's address is
  # vouched, for its own guest only, before the other tries it.
  wait_host resolved
  # --- The first-flight guard: a name bound for the other sandbox is not this one's ----------
  cp "/host$dw_cacert" /tmp/front.pem
  tls() {  # tls NAME [curl options]: https://NAME/ on the front end, trusting its certificate
    n=$1; shift
    http "https://$n/" --cacert /tmp/front.pem --resolve "$n:443:$dw_front" "$@"
  }
  is shared_front_own_name_passes_the_guard 200 "$(tls "$dw_front_own")"
  # Reset in the TLS handshake (35) or on receiving (56); a timeout (28) would be a drop.
  r=$(tls "$dw_front_peer")
  case "$r" in exit35|exit56) check shared_front_name_bound_for_the_other_sandbox_is_reset ok "$r" ;;
    *) check shared_front_name_bound_for_the_other_sandbox_is_reset fail "got [$r]" ;; esac
fi
# --- What another guest's lookup vouched for is not this guest's ---------------------------
for p in $peers; do
  fails other_guests_vouched_address_is_unreachable "$(http "http://${p#*=}/")"
done
if [ "$dw_role" = c ]; then return 0; fi
for p in $peers; do
  # The names' IPv6 addresses end as their IPv4 ones do (vmlib.HOST_SANDBOXES).
  v6="2001:db8:1::2:$(echo "${p#*=}" | cut -d. -f4)"
  fails other_guests_vouched_address_is_unreachable_over_ipv6 "$(http "http://[$v6]/" -6)"
done

# --- Root in the guest: its ruleset flushed, resolv.conf elsewhere, DNS asked directly ----
nft flush ruleset
echo "nameserver 192.0.2.1" > /etc/resolv.conf
is root_own_name_still_resolves_whatever_resolv_conf_names 200 "$(http "http://$own/")"
p1=${peers%% *}
pname=${p1%%=*}.sandbox.test
for srv in 8.8.8.8 "$dw_other" "$dw_upstream"; do
  for t in +notcp +tcp; do
    nxdomain root_direct_query_gets_dnswards_answer @"$srv" $t "$pname"
    r=$(dig +short +time=2 +tries=1 @"$srv" $t "$own" A)
    is root_direct_query_gets_dnswards_answer "$dw_addr4" "$r"
  done
done
fails root_other_guests_vouched_address_is_unreachable "$(http "http://${p1#*=}/")"
fails root_unvouched_address_is_unreachable "$(http http://198.18.1.77/)"
fails root_hard_coded_address_is_unreachable "$(http http://198.18.1.1/)"
fails root_metadata_address_is_unreachable "$(http http://169.254.169.254/)"
fails root_private_address_is_unreachable "$(http http://10.99.0.1/)"
# Dropped, so curl times out (28): let through, the internet (nothing on 853) would reset it (7).
r=$(curl -s -o /dev/null --max-time 3 "telnet://$dw_upstream:853" </dev/null; echo "exit$?")
is root_dns_over_tls_port_is_dropped exit28 "$r"

# --- Spoofing another guest's source address -----------------------------------------------
ip addr add "$dw_peerip4/32" dev eth0
dropped spoofed_source_gets_no_dns -b "$dw_peerip4" @"$dw_upstream" "$pname"
fails spoofed_source_cannot_reach_the_others_vouched_address \
  "$(http "http://${p1#*=}/" --interface "$dw_peerip4" --max-time 3)"
ip addr del "$dw_peerip4/32" dev eth0
# An unregistered address on its own link: the replies would come back to this guest, so a
# packet let through would show here.
spoof=${dw_ip4%.*}.99
ip addr add "$spoof/32" dev eth0
fails unregistered_source_cannot_reach_its_own_vouched_address \
  "$(http "http://$dw_addr4/" --interface "$spoof" --max-time 3)"
dropped unregistered_source_gets_no_dns -b "$spoof" @"$dw_upstream" "$own"
ip addr del "$spoof/32" dev eth0
is own_address_still_connects_from_its_own_source 200 "$(http "http://$dw_addr4/")"
wait_host spoofed

if [ "$dw_role" = a ]; then
  # --- ctl remove cuts it off at once: new connections, DNS, and a connection it holds ----
  # Two connections to its own address, held open by nc: the first asks before the
  # removal (the control), the second after it.
  mkfifo /tmp/held1 /tmp/held2
  nc "$dw_addr4" 80 < /tmp/held1 > /tmp/held1.out 2>&1 &
  held1=$!
  exec 3>/tmp/held1
  nc "$dw_addr4" 80 < /tmp/held2 > /tmp/held2.out 2>&1 &
  held2=$!
  exec 4>/tmp/held2
  established() { [ "$(netstat -tn | grep -c "$dw_addr4:80 .*ESTABLISHED")" -ge 2 ]; }
  poll 50 established || echo "DWVM note the held connections are not established: $(netstat -tn)"
  printf 'GET / HTTP/1.0\r\n\r\n' >&3
  poll 50 grep -q "HTTP/1.0 200" /tmp/held1.out
  is held_connection_gets_answers_before_removal "HTTP/1.0 200 OK" "$(head -1 /tmp/held1.out | tr -d '\r')"
  wait_host remove
  fails removed_guest_cannot_connect_to_its_own_address "$(http "http://$dw_addr4/" --max-time 3)"
  no_answer removed_guest_gets_no_dns_answer "$own"
  printf 'GET / HTTP/1.0\r\n\r\n' >&4
  # An absence: 3 s for an answer that must not come (the first one came in well under 1 s).
  poll 30 test -s /tmp/held2.out
  is removed_guest_loses_its_established_connection "" "$(head -c 100 /tmp/held2.out)"
  exec 3>&- 4>&-
  kill $held1 $held2 2>/dev/null
  wait $held1 $held2 2>/dev/null
fi
if [ "$dw_role" = b ]; then
  # --- After A is removed and C added, B goes on as before ---------------------------------
  wait_host final
  is own_name_still_connects_after_the_others_changed 200 "$(http "http://$own/")"
  is own_name_still_resolves_after_the_others_changed "$dw_addr4" "$(dig +short +time=2 +tries=2 "$own" A)"
fi
# The checks are the verdicts; how the last command ended is not one.
true
