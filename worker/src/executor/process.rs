//! The process executor: runs a command in its own process group with the inputs as a JSON
//! object on stdin; stderr lines and all stdout lines but the last non-empty one are logs;
//! that last line is the JSON result.
//!
//! A task is its command's process: the attempt ends when that process exits, not when every
//! holder of its stdout lets go. What it wrote is read until the pipes close or for
//! [`PIPE_GRACE`] after the exit, whichever comes first, so a background process that keeps
//! them open (a daemon started with `setsid`, say) cannot hold the task in RUNNING.
//!
//! The command runs under a [shim](crate::shim), a per-task supervisor process that is a
//! child subreaper: cancellation, a timeout or the worker's death (the shim's socket to the
//! worker closes, even when the worker is SIGKILLed) kill every process the task started,
//! including those that left its process group with `setsid` or a double fork. When the
//! command exits, whatever it left running is killed too (what users of Prefect or Ray expect
//! of a finished task's background processes): a finished attempt leaves no process behind,
//! and its output stops with it. The shim needs no privilege (no cgroup, no namespace), only
//! Linux and `/proc`.
//!
//! Without a shim (a binary that does not call [`crate::shim::init`], or a shim that cannot be
//! started; both logged once) the command runs directly in its own process group, and only
//! that group is killed: by the worker on cancellation, on a timeout and at the command's
//! exit, and by a `/bin/sh` watchdog in the group when the worker dies.

use super::{too_large, CANCELLED, MAX_RESULT_BYTES};
use crate::shim::{Report, Spec, SHIM_ARG};
use crate::task::{TaskContext, TaskError, TaskResult};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Mutex, Once};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};
use tokio_util::sync::CancellationToken;

/// Lines of stderr kept for the error of a failed process.
const TAIL_LINES: usize = 20;
/// Bytes of stderr kept for the error of a failed process.
const TAIL_BYTES: usize = 2048;
/// Longest stderr line read; the rest of a longer line is dropped.
use baton_proto::limits::MAX_LOG_LINE_BYTES as MAX_LOG_LINE;
/// How much of a bad result line the error quotes.
const QUOTE_CHARS: usize = 200;
/// How long stdout and stderr are still read (and stdin written) after the command exited,
/// when something else holds them open.
pub(crate) const PIPE_GRACE: Duration = Duration::from_secs(1);
/// How long the worker waits for a shim to kill and reap what a task left behind.
const SHIM_EXIT_WAIT: Duration = Duration::from_secs(5);

/// The worker's credentials that never reach a process task: AWS's unless the task asks for
/// them (`aws_credentials: true`), and baton's own tokens and secrets always (a task gets
/// the secrets it takes as inputs, set again on top).
const AWS_CREDENTIALS: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
];
const BATON_SECRETS: &[&str] = &["BATON_TOKEN", "BATON_TOKENS"];

/// The worker's environment variables a process task does not get.
pub(super) fn withheld_env(aws_credentials: bool) -> Vec<String> {
    let aws = if aws_credentials {
        &[][..]
    } else {
        AWS_CREDENTIALS
    };
    // A worker embedded in another program may still have its secrets in the environment.
    let secrets = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with(crate::secrets::ENV_PREFIX));
    BATON_SECRETS
        .iter()
        .chain(aws)
        .map(|s| s.to_string())
        .chain(secrets)
        .collect()
}

/// A process task's command line and environment.
pub(super) struct Command<'a> {
    pub command: &'a str,
    pub args: &'a [String],
    /// Set on top of the worker's environment.
    pub env: &'a BTreeMap<String, String>,
    /// Removed from the worker's environment (see [`withheld_env`]).
    pub withheld: &'a [String],
}

