//! Errors of the control operations on the router. Packet-path problems are not errors: they are
//! verdicts with a [`crate::DropReason`], counted.

use std::net::Ipv4Addr;

use crate::shadow::EntryState;

/// A control operation on the router was refused; nothing was changed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RouterError {
    /// The address has no shadowing entry.
    #[error("{0} is not shadowed")]
    NotShadowed(Ipv4Addr),
    /// The address already has a shadowing entry.
    #[error("{0} is already shadowed")]
    AlreadyShadowed(Ipv4Addr),
    /// Source and destination are the same VM.
    #[error("source and destination VM are the same")]
    SameVm,
    /// A parameter is out of range.
    #[error("invalid {name}: {reason}")]
    InvalidParameter {
        /// The parameter's name as written in configuration and API.
        name: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// The operation does not apply in the entry's state.
    #[error("cannot {operation} {ip}: migration is {state:?}")]
    InvalidState {
        /// The address.
        ip: Ipv4Addr,
        /// Its state.
        state: EntryState,
        /// The refused operation.
        operation: &'static str,
    },
}

impl RouterError {
    pub(crate) const fn invalid(name: &'static str, reason: &'static str) -> Self {
        Self::InvalidParameter { name, reason }
    }
}
