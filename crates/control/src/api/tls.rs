//! The API over TLS (rustls): the server's certificate chain and key read from PEM files, and a
//! listener that hands axum connections whose handshake is done.
//!
//! The crypto provider is `ring`, named explicitly rather than installed process-wide: rustls'
//! default, aws-lc-rs, builds its C with cmake (and clang for the bindings), which a plain Rust
//! toolchain lacks; ring needs only the C compiler. Only HTTP/1.1 is offered (ALPN), the one
//! protocol the server speaks.
//!
//! Handshakes run in tasks of their own, each limited to [`HANDSHAKE_TIMEOUT`], at most
//! [`MAX_HANDSHAKES`] at once: a client that opens a connection and says nothing delays no one
//! else's, and a flood of them cannot grow without bound.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
/// rustls' server configuration, for callers that hold one without depending on rustls.
pub use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;

/// The longest a client may take to complete its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes under way at once, at most; the listener accepts no more connections meanwhile.
pub const MAX_HANDSHAKES: usize = 512;

/// Why the server's TLS configuration could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The certificate file could not be read, or holds no PEM certificate.
    #[error("tls_cert {path}: {detail}")]
    Cert {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// The key file could not be read, or holds no PEM private key.
    #[error("tls_key {path}: {detail}")]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// rustls refused the pair (the key does not match the certificate, an unsupported key type).
    #[error("tls_cert and tls_key: {0}")]
    Pair(String),
}

/// The server configuration for the chain in `cert` (PEM, leaf first) and the key in `key`
/// (PEM: PKCS#8, PKCS#1 or SEC1).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_error = |detail: String| TlsError::Cert { path: cert.to_owned(), detail };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_error("no PEM certificate in it".into()));
    }
    let private_key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key { path: key.to_owned(), detail: e.to_string() })?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Pair(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|e| TlsError::Pair(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A TCP listener whose connections come out of [`axum::serve::Listener::accept`] with their TLS
/// handshake done; failed and timed-out handshakes are dropped (and logged at debug level).
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
}

impl TlsListener {
    /// Serves TLS with `config` on the connections `tcp` accepts.
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> Self {
        Self { tcp, acceptor: TlsAcceptor::from(config), handshakes: JoinSet::new() }
    }

    fn start_handshake(&mut self, stream: TcpStream, peer: SocketAddr) {
        let acceptor = self.acceptor.clone();
        self.handshakes.spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => Some((tls, peer)),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    None
                }
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let room = self.handshakes.len() < MAX_HANDSHAKES;
            tokio::select! {
                accepted = self.tcp.accept(), if room => match accepted {
                    Ok((stream, peer)) => self.start_handshake(stream, peer),
                    // Out of descriptors and the like: as axum's own TCP listener does, wait a
                    // moment rather than spin.
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a connection");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                },
                Some(done) = self.handshakes.join_next() => {
                    if let Ok(Some(connection)) = done {
                        return connection;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