/// The variables baton gives every process and container task: who it is and where its
/// results and artifacts go.
pub(super) fn baton_env(ctx: &TaskContext) -> Vec<(String, String)> {
    let key = &ctx.key;
    [
        ("BATON_RUN_ID", key.run.clone()),
        ("BATON_TASK", key.task.clone()),
        ("BATON_MAP_INDEX", key.map_index.to_string()),
        ("BATON_ATTEMPT", key.attempt.to_string()),
        ("BATON_RESULT_STORE", ctx.store.root_uri()),
        ("BATON_ARTIFACT_PREFIX", key.artifact_prefix()),
        (
            "BATON_SCHEDULED_START_MS",
            ctx.scheduled_start_ms.to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    // The attempt's span (W3C trace context), for a task with an OpenTelemetry SDK.
    .chain(
        Some(baton_common::traces::traceparent(&tracing::Span::current()))
            .filter(|tp| !tp.is_empty())
            .map(|tp| ("TRACEPARENT".to_string(), tp)),
    )
    .collect()
}

/// Runs the command and returns the JSON value of its last non-empty stdout line.
pub(super) async fn run(
    cmd: Command<'_>,
    fatal_exit_codes: &[i32],
    inputs: &Value,
    ctx: &TaskContext,
) -> TaskResult {
    let Command {
        command,
        args,
        env,
        withheld,
    } = cmd;
    let mut env = env.clone();
    env.extend(baton_env(ctx));
    for (name, value) in crate::gpu::task_env(&ctx.grant.pinned, ctx.grant.worker_has_gpus) {
        env.insert(name.to_string(), value);
    }
    let spec = Spec {
        command: command.to_string(),
        args: args.to_vec(),
        env,
        withheld: withheld.to_vec(),
    };
    let started = tokio::select! {
        biased;
        // Dropping a starting shim makes it kill what it started.
        _ = ctx.cancel.cancelled() => return Err(TaskError::fatal(CANCELLED)),
        s = start(&spec) => s?,
    };
    let Started {
        stdin,
        stdout,
        stderr,
        mut task,
    } = started;
    let input = serde_json::to_vec(inputs).unwrap_or_else(|_| b"{}".to_vec());
    // Cancelled when the command has exited: the readers then stop within PIPE_GRACE.
    let exited = CancellationToken::new();

    let outcome = {
        let feed = async {
            if let Some(mut stdin) = stdin {
                let write = async {
                    // A process that does not read its input closes the pipe: not an error.
                    let _ = stdin.write_all(&input).await;
                    let _ = stdin.write_all(b"\n").await;
                    let _ = stdin.shutdown().await;
                };
                tokio::select! {
                    biased;
                    _ = grace(&exited) => {}
                    _ = write => {}
                }
            }
        };
        let wait = async {
            let status = task.wait().await;
            exited.cancel();
            status
        };
        let all = async {
            tokio::join!(
                wait,
                feed,
                read_stdout(stdout, ctx, &exited),
                read_stderr(stderr, ctx, &exited)
            )
        };
        tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => None,
            r = all => Some(r),
        }
    };
    let Some((status, (), last, tail)) = outcome else {
        task.kill();
        task.end().await;
        return Err(TaskError::fatal(CANCELLED));
    };
    task.end().await;
    let status =
        status.map_err(|e| TaskError::retryable(format!("cannot wait for `{command}`: {e}")))?;
    if !status.success() {
        let what = match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit status {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            (None, None) => "abnormal exit".to_string(),
        };
        let tail: Vec<String> = tail.into_iter().collect();
        let message = if tail.is_empty() {
            what
        } else {
            format!("{what}; stderr:\n{}", tail.join("\n"))
        };
        if status.code().is_some_and(|c| fatal_exit_codes.contains(&c)) {
            return Err(TaskError::fatal(format!(
                "{message} (a fatal exit code: not retried)"
            )));
        }
        return Err(TaskError::retryable(message));
    }
    let Some((line, truncated)) = last else {
        return Err(TaskError::fatal(
            "the process printed no result: its last non-empty stdout line must be a JSON value \
             (print null for none)",
        ));
    };
    if truncated {
        return Err(too_large());
    }
    serde_json::from_str(&line).map_err(|e| {
        let quoted: String = line.chars().take(QUOTE_CHARS).collect();
        TaskError::fatal(format!(
            "the last line of stdout is not JSON ({e}): {quoted}"
        ))
    })
}

/// Streams stdout lines as logs, holding back the last non-empty one, which it returns with
/// whether it was cut at the result size limit.
async fn read_stdout(
    out: Option<ChildStdout>,
    ctx: &TaskContext,
    exited: &CancellationToken,
) -> Option<(String, bool)> {
    let mut pending: Option<(String, bool)> = None;
    read_lines(out?, MAX_RESULT_BYTES + 1, exited, |line, truncated| {
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() {
            return;
        }
        if let Some((previous, _)) = pending.replace((line.to_string(), truncated)) {
            ctx.log("stdout", previous);
        }
    })
    .await;
    pending
}

/// Streams stderr lines as logs and returns the tail.
async fn read_stderr(
    err: Option<ChildStderr>,
    ctx: &TaskContext,
    exited: &CancellationToken,
) -> VecDeque<String> {
    let mut tail = VecDeque::new();
    let Some(err) = err else { return tail };
    let mut tail_bytes = 0;
    read_lines(err, MAX_LOG_LINE, exited, |line, _| {
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end_matches(['\n', '\r']).to_string();
        let kept: String = if line.len() > TAIL_BYTES {
            line.chars().take(TAIL_BYTES / 4).collect()
        } else {
            line.clone()
        };
        tail_bytes += kept.len();
        tail.push_back(kept);
        while tail.len() > TAIL_LINES || tail_bytes > TAIL_BYTES {
            match tail.pop_front() {
                Some(old) => tail_bytes -= old.len(),
                None => break,
            }
        }
        ctx.log("stderr", line);
    })
    .await;
    tail
}

/// Passes each line of `input` (with its newline, at most `max` bytes of it, and whether it
/// was cut) to `on_line` until the end of input, or until [`PIPE_GRACE`] after `exited`; a
/// line cut short then is passed as it is.
async fn read_lines<R: AsyncRead + Unpin>(
    input: R,
    max: usize,
    exited: &CancellationToken,
    mut on_line: impl FnMut(&[u8], bool),
) {
    let mut lines = LineReader::new(input, max);
    let grace = grace(exited);
    tokio::pin!(grace);
    loop {
        tokio::select! {
            biased;
            _ = &mut grace => {
                if let Some(truncated) = lines.partial() {
                    on_line(&lines.line, truncated);
                }
                return;
            }
            next = lines.next() => match next {
                Ok(Some(truncated)) => on_line(&lines.line, truncated),
                _ => return,
            },
        }
    }
}

/// Returns [`PIPE_GRACE`] after `exited` is cancelled.
async fn grace(exited: &CancellationToken) {
    exited.cancelled().await;
    tokio::time::sleep(PIPE_GRACE).await;
}

/// Splits a stream into lines; cancelling [`LineReader::next`] loses nothing.
struct LineReader<R> {
    reader: BufReader<R>,
    /// The line being read, or the one [`LineReader::next`] returned.
    line: Vec<u8>,
    /// Bytes of `line` were dropped at `max`.
    truncated: bool,
    /// `line` is a returned line, cleared by the next call.
    complete: bool,
    /// Some byte of the current line was read.
    started: bool,
    max: usize,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    fn new(input: R, max: usize) -> Self {
        LineReader {
            reader: BufReader::new(input),
            line: Vec::new(),
            truncated: false,
            complete: false,
            started: false,
            max,
        }
    }

    /// Reads the next line into `self.line`: `None` at the end of input, else whether the
    /// line was cut. Cancel-safe: a line read in part is kept for the next call.
    async fn next(&mut self) -> io::Result<Option<bool>> {
        if self.complete {
            self.line.clear();
            self.truncated = false;
            self.complete = false;
            self.started = false;
        }
        loop {
            let chunk = self.reader.fill_buf().await?;
            if chunk.is_empty() {
                return Ok(self.partial());
            }
            self.started = true;
            let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            let room = self.max.saturating_sub(self.line.len());
            self.truncated |= take > room;
            self.line.extend_from_slice(&chunk[..take.min(room)]);
            self.reader.consume(take);
            if done {
                self.complete = true;
                return Ok(Some(self.truncated));
            }
        }
    }

    /// Ends a line read in part (at the end of input, or when reading stops): whether it was
    /// cut, or `None` when there is none.
    fn partial(&mut self) -> Option<bool> {
        if self.complete || !self.started {
            return None;
        }
        self.complete = true;
        Some(self.truncated)
    }
}

/// A started command: its pipes and its process.
struct Started {
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    task: Task,
}

/// The running command, under a shim or not.
enum Task {
    Shim(ShimTask),
    Direct(DirectTask),
}

impl Task {
    /// Waits for the command itself to exit.
    async fn wait(&mut self) -> io::Result<ExitStatus> {
        match self {
            Task::Shim(t) => t.wait().await,
            Task::Direct(t) => t.wait().await,
        }
    }

    /// Kills everything the task started (without waiting).
    fn kill(&mut self) {
        match self {
            Task::Shim(t) => t.kill(),
            Task::Direct(t) => t.group.kill(),
        }
    }

    /// Waits for the task's processes to be killed and reaped (a shim kills what a command
    /// that exited left behind).
    async fn end(self) {
        match self {
            Task::Shim(t) => t.end().await,
            Task::Direct(t) => t.end().await,
        }
    }
}

/// Starts the command under a shim if there is one, else directly.
async fn start(spec: &Spec) -> Result<Started, TaskError> {
    static NO_SHIM: Once = Once::new();
    static SHIM_FAILED: Once = Once::new();
    match crate::shim::program() {
        Some(program) => match spawn_shim(&program) {
            Ok(shim) => return shim.start(spec).await,
            // A passing shortage (of processes, descriptors, memory): try again later.
            Err(e) if !missing(&e) => {
                return Err(TaskError::retryable(format!(
                    "cannot start the process shim of `{}`: {e}",
                    spec.command
                )))
            }
            // No usable shim program (no /proc, say): run without it.
            Err(e) => SHIM_FAILED.call_once(|| {
                tracing::warn!(
                    program = %program.display(), error = %e,
                    "cannot start the process shim: process tasks run without it, and a process \
                     that leaves its task's process group (setsid, a daemon) outlives the task"
                )
            }),
        },
        None => NO_SHIM.call_once(|| {
            tracing::warn!(
                "no process shim (this binary does not call baton_worker::shim::init, or this \
                 is not Linux): a process that leaves its task's process group (setsid, a \
                 daemon) outlives the task"
            )
        }),
    }
    start_direct(spec)
}

/// Whether a spawn error says the program is missing or not executable.
fn missing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
    )
}

