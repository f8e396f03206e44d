//! The replica set behind a [`super::Client`]: the configured addresses, one lazily
//! connected channel per address, and which replica is believed to lead. Also what decides
//! whether a failed call may be retried, and the backoff between tries.

use super::ClientError;
use baton_proto as pb;
use futures::stream::{FuturesUnordered, StreamExt};
use pb::flow_service_client::FlowServiceClient;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// Metadata key of a refusal that names the leader's address.
pub use baton_proto::limits::LEADER_METADATA;

/// The largest message either side may send.
use baton_proto::limits::MAX_MESSAGE_BYTES as MAX_MESSAGE;
/// How long dialling one replica may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one replica may take to say who leads.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP/2 keep-alive of open streams, so that a watch notices a leader that went silent.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Longest delay of the first try and of any try (with jitter).
pub(super) const MIN_BACKOFF: Duration = Duration::from_millis(100);
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Leader hints followed at once in a row, before hints wait for the backoff too.
const QUICK_HOPS: u32 = 2;
/// After a follower named the leader, how long the leader's own answer is awaited (it
/// tells where the leader answers, which may differ from the address it advertises).
const LEADER_GRACE: Duration = Duration::from_millis(200);

/// `addr` as a URL: `host:port` gets `http://`; a trailing `/` goes.
pub(super) fn normalize(addr: &str) -> Result<String, ClientError> {
    normalize_with(addr, "http")
}

/// `addr` as a URL, `host:port` getting `scheme://`.
pub(super) fn normalize_with(addr: &str, scheme: &str) -> Result<String, ClientError> {
    let addr = addr.trim().trim_end_matches('/');
    if addr.is_empty() {
        return Err(ClientError::Address(addr.to_string()));
    }
    let url = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("{scheme}://{addr}")
    };
    Endpoint::from_shared(url.clone()).map_err(|_| ClientError::Address(url.clone()))?;
    Ok(url)
}

/// The leader's address named by a refusal's metadata.
pub(super) fn leader_hint(status: &Status) -> Option<String> {
    let value = status.metadata().get(LEADER_METADATA)?.to_str().ok()?;
    normalize(value).ok()
}

/// Whether a failed call may be tried again: the replica was unavailable (not the leader,
/// an election, a leader stepping down or loading), or the connection failed under the call
/// (a locally made status that carries the transport's error).
pub(super) fn retryable(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable => true,
        Code::Unknown | Code::Internal | Code::Cancelled => {
            std::error::Error::source(status).is_some()
        }
        _ => false,
    }
}

/// Whether a failure proves that the request was not carried out: no replica took it, or a
/// replica refused it up front because it is not the leader (and named the leader).
pub(super) fn refused_up_front(sent: bool, status: &Status) -> bool {
    !sent
        || (status.code() == Code::Unavailable
            && (leader_hint(status).is_some() || status.metadata().get(REFUSED_METADATA).is_some()))
}

/// Metadata a replica puts on a refusal when it did not carry the request out (it does not
/// lead, or is still loading its state).
pub use baton_proto::limits::REFUSED_METADATA;

/// Exponential backoff (backon): delays from 50-100 ms doubling to 1-2 s, each drawn from
/// the upper half of its cap, so tries neither align across clients nor spin. The same
/// policy as the servers' (`baton_common::retry`), kept here so that the SDK depends on the
/// protocol only.
pub(super) struct Backoff {
    delays: backon::ExponentialBackoff,
    hops: u32,
}

fn delays() -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(MIN_BACKOFF / 2)
        .with_max_delay(MAX_BACKOFF / 2)
        .with_jitter()
        .without_max_times()
        .build()
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            delays: delays(),
            hops: 0,
        }
    }
}

impl Backoff {
    pub(super) fn next(&mut self) -> Duration {
        self.delays.next().unwrap_or(MAX_BACKOFF).min(MAX_BACKOFF)
    }

    /// The delay after a refusal that named the leader at `hint` (dialled at `dialled`): none
    /// for the first few hops to another replica, else the backoff.
    pub(super) fn after_hint(&mut self, dialled: Option<&str>, hint: &str) -> Duration {
        if dialled != Some(hint) && self.hops < QUICK_HOPS {
            self.hops += 1;
            Duration::ZERO
        } else {
            self.next()
        }
    }

    pub(super) fn reset(&mut self) {
        *self = Backoff::default();
    }
}

/// A `FlowService` client that sends this client's token with every call.
pub(super) type Api = FlowServiceClient<InterceptedService<Channel, Bearer>>;

