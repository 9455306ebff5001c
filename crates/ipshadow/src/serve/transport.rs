//! How the API is reached: HTTPS when `tls_cert` and `tls_key` are set; otherwise plain HTTP,
//! which `serve` accepts on a loopback address only, unless the configuration says
//! `allow_plain_http = true`: bearer tokens must not cross a network in clear by accident.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use ipshadow_control::Store;
use ipshadow_control::api::ApiState;
use ipshadow_control::api::tls::{ServerConfig, TlsListener, server_config};

/// The TLS keys of `serve`'s configuration.
#[derive(Debug, Default)]
pub(super) struct TransportConfig {
    /// The server's certificate chain, PEM.
    pub tls_cert: Option<PathBuf>,
    /// Its private key, PEM.
    pub tls_key: Option<PathBuf>,
    /// Plain HTTP on an address other hosts reach, knowingly.
    pub allow_plain_http: bool,
}

/// What the API listens with.
pub(super) enum Transport {
    /// Plain HTTP.
    Plain,
    /// HTTPS with this configuration.
    Tls(Arc<ServerConfig>),
}

impl TransportConfig {
    /// The transport for `listen`, refused when it would send tokens in clear over a network; a
    /// certificate or key that cannot be read or used is refused here too, before anything starts.
    pub(super) fn transport(&self, listen: SocketAddr) -> anyhow::Result<Transport> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Transport::Tls(server_config(cert, key)?)),
            (Some(_), None) => bail!("tls_cert is set but tls_key is not: set both (PEM files) to serve HTTPS"),
            (None, Some(_)) => bail!("tls_key is set but tls_cert is not: set both (PEM files) to serve HTTPS"),
            (None, None) if listen.ip().is_loopback() || self.allow_plain_http => Ok(Transport::Plain),
            (None, None) => bail!(
                "listen = \"{listen}\" is not a loopback address and no TLS is configured: set tls_cert and \
                 tls_key (PEM files) to serve HTTPS, or allow_plain_http = true to serve plain HTTP there \
                 (bearer tokens then cross the network in clear)"
            ),
        }
    }
}

/// Serves the API with `state` on `listen` until `shutdown`; says where on stderr once it listens
/// (`ipshadow serve: API on <scheme>://<address>, data in <data_dir>`: tests and scripts read it).
pub(super) async fn serve_api<S: Store>(
    listen: SocketAddr,
    transport: Transport,
    data_dir: &Path,
    state: ApiState<S>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // The API's warnings and errors (a 500's detail, under the incident id its body names) on
    // stderr, where `serve` says everything else; a subscriber set already (tests) is kept.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .try_init();
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
    let scheme = match transport {
        Transport::Plain => "http",
        Transport::Tls(_) => "https",
    };
    eprintln!("ipshadow serve: API on {scheme}://{}, data in {}", listener.local_addr()?, data_dir.display());
    match transport {
        Transport::Plain => ipshadow_control::api::serve(listener, state, shutdown).await?,
        Transport::Tls(config) => {
            ipshadow_control::api::serve(TlsListener::new(listener, config), state, shutdown).await?
        }
    }
    Ok(())
}