/// The error of a command that cannot be started: fatal when it is missing or not executable.
fn start_error(
    command: &str,
    kind: Option<io::ErrorKind>,
    error: impl std::fmt::Display,
) -> TaskError {
    let message = format!("cannot start `{command}`: {error}");
    match kind {
        Some(io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied) => {
            TaskError::fatal(message)
        }
        _ => TaskError::retryable(message),
    }
}

/// A shim that was started but not yet given its command.
struct SpawnedShim {
    child: Child,
    socket: tokio::net::UnixStream,
}

/// Starts `program` as a shim, with the task's pipes and one end of a socket pair.
fn spawn_shim(program: &Path) -> io::Result<SpawnedShim> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let theirs = above_stdio(OwnedFd::from(theirs))?;
    let fd = theirs.as_raw_fd();
    let mut cmd = tokio::process::Command::new(program);
    cmd.arg(SHIM_ARG)
        .arg(fd.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group: neither a terminal's signals to the worker nor a group kill of the
        // command reach it.
        .process_group(0)
        // Dropped, the shim still has a task to kill: tokio reaps it once it exits.
        .kill_on_drop(false);
    // SAFETY: between fork and exec the closure only calls fcntl (async-signal-safe) on a
    // descriptor the parent keeps open until spawn returns.
    unsafe {
        cmd.pre_exec(move || inherit(fd));
    }
    let child = cmd.spawn()?;
    drop(theirs);
    ours.set_nonblocking(true)?;
    Ok(SpawnedShim {
        child,
        socket: tokio::net::UnixStream::from_std(ours)?,
    })
}

