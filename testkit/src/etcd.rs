//! A real etcd cluster for tests: n members of Debian's `etcd` (3.4, installed by
//! `scripts/install-test-servers.sh`) as plain processes on free loopback ports, each with its
//! own data dir and log under one temp folder, bootstrapped statically. Members can be killed
//! (-9), paused (SIGSTOP), resumed and restarted on the same ports and data; dropping the
//! cluster kills every member and removes the folder.
//!
//! Flags: `--heartbeat-interval 100 --election-timeout 1000` (a new leader about 1–2 s after
//! the old one dies), `--logger zap`, a cluster token unique to each cluster so that members
//! of two test clusters can never join each other.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

use crate::{free_port, Node};

/// How long one health or status request may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a cluster may take to start or to become healthy again.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether a member's process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    Running,
    /// Stopped with SIGSTOP: its ports accept connections but nothing answers.
    Paused,
    Killed,
}

/// One etcd member.
pub struct EtcdMember {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// etcd's raft member id, learned once the member has answered (0 before).
    pub id: u64,
    /// How many times it has been restarted.
    pub generation: usize,
    /// Whether it serves clients over TLS.
    tls: bool,
    state: MemberState,
    node: Option<Node>,
}

impl EtcdMember {
    /// `http://127.0.0.1:<client port>` (`https://` with TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The client address, e.g. to put a [`crate::proxy::Proxy`] in front of it.
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }

    pub fn state(&self) -> MemberState {
        self.state
    }

    /// Its process while not killed.
    pub fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }
}

/// n etcd members forming one cluster.
pub struct EtcdCluster {
    // Declared before `dir`: the processes die before their data is removed.
    members: Vec<EtcdMember>,
    etcd: PathBuf,
    initial_cluster: String,
    token: String,
    tls: Option<EtcdTls>,
    dir: tempfile::TempDir,
}

/// An etcd cluster's TLS: the members' certificate and key, the CA their clients'
/// certificates need (`--client-cert-auth`), and the options a client of theirs uses.
#[derive(Clone)]
pub struct EtcdTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    /// The client side: the CA and a client certificate.
    pub client: etcd_client::TlsOptions,
}

impl EtcdCluster {
    /// Starts `n` members and waits until every one answers and they agree on a leader.
    /// Retries with new ports (twice) if a member exits while starting, e.g. because another
    /// test took one of its ports.
    pub async fn start(n: usize) -> anyhow::Result<EtcdCluster> {
        Self::start_with(n, None).await
    }

