//! The container executor: runs a task in a container of its image through the worker's
//! Docker engine (the Engine API over its Unix socket), with the process contract: the
//! inputs as a JSON object on stdin, the last non-empty stdout line as the JSON result,
//! earlier stdout lines and stderr as log lines, a non-zero exit a failure (without retries
//! for `fatal_exit_codes`).
//!
//! Every container carries labels naming the worker, run, task, map index and attempt, and
//! is removed when its attempt ends, whatever ends it (exit, timeout, cancellation, the
//! leader lost). A worker that starts removes the containers its previous life left
//! ([`Containers::remove_left_over`]). Resources become limits: slots → CPUs, memory →
//! memory, the GPUs pinned to the attempt → a device request for exactly those. The
//! worker's AWS credentials, when the task asks for them, are copied into the container as a
//! file before it starts (`AWS_SHARED_CREDENTIALS_FILE`), not put in its configuration.

use super::{too_large, CANCELLED, MAX_RESULT_BYTES};
use crate::task::{TaskContext, TaskError, TaskResult};
use baton_common::flow::PullPolicy;
use baton_proto::limits::MAX_LOG_LINE_BYTES;
use bollard::models::{ContainerCreateBody, DeviceRequest, HostConfig};
use bollard::query_parameters::{
    AttachContainerOptions, CreateImageOptions, ListContainersOptions, RemoveContainerOptions,
    UploadToContainerOptions, WaitContainerOptions,
};
use bollard::Docker;
use futures::StreamExt;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, VecDeque};
use tokio::io::AsyncWriteExt;

/// The label naming the worker that started a container.
pub const WORKER_LABEL: &str = "dev.baton.worker";
/// Where the AWS credentials file goes in a container that asks for it.
const CREDENTIALS_DIR: &str = "/tmp";
const CREDENTIALS_FILE: &str = "baton-aws-credentials";
/// Lines of stderr kept for the error of a failed container.
const TAIL_LINES: usize = 20;

/// The worker's Docker engine, when it allows container tasks.
#[derive(Clone, Debug)]
pub struct Containers {
    docker: Docker,
    worker: String,
}

