//! GPU pinning: each attempt that asks for GPUs gets its own devices, held until its worker
//! reports it ended; memory requirements; GPUs kept across a reconnect; unrunnable requests.

use super::*;
use crate::engine::Gpu;

fn gpu(index: u32, memory_mb: u64) -> Gpu {
    Gpu {
        index,
        uuid: format!("GPU-{index:04}"),
        name: "Simulated".into(),
        memory_mb,
    }
}

const PER_GPU: &str = r#"
name: per-gpu
tasks:
  - name: fit
    builtin: echo
    inputs: {x: [1, 2, 3, 4, 5, 6]}
    map: [x]
    resources: {gpus: 1}
"#;

/// The devices the outstanding attempts of `worker` hold, each a list of device indices.
fn held(c: &VirtualCluster, worker: &str) -> Vec<Vec<u32>> {
    c.workers[worker]
        .running
        .iter()
        .map(|a| a.gpus.clone())
        .collect()
}

#[test]
fn concurrent_attempts_get_distinct_devices_and_never_more_than_the_worker_has() {
    let mut c = VirtualCluster::new();
    c.register(PER_GPU);
    // Slots are not what limits it: 8 slots, 2 devices.
    c.connect_with_gpus("gpu-box", &[], 8, 2, vec![gpu(0, 81_000), gpu(1, 81_000)]);
    let run = c.start("per-gpu", json!({}));

    let mut assigned = 0;
    let mut most = 0;
    for _ in 0..100 {
        assigned += c.step().len();
        let holding = held(&c, "gpu-box");
        assert!(holding.len() <= 2, "{} attempts on 2 GPUs", holding.len());
        let mut devices: Vec<u32> = holding.iter().flatten().copied().collect();
        assert!(holding.iter().all(|h| h.len() == 1), "{holding:?}");
        devices.sort();
        devices.dedup();
        assert_eq!(devices.len(), holding.len(), "a device shared: {holding:?}");
        most = most.max(holding.len());
        let Some(a) = c.workers["gpu-box"].running.first().cloned() else {
            break;
        };
        c.succeed(&a);
    }
    assert_eq!(assigned, 6);
    assert_eq!(most, 2, "both devices are used");
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Completed);
}

#[test]
fn a_cancelled_attempts_device_is_not_reused_until_its_worker_reports_it_ended() {
    let mut c = VirtualCluster::new();
    c.register(PER_GPU);
    c.connect_with_gpus("one-gpu", &[], 4, 1, vec![gpu(0, 24_000)]);
    let first = c.start("per-gpu", json!({}));
    let new = c.step();
    assert_eq!(new.len(), 1, "one GPU, one attempt");
    let a = new[0].clone();
    assert_eq!(a.gpus, vec![0]);

    // The run is cancelled: the worker is told, but its process may still be running.
    c.cancel(&first);
    assert!(c.cancels().iter().any(|x| x.key == a.key));
    let second = c.start("per-gpu", json!({}));
    for _ in 0..5 {
        assert!(c.advance(1_000).is_empty(), "the device is still held");
    }
    let listed = c.engine.workers();
    assert_eq!(listed[0].free.as_ref().map(|f| f.gpus), Some(0));
    assert_eq!(listed[0].gpus_held.len(), 1);
    assert_eq!(listed[0].gpus_held[0].gpus, vec![0]);

    // The worker reports the attempt ended (its processes are gone): the device is free.
    c.fail(&a, "cancelled", false);
    let next = c.step();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].key.run, second);
    assert_eq!(next[0].gpus, vec![0]);
}

