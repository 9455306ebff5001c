#!/usr/bin/env bash
# Sets up and runs every test: formatting, lints, unit/integration/property tests, and a short
# fuzz run of every fuzz target. Installs what it needs (apt-get, cargo) on a fresh Debian.
# Tests that need root or namespaces fail, not skip, when CI=true and they cannot run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

need_cargo
# Real DHCP clients, perfdhcp (kea-admin) and namespace tools for the DHCP and lab tests (root).
apt_install iproute2 procps nftables isc-dhcp-client busybox dhcpcd-base kea-admin
section "format"
cargo fmt --all -- --check
section "lints"
cargo clippy --workspace --all-targets --locked -- -D warnings
section "tests"
cargo test --workspace --locked
section "fuzz (short runs)"
bash scripts/fuzz.sh "${FUZZ_SECONDS:-30}"
