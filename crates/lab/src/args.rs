//! The migration's options on the command line, shared by `ipshadow demo` (here) and
//! `ipshadow simulate` (the binary): how new traffic is split, how B relates to A, what a split
//! decision pins. Each maps to the core's type.

use clap::ValueEnum;
use ipshadow_core::{Affinity, Mode, Strategy};

/// `--strategy` on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
#[allow(missing_docs, reason = "bare values in --help, as before the move; the core's type documents each")]
pub enum StrategyArg {
    Flow,
    Packet,
    Instant,
}

/// `--mode` on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
#[allow(missing_docs, reason = "bare values in --help, as before the move; the core's type documents each")]
pub enum ModeArg {
    Independent,
    Replica,
}

/// `--affinity` on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
#[allow(missing_docs, reason = "bare values in --help, as before the move; the core's type documents each")]
pub enum AffinityArg {
    Flow,
    Client,
}

impl StrategyArg {
    /// The core's strategy.
    pub fn to_core(self) -> Strategy {
        match self {
            StrategyArg::Flow => Strategy::Flow,
            StrategyArg::Packet => Strategy::Packet,
            StrategyArg::Instant => Strategy::Instant,
        }
    }
}

impl ModeArg {
    /// The core's mode.
    pub fn to_core(self) -> Mode {
        match self {
            ModeArg::Independent => Mode::Independent,
            ModeArg::Replica => Mode::Replica,
        }
    }
}

impl AffinityArg {
    /// The core's affinity.
    pub fn to_core(self) -> Affinity {
        match self {
            AffinityArg::Flow => Affinity::Flow,
            AffinityArg::Client => Affinity::Client,
        }
    }
}
