#!/usr/bin/env bash
# Sets up and runs the main job: `ipshadow simulate`, a migration of 10.0.0.10 from VM A to VM B
# under load in a deterministic simulated network (smoltcp TCP stacks, the shadowing core between
# them), once per strategy: flow (ipshadow), packet (the seed's per-packet split), instant (the
# classic reassign). Writes the flow run's plot to target/simulate-flow.svg.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
need_cargo
cargo build --release --locked -q -p ipshadow
for strategy in flow packet instant; do
    echo
    plot=()
    [[ $strategy == flow ]] && plot=(--plot target/simulate-flow.svg)
    ./target/release/ipshadow simulate --strategy "$strategy" "${plot[@]}" "$@"
done
