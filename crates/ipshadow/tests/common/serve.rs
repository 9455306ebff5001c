//! `ipshadow serve` as a process of the test: started in a folder, found through the address it
//! prints, killed when the test ends, passed or failed.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running `ipshadow serve`, killed (and waited for) when dropped.
pub struct Serve {
    /// The server's process.
    pub child: Child,
    /// Where its API answers, as it printed it: `http://<address>`.
    pub base: String,
}

impl Serve {
    /// Runs `ipshadow serve <args>` in `dir` (without `IPSHADOW_ADMIN_TOKEN` from the
    /// environment) and waits until it says where it listens; panics if it never does.
    pub fn start(dir: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ipshadow"))
            .arg("serve")
            .args(args)
            .current_dir(dir)
            .env_remove("IPSHADOW_ADMIN_TOKEN")
            .stderr(Stdio::piped())
            .spawn()
            .expect("ipshadow serve starts");
        // The server says where it listens once it does.
        let mut lines = BufReader::new(child.stderr.take().expect("stderr is piped")).lines();
        let base = lines.by_ref().map_while(Result::ok).find_map(|line| {
            let rest = line.strip_prefix("ipshadow serve: API on ")?;
            rest.split(',').next().map(str::to_owned)
        });
        // Keep reading, so that the server never writes into a closed pipe.
        std::thread::spawn(move || lines.for_each(drop));
        // Built before the check: a server that said nothing is killed too.
        let mut serve = Self { child, base: String::new() };
        serve.base = base.expect("the server printed its address");
        serve
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
