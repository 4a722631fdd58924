# Sourced by init for scripts/vm-shell: the in-guest setup (ruleset, resolv.conf, dnsward as
# user dnsward with two capabilities), then a shell on the console for debugging with dig.
ip link set lo up
dnsward nft-rules --upstream "$dw_upstream" --user dnsward > /etc/dnsward.nft
nft -f /etc/dnsward.nft
ip link set eth0 up
ip addr add "$dw_ip4" dev eth0
ip route add default via "$dw_gw4"
ip -6 addr add "$dw_ip6" dev eth0
ip -6 route add default via "$dw_gw6"
caps=+net_admin,+net_bind_service
/usr/bin/setpriv --reuid=dnsward --regid=dnsward --clear-groups --inh-caps=-all,$caps \
  --ambient-caps=$caps --bounding-set=-all,$caps \
  dnsward serve --upstream "$dw_upstream" --allowlist /world.allow > /tmp/dnsward.log 2>&1 &
cat <<MSG

dnsward runs as user dnsward (log: /tmp/dnsward.log); the ruleset is /etc/dnsward.nft.
Allowed: $(tr '\n' ' ' < /world.allow)
Try: dig www.allowed.test; dig other.test; dig CH TXT status.dnsward.;
     curl http://www.allowed.test/; nft list ruleset; reboot -f to leave.
MSG
setsid cttyhack sh -l
