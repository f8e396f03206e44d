//! How the S3 client is configured: explicit [`S3Options`], or the environment, on top of
//! the standard AWS chain (see the parent module's documentation).

use crate::{Error, Result};
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls;
use std::time::Duration;

const DEFAULT_REGION: &str = "us-east-1";

/// A fixed access key, for tests and tools; otherwise the standard AWS chain is used.
#[derive(Clone)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"** redacted **")
            .finish()
    }
}

/// How to reach S3; see the module documentation for the environment variables.
#[derive(Clone, Debug)]
pub struct S3Options {
    /// The URL of an S3-compatible server; `None`: AWS, or `AWS_ENDPOINT_URL`.
    pub endpoint: Option<String>,
    /// Path-style addressing; `None`: when an endpoint is overridden.
    pub path_style: Option<bool>,
    /// The region; `None`: the standard chain, else `us-east-1`.
    pub region: Option<String>,
    /// A fixed key; `None`: the standard credential chain.
    pub credentials: Option<StaticCredentials>,
    /// How long transient failures of one operation are retried.
    pub retry_for: Duration,
    /// A CA certificate (PEM) trusted besides the system's, for an S3-compatible server
    /// with a certificate from a private CA.
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            endpoint: None,
            path_style: None,
            region: None,
            credentials: None,
            retry_for: Duration::from_secs(30),
            ca_file: None,
        }
    }
}

impl S3Options {
    /// Options from `BATON_S3_ENDPOINT`, `BATON_S3_PATH_STYLE` and `BATON_S3_CA_FILE` (or
    /// the AWS CLI's `AWS_CA_BUNDLE`); the rest is left to the standard AWS chain.
    pub fn from_env() -> Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let path_style = match var("BATON_S3_PATH_STYLE") {
            None => None,
            Some(v) => Some(parse_bool(&v).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "BATON_S3_PATH_STYLE must be true or false, not `{v}`"
                ))
            })?),
        };
        let overridden = var("AWS_ENDPOINT_URL_S3").is_some() || var("AWS_ENDPOINT_URL").is_some();
        let endpoint = var("BATON_S3_ENDPOINT");
        Ok(S3Options {
            path_style: path_style.or((endpoint.is_some() || overridden).then_some(true)),
            endpoint,
            ca_file: var("BATON_S3_CA_FILE")
                .or_else(|| var("AWS_CA_BUNDLE"))
                .map(std::path::PathBuf::from),
            ..S3Options::default()
        })
    }
}

pub(super) fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// The SDK client for `options`: rustls (ring) HTTPS, the standard credential and region
/// chains unless overridden, short connect timeouts and no SDK retries (the store retries
/// transient failures, see `crate::retry`).
pub(super) async fn sdk_client(options: &S3Options) -> Result<Client> {
    let mut builder = aws_smithy_http_client::Builder::new().tls_provider(tls::Provider::Rustls(
        tls::rustls_provider::CryptoMode::Ring,
    ));
    if let Some(ca) = &options.ca_file {
        let pem = std::fs::read(ca)
            .map_err(|e| Error::InvalidArgument(format!("the S3 CA file {}: {e}", ca.display())))?;
        let context = tls::TlsContext::builder()
            .with_trust_store(tls::TrustStore::default().with_pem_certificate(pem))
            .build()
            .map_err(|e| Error::InvalidArgument(format!("the S3 CA file {}: {e}", ca.display())))?;
        builder = builder.tls_context(context);
    }
    let http = builder.build_https();
    // The store retries transient failures itself (one layer, see `crate::retry`).
    let retry = RetryConfig::disabled();
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .operation_attempt_timeout(Duration::from_secs(60))
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .retry_config(retry)
        .timeout_config(timeouts);
    if let Some(region) = &options.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(c) = &options.credentials {
        loader = loader.credentials_provider(Credentials::new(
            c.access_key_id.clone(),
            c.secret_access_key.clone(),
            None,
            None,
            "baton",
        ));
    }
    let overridden = options.endpoint.is_some();
    if let Some(endpoint) = &options.endpoint {
        loader = loader.endpoint_url(endpoint.clone());
    }
    let shared = loader.load().await;
    let overridden = overridden || shared.endpoint_url().is_some();
    let mut config = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(options.path_style.unwrap_or(overridden));
    if shared.region().is_none() {
        config = config.region(Region::from_static(DEFAULT_REGION));
    }
    if overridden {
        // S3-compatible servers vary in their support of the newer default checksums
        // (trailers in aws-chunked bodies); baton checks its own sha256 anyway.
        config = config
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    }
    Ok(Client::from_conf(config.build()))
}
