#!/usr/bin/env bash
# Latency from the reassign API call to the shadowing entry active in the router: the router on
# veth interfaces in a namespace of its own, a client in the same namespace calling `POST
# /v1/addresses/{ip}/reassign` with `migrate`, one call after the other, for N addresses.
#
# STORE=redb (the default): `ipshadow serve` with every part in one process on the embedded
# store. The path measured is the whole one a user's call takes: HTTP, the store's fsync'd
# transaction creating the migration, the store's watch waking the manager, the manager's own
# transaction (plan written), its projection of the store handed to the router thread, the
# router's reconcile installing the entry.
#
# STORE=etcd: a three-member etcd cluster in the namespace (127.0.0.1, each member with its own
# data folder) and the parts as processes of their own, as deployed: `serve --roles api`, `serve
# --roles manager` (it campaigns and leads), `serve --roles router`, one configuration file. The
# path adds etcd's replicated commit of the API's transaction, the watch event to the manager,
# the manager's write of the router's desired state (another commit) and its watch event to the
# router process; the router's report reaches the API through etcd too (not measured: the end
# point is the router's own clock).
#
# The end point is the router's own record of when it installed the entry (`installed_at` in
# `GET /v1/router/status`, its clock, unix microseconds); the start is the client's clock just
# before the call (the same host clock).
#
# Prints the distribution, then
#   RESULT reassign_to_router_p50_ms=... p99_ms=... max_ms=... api_p50_ms=... api_p99_ms=... n=... store=...
# Needs root (network namespace, AF_PACKET). Environment: STORE (redb or etcd), N (calls, default
# 300), KEEP=1 keeps the data folder (with every process's log).
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-300}
STORE=${STORE:-redb}
NS=ipshlat$$
PORT=7481
case "$STORE" in redb | etcd) ;; *) echo "STORE must be redb or etcd, not $STORE" >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "needs root (network namespace, AF_PACKET)" >&2; exit 1; }
if [ "$STORE" = etcd ]; then command -v etcd >/dev/null || { echo "needs etcd (Debian etcd-server)" >&2; exit 1; }; fi
cargo build --release --locked -q -p ipshadow
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/ipshadow
DATA=$(mktemp -d /tmp/ipshadow-latency.XXXXXX)
# Every process started here, killed by pid (serve parts first, then etcd).
PIDS=()
ETCD_PIDS=()

