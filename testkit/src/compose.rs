//! The repository's `docker-compose.yml` cluster, run for a test on the real Docker engine:
//! its own project name and free published ports, the images built by
//! `scripts/build-images.sh` (tag `local`), and faults through Docker (kill a service's
//! container, cut a container off the network). Dropping it takes the project down with its
//! volumes.

use crate::free_port;
use anyhow::Context;
use std::path::PathBuf;
use std::process::{Command, Output};

/// See the module docs.
pub struct ComposeCluster {
    /// `docker-compose` or `docker compose`: the program and its first arguments.
    tool: Vec<String>,
    project: String,
    file: PathBuf,
    /// Published ports of scheduler1..3, of the S3 server and of Prometheus.
    pub scheduler_ports: [u16; 3],
    pub s3_port: u16,
    pub prometheus_port: u16,
    /// scheduler1's web UI (plain HTTP on the host's loopback).
    pub ui_port: u16,
    /// The client's TLS files, copied out of the secrets volume once (they outlive `down`).
    tls_dir: tempfile::TempDir,
    tls: std::sync::OnceLock<baton_client::tls::TlsFiles>,
}

/// The images the compose file runs.
pub const IMAGES: [&str; 5] = [
    "baton-scheduler:local",
    "baton-worker:local",
    "baton-etcd:local",
    "baton-s3:local",
    "baton-prometheus:local",
];

fn compose_tool() -> anyhow::Result<Vec<String>> {
    let works = |args: &[&str]| {
        Command::new(args[0])
            .args(&args[1..])
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works(&["docker", "compose"]) {
        Ok(vec!["docker".into(), "compose".into()])
    } else if works(&["docker-compose"]) {
        Ok(vec!["docker-compose".into()])
    } else {
        anyhow::bail!("neither `docker compose` nor `docker-compose` works here")
    }
}

fn checked(what: &str, out: Output) -> anyhow::Result<String> {
    if !out.status.success() {
        anyhow::bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl ComposeCluster {
    /// Brings the cluster up under a project of its own (`docker-compose up -d`, which
    /// waits for the health checks the start order names).
    pub fn up(name: &str) -> anyhow::Result<ComposeCluster> {
        for image in IMAGES {
            let found = Command::new("docker")
                .args(["image", "inspect", image])
                .output()
                .context("running docker")?;
            anyhow::ensure!(
                found.status.success(),
                "image {image} is missing: build the images first (scripts/build-images.sh)"
            );
        }
        let file = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docker-compose.yml"
        ));
        let c = ComposeCluster {
            tool: compose_tool()?,
            project: format!("{name}-{}", std::process::id()),
            file,
            scheduler_ports: [free_port()?, free_port()?, free_port()?],
            s3_port: free_port()?,
            ui_port: free_port()?,
            prometheus_port: free_port()?,
            tls_dir: tempfile::tempdir()?,
            tls: std::sync::OnceLock::new(),
        };
        c.start()?;
        Ok(c)
    }

    fn compose(&self) -> Command {
        let mut cmd = Command::new(&self.tool[0]);
        cmd.args(&self.tool[1..])
            .arg("-p")
            .arg(&self.project)
            .arg("-f")
            .arg(&self.file)
            .env("BATON_TAG", "local")
            .env("BATON_S3_PORT", self.s3_port.to_string())
            .env("BATON_UI_PORT", self.ui_port.to_string())
            .env("BATON_PROMETHEUS_PORT", self.prometheus_port.to_string());
        for (i, port) in self.scheduler_ports.iter().enumerate() {
            cmd.env(format!("BATON_PORT_{}", i + 1), port.to_string());
        }
        cmd
    }

    /// Runs `docker-compose ARGS` for this project.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.compose().args(args).output()?;
        checked(&format!("compose {}", args.join(" ")), out)
    }

    /// `up -d` (again, after [`ComposeCluster::down`]).
    pub fn start(&self) -> anyhow::Result<()> {
        self.run(&["up", "-d"]).map(drop)
    }

    /// `down`, keeping the volumes.
    pub fn down(&self) -> anyhow::Result<()> {
        self.run(&["down"]).map(drop)
    }

    /// The scheduler addresses published on the host (mutual TLS: see
    /// [`ComposeCluster::client_tls`]).
    pub fn urls(&self) -> Vec<String> {
        self.scheduler_ports
            .iter()
            .map(|p| format!("https://127.0.0.1:{p}"))
            .collect()
    }

    /// The CA and the client certificate that `setup` made, copied out of the secrets
    /// volume.
    pub fn client_tls(&self) -> anyhow::Result<baton_client::tls::TlsFiles> {
        if let Some(files) = self.tls.get() {
            return Ok(files.clone());
        }
        let dir = self.tls_dir.path();
        for name in ["ca.pem", "client.pem", "client.key"] {
            std::fs::write(dir.join(name), self.secret(&format!("tls/{name}"))? + "\n")?;
        }
        let files = baton_client::tls::TlsFiles {
            ca: Some(dir.join("ca.pem")),
            cert: Some(dir.join("client.pem")),
            key: Some(dir.join("client.key")),
        };
        Ok(self.tls.get_or_init(|| files).clone())
    }

    /// A file of the `secrets` volume, read through scheduler1's container.
    pub fn secret(&self, name: &str) -> anyhow::Result<String> {
        let path = format!("/var/lib/baton/secrets/{name}");
        Ok(self
            .run(&["exec", "-T", "scheduler1", "cat", &path])?
            .trim()
            .to_string())
    }

    /// The container id of `service` (its first replica).
    pub fn container(&self, service: &str) -> anyhow::Result<String> {
        let out = self.run(&["ps", "-q", service])?;
        out.lines()
            .next()
            .map(str::to_string)
            .with_context(|| format!("no container for {service}"))
    }

    /// SIGKILL `service`'s container (`docker kill`).
    pub fn kill(&self, service: &str) -> anyhow::Result<()> {
        let id = self.container(service)?;
        checked(
            "docker kill",
            Command::new("docker").args(["kill", &id]).output()?,
        )
        .map(drop)
    }

    /// The project's network.
    pub fn network(&self) -> String {
        format!("{}_default", self.project)
    }

    /// Cuts `service`'s container off the project's network (`docker network disconnect`).
    pub fn disconnect(&self, service: &str) -> anyhow::Result<()> {
        let id = self.container(service)?;
        let out = Command::new("docker")
            .args(["network", "disconnect", &self.network(), &id])
            .output()?;
        checked("docker network disconnect", out).map(drop)
    }

    /// Joins `service`'s container to the project's network again, under its name.
    pub fn reconnect(&self, service: &str) -> anyhow::Result<()> {
        let id = self.container(service)?;
        let out = Command::new("docker")
            .args([
                "network",
                "connect",
                "--alias",
                service,
                &self.network(),
                &id,
            ])
            .output()?;
        checked("docker network connect", out).map(drop)
    }

    /// Every service's log, for a failure message.
    pub fn logs(&self) -> String {
        self.run(&["logs", "--no-color", "--tail", "200"])
            .unwrap_or_else(|e| e.to_string())
    }
}

impl Drop for ComposeCluster {
    fn drop(&mut self) {
        let _ = self
            .compose()
            .args(["down", "-v", "--remove-orphans", "-t", "2"])
            .output();
    }
}
