//! Summaries of repeated measurements and the plain-text and JSON reports.

use serde_json::{json, Value};

/// The median of the samples (mean of the middle two for an even count); `None` if empty.
pub fn median(samples: &[f64]) -> Option<f64> {
    let s = sorted(samples);
    let n = s.len();
    if n == 0 {
        None
    } else if n % 2 == 1 {
        Some(s[n / 2])
    } else {
        Some((s[n / 2 - 1] + s[n / 2]) / 2.0)
    }
}

/// The nearest-rank `p`-th percentile (0 < p <= 100); `None` if empty.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    let s = sorted(samples);
    if s.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s.get(rank.clamp(1, s.len()) - 1).copied()
}

fn sorted(samples: &[f64]) -> Vec<f64> {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    s
}

/// One reported figure: a value per repeat, summarised by median, min and max.
pub struct Figure {
    pub key: String,
    pub label: String,
    pub unit: &'static str,
    pub samples: Vec<f64>,
    /// Digits after the decimal point when printed.
    pub precision: usize,
}

impl Figure {
    pub fn new(key: &str, label: &str, unit: &'static str, precision: usize) -> Figure {
        Figure {
            key: key.to_string(),
            label: label.to_string(),
            unit,
            samples: Vec::new(),
            precision,
        }
    }

    fn min(&self) -> Option<f64> {
        self.samples.iter().copied().min_by(f64::total_cmp)
    }

    fn max(&self) -> Option<f64> {
        self.samples.iter().copied().max_by(f64::total_cmp)
    }

    fn fmt(&self, v: f64) -> String {
        format!("{v:.*}", self.precision)
    }

    pub fn line(&self, label_width: usize) -> String {
        let Some(med) = median(&self.samples) else {
            return format!("{:<label_width$}  n/a", self.label);
        };
        let mut s = format!(
            "{:<label_width$}  {:>12} {}",
            self.label,
            self.fmt(med),
            self.unit
        );
        if self.samples.len() > 1 {
            if let (Some(lo), Some(hi)) = (self.min(), self.max()) {
                s.push_str(&format!(
                    "  (median of {}; min {}, max {})",
                    self.samples.len(),
                    self.fmt(lo),
                    self.fmt(hi)
                ));
            }
        }
        s
    }

    pub fn json(&self) -> Value {
        json!({
            "label": self.label,
            "unit": self.unit,
            "median": median(&self.samples),
            "min": self.min(),
            "max": self.max(),
            "samples": self.samples,
        })
    }
}

/// The settings a report was measured under.
pub struct Settings {
    pub mode: &'static str,
    pub build: &'static str,
    pub slots: u32,
    pub workers: usize,
    pub repeat: usize,
    pub cores: usize,
    pub fanouts: Vec<u64>,
    pub chain: usize,
    pub ridge_file: String,
    /// Whether the single-node scheduler fsyncs its state before acknowledging.
    pub fsync: bool,
    /// Whether chains of instant built-ins run ahead on workers (the default).
    pub run_ahead: bool,
    /// Spans received over OTLP (`--otlp`), when traces were exported.
    pub spans: Option<usize>,
    /// Cluster mode's settings; `None` in single-node mode.
    pub cluster: Option<ClusterSettings>,
}

/// The cluster of cluster mode (results in S3).
pub struct ClusterSettings {
    pub replicas: usize,
    pub etcd_members: usize,
    pub leader_lease_ms: u64,
}

/// Everything measured.
pub struct Report {
    pub settings: Settings,
    pub figures: Vec<Figure>,
}

impl Report {
    pub fn text(&self) -> String {
        let s = &self.settings;
        let mut out = String::new();
        out.push_str(&format!(
            "baton-bench ({} mode, {} build)\n",
            s.mode, s.build
        ));
        if let Some(c) = &s.cluster {
            out.push_str(&format!(
                "cluster: {} scheduler replicas, {}-member etcd, results in S3, leader lease {} ms\n",
                c.replicas, c.etcd_members, c.leader_lease_ms
            ));
        }
        out.push_str(&format!(
            "settings: {} workers x {} slots, repeat {}, {} cores, fan-outs {:?}, chain {}, ridge flow {}, state fsync {}, run ahead {}, traces {}\n",
            s.workers, s.slots, s.repeat, s.cores, s.fanouts, s.chain, s.ridge_file,
            if s.fsync { "on" } else { "off" },
            if s.run_ahead { "on" } else { "off" },
            match s.spans {
                Some(n) => format!("on (OTLP, {n} spans received)"),
                None => "off".to_string(),
            }
        ));
        let width = self
            .figures
            .iter()
            .map(|f| f.label.chars().count())
            .max()
            .unwrap_or(0);
        for f in &self.figures {
            out.push_str(&f.line(width));
            out.push('\n');
        }
        out
    }

    pub fn json(&self) -> Value {
        let s = &self.settings;
        let figures: serde_json::Map<String, Value> = self
            .figures
            .iter()
            .map(|f| (f.key.clone(), f.json()))
            .collect();
        json!({
            "settings": {
                "mode": s.mode,
                "build": s.build,
                "workers": s.workers,
                "slots_per_worker": s.slots,
                "repeat": s.repeat,
                "cores": s.cores,
                "fanouts": s.fanouts,
                "chain": s.chain,
                "ridge_file": s.ridge_file,
                "fsync": s.fsync,
                "run_ahead": s.run_ahead,
                "spans": s.spans,
                "cluster": s.cluster.as_ref().map(|c| json!({
                    "scheduler_replicas": c.replicas,
                    "etcd_members": c.etcd_members,
                    "results": "s3",
                    "leader_lease_ms": c.leader_lease_ms,
                })),
            },
            "figures": figures,
        })
    }
}
