//! `baton run`: submit a flow file, follow it, print the final table or JSON.

use anyhow::Context;
use baton_cli::embedded::{default_workers, EmbeddedCluster};
use baton_cli::{client::is_finished, format};
use baton_common::flow::MAX_FLOW_FILE_BYTES;
use baton_proto as pb;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The flow file (YAML or JSON); or give --flow to run a registered flow.
    #[arg(required_unless_present = "flow", conflicts_with = "flow")]
    file: Option<PathBuf>,
    /// Run a registered flow by name (NAME or PROJECT/NAME) instead of a file.
    #[arg(long)]
    flow: Option<String>,
    /// With --flow: the version to run [default: the latest].
    #[arg(long, default_value_t = 0, requires = "flow")]
    version: u32,
    /// A parameter value as NAME=VALUE; VALUE is JSON, or else taken as a string (a VALUE
    /// that starts with `[`, `{` or `"` must be valid JSON).
    #[arg(long = "param", short = 'p')]
    params: Vec<String>,
    /// Show progress while the run goes on, also when stderr is not a terminal (on a
    /// terminal it is shown anyway): a bar per task there, a summary line every 2 s here.
    #[arg(long)]
    watch: bool,
    /// In the final table, every task run of a mapped task on a row of its own (by
    /// default a mapped task is one row with counts by state, and its failed runs).
    #[arg(long)]
    all: bool,
    /// Full result locations and values in the final table (by default it is fitted to
    /// the terminal's width).
    #[arg(long)]
    wide: bool,
    /// Print the finished run with its task runs and small results as JSON.
    #[arg(long)]
    json: bool,
    /// Return once the run is created, printing its id.
    #[arg(long)]
    detach: bool,
    /// The same key returns the same run [default: a fresh random key, so that the
    /// submission can be retried safely when the leader changes].
    #[arg(long, default_value = "")]
    idempotency_key: String,
    /// Do not reuse cached task results: every task runs (fresh results are still cached).
    #[arg(long)]
    no_cache: bool,
    /// The run's priority: ready task runs of higher-priority runs are dispatched first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i32,
    /// Start a single-node cluster in this process for this run (no scheduler needed).
    #[arg(long)]
    embedded: bool,
    /// State folder of the embedded cluster.
    #[arg(long, default_value = ".baton/embedded")]
    data: PathBuf,
}

impl RunArgs {
    /// Whether the run is on an embedded cluster (whose workers run tasks in this process).
    pub fn is_embedded(&self) -> bool {
        self.embedded
    }
}

#[cfg(test)]
impl RunArgs {
    pub fn priority(&self) -> i32 {
        self.priority
    }
}

fn parse_params(raw: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for p in raw {
        let (k, v) = p
            .split_once('=')
            .with_context(|| format!("parameter `{p}` must look like NAME=VALUE"))?;
        let json = match serde_json::from_str::<serde_json::Value>(v) {
            Ok(_) => v.to_string(),
            // What starts like a JSON list, object or string must be JSON: a typo there
            // must not quietly become a string.
            Err(e) if v.trim_start().starts_with(['[', '{', '"']) => anyhow::bail!(
                "parameter `{k}`: `{v}` is not valid JSON ({e}); to pass it as a string, \
                 give it as a JSON string: {k}='{}'",
                serde_json::Value::String(v.to_string())
            ),
            Err(_) => serde_json::Value::String(v.to_string()).to_string(),
        };
        out.insert(k.to_string(), json);
    }
    Ok(out)
}

