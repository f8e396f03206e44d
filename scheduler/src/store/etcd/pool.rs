//! One etcd client per endpoint, used one at a time: a request goes to the current
//! endpoint, and an endpoint that fails (refused, reset, timed out) hands over to the next.
//! etcd-client's own balanced channel keeps choosing a member that fails fast (a killed
//! one), which stalls writes for seconds after an etcd member dies. With TLS, the clients
//! are rebuilt when the certificate files change ([`Pool::reload_if_changed`]), so renewed
//! certificates are used without a restart.

use baton_client::tls::TlsFiles;
use etcd_client::{Client, ConnectOptions};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::SystemTime;

/// Clients of every endpoint and the one in use.
pub struct Pool {
    endpoints: Vec<String>,
    /// Options without TLS; TLS is read from `tls` at each (re)build.
    opts: ConnectOptions,
    tls: Option<TlsFiles>,
    clients: RwLock<Vec<Client>>,
    current: AtomicUsize,
    /// What the TLS files looked like when the clients were built.
    stamp: Mutex<Stamp>,
}

/// Each TLS file's modification time and length (`None`: unreadable).
type Stamp = Vec<Option<(SystemTime, u64)>>;

/// A client with the index of its endpoint, to report failures against.
#[derive(Clone)]
pub struct Picked {
    pub client: Client,
    index: usize,
}

/// Why the pool could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("no etcd endpoints")]
    NoEndpoints,
    #[error("etcd TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Etcd(#[from] etcd_client::Error),
}

impl Pool {
    /// Builds a (lazily connecting) client per endpoint, with TLS from `tls` when given.
    pub async fn connect(
        endpoints: &[String],
        opts: ConnectOptions,
        tls: Option<TlsFiles>,
    ) -> Result<Pool, PoolError> {
        if endpoints.is_empty() {
            return Err(PoolError::NoEndpoints);
        }
        let stamp = stamp(tls.as_ref());
        let clients = build(endpoints, &opts, tls.as_ref()).await?;
        Ok(Pool {
            endpoints: endpoints.to_vec(),
            opts,
            tls,
            clients: RwLock::new(clients),
            current: AtomicUsize::new(0),
            stamp: Mutex::new(stamp),
        })
    }

    /// The client to use now.
    pub fn pick(&self) -> Picked {
        let clients = self.clients.read().unwrap_or_else(|e| e.into_inner());
        let index = self.current.load(Ordering::Relaxed) % clients.len();
        Picked {
            client: clients[index].clone(),
            index,
        }
    }

    /// `picked` failed: move on to the next endpoint (once, however many callers report it).
    pub fn failed(&self, picked: &Picked) {
        if self.endpoints.len() > 1 {
            let next = (picked.index + 1) % self.endpoints.len();
            if self
                .current
                .compare_exchange(picked.index, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                tracing::info!(endpoint = next, "switching etcd endpoint");
            }
        }
    }

    /// Whether TLS files are watched for changes.
    pub fn watches_files(&self) -> bool {
        self.tls.is_some()
    }

    /// Rebuilds the clients when a TLS file changed since the last build; a change that
    /// does not read (a file half written, a key that does not match) keeps the clients in
    /// use, and is reported once. Requests already under way finish on the old clients.
    pub async fn reload_if_changed(&self) {
        let now = stamp(self.tls.as_ref());
        {
            let mut seen = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
            if *seen == now {
                return;
            }
            *seen = now;
        }
        match build(&self.endpoints, &self.opts, self.tls.as_ref()).await {
            Ok(clients) => {
                *self.clients.write().unwrap_or_else(|e| e.into_inner()) = clients;
                tracing::info!("etcd TLS files changed; reconnecting with them");
            }
            Err(e) => {
                tracing::warn!(error = %e, "etcd TLS files changed but do not load; keeping the ones in use")
            }
        }
    }
}

async fn build(
    endpoints: &[String],
    opts: &ConnectOptions,
    tls: Option<&TlsFiles>,
) -> Result<Vec<Client>, PoolError> {
    let opts = match tls {
        Some(files) => opts
            .clone()
            .with_tls(files.config_for("--etcd").map_err(PoolError::Tls)?),
        None => opts.clone(),
    };
    let mut clients = Vec::with_capacity(endpoints.len());
    for e in endpoints {
        clients.push(Client::connect([e], Some(opts.clone())).await?);
    }
    Ok(clients)
}

fn stamp(tls: Option<&TlsFiles>) -> Stamp {
    let Some(files) = tls else { return Vec::new() };
    [&files.ca, &files.cert, &files.key]
        .into_iter()
        .map(|p: &Option<PathBuf>| {
            let m = std::fs::metadata(p.as_ref()?).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}
