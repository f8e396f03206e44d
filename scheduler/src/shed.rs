//! Load shedding on the client API: a tower layer that bounds, per caller (its token's name,
//! or its IP address without authentication) and per connection, how many calls are in
//! flight (a streaming call until its response stream ends) and how fast a caller may call,
//! and how many client calls are in flight together. A call over a limit is answered
//! RESOURCE_EXHAUSTED at once, before it reaches a service. Workers' streams and health
//! checks are never shed, so a flood of clients cannot starve the workers.

use crate::auth::Identity;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;
use tower::{Layer, Service};

/// The limits; 0 turns one off.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ShedLimits {
    /// Calls in flight per caller.
    pub per_caller: u32,
    /// Calls in flight per connection.
    pub per_connection: u32,
    /// Calls in flight from all clients together.
    pub total: u32,
    /// Calls a second per caller, sustained; a caller may burst to twice this.
    pub rate: u32,
}

/// Beyond this many idle callers, the idle ones are forgotten.
const MAX_IDLE_CALLERS: usize = 10_000;

/// Who a call counts against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Caller {
    Token(Arc<str>),
    Address(IpAddr),
    Unknown,
}

#[derive(Debug)]
struct CallerState {
    in_flight: u32,
    tokens: f64,
    refilled: Instant,
}

#[derive(Debug, Default)]
struct Counts {
    callers: HashMap<Caller, CallerState>,
    connections: HashMap<SocketAddr, u32>,
    total: u32,
}

/// The shared counters of one server.
#[derive(Debug)]
pub struct Shedder {
    limits: ShedLimits,
    counts: Mutex<Counts>,
}

/// Why a call was shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Over {
    Caller,
    Connection,
    Total,
    Rate,
}

impl Shedder {
    pub fn new(limits: ShedLimits) -> Arc<Shedder> {
        Arc::new(Shedder {
            limits,
            counts: Mutex::default(),
        })
    }

    /// Admits a call of `caller` on `connection`, or says which limit it is over.
    fn admit(
        self: &Arc<Self>,
        caller: Caller,
        connection: Option<SocketAddr>,
        now: Instant,
    ) -> Result<Admitted, Over> {
        let l = self.limits;
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if l.total > 0 && counts.total >= l.total {
            return Err(Over::Total);
        }
        if let Some(c) = connection {
            let n = counts.connections.get(&c).copied().unwrap_or(0);
            if l.per_connection > 0 && n >= l.per_connection {
                return Err(Over::Connection);
            }
        }
        if counts.callers.len() >= MAX_IDLE_CALLERS && !counts.callers.contains_key(&caller) {
            forget_idle(&mut counts.callers, l.rate, now);
        }
        let burst = f64::from(l.rate) * 2.0;
        let state = counts.callers.entry(caller.clone()).or_insert(CallerState {
            in_flight: 0,
            tokens: burst,
            refilled: now,
        });
        if l.per_caller > 0 && state.in_flight >= l.per_caller {
            return Err(Over::Caller);
        }
        if l.rate > 0 {
            let elapsed = now.saturating_duration_since(state.refilled).as_secs_f64();
            state.tokens = (state.tokens + elapsed * f64::from(l.rate)).min(burst);
            state.refilled = now;
            if state.tokens < 1.0 {
                return Err(Over::Rate);
            }
            state.tokens -= 1.0;
        }
        state.in_flight += 1;
        if let Some(c) = connection {
            *counts.connections.entry(c).or_insert(0) += 1;
        }
        counts.total += 1;
        Ok(Admitted {
            shedder: self.clone(),
            caller,
            connection,
        })
    }

    /// Calls in flight now (for tests and metrics).
    pub fn in_flight(&self) -> u32 {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

/// Drops callers with nothing in flight and a full bucket (they lose nothing by it).
fn forget_idle(callers: &mut HashMap<Caller, CallerState>, rate: u32, now: Instant) {
    let burst = f64::from(rate) * 2.0;
    callers.retain(|_, s| {
        let elapsed = now.saturating_duration_since(s.refilled).as_secs_f64();
        s.in_flight > 0 || s.tokens + elapsed * f64::from(rate) < burst
    });
}

/// An admitted call; dropping it (when the response stream ends) gives its places back.
struct Admitted {
    shedder: Arc<Shedder>,
    caller: Caller,
    connection: Option<SocketAddr>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut counts = self
            .shedder
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(c) = self.connection {
            if let Some(n) = counts.connections.get_mut(&c) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.connections.remove(&c);
                }
            }
        }
        if let Some(s) = counts.callers.get_mut(&self.caller) {
            s.in_flight = s.in_flight.saturating_sub(1);
        }
    }
}

/// The peer's address of a call over TCP, with TLS or without.
fn remote_addr(ext: &http::Extensions) -> Option<SocketAddr> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    ext.get::<TcpConnectInfo>()
        .or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .map(|i| i.get_ref())
        })
        .and_then(TcpConnectInfo::remote_addr)
}

/// Whether a call to `path` is shed: everything but the workers' service and health checks.
fn sheddable(path: &str) -> bool {
    use baton_proto::worker_service_server as worker;
    use tonic_health::pb::health_server as health;
    let service = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .map_or("", |(s, _)| s);
    service != worker::SERVICE_NAME && service != health::SERVICE_NAME
}

