//! Compiles the XDP program (bpf/shadow.bpf.c) with clang into `$OUT_DIR/shadow.bpf.o`, which
//! the crate embeds. Without clang (or without the kernel and libbpf headers) the crate still
//! builds, with no program: a router then says it cannot load XDP and uses AF_PACKET. Under
//! `CI=true` a missing compiler is an error, so CI never silently tests the fallback alone.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(ipshadow_no_fast_path)");
    println!("cargo::rerun-if-changed=bpf/shadow.bpf.c");
    println!("cargo::rerun-if-changed=bpf/abi.h");
    println!("cargo::rerun-if-env-changed=CLANG");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out.join("shadow.bpf.o");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    // asm/types.h lives under the multiarch directory on Debian.
    let multiarch = Command::new("gcc")
        .arg("-print-multiarch")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "x86_64-linux-gnu".to_owned());
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
        .arg(format!("-I/usr/include/{multiarch}"))
        .args(["-c", "bpf/shadow.bpf.c", "-o"])
        .arg(&object)
        .status();
    match status {
        Ok(s) if s.success() => {}
        outcome => {
            let why = match outcome {
                Ok(s) => format!("{clang} failed ({s})"),
                Err(e) => format!("{clang} not found ({e})"),
            };
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("the XDP program did not build: {why}; install clang and libbpf-dev");
            }
            println!("cargo::warning=the XDP fast path is not built: {why} (apt-get install clang libbpf-dev)");
            println!("cargo::rustc-cfg=ipshadow_no_fast_path");
            std::fs::write(&object, b"").expect("OUT_DIR is writable");
        }
    }
}
