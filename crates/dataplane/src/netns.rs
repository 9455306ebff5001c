//! Entering a network namespace (for the lab and the tests).

#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Moves the calling thread into the named network namespace (`/var/run/netns/NAME`, as made by
/// `ip netns add`). Sockets the thread opens afterwards live in that namespace. Needs root.
pub fn enter(name: &str) -> io::Result<()> {
    let file = File::open(format!("/var/run/netns/{name}"))?;
    // SAFETY: setns takes a valid open descriptor (kept open by `file` for the call) and a
    // namespace type; it changes only the calling thread's namespace and touches no memory of ours.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}
