//! ipshadow's XDP fast path: the BPF program (`bpf/shadow.bpf.c`, compiled by clang when this
//! crate builds) that forwards the frames of known flows and decides new ones in the kernel's
//! driver hook, and the loader that attaches it and works its maps.
//!
//! The router's core stays the authority: it writes the shadowed addresses (salt, split
//! threshold, the two VMs), the routed addresses and the flows' owners here, and replays every
//! frame the program forwarded (read from the records ring), so that its flow table, counters
//! and measurements are the same as if it had forwarded the frames itself. What the program is
//! not sure of goes up (`XDP_PASS`) to the router's AF_PACKET path. The maps that hold state
//! (shadowed addresses and flows) are pinned in bpffs: a restarted router finds its flows.
//!
//! Loaded with [aya](https://aya-rs.dev) rather than libbpf-rs: pure Rust, so nothing in C to
//! build or link (libbpf-sys vendors and compiles libbpf, with libelf and zlib), and it has
//! everything used here (BTF maps, pinning, device maps, ring buffers, `BPF_PROG_TEST_RUN`).

pub mod abi;
mod fast_path;

pub use fast_path::{
    FastPath, FastPathError, FastPathSetup, PINNED, TestRun, XDP_PASS, XDP_REDIRECT, ifindex, is_bpffs, ktime_ns,
    possible_cpus,
};

/// The compiled program (empty when clang was missing at build time).
static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/shadow.bpf.o"));

/// Whether this build carries the program.
pub const fn built() -> bool {
    !cfg!(ipshadow_no_fast_path)
}
