//! A TLS-terminating proxy: serves TLS with a given certificate and forwards the plaintext
//! to a target (an S3 server that speaks only HTTP, say), for tests of TLS clients.

use std::net::SocketAddr;
use std::path::Path;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

/// Stops when dropped.
pub struct TlsProxy {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl TlsProxy {
    /// Listens on a free port of 127.0.0.1 with `cert` and `key`, forwarding to `target`.
    pub async fn start(target: SocketAddr, cert: &Path, key: &Path) -> anyhow::Result<TlsProxy> {
        let tls = baton_scheduler::tls::ServerTls::load(baton_scheduler::tls::TlsFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            client_ca: None,
        })?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let mut incoming = tls.incoming_with_alpn(listener, stop.clone(), Vec::new());
        tokio::spawn(async move {
            while let Some(Ok(mut stream)) = incoming.next().await {
                tokio::spawn(async move {
                    if let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
                    }
                });
            }
        });
        Ok(TlsProxy { addr, stop })
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
