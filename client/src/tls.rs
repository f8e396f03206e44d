//! TLS to a scheduler: the CA that signs its certificate and, for mutual TLS, this side's
//! certificate and key, as PEM files read at each new connection (renewed files are used by
//! the next connection without a restart).

use std::path::PathBuf;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// Where a client's or worker's TLS files are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA that signs the scheduler's certificate.
    pub ca: Option<PathBuf>,
    /// This side's certificate chain, when the scheduler requires one (mutual TLS).
    pub cert: Option<PathBuf>,
    /// Its private key.
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    /// Whether any TLS file is given (then addresses without a scheme mean `https://`).
    pub fn is_set(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }

    /// Reads the files into a tonic TLS configuration (also etcd-client's `TlsOptions`);
    /// the error names the file by its `--tls-*` flag.
    pub fn config(&self) -> Result<ClientTlsConfig, String> {
        self.config_for("--tls")
    }

    /// [`TlsFiles::config`], naming the files by the flags `<flags>-ca`, `<flags>-cert` and
    /// `<flags>-key`.
    pub fn config_for(&self, flags: &str) -> Result<ClientTlsConfig, String> {
        let read = |what: &str, p: &PathBuf| {
            std::fs::read(p).map_err(|e| format!("{flags}-{what} {}: {e}", p.display()))
        };
        let ca = self.ca.as_ref().ok_or_else(|| {
            format!("TLS needs the CA that signs the server's certificate ({flags}-ca)")
        })?;
        let mut config =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("ca", ca)?));
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                config =
                    config.identity(Identity::from_pem(read("cert", cert)?, read("key", key)?));
            }
            (None, None) => {}
            _ => return Err(format!("{flags}-cert and {flags}-key go together")),
        }
        Ok(config)
    }
}
