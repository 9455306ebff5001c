# Shared helpers for the scripts; sourced, not run.

section() { printf '\n=== %s ===\n' "$*"; }

# apt-get update once per script run, then install the named Debian packages if missing.
APT_UPDATED=0
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if [ "$APT_UPDATED" -eq 0 ]; then $sudo apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
}

need_cargo() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust >= 1.95 (https://rustup.rs) and run again" >&2
    exit 1
  fi
  # clang and libbpf-dev: the XDP fast path's program is C, compiled to BPF when ipshadow builds.
  apt_install build-essential pkg-config clang libbpf-dev
}

need_cargo_tool() { # binary crate
  command -v "$1" >/dev/null 2>&1 || cargo install --locked "$2"
}
