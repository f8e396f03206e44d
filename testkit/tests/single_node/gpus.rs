//! GPU workers on real processes, with simulated devices (`BATON_SIMULATED_GPUS` replaces
//! NVML): each process task sees exactly its pinned device in `CUDA_VISIBLE_DEVICES`, no two
//! running attempts share a device, a 2-GPU worker with more slots never runs 3 one-GPU
//! attempts at once, a cancelled attempt's device is reused only once its process is gone,
//! and `baton workers` lists the devices.

use baton_client::Client;
use baton_proto as pb;
use baton_testkit::baton_cli as baton;
use baton_testkit::{eventually, Cluster};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// `n` mapped one-GPU process tasks on `trainer` workers: each records at its start its pid
/// and the devices of every live attempt (marker files in `dir/running`), sleeps, and prints
/// `"<CUDA_VISIBLE_DEVICES>|<BATON_GPUS>"`.
fn gpu_flow(n: usize, dir: &Path) -> String {
    let d = dir.display();
    let script = format!(
        "d={d}; f=$d/running/$BATON_MAP_INDEX-$BATON_ATTEMPT; \
         echo $$ $CUDA_VISIBLE_DEVICES > $f; live=; \
         for m in $d/running/*; do set -- $(cat $m); kill -0 $1 2>/dev/null && live=\\\"$live $2\\\"; done; \
         echo $live >> $d/starts.log; sleep 0.4; rm -f $f; \
         printf '\\\"%s|%s\\\"\\n' \\\"$CUDA_VISIBLE_DEVICES\\\" \\\"$BATON_GPUS\\\""
    );
    format!(
        r#"
name: gpu-pinning
labels: [trainer]
tasks:
  - name: items
    builtin: range
    inputs: {{n: {n}}}
  - name: fit
    process:
      command: sh
      args: ["-c", "{script}"]
    inputs: {{i: {{result: items}}}}
    map: [i]
    resources: {{gpus: 1}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_attempt_sees_only_its_own_gpu_and_no_device_is_shared() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(&[]).await?;
    // Two simulated devices of 16 GB and 8 slots: the GPUs, not the slots, bound it.
    cluster.add_worker_with(
        "gpu-box",
        "local,trainer",
        8,
        &["--gpus", "auto"],
        &[("BATON_SIMULATED_GPUS", "16000,16000")],
    )?;
    let url = cluster.url();
    let c = Client::connect(&url).await?;
    let worker = eventually(Duration::from_secs(20), "the GPU worker", || {
        let c = c.clone();
        async move { c.workers().await.ok()?.into_iter().next() }
    })
    .await?;
    let devices = worker.resources.clone().unwrap_or_default().devices;
    assert_eq!(devices.len(), 2, "{worker:?}");
    let uuids: Vec<String> = devices.iter().map(|d| d.uuid.clone()).collect();
    assert!(uuids.iter().all(|u| u.starts_with("GPU-")), "{uuids:?}");
    assert_eq!(devices[0].memory_mb, 16_000);

    let (code, out, err) = baton(&url, &["workers"])?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("2/2"), "{out}");
    for u in &uuids {
        assert!(out.contains(u.as_str()), "{out}");
    }

    let dir = cluster.dir.path().join("shared");
    std::fs::create_dir_all(dir.join("running"))?;
    let n = 6;
    let run = c
        .run_source(gpu_flow(n, &dir), BTreeMap::new(), String::new())
        .await?
        .run
        .expect("a run");
    let done = tokio::time::timeout(Duration::from_secs(60), c.wait(&run.id)).await??;
    cluster.assert_completed(&done);

    // Each attempt saw exactly one of the devices, by UUID, with its index.
    let trs = c.task_runs(&run.id, true).await?;
    let fits: Vec<&pb::TaskRun> = trs.iter().filter(|t| t.task == "fit").collect();
    assert_eq!(fits.len(), n);
    for t in &fits {
        let value: String = serde_json::from_str(&t.value)?;
        let (cuda, index) = value.split_once('|').expect("cuda|index");
        let i: usize = index.parse()?;
        assert_eq!(cuda, uuids[i], "task run {}: {value}", t.map_index);
    }
    // At every start, the live attempts held distinct devices, and never more than two.
    let starts = std::fs::read_to_string(dir.join("starts.log"))?;
    assert_eq!(starts.lines().count(), n, "{starts}");
    let mut most = 0;
    for line in starts.lines() {
        let live: Vec<&str> = line.split_whitespace().collect();
        let mut distinct = live.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), live.len(), "a device shared: {line}");
        assert!(live.len() <= 2, "{} attempts on 2 GPUs: {line}", live.len());
        most = most.max(live.len());
    }
    assert_eq!(most, 2, "both devices were used at once:\n{starts}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_attempts_gpu_is_reused_only_once_its_process_is_gone() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(&[]).await?;
    cluster.add_worker_with(
        "one-gpu",
        "local",
        4,
        &[],
        &[("BATON_SIMULATED_GPUS", "24000")],
    )?;
    let url = cluster.url();
    let c = Client::connect(&url).await?;
    eventually(Duration::from_secs(20), "the worker", || {
        let c = c.clone();
        async move { (!c.workers().await.ok()?.is_empty()).then_some(()) }
    })
    .await?;
    let pid_file = cluster.dir.path().join("holder.pid");
    let holder = format!(
        r#"
name: holder
tasks:
  - name: hold
    process:
      command: sh
      args: ["-c", "trap '' TERM; echo $$ > {p}; sleep 60; echo null"]
    inputs: {{}}
    resources: {{gpus: 1}}
"#,
        p = pid_file.display()
    );
    let next = format!(
        r#"
name: next
tasks:
  - name: use
    process:
      command: sh
      args: ["-c", "if kill -0 $(cat {p}) 2>/dev/null; then echo '\"alive\"'; else echo '\"gone\"'; fi"]
    inputs: {{}}
    resources: {{gpus: 1}}
"#,
        p = pid_file.display()
    );
    let first = c
        .run_source(holder, BTreeMap::new(), String::new())
        .await?
        .run
        .expect("a run");
    eventually(Duration::from_secs(20), "the holder to start", || {
        let p = pid_file.clone();
        async move {
            std::fs::read_to_string(p)
                .ok()
                .filter(|s| !s.trim().is_empty())
        }
    })
    .await?;
    let second = c
        .run_source(next, BTreeMap::new(), String::new())
        .await?
        .run
        .expect("a run");
    // It waits, ready, because the only GPU is held by the holder's attempt.
    eventually(
        Duration::from_secs(20),
        "the next task to wait for the GPU",
        || {
            let c = c.clone();
            let (first, second) = (first.id.clone(), second.id.clone());
            async move {
                let waiting = c.task_runs(&second, false).await.ok()?;
                let w = c.workers().await.ok()?.into_iter().next()?;
                let held_by_holder = w.gpus_held.iter().any(|h| {
                    h.key.as_ref().is_some_and(|k| k.run_id == first) && h.gpus == vec![0]
                });
                (waiting.first()?.state == pb::TaskState::Ready as i32
                    && w.free.as_ref()?.gpus == 0
                    && held_by_holder)
                    .then_some(())
            }
        },
    )
    .await?;
    let waiting = c.task_runs(&second.id, false).await?;
    assert_eq!(waiting[0].state, pb::TaskState::Ready as i32, "{waiting:?}");
    c.cancel_run(&first.id).await?;
    let done = tokio::time::timeout(Duration::from_secs(30), c.wait(&second.id)).await??;
    cluster.assert_completed(&done);
    let trs = c.task_runs(&second.id, true).await?;
    assert_eq!(
        trs[0].value, "\"gone\"",
        "the next attempt started while the holder lived"
    );
    Ok(())
}

