//! Network partitions without root: a TCP forwarding proxy on a loopback port that can be
//! cut and healed. Point a client (or a server's peer address) at [`Proxy::addr`] instead
//! of the real target; [`Proxy::cut`] then drops its traffic the way a partition does.
//!
//! Semantics, chosen to look like a network that silently drops packets:
//! - **cut**: open connections freeze: the proxy stops reading and forwarding in both
//!   directions and closes nothing (no FIN, no RST), so each end only notices through its
//!   own timeouts (request deadlines, HTTP/2 keep-alive, leases). New connections are
//!   accepted but never forwarded (nor connected to the target).
//! - **heal**: connections frozen by the cut are closed with a reset (RST), as a real
//!   partition that outlived TCP's retransmission timeout would leave them; new connections
//!   are forwarded again, so clients recover by reconnecting.
//! - [`Proxy::reset`]: every open connection is reset at once (a crashed middlebox).
//!
//! One difference from dropped packets remains: while cut, bytes a peer sends still fill
//! the proxy's kernel buffers and are acknowledged at the TCP level, so only
//! application-level timeouts fire (not TCP retransmission timeouts or `TCP_USER_TIMEOUT`).
//!
//! The proxy runs on its own single-worker tokio runtime (a thread of its own), so it works
//! from sync code and from any test runtime, and keeps forwarding while a test blocks.
//! Dropping the [`Proxy`] stops it and closes all its connections.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the connection tasks obey.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct State {
    cut: bool,
    /// Bumped by [`Proxy::reset`] and by [`Proxy::heal`] after a cut.
    resets: u64,
}

/// A cuttable TCP forwarder from a free loopback port to `target`.
pub struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    state: watch::Sender<State>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards each connection to `target`.
    pub fn start(target: SocketAddr) -> anyhow::Result<Proxy> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("baton-testkit-proxy")
            .enable_all()
            .build()?;
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let listener = {
            let _rt = runtime.enter();
            TcpListener::from_std(std_listener)?
        };
        let (state, rx) = watch::channel(State::default());
        runtime.spawn(accept_loop(listener, target, rx));
        Ok(Proxy {
            addr,
            target,
            state,
            runtime: Some(runtime),
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, for gRPC clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where traffic goes.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Whether the proxy is cut now.
    pub fn is_cut(&self) -> bool {
        self.state.borrow().cut
    }

    /// Partitions: freezes open connections and stops forwarding new ones.
    pub fn cut(&self) {
        self.state.send_modify(|s| s.cut = true);
    }

    /// Ends a partition: resets the connections frozen by [`Proxy::cut`] and forwards new
    /// ones again. Does nothing when not cut.
    pub fn heal(&self) {
        self.state.send_if_modified(|s| {
            if !s.cut {
                return false;
            }
            s.cut = false;
            s.resets += 1;
            true
        });
    }

    /// Resets every open connection now (RST to both ends), cut or not; whether new
    /// connections are forwarded stays as it was.
    pub fn reset(&self) {
        self.state.send_modify(|s| s.resets += 1);
    }

    /// [`Proxy::cut`] plus [`Proxy::reset`]: both ends see their connections reset at once
    /// and new connections hang until [`Proxy::heal`].
    pub fn cut_now_and_reset(&self) {
        self.state.send_modify(|s| {
            s.cut = true;
            s.resets += 1;
        });
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Allowed from inside another runtime, unlike a plain drop.
            rt.shutdown_background();
        }
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, rx: watch::Receiver<State>) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                let _ = client.set_nodelay(true);
                tokio::spawn(connection(client, target, rx.clone()));
            }
            // Out of file descriptors and the like: try again shortly.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn connection(client: TcpStream, target: SocketAddr, mut rx: watch::Receiver<State>) {
    let seen = *rx.borrow_and_update();
    if seen.cut {
        hold(vec![client], rx, seen.resets).await;
        return;
    }
    let upstream =
        match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(target)).await {
            Ok(Ok(s)) => s,
            // The target is down: look like it to the client.
            _ => {
                reset_all(vec![client]);
                return;
            }
        };
    let _ = upstream.set_nodelay(true);
    let (mut client, mut upstream) = (client, upstream);
    let outcome = {
        let forward = copy_bidirectional(&mut client, &mut upstream);
        let watch_state = next_event(&mut rx, seen.resets);
        tokio::select! {
            // A cut wins over bytes that are ready at the same time.
            biased;
            ev = watch_state => Some(ev),
            _ = forward => None,
        }
    };
    match outcome {
        // Both ends closed normally.
        None => {}
        Some(Event::Gone) => {}
        Some(Event::Reset) => reset_all(vec![client, upstream]),
        Some(Event::Cut) => hold(vec![client, upstream], rx, seen.resets).await,
    }
}

enum Event {
    Cut,
    Reset,
    /// The proxy was dropped.
    Gone,
}

/// Waits for a cut or a reset newer than `resets`.
async fn next_event(rx: &mut watch::Receiver<State>, resets: u64) -> Event {
    loop {
        {
            let s = *rx.borrow_and_update();
            if s.resets != resets {
                return Event::Reset;
            }
            if s.cut {
                return Event::Cut;
            }
        }
        if rx.changed().await.is_err() {
            return Event::Gone;
        }
    }
}

/// Keeps frozen sockets open, reading nothing, until a heal or reset; then resets them.
async fn hold(sockets: Vec<TcpStream>, mut rx: watch::Receiver<State>, resets: u64) {
    loop {
        {
            let s = *rx.borrow_and_update();
            if s.resets != resets || !s.cut {
                break;
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
    reset_all(sockets);
}

/// Closes with RST rather than FIN.
fn reset_all(sockets: Vec<TcpStream>) {
    for s in sockets {
        let _ = s.set_zero_linger();
        drop(s);
    }
}