impl Containers {
    /// The engine at `DOCKER_HOST` or the default socket, for worker `worker`; checked with
    /// a ping.
    pub async fn connect(worker: &str) -> Result<Containers, String> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| format!("cannot reach the Docker engine: {e}"))?;
        docker
            .ping()
            .await
            .map_err(|e| format!("the Docker engine does not answer: {e}"))?;
        Ok(Containers {
            docker,
            worker: worker.to_string(),
        })
    }

    /// Removes every container this worker's id left (a previous life killed with -9).
    pub async fn remove_left_over(&self) -> Result<usize, String> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{WORKER_LABEL}={}", self.worker)],
        )]);
        let found = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|e| format!("cannot list containers: {e}"))?;
        let mut removed = 0;
        for c in found {
            if let Some(id) = c.id {
                if remove(&self.docker, &id).await.is_ok() {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

/// A container task, as the executor runs it.
pub(super) struct Spec<'a> {
    pub image: &'a str,
    pub command: Option<&'a str>,
    pub args: &'a [String],
    /// The task's environment, its secrets and baton's variables.
    pub env: BTreeMap<String, String>,
    pub workdir: Option<&'a str>,
    pub pull: PullPolicy,
    pub fatal_exit_codes: &'a [i32],
    pub aws_credentials: bool,
    /// CPUs (the task's slots) and memory (MiB, 0: no limit).
    pub cpus: u32,
    pub memory_mb: u64,
}

/// Runs the container to its end; it is removed whatever happens.
pub(super) async fn run(spec: Spec<'_>, inputs: &Value, ctx: &TaskContext) -> TaskResult {
    let Some(c) = ctx.grant.containers.clone() else {
        return Err(TaskError::fatal(
            "this worker does not run container tasks (start it with --allow container)",
        ));
    };
    ensure_image(&c.docker, spec.image, spec.pull, ctx).await?;
    let id = create(&c, &spec, ctx).await?;
    let outcome = tokio::select! {
        r = attach_and_wait(&c.docker, &id, &spec, inputs, ctx) => r,
        () = ctx.cancel.cancelled() => Err(TaskError::fatal(CANCELLED)),
    };
    if let Err(e) = remove(&c.docker, &id).await {
        tracing::warn!(container = %id, error = %e, "cannot remove a task's container");
    }
    outcome
}

/// Makes sure the engine has `image`, as `pull` says.
async fn ensure_image(
    docker: &Docker,
    image: &str,
    pull: PullPolicy,
    ctx: &TaskContext,
) -> Result<(), TaskError> {
    let present = docker.inspect_image(image).await.is_ok();
    match (pull, present) {
        (PullPolicy::Never, false) => Err(TaskError::fatal(format!(
            "image `{image}` is not on this worker's Docker engine, and the task says `pull: never`"
        ))),
        (PullPolicy::Never, true) | (PullPolicy::IfMissing, true) => Ok(()),
        (PullPolicy::IfMissing, false) | (PullPolicy::Always, _) => {
            ctx.log("baton", format!("pulling image {image}"));
            let mut progress = docker.create_image(
                Some(CreateImageOptions {
                    from_image: Some(image.to_string()),
                    ..Default::default()
                }),
                None,
                None,
            );
            while let Some(step) = progress.next().await {
                if let Err(e) = step {
                    // A registry may be out of reach for a while: another try may do.
                    return Err(TaskError::retryable(format!(
                        "cannot pull image `{image}`: {e}"
                    )));
                }
            }
            Ok(())
        }
    }
}

/// Creates the attempt's container (not started).
async fn create(c: &Containers, spec: &Spec<'_>, ctx: &TaskContext) -> Result<String, TaskError> {
    let key = &ctx.key;
    let labels = HashMap::from([
        (WORKER_LABEL.to_string(), c.worker.clone()),
        ("dev.baton.run".to_string(), key.run.clone()),
        ("dev.baton.task".to_string(), key.task.clone()),
        ("dev.baton.map-index".to_string(), key.map_index.to_string()),
        ("dev.baton.attempt".to_string(), key.attempt.to_string()),
    ]);
    let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    // The worker's credentials, when the task asks and the worker has some.
    let credentials = spec.aws_credentials.then(credentials_file).flatten();
    if credentials.is_some() {
        env.push(format!(
            "AWS_SHARED_CREDENTIALS_FILE={CREDENTIALS_DIR}/{CREDENTIALS_FILE}"
        ));
    }
    let gpus: Vec<String> = ctx.grant.pinned.iter().map(|g| g.uuid.clone()).collect();
    let host_config = HostConfig {
        nano_cpus: Some(i64::from(spec.cpus.max(1)) * 1_000_000_000),
        memory: (spec.memory_mb > 0).then(|| (spec.memory_mb as i64).saturating_mul(1 << 20)),
        device_requests: (!gpus.is_empty()).then(|| {
            vec![DeviceRequest {
                driver: Some("nvidia".into()),
                device_ids: Some(gpus),
                capabilities: Some(vec![vec!["gpu".into()]]),
                ..Default::default()
            }]
        }),
        ..Default::default()
    };
    let (entrypoint, cmd) = match spec.command {
        Some(command) => (Some(vec![command.to_string()]), Some(spec.args.to_vec())),
        None if spec.args.is_empty() => (None, None),
        None => (None, Some(spec.args.to_vec())),
    };
    let body = ContainerCreateBody {
        image: Some(spec.image.to_string()),
        entrypoint,
        cmd,
        env: Some(env),
        working_dir: spec.workdir.map(str::to_string),
        labels: Some(labels),
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        open_stdin: Some(true),
        stdin_once: Some(true),
        tty: Some(false),
        host_config: Some(host_config),
        ..Default::default()
    };
    let created = c
        .docker
        .create_container(None, body)
        .await
        .map_err(|e| TaskError::retryable(format!("cannot create the container: {e}")))?;
    if let Some(file) = credentials {
        let tar = tar_of(CREDENTIALS_FILE, file.as_bytes());
        let uploaded = c
            .docker
            .upload_to_container(
                &created.id,
                Some(UploadToContainerOptions {
                    path: CREDENTIALS_DIR.to_string(),
                    ..Default::default()
                }),
                bollard::body_full(tar.into()),
            )
            .await;
        if let Err(e) = uploaded {
            let _ = remove(&c.docker, &created.id).await;
            return Err(TaskError::retryable(format!(
                "cannot copy the credentials into the container: {e}"
            )));
        }
    }
    Ok(created.id)
}

/// Attaches to the container, starts it, feeds its stdin and reads its output until it
/// exits; returns the result or the failure.
async fn attach_and_wait(
    docker: &Docker,
    id: &str,
    spec: &Spec<'_>,
    inputs: &Value,
    ctx: &TaskContext,
) -> TaskResult {
    let attached = docker
        .attach_container(
            id,
            Some(AttachContainerOptions {
                stream: true,
                stdin: true,
                stdout: true,
                stderr: true,
                ..Default::default()
            }),
        )
        .await
        .map_err(|e| TaskError::retryable(format!("cannot attach to the container: {e}")))?;
    docker
        .start_container(id, None)
        .await
        .map_err(|e| TaskError::retryable(format!("cannot start the container: {e}")))?;
    let mut input = attached.input;
    let mut line = serde_json::to_vec(inputs)
        .map_err(|e| TaskError::fatal(format!("the inputs do not encode: {e}")))?;
    line.push(b'\n');
    // A container that never reads its stdin must not hold the task: writes are best effort.
    let _ = input.write_all(&line).await;
    let _ = input.shutdown().await;

    let mut out = Output::default();
    let mut output = attached.output;
    while let Some(chunk) = output.next().await {
        match chunk {
            Ok(bollard::container::LogOutput::StdOut { message }) => {
                out.stdout(&message, ctx)?;
            }
            Ok(bollard::container::LogOutput::StdErr { message }) => out.stderr(&message, ctx),
            Ok(_) => {}
            Err(e) => {
                ctx.log("baton", format!("the container's output broke off: {e}"));
                break;
            }
        }
    }
    out.finish(ctx);
    let code = exit_code(docker, id).await?;
    if code != 0 {
        let tail: Vec<&str> = out.tail.iter().map(String::as_str).collect();
        let message = format!("the container exited with code {code}: {}", tail.join("\n"));
        return Err(
            if spec.fatal_exit_codes.iter().any(|&c| i64::from(c) == code) {
                TaskError::fatal(message)
            } else {
                TaskError::retryable(message)
            },
        );
    }
    let Some(last) = out.last else {
        return Err(TaskError::fatal(
            "the container printed no result (its last stdout line must be JSON)",
        ));
    };
    serde_json::from_str(&last).map_err(|e| {
        let quoted: String = last.chars().take(200).collect();
        TaskError::fatal(format!(
            "the container's last stdout line is not JSON ({e}): {quoted}"
        ))
    })
}

/// The container's exit code, once it has stopped.
async fn exit_code(docker: &Docker, id: &str) -> Result<i64, TaskError> {
    let mut waits = docker.wait_container(id, None::<WaitContainerOptions>);
    match waits.next().await {
        Some(Ok(r)) => Ok(r.status_code),
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
        Some(Err(e)) => Err(TaskError::retryable(format!(
            "cannot learn how the container ended: {e}"
        ))),
        None => Err(TaskError::retryable("the container's end was not reported")),
    }
}

/// Kills (if running) and removes a container.
async fn remove(docker: &Docker, id: &str) -> Result<(), bollard::errors::Error> {
    match docker
        .remove_container(
            id,
            Some(RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            }),
        )
        .await
    {
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        other => other,
    }
}

/// The container's output, split into lines: the last non-empty stdout line is the result
/// candidate, the others are logged as they come.
#[derive(Default)]
struct Output {
    stdout_partial: Vec<u8>,
    stderr_partial: Vec<u8>,
    last: Option<String>,
    tail: VecDeque<String>,
}

impl Output {
    fn stdout(&mut self, bytes: &[u8], ctx: &TaskContext) -> Result<(), TaskError> {
        self.stdout_partial.extend_from_slice(bytes);
        if self.stdout_partial.len() > MAX_RESULT_BYTES + 1 {
            return Err(too_large());
        }
        while let Some(pos) = self.stdout_partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.stdout_partial.drain(..=pos).collect();
            self.stdout_line(&line[..line.len() - 1], ctx);
        }
        Ok(())
    }

    fn stdout_line(&mut self, line: &[u8], ctx: &TaskContext) {
        let text = String::from_utf8_lossy(line)
            .trim_end_matches('\r')
            .to_string();
        if text.trim().is_empty() {
            return;
        }
        if let Some(previous) = self.last.replace(text) {
            ctx.log("stdout", cut(previous));
        }
    }

    fn stderr(&mut self, bytes: &[u8], ctx: &TaskContext) {
        self.stderr_partial.extend_from_slice(bytes);
        while let Some(pos) = self.stderr_partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.stderr_partial.drain(..=pos).collect();
            self.stderr_line(&line[..line.len() - 1], ctx);
        }
        if self.stderr_partial.len() > MAX_LOG_LINE_BYTES {
            let line = std::mem::take(&mut self.stderr_partial);
            self.stderr_line(&line, ctx);
        }
    }

    fn stderr_line(&mut self, line: &[u8], ctx: &TaskContext) {
        let text = cut(String::from_utf8_lossy(line)
            .trim_end_matches('\r')
            .to_string());
        self.tail.push_back(text.clone());
        if self.tail.len() > TAIL_LINES {
            self.tail.pop_front();
        }
        ctx.log("stderr", text);
    }

    /// Takes what is left after the output ended without a final newline.
    fn finish(&mut self, ctx: &TaskContext) {
        let rest = std::mem::take(&mut self.stdout_partial);
        if !rest.is_empty() {
            self.stdout_line(&rest, ctx);
        }
        let rest = std::mem::take(&mut self.stderr_partial);
        if !rest.is_empty() {
            self.stderr_line(&rest, ctx);
        }
    }
}

