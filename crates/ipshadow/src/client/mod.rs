//! The CLI client of the REST API: `ipshadow vm|address|reassign|migration|shadowing ...`.
//!
//! Every command finds the server through `--api URL` / `IPSHADOW_API` (default
//! `http://127.0.0.1:7480`, where `ipshadow serve` listens; `https://` for a `serve` with
//! `tls_cert`, whose CA `--ca-file` / `IPSHADOW_CA_FILE` names when it is not a public one) and
//! its token through `--token` / `IPSHADOW_TOKEN`, else `./ipshadow-data/admin-token` (the one
//! `ipshadow serve` generates).
//! Output is an aligned table or a `key  value` list; `--json` prints the server's JSON instead.
//! A refusal is one line, `error: <status> <message>`, and exit code 1.
//!
//! The calls themselves (token, idempotency keys, one retry, the error line, TLS) are the
//! `ipshadow-client` crate's [`Api`].
//!
//! - [`inventory`]: `vm` and `address`;
//! - [`migrations`]: `reassign`, `migration`, `shadowing`;
//! - [`watch`]: following a migration's event stream with a progress bar;
//! - [`table`]: tables and times.

pub mod inventory;
pub mod migrations;
pub mod table;
pub mod watch;

use std::path::Path;

use clap::Args;
use serde_json::Value;

use ipshadow_client::{Api, DEFAULT_API};

/// Where `ipshadow serve` keeps the admin token it generates, relative to where it runs.
const ADMIN_TOKEN_FILE: &str = "ipshadow-data/admin-token";

/// How to reach the API and what to print; accepted by every client command, before or after
/// its subcommand.
#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    /// The API's base URL.
    #[arg(long, global = true, value_name = "URL", env = "IPSHADOW_API", default_value = DEFAULT_API)]
    pub api: String,
    /// Bearer token (default: ./ipshadow-data/admin-token when it exists).
    #[arg(long, global = true, value_name = "TOKEN", env = "IPSHADOW_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificates (PEM) that an https:// API's certificate must chain to (default: the
    /// public roots built in).
    #[arg(long, global = true, value_name = "FILE", env = "IPSHADOW_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// Print the server's JSON (pretty) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

impl ConnectArgs {
    /// The client these options describe.
    pub fn connect(&self) -> anyhow::Result<Api> {
        let token = match &self.token {
            Some(token) => Some(token.trim().to_owned()),
            None => read_token(Path::new(ADMIN_TOKEN_FILE)),
        };
        Ok(Api::new(&self.api, token, self.ca_file.as_deref())?)
    }
}

/// The token in `path`, if it holds one (absent or unreadable: none, and the server says 401).
fn read_token(path: &Path) -> Option<String> {
    let token = std::fs::read_to_string(path).ok()?;
    let token = token.trim();
    (!token.is_empty()).then(|| token.to_owned())
}

/// Prints `value` as pretty JSON (nothing for an empty answer, such as a 204).
pub fn print_json(value: &Value) -> anyhow::Result<()> {
    if !value.is_null() {
        use std::io::Write as _;
        writeln!(std::io::stdout(), "{}", serde_json::to_string_pretty(value)?)?;
    }
    Ok(())
}

/// Reads the server's JSON into the shape a command prints.
pub fn parse<T: serde::de::DeserializeOwned>(api: &Api, value: Value) -> anyhow::Result<T> {
    serde_json::from_value(value).map_err(|e| api.unexpected(format!("a reply of another shape: {e}")).into())
}
