# Sourced by in_guest.sh, last (its ruleset flushed, its dnsward stopped): the first-flight
# guard (--sni-guard) on the 6.1 kernel with nftables' own queue (--queue-backend nft, the
# default). These machines' 6.18 has no nft_queue, so e2e_sni_guard runs the xt backend; this
# is where the nft one runs. The internet's front end (dw.front) serves two names on one
# address over TLS and HTTP, with one certificate naming both (dw.cacert, the host's file
# over virtio-9p): only dw.front_allowed is on the allowlist, and only it may be named on
# the address its answer vouched for. Uses in_guest.sh's helpers (work, poll, is, http...).

SNI_RULES=/etc/dnsward-sni.nft
SNI_LOG=/tmp/dnsward-sni.log
CA=/tmp/front.pem
allowed=$dw_front_allowed
other=$dw_front_other
cp "/host$dw_cacert" $CA && chmod 644 $CA

tls() {  # tls NAME [curl options]: https://NAME/ as the workload, trusting the front end
  host=$1; shift
  http "https://$host/" --cacert $CA "$@"
}
reset() {  # reset RESULT: "reset" where curl saw the connection reset (35 in the TLS
  # handshake, 56 receiving), else RESULT as it was
  case "$1" in exit35|exit56) echo reset ;; *) echo "$1" ;; esac
}
logged() {  # logged N REGEX: how many lines of the guard's dnsward log match (ERE), once
  # N do or after 5 s: dnsward logs a verdict just after giving it, so curl may end first
  poll 50 logged_at_least "$1" "$2"
  grep -cE "$2" $SNI_LOG
}
logged_at_least() { [ "$(grep -cE "$2" $SNI_LOG)" -ge "$1" ]; }
re() { echo "$1" | sed 's/\./\\./g'; }  # a name or address as an ERE matching only itself

# --- The ruleset of `nft-rules --sni-guard` loads, with nftables' queue ---------------------
dnsward nft-rules --upstream "$dw_upstream" --user dnsward --sni-guard > $SNI_RULES
if nft -f $SNI_RULES 2>/tmp/nft-sni.err; then
  # Four queue rules, each nftables' own queue to 53 (no xt NFQUEUE), none with `bypass`
  # (with no reader on the queue it drops, never passes): the client's payload in
  # guard_output, the server's SYN-ACK, payload and HTTP packets in guard_input (three), of
  # connections the SYN marked guarded (both families alike); the guard chains at priority
  # -175, before the filter chains that read dnsward's verdicts (NF_ACCEPT goes on to them).
  q=$(nft list table inet dnsward | grep -E ' queue ')
  is sni_guard_ruleset_loads_with_nft_queue_on_6_1 "4 4 0 0 1 3 0 0 -175 -175" \
    "$(echo "$q" | grep -c .) $(echo "$q" | grep -cE 'queue (num|to) 53( |$)') \
$(echo "$q" | grep -c bypass) $(nft list ruleset | grep -ci nfqueue) \
$(nft list chain inet dnsward guard_output | grep -cE ' queue ') \
$(nft list chain inet dnsward guard_input | grep -cE ' queue ') \
$(nft list chain inet dnsward output | grep -cE ' queue ') \
$(nft list chain inet dnsward input | grep -cE ' queue ') \
$(nft list chain inet dnsward guard_output | sed -n 's/.*priority \(-*[0-9]*\);.*/\1/p') \
$(nft list chain inet dnsward guard_input | sed -n 's/.*priority \(-*[0-9]*\);.*/\1/p')"
else
  check sni_guard_ruleset_loads_with_nft_queue_on_6_1 fail \
    "nft -f: $(head -c 600 /tmp/nft-sni.err | tr '\n' ' ')"
fi

caps=+net_admin,+net_bind_service
/usr/bin/setpriv --reuid=dnsward --regid=dnsward --clear-groups --inh-caps=-all,$caps \
  --ambient-caps=$caps --bounding-set=-all,$caps \
  dnsward serve --upstream "$dw_upstream" --allowlist /world.allow --sni-guard \
  --log-level debug > $SNI_LOG 2>&1 &
SNI_DW=$!
if poll 100 in_force; then s=ok; else s=fail; fi
# The start line says what the ruleset check found, the guard's line which queue it bound.
is sni_guard_serve_finds_the_ruleset_in_force "ok 1 1" \
  "$s $(logged 1 'event=nft .*ruleset=in-force ') $(logged 1 'event=sni-guard queue=53 backend=nft ')"