/// Adds `authorization: Bearer <token>` to every call (nothing without a token).
#[derive(Clone, Default)]
pub(super) struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// The header for `token`; a token that cannot be a header value is an error that
    /// does not show it.
    pub(super) fn new(token: Option<&str>) -> Result<Bearer, ClientError> {
        match token.map(str::trim).filter(|t| !t.is_empty()) {
            None => Ok(Bearer(None)),
            Some(t) => format!("Bearer {t}")
                .parse()
                .map(|v| Bearer(Some(v)))
                .map_err(|_| ClientError::Token),
        }
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// The replicas and what is known of their leader.
pub(super) struct Cluster {
    replicas: Vec<String>,
    state: Mutex<State>,
    bearer: Bearer,
    /// For `https://` replicas.
    tls: Option<crate::tls::TlsFiles>,
}

#[derive(Default)]
struct State {
    channels: HashMap<String, Channel>,
    /// The replica calls go to: the leader as far as is known.
    target: Option<String>,
    /// The highest epoch a replica reported; older reports are ignored.
    epoch: u64,
    /// Where the next search for the leader starts in `replicas`.
    turn: usize,
    /// A replica's advertised address → the address this client reached it at (they
    /// differ behind a proxy or NAT, or when a replica advertises a name the client does
    /// not use): a leader named by its advertised address is dialled where it answered.
    reached_at: HashMap<String, String>,
}

/// Whether the replica that wrote `report` says it leads.
fn names_itself(report: &pb::GetLeaderResponse) -> bool {
    report
        .replicas
        .iter()
        .any(|r| r.leader && !r.id.is_empty() && r.id == report.answered_by)
}

impl Cluster {
    pub(super) fn new(
        replicas: Vec<String>,
        bearer: Bearer,
        tls: Option<crate::tls::TlsFiles>,
    ) -> Self {
        Cluster {
            replicas,
            tls,
            state: Mutex::new(State::default()),
            bearer,
        }
    }

    pub(super) fn replicas(&self) -> &[String] {
        &self.replicas
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A client for `addr` over its (lazily connected, shared) channel.
    pub(super) fn client(&self, addr: &str) -> Result<Api, ClientError> {
        let mut state = self.lock();
        let channel = match state.channels.get(addr) {
            Some(c) => c.clone(),
            None => {
                let mut endpoint = Endpoint::from_shared(addr.to_string())
                    .map_err(|_| ClientError::Address(addr.to_string()))?;
                if addr.starts_with("https://") {
                    // Never plaintext to an address that asks for TLS.
                    let files = self
                        .tls
                        .as_ref()
                        .ok_or_else(|| ClientError::Tls(addr.to_string()))?;
                    endpoint = endpoint
                        .tls_config(files.config().map_err(ClientError::TlsFiles)?)
                        .map_err(|e| ClientError::TlsFiles(e.to_string()))?;
                }
                let channel = endpoint
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(KEEP_ALIVE)
                    .keep_alive_timeout(KEEP_ALIVE)
                    .connect_lazy();
                state.channels.insert(addr.to_string(), channel.clone());
                channel
            }
        };
        // The limit binds what this client accepts; what it sends is bounded by the server,
        // which refuses an oversized request with a clear status (a client-side encoding
        // limit would only reset the stream).
        Ok(
            FlowServiceClient::with_interceptor(channel, self.bearer.clone())
                .max_decoding_message_size(MAX_MESSAGE),
        )
    }

    /// The replica believed to lead, if any.
    pub(super) fn target(&self) -> Option<String> {
        self.lock().target.clone()
    }

    /// Calls go to the leader advertised at `addr` from now on (a refusal named it).
    pub(super) fn redirect(&self, addr: String) {
        let mut state = self.lock();
        let addr = state.reached_at.get(&addr).cloned().unwrap_or(addr);
        state.target = Some(addr);
    }

    /// `addr` failed: the leader is looked up again before the next call.
    pub(super) fn forget(&self, addr: &str) {
        let mut state = self.lock();
        if state.target.as_deref() == Some(addr) {
            state.target = None;
        }
    }

    /// Takes in a replica's report of the leader (`dialled`: where that replica was
    /// reached, when known); true when it named a leader at least as new as any reported
    /// before, which then becomes the target.
    pub(super) fn learn(&self, report: &pb::GetLeaderResponse, dialled: Option<&str>) -> bool {
        let mut state = self.lock();
        if let Some(dialled) = dialled {
            let own = report.replicas.iter().find(|r| r.id == report.answered_by);
            if let Some(advertised) = own.and_then(|r| normalize(&r.address).ok()) {
                if advertised != dialled {
                    state.reached_at.insert(advertised, dialled.to_string());
                }
            }
        }
        let Ok(leader) = normalize(&report.leader_address) else {
            return false;
        };
        if report.epoch < state.epoch {
            return false;
        }
        let leader = match dialled {
            Some(dialled) if names_itself(report) => dialled.to_string(),
            _ => state.reached_at.get(&leader).cloned().unwrap_or(leader),
        };
        state.epoch = report.epoch;
        state.target = Some(leader);
        true
    }

    /// Asks the replica at `addr` who leads.
    async fn ask(&self, addr: &str) -> Result<pb::GetLeaderResponse, Status> {
        let mut client = self
            .client(addr)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let asked = client.get_leader(pb::GetLeaderRequest {});
        match tokio::time::timeout(ASK_TIMEOUT, asked).await {
            Ok(answer) => answer.map(tonic::Response::into_inner),
            Err(_) => Err(Status::unavailable("no answer in time")),
        }
    }

    /// The address calls should go to: the known leader, else the one the replicas name
    /// (asked all at once: the leader's own answer wins; a follower's is taken when the
    /// leader has not answered shortly after), else the first replica that answered at all
    /// (no leader is known: it will refuse, and the caller backs off).
    pub(super) async fn leader(&self) -> Result<String, Status> {
        if let Some(target) = self.target() {
            return Ok(target);
        }
        let order: Vec<String> = {
            let mut state = self.lock();
            let n = self.replicas.len().max(1);
            let start = state.turn % n;
            state.turn = state.turn.wrapping_add(1);
            self.replicas
                .iter()
                .cycle()
                .skip(start)
                .take(self.replicas.len())
                .cloned()
                .collect()
        };
        let mut asks: FuturesUnordered<_> = order
            .into_iter()
            .map(|addr| async move {
                let answer = self.ask(&addr).await;
                (addr, answer)
            })
            .collect();
        let mut answered: Option<String> = None;
        let mut named: Option<tokio::time::Instant> = None;
        let mut errors = Vec::new();
        loop {
            let grace = named.map(tokio::time::sleep_until);
            let next = tokio::select! {
                next = asks.next() => next,
                _ = async { grace.unwrap().await }, if named.is_some() => None,
            };
            let Some((addr, answer)) = next else { break };
            match answer {
                Ok(report) => {
                    if self.learn(&report, Some(&addr)) {
                        if names_itself(&report) {
                            break;
                        }
                        named.get_or_insert_with(|| tokio::time::Instant::now() + LEADER_GRACE);
                    }
                    answered.get_or_insert(addr);
                }
                Err(status) => {
                    if let Some(hint) = leader_hint(&status) {
                        if named.is_none() {
                            self.redirect(hint);
                            named = Some(tokio::time::Instant::now() + LEADER_GRACE);
                        }
                        continue;
                    }
                    errors.push(format!("{addr}: {}", status.message()));
                }
            }
        }
        let mut state = self.lock();
        if let Some(target) = &state.target {
            return Ok(target.clone());
        }
        match answered {
            Some(addr) => {
                state.target = Some(addr.clone());
                Ok(addr)
            }
            None => Err(Status::unavailable(format!(
                "no scheduler replica answered ({})",
                errors.join("; ")
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_normalized() {
        assert_eq!(
            normalize("127.0.0.1:7070").unwrap(),
            "http://127.0.0.1:7070"
        );
        assert_eq!(normalize(" http://h:1/ ").unwrap(), "http://h:1");
        assert!(normalize("").is_err());
        assert!(normalize("http://bad host").is_err());
    }

    #[test]
    fn only_unavailable_and_transport_failures_are_retried() {
        assert!(retryable(&Status::unavailable("not the leader")));
        assert!(!retryable(&Status::not_found("no such run")));
        assert!(!retryable(&Status::unknown("from the server")));
        let local = Status::from_error(Box::new(std::io::Error::other("connection reset")));
        assert_eq!(local.code(), Code::Unknown);
        assert!(retryable(&local));
    }

    #[test]
    fn a_refusal_naming_the_leader_proves_nothing_was_done() {
        let mut refusal = Status::unavailable("not the leader; the leader is at http://l:1");
        refusal
            .metadata_mut()
            .insert(LEADER_METADATA, "http://l:1".parse().unwrap());
        assert_eq!(leader_hint(&refusal).as_deref(), Some("http://l:1"));
        assert!(refused_up_front(true, &refusal));
        assert!(!refused_up_front(
            true,
            &Status::unavailable("stepping down")
        ));
        assert!(refused_up_front(false, &Status::unavailable("no replica")));
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_two_seconds() {
        let mut b = Backoff::default();
        let first = b.next();
        assert!(
            first >= MIN_BACKOFF / 2 && first <= MIN_BACKOFF,
            "{first:?}"
        );
        for _ in 0..20 {
            assert!(b.next() <= MAX_BACKOFF);
        }
        assert!(b.next() >= MAX_BACKOFF / 2);
        b.reset();
        assert_eq!(
            b.after_hint(Some("http://a:1"), "http://b:1"),
            Duration::ZERO
        );
        assert!(b.after_hint(Some("http://b:1"), "http://b:1") > Duration::ZERO);
    }
}
