//! Child processes of the project's own binaries: spawn with a log file, signal, wait.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The path of one of the workspace's binaries, next to the running test's folder
/// (`target/<profile>/`).
pub fn bin_path(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    if !path.exists() {
        anyhow::bail!(
            "{} not found: build the binaries first (cargo build --bins)",
            path.display()
        );
    }
    Ok(path)
}

/// Runs the `baton` CLI against `scheduler` with `args`: (exit code, stdout, stderr).
pub fn baton_cli(scheduler: &str, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let out = std::process::Command::new(bin_path("baton")?)
        .arg("--scheduler")
        .arg(scheduler)
        .args(args)
        .env("BATON_TOKEN", crate::ha::TEST_ADMIN_TOKEN)
        .output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A running process of ours, killed when dropped.
pub struct Node {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
    pub generation: usize,
}

impl Node {
    /// Starts binary `bin` with `args`, stdout and stderr appended to `log`.
    pub fn spawn(bin: &str, args: &[String], log: PathBuf) -> anyhow::Result<Node> {
        Self::spawn_program(&bin_path(bin)?, bin, args, log)
    }

    /// Starts any `program` (e.g. `/usr/bin/etcd`) as node `name`, stdout and stderr
    /// appended to `log`.
    pub fn spawn_program(
        program: &Path,
        name: &str,
        args: &[String],
        log: PathBuf,
    ) -> anyhow::Result<Node> {
        Self::spawn_program_env(program, name, args, &[], log)
    }

    /// Starts binary `bin` with `args` and extra environment variables.
    pub fn spawn_env(
        bin: &str,
        args: &[String],
        env: &[(String, String)],
        log: PathBuf,
    ) -> anyhow::Result<Node> {
        Self::spawn_program_env(&bin_path(bin)?, bin, args, env, log)
    }

    /// Starts `program` as node `name` with extra environment variables.
    pub fn spawn_program_env(
        program: &Path,
        name: &str,
        args: &[String],
        env: &[(String, String)],
        log: PathBuf,
    ) -> anyhow::Result<Node> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let err = out.try_clone()?;
        let child = Command::new(program)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {}: {e}", program.display()))?;
        Ok(Node {
            name: name.to_string(),
            child,
            log,
            generation: 0,
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// SIGKILL, and reap it.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }

    /// SIGSTOP.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// SIGTERM, then wait for it to exit.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        self.signal(libc::SIGTERM);
        self.child.wait().ok()
    }

    /// Whether it still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }
}
