#!/usr/bin/env bash
# Flow keys built to collide under the flow table's old constant hash key (issue 13 item 4): probe
# distances and median ns per packet of those flows, under the old key and the random one.
# `--profile test` (opt-level 2, no LTO) is enough to show the shape and builds fast; drop it for
# the bench profile's figures. Prints a final `RESULT key=value ...` line.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
need_cargo

section "criterion (wall clock)"
cargo bench --locked -p ipshadow-core --bench flow_collisions "$@" -- --noplot 2>&1 |
  grep -E '^flow_collisions/|time:'
ns() { # median ns per packet of criterion bench $1/$2 ($2 packets per iteration)
  python3 - "$1" "$2" <<'PY'
import json, os, sys
e = json.load(open(os.environ.get("CARGO_TARGET_DIR", "target") + f"/criterion/flow_collisions/{sys.argv[1]}_{sys.argv[2]}/new/estimates.json"))
print(f"{e['median']['point_estimate'] / int(sys.argv[2]):.1f}")
PY
}
line="RESULT"
for n in 250 1000 4000; do
  line="$line old_key_ns_${n}=$(ns old_constant_key "$n") random_key_ns_${n}=$(ns random_key "$n")"
done
echo "$line"
