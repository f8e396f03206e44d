//! One etcd client per endpoint, used one at a time: a request goes to the current
//! endpoint, and an endpoint that fails (refused, reset, timed out) hands over to the next.
//! etcd-client's own balanced channel keeps choosing a member that fails fast (a killed
//! one), which stalls writes for seconds after an etcd member dies.

use etcd_client::{Client, ConnectOptions};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Clients of every endpoint and the one in use.
pub struct Pool {
    clients: Vec<Client>,
    current: AtomicUsize,
}

/// A client with the index of its endpoint, to report failures against.
#[derive(Clone)]
pub struct Picked {
    pub client: Client,
    index: usize,
}

impl Pool {
    /// Builds a (lazily connecting) client per endpoint.
    pub async fn connect(
        endpoints: &[String],
        opts: ConnectOptions,
    ) -> Result<Pool, etcd_client::Error> {
        let mut clients = Vec::with_capacity(endpoints.len());
        for e in endpoints {
            clients.push(Client::connect([e], Some(opts.clone())).await?);
        }
        if clients.is_empty() {
            return Err(etcd_client::Error::InvalidArgs("no etcd endpoints".into()));
        }
        Ok(Pool {
            clients,
            current: AtomicUsize::new(0),
        })
    }

    /// The client to use now.
    pub fn pick(&self) -> Picked {
        let index = self.current.load(Ordering::Relaxed) % self.clients.len();
        Picked {
            client: self.clients[index].clone(),
            index,
        }
    }

    /// `picked` failed: move on to the next endpoint (once, however many callers report it).
    pub fn failed(&self, picked: &Picked) {
        if self.clients.len() > 1 {
            let next = (picked.index + 1) % self.clients.len();
            if self
                .current
                .compare_exchange(picked.index, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                tracing::info!(endpoint = next, "switching etcd endpoint");
            }
        }
    }
}
