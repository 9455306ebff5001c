//! Keeping the host's kernel off the router's interfaces: an nftables ingress table that drops
//! their frames after the router's packet sockets saw them.

use std::io;

use thiserror::Error;

use super::RouterSetup;

/// Name of the nftables table that keeps the host's kernel off the router's interfaces.
pub(super) const NFT_TABLE: &str = "ipshadow_router";

/// Why `nft` did not apply a script.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum NftError {
    /// `nft` could not be started.
    #[error("running nft (Debian package nftables)")]
    Spawn(#[source] io::Error),
    /// Handing `nft` its script or reading its answer failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// `nft` refused the script; its error output.
    #[error("nft: {0}")]
    Refused(String),
}

/// Installs (or replaces) the ingress table: frames on the router's interfaces are dropped after
/// the packet sockets saw them (taps run before the ingress hook), except what the host itself
/// serves on the VM side (ARP for the gateway, DHCP).
pub(super) fn keep_kernel_off(setup: &RouterSetup) -> Result<(), NftError> {
    let mut rules = format!(
        "table netdev {NFT_TABLE} {{}}\ndelete table netdev {NFT_TABLE}\ntable netdev {NFT_TABLE} {{\n\
         chain provider {{ type filter hook ingress device \"{}\" priority 0; policy drop; }}\n",
        setup.provider
    );
    for (i, vm) in setup.vms.iter().enumerate() {
        rules += &format!(
            "chain vm{i} {{ type filter hook ingress device \"{}\" priority 0; policy drop; \
             meta protocol arp accept; meta protocol ip udp dport 67 accept; }}\n",
            vm.interface
        );
    }
    rules += "}\n";
    nft(&rules)
}

/// Removes the ingress table again.
pub(super) fn let_kernel_in() -> Result<(), NftError> {
    nft(&format!("delete table netdev {NFT_TABLE}\n"))
}

fn nft(script: &str) -> Result<(), NftError> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    child.stdin.take().ok_or_else(|| io::Error::other("nft's input"))?.write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(NftError::Refused(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
    }
    Ok(())
}
