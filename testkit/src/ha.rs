//! A whole cluster of real processes for fault tests: an etcd cluster, an S3 server, N
//! scheduler replicas and M workers. Every replica reaches each etcd member through a
//! proxy of its own, and workers reach each replica through that replica's "front" proxy
//! (the address it advertises), so a replica can be cut off from etcd only or from the
//! workers only. A background poller records every epoch any replica reports, to check
//! that epochs never decrease.

use crate::etcd::EtcdCluster;
use crate::proxy::Proxy;
use crate::s3::S3Server;
use crate::{eventually, free_port, Node};
use baton_proto as pb;
use pb::flow_service_client::FlowServiceClient;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::Endpoint;

/// Settings of an [`HaCluster`].
#[derive(Clone, Debug)]
pub struct HaConfig {
    pub schedulers: usize,
    pub etcd_members: usize,
    /// The leadership lease (etcd lease TTL), ms.
    pub leader_lease_ms: u64,
    /// A silent worker's attempts are re-dispatched after this long, ms.
    pub worker_lease_ms: u64,
    /// How long a new leader waits for workers to report their attempts, ms.
    pub adopt_grace_ms: u64,
    /// How long a worker keeps running tasks without a reachable leader, ms.
    pub worker_leader_lease_ms: u64,
    /// More scheduler flags.
    pub scheduler_args: Vec<String>,
    /// More scheduler environment variables (e.g. `BATON_FAULT_*` fault injection).
    pub extra_env: Vec<(String, String)>,
    /// TLS between every process: etcd serves TLS with client certificate auth, the
    /// schedulers serve mutual TLS, and workers and clients show certificates.
    pub tls: bool,
    /// More worker environment variables (e.g. `BATON_SECRET_*` secrets).
    pub worker_env: Vec<(String, String)>,
}

impl Default for HaConfig {
    fn default() -> Self {
        HaConfig {
            schedulers: 3,
            etcd_members: 3,
            leader_lease_ms: 4_000,
            worker_lease_ms: 3_000,
            adopt_grace_ms: 2_000,
            worker_leader_lease_ms: 15_000,
            scheduler_args: Vec::new(),
            extra_env: Vec::new(),
            tls: false,
            worker_env: Vec::new(),
        }
    }
}

/// One scheduler replica and its proxies.
pub struct Replica {
    pub node: Option<Node>,
    /// Its own port (clients in tests may dial it directly).
    pub port: u16,
    /// Its paths to each etcd member.
    pub etcd_proxies: Vec<Proxy>,
    /// The path workers (and redirected clients) take to it; its advertised address.
    pub front: Proxy,
    generation: usize,
    /// Whether it serves TLS.
    tls: bool,
}

/// `url` with `https://` when `tls`.
fn scheme(url: String, tls: bool) -> String {
    if tls {
        url.replacen("http://", "https://", 1)
    } else {
        url
    }
}

impl Replica {
    /// Its direct URL.
    pub fn url(&self) -> String {
        scheme(format!("http://127.0.0.1:{}", self.port), self.tls)
    }

    /// Its advertised address (through its front proxy).
    pub fn front_url(&self) -> String {
        scheme(self.front.url(), self.tls)
    }
}

/// The files of a TLS cluster: one CA signs every certificate.
pub struct ClusterTls {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// The one client certificate schedulers (to etcd), workers and clients show.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl ClusterTls {
    fn write(dir: &std::path::Path) -> anyhow::Result<ClusterTls> {
        let ca = crate::certs::Ca::new("baton test cluster CA")?;
        let ca_file = ca.write(&dir.join("ca.pem"))?;
        let (server_cert, server_key) = ca.issue(&["127.0.0.1", "localhost"], dir, "server")?;
        let (client_cert, client_key) = ca.issue(&["baton-test-client"], dir, "client")?;
        Ok(ClusterTls {
            ca: ca_file,
            server_cert,
            server_key,
            client_cert,
            client_key,
        })
    }

    /// What a client of the schedulers uses.
    pub fn client_files(&self) -> baton_client::tls::TlsFiles {
        baton_client::tls::TlsFiles {
            ca: Some(self.ca.clone()),
            cert: Some(self.client_cert.clone()),
            key: Some(self.client_key.clone()),
        }
    }

