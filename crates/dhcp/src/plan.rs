//! Migration lease plans: what the manager tells the DHCP server about an address that moves (the
//! plan is a contract between them, in `ipshadow_contracts`), and the shadowing option that
//! carries it to the VMs.

pub use ipshadow_contracts::dhcp::{MigrationPlan, PlanState};

/// The shadowing option's payload: flag (1), role (1 source, 2 destination), migration id (u64),
/// deadline (u32 unix seconds), all big-endian: 14 bytes.
pub fn shadow_option_payload(role: crate::lease::Role, migration: u64, deadline: u64) -> Vec<u8> {
    let mut p = Vec::with_capacity(14);
    p.push(1);
    p.push(match role {
        crate::lease::Role::Source => 1,
        crate::lease::Role::Destination => 2,
    });
    p.extend_from_slice(&migration.to_be_bytes());
    p.extend_from_slice(&u32::try_from(deadline).unwrap_or(u32::MAX).to_be_bytes());
    p
}
