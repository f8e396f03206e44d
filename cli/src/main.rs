//! The `baton` command line: an embedded cluster (`baton dev`), runs, flows, schedules,
//! concurrency limits, results and workers.

mod flow;
mod gc;
mod limit;
mod logs;
mod run;
mod schedule;
mod show;

use anyhow::Context;
use baton_cli::embedded::{default_workers, EmbeddedCluster, WorkerSpec};
use baton_cli::{format, Client};
use baton_common::result_store::open_store;
use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;

/// baton: distributed task orchestration.
#[derive(Parser, Debug)]
#[command(name = "baton", version)]
struct Cli {
    /// The scheduler to talk to: one replica's address, or a comma-separated list of the
    /// cluster's replicas (calls go to whichever leads).
    #[arg(
        long,
        global = true,
        env = "BATON_SCHEDULER",
        default_value = "http://127.0.0.1:7070"
    )]
    scheduler: String,
    /// The token to show the scheduler (from `baton token new`), when it requires one.
    #[arg(long, global = true, env = "BATON_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the token (its first line).
    #[arg(
        long,
        global = true,
        env = "BATON_TOKEN_FILE",
        conflicts_with = "token"
    )]
    token_file: Option<PathBuf>,
    /// TLS: the CA that signs the scheduler's certificate (PEM); addresses without a scheme
    /// then mean https://.
    #[arg(long, global = true, env = "BATON_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Mutual TLS: your certificate chain (PEM), with --tls-key.
    #[arg(long, global = true, env = "BATON_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Mutual TLS: the certificate's private key (PEM).
    #[arg(long, global = true, env = "BATON_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// How log lines are written: `text`, or `json` (one object a line, for collectors).
    #[arg(
        long,
        global = true,
        env = "BATON_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    log_format: baton_common::telemetry::LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Where the scheduler is and the token to show it.
pub(crate) struct Target {
    pub addr: String,
    pub token: Option<String>,
    pub tls: Option<baton_cli::client::tls::TlsFiles>,
}

