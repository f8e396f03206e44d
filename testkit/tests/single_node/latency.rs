//! Dispatch latency on real processes: no task run waits for the network after its inputs
//! are ready. Accepted sockets without TCP_NODELAY held small assignment frames back until
//! the worker's delayed ACK (about 40 ms) whenever two went out back to back: the
//! scheduler's own sockets are inspected for the option, and the task runs' microsecond
//! timings show any stall as a gap between ready and started.

use baton_client::Client;
use baton_testkit::Cluster;
use std::collections::BTreeMap;

/// A dispatch that waits this long after its task run became ready is a stall.
const STALL_US: i64 = 25_000;

/// The dispatch waits (started - ready, µs) of every worker task run of `runs` ridge sweeps.
async fn dispatch_waits(client: &Client, source: &str, runs: usize) -> anyhow::Result<Vec<i64>> {
    let mut waits = Vec::new();
    for _ in 0..runs {
        let run = client
            .run_source(source.to_string(), BTreeMap::new(), String::new())
            .await?
            .run
            .ok_or_else(|| anyhow::anyhow!("no run"))?;
        let done = client.wait(&run.id).await?;
        anyhow::ensure!(
            done.state == baton_proto::RunState::Completed as i32,
            "{done:?}"
        );
        anyhow::ensure!(done.created_us > 0 && done.ended_us >= done.created_us);
        for t in client.task_runs(&run.id, false).await? {
            anyhow::ensure!(
                t.ready_us > 0 && t.assigned_us >= t.ready_us && t.ended_us >= t.assigned_us,
                "task run {}[{}] has incomplete timings: {t:?}",
                t.task,
                t.map_index
            );
            waits.push(t.started_us - t.ready_us);
        }
    }
    Ok(waits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ready_task_run_waits_for_the_network() -> anyhow::Result<()> {
    // Timing-sensitive: not alongside an HA cluster of this binary.
    let _serial = crate::support::serial().await;
    let mut cluster = Cluster::start(&[]).await?;
    cluster.add_worker("w-a", "local,trainer", 4)?;
    cluster.add_worker("w-b", "local,trainer", 4)?;
    let client = Client::connect(&cluster.url()).await?;
    let source = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/ridge_sweep.yaml"
    ))?;
    // Both workers connected, and everything warm, before measuring.
    baton_testkit::eventually(
        std::time::Duration::from_secs(20),
        "two workers",
        || async {
            let n = client.workers().await.map(|w| w.len()).unwrap_or(0);
            (n == 2).then_some(())
        },
    )
    .await?;
    dispatch_waits(&client, &source, 1).await?;
    // A machine busy with other tests can delay any one measurement; a stall that the
    // network adds is there every time. Up to three rounds of five sweeps.
    let mut last = Vec::new();
    for _ in 0..3 {
        let mut waits = dispatch_waits(&client, &source, 5).await?;
        waits.sort_unstable();
        let stalls = waits.iter().filter(|w| **w >= STALL_US).count();
        let median = waits[waits.len() / 2];
        eprintln!(
            "dispatch waits: {} task runs, median {median} µs, max {} µs, {stalls} over {STALL_US} µs",
            waits.len(),
            waits.last().copied().unwrap_or(0)
        );
        if stalls == 0 && median < 5_000 {
            return Ok(());
        }
        last = waits;
    }
    anyhow::bail!("ready task runs waited for dispatch (µs, sorted): {last:?}")
}

/// TCP_NODELAY of every connected socket of process `pid` whose local port is `port`
/// (the sockets it accepted there), read through duplicates of its descriptors.
fn accepted_nodelay(pid: i32, port: u16) -> anyhow::Result<Vec<bool>> {
    // SAFETY: plain syscalls on descriptors this function owns and closes.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    anyhow::ensure!(
        pidfd >= 0,
        "pidfd_open: {}",
        std::io::Error::last_os_error()
    );
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let entry = entry?;
        let is_socket = std::fs::read_link(entry.path())
            .map(|l| l.to_string_lossy().starts_with("socket:"))
            .unwrap_or(false);
        let Some(target) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if !is_socket {
            continue;
        }
        // SAFETY: as above; `fd` is closed below.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, target, 0) } as i32;
        if fd < 0 {
            continue;
        }
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let mut peer: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut peer_len = len;
        let mut nodelay: libc::c_int = 0;
        let mut opt_len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: the out-pointers point at locals of the sizes given.
        let (local, connected, got) = unsafe {
            (
                libc::getsockname(fd, (&mut addr as *mut libc::sockaddr_in).cast(), &mut len),
                libc::getpeername(
                    fd,
                    (&mut peer as *mut libc::sockaddr_in).cast(),
                    &mut peer_len,
                ),
                libc::getsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_NODELAY,
                    (&mut nodelay as *mut libc::c_int).cast(),
                    &mut opt_len,
                ),
            )
        };
        // SAFETY: closing our duplicate.
        unsafe { libc::close(fd) };
        if local == 0
            && connected == 0
            && got == 0
            && addr.sin_family == libc::AF_INET as libc::sa_family_t
            && u16::from_be(addr.sin_port) == port
        {
            out.push(nodelay != 0);
        }
    }
    // SAFETY: closing our pidfd.
    unsafe { libc::close(pidfd) };
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedulers_accepted_sockets_have_tcp_nodelay() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(&[]).await?;
    cluster.add_worker("w-a", "local", 2)?;
    let client = Client::connect(&cluster.url()).await?;
    baton_testkit::eventually(std::time::Duration::from_secs(20), "a worker", || async {
        let n = client.workers().await.map(|w| w.len()).unwrap_or(0);
        (n == 1).then_some(())
    })
    .await?;
    let nodelay = accepted_nodelay(cluster.scheduler.pid(), cluster.port)?;
    // The worker's stream and this client's channel, at least.
    assert!(nodelay.len() >= 2, "accepted sockets found: {nodelay:?}");
    assert!(
        nodelay.iter().all(|on| *on),
        "accepted sockets without TCP_NODELAY: {nodelay:?}"
    );
    Ok(())
}
