//! The bpffs the fast path pins its flows in.

use std::path::Path;
use std::process::Command;

use ipshadow_xdp::FastPathError;

/// Makes `dir` a directory on a bpffs: when no bpffs is mounted at or above it, one is mounted at
/// its parent (`/run/ipshadow/bpf` by default: `mount -t bpf`, as root). A mount made by a
/// process inside `ip netns exec` lives only in that command's mount namespace, so the lab
/// mounts it from the host first; on a host, the router's own mount stays.
pub fn prepare(dir: &Path) -> Result<(), FastPathError> {
    let parent = dir.parent().unwrap_or(dir);
    let io = |source| FastPathError::PinDir { path: parent.to_path_buf(), source };
    std::fs::create_dir_all(parent).map_err(io)?;
    if ipshadow_xdp::is_bpffs(parent) {
        return Ok(());
    }
    let status = Command::new("mount").args(["-t", "bpf", "bpf"]).arg(parent).status().map_err(io)?;
    if !status.success() {
        return Err(io(std::io::Error::other(format!("mount -t bpf bpf {}: {status}", parent.display()))));
    }
    Ok(())
}
