#!/usr/bin/env bash
# DHCPv4 throughput: ipshadow's server against Kea 2.2, driven by perfdhcp in one run.
#
# Both serve the same subnet (10.0.0.0/8, a 262k-address dynamic pool, 1 h leases) to
# perfdhcp's generated clients in a private network namespace. perfdhcp acts as a relay on
# 127.0.0.2 (giaddr), the server listens on 127.0.0.1:67. Each server is pinned to CPU 1, perfdhcp
# to CPU 0. ipshadow commits every lease to its redb store with fsync before the ACK (batched
# across requests); Kea uses its memfile backend with persist on (which writes the CSV without
# fsync) and multi-threading with 4 threads (its best here of 1, 2, 4 and 8; KEA_THREADS to change).
#
# For each server the request rate rises until more than 2.5 % of exchanges are dropped; the
# figure is the best rate of completed 4-way exchanges (DISCOVER-OFFER-REQUEST-ACK) per second
# at <= 2.5 % drops. Prints `RESULT ipshadow_lps=... kea_lps=... ratio=...`.
#
# Needs root. Options: SECS (trial length, default 5), RATES (space-separated request rates).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
need_cargo
apt_install iproute2 kea-admin kea-dhcp4-server
cargo build --release --locked -q -p ipshadow

SECS=${SECS:-5}
RATES=${RATES:-"6000 8000 10000 12000 14000 16000 18000 20000 22000 24000 26000 28000 30000 33000 36000 40000"}
NS="ipsdbench$$"
WORK=$(mktemp -d /tmp/ipshadow-dhcp-bench.XXXXXX)
SERVER_PID=""

cleanup() {
  [ -n "$SERVER_PID" ] && kill -9 "$SERVER_PID" 2>/dev/null || true
  ip netns pids "$NS" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" addr add 127.0.0.2/8 dev lo

cat > "$WORK/ipshadow.toml" <<TOML
server_id = "127.0.0.1"
listen = "127.0.0.1:67"
lease_store = "$WORK/ipshadow-leases.redb"
[[subnets]]
network = "10.0.0.0"
prefix = 8
relays = ["127.0.0.2"]
lease_secs = 3600
pool = { start = "10.0.0.1", end = "10.3.255.254" }
TOML

cat > "$WORK/kea.json" <<JSON
{ "Dhcp4": {
    "interfaces-config": { "interfaces": [ "lo/127.0.0.1" ], "dhcp-socket-type": "udp" },
    "lease-database": { "type": "memfile", "persist": true, "name": "$WORK/kea-leases4.csv", "lfc-interval": 0 },
    "multi-threading": { "enable-multi-threading": true, "thread-pool-size": ${KEA_THREADS:-4}, "packet-queue-size": 256 },
    "valid-lifetime": 3600,
    "subnet4": [ { "id": 1, "subnet": "10.0.0.0/8",
                   "pools": [ { "pool": "10.0.0.1 - 10.3.255.254" } ],
                   "relay": { "ip-addresses": [ "127.0.0.2" ] } } ],
    "loggers": [ { "name": "kea-dhcp4", "output_options": [ { "output": "$WORK/kea.log" } ], "severity": "ERROR" } ]
} }
JSON

start_server() {
  rm -f "$WORK"/ipshadow-leases.redb "$WORK"/kea-leases4.csv*
  case $1 in
    ipshadow)
      ip netns exec "$NS" taskset -c 1 ./target/release/ipshadow dhcp --config "$WORK/ipshadow.toml" \
        >/dev/null 2>"$WORK/ipshadow.err" &
      ;;
    kea)
      KEA_LOCKFILE_DIR="$WORK" KEA_PIDFILE_DIR="$WORK" \
        ip netns exec "$NS" taskset -c 1 kea-dhcp4 -c "$WORK/kea.json" >"$WORK/kea.out" 2>&1 &
      ;;
  esac
  SERVER_PID=$!
  sleep 1.5
  kill -0 "$SERVER_PID" 2>/dev/null || { echo "$1 did not start:"; cat "$WORK"/*.err "$WORK"/kea.out 2>/dev/null; exit 1; }
}

stop_server() {
  kill -9 "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}

# CPU time (user + system, in clock ticks) the server process has used so far.
server_ticks() { awk '{ print $14 + $15 }' "/proc/$SERVER_PID/stat"; }

# One trial: prints "<completed exchanges/s> <drop %> <achieved request rate>".
trial() {
  local out
  # perfdhcp exits non-zero when any packet was dropped: that is a measurement, not a failure.
  # Single-threaded: pinned to one CPU, perfdhcp's threads would only contend.
  out=$(ip netns exec "$NS" taskset -c 0 perfdhcp -4 -g single -l 127.0.0.2 -r "$1" -R 1000000 -p "$SECS" 127.0.0.1 2>&1) || true
  echo "$out" | awk -v secs="$SECS" '
    /Statistics for: DISCOVER-OFFER/ { s = "do" } /Statistics for: REQUEST-ACK/ { s = "ra" }
    /^sent packets:/ { sent[s] = $3 } /^received packets:/ { recv[s] = $3 }
    END {
      lost = (sent["do"] - recv["do"]) + (sent["ra"] - recv["ra"])
      total = sent["do"] + sent["ra"]
      printf "%.0f %.2f %.0f\n", recv["ra"] / secs, total ? 100 * lost / total : 100, sent["do"] / secs
    }'
}

TICKS=$(getconf CLK_TCK)
declare -A BEST CPU_US
for server in ipshadow kea; do
  BEST[$server]=0
  CPU_US[$server]=0
  for rate in $RATES; do
    start_server "$server"
    t0=$(server_ticks)
    read -r lps drops sent_rate < <(trial "$rate")
    t1=$(server_ticks)
    stop_server
    # Server CPU per completed exchange: what the server would need if the generator kept up.
    cpu_us=$(awk -v t=$((t1 - t0)) -v hz="$TICKS" -v n="$lps" -v s="$SECS" 'BEGIN { printf "%.1f", n ? 1e6 * t / hz / (n * s) : 0 }')
    printf '%-9s rate %6s/s (sent %6s/s): %6s exchanges/s, %5s %% dropped, server CPU %5s us/exchange\n' \
      "$server" "$rate" "$sent_rate" "$lps" "$drops" "$cpu_us"
    if awk -v d="$drops" 'BEGIN { exit !(d > 2.5) }'; then break; fi
    if [ "$lps" -gt "${BEST[$server]}" ]; then BEST[$server]=$lps; CPU_US[$server]=$cpu_us; fi
  done
done

ratio=$(awk -v a="${BEST[ipshadow]}" -v b="${BEST[kea]}" 'BEGIN { printf "%.2f", b ? a / b : 0 }')
echo "ipshadow: ${BEST[ipshadow]} exchanges/s (fsync'd commits), ${CPU_US[ipshadow]} us CPU each;" \
  "kea: ${BEST[kea]} exchanges/s (memfile, persist on), ${CPU_US[kea]} us CPU each"
echo "(perfdhcp, single-threaded on one CPU, sends at most ~30-33k exchanges/s here: a server faster than that shows the generator's rate)"
echo "RESULT ipshadow_lps=${BEST[ipshadow]} kea_lps=${BEST[kea]} ratio=$ratio ipshadow_cpu_us=${CPU_US[ipshadow]} kea_cpu_us=${CPU_US[kea]}"
