//! The process shim: a small supervisor the worker puts between itself and each process task,
//! so that cancellation, a timeout or the worker's death kill every process the task started.
//!
//! The worker starts it by re-executing its own binary (`/proc/self/exe`, valid even once the
//! file is replaced) with the hidden argument [`SHIM_ARG`]; [`init`], called first in `main`,
//! turns such a process into the shim. The shim makes itself a child subreaper
//! (`PR_SET_CHILD_SUBREAPER`): every process the task starts stays its descendant, even one
//! that calls `setsid` or double-forks, because orphans are re-parented to it instead of to
//! init. It starts the command in its own process group with the pipes the worker gave it,
//! lets go of its own copies of them, and talks to the worker over a socket of which the worker
//! holds the only other end:
//!
//! * worker → shim: one JSON line, the [`Spec`] to run; after that the worker writes nothing,
//!   and the socket becoming readable (the worker closed its end to ask for a kill, or died,
//!   even by SIGKILL) is the order to kill the task;
//! * shim → worker: JSON [`Report`] lines: `started` (or `failed`), then `exited` with the
//!   command's wait status.
//!
//! To kill, the shim SIGKILLs the command's process group, then, over and over, each of its
//! own children (read from `/proc/self/task/*/children`, or by scanning `/proc` for its pid as
//! parent), reaping them; the orphans of a killed process are re-parented to the shim and
//! killed in the next round, until it has no child left. Only its own unreaped children are
//! signalled by pid, so a recycled pid is never hit. The shim kills the task when the command
//! exits (whatever it left running is killed: a finished task leaves no process behind), when
//! its socket becomes readable, and on SIGTERM, SIGINT, SIGHUP or SIGQUIT. It needs no
//! privilege (no cgroup, no namespace) and is Linux-only; elsewhere, or in a binary that does
//! not call [`init`], the worker runs process tasks directly (see `executor::process`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Mutex;

/// The hidden first argument that makes a binary calling [`init`] run as a shim.
pub const SHIM_ARG: &str = "--baton-process-shim";

/// The program started as the shim of each process task, if any.
static PROGRAM: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Call first in `main` of every binary that runs a worker (before any thread is started). In
/// a process started as a shim it runs the shim and exits; otherwise it makes this binary the
/// shim of the process tasks this process runs.
pub fn init() {
    let mut args = std::env::args_os();
    if args.nth(1).is_some_and(|a| a == SHIM_ARG) {
        std::process::exit(imp::main(args.collect()));
    }
    if cfg!(target_os = "linux") {
        set_program("/proc/self/exe");
    }
}

/// Makes `program` (a binary whose `main` calls [`init`]) the shim of process tasks, e.g. the
/// `baton-worker` binary for a test that runs tasks in its own process.
pub fn set_program(program: impl Into<PathBuf>) {
    if let Ok(mut p) = PROGRAM.lock() {
        *p = Some(program.into());
    }
}

/// The shim program, if one was set up and this platform has shims.
pub(crate) fn program() -> Option<PathBuf> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    PROGRAM.lock().ok().and_then(|p| p.clone())
}

/// What to run: the command, its arguments and its environment (on top of the shim's own,
/// which is the worker's).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Spec {
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Variables of the shim's environment the command does not get.
    #[serde(default)]
    pub withheld: Vec<String>,
}

/// What the shim tells the worker, one JSON line each.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Report {
    /// The command runs as `pid`, leader of its own process group.
    Started { pid: u32 },
    /// The command could not be started.
    Failed {
        os_error: Option<i32>,
        message: String,
    },
    /// Something the worker should log: the shim runs, but cannot do all it should.
    Warning { message: String },
    /// The command exited with this wait status; the shim now kills what it left behind.
    Exited { status: i32 },
}