    /// [`EtcdCluster::start`], serving clients over TLS only when `tls` is given.
    pub async fn start_with(n: usize, tls: Option<EtcdTls>) -> anyhow::Result<EtcdCluster> {
        anyhow::ensure!(n >= 1, "an etcd cluster needs at least one member");
        let etcd = etcd_binary()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut cluster = Self::spawn(n, etcd.clone(), tls.clone())?;
            match cluster.wait_healthy().await {
                Ok(()) => return Ok(cluster),
                Err(e) if attempt < 3 && cluster.any_exited() => {
                    eprintln!("etcd cluster did not start ({e:#}); retrying on new ports");
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn spawn(n: usize, etcd: PathBuf, tls: Option<EtcdTls>) -> anyhow::Result<EtcdCluster> {
        let dir = tempfile::Builder::new().prefix("baton-etcd-").tempdir()?;
        let mut ports = Vec::new();
        while ports.len() < 2 * n {
            let p = free_port()?;
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        let members: Vec<EtcdMember> = (0..n)
            .map(|i| EtcdMember {
                name: format!("etcd-{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                data_dir: dir.path().join(format!("etcd-{i}.data")),
                log: dir.path().join(format!("etcd-{i}.log")),
                id: 0,
                generation: 0,
                tls: tls.is_some(),
                state: MemberState::Killed,
                node: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let token = dir
            .path()
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("baton-etcd-{}", std::process::id()));
        let mut cluster = EtcdCluster {
            members,
            etcd,
            initial_cluster,
            token,
            tls,
            dir,
        };
        for i in 0..n {
            cluster.spawn_member(i)?;
        }
        Ok(cluster)
    }

    fn spawn_member(&mut self, i: usize) -> anyhow::Result<()> {
        let m = &self.members[i];
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let mut tls_args = Vec::new();
        if let Some(t) = &self.tls {
            for (flag, path) in [
                ("--cert-file", &t.cert),
                ("--key-file", &t.key),
                ("--trusted-ca-file", &t.ca),
            ] {
                tls_args.push(flag.to_string());
                tls_args.push(path.display().to_string());
            }
            tls_args.push("--client-cert-auth".to_string());
        }
        let args: Vec<String> = [
            "--name",
            &m.name,
            "--data-dir",
            &m.data_dir.display().to_string(),
            "--listen-client-urls",
            &m.endpoint(),
            "--advertise-client-urls",
            &m.endpoint(),
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &self.initial_cluster,
            "--initial-cluster-token",
            &self.token,
            "--initial-cluster-state",
            "new",
            "--heartbeat-interval",
            "100",
            "--election-timeout",
            "1000",
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(tls_args)
        .collect();
        let node = Node::spawn_program(&self.etcd, &m.name, &args, m.log.clone())?;
        let m = &mut self.members[i];
        m.node = Some(node);
        m.state = MemberState::Running;
        Ok(())
    }

    /// The client side of its TLS, if it serves TLS.
    pub fn client_tls(&self) -> Option<etcd_client::TlsOptions> {
        self.tls.as_ref().map(|t| t.client.clone())
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether it has no members (never, once started).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Every member's client URL, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(EtcdMember::endpoint).collect()
    }

    /// Member `i`.
    pub fn member(&self, i: usize) -> &EtcdMember {
        &self.members[i]
    }

    /// The folder that holds the data dirs and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client balanced over all members.
    pub async fn client(&self) -> anyhow::Result<Client> {
        connect(self.endpoints(), self.client_tls()).await
    }

    /// A client of member `i` alone.
    pub async fn member_client(&self, i: usize) -> anyhow::Result<Client> {
        connect(vec![self.members[i].endpoint()], self.client_tls()).await
    }

    /// SIGKILL member `i` (its data dir stays, for [`EtcdCluster::restart`]).
    pub fn kill9(&mut self, i: usize) {
        let m = &mut self.members[i];
        if let Some(mut node) = m.node.take() {
            node.kill9();
        }
        m.state = MemberState::Killed;
    }

    /// SIGSTOP member `i`.
    pub fn pause(&mut self, i: usize) {
        let m = &mut self.members[i];
        if let Some(node) = &m.node {
            node.pause();
            m.state = MemberState::Paused;
        }
    }

    /// SIGCONT member `i`.
    pub fn resume(&mut self, i: usize) {
        let m = &mut self.members[i];
        if let Some(node) = &m.node {
            node.resume();
            m.state = MemberState::Running;
        }
    }

    /// Kills member `i` if it still runs, starts it again on the same ports and data dir
    /// (it rejoins the cluster), and waits until the cluster is healthy.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill9(i);
        self.spawn_member(i)?;
        let m = &mut self.members[i];
        m.generation += 1;
        if let Some(node) = &mut m.node {
            node.generation = m.generation;
        }
        self.wait_healthy().await
    }

    /// Which member is etcd's raft leader: the leader id that a majority of all members
    /// report (asking the running ones), mapped to its member. `None` while no majority
    /// agrees (an election runs, or too many members are down). A paused leader can still
    /// be reported for an election timeout after it stopped.
    pub async fn leader_index(&self) -> Option<usize> {
        let statuses = self.statuses().await;
        let quorum = self.members.len() / 2 + 1;
        let mut counts: Vec<(u64, usize)> = Vec::new();
        for s in statuses.iter().filter(|s| s.leader != 0) {
            match counts.iter_mut().find(|(id, _)| *id == s.leader) {
                Some((_, c)) => *c += 1,
                None => counts.push((s.leader, 1)),
            }
        }
        let (leader, _) = counts.into_iter().find(|&(_, c)| c >= quorum)?;
        // Prefer the id a member just reported for itself, else the one learned earlier.
        statuses
            .iter()
            .find(|s| s.member_id == leader)
            .map(|s| s.index)
            .or_else(|| self.members.iter().position(|m| m.id == leader))
    }

    /// Waits until every running member answers a status and a linearizable read, and a
    /// running member leads (a majority agreeing). Fails early, with the logs, if a member
    /// that should run has exited.
    pub async fn wait_healthy(&mut self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + HEALTHY_TIMEOUT;
        loop {
            if self.any_exited() {
                anyhow::bail!("an etcd member exited\n{}", self.logs());
            }
            if self.healthy().await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "etcd cluster not healthy after {HEALTHY_TIMEOUT:?}\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn healthy(&mut self) -> bool {
        let statuses = self.statuses().await;
        for s in &statuses {
            self.members[s.index].id = s.member_id;
        }
        let running: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].state == MemberState::Running)
            .collect();
        if running
            .iter()
            .any(|i| !statuses.iter().any(|s| s.index == *i && s.leader != 0))
        {
            return false;
        }
        match self.leader_index().await {
            Some(l) if self.members[l].state == MemberState::Running => {}
            _ => return false,
        }
        for &i in &running {
            let endpoint = self.members[i].endpoint();
            let tls = self.client_tls();
            let read = async move {
                let mut c = connect(vec![endpoint], tls).await.ok()?;
                c.get("baton-testkit/health", None).await.ok()
            };
            if !matches!(tokio::time::timeout(PROBE_TIMEOUT, read).await, Ok(Some(_))) {
                return false;
            }
        }
        true
    }

    /// The status of each running member that answers within [`PROBE_TIMEOUT`].
    async fn statuses(&self) -> Vec<Status> {
        let mut probes = tokio::task::JoinSet::new();
        for (index, m) in self.members.iter().enumerate() {
            if m.state != MemberState::Running {
                continue;
            }
            let endpoint = m.endpoint();
            let tls = self.client_tls();
            probes.spawn(async move {
                let probe = async {
                    let mut c = connect(vec![endpoint], tls).await.ok()?;
                    let s = c.status().await.ok()?;
                    Some(Status {
                        index,
                        member_id: s.header()?.member_id(),
                        leader: s.leader(),
                    })
                };
                tokio::time::timeout(PROBE_TIMEOUT, probe)
                    .await
                    .ok()
                    .flatten()
            });
        }
        let mut out = Vec::new();
        while let Some(r) = probes.join_next().await {
            if let Ok(Some(s)) = r {
                out.push(s);
            }
        }
        out.sort_by_key(|s| s.index);
        out
    }

    /// Whether a member that should run (running or paused) has exited.
    fn any_exited(&mut self) -> bool {
        self.members
            .iter_mut()
            .any(|m| m.node.as_mut().is_some_and(|n| !n.alive()))
    }

    /// The last lines of every member's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for m in &self.members {
            let text = std::fs::read_to_string(&m.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out.push_str(&format!(
                "==== {} ({:?}) {} (last lines)\n",
                m.name,
                m.state,
                m.log.display()
            ));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

struct Status {
    index: usize,
    member_id: u64,
    leader: u64,
}

/// A client of `endpoints` whose connection attempts give up within a second. No request
/// timeout: a campaign may rightly block for long; callers wrap requests in their own.
async fn connect(
    endpoints: Vec<String>,
    tls: Option<etcd_client::TlsOptions>,
) -> anyhow::Result<Client> {
    let mut options = ConnectOptions::new().with_connect_timeout(PROBE_TIMEOUT);
    if let Some(tls) = tls {
        options = options.with_tls(tls);
    }
    Ok(Client::connect(endpoints, Some(options)).await?)
}

/// `$BATON_ETCD`, else `etcd` on the PATH.
fn etcd_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("BATON_ETCD") {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!("etcd not found on PATH: run scripts/install-test-servers.sh")
        })
}
