//! A real Prometheus server (Debian's `prometheus`, as scripts/install-test-servers.sh
//! installs it) scraping the given `/metrics` targets every half second, and PromQL
//! queries through its HTTP API.

use crate::process::{free_port, Node};
use anyhow::{anyhow, bail, Context};
use baton_common::text::percent_encode as encode;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

/// A Prometheus server: one this process started (stopped when dropped), or one already
/// running (the compose cluster's).
pub struct Prometheus {
    _node: Option<Node>,
    port: u16,
    _dir: Option<tempfile::TempDir>,
}

/// One sample of an instant query's answer: its labels and value.
pub type Sample = (BTreeMap<String, String>, f64);

impl Prometheus {
    /// Starts Prometheus scraping `targets` (`host:port`, each serving `/metrics`), and
    /// waits until it is ready.
    pub async fn start(targets: &[String]) -> anyhow::Result<Prometheus> {
        let dir = tempfile::Builder::new().prefix("baton-prom-").tempdir()?;
        let list = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 500ms\n  scrape_timeout: 400ms\nscrape_configs:\n  \
                 - job_name: baton\n    static_configs:\n      - targets: [{list}]\n"
            ),
        )?;
        let port = free_port()?;
        let args = vec![
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--log.level=warn".to_string(),
        ];
        let node = Node::spawn_program(
            &binary()?,
            "prometheus",
            &args,
            dir.path().join("prometheus.log"),
        )?;
        let p = Prometheus {
            _node: Some(node),
            port,
            _dir: Some(dir),
        };
        p.ready().await?;
        Ok(p)
    }

    /// A Prometheus already serving on 127.0.0.1:`port`, once it is ready.
    pub async fn at(port: u16) -> anyhow::Result<Prometheus> {
        let p = Prometheus {
            _node: None,
            port,
            _dir: None,
        };
        p.ready().await?;
        Ok(p)
    }

    async fn ready(&self) -> anyhow::Result<()> {
        crate::eventually(Duration::from_secs(60), "Prometheus to be ready", || {
            let ready = self
                .get("/-/ready")
                .ok()
                .filter(|(status, _)| *status == 200);
            async move { ready.map(|_| ()) }
        })
        .await
    }

    /// The answer to an instant PromQL query: one sample per series.
    pub fn query(&self, promql: &str) -> anyhow::Result<Vec<Sample>> {
        let (status, body) = self.get(&format!("/api/v1/query?query={}", encode(promql)))?;
        if status != 200 {
            bail!("query `{promql}`: HTTP {status}: {body}");
        }
        let v: serde_json::Value = serde_json::from_str(&body)?;
        let result = v["data"]["result"]
            .as_array()
            .ok_or_else(|| anyhow!("query `{promql}`: no result in {body}"))?;
        result
            .iter()
            .map(|s| {
                let labels = s["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                            .collect()
                    })
                    .unwrap_or_default();
                let value = s["value"][1]
                    .as_str()
                    .and_then(|x| x.parse().ok())
                    .ok_or_else(|| anyhow!("query `{promql}`: no value in {s}"))?;
                Ok((labels, value))
            })
            .collect()
    }

    /// The value of a query that answers one series (`None` when it answers none).
    pub fn scalar(&self, promql: &str) -> anyhow::Result<Option<f64>> {
        let samples = self.query(promql)?;
        match samples.as_slice() {
            [] => Ok(None),
            [(_, v)] => Ok(Some(*v)),
            many => bail!("query `{promql}` answered {} series", many.len()),
        }
    }

    /// Scrape targets and whether their last scrape worked: (instance, health).
    pub fn targets(&self) -> anyhow::Result<Vec<(String, String)>> {
        let (_, body) = self.get("/api/v1/targets")?;
        let v: serde_json::Value = serde_json::from_str(&body)?;
        Ok(v["data"]["activeTargets"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|t| {
                        (
                            t["labels"]["instance"]
                                .as_str()
                                .unwrap_or_default()
                                .to_string(),
                            t["health"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// GET `path` (HTTP/1.0): (status, body).
    fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut raw = String::new();
        s.read_to_string(&mut raw)?;
        let (head, body) = raw
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow!("a malformed HTTP answer"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("no HTTP status")?;
        Ok((status, body.to_string()))
    }
}

fn binary() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("prometheus not found on PATH: run scripts/install-test-servers.sh"))
}