[ $s = ok ] || echo "DWVM note status: $(status); log: $(tail -5 $SNI_LOG | tr '\n' ' ')"

# --- One address, two names: only the one that resolved to it may be named -----------------
is shared_address_is_vouched_by_the_allowed_name "$dw_front vouched" \
  "$(work dig +short "$allowed" A) $(set4 | grep -q "$dw_front " && echo vouched)"
# Each passes the guard judged (exactly one connection each), not unjudged.
judged() {  # judged PORT N: connections to the allowed name the guard let through
  logged "$2" "event=first-flight-allowed name=$(re "$allowed") addr=$(re "$dw_front") port=$1 "
}
is tls_to_the_allowed_name_passes_the_guard "200 judged=1" "$(tls "$allowed") judged=$(judged 443 1)"
is plain_http_to_the_allowed_name_passes_the_guard "200 judged=1" \
  "$(http "http://$allowed/") judged=$(judged 80 1)"
# The same vouched address, another name: reset, and logged with the names bound to it.
mismatch() {  # mismatch PORT: connections naming the other name, reset and logged
  logged 1 "event=sni-mismatch name=$(re "$other") addr=$(re "$dw_front") port=$1 src=[^ ]+ bound=$(re "$allowed") "
}
is tls_naming_another_name_on_the_vouched_address_is_reset "reset mismatch=1" \
  "$(reset "$(tls "$other" --resolve "$other:443:$dw_front")") mismatch=$(mismatch 443)"
is plain_http_with_another_host_on_the_vouched_address_is_reset "exit56 mismatch=1" \
  "$(http "http://$allowed/" -H "Host: $other") mismatch=$(mismatch 80)"
# The front end still answers after the resets (so a timeout below is not the server's).
is tls_to_the_allowed_name_still_passes_after_the_resets "200 judged=2" \
  "$(tls "$allowed") judged=$(judged 443 2)"

# --- A connection opened while vouched sends its first flight after the element expired -----
# (the sixth review, unprivileged): keyed on the sets, nothing queued or dropped it, and the
# established-connection accept let it out unjudged. The SYN marks the connection guarded,
# and the queue keys on that. The element is deleted here as its expiry would (the ledger's
# record lives on: the guard judges by it). The workload holds the connection open with nc.
rej="event=(sni-mismatch|first-flight-rejected) .*addr=$(re "$dw_front") port=80 "
before=$(grep -cE "$rej" $SNI_LOG)
mkfifo /tmp/late
work nc "$dw_front" 80 < /tmp/late > /tmp/late.out 2>&1 &
late=$!
exec 5>/tmp/late
est() { netstat -tn | grep -q "$dw_front:80 .*ESTABLISHED"; }
poll 50 est || echo "DWVM note the held connection is not established: $(netstat -tn)"
nft delete element inet dnsward allowed4 "{ $dw_front }"
printf 'GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$other" >&5
exec 5>&-
wait $late 2>/dev/null
# Judged and reset (by the name, or for want of a record once dnsward reread the set), never
# answered by the front end.
is a_first_flight_after_the_element_expired_is_still_judged "judged=$((before + 1)) answer=0" \
  "judged=$(logged $((before + 1)) "$rej") answer=$(grep -c hello /tmp/late.out)"
work dig +short "$allowed" A >/dev/null  # vouched again, for what follows

# --- Fail closed: with dnsward gone, a guarded connection waits in the queue and fails ------
kill $SNI_DW
wait $SNI_DW
stopped=$?
v=$(set4 | grep -q "$dw_front " && echo vouched)
# --resolve: no DNS now. time_connect 0: the connection never opened (not a server stalling).
out=$(work curl -s -o /dev/null -w 'connected=%{time_connect}' --connect-timeout 3 --max-time 5 \
  --cacert $CA --resolve "$allowed:443:$dw_front" "https://$allowed/")
curl_rc=$?  # not `rc`: init's own
is with_dnsward_stopped_a_guarded_connection_times_out \
  "stopped=0 $dw_front=vouched exit28 connected=0.000000" "stopped=$stopped $dw_front=$v exit$curl_rc $out"

echo "DWVM dnsward-sni-log-begin"
grep -E 'event=(start|nft|sni-guard|first-flight|sni-mismatch|ruleset|stop)' $SNI_LOG | tail -40
echo "DWVM dnsward-sni-log-end"