/// The evaluate task runs' R² of a finished ridge sweep, by alpha.
async fn scores(c: &Client, run: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = c
        .task_runs(run, true)
        .await?
        .into_iter()
        .filter(|t| t.task == "evaluate")
        .map(|t| {
            let v: serde_json::Value = serde_json::from_str(&t.value).unwrap_or_default();
            (v["alpha"].to_string(), v["r2"].to_string())
        })
        .collect();
    out.sort();
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gpu_ridge_sweep_example_pins_a_gpu_per_fit_and_scores_as_the_cpu_run(
) -> anyhow::Result<()> {
    let mut cluster = Cluster::start(&[]).await?;
    cluster.add_worker("w-local", "local", 2)?;
    // Simulated GPUs: the pinning is real, the computation (without `cuda`) on the CPU.
    cluster.add_worker_with(
        "w-gpu",
        "local,trainer",
        4,
        &[],
        &[("BATON_SIMULATED_GPUS", "16000")],
    )?;
    let url = cluster.url();
    let c = Client::connect(&url).await?;
    eventually(Duration::from_secs(20), "two workers", || {
        let c = c.clone();
        async move { (c.workers().await.ok()?.len() == 2).then_some(()) }
    })
    .await?;
    let example = |name: &str| {
        std::fs::read_to_string(format!("{}/../examples/{name}", env!("CARGO_MANIFEST_DIR")))
    };
    let mut ids = Vec::new();
    for file in ["ridge_sweep.yaml", "ridge_sweep_gpu.yaml"] {
        let run = c
            .run_source(example(file)?, BTreeMap::new(), String::new())
            .await?
            .run
            .expect("a run");
        let done = tokio::time::timeout(Duration::from_secs(60), c.wait(&run.id)).await??;
        cluster.assert_completed(&done);
        ids.push(run.id);
    }
    let cpu = scores(&c, &ids[0]).await?;
    assert_eq!(cpu.len(), 6, "{cpu:?}");
    assert_eq!(scores(&c, &ids[1]).await?, cpu);
    // Every fit and score of the GPU run ran on the GPU worker, one at a time on its GPU.
    let trs = c.task_runs(&ids[1], false).await?;
    let pinned: Vec<&pb::TaskRun> = trs
        .iter()
        .filter(|t| t.task == "train" || t.task == "evaluate")
        .collect();
    assert_eq!(pinned.len(), 12);
    assert!(pinned.iter().all(|t| t.worker == "w-gpu"), "{pinned:?}");
    let mut spans: Vec<(i64, i64)> = pinned.iter().map(|t| (t.started_us, t.ended_us)).collect();
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[1].0 >= w[0].1, "two GPU attempts overlapped: {spans:?}");
    }
    Ok(())
}
