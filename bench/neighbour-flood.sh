#!/usr/bin/env bash
# A flood of random source addresses into the provider port of a running `ipshadow serve` (issue
# 13 item 4): its resident memory grows by at most a stated bound, because the neighbour table
# the router learns clients in is capped (65,536 entries by default, at most
# NeighbourTable::BYTES_PER_ENTRY = 128 bytes each: 8 MiB) and the flow table takes no entry for
# frames to an address that is not shadowed.
#
#   pktgen -> prov-peer ==veth== prov  ipshadow serve [router]  vma ==veth== vma-peer
#                                                                vmb ==veth== vmb-peer
#
# One namespace; `serve` with its defaults (no [router] bounds set), the admin token from the
# environment; vm-a and X = 10.0.0.10 on vm-a registered through the API. The generator is pktgen
# (crates/dataplane/examples: AF_PACKET rings) sending UDP frames to X at the router's provider
# MAC, frames the router accepts (forwards to vm-a) and so learns their source from.
#
# 1. Warm-up: WARMUP frames from one source, so that the pages of the packet rings the flood
#    will touch (16 MiB a receive ring, 8 MiB a transmit ring) are resident before the first
#    reading: what the flood adds is then what the random sources cost.
# 2. VmRSS of serve (/proc/PID/status), then FRAMES frames (default 1,000,000) each with a random
#    source address in SOURCES (default 10.128.0.0/9: about 940,000 distinct among 1,000,000)
#    and a random source MAC, at RATE frames/s.
# 3. Once the router's counters stop moving: VmRSS again, the provider port's received frames,
#    and from GET /metrics the neighbour table's size and evictions.
#
# Bound: growth <= BOUND_MIB (default 16 MiB: twice the table's worst case, for allocator slack).
# Exits non-zero if it is exceeded, or if the table did not reach its cap (the flood did not
# test it). Prints the figures, then
#   RESULT frames_sent=... frames_received=... neighbours=... evicted=... rss_before_mib=...
#          rss_after_mib=... growth_mib=... bound_mib=...
# Needs root (network namespace, AF_PACKET). Builds with `--profile test` (opt-level 2, no LTO:
# memory does not depend on it, and it builds in minutes); CARGO_PROFILE=release for the
# release build. Environment: FRAMES, RATE (default 100000), WARMUP (default 50000), SOURCES,
# BOUND_MIB, KEEP=1 (keep the work folder).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

if [ "$(id -u)" -ne 0 ]; then
  echo "bench/neighbour-flood.sh needs root (network namespace, AF_PACKET)" >&2
  exit 1
fi
need_cargo
apt_install iproute2 curl python3

FRAMES=${FRAMES:-1000000}
RATE=${RATE:-100000}
WARMUP=${WARMUP:-50000}
SOURCES=${SOURCES:-10.128.0.0/9}
BOUND_MIB=${BOUND_MIB:-16}
CARGO_PROFILE=${CARGO_PROFILE:-test}
CAP=65536
X=10.0.0.10 GW=10.0.0.1
PROV_MAC=02:fd:00:00:00:02 GEN_MAC=02:fd:00:00:00:01 A_MAC=02:fd:00:00:00:0a B_MAC=02:fd:00:00:00:0b
PORT=7482
NS=ipshfld$$
WORK=$(mktemp -d /tmp/ipshadow-flood.XXXXXX)
SERVE_PID=

