#!/usr/bin/env bash
# Latency from the reassign API call to the shadowing entry active in the router, on the
# embedded store: `ipshadow serve` with its router on veth interfaces in a namespace of its own,
# a client in the same namespace calling `POST /v1/addresses/{ip}/reassign` with `migrate`, one
# call after the other, for N addresses.
#
# The path measured is the whole one a user's call takes: HTTP, the store's fsync'd transaction
# creating the migration, the store's watch waking the manager, the manager's own transaction
# (plan written), its projection of the store handed to the router thread, the router's
# reconcile installing the entry. The end point is the router's own record of when it installed
# the entry (`installed_at` in `GET /v1/router/status`, its clock, unix microseconds); the start
# is the client's clock just before the call (the same host clock).
#
# Prints the distribution, then
#   RESULT reassign_to_router_p50_ms=... p99_ms=... max_ms=... api_p50_ms=... api_p99_ms=... n=...
# Needs root (network namespace, AF_PACKET). Environment: N (calls, default 300), KEEP=1 keeps the
# data folder.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-300}
NS=ipshlat$$
PORT=7481
[ "$(id -u)" = 0 ] || { echo "needs root (network namespace, AF_PACKET)" >&2; exit 1; }
cargo build --release --locked -q -p ipshadow
BIN=$PWD/target/release/ipshadow
DATA=$(mktemp -d /tmp/ipshadow-latency.XXXXXX)
SERVE_PID=

cleanup() {
    if [ -n "$SERVE_PID" ]; then kill "$SERVE_PID" 2>/dev/null || true; wait "$SERVE_PID" 2>/dev/null || true; fi
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
IPSHADOW_ADMIN_TOKEN=$TOKEN ip netns exec "$NS" "$BIN" serve --config "$DATA/serve.toml" 2> "$DATA/serve.log" &
SERVE_PID=$!

ip netns exec "$NS" env TOKEN="$TOKEN" PORT="$PORT" N="$N" python3 - <<'PY'
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

for vm, mac in (("vm-a", "02:00:00:00:0a:01"), ("vm-b", "02:00:00:00:0b:01")):
    assert call("POST", "/v1/vms", {"id": vm, "tenant": "bench", "mac": mac, "segment": vm})[0] == 201
ips = [f"10.0.{1 + i // 250}.{1 + i % 250}" for i in range(n)]
for ip in ips:
    assert call("POST", "/v1/addresses", {"ip": ip, "tenant": "bench", "vm": "vm-a"})[0] == 201

end_to_end, api = [], []
for ip in ips:
    t0 = time.time()
    code, body = call("POST", f"/v1/addresses/{ip}/reassign", {"to": "vm-b", "migrate": True})
    api.append((time.time() - t0) * 1e3)
    assert code == 202, (code, body)
    while True:
        code, status = call("GET", "/v1/router/status")
        installed = status.get("installed_at", {}).get(ip) if code == 200 else None
        if installed is not None:
            end_to_end.append(installed / 1e3 - t0 * 1e3)
            break
        if time.time() - t0 > 10:
            raise SystemExit(f"{ip}: not installed in the router after 10 s")
        time.sleep(0.002)

def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]

for name, v in (("reassign call -> entry installed in the router", end_to_end), ("reassign call answered", api)):
    print(f"{name}: n={len(v)} p50={pct(v, 50):.2f} ms p90={pct(v, 90):.2f} ms p99={pct(v, 99):.2f} ms "
          f"max={max(v):.2f} ms mean={statistics.mean(v):.2f} ms")
print(f"RESULT reassign_to_router_p50_ms={pct(end_to_end, 50):.2f} p99_ms={pct(end_to_end, 99):.2f} "
      f"max_ms={max(end_to_end):.2f} api_p50_ms={pct(api, 50):.2f} api_p99_ms={pct(api, 99):.2f} n={len(end_to_end)}")
PY