pub fn read_flow(path: &PathBuf) -> anyhow::Result<String> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.len() as usize > MAX_FLOW_FILE_BYTES {
        anyhow::bail!(
            "{} is {} bytes; a flow file may be at most {} bytes",
            path.display(),
            meta.len(),
            MAX_FLOW_FILE_BYTES
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8 text", path.display()))
}

pub async fn run(scheduler: &crate::Target, args: RunArgs) -> anyhow::Result<i32> {
    let source = match &args.file {
        Some(file) => read_flow(file)?,
        None => String::new(),
    };
    let params = parse_params(&args.params)?;
    let cluster = if args.embedded {
        Some(EmbeddedCluster::start("127.0.0.1:0", args.data.clone(), &default_workers()).await?)
    } else {
        None
    };
    let embedded = cluster.as_ref().map(|c| scheduler.at(c.url()));
    let result = submit(
        embedded.as_ref().unwrap_or(scheduler),
        source,
        params,
        &args,
    )
    .await;
    if let Some(c) = cluster {
        c.stop().await;
    }
    result
}

async fn submit(
    target: &crate::Target,
    source: String,
    params: BTreeMap<String, String>,
    args: &RunArgs,
) -> anyhow::Result<i32> {
    let client = target.connect().await.context("or pass --embedded")?;
    let key = if args.idempotency_key.is_empty() {
        uuid::Uuid::new_v4().to_string()
    } else {
        args.idempotency_key.clone()
    };
    let created = match &args.flow {
        Some(name) => {
            let (project, flow) = crate::flow::split_name(name);
            client
                .create_run(baton_proto::CreateRunRequest {
                    project,
                    flow,
                    version: args.version,
                    parameters: params.into_iter().collect(),
                    idempotency_key: key,
                    no_cache: args.no_cache,
                    priority: args.priority,
                    ..Default::default()
                })
                .await?
        }
        None => {
            client
                .create_run(baton_proto::CreateRunRequest {
                    source,
                    parameters: params.into_iter().collect(),
                    idempotency_key: key,
                    no_cache: args.no_cache,
                    priority: args.priority,
                    ..Default::default()
                })
                .await?
        }
    };
    let run = created.run.context("the scheduler returned no run")?;
    if args.detach {
        println!("{}", run.id);
        return Ok(0);
    }
    if !args.json {
        eprintln!(
            "started run {} of {}/{} v{}",
            run.id, run.project, run.flow, run.version
        );
    }
    use std::io::IsTerminal;
    let terminal = std::io::stderr().is_terminal();
    let mut progress = (!args.json && (args.watch || terminal))
        .then(|| baton_cli::progress::Progress::new(terminal));
    let mut stream = client.watch(&run.id, progress.is_some()).await?;
    let mut last = run;
    let mut waiting = String::new();
    while let Some(ev) = stream.message().await? {
        if let Some(p) = progress.as_mut() {
            p.update(&ev.task_runs);
        }
        if let Some(r) = ev.run {
            // Why the run waits (no worker with its labels, say), as soon as it is known.
            if !args.json && r.waiting_reason != waiting {
                waiting = r.waiting_reason.clone();
                match progress.as_mut() {
                    Some(p) => p.waiting(&waiting),
                    None if !waiting.is_empty() => eprintln!("waiting: {waiting}"),
                    None => {}
                }
            }
            last = r;
            if is_finished(&last) {
                break;
            }
        }
    }
    if let Some(p) = progress.as_mut() {
        p.finish();
    }
    let final_run = client.get_run(&last.id).await?;
    let trs = client.task_runs(&final_run.id, true).await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&format::run_json(&final_run, &trs))?
        );
    } else {
        println!("{}", format::run_line(&final_run));
        let width = (!args.wide).then(terminal_width).flatten();
        let opts = format::TableOpts {
            all: args.all,
            width,
        };
        print!("{}", format::run_table(&trs, opts));
    }
    Ok(if final_run.state == pb::RunState::Completed as i32 {
        0
    } else {
        1
    })
}

/// The width of the terminal on stdout; `None` when stdout is not one.
fn terminal_width() -> Option<usize> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() {
        return None;
    }
    let cols = std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok());
    cols.or_else(|| {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ fills the winsize struct it is given, on stdout's descriptor.
        let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
        (rc == 0 && ws.ws_col > 0).then_some(ws.ws_col as usize)
    })
}
