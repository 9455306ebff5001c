#!/usr/bin/env bash
# The inbound decision in ns/packet (criterion) and instructions/packet (callgrind), for a hot
# flow table (1k flows, one shadowed address) and a big one (1M flows over 10k addresses).
# Prints a final `RESULT key=value ...` line.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
need_cargo
apt_install valgrind

section "criterion (one core, wall clock)"
taskset -c 1 cargo bench --locked -p ipshadow-core --bench inbound -- --noplot 2>&1 | grep -E '^inbound/|time:'
ns() { # median ns per packet of criterion bench $1 (4096 packets per iteration)
  python3 - "$1" <<'PY'
import json, os, sys
e = json.load(open(os.environ.get("CARGO_TARGET_DIR", "target") + f"/criterion/inbound/{sys.argv[1]}/new/estimates.json"))
print(f"{e['median']['point_estimate'] / 4096:.1f}")
PY
}
hot=$(ns hot_1k_flows_one_by_one); hot_batch=$(ns hot_1k_flows_batch)
decision=$(ns hot_1k_flows_decision_only); parse=$(ns parse_only)
big=$(ns 1M_flows_10k_ips_one_by_one); big_batch=$(ns 1M_flows_10k_ips_batch)
echo "median ns/packet: hot ${hot} one by one, ${hot_batch} batched (parse ${parse}, decision ${decision});" \
  "1M flows ${big} one by one, ${big_batch} batched"

section "callgrind (instructions, repeatable)"
cargo build --locked --release -q -p ipshadow-core --example inbound_instructions
bin=${CARGO_TARGET_DIR:-target}/release/examples/inbound_instructions
irs() { # instructions per packet of scenario $1, mode $3, over $2 packets
  local out collected
  out=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null --collect-atstart=no \
    --toggle-collect='*measured_loop*' "$bin" "$1" "$2" "$3" 2>&1)
  collected=$(echo "$out" | grep -o 'Collected : [0-9]*' | awk '{print $3}')
  if [ -z "$collected" ]; then echo "callgrind gave no count for $1 $3:" >&2; echo "$out" | tail -5 >&2; exit 1; fi
  awk -v c="$collected" -v n="$2" 'BEGIN{printf "%.1f", c/n}'
}
hot_ir=$(irs hot 100000 single)
hot_batch_ir=$(irs hot 100000 batch)
# Building 1M flows under valgrind takes minutes; the per-packet count barely depends on table size.
big_ir=$(irs big 100000 batch)
echo "instructions/packet: hot ${hot_ir} one by one, ${hot_batch_ir} batched; 1M flows ${big_ir} batched"
echo "RESULT hot_ns=${hot} hot_batch_ns=${hot_batch} big_ns=${big} big_batch_ns=${big_batch} hot_ir=${hot_ir} hot_batch_ir=${hot_batch_ir} big_batch_ir=${big_ir}"