#[cfg(not(target_os = "linux"))]
mod imp {
    pub(super) fn main(_args: Vec<super::OsString>) -> i32 {
        eprintln!("the baton process shim runs on Linux only");
        2
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use super::{OsString, Report, Spec};
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::os::unix::net::UnixStream;
    use std::os::unix::process::CommandExt;
    use std::time::{Duration, Instant};

    /// The largest spec read (arguments and environment of one command).
    const MAX_SPEC_BYTES: u64 = 64 << 20;
    /// Signals that make the shim kill the task and exit.
    const TERMINATING: [libc::c_int; 4] =
        [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT];
    /// How often the shim looks for exited children when no signal tells it.
    const TICK_MS: libc::c_int = 1000;
    /// The same without a signalfd.
    const TICK_NO_SIGNALFD_MS: libc::c_int = 20;
    /// How long to wait between kill rounds when no child exited.
    const KILL_ROUND_MS: libc::c_int = 10;
    /// Without `/proc`, how long to wait for children after killing the command's group.
    const BLIND_WAIT: Duration = Duration::from_secs(2);

    /// The shim's `main`: `args` are what follows [`super::SHIM_ARG`], the number of the
    /// descriptor of its end of the worker's socket. Returns the exit code.
    pub(super) fn main(args: Vec<OsString>) -> i32 {
        let fd = args
            .first()
            .and_then(|a| a.to_str())
            .and_then(|a| a.parse::<RawFd>().ok())
            .filter(|&fd| fd > 2 && is_open(fd));
        let Some(fd) = fd else {
            eprintln!("baton process shim: expected the number of an open descriptor");
            return 2;
        };
        // SAFETY: the worker passes its socket's other end at this number (checked open above);
        // nothing else in this process uses it.
        let control = unsafe { UnixStream::from_raw_fd(fd) };
        // The command must not inherit it: the worker's death is seen through it.
        set_cloexec(fd);
        let signals = Signals::block();
        let mut shim = Shim {
            control,
            signals,
            command: None,
            status: None,
        };
        shim.run();
        0
    }

    struct Shim {
        control: UnixStream,
        signals: Signals,
        /// The command's pid while it is unreaped.
        command: Option<i32>,
        /// Its wait status once reaped.
        status: Option<i32>,
    }

    impl Shim {
        fn run(&mut self) {
            let mut reader = BufReader::new((&self.control).take(MAX_SPEC_BYTES));
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(_) if line.ends_with('\n') => {}
                // The worker is gone (or cancelled) before sending the spec: nothing to run.
                _ => return,
            }
            // The worker writes nothing after the spec: more is a kill order.
            let killed_already = !reader.buffer().is_empty();
            drop(reader);
            let spec: Spec = match serde_json::from_str(&line) {
                Ok(s) => s,
                Err(e) => {
                    self.report(&Report::Failed {
                        os_error: None,
                        message: format!("the shim got a bad spec: {e}"),
                    });
                    return;
                }
            };
            // SAFETY: prctl with integer arguments only changes attributes of this process.
            if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
                let e = std::io::Error::last_os_error();
                self.report(&Report::Warning {
                    message: format!(
                        "the process shim cannot become a subreaper ({e}): a process that leaves \
                         its task's process group may outlive the task"
                    ),
                });
            }
            if children().is_none() {
                self.report(&Report::Warning {
                    message: "the process shim cannot list processes in /proc: only a task's \
                              process group is killed with it"
                        .to_string(),
                });
            }
            // SAFETY: PR_SET_NAME reads a NUL-terminated name of at most 16 bytes.
            unsafe {
                libc::prctl(libc::PR_SET_NAME, c"baton-shim".as_ptr(), 0, 0, 0);
            }
            let mut cmd = std::process::Command::new(&spec.command);
            for name in &spec.withheld {
                cmd.env_remove(name);
            }
            cmd.args(&spec.args).envs(&spec.env).process_group(0);
            let mask = self.signals.original;
            // SAFETY: between fork and exec the closure only calls sigprocmask
            // (async-signal-safe) with a mask copied before the fork.
            unsafe {
                cmd.pre_exec(move || {
                    // The command starts with the worker's signal mask, not the shim's.
                    if libc::sigprocmask(libc::SIG_SETMASK, &mask, std::ptr::null_mut()) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let spawned = cmd.spawn();
            match spawned {
                Ok(child) => {
                    // The pid is reaped below, by waitpid; `child` has no destructor.
                    let pid = child.id();
                    self.command = i32::try_from(pid).ok();
                    self.report(&Report::Started { pid });
                }
                Err(e) => {
                    self.report(&Report::Failed {
                        os_error: e.raw_os_error(),
                        message: e.to_string(),
                    });
                    return;
                }
            }
            // The task's pipes must close when the task's processes are gone, not the shim.
            detach_stdio();
            if killed_already {
                return self.kill_all();
            }
            loop {
                let stop = self.wait_event(self.signals.tick(), true);
                self.reap();
                if let Some(status) = self.status.take() {
                    self.report(&Report::Exited { status });
                    return self.kill_all();
                }
                if stop {
                    return self.kill_all();
                }
            }
        }

        fn report(&self, report: &Report) {
            if let Ok(mut line) = serde_json::to_string(report) {
                line.push('\n');
                // A worker that is gone cannot be told; the socket's state says the rest.
                let _ = (&self.control).write_all(line.as_bytes());
            }
        }

        /// Waits up to `timeout_ms` for a child to change state, a terminating signal or (with
        /// `watch_control`) the socket to become readable; returns whether the task must be
        /// killed.
        fn wait_event(&mut self, timeout_ms: libc::c_int, watch_control: bool) -> bool {
            let mut fds = Vec::with_capacity(2);
            if self.signals.fd() >= 0 {
                fds.push(libc::pollfd {
                    fd: self.signals.fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            if watch_control {
                fds.push(libc::pollfd {
                    fd: self.control.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            // SAFETY: `fds` holds `fds.len()` initialized pollfd structs (none: a plain sleep).
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
            if n <= 0 {
                return false;
            }
            let mut stop = false;
            for pfd in &fds {
                if pfd.revents == 0 {
                    continue;
                }
                if pfd.fd == self.control.as_raw_fd() {
                    stop = true;
                } else {
                    stop |= self.signals.drain_terminating();
                }
            }
            stop
        }

        /// Reaps every exited child, noting the command's status. Returns how many were reaped,
        /// or `None` once there is no child at all.
        fn reap(&mut self) -> Option<usize> {
            let mut reaped = 0;
            loop {
                let mut status = 0;
                // SAFETY: waitpid writes the status to a valid i32.
                let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
                if pid > 0 {
                    reaped += 1;
                    if Some(pid) == self.command {
                        self.command = None;
                        self.status = Some(status);
                    }
                    continue;
                }
                if pid == 0 {
                    return Some(reaped);
                }
                match std::io::Error::last_os_error().raw_os_error() {
                    Some(libc::EINTR) => continue,
                    _ => return None,
                }
            }
        }

        /// Kills every descendant and reaps it; returns once the shim has no child left.
        fn kill_all(&mut self) {
            if let Some(pid) = self.command {
                // Unreaped, the leader keeps its group id from being recycled.
                kill(-pid, libc::SIGKILL);
            }
            let mut blind_since: Option<Instant> = None;
            loop {
                match children() {
                    Some(kids) => kids.into_iter().for_each(|k| kill(k, libc::SIGKILL)),
                    None => {
                        let since = *blind_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > BLIND_WAIT {
                            return;
                        }
                    }
                }
                match self.reap() {
                    None => return,
                    Some(0) => {
                        self.wait_event(KILL_ROUND_MS, false);
                    }
                    Some(_) => {}
                }
            }
        }
    }

    /// The shim's own children (it is single-threaded: they all hang on its one thread, but
    /// every thread's list is read), or `None` when `/proc` cannot tell.
    fn children() -> Option<Vec<i32>> {
        if let Some(kids) = children_from_task_lists() {
            return Some(kids);
        }
        // Without CONFIG_PROC_CHILDREN: every process whose parent is this one.
        let me = i32::try_from(std::process::id()).ok()?;
        let mut kids = Vec::new();
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            if parent_in_stat(&stat) == Some(me) {
                kids.push(pid);
            }
        }
        Some(kids)
    }

    fn children_from_task_lists() -> Option<Vec<i32>> {
        let mut kids = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
            let list = std::fs::read_to_string(task.path().join("children")).ok()?;
            kids.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
        Some(kids)
    }

    /// The parent pid in the text of `/proc/<pid>/stat` (`pid (comm) state ppid ...`, where
    /// comm may hold spaces and parentheses).
    pub(super) fn parent_in_stat(stat: &str) -> Option<i32> {
        let (_, rest) = stat.rsplit_once(')')?;
        rest.split_whitespace().nth(1)?.parse().ok()
    }

    fn kill(pid: i32, signal: libc::c_int) {
        if pid != 0 && pid != -1 {
            // SAFETY: kill has no memory effects; callers pass their own children or group.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }

    fn is_open(fd: RawFd) -> bool {
        // SAFETY: F_GETFD only queries the descriptor table.
        unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
    }

    fn set_cloexec(fd: RawFd) {
        // SAFETY: fcntl on a descriptor this process owns.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }

    /// Points the shim's stdin, stdout and stderr at /dev/null (the command has the pipes).
    fn detach_stdio() {
        let null = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null");
        for fd in 0..3 {
            // SAFETY: replacing or closing the standard descriptors, which nothing here holds
            // as an owned handle.
            unsafe {
                match &null {
                    Ok(null) => libc::dup2(null.as_raw_fd(), fd),
                    Err(_) => libc::close(fd),
                };
            }
        }
    }

    /// SIGCHLD and the terminating signals, blocked and read from a signalfd.
    struct Signals {
        fd: Option<OwnedFd>,
        /// The signal mask before they were blocked (the command's).
        original: libc::sigset_t,
    }

    impl Signals {
        fn block() -> Signals {
            // SAFETY: sigset operations on local sets; the mask only affects this
            // (single-threaded) process, and the command gets `original` back.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                let mut original: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigemptyset(&mut original);
                libc::sigaddset(&mut set, libc::SIGCHLD);
                for s in TERMINATING {
                    libc::sigaddset(&mut set, s);
                }
                if libc::sigprocmask(libc::SIG_BLOCK, &set, &mut original) != 0 {
                    return Signals { fd: None, original };
                }
                let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
                if fd < 0 {
                    // Polled instead; the terminating signals keep their default action.
                    libc::sigprocmask(libc::SIG_SETMASK, &original, std::ptr::null_mut());
                    return Signals { fd: None, original };
                }
                Signals {
                    fd: Some(OwnedFd::from_raw_fd(fd)),
                    original,
                }
            }
        }

        fn fd(&self) -> RawFd {
            self.fd.as_ref().map_or(-1, |f| f.as_raw_fd())
        }

        fn tick(&self) -> libc::c_int {
            if self.fd.is_some() {
                TICK_MS
            } else {
                TICK_NO_SIGNALFD_MS
            }
        }

        /// Reads the pending signals; returns whether one of them was a terminating one.
        fn drain_terminating(&mut self) -> bool {
            let mut terminating = false;
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            loop {
                // SAFETY: signalfd_siginfo is plain data; read writes at most `size` bytes.
                let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
                let n = unsafe {
                    libc::read(
                        self.fd(),
                        (&mut info as *mut libc::signalfd_siginfo).cast(),
                        size,
                    )
                };
                if usize::try_from(n).ok() != Some(size) {
                    return terminating;
                }
                terminating |=
                    i32::try_from(info.ssi_signo).is_ok_and(|s| TERMINATING.contains(&s));
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::parent_in_stat;

        #[test]
        fn parent_is_read_after_the_last_parenthesis() {
            assert_eq!(parent_in_stat("42 (sh) S 7 42 42 0"), Some(7));
            assert_eq!(parent_in_stat("42 (a) b) (c) R 9 1 1"), Some(9));
            assert_eq!(parent_in_stat("garbage"), None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Report;

    #[test]
    fn reports_are_one_json_line_each() {
        let r = Report::Exited { status: 256 };
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(line, r#"{"exited":{"status":256}}"#);
        assert_eq!(serde_json::from_str::<Report>(&line).unwrap(), r);
    }
}
