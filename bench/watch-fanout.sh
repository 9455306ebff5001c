#!/usr/bin/env bash
# Fan-out of the router's desired state on etcd: a three-member etcd cluster on 127.0.0.1 (each
# member with its own data folder), WATCHERS processes each with its own etcd connection
# watching one router's slice `/v1/parts/router/desired/<name>` as router processes do (the
# case where a change concerns all of them; standing in for them: each
# decodes every version as a router does, without a data plane), and one writer putting a
# desired-state document (ADDRESSES plain addresses, about 6 KB at 300) WRITES times, one every
# INTERVAL_MS. Per write: the time from just before the write call to the last watcher having
# decoded it (also from the call's return, and to the first watcher).
#
# Prints the distributions, then
#   RESULT watch_fanout_p50_ms=... p99_ms=... max_ms=... committed_p99_ms=... watchers=... writes=... doc_bytes=...
# Environment: WATCHERS (50), WRITES (200), INTERVAL_MS (50), ADDRESSES (300), KEEP=1 keeps the
# data folder (with etcd's logs). No root needed.
set -euo pipefail
cd "$(dirname "$0")/.."

WATCHERS=${WATCHERS:-50}
WRITES=${WRITES:-200}
INTERVAL_MS=${INTERVAL_MS:-50}
ADDRESSES=${ADDRESSES:-300}
command -v etcd >/dev/null || { echo "needs etcd (Debian etcd-server)" >&2; exit 1; }
cargo build --release --locked -q -p ipshadow-control --example watch_fanout
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/examples/watch_fanout
DATA=$(mktemp -d /tmp/ipshadow-fanout.XXXXXX)
# Every process started here, killed by pid (the bench kills its watchers itself, and they exit
# when it is gone).
PIDS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    [ "${KEEP:-0}" = 1 ] || rm -rf "$DATA"
}
trap cleanup EXIT

# Six ports free now, below the kernel's ephemeral range (no outgoing connection takes one
# between this check and etcd's bind).
read -r -a PORTS < <(python3 - <<'PY'
import random, socket
ports = []
for p in random.sample(range(20000, 32000), 200):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        ports.append(p)
    except OSError:
        pass
    finally:
        s.close()
    if len(ports) == 6:
        break
print(*ports)
PY
)
CLUSTER=""
ENDPOINTS=""
for i in 0 1 2; do
    CLUSTER+="${CLUSTER:+,}m$i=http://127.0.0.1:${PORTS[$((2 * i + 1))]}"
    ENDPOINTS+="${ENDPOINTS:+,}127.0.0.1:${PORTS[$((2 * i))]}"
done
for i in 0 1 2; do
    client=http://127.0.0.1:${PORTS[$((2 * i))]}
    peer=http://127.0.0.1:${PORTS[$((2 * i + 1))]}
    etcd --name "m$i" --data-dir "$DATA/etcd-m$i" \
        --listen-client-urls "$client" --advertise-client-urls "$client" \
        --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
        --initial-cluster "$CLUSTER" --initial-cluster-token ipshadow-fanout \
        > "$DATA/etcd-m$i.log" 2>&1 &
    PIDS+=($!)
done
for i in 0 1 2; do
    for ((t = 0; ; t++)); do
        curl -sf --max-time 2 "http://127.0.0.1:${PORTS[$((2 * i))]}/health" | grep -q '"health":"true"' && break
        kill -0 "${PIDS[$i]}" 2>/dev/null || { echo "etcd m$i exited:" >&2; tail -20 "$DATA/etcd-m$i.log" >&2; exit 1; }
        ((t < 600)) || { echo "etcd m$i not healthy within 30 s" >&2; exit 1; }
        sleep 0.05
    done
done

"$BIN" bench --endpoints "$ENDPOINTS" --watchers "$WATCHERS" --writes "$WRITES" \
    --interval-ms "$INTERVAL_MS" --addresses "$ADDRESSES" &
PIDS+=($!)
wait "${PIDS[3]}"
