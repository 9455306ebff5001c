#!/usr/bin/env bash
# The manager's work per store change, and the DHCP server's per request, against history (issue
# 14 item 5). No root needed.
#
# 1. Manager (crates/control/tests/scaling.rs): a redb store in a temp dir with 10,000 VMs each
#    holding an address, one migration ramping and 10, 1,000 or 10,000 ended ones. One step is
#    what `serve` does for a router report: decide (the reported split is written), project the
#    store for the router and the DHCP server, start pending migrations. `before`: every record
#    read and decoded for each (the manager before its mirror, rebuilt from the same public
#    functions); `after`: the manager fed by a watch (Manager::observe) deciding and projecting
#    from its mirror; `changed`: the same handing the parts only what changed (Manager::changed);
#    `reset`: the one full read at the start. Medians, milliseconds.
# 2. DHCP (crates/dhcp/tests/scaling.rs): a renewal with 1 and 10,000 plans held, by a VM in no
#    migration and by A of the active one, and the plan lookups a request makes by a scan (as
#    before the index) and by the index. Medians, nanoseconds.
#
# Built with the workspace's test profile (opt-level 2, the same build `cargo test` uses); the
# figures are for comparing before and after on one machine. Prints two `RESULT` lines.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
need_cargo

section "manager: work per store change"
cargo test --locked -q -p ipshadow-control --test scaling -- --ignored --nocapture 2>&1 | grep -E '^(ended=|RESULT)'
section "dhcp: cost per request"
cargo test --locked -q -p ipshadow-dhcp --test scaling -- --ignored --nocapture 2>&1 | grep -E '^(plans=|RESULT)'