/// A log line cut to its limit.
fn cut(mut line: String) -> String {
    baton_common::text::cut(&mut line, MAX_LOG_LINE_BYTES, "");
    line
}

/// An AWS shared credentials file with the worker's credentials: from its `AWS_*`
/// variables, else its own `AWS_SHARED_CREDENTIALS_FILE`.
fn credentials_file() -> Option<String> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let (Some(id), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        let mut file =
            format!("[default]\naws_access_key_id = {id}\naws_secret_access_key = {secret}\n");
        if let Some(token) = var("AWS_SESSION_TOKEN") {
            file.push_str(&format!("aws_session_token = {token}\n"));
        }
        return Some(file);
    }
    std::fs::read_to_string(var("AWS_SHARED_CREDENTIALS_FILE")?).ok()
}

/// A tar archive of one file, readable by its owner only (uid and gid 0 in the archive;
/// Docker keeps them).
fn tar_of(name: &str, data: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    let put = |h: &mut [u8; 512], at: usize, value: &[u8]| {
        h[at..at + value.len()].copy_from_slice(value);
    };
    put(&mut header, 0, name.as_bytes());
    put(&mut header, 100, b"0000444\0");
    put(&mut header, 108, b"0000000\0");
    put(&mut header, 116, b"0000000\0");
    put(
        &mut header,
        124,
        format!("{:011o}\0", data.len()).as_bytes(),
    );
    put(&mut header, 136, b"00000000000\0");
    put(&mut header, 148, b"        ");
    header[156] = b'0';
    put(&mut header, 257, b"ustar\0");
    put(&mut header, 263, b"00");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    put(&mut header, 148, format!("{sum:06o}\0 ").as_bytes());
    let mut tar = header.to_vec();
    tar.extend_from_slice(data);
    tar.resize(tar.len().div_ceil(512) * 512 + 1024, 0);
    tar
}

#[cfg(test)]
mod tests {
    use super::tar_of;

    #[test]
    fn a_one_file_tar_has_a_valid_header() {
        let tar = tar_of("creds", b"hello");
        assert_eq!(tar.len(), 512 + 512 + 1024);
        assert_eq!(&tar[..5], b"creds");
        assert_eq!(&tar[124..136], b"00000000005\0");
        assert_eq!(&tar[257..263], b"ustar\0");
        // The checksum is the sum of the header's bytes with its own field as spaces.
        let mut h = tar[..512].to_vec();
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        let stored = std::str::from_utf8(&tar[148..154]).unwrap();
        assert_eq!(u32::from_str_radix(stored, 8).unwrap(), sum);
        assert_eq!(&tar[512..517], b"hello");
    }
}
