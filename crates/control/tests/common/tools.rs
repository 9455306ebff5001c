//! Outside programs the tests start (nginx, dhclient, dhcpcd, perfdhcp, `ip`...): a test that
//! needs one says which and where it comes from, instead of failing on a spawn error or, worse,
//! passing on an empty run. Under `CI=true` a missing tool fails the test; elsewhere it skips.

#![allow(dead_code)]

use std::path::Path;

/// Whether `tool` is an executable file in a directory of `PATH`.
pub fn on_path(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = std::env::var_os("PATH") else { return false };
    std::env::split_paths(&path).any(|dir| {
        let file = Path::new(&dir).join(tool);
        std::fs::metadata(&file).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Whether `tool` (from Debian package `package`) is there for `test`. Without it: a skip
/// message, or under `CI=true` a failure naming the tool and its package.
pub fn require_tool(test: &str, tool: &str, package: &str) -> bool {
    if on_path(tool) {
        return true;
    }
    let why = format!("{test}: needs {tool} (Debian package {package}; scripts/test.sh installs it)");
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
    eprintln!("SKIPPED {why}");
    false
}
