//! Test certificates: a private CA and certificates it signs, written as PEM files (rcgen).

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use std::path::{Path, PathBuf};

/// A CA: its certificate's PEM and what signs with it.
pub struct Ca {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> anyhow::Result<Ca> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate()?;
        let pem = params.self_signed(&key)?.pem();
        Ok(Ca {
            pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// Writes the CA's certificate to `path`.
    pub fn write(&self, path: &Path) -> anyhow::Result<PathBuf> {
        std::fs::write(path, &self.pem)?;
        Ok(path.to_path_buf())
    }

    /// A certificate for `names` (DNS names or IP addresses) signed by this CA, written as
    /// `dir/stem.pem` and `dir/stem.key` (each beside and renamed, so that a reloading
    /// server never reads half a file).
    pub fn issue(
        &self,
        names: &[&str],
        dir: &Path,
        stem: &str,
    ) -> anyhow::Result<(PathBuf, PathBuf)> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let params = CertificateParams::new(names)?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let (c, k) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.key")),
        );
        for (path, text) in [(&k, key.serialize_pem()), (&c, cert.pem())] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, path)?;
        }
        Ok((c, k))
    }
}
