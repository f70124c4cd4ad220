#!/usr/bin/env bash
# Host firewall for a devcontainer that runs Portcullis (README: "Devcontainer firewall").
#
# Each Portcullis gateway programs its own `table inet portcullis_<instance>` (per-server
# sandbox rules). This script hardens the machine around them, in its own table
# `inet portcullis_host` (no gateway instance may be called `host`), so they never overwrite
# each other:
#   1. The gateway port (default 8811) accepts connections only over loopback: no other
#      machine, container or sandbox can talk to the MCP endpoint.
#   2. Sandbox interfaces (`pc*`: every gateway instance names them `pc` + 13 hex digits) can
#      never reach the host's other bridges (docker0, compose networks) or the host's own
#      addresses, even if a gateway's table is missing (before the gateway first starts, or
#      after someone removed a dead gateway's table): the sandboxes are closed while nobody
#      watches.
#   3. Optionally (EGRESS_ALLOW set) the devcontainer itself is default-deny outbound: only
#      loopback, established traffic, DNS to RESOLVERS and the listed CIDR:port pairs leave.
#   4. net.ipv4.conf.all.route_localnet=0, so 127.0.0.0/8 can never be routed to from a bridge.
#
# Usage (root):  firewall/devcontainer-host.sh [apply|remove|print]
#   GATEWAY_PORT=8811  RESOLVERS="10.0.0.2"  EGRESS_ALLOW="140.82.112.0/20:443 10.1.2.0/24:5432"
# `print` shows the rules without applying them. Re-running `apply` replaces the table atomically.
set -euo pipefail

action=${1:-apply}
port=${GATEWAY_PORT:-8811}
resolvers=${RESOLVERS:-}
allow=${EGRESS_ALLOW:-}

rules() {
  echo "table inet portcullis_host {"
  echo "  chain input {"
  echo "    type filter hook input priority filter - 5; policy accept;"
  echo "    iif \"lo\" accept"
  echo "    tcp dport $port ct state new counter drop comment \"gateway is loopback-only\""
  echo "    iifname \"pc*\" ct state established,related accept"
  echo "    iifname \"pc*\" meta l4proto { udp, tcp } th dport 53 accept comment \"only the pinning resolver (the gateway's table narrows it to the bridge gateway)\""
  echo "    iifname \"pc*\" counter drop"
  echo "  }"
  echo "  chain forward {"
  echo "    type filter hook forward priority filter - 5; policy accept;"
  echo "    iifname \"pc*\" oifname != \"pc*\" ip daddr { 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10, 169.254.0.0/16, 127.0.0.0/8 } counter drop comment \"sandboxes never reach private ranges unless the gateway's table accepted them first\""
  echo "    iifname \"pc*\" meta nfproto ipv6 counter drop"
  echo "  }"
  if [ -n "$allow" ]; then
    echo "  chain output {"
    echo "    type filter hook output priority filter - 5; policy drop;"
    echo "    oif \"lo\" accept"
    echo "    ct state established,related accept"
    echo "    oifname \"pc*\" accept comment \"answers to sandboxes (their traffic is judged in forward)\""
    for r in $resolvers; do
      echo "    ip daddr $r meta l4proto { udp, tcp } th dport 53 accept"
    done
    for a in $allow; do
      echo "    ip daddr ${a%:*} tcp dport ${a##*:} accept"
    done
    echo "    counter comment \"denied outbound\""
    echo "  }"
  fi
  echo "}"
}

case "$action" in
  print) rules ;;
  apply)
    sysctl -qw net.ipv4.conf.all.route_localnet=0
    # add + delete + add in one transaction: the old table stays until the new one is in.
    { echo "add table inet portcullis_host"; echo "delete table inet portcullis_host"; rules; } | nft -f -
    echo "table inet portcullis_host applied" >&2 ;;
  remove) nft delete table inet portcullis_host 2>/dev/null || true ;;
  *) echo "usage: $0 [apply|remove|print]" >&2; exit 2 ;;
esac
