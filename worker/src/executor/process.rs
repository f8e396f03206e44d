//! The process executor: runs a command in its own process group with the inputs as a JSON
//! object on stdin; stderr lines and all stdout lines but the last non-empty one are logs;
//! that last line is the JSON result. Cancellation kills the whole group and reaps it.

use super::{too_large, CANCELLED, MAX_RESULT_BYTES};
use crate::task::{TaskContext, TaskError, TaskResult};
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Mutex;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStderr, ChildStdout};

/// Lines of stderr kept for the error of a failed process.
const TAIL_LINES: usize = 20;
/// Bytes of stderr kept for the error of a failed process.
const TAIL_BYTES: usize = 2048;
/// Longest stderr line read; the rest of a longer line is dropped.
const MAX_LOG_LINE: usize = 16 << 10;
/// How much of a bad result line the error quotes.
const QUOTE_CHARS: usize = 200;

/// Runs `command` and returns the JSON value of its last non-empty stdout line.
pub(super) async fn run(
    command: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
    fatal_exit_codes: &[i32],
    inputs: &Value,
    ctx: &TaskContext,
) -> TaskResult {
    let key = &ctx.key;
    let mut cmd = tokio::process::Command::new(command);
    cmd.args(args)
        .envs(env)
        .env("BATON_RUN_ID", &key.run)
        .env("BATON_TASK", &key.task)
        .env("BATON_MAP_INDEX", key.map_index.to_string())
        .env("BATON_ATTEMPT", key.attempt.to_string())
        .env("BATON_RESULT_STORE", ctx.store.root_uri())
        .env("BATON_ARTIFACT_PREFIX", key.artifact_prefix())
        .env(
            "BATON_SCHEDULED_START_MS",
            ctx.scheduled_start_ms.to_string(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| {
        let message = format!("cannot start `{command}`: {e}");
        match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                TaskError::fatal(message)
            }
            _ => TaskError::retryable(message),
        }
    })?;
    let pgid = child.id().and_then(|id| i32::try_from(id).ok());
    let group = GroupGuard::new(pgid);
    // Kills the group if this worker dies (held until the attempt is over).
    let _watchdog = pgid.and_then(spawn_watchdog);
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let input = serde_json::to_vec(inputs).unwrap_or_else(|_| b"{}".to_vec());

    let outcome = {
        let feed = async move {
            if let Some(mut stdin) = stdin {
                // A process that does not read its input closes the pipe: not an error.
                let _ = stdin.write_all(&input).await;
                let _ = stdin.write_all(b"\n").await;
                let _ = stdin.shutdown().await;
            }
        };
        let wait = async {
            let status = child.wait().await;
            // No helper the process started survives it.
            group.kill();
            status
        };
        let all = async {
            tokio::join!(
                wait,
                feed,
                read_stdout(stdout, ctx),
                read_stderr(stderr, ctx)
            )
        };
        tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => None,
            r = all => Some(r),
        }
    };
    let Some((status, (), last, tail)) = outcome else {
        group.kill();
        let _ = child.wait().await;
        group.disarm();
        return Err(TaskError::fatal(CANCELLED));
    };
    group.disarm();
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
async fn read_stdout(out: Option<ChildStdout>, ctx: &TaskContext) -> Option<(String, bool)> {
    let mut reader = BufReader::new(out?);
    let mut buf = Vec::new();
    let mut pending: Option<(String, bool)> = None;
    while let Ok(Some(truncated)) = next_line(&mut reader, &mut buf, MAX_RESULT_BYTES + 1).await {
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() {
            continue;
        }
        if let Some((previous, _)) = pending.replace((line.to_string(), truncated)) {
            ctx.log("stdout", previous);
        }
    }
    pending
}

/// Streams stderr lines as logs and returns the tail.
async fn read_stderr(err: Option<ChildStderr>, ctx: &TaskContext) -> VecDeque<String> {
    let mut tail = VecDeque::new();
    let Some(err) = err else { return tail };
    let mut reader = BufReader::new(err);
    let mut buf = Vec::new();
    let mut tail_bytes = 0;
    while let Ok(Some(_)) = next_line(&mut reader, &mut buf, MAX_LOG_LINE).await {
        let line = String::from_utf8_lossy(&buf);
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
    }
    tail
}

/// Reads one line (with its newline) into `buf`, keeping at most `max` bytes of it. Returns
/// `None` at the end of input, else whether the line was cut.
async fn next_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<bool>> {
    buf.clear();
    let mut read_any = false;
    let mut truncated = false;
    loop {
        let chunk = reader.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(read_any.then_some(truncated));
        }
        read_any = true;
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let room = max.saturating_sub(buf.len());
        truncated |= take > room;
        buf.extend_from_slice(&chunk[..take.min(room)]);
        reader.consume(take);
        if done {
            return Ok(Some(truncated));
        }
    }
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

/// Process groups of running process tasks.
static GROUPS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// Kills every running process task's group (for an immediate exit).
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
    fn disarm(mut self) {
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
