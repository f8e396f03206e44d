//! A real S3-compatible server for tests: `s3s-fs` (objects as files in a folder) on a free
//! loopback port, with a bucket `baton` and fixed test credentials; kill -9, pause and
//! restart on the same port and data. `scripts/install-test-servers.sh` installs it into
//! `$BATON_TOOLS/bin` (default `$HOME/.cache/baton-tools/bin`).

use crate::{eventually, free_port, Node};
use baton_common::result_store::{ResultStore, S3Options, S3Store, StaticCredentials};
use std::path::{Path, PathBuf};
use std::time::Duration;

const BUCKET: &str = "baton";
const ACCESS_KEY: &str = "baton-test-access-key";
const SECRET_KEY: &str = "baton-test-secret-key";
const REGION: &str = "us-east-1";

/// The installed `s3s-fs` binary.
pub fn s3s_fs_binary() -> anyhow::Result<PathBuf> {
    let tools = match std::env::var_os("BATON_TOOLS") {
        Some(t) if !t.is_empty() => PathBuf::from(t),
        _ => {
            let home = std::env::var_os("HOME")
                .ok_or_else(|| anyhow::anyhow!("neither BATON_TOOLS nor HOME is set"))?;
            Path::new(&home).join(".cache").join("baton-tools")
        }
    };
    let bin = tools.join("bin").join("s3s-fs");
    if !bin.is_file() {
        anyhow::bail!(
            "{} not found: run scripts/install-test-servers.sh",
            bin.display()
        );
    }
    Ok(bin)
}

/// A running `s3s-fs`, killed when dropped; its data lies in a temporary folder.
pub struct S3Server {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    node: Option<Node>,
    generation: usize,
}

impl S3Server {
    /// Starts a server with an empty bucket `baton` and waits until it answers.
    pub async fn start() -> anyhow::Result<S3Server> {
        let bin = s3s_fs_binary()?;
        let dir = tempfile::Builder::new().prefix("baton-s3-").tempdir()?;
        std::fs::create_dir_all(dir.path().join("data").join(BUCKET))?;
        let mut s = S3Server {
            dir,
            bin,
            port: free_port()?,
            node: None,
            generation: 0,
        };
        s.launch().await?;
        Ok(s)
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let args = vec![
            "--host".to_string(),
            "127.0.0.1".to_string(),
            "--port".to_string(),
            self.port.to_string(),
            "--access-key".to_string(),
            ACCESS_KEY.to_string(),
            "--secret-key".to_string(),
            SECRET_KEY.to_string(),
            self.data_dir().display().to_string(),
        ];
        let log = self
            .dir
            .path()
            .join(format!("s3s-fs-{}.log", self.generation));
        let mut node = Node::spawn_program(&self.bin, "s3s-fs", &args, log)?;
        node.generation = self.generation;
        self.node = Some(node);
        self.wait_ready().await
    }

    /// Waits for the port to accept and for a signed HEAD of an object to get an answer.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let probe = S3Store::connect(
            &self.uri(""),
            S3Options {
                retry_for: Duration::ZERO,
                ..self.options()
            },
        )
        .await?;
        let addr = format!("127.0.0.1:{}", self.port);
        let ready_uri = format!("s3://{BUCKET}/.baton-ready");
        let ready = eventually(Duration::from_secs(30), "s3s-fs to answer", || {
            let (addr, probe, ready_uri) = (addr.clone(), probe.clone(), ready_uri.clone());
            let alive = self.node.as_mut().is_some_and(Node::alive);
            async move {
                if !alive {
                    return Some(false);
                }
                tokio::net::TcpStream::connect(&addr).await.ok()?;
                probe.exists(&ready_uri).await.ok().map(|_| true)
            }
        })
        .await;
        match ready {
            Ok(true) => Ok(()),
            Ok(false) => anyhow::bail!("s3s-fs exited at start:\n{}", self.logs()),
            Err(e) => anyhow::bail!("{e}\n{}", self.logs()),
        }
    }

    /// The server's URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The bucket (`baton`).
    pub fn bucket(&self) -> &str {
        BUCKET
    }

    /// `s3://baton/<prefix>`.
    pub fn uri(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{}", prefix.trim_matches('/'))
            .trim_end_matches('/')
            .to_string()
    }

    /// The folder holding the buckets (one sub-folder each).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Creates another bucket.
    pub fn create_bucket(&self, name: &str) -> anyhow::Result<()> {
        std::fs::create_dir_all(self.data_dir().join(name))?;
        Ok(())
    }

    /// The environment that points a child process's S3 client (baton's `open_store`, the
    /// AWS chain) at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_REGION", REGION.to_string()),
            ("BATON_S3_ENDPOINT", self.endpoint()),
            ("BATON_S3_PATH_STYLE", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The same settings as options for an in-process [`S3Store`].
    pub fn options(&self) -> S3Options {
        S3Options {
            endpoint: Some(self.endpoint()),
            path_style: Some(true),
            region: Some(REGION.to_string()),
            credentials: Some(StaticCredentials {
                access_key_id: ACCESS_KEY.to_string(),
                secret_access_key: SECRET_KEY.to_string(),
            }),
            ..S3Options::default()
        }
    }

    /// An in-process store at `s3://baton/<prefix>`.
    pub async fn store(&self, prefix: &str) -> anyhow::Result<S3Store> {
        Ok(S3Store::connect(&self.uri(prefix), self.options()).await?)
    }

    /// SIGKILL; the data stays.
    pub fn kill9(&mut self) {
        if let Some(n) = self.node.as_mut() {
            n.kill9();
        }
    }

    /// SIGSTOP.
    pub fn pause(&self) {
        if let Some(n) = &self.node {
            n.pause();
        }
    }

    /// SIGCONT.
    pub fn resume(&self) {
        if let Some(n) = &self.node {
            n.resume();
        }
    }

    /// Kills the server if it runs and starts it again on the same port and data.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        self.generation += 1;
        self.launch().await
    }

    /// Stops the server (SIGTERM, then wait).
    pub fn stop(&mut self) {
        if let Some(mut n) = self.node.take() {
            n.terminate();
        }
    }

    /// The server's logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for g in 0..=self.generation {
            let p = self.dir.path().join(format!("s3s-fs-{g}.log"));
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("==== {} (last lines)\n", p.display()));
            for l in &lines[lines.len().saturating_sub(60)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}
