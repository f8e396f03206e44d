//! TLS on the scheduler's gRPC port (rustls on ring): its certificate and key and, for mutual
//! TLS, the CA whose certificates clients and workers must show; the files are checked every
//! second and reloaded when they change (new connections get the new ones; a bad new file
//! is reported and the configuration in force stays). Handshakes run beside the accept
//! loop, each bounded in time, so a slow or silent peer holds up no one.

use crate::{Error, Result};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// How long a client may take over its handshake.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);
/// Handshakes finished and not yet taken by the server.
const QUEUE: usize = 64;

/// Where the server's TLS files are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Clients must show a certificate signed by this CA (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// The server's TLS configuration in force, reloaded when its files change.
pub struct ServerTls {
    files: TlsFiles,
    current: RwLock<Arc<rustls::ServerConfig>>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn bad(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Config(format!("TLS {what} {}: {e}", path.display()))
}

/// Builds a rustls server configuration from the files.
fn load(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| bad("certificate", &files.cert, e))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad("certificate", &files.cert, e))?;
    if certs.is_empty() {
        return Err(bad(
            "certificate",
            &files.cert,
            "no certificate in the file",
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| bad("key", &files.key, e))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS: {e}")))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).map_err(|e| bad("client CA", ca, e))? {
                roots
                    .add(c.map_err(|e| bad("client CA", ca, e))?)
                    .map_err(|e| bad("client CA", ca, e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots.into(),
                provider(),
            )
            .build()
            .map_err(|e| bad("client CA", ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| bad("certificate", &files.cert, e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// What a file looks like now, to notice a change.
fn stamp(files: &TlsFiles) -> Vec<Option<(SystemTime, u64)>> {
    [
        Some(&files.cert),
        Some(&files.key),
        files.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    })
    .collect()
}

impl ServerTls {
    /// Loads the files; an unusable file is a configuration error naming it.
    pub fn load(files: TlsFiles) -> Result<Arc<ServerTls>> {
        let config = load(&files)?;
        Ok(Arc::new(ServerTls {
            files,
            current: RwLock::new(config),
        }))
    }

    fn config(&self) -> Arc<rustls::ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reloads the files when they change, until `stop`.
    pub fn watch(self: &Arc<Self>, stop: CancellationToken) {
        let tls = self.clone();
        tokio::spawn(async move {
            let mut seen = stamp(&tls.files);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                let now = stamp(&tls.files);
                if now == seen {
                    continue;
                }
                seen = now;
                let files = tls.files.clone();
                match tokio::task::spawn_blocking(move || load(&files)).await {
                    Ok(Ok(config)) => {
                        *tls.current.write().unwrap_or_else(|p| p.into_inner()) = config;
                        tracing::info!("TLS certificates reloaded");
                    }
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "TLS files changed but cannot be used; keeping the ones in force")
                    }
                    Err(e) => tracing::error!(error = %e, "TLS reload failed"),
                }
            }
        });
    }

    /// Accepts connections on `listener` and yields those whose handshake succeeds.
    pub fn incoming(
        self: &Arc<Self>,
        listener: TcpListener,
        stop: CancellationToken,
    ) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
        self.incoming_with_alpn(listener, stop, vec![b"h2".to_vec()])
    }

    /// [`ServerTls::incoming`], offering the application protocols `alpn` (HTTP/2 for
    /// gRPC; none at all lets any client in).
    pub fn incoming_with_alpn(
        self: &Arc<Self>,
        listener: TcpListener,
        stop: CancellationToken,
        alpn: Vec<Vec<u8>>,
    ) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        let tls = self.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop.cancelled() => return,
                    a = listener.accept() => a,
                };
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let mut config = tls.config();
                if config.alpn_protocols != alpn {
                    let mut c = (*config).clone();
                    c.alpn_protocols = alpn.clone();
                    config = Arc::new(c);
                }
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_LIMIT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(Ok(stream)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}