    fn etcd(&self) -> anyhow::Result<crate::etcd::EtcdTls> {
        let client = self
            .client_files()
            .config()
            .map_err(|e| anyhow::anyhow!(e))?;
        Ok(crate::etcd::EtcdTls {
            cert: self.server_cert.clone(),
            key: self.server_key.clone(),
            ca: self.ca.clone(),
            client,
        })
    }

    /// Flags of a worker or the CLI.
    fn client_args(&self) -> Vec<String> {
        let p = |p: &PathBuf| p.display().to_string();
        vec![
            "--tls-ca".into(),
            p(&self.ca),
            "--tls-cert".into(),
            p(&self.client_cert),
            "--tls-key".into(),
            p(&self.client_key),
        ]
    }
}

/// The admin token of every [`HaCluster`] (fixed, so that [`crate::baton_cli`] can send it;
/// a scheduler without authentication ignores it).
pub const TEST_ADMIN_TOKEN: &str = "baton_test_admin_token_of_the_testkit_clusters";

/// The cluster's tokens: an admin token for clients and one worker token for every worker,
/// and the tokens file the schedulers read (only their hashes).
struct ClusterTokens {
    admin: String,
    worker: String,
    file: PathBuf,
}

impl ClusterTokens {
    fn write(dir: &std::path::Path) -> anyhow::Result<ClusterTokens> {
        use baton_scheduler::auth::{tokens, Role};
        let (admin, worker) = (TEST_ADMIN_TOKEN.to_string(), tokens::generate());
        let file = dir.join("tokens");
        let entries = [
            tokens::entry(Role::Admin, "tests", &admin),
            tokens::entry(Role::Worker, "*", &worker),
        ];
        std::fs::write(&file, entries.join("\n"))?;
        Ok(ClusterTokens {
            admin,
            worker,
            file,
        })
    }
}

/// (replica index, epoch) seen by the poller, in order.
pub type EpochLog = Arc<Mutex<Vec<(usize, u64)>>>;

/// See the module docs.
pub struct HaCluster {
    pub cfg: HaConfig,
    pub replicas: Vec<Replica>,
    pub workers: Vec<Node>,
    pub etcd: EtcdCluster,
    pub s3: S3Server,
    pub epochs: EpochLog,
    stop_poll: Arc<std::sync::atomic::AtomicBool>,
    tokens: ClusterTokens,
    tls: Option<ClusterTls>,
    // Last, so that processes die before their folder goes.
    pub dir: tempfile::TempDir,
}

impl HaCluster {
    /// Starts etcd, S3 and the replicas, and waits until one leads.
    pub async fn start(cfg: HaConfig) -> anyhow::Result<HaCluster> {
        let dir = tempfile::Builder::new().prefix("baton-ha-").tempdir()?;
        let tls = if cfg.tls {
            Some(ClusterTls::write(dir.path())?)
        } else {
            None
        };
        let etcd_tls = tls.as_ref().map(ClusterTls::etcd).transpose()?;
        let etcd = EtcdCluster::start_with(cfg.etcd_members, etcd_tls).await?;
        let s3 = S3Server::start().await?;
        let mut replicas = Vec::new();
        for _ in 0..cfg.schedulers {
            let port = free_port()?;
            let target: SocketAddr = format!("127.0.0.1:{port}").parse()?;
            let front = Proxy::start(target)?;
            let mut etcd_proxies = Vec::new();
            for i in 0..etcd.len() {
                etcd_proxies.push(Proxy::start(etcd.member(i).client_addr())?);
            }
            replicas.push(Replica {
                node: None,
                port,
                etcd_proxies,
                front,
                generation: 0,
                tls: tls.is_some(),
            });
        }
        let epochs: EpochLog = Arc::default();
        let stop_poll = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tokens = ClusterTokens::write(dir.path())?;
        let mut c = HaCluster {
            tls,
            tokens,
            cfg,
            replicas,
            workers: Vec::new(),
            etcd,
            s3,
            epochs,
            stop_poll,
            dir,
        };
        for i in 0..c.replicas.len() {
            c.spawn_scheduler(i)?;
        }
        c.start_epoch_poller();
        c.wait_leader(Duration::from_secs(30), None).await?;
        Ok(c)
    }

    /// The result store all nodes use.
    pub fn result_store(&self) -> String {
        self.s3.uri("cluster")
    }

    /// The admin token every client of the cluster shows (its schedulers require tokens).
    pub fn token(&self) -> &str {
        &self.tokens.admin
    }