impl Target {
    fn new(cli: &Cli) -> anyhow::Result<Target> {
        let token = match (&cli.token, &cli.token_file) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(f)) => Some(baton_common::token::read_file(f)?),
            (None, None) => None,
        };
        let tls = baton_cli::client::tls::TlsFiles {
            ca: cli.tls_ca.clone(),
            cert: cli.tls_cert.clone(),
            key: cli.tls_key.clone(),
        };
        Ok(Target {
            addr: cli.scheduler.clone(),
            token,
            tls: Some(tls).filter(|t| t.is_set()),
        })
    }

    /// The same token, another address (an embedded scheduler).
    pub(crate) fn at(&self, addr: String) -> Target {
        Target {
            addr,
            token: self.token.clone(),
            tls: None,
        }
    }

    pub(crate) async fn connect(&self) -> anyhow::Result<Client> {
        let addr = &self.addr;
        Client::connect_with(
            std::slice::from_ref(addr),
            self.token.as_deref(),
            self.tls.clone(),
        )
        .await
        .with_context(|| format!("is a scheduler running at {addr}? (start one with `baton dev`)"))
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a scheduler and workers in this process until interrupted.
    Dev {
        /// Address for the scheduler.
        #[arg(long, default_value = "127.0.0.1:7070")]
        listen: String,
        /// Folder for state and local results.
        #[arg(long, default_value = ".baton/dev")]
        data: PathBuf,
        /// A worker as LABELS[:SLOTS[:GPUS]], e.g. `local,trainer:4:auto`; GPUS is `auto`,
        /// `none` (the default) or device indices such as `0,1`; repeat for more (default:
        /// `local`, and `local,trainer` with the host's GPUs).
        #[arg(long = "worker")]
        workers: Vec<String>,
        /// Address for the web UI (`off`: none). When it is taken, dev goes on without.
        #[arg(long, default_value = "127.0.0.1:8070")]
        http: String,
    },
    /// Run a flow file, or a registered flow (--flow), and wait for it to finish.
    Run(run::RunArgs),
    /// Registered flows and their versions.
    Flow {
        #[command(subcommand)]
        cmd: flow::FlowCmd,
    },
    /// Registered flows' cron schedules: switch them on or off, list them.
    Schedule {
        #[command(subcommand)]
        cmd: schedule::ScheduleCmd,
    },
    /// Concurrency limits on task tags, cluster-wide.
    Limit {
        #[command(subcommand)]
        cmd: limit::LimitCmd,
    },
    /// List runs, most recent first.
    Runs {
        /// How many runs to list, newest first (the scheduler answers at most 1,000).
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Show a run and its task runs, its parent run and the child runs of its sub-flow tasks
    /// (3 levels deep, 100 per run).
    Show {
        /// The run's id.
        run: String,
        /// Print the run, its task runs and small results as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a run.
    Cancel {
        /// The run's id.
        run: String,
    },
    /// Print the log lines of a run's tasks: `task[index]#attempt stream: line`.
    Logs(logs::LogsArgs),
    /// List connected workers.
    Workers,
    /// Show which scheduler replica leads, its epoch and the replicas.
    Leader {
        /// Print the leader, its epoch and the replicas as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete the result store's packs of small results that nothing references any more
    /// (left by a crash between upload and commit, or holding only ignored late results).
    Gc(gc::GcArgs),
    /// Read results.
    Result {
        #[command(subcommand)]
        cmd: ResultCmd,
    },
    /// Tokens for a scheduler with authentication on.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
}

#[derive(Subcommand, Debug)]
enum TokenCmd {
    /// Make a random token: prints it, then the entry for the scheduler's tokens file
    /// (which holds only the token's SHA-256).
    New {
        /// `admin` (everything), `client` (submit runs, read) or `worker` (connect as a
        /// worker).
        #[arg(long)]
        role: String,
        /// Who holds it; for a worker, the worker id it may register as (a trailing `*`:
        /// any id with that prefix).
        #[arg(long)]
        name: String,
        /// Append the entry to this tokens file (created if missing) and print only the token.
        #[arg(long)]
        append: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum ResultCmd {
    /// Print the object at a result location (file://... or s3://...).
    ///
    /// The scheduler reads it: its own store's locations, and any s3:// location. An s3://
    /// location is read directly from the bucket, with this machine's AWS configuration
    /// (AWS_* variables or profile, BATON_S3_ENDPOINT, BATON_S3_PATH_STYLE), when --direct
    /// is given or when no scheduler answers.
    Get {
        /// The result's location (`file://…` or `s3://…`), as `baton show` prints it.
        location: String,
        /// Read an s3:// location straight from the bucket, not through the scheduler.
        #[arg(long)]
        direct: bool,
    },
}

/// `baton dev`'s help, without the connection options the other commands share (they
/// are global, so that they go before or after a subcommand): `dev` starts its own
/// scheduler and connects to none.
fn dev_help() -> String {
    use clap::CommandFactory;
    // A subcommand of the unbuilt command has only its own arguments; of the global ones,
    // only the log format applies to `dev`.
    let cli = Cli::command();
    let log_format = cli
        .get_arguments()
        .find(|a| a.get_id() == "log_format")
        .cloned();
    cli.find_subcommand("dev")
        .cloned()
        .map(|dev| {
            let dev = match log_format {
                Some(a) => dev.arg(a.global(false)),
                None => dev,
            };
            dev.bin_name("baton dev").render_help().to_string()
        })
        .unwrap_or_default()
}

fn parse_args() -> Cli {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dev = args.first().is_some_and(|a| a == "dev");
    if dev && args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{}", dev_help());
        std::process::exit(0);
    }
    Cli::parse()
}

fn main() {
    // The process shim of a task of an embedded worker (`baton dev`) runs here and exits.
    baton_worker::shim::init();
    // Before any thread starts: CUDA numbers devices as NVML does (embedded workers).
    baton_worker::gpu::use_pci_bus_order();
    // Embedded workers take their secrets (BATON_SECRET_*) out of the environment.
    baton_worker::secrets::take_env();
    // The embedded scheduler's memory of finished runs goes back to the system.
    baton_scheduler::alloc::tune();
    cli_main()
}

#[tokio::main]
async fn cli_main() {
    let cli = parse_args();
    baton_common::telemetry::init_with("warn", cli.log_format);
    let in_process_workers = match &cli.cmd {
        Cmd::Dev { .. } => true,
        Cmd::Run(args) => args.is_embedded(),
        _ => false,
    };
    if !in_process_workers {
        // Like other Unix tools, end quietly when the reader of stdout goes away
        // (`baton show RUN | head -1`) instead of failing a write. Not with workers in this
        // process: a task's closed pipe must not end them.
        // SAFETY: restores the default action of one signal before other threads write.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let code = match execute(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    };
    std::process::exit(code);
}

/// `baton token new`.
fn new_token(role: &str, name: &str, append: Option<&std::path::Path>) -> anyhow::Result<i32> {
    use baton_scheduler::auth::{tokens, Role};
    let role = Role::parse(role)
        .with_context(|| "--role must be `admin`, `client` or `worker`".to_string())?;
    if !tokens::valid_name(name) || (name.ends_with('*') && role != Role::Worker) {
        anyhow::bail!(
            "--name: 1-128 letters, digits, `.`, `_` or `-` (a worker's may end in `*`: any \
             worker id with that prefix)"
        );
    }
    let token = tokens::generate();
    let entry = tokens::entry(role, name, &token);
    match append {
        Some(path) => {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            writeln!(f, "{entry}").with_context(|| format!("cannot write {}", path.display()))?;
            println!("{token}");
        }
        None => {
            println!("{token}");
            println!("{entry}");
        }
    }
    Ok(0)
}

async fn execute(cli: Cli) -> anyhow::Result<i32> {
    let target = Target::new(&cli)?;
    match cli.cmd {
        Cmd::Dev {
            listen,
            data,
            workers,
            http,
        } => {
            let specs = if workers.is_empty() {
                default_workers()
            } else {
                workers
                    .iter()
                    .map(|w| WorkerSpec::parse(w))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(anyhow::Error::msg)?
            };
            let cluster = EmbeddedCluster::start(&listen, data.clone(), &specs).await?;
            eprintln!(
                "baton dev: scheduler at {} with {} worker(s), state in {}; Ctrl-C to stop",
                cluster.url(),
                specs.len(),
                data.display()
            );
            if http != "off" {
                match cluster.serve_ui(&http).await {
                    Ok(at) => eprintln!("baton dev: web UI at http://{at}/"),
                    Err(e) => eprintln!("baton dev: no web UI ({http}: {e})"),
                }
            }
            let stop = tokio_util::sync::CancellationToken::new();
            baton_common::shutdown::on_signals(
                stop.clone(),
                baton_worker::executor::kill_all_groups,
            )?;
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = cluster.wait() => {}
            }
            cluster.stop().await;
            Ok(0)
        }
        Cmd::Run(args) => run::run(&target, args).await,
        Cmd::Flow { cmd } => flow::execute(&target.connect().await?, cmd).await,
        Cmd::Runs { limit } => {
            let runs = target.connect().await?.list_runs(limit).await?;
            print!("{}", format::runs_table(&runs));
            Ok(0)
        }
        Cmd::Schedule { cmd } => schedule::execute(&target.connect().await?, cmd).await,
        Cmd::Limit { cmd } => limit::execute(&target.connect().await?, cmd).await,
        Cmd::Gc(args) => gc::execute(&target.connect().await?, args).await,
        Cmd::Show { run, json } => show::execute(&target.connect().await?, &run, json).await,
        Cmd::Logs(args) => logs::execute(&target.connect().await?, args).await,
        Cmd::Cancel { run } => {
            let r = target.connect().await?.cancel_run(&run).await?;
            println!("{}", format::run_line(&r));
            Ok(0)
        }
        Cmd::Token {
            cmd: TokenCmd::New { role, name, append },
        } => new_token(&role, &name, append.as_deref()),
        Cmd::Workers => {
            let ws = target.connect().await?.workers().await?;
            print!("{}", format::workers_table(&ws));
            Ok(0)
        }
        Cmd::Leader { json } => {
            let report = target.connect().await?.leader().await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&format::leader_json(&report))?
                );
            } else {
                print!("{}", format::leader_report(&report));
            }
            Ok(if report.leader_address.is_empty() {
                1
            } else {
                0
            })
        }
        Cmd::Result {
            cmd: ResultCmd::Get { location, direct },
        } => {
            let mut out = std::io::stdout();
            let ended_line = get_result(&target, &location, direct, &mut out).await?;
            if !ended_line {
                out.write_all(b"\n")?;
            }
            out.flush()?;
            Ok(0)
        }
    }
}

/// Writes a result to `out`: streamed through the scheduler in parts (any size, little
/// memory), or an s3:// location read straight from its bucket with `--direct` or when no
/// scheduler answers. Whether what was written ends a line.
async fn get_result(
    target: &Target,
    location: &str,
    direct: bool,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let scheduler = &target.addr;
    let s3 = location.starts_with("s3://");
    if direct && !s3 {
        anyhow::bail!(
            "--direct reads s3:// locations only; read `{location}` through the scheduler"
        );
    }
    if !direct {
        match target.connect().await {
            Ok(c) => match c.read_result(location).await {
                Ok(mut parts) => {
                    let mut last = b'\n';
                    while let Some(part) = parts.message().await? {
                        out.write_all(&part.data)?;
                        last = part.data.last().copied().unwrap_or(last);
                    }
                    return Ok(last == b'\n');
                }
                // Not in the cluster's store: read with this machine's own credentials.
                Err(baton_cli::client::ClientError::Status(s))
                    if s3 && s.code() == tonic::Code::PermissionDenied =>
                {
                    eprintln!("{}: reading {location} directly", s.message());
                }
                Err(e) => return Err(e.into()),
            },
            Err(e) if !s3 => return Err(e),
            Err(_) => eprintln!("no scheduler answers at {scheduler}: reading {location} directly"),
        }
    }
    let store = open_store(location).await?;
    let data = store.get(location).await?;
    out.write_all(&data)?;
    Ok(data.ends_with(b"\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `baton dev --help` shows only what `dev` takes.
    #[test]
    fn dev_help_leaves_out_the_connection_options() {
        let dev = super::dev_help();
        assert!(
            dev.contains("--listen") && dev.contains("baton dev"),
            "{dev}"
        );
        assert!(dev.contains("--log-format"), "{dev}");
        for hidden in ["--scheduler", "--token", "--tls-ca"] {
            assert!(!dev.contains(hidden), "{hidden} in:\n{dev}");
        }
        let mut cmd = <Cli as clap::CommandFactory>::command();
        cmd.build();
        let run = cmd
            .find_subcommand_mut("run")
            .expect("run")
            .render_help()
            .to_string();
        assert!(run.contains("--scheduler"), "{run}");
    }

    /// Every argument of every command says what it is in `--help`.
    #[test]
    fn every_argument_has_help() {
        fn missing(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id != "help" && id != "version" && arg.get_help().is_none() {
                    out.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                missing(sub, &format!("{path} {}", sub.get_name()), out);
            }
        }
        let mut out = Vec::new();
        missing(&<Cli as clap::CommandFactory>::command(), "baton", &mut out);
        assert!(out.is_empty(), "arguments without help: {out:?}");
    }

    fn parse(args: &[&str]) -> Cmd {
        let mut argv = vec!["baton"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv) {
            Ok(cli) => cli.cmd,
            Err(e) => panic!("{args:?}: {e}"),
        }
    }

    #[test]
    fn the_new_commands_parse() {
        assert!(matches!(
            parse(&["schedule", "on", "demo/tick"]),
            Cmd::Schedule {
                cmd: schedule::ScheduleCmd::On { flow }
            } if flow == "demo/tick"
        ));
        assert!(matches!(
            parse(&["limit", "set", "gpu", "2"]),
            Cmd::Limit {
                cmd: limit::LimitCmd::Set { tag, limit: 2 }
            } if tag == "gpu"
        ));
        assert!(matches!(
            parse(&["flow", "register", "f.yaml", "--schedule-active"]),
            Cmd::Flow {
                cmd: flow::FlowCmd::Register {
                    schedule_active: true,
                    ..
                }
            }
        ));
        assert!(Cli::try_parse_from(["baton", "limit", "set", "gpu", "-1"]).is_err());
    }

    #[test]
    fn a_run_takes_a_priority_negative_or_not() {
        for (arg, want) in [("7", 7), ("-3", -3)] {
            let Cmd::Run(args) = parse(&["run", "f.yaml", "--priority", arg]) else {
                panic!("not a run");
            };
            assert_eq!(args.priority(), want);
        }
        let Cmd::Run(args) = parse(&["run", "f.yaml"]) else {
            panic!("not a run");
        };
        assert_eq!(args.priority(), 0);
    }
}
