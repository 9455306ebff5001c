#!/usr/bin/env bash
# Sets up and runs every test: formatting, lints, unit/integration/property tests, schemathesis
# against the REST API's OpenAPI document, and a short fuzz run of every fuzz target. Installs what it needs (apt-get, cargo) on a fresh Debian.
# Tests that need root or namespaces fail, not skip, when CI=true and they cannot run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

need_cargo
# Real DHCP clients, perfdhcp (kea-admin), nginx (the lab's keep-alive HTTP test) and namespace
# tools for the DHCP and lab tests (root); Python's venv and pip for schemathesis (PyPI,
# installed under target/), curl for its seeding; etcd (etcd-server) for the store's conformance
# suite and protoc (protobuf-compiler) for the etcd client's build.
apt_install iproute2 procps nftables ethtool isc-dhcp-client busybox dhcpcd-base kea-admin nginx python3-venv python3-pip curl libfaketime etcd-server protobuf-compiler
section "format"
cargo fmt --all -- --check
section "lints"
cargo clippy --workspace --all-targets --locked -- -D warnings
section "tests"
cargo test --workspace --locked
section "API against its OpenAPI document (schemathesis)"
bash scripts/schemathesis.sh
section "fuzz (short runs)"
bash scripts/fuzz.sh "${FUZZ_SECONDS:-30}"