    /// The TLS files a client shows, when the cluster runs TLS.
    pub fn client_tls(&self) -> Option<baton_client::tls::TlsFiles> {
        self.tls.as_ref().map(ClusterTls::client_files)
    }

    /// The CLI's TLS flags (none without TLS).
    pub fn cli_tls_args(&self) -> Vec<String> {
        self.tls
            .as_ref()
            .map(ClusterTls::client_args)
            .unwrap_or_default()
    }

    fn spawn_scheduler(&mut self, i: usize) -> anyhow::Result<()> {
        let r = &self.replicas[i];
        let tls = self.tls.is_some();
        let etcd: Vec<String> = r
            .etcd_proxies
            .iter()
            .map(|p| scheme(p.url(), tls))
            .collect();
        let mut args = vec![
            "--listen".to_string(),
            format!("127.0.0.1:{}", r.port),
            "--data-dir".to_string(),
            self.dir
                .path()
                .join(format!("sched-{i}"))
                .display()
                .to_string(),
            "--etcd".to_string(),
            etcd.join(","),
            "--advertise".to_string(),
            r.front_url(),
            "--replica-id".to_string(),
            format!("s{i}"),
            "--result-store".to_string(),
            self.result_store(),
            "--leader-lease-ms".to_string(),
            self.cfg.leader_lease_ms.to_string(),
            "--worker-lease-ms".to_string(),
            self.cfg.worker_lease_ms.to_string(),
            "--heartbeat-ms".to_string(),
            (self.cfg.worker_lease_ms / 4).max(100).to_string(),
            "--adopt-grace-ms".to_string(),
            self.cfg.adopt_grace_ms.to_string(),
            "--tokens-file".to_string(),
            self.tokens.file.display().to_string(),
        ];
        if let Some(t) = &self.tls {
            let p = |p: &PathBuf| p.display().to_string();
            for (flag, path) in [
                ("--etcd-ca", &t.ca),
                ("--etcd-cert", &t.client_cert),
                ("--etcd-key", &t.client_key),
                ("--tls-cert", &t.server_cert),
                ("--tls-key", &t.server_key),
                ("--tls-client-ca", &t.ca),
            ] {
                args.push(flag.to_string());
                args.push(p(path));
            }
        }
        args.extend(self.cfg.scheduler_args.iter().cloned());
        let generation = r.generation;
        let log = self
            .dir
            .path()
            .join(format!("scheduler-{i}.{generation}.log"));
        let mut env = self.s3.env();
        env.extend(self.cfg.extra_env.iter().cloned());
        let node = Node::spawn_env("baton-scheduler", &args, &env, log)?;
        self.replicas[i].node = Some(node);
        Ok(())
    }

    /// Direct URLs of all replicas.
    pub fn urls(&self) -> Vec<String> {
        self.replicas.iter().map(Replica::url).collect()
    }

    /// Addresses a client should be given (all replicas, direct).
    pub fn scheduler_list(&self) -> String {
        self.urls().join(",")
    }

