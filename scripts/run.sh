#!/usr/bin/env bash
# Sets up and runs the main job. Today (the core only) that is a migration of 10.0.0.10 from VM A
# to VM B through the sans-IO core with synthetic clients; `ipshadow simulate` (real TCP stacks
# in a deterministic network) replaces it with the simulator issue.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
need_cargo
cargo run --release --locked -q -p ipshadow-core --example migration