/// `fd`, or a copy of it numbered 3 or more (so that stdio set-up cannot replace it).
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC creates a new descriptor, owned by the OwnedFd made from it.
    let copy = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `copy` is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

/// Clears close-on-exec on `fd` (in a forked child, before exec).
fn inherit(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor that is open in this process.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl SpawnedShim {
    /// Sends the spec and waits for the shim to start the command.
    async fn start(self, spec: &Spec) -> Result<Started, TaskError> {
        let command = &spec.command;
        let lost = |e: io::Error| {
            TaskError::retryable(format!("the process shim of `{command}` failed: {e}"))
        };
        let (reports, mut orders) = self.socket.into_split();
        let mut line = serde_json::to_vec(spec)
            .map_err(|e| TaskError::fatal(format!("cannot encode the command: {e}")))?;
        line.push(b'\n');
        orders.write_all(&line).await.map_err(lost)?;
        let mut shim = ShimTask {
            child: self.child,
            reports: BufReader::new(reports),
            orders: Some(orders),
            pid: None,
        };
        match shim.next_report().await.map_err(lost)? {
            Report::Started { pid } => shim.pid = i32::try_from(pid).ok(),
            Report::Failed { os_error, message } => {
                let kind = os_error.map(|e| io::Error::from_raw_os_error(e).kind());
                shim.end().await;
                return Err(start_error(command, kind, message));
            }
            other => {
                shim.kill();
                shim.end().await;
                return Err(lost(io::Error::other(format!(
                    "unexpected report {other:?}"
                ))));
            }
        }
        Ok(Started {
            stdin: shim.child.stdin.take(),
            stdout: shim.child.stdout.take(),
            stderr: shim.child.stderr.take(),
            task: Task::Shim(shim),
        })
    }
}

/// A command running under its shim.
struct ShimTask {
    /// The shim process.
    child: Child,
    reports: BufReader<OwnedReadHalf>,
    /// Dropped (the write half shut down) to have the shim kill the task.
    orders: Option<OwnedWriteHalf>,
    /// The command's pid, leader of its process group.
    pid: Option<i32>,
}

impl ShimTask {
    /// The shim's next report (warnings are logged and skipped).
    async fn next_report(&mut self) -> io::Result<Report> {
        loop {
            let mut line = String::new();
            if self.reports.read_line(&mut line).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the process shim exited",
                ));
            }
            match serde_json::from_str::<Report>(&line) {
                Ok(Report::Warning { message }) => warn_once(message),
                Ok(report) => return Ok(report),
                Err(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad report from the process shim: {e}"),
                    ))
                }
            }
        }
    }

    async fn wait(&mut self) -> io::Result<ExitStatus> {
        match self.next_report().await {
            Ok(Report::Exited { status }) => Ok(ExitStatus::from_raw(status)),
            Ok(other) => Err(io::Error::other(format!(
                "unexpected report from the process shim: {other:?}"
            ))),
            Err(e) => {
                // The shim is gone: its command's group is all that can still be killed.
                if let Some(pid) = self.pid {
                    kill_group(pid);
                }
                Err(e)
            }
        }
    }

    fn kill(&mut self) {
        self.orders = None;
    }

    /// Has the shim kill whatever is left and waits (a while) for it to exit.
    async fn end(mut self) {
        self.kill();
        if tokio::time::timeout(SHIM_EXIT_WAIT, self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                pid = ?self.child.id(),
                "a process shim is still killing its task's processes"
            );
        }
    }
}

