//! `ipshadow serve` and the CLI over HTTPS (issue 13, item 7): a certificate from a CA made
//! here, the CLI trusting that CA with `--ca-file` (and refusing the server without it), and
//! plain HTTP refused at start on an address other hosts reach. Also the files' rules: the data
//! folder 0700, the store 0600, an empty or short admin-token file refused.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::serve::Serve;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ipshadow-tls-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `ca.pem` (a CA made here), and `cert.pem` / `key.pem` (the server's certificate for
/// 127.0.0.1 and localhost, signed by that CA, and its key) in `dir`.
fn make_certificates(dir: &Path) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The CLI in `dir` with `args`, nothing from the environment's IPSHADOW_* variables.
fn cli(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ipshadow"))
        .args(args)
        .current_dir(dir)
        .env_remove("IPSHADOW_API")
        .env_remove("IPSHADOW_TOKEN")
        .env_remove("IPSHADOW_CA_FILE")
        .output()
        .unwrap()
}

/// `ipshadow serve --config serve.toml` in `dir` run to its end (for configurations it refuses).
fn serve_refused(dir: &Path, config: &str) -> String {
    std::fs::write(dir.join("serve.toml"), config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ipshadow"))
        .args(["serve", "--config", "serve.toml"])
        .current_dir(dir)
        .env_remove("IPSHADOW_ADMIN_TOKEN")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{config}: started: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_cli_talks_to_serve_over_https_with_the_ca_file_only() {
    let dir = temp_dir("https");
    make_certificates(&dir);
    std::fs::write(
        dir.join("serve.toml"),
        "listen = \"127.0.0.1:0\"\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n",
    )
    .unwrap();
    let server = Serve::start(&dir, &["--config", "serve.toml"]);
    assert!(server.base.starts_with("https://127.0.0.1:"), "{}", server.base);
    let api = server.base.as_str();

    // A client that connects and never says a word holds up nobody's handshake.
    let _silent = std::net::TcpStream::connect(api.trim_start_matches("https://")).unwrap();

    // With the CA: a write and a read, the token found in ./ipshadow-data as over http.
    let vm = ["vm", "add", "vm-a", "--mac", "02:00:00:00:00:0a", "--segment", "vm-a", "--tenant", "acme"];
    let asked = std::time::Instant::now();
    let added = cli(&dir, &[&vm[..], &["--api", api, "--ca-file", "ca.pem"]].concat());
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    // Not after the silent client's handshake timed out (10 s): handshakes run side by side.
    assert!(asked.elapsed() < std::time::Duration::from_secs(9), "{:?}", asked.elapsed());
    // The CA file from the environment works the same.
    let listed = Command::new(env!("CARGO_BIN_EXE_ipshadow"))
        .args(["vm", "list", "--json"])
        .current_dir(&dir)
        .env("IPSHADOW_API", api)
        .env("IPSHADOW_CA_FILE", dir.join("ca.pem"))
        .env_remove("IPSHADOW_TOKEN")
        .output()
        .unwrap();
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let vms: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(vms[0]["id"], "vm-a", "{vms}");

    // Without it, the same server (it answered just now) is refused: its CA is in no public root
    // store. One line, naming TLS, the certificate and what to pass.
    let refused = cli(&dir, &["vm", "list", "--api", api]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: TLS with the API at https://127.0.0.1:"), "{stderr}");
    assert!(stderr.contains("certificate") && stderr.contains("--ca-file"), "{stderr}");
    // And a plain-http client meets no API there.
    let plain = cli(&dir, &["vm", "list", "--api", &api.replace("https://", "http://")]);
    assert_eq!(plain.status.code(), Some(1));

    // The files: the data folder 0700, the store and the generated token 0600.
    let data = dir.join("ipshadow-data");
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("store.redb")), 0o600);
    assert_eq!(mode(&data.join("admin-token")), 0o600);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A data folder and store made with looser modes (an older version, a umask of 022) are
/// tightened at start.
#[test]
fn loose_modes_are_tightened_at_start() {
    let dir = temp_dir("modes");
    let data = dir.join("ipshadow-data");
    std::fs::write(dir.join("serve.toml"), "listen = \"127.0.0.1:0\"\n").unwrap();
    // A first run makes the store and the token; then they are loosened as an older version or
    // a umask of 022 would leave them.
    drop(Serve::start(&dir, &["--config", "serve.toml"]));
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    for file in ["store.redb", "admin-token"] {
        std::fs::set_permissions(data.join(file), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(mode(&data.join(file)), 0o644);
    }
    let server = Serve::start(&dir, &["--config", "serve.toml"]);
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("store.redb")), 0o600);
    assert_eq!(mode(&data.join("admin-token")), 0o600);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The admin token file obeys IPSHADOW_ADMIN_TOKEN's rule: an empty or short one is refused,
/// naming the file; a good one is used.
#[test]
fn an_empty_or_short_admin_token_file_is_refused() {
    let dir = temp_dir("token");
    let data = dir.join("ipshadow-data");
    std::fs::create_dir_all(&data).unwrap();
    let config = "listen = \"127.0.0.1:0\"\n";
    for (text, expect) in [("", "(the file is empty)"), ("\n", "(the file is empty)"), ("short-token\n", "admin-token")]
    {
        std::fs::write(data.join("admin-token"), text).unwrap();
        let stderr = serve_refused(&dir, config);
        assert!(stderr.contains("shorter than 16 characters") && stderr.contains(expect), "{text:?}: {stderr}");
        assert!(!data.join("store.redb").exists(), "refused before the store was opened");
    }
    let token = "a-token-of-enough-length";
    std::fs::write(data.join("admin-token"), format!("{token}\n")).unwrap();
    let server = Serve::start(&dir, &["--config", "serve.toml"]);
    let listed = Command::new(env!("CARGO_BIN_EXE_ipshadow"))
        .args(["vm", "list", "--api", &server.base, "--token", token])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn plain_http_off_loopback_is_refused_at_start() {
    let dir = temp_dir("plain");
    let port = free_port();
    let stderr = serve_refused(&dir, &format!("listen = \"0.0.0.0:{port}\"\n"));
    assert!(stderr.contains("not a loopback address"), "{stderr}");
    assert!(stderr.contains("tls_cert") && stderr.contains("allow_plain_http = true"), "{stderr}");
    // Refused before anything was created.
    assert!(!dir.join("ipshadow-data").exists());
    // Half a TLS configuration is refused too, naming the missing key.
    let stderr = serve_refused(&dir, &format!("listen = \"0.0.0.0:{port}\"\ntls_cert = \"cert.pem\"\n"));
    assert!(stderr.contains("tls_key is not"), "{stderr}");

    // Said explicitly, plain HTTP there is served (reached here on loopback only).
    std::fs::write(dir.join("serve.toml"), format!("listen = \"0.0.0.0:{port}\"\nallow_plain_http = true\n")).unwrap();
    let server = Serve::start(&dir, &["--config", "serve.toml"]);
    assert_eq!(server.base, format!("http://0.0.0.0:{port}"));
    let listed = cli(&dir, &["vm", "list", "--api", &format!("http://127.0.0.1:{port}")]);
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
