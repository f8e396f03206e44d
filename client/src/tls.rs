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

    /// Reads the files into a tonic TLS configuration; the error names the file.
    pub fn config(&self) -> Result<ClientTlsConfig, String> {
        let read = |flag: &str, p: &PathBuf| {
            std::fs::read(p).map_err(|e| format!("{flag} {}: {e}", p.display()))
        };
        let ca = self
            .ca
            .as_ref()
            .ok_or("TLS needs the CA that signs the scheduler's certificate (--tls-ca)")?;
        let mut config =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("--tls-ca", ca)?));
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                config = config.identity(Identity::from_pem(
                    read("--tls-cert", cert)?,
                    read("--tls-key", key)?,
                ));
            }
            (None, None) => {}
            _ => return Err("--tls-cert and --tls-key go together".into()),
        }
        Ok(config)
    }
}