fn refusal(over: Over, limits: ShedLimits) -> tonic::Status {
    let message = match over {
        Over::Caller => format!(
            "too many calls in flight from this caller (limit {}, --client-concurrency); \
             retry when some have ended",
            limits.per_caller
        ),
        Over::Connection => format!(
            "too many calls in flight on this connection (limit {}, --connection-concurrency)",
            limits.per_connection
        ),
        Over::Total => format!(
            "the scheduler has too many client calls in flight (limit {}, \
             --client-total-concurrency); retry shortly",
            limits.total
        ),
        Over::Rate => format!(
            "this caller calls faster than {} calls a second (--client-rate); slow down",
            limits.rate
        ),
    };
    tonic::Status::resource_exhausted(message)
}

/// Sheds client calls over the limits.
#[derive(Clone)]
pub struct ShedLayer {
    shedder: Arc<Shedder>,
}

impl ShedLayer {
    pub fn new(shedder: Arc<Shedder>) -> Self {
        ShedLayer { shedder }
    }
}

impl<S> Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Shed {
            inner,
            shedder: self.shedder.clone(),
        }
    }
}

/// A service behind [`ShedLayer`] (and behind the authentication layer, whose identity
/// names the caller).
#[derive(Clone)]
pub struct Shed<S> {
    inner: S,
    shedder: Arc<Shedder>,
}

impl<S, B> Service<http::Request<B>> for Shed<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if !sheddable(req.uri().path()) {
            return Box::pin(self.inner.call(req));
        }
        let remote = remote_addr(req.extensions());
        let caller = match (req.extensions().get::<Identity>(), remote) {
            (Some(id), _) => Caller::Token(id.name.clone()),
            (None, Some(addr)) => Caller::Address(addr.ip()),
            (None, None) => Caller::Unknown,
        };
        let admitted = match self.shedder.admit(caller, remote, Instant::now()) {
            Ok(a) => a,
            Err(over) => {
                let response = refusal(over, self.shedder.limits).into_http();
                return Box::pin(async move { Ok(response) });
            }
        };
        let call = self.inner.call(req);
        Box::pin(async move {
            let response = call.await?;
            // The places are held until the response body (a stream, for watches and logs)
            // is dropped.
            Ok(response.map(|body| {
                tonic::body::Body::new(Holding {
                    body,
                    _admitted: admitted,
                })
            }))
        })
    }
}

/// A response body holding its call's places.
struct Holding {
    body: tonic::body::Body,
    _admitted: Admitted,
}

impl http_body::Body for Holding {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(per_caller: u32, per_connection: u32, total: u32, rate: u32) -> ShedLimits {
        ShedLimits {
            per_caller,
            per_connection,
            total,
            rate,
        }
    }

    fn token(name: &str) -> Caller {
        Caller::Token(name.into())
    }

    #[test]
    fn in_flight_limits_per_caller_connection_and_in_all() {
        let s = Shedder::new(limits(3, 2, 5, 0));
        let now = Instant::now();
        let c1: SocketAddr = "127.0.0.1:1000".parse().expect("addr");
        let c2: SocketAddr = "127.0.0.1:1001".parse().expect("addr");
        let a1 = s.admit(token("a"), Some(c1), now).expect("1st");
        let _a2 = s.admit(token("a"), Some(c1), now).expect("2nd");
        assert_eq!(
            s.admit(token("a"), Some(c1), now).err(),
            Some(Over::Connection)
        );
        let _a3 = s
            .admit(token("a"), Some(c2), now)
            .expect("3rd, another connection");
        assert_eq!(s.admit(token("a"), Some(c2), now).err(), Some(Over::Caller));
        // Another caller is not held back by the first...
        let _b1 = s.admit(token("b"), None, now).expect("b");
        let _b2 = s.admit(token("b"), None, now).expect("b");
        // ...until all clients together reach the total.
        assert_eq!(s.admit(token("c"), None, now).err(), Some(Over::Total));
        assert_eq!(s.in_flight(), 5);
        // An ended call gives its places back.
        drop(a1);
        assert_eq!(s.in_flight(), 4);
        let _a4 = s.admit(token("a"), Some(c1), now).expect("after one ended");
        assert!(s.counts.lock().expect("lock").connections.len() <= 2);
    }

    #[test]
    fn a_caller_bursts_to_twice_its_rate_then_refills() {
        let s = Shedder::new(limits(0, 0, 0, 10));
        let start = Instant::now();
        let admitted = (0..30)
            .filter(|_| s.admit(token("a"), None, start).is_ok())
            .count();
        assert_eq!(admitted, 20, "a burst of twice the rate");
        assert_eq!(s.admit(token("a"), None, start).err(), Some(Over::Rate));
        assert!(s.admit(token("b"), None, start).is_ok(), "another caller");
        // A second later, ten more.
        let later = start + Duration::from_secs(1);
        let admitted = (0..30)
            .filter(|_| s.admit(token("a"), None, later).is_ok())
            .count();
        assert_eq!(admitted, 10);
    }

    #[test]
    fn idle_callers_are_forgotten_and_only_clients_are_shed() {
        let s = Shedder::new(limits(0, 0, 0, 1));
        let now = Instant::now();
        for i in 0..MAX_IDLE_CALLERS as u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            drop(s.admit(Caller::Address(ip), None, now));
        }
        let later = now + Duration::from_secs(10);
        drop(s.admit(token("new"), None, later));
        assert!(s.counts.lock().expect("lock").callers.len() < 10);
        assert!(!sheddable("/baton.v1.WorkerService/Connect"));
        assert!(!sheddable("/grpc.health.v1.Health/Check"));
        assert!(sheddable("/baton.v1.FlowService/WatchRun"));
    }
}
