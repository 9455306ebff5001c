//! A router driven through its state directory: the desired state read from `desired.json`
//! (written by the manager, watched by modification time and length), the status written to
//! `status.json`. This is `ipshadow router`'s [`RouterControl`].

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ipshadow_core::Instant;
use thiserror::Error;

use super::{RouterControl, error_chain};
use crate::{Desired, Status};

/// Why a state-directory document could not be read or written.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StateDirError {
    /// The document could not be read.
    #[error("reading {}", path.display())]
    Read {
        /// The document.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The document is not valid JSON of the expected shape.
    #[error("in {}", path.display())]
    Parse {
        /// The document.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The value could not be encoded as JSON.
    #[error(transparent)]
    Encode(serde_json::Error),
    /// The temporary file could not be written.
    #[error("writing {}", path.display())]
    Write {
        /// The temporary file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The temporary file could not be renamed over the document.
    #[error("renaming to {}", path.display())]
    Rename {
        /// The document.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Writes `value` as JSON to `path` through a temporary file and a rename, so a reader never
/// sees half a report.
pub fn write_atomically(path: &Path, value: &impl serde::Serialize) -> Result<(), StateDirError> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec(value).map_err(StateDirError::Encode)?;
    std::fs::write(&tmp, bytes).map_err(|source| StateDirError::Write { path: tmp.clone(), source })?;
    std::fs::rename(&tmp, path).map_err(|source| StateDirError::Rename { path: path.to_owned(), source })?;
    Ok(())
}

/// The desired-state document, watched by modification time and length.
#[derive(Debug)]
struct Watched {
    path: Option<PathBuf>,
    seen: Option<(SystemTime, u64)>,
    document: Desired,
}

impl Watched {
    /// Reads the document again if it changed; `Ok(true)` when it did. A document that does not
    /// parse is refused whole (the router keeps the last good one).
    fn refresh(&mut self) -> Result<bool, StateDirError> {
        let Some(path) = &self.path else { return Ok(false) };
        let stamp = std::fs::metadata(path).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
        if stamp == self.seen {
            return Ok(false);
        }
        self.seen = stamp;
        if stamp.is_none() {
            self.document = Desired::default();
            return Ok(true);
        }
        let text =
            std::fs::read_to_string(path).map_err(|source| StateDirError::Read { path: path.clone(), source })?;
        self.document =
            serde_json::from_str(&text).map_err(|source| StateDirError::Parse { path: path.clone(), source })?;
        Ok(true)
    }
}

/// Desired state from `DIR/desired.json` (checked every period), status to `DIR/status.json`;
/// without a directory, only the fixed part of the desired state.
#[derive(Debug)]
pub struct StateDirControl {
    dir: Option<PathBuf>,
    period: Duration,
    /// Added to every document: plain addresses the document does not assign, and entries.
    fixed: Desired,
    watched: Watched,
    next_check: Instant,
}

impl StateDirControl {
    /// A control on `dir` (none: nothing is read or written) that checks the document every
    /// `period` from `now` on, and adds `fixed` to every document. Nothing is read yet.
    pub fn new(dir: Option<PathBuf>, period: Duration, fixed: Desired, now: Instant) -> Self {
        let watched =
            Watched { path: dir.as_ref().map(|d| d.join("desired.json")), seen: None, document: Desired::default() };
        Self { dir, period, fixed, watched, next_check: now }
    }

    /// Reads the document if it changed since last read; `Ok(true)` when it did. On an error
    /// the last good document is kept.
    pub fn refresh(&mut self) -> Result<bool, StateDirError> {
        self.watched.refresh()
    }

    /// The desired state: the last good document plus the fixed part (an address the document
    /// assigns keeps the document's VM).
    pub fn current(&self) -> Desired {
        let mut desired = self.watched.document.clone();
        for (ip, vm) in &self.fixed.addresses {
            desired.addresses.entry(*ip).or_insert_with(|| vm.clone());
        }
        desired.entries.extend(self.fixed.entries.iter().cloned());
        desired
    }
}

impl RouterControl for StateDirControl {
    fn wake_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }

    fn desired(&mut self, now: Instant) -> Option<Desired> {
        if now < self.next_check {
            return None;
        }
        self.next_check = now + self.period;
        match self.watched.refresh() {
            Ok(true) => Some(self.current()),
            Ok(false) => None,
            Err(e) => {
                eprintln!("ipshadow router: {}; keeping the previous desired state", error_chain(&e));
                None
            }
        }
    }

    fn report(&mut self, status: Status) {
        if let Some(dir) = &self.dir
            && let Err(e) = write_atomically(&dir.join("status.json"), &status)
        {
            eprintln!("ipshadow router: {}", error_chain(&e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipshadow_core::VmId;

    /// The fixed part adds to the document; the document's own assignment of an address wins.
    #[test]
    fn fixed_addresses_add_to_the_document() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let a: std::net::Ipv4Addr = [10, 0, 0, 10].into();
        let b: std::net::Ipv4Addr = [10, 0, 0, 11].into();
        let mut document = Desired::default();
        document.addresses.insert(a, VmId::from("vm-b"));
        write_atomically(&dir.path().join("desired.json"), &document)?;
        let mut fixed = Desired::default();
        fixed.addresses.insert(a, VmId::from("vm-a"));
        fixed.addresses.insert(b, VmId::from("vm-a"));
        let mut control =
            StateDirControl::new(Some(dir.path().to_owned()), Duration::from_millis(10), fixed, Instant::ZERO);
        assert!(control.refresh()?);
        assert!(!control.refresh()?, "an unchanged document is not read again");
        let desired = control.current();
        assert_eq!(desired.addresses.get(&a), Some(&VmId::from("vm-b")));
        assert_eq!(desired.addresses.get(&b), Some(&VmId::from("vm-a")));
        Ok(())
    }
}