#[test]
fn a_memory_requirement_picks_a_device_with_enough_memory() {
    let mut c = VirtualCluster::new();
    c.register(
        r#"
name: big-model
tasks:
  - name: fit
    builtin: echo
    inputs: {x: [1, 2]}
    map: [x]
    resources: {gpus: 1, gpu_memory_mb: 40000}
  - name: small
    builtin: echo
    inputs: {x: [1]}
    map: [x]
    resources: {gpus: 1}
"#,
    );
    c.connect_with_gpus("mixed", &[], 8, 2, vec![gpu(0, 81_000), gpu(1, 16_000)]);
    c.start("big-model", json!({}));
    let new = c.step();
    let fits: Vec<&Assignment> = only(&new, "fit");
    assert_eq!(fits.len(), 1, "one device has 40000 MB");
    assert_eq!(fits[0].gpus, vec![0]);
    // The small task takes the small device, not waiting for the large one.
    let small = only(&new, "small");
    assert_eq!(small.len(), 1);
    assert_eq!(small[0].gpus, vec![1]);
    // The second `fit` waits for device 0 although device 1 frees up first.
    let small = small[0].clone();
    c.succeed(&small);
    assert!(only(&c.step(), "fit").is_empty());
    let first = fits[0].clone();
    c.succeed(&first);
    let next = c.step();
    assert_eq!(only(&next, "fit").len(), 1);
    assert_eq!(only(&next, "fit")[0].gpus, vec![0]);
}

#[test]
fn a_reconnecting_worker_keeps_the_devices_its_running_attempts_hold() {
    let mut c = VirtualCluster::new();
    c.register(PER_GPU);
    c.connect_with_gpus(
        "gpu-box",
        &[],
        8,
        4,
        vec![gpu(0, 1), gpu(1, 1), gpu(2, 1), gpu(3, 1)],
    );
    c.start("per-gpu", json!({}));
    let new = c.step();
    assert_eq!(new.len(), 4);
    // Two finish; the worker reconnects still running the other two.
    c.succeed(&new[0]);
    c.succeed(&new[2]);
    let running: Vec<AttemptKey> = vec![new[1].key.clone(), new[3].key.clone()];
    c.workers.get_mut("gpu-box").expect("known").connected = false;
    c.reconnect("gpu-box", &running);
    let listed = c.engine.workers();
    let mut held: Vec<(i64, Vec<u32>)> = listed[0]
        .gpus_held
        .iter()
        .map(|h| (h.key.as_ref().map_or(-2, |k| k.map_index), h.gpus.clone()))
        .collect();
    held.sort();
    assert_eq!(
        held,
        vec![
            (new[1].key.map_index, new[1].gpus.clone()),
            (new[3].key.map_index, new[3].gpus.clone())
        ]
    );
    // The two free devices go to the remaining task runs.
    let next = c.step();
    assert_eq!(next.len(), 2);
    let mut given: Vec<u32> = next.iter().flat_map(|a| a.gpus.clone()).collect();
    given.sort();
    let mut expected = vec![new[0].gpus[0], new[2].gpus[0]];
    expected.sort();
    assert_eq!(given, expected);
}

#[test]
fn a_gpu_task_on_a_cluster_without_gpus_fails_as_unrunnable_naming_gpus() {
    let mut c = VirtualCluster::new();
    c.register(
        r#"
name: needs-gpu
tasks:
  - name: fit
    builtin: echo
    inputs: {}
    resources: {gpus: 1, gpu_memory_mb: 20000}
"#,
    );
    c.connect("cpu-only", &[], 8, 0);
    // A worker whose GPU is too small does not count either.
    c.connect_with_gpus("small-gpu", &[], 8, 1, vec![gpu(0, 8_000)]);
    let run = c.start("needs-gpu", json!({}));
    c.step();
    let fit = c.task(&run, "fit", -1);
    assert_eq!(task_state(&fit), pb::TaskState::Ready);
    assert!(
        fit.waiting_reason.contains("1 GPU(s) of at least 20000 MB"),
        "{}",
        fit.waiting_reason
    );
    c.advance(UNRUNNABLE_MS);
    let fit = c.task(&run, "fit", -1);
    assert_eq!(task_state(&fit), pb::TaskState::Failed);
    assert!(
        fit.error.contains("unrunnable") && fit.error.contains("GPU"),
        "{}",
        fit.error
    );
}