/// Logs each distinct warning of the shims once.
fn warn_once(message: String) {
    static SEEN: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let new = SEEN
        .lock()
        .map(|mut s| s.insert(message.clone()))
        .unwrap_or(true);
    if new {
        tracing::warn!("{message}");
    }
}

/// A command run without a shim: its process group is killed, and a watchdog kills it when
/// the worker dies.
struct DirectTask {
    child: Child,
    group: GroupGuard,
    _watchdog: Option<Child>,
}

impl DirectTask {
    async fn wait(&mut self) -> io::Result<ExitStatus> {
        let status = self.child.wait().await;
        // No helper the process started in its group survives it.
        self.group.kill();
        status
    }

    async fn end(mut self) {
        let _ = self.child.wait().await;
        self.group.disarm();
    }
}

fn start_direct(spec: &Spec) -> Result<Started, TaskError> {
    let mut cmd = tokio::process::Command::new(&spec.command);
    for name in &spec.withheld {
        cmd.env_remove(name);
    }
    cmd.args(&spec.args)
        .envs(&spec.env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| start_error(&spec.command, Some(e.kind()), e))?;
    let pgid = child.id().and_then(|id| i32::try_from(id).ok());
    let group = GroupGuard::new(pgid);
    // Kills the group if this worker dies (held until the attempt is over).
    let watchdog = pgid.and_then(spawn_watchdog);
    Ok(Started {
        stdin: child.stdin.take(),
        stdout: child.stdout.take(),
        stderr: child.stderr.take(),
        task: Task::Direct(DirectTask {
            child,
            group,
            _watchdog: watchdog,
        }),
    })
}

