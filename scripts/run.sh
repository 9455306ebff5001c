#!/usr/bin/env bash
# Sets up and runs the main job.
#  1. As root: `ipshadow demo` — the lab in Linux network namespaces (client hosts; `ipshadow
#     serve` in the router's namespace: API, manager, DHCP server and the Shadow Router on
#     AF_PACKET; VM A and VM B with real DHCP clients and TCP servers), 500 long-lived
#     connections plus churn on real Linux TCP, and a migration of 10.0.0.10 from A to B with the
#     flow strategy, started through the reassign API; prints the report and removes the lab.
#  2. `ipshadow simulate` — the same migration in a deterministic simulated network, once per
#     strategy: flow (ipshadow), packet (the seed's per-packet split), instant (the classic
#     reassign). Writes the flow run's plot to target/simulate-flow.svg.
# Extra arguments go to `ipshadow demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
need_cargo
# protoc: the etcd client's build compiles etcd's protocol (the store on etcd).
apt_install protobuf-compiler
cargo build --release --locked -q -p ipshadow
if [ "$(id -u)" -eq 0 ]; then
    # nginx: `ipshadow lab up --http nginx` (a real keep-alive web server in both VMs).
    apt_install iproute2 procps nftables isc-dhcp-client dhcpcd-base nginx ethtool
    section "demo: a live migration in the lab (real Linux TCP)"
    ./target/release/ipshadow demo "$@"
else
    echo "not root: skipping the lab demo (it needs network namespaces); the simulation follows"
fi
for strategy in flow packet instant; do
    section "simulate --strategy $strategy"
    plot=()
    [[ $strategy == flow ]] && plot=(--plot target/simulate-flow.svg)
    ./target/release/ipshadow simulate --strategy "$strategy" "${plot[@]}"
done
