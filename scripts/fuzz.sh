#!/usr/bin/env bash
# Runs every fuzz target for N seconds each (default 30) on stable Rust (no sanitizer).
# A crash fails the script and leaves the input under fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
seconds="${1:-30}"
need_cargo
need_cargo_tool cargo-fuzz cargo-fuzz
for target in $(cargo fuzz list --fuzz-dir fuzz); do
  section "fuzz $target for ${seconds}s"
  cargo fuzz run --fuzz-dir fuzz -s none "$target" -- -max_total_time="$seconds" -print_final_stats=1 2>&1 \
    | grep -E 'Done|stat::number_of_executed_units|ERROR|panicked|SUMMARY' || true
  test "${PIPESTATUS[0]}" -eq 0
done