/// Starts a watchdog in process group `pgid`: a shell waiting on a pipe whose only writer is
/// this worker. When the worker dies (even by SIGKILL) the pipe closes and the watchdog kills
/// the whole group, so a task never outlives its worker (and a concurrency slot freed when
/// the worker is lost is really free). When the attempt ends normally the group is killed
/// by the worker itself, the watchdog with it.
fn spawn_watchdog(pgid: i32) -> Option<tokio::process::Child> {
    let spawned = tokio::process::Command::new("/bin/sh")
        .args(["-c", "read _; kill -KILL -\"$0\"", &pgid.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(pgid)
        .kill_on_drop(false)
        .spawn();
    match spawned {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %e, "no watchdog for a process task: it may outlive this worker");
            None
        }
    }
}

/// Process groups of running process tasks run without a shim.
static GROUPS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// Kills every running process task's group (for an immediate exit). Tasks under a shim are
/// killed by their shims when this process exits and its end of their sockets closes.
pub fn kill_all_groups() {
    let groups = GROUPS.lock().map(|g| g.clone()).unwrap_or_default();
    for pgid in groups {
        kill_group(pgid);
    }
}

fn kill_group(pgid: i32) {
    if pgid > 1 {
        // SAFETY: kill has no memory effects; a negative pid names the group we created.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

/// Kills a process group when dropped (a dropped attempt leaves nothing behind) or when told.
struct GroupGuard(Option<i32>);

impl GroupGuard {
    fn new(pgid: Option<i32>) -> Self {
        if let (Some(p), Ok(mut groups)) = (pgid, GROUPS.lock()) {
            groups.push(p);
        }
        GroupGuard(pgid)
    }

    fn kill(&self) {
        if let Some(pgid) = self.0 {
            kill_group(pgid);
        }
    }

    /// Forgets the group (it is dead and reaped).
    fn disarm(&mut self) {
        self.forget();
    }

    fn forget(&mut self) {
        if let (Some(p), Ok(mut groups)) = (self.0.take(), GROUPS.lock()) {
            if let Some(i) = groups.iter().position(|&g| g == p) {
                groups.swap_remove(i);
            }
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
        self.forget();
    }
}