    fn start_epoch_poller(&self) {
        let urls = self.urls();
        let tls = self.client_tls();
        let log = self.epochs.clone();
        let stop = self.stop_poll.clone();
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (i, url) in urls.iter().enumerate() {
                    if let Some(info) = leader_info_with(url, tls.as_ref()).await {
                        if info.epoch > 0 && !info.leader_address.is_empty() {
                            let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
                            if l.last().map(|(_, e)| *e) != Some(info.epoch) {
                                l.push((i, info.epoch));
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }

    /// Asserts that the epochs reported over time never decreased.
    pub fn assert_epochs_monotonic(&self) {
        let log = self
            .epochs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // Replicas can lag in what they report, so check per replica and overall maxima.
        let mut max_per: Vec<u64> = vec![0; self.replicas.len()];
        for (i, e) in &log {
            assert!(
                *e >= max_per[*i],
                "replica {i} reported epoch {e} after {}: {log:?}",
                max_per[*i]
            );
            max_per[*i] = *e;
        }
    }

    /// The index of the replica that says it leads, with its epoch.
    pub async fn leader(&self) -> Option<(usize, u64)> {
        for (i, r) in self.replicas.iter().enumerate() {
            if r.node.is_none() {
                continue;
            }
            let tls = self.client_tls();
            if let Some(info) = leader_info_with(&r.url(), tls.as_ref()).await {
                if info.leader_address == r.front_url() && info.answered_by == format!("s{i}") {
                    return Some((i, info.epoch));
                }
            }
        }
        None
    }

    /// Waits for a leader (other than `not`, if given) and returns it with its epoch.
    pub async fn wait_leader(
        &self,
        limit: Duration,
        not: Option<usize>,
    ) -> anyhow::Result<(usize, u64)> {
        eventually(limit, "a scheduler to lead", || async move {
            self.leader().await.filter(|(i, _)| Some(*i) != not)
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", self.logs()))
    }

    /// Starts a worker with an id, labels and slots, pointed at every replica's front.
    pub fn add_worker(&mut self, id: &str, labels: &str, slots: u32) -> anyhow::Result<usize> {
        let fronts: Vec<String> = self.replicas.iter().map(Replica::front_url).collect();
        let mut args = vec![
            "--id".to_string(),
            id.to_string(),
            "--scheduler".to_string(),
            fronts.join(","),
            "--labels".to_string(),
            labels.to_string(),
            "--slots".to_string(),
            slots.to_string(),
            "--leader-lease-ms".to_string(),
            self.cfg.worker_leader_lease_ms.to_string(),
            "--allow".to_string(),
            "process".to_string(),
        ];
        args.extend(self.cli_tls_args());
        let mut env = self.s3.env();
        env.push(("BATON_TOKEN".to_string(), self.tokens.worker.clone()));
        env.extend(self.cfg.worker_env.iter().cloned());
        let node = Node::spawn_env(
            "baton-worker",
            &args,
            &env,
            self.dir.path().join(format!("worker-{id}.log")),
        )?;
        self.workers.push(node);
        Ok(self.workers.len() - 1)
    }

    /// SIGKILL a replica.
    pub fn kill9_scheduler(&mut self, i: usize) {
        if let Some(mut n) = self.replicas[i].node.take() {
            n.kill9();
        }
    }

    /// Starts a killed replica again (same port, proxies and flags).
    pub fn restart_scheduler(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill9_scheduler(i);
        self.replicas[i].generation += 1;
        self.spawn_scheduler(i)
    }

    /// SIGSTOP a replica.
    pub fn pause_scheduler(&self, i: usize) {
        if let Some(n) = &self.replicas[i].node {
            n.pause();
        }
    }

    /// SIGCONT a replica.
    pub fn resume_scheduler(&self, i: usize) {
        if let Some(n) = &self.replicas[i].node {
            n.resume();
        }
    }

    /// Cuts replica `i` off from every etcd member (nothing else).
    pub fn cut_from_etcd(&self, i: usize) {
        for p in &self.replicas[i].etcd_proxies {
            p.cut();
        }
    }

    pub fn heal_from_etcd(&self, i: usize) {
        for p in &self.replicas[i].etcd_proxies {
            p.heal();
        }
    }

    /// Cuts replica `i` off from the workers (and from redirected clients).
    pub fn cut_from_workers(&self, i: usize) {
        self.replicas[i].front.cut();
    }

    pub fn heal_from_workers(&self, i: usize) {
        self.replicas[i].front.heal();
    }

    /// Every node's log tail, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let mut paths: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        paths.sort();
        for p in paths
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
        {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out.push_str(&format!("==== {} (last lines)\n", p.display()));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out.push_str(&self.etcd.logs());
        out
    }
}

impl Drop for HaCluster {
    fn drop(&mut self) {
        self.stop_poll
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if std::thread::panicking() {
            // Keep every node's log (and data) for a post-mortem.
            self.dir.disable_cleanup(true);
            eprintln!(
                "{}\ncluster logs kept in {}",
                self.logs(),
                self.dir.path().display()
            );
        }
    }
}

/// `GetLeader` from one replica, with a short deadline.
pub async fn leader_info(url: &str) -> Option<pb::GetLeaderResponse> {
    leader_info_with(url, None).await
}

/// [`leader_info`] over TLS when `tls` is given.
pub async fn leader_info_with(
    url: &str,
    tls: Option<&baton_client::tls::TlsFiles>,
) -> Option<pb::GetLeaderResponse> {
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .ok()?
        .connect_timeout(Duration::from_millis(300))
        .timeout(Duration::from_millis(500));
    if let Some(t) = tls {
        endpoint = endpoint.tls_config(t.config().ok()?).ok()?;
    }
    let channel = endpoint.connect().await.ok()?;
    FlowServiceClient::new(channel)
        .get_leader(pb::GetLeaderRequest {})
        .await
        .ok()
        .map(|r| r.into_inner())
}