cleanup() {
  if [ -n "$SERVE_PID" ]; then
    kill "$SERVE_PID" 2>/dev/null || true
    wait "$SERVE_PID" 2>/dev/null || true
  fi
  ip netns del "$NS" 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then echo "work folder kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

section "build ($CARGO_PROFILE profile)"
cargo build --profile "$CARGO_PROFILE" --locked -q -p ipshadow --bin ipshadow
cargo build --profile "$CARGO_PROFILE" --locked -q -p ipshadow-dataplane --example pktgen
DIR=target/$([ "$CARGO_PROFILE" = test ] && echo debug || echo "$CARGO_PROFILE")
IPSHADOW=$PWD/$DIR/ipshadow
PKTGEN=$PWD/$DIR/examples/pktgen

section "topology and serve"
ip netns add "$NS"
ip -n "$NS" link set lo up
ip netns exec "$NS" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
veth() { # name mac peer-mac
  ip -n "$NS" link add "$1" address "$2" type veth peer name "$1-peer" address "$3"
  ip -n "$NS" link set "$1" up
  ip -n "$NS" link set "$1-peer" up
}
veth prov "$PROV_MAC" "$GEN_MAC"
veth vma 02:fd:00:00:00:01 "$A_MAC"
veth vmb 02:fd:00:00:00:01 "$B_MAC"
TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
cat >"$WORK/serve.toml" <<CONF
listen = "127.0.0.1:$PORT"
data_dir = "$WORK/data"

[router]
provider = "prov"
gateway = "$GW"
vms = [{ id = "vm-a", interface = "vma", mac = "$A_MAC" }, { id = "vm-b", interface = "vmb", mac = "$B_MAC" }]
CONF
IPSHADOW_ADMIN_TOKEN=$TOKEN ip netns exec "$NS" "$IPSHADOW" serve --config "$WORK/serve.toml" 2>"$WORK/serve.log" &
SERVE_PID=$!

api() { # METHOD PATH [JSON]: the body; fails on a status >= 400
  ip netns exec "$NS" curl -sS --fail-with-body -X "$1" -H "authorization: Bearer $TOKEN" \
    ${3:+-H "content-type: application/json" --data "$3"} "http://127.0.0.1:$PORT$2"
}
for _ in $(seq 300); do
  api GET /v1/router/status >/dev/null 2>&1 && break
  kill -0 "$SERVE_PID" 2>/dev/null || { echo "serve ended:"; cat "$WORK/serve.log"; exit 1; }
  sleep 0.05
done
api GET /v1/router/status >/dev/null
api POST /v1/vms "{\"id\":\"vm-a\",\"mac\":\"$A_MAC\",\"segment\":\"vma\",\"tenant\":\"bench\"}" >/dev/null
api POST /v1/addresses "{\"ip\":\"$X\",\"vm\":\"vm-a\",\"tenant\":\"bench\"}" >/dev/null

# The router's counters: provider frames received, frames to VMs, neighbours, evictions.
counters() {
  api GET /v1/router/status | python3 -c '
import json, sys
s = json.load(sys.stdin)
rx = sum(p["received"] for p in s["ports"] if p["role"] == "provider")
l2 = s["l2"]
print(rx, l2["to_vms"], l2["neighbours"], l2["neighbours_evicted"], len(s["errors"]))'
}
settle() { # the counters once two readings a second apart agree
  local a b
  a=$(counters)
  while sleep 1; b=$(counters); [ "$a" != "$b" ]; do a=$b; done
  echo "$b"
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$SERVE_PID/status"; }
mib() { python3 -c "print(f'{$1 / 1024:.1f}')"; }

pktgen() { # extra options
  "$PKTGEN" send --netns "$NS" --iface prov-peer --src-mac "$GEN_MAC" --dst-mac "$PROV_MAC" \
    --src-ip 10.0.1.2 --dst-ip "$X" --rate "$RATE" --seconds 3600 "$@"
}

section "warm-up: $WARMUP frames from one source"
echo "serve pid $SERVE_PID, VmRSS at start $(mib "$(rss_kib)") MiB"
# A probe frame until one reaches vm-a: the router has X on vm-a.
for _ in $(seq 100); do
  pktgen --count 1 >/dev/null
  [ "$(counters | cut -d' ' -f2)" -gt 0 ] && break
  sleep 0.1
done
pktgen --count "$WARMUP" >/dev/null
read -r RX0 TO0 N0 _ < <(settle)
RSS0=$(rss_kib)
echo "after warm-up: frames received $RX0, to vm-a $TO0, neighbours $N0; VmRSS $(mib "$RSS0") MiB"

section "flood: $FRAMES frames, random sources in $SOURCES and random MACs, $RATE frames/s"
SENT=$(pktgen --count "$FRAMES" --random-sources "$SOURCES" --seed "$$" | python3 -c 'import json,sys; print(json.load(sys.stdin)["sent"])')
read -r RX1 TO1 _ < <(settle)
RSS1=$(rss_kib)
METRICS=$(api GET /metrics)
metric() { echo "$METRICS" | awk -v n="$1" '$1 == n {print $2}'; }
NEIGHBOURS=$(metric ipshadow_router_neighbours)
NEIGHBOURS=${NEIGHBOURS:-0}
EVICTED=$(metric ipshadow_router_neighbours_evicted_total)
RECEIVED=$((RX1 - RX0))
GROWTH=$((RSS1 - RSS0))
echo "frames sent:              $SENT"
echo "frames received (router): $RECEIVED (forwarded to vm-a: $((TO1 - TO0)))"
echo "neighbours:               $NEIGHBOURS (cap $CAP)"
echo "evicted:                  $EVICTED"
echo "serve VmRSS:              before $(mib "$RSS0") MiB, after $(mib "$RSS1") MiB, growth $(mib "$GROWTH") MiB"
echo "bound:                    growth <= $BOUND_MIB MiB (the table at its cap: $CAP x at most 128 bytes = 8 MiB; default bound 16)"
echo "RESULT frames_sent=$SENT frames_received=$RECEIVED neighbours=$NEIGHBOURS evicted=$EVICTED" \
  "rss_before_mib=$(mib "$RSS0") rss_after_mib=$(mib "$RSS1") growth_mib=$(mib "$GROWTH") bound_mib=$BOUND_MIB"
status=0
if [ "$NEIGHBOURS" -ne "$CAP" ]; then
  echo "FAIL: the neighbour table holds $NEIGHBOURS, not its cap $CAP: the flood did not fill it" >&2
  status=1
fi
if [ "$GROWTH" -gt $((BOUND_MIB * 1024)) ]; then
  echo "FAIL: serve's resident memory grew by $(mib "$GROWTH") MiB, over the bound of $BOUND_MIB MiB" >&2
  status=1
fi
exit "$status"