cleanup() {
    local rc=$? pid log
    if [ "$rc" != 0 ]; then
        for log in "$DATA"/*.log; do [ -f "$log" ] && { echo "--- $log" >&2; tail -15 "$log" >&2; }; done
    fi
    for pid in "${PIDS[@]}" "${ETCD_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}" "${ETCD_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    ip netns del "$NS" 2>/dev/null || true
    [ "${KEEP:-0}" = 1 ] || rm -rf "$DATA"
}
trap cleanup EXIT

ip netns add "$NS"
ip -n "$NS" link set lo up
for pair in prov vma vmb; do
    ip -n "$NS" link add "$pair" type veth peer name "$pair-peer"
    ip -n "$NS" link set "$pair" up
    ip -n "$NS" link set "$pair-peer" up
done

TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
cat > "$DATA/serve.toml" <<CONF
listen = "127.0.0.1:$PORT"
data_dir = "$DATA/data"

[router]
provider = "prov"
gateway = "10.0.0.1"
vms = [{ id = "vm-a", interface = "vma" }, { id = "vm-b", interface = "vmb" }]
CONF

# Waits until `$1` holds `$2`, or fails after `$3` seconds naming the log.
wait_for_log() {
    local i
    for ((i = 0; i < $3 * 20; i++)); do
        grep -q -- "$2" "$1" 2>/dev/null && return 0
        sleep 0.05
    done
    echo "no \"$2\" in $1 within $3 s:" >&2
    tail -20 "$1" >&2
    exit 1
}

if [ "$STORE" = redb ]; then
    IPSHADOW_ADMIN_TOKEN=$TOKEN ip netns exec "$NS" "$BIN" serve --config "$DATA/serve.toml" 2> "$DATA/serve.log" &
    PIDS+=($!)
else
    # Three members on the namespace's own loopback (its ports are all free). `ip netns exec`
    # execs the command: $! is etcd's own pid.
    CLUSTER=""
    ENDPOINTS=""
    for i in 0 1 2; do
        CLUSTER+="${CLUSTER:+,}m$i=http://127.0.0.1:$((12380 + 10 * i))"
        ENDPOINTS+="${ENDPOINTS:+,}127.0.0.1:$((12379 + 10 * i))"
    done
    for i in 0 1 2; do
        client=http://127.0.0.1:$((12379 + 10 * i))
        peer=http://127.0.0.1:$((12380 + 10 * i))
        ip netns exec "$NS" etcd --name "m$i" --data-dir "$DATA/etcd-m$i" \
            --listen-client-urls "$client" --advertise-client-urls "$client" \
            --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
            --initial-cluster "$CLUSTER" --initial-cluster-token ipshadow-bench \
            > "$DATA/etcd-m$i.log" 2>&1 &
        ETCD_PIDS+=($!)
    done
    for i in 0 1 2; do
        for ((t = 0; ; t++)); do
            ip netns exec "$NS" curl -sf --max-time 2 "http://127.0.0.1:$((12379 + 10 * i))/health" \
                | grep -q '"health":"true"' && break
            kill -0 "${ETCD_PIDS[$i]}" 2>/dev/null || { echo "etcd m$i exited:" >&2; tail -20 "$DATA/etcd-m$i.log" >&2; exit 1; }
            ((t < 600)) || { echo "etcd m$i not healthy within 30 s" >&2; exit 1; }
            sleep 0.05
        done
    done
    for role in manager router api; do
        IPSHADOW_ADMIN_TOKEN=$TOKEN ip netns exec "$NS" "$BIN" serve --config "$DATA/serve.toml" \
            --store "etcd://$ENDPOINTS" --roles "$role" --name "bench-$role" 2> "$DATA/serve-$role.log" &
        PIDS+=($!)
    done
    # Calls made before a manager leads would wait for its campaign, not measure the path.
    wait_for_log "$DATA/serve-manager.log" "manager leads" 30
fi

ip netns exec "$NS" env TOKEN="$TOKEN" PORT="$PORT" N="$N" STORE="$STORE" PROFILE="${PROFILE:-0}" \
    ETCD="${ENDPOINTS:-}" python3 - <<'PY'
import json, os, statistics, time, urllib.error, urllib.request

base = f"http://127.0.0.1:{os.environ['PORT']}"
token = os.environ["TOKEN"]
n = int(os.environ["N"])

def call(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")

deadline = time.time() + 15
while True:
    try:
        if call("GET", "/healthz")[0] == 200 and call("GET", "/v1/router/status")[0] == 200:
            break
    except OSError:
        pass
    if time.time() > deadline:
        raise SystemExit("serve did not start; see its log")
    time.sleep(0.05)

# PROFILE=1 on etcd: a watch of every key (etcd's JSON gateway) timestamps when each write of
# the API, the manager and the router was visible, to split the path into its hops.
seen = []
if os.environ["PROFILE"] == "1" and os.environ["STORE"] == "etcd":
    import base64, threading

    def watch_all():
        key = b"/ipshadow/v1/"
        end = key[:-1] + bytes([key[-1] + 1])
        b64 = lambda b: base64.b64encode(b).decode()
        body = json.dumps({"create_request": {"key": b64(key), "range_end": b64(end)}}).encode()
        with urllib.request.urlopen(urllib.request.Request(f"http://{os.environ['ETCD'].split(',')[0]}/v3/watch", data=body)) as r:
            for line in r:
                t = time.time()
                for ev in json.loads(line).get("result", {}).get("events", []):
                    seen.append((t, base64.b64decode(ev["kv"]["key"]).decode()))

    threading.Thread(target=watch_all, daemon=True).start()

for vm, mac in (("vm-a", "02:00:00:00:0a:01"), ("vm-b", "02:00:00:00:0b:01")):
    assert call("POST", "/v1/vms", {"id": vm, "tenant": "bench", "mac": mac, "segment": vm})[0] == 201
ips = [f"10.0.{1 + i // 250}.{1 + i % 250}" for i in range(n)]
for ip in ips:
    assert call("POST", "/v1/addresses", {"ip": ip, "tenant": "bench", "vm": "vm-a"})[0] == 201

end_to_end, api, starts, installs = [], [], [], []
for ip in ips:
    t0 = time.time()
    starts.append(t0)
    code, body = call("POST", f"/v1/addresses/{ip}/reassign", {"to": "vm-b", "migrate": True})
    api.append((time.time() - t0) * 1e3)
    assert code == 202, (code, body)
    while True:
        code, status = call("GET", "/v1/router/status")
        installed = status.get("installed_at", {}).get(ip) if code == 200 else None
        if installed is not None:
            end_to_end.append(installed / 1e3 - t0 * 1e3)
            installs.append(installed / 1e6)
            break
        if time.time() - t0 > 10:
            raise SystemExit(f"{ip}: not installed in the router after 10 s")
        time.sleep(0.002)
    # A VM takes part in one unfinished migration at a time (the DHCP server leases it one
    # address; an API node on etcd always assumes one a DHCP server may run): aborted, and the
    # next call made once the router has the abort (the entry rolling back until B's lease
    # lapses), so that calls do not overlap.
    code, body = call("POST", f"/v1/migrations/{body['id']}/abort")
    assert code == 200, (code, body)
    while True:
        code, status = call("GET", "/v1/router/status")
        if code == 200 and any(e.get("ip_address") == ip and e.get("state") == "rolling_back"
                               for e in status.get("entries", [])):
            break
        if time.time() - t0 > 20:
            raise SystemExit(f"{ip}: the abort not in the router within 20 s")
        time.sleep(0.002)

def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]

for name, v in (("reassign call -> entry installed in the router", end_to_end), ("reassign call answered", api)):
    print(f"{name}: n={len(v)} p50={pct(v, 50):.2f} ms p90={pct(v, 90):.2f} ms p99={pct(v, 99):.2f} ms "
          f"max={max(v):.2f} ms mean={statistics.mean(v):.2f} ms")
if seen:
    # Per call, the first write after the call that is not a part's (the API's transaction),
    # the first of the router's desired state, then the router's install.
    hops = {"call -> API's commit seen": [], "API's commit -> desired state seen": [],
            "desired state seen -> installed": [], "writes per call": []}
    for i, (t0, installed) in enumerate(zip(starts, installs)):
        until = starts[i + 1] if i + 1 < len(starts) else float("inf")
        window = [(t, k) for t, k in seen if t0 <= t < until]
        api_commit = next((t for t, k in window if not k.startswith("/ipshadow/v1/parts/")), None)
        desired = next((t for t, k in window if k == "/ipshadow/v1/parts/router/desired/bench-router"), None)
        if api_commit is None or desired is None:
            continue
        hops["call -> API's commit seen"].append((api_commit - t0) * 1e3)
        hops["API's commit -> desired state seen"].append((desired - api_commit) * 1e3)
        hops["desired state seen -> installed"].append((installed - desired) * 1e3)
        hops["writes per call"].append(sum(1 for t, k in window if t <= installed))
    for name, v in hops.items():
        if v:
            print(f"hop {name}: n={len(v)} p50={pct(v, 50):.2f} p90={pct(v, 90):.2f} p99={pct(v, 99):.2f} max={max(v):.2f}")
    # What one commit costs a member: its WAL's fsync and its backend's commit (etcd's metrics).
    with urllib.request.urlopen(f"http://{os.environ['ETCD'].split(',')[0]}/metrics") as r:
        metrics = dict(line.rsplit(" ", 1) for line in r.read().decode().splitlines() if line and line[0] != "#")
    for what in ("etcd_disk_wal_fsync_duration_seconds", "etcd_disk_backend_commit_duration_seconds"):
        count, total = float(metrics.get(f"{what}_count", 0)), float(metrics.get(f"{what}_sum", 0))
        if count:
            print(f"etcd member 0: {what}: n={count:.0f} mean={total / count * 1e3:.2f} ms")
# A path that grows with the calls made (the store holds every earlier migration) shows here.
third = max(1, len(end_to_end) // 3)
for start in range(0, len(end_to_end), third):
    v = end_to_end[start:start + third]
    print(f"calls {start + 1}-{start + len(v)}: p50={pct(v, 50):.2f} ms p99={pct(v, 99):.2f} ms")
print(f"RESULT reassign_to_router_p50_ms={pct(end_to_end, 50):.2f} p99_ms={pct(end_to_end, 99):.2f} "
      f"max_ms={max(end_to_end):.2f} api_p50_ms={pct(api, 50):.2f} api_p99_ms={pct(api, 99):.2f} n={len(end_to_end)} "
      f"store={os.environ['STORE']}")
PY
