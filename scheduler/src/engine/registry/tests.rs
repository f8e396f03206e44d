//! The registry on its own: classes made once, priorities across classes, worker choice.

use super::*;
use crate::engine::table::Table;

fn resources(slots: u32, gpus: u32) -> ResourceSpec {
    ResourceSpec {
        slots,
        gpus,
        memory_mb: 0,
        gpu_memory_mb: 0,
    }
}

fn worker(id: &str, labels: &[&str], total: ResourceSpec) -> WorkerSlot {
    let mut labels: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
    labels.sort();
    WorkerSlot {
        id: WorkerId(id.into()),
        name: Arc::from(id),
        session: 1,
        labels,
        free: total.clone(),
        gpus: Gpus::new(Vec::new(), total.gpus),
        total,
        attempts: HashMap::new(),
        connected: true,
        draining: false,
        last_seen_ms: 0,
        connected_ms: 0,
        address: String::new(),
    }
}

/// Task run references of two runs (keys come from a run table).
fn refs() -> (TrRef, TrRef) {
    let mut runs: Table<()> = Table::default();
    let a = runs.insert("a".into(), ());
    let b = runs.insert("b".into(), ());
    let t = |run| TrRef {
        run,
        node: 0,
        index: 0,
    };
    (t(a), t(b))
}

#[test]
fn a_class_is_made_once_per_labels_resources_and_tags() {
    let mut r = Registry::default();
    let gpu = vec!["gpu".to_string()];
    let a = r.class_for(
        &gpu,
        &resources(1, 1),
        &["x".into(), "y".into(), "x".into()],
    );
    let b = r.class_for(&gpu, &resources(1, 1), &["y".into(), "x".into()]);
    assert_eq!(a, b, "tags are a set");
    assert_eq!(&*r.classes[a].tags, ["x".to_string(), "y".to_string()]);
    assert_ne!(a, r.class_for(&gpu, &resources(2, 1), &[]));
    assert_ne!(
        a,
        r.class_for(&[], &resources(1, 1), &["x".into(), "y".into()])
    );
    assert_eq!(r.classes.len(), 3);
}

#[test]
fn the_class_with_the_highest_head_goes_until_the_next_head() {
    let (t, u) = refs();
    let mut r = Registry::default();
    let low = r.class_for(&[], &resources(1, 0), &[]);
    let high = r.class_for(&["gpu".into()], &resources(1, 0), &[]);
    assert_eq!(r.next_class(&[false, false]), None, "nothing ready");
    r.classes[low].queue.push(1, t);
    r.classes[high].queue.push(5, u);
    r.classes[high].queue.push(0, t);
    assert_eq!(r.next_class(&[false, false]), Some((high, Some(1))));
    assert_eq!(
        r.next_class(&[false, true]),
        Some((low, None)),
        "blocked passed over"
    );
    assert_eq!(r.classes[high].queue.pop(), Some(u));
    assert_eq!(r.next_class(&[false, false]), Some((low, Some(0))));
    // Ties go to the first class, which stops at the other's equal head.
    r.classes[high].queue.push(1, u);
    assert_eq!(r.next_class(&[false, false]), Some((low, Some(1))));
}

#[test]
fn the_worker_with_room_and_labels_and_the_most_free_slots_is_picked() {
    let (t, _) = refs();
    let mut r = Registry::default();
    let gpu_class = r.class_for(&["gpu".into()], &resources(1, 1), &[]);
    let any_class = r.class_for(&[], &resources(2, 0), &[]);
    assert_eq!(r.pick(gpu_class, None), None, "no workers");
    let mut small = worker("small", &["gpu"], resources(2, 1));
    let big = worker("big", &[], resources(8, 0));
    small.reserve((t, 1), &resources(1, 1), &[]);
    r.workers.insert(small.id.clone(), small);
    r.workers.insert(big.id.clone(), big);
    assert_eq!(r.pick(gpu_class, None), None, "its one GPU is taken");
    assert_eq!(r.pick(any_class, None), Some(WorkerId("big".into())));
    assert!(r.holds_run(t.run));
    let small = r.workers.get_mut(&WorkerId("small".into())).expect("known");
    small.release((t, 1));
    assert!(!r.holds_run(t.run));
    assert_eq!(r.pick(gpu_class, None), Some(WorkerId("small".into())));
    assert_eq!(r.pick(gpu_class, Some(&WorkerId("small".into()))), None);
    let big = r.workers.get_mut(&WorkerId("big".into())).expect("known");
    big.draining = true;
    assert_eq!(
        r.pick(any_class, None),
        Some(WorkerId("small".into())),
        "a draining worker takes nothing"
    );
    let small = r.workers.get_mut(&WorkerId("small".into())).expect("known");
    small.connected = false;
    assert_eq!(r.pick(any_class, None), None, "nor does a disconnected one");
}

#[test]
fn gpus_are_pinned_to_one_attempt_each_smallest_sufficient_first() {
    let (t, u) = refs();
    let dev = |index, memory_mb| Gpu {
        index,
        uuid: format!("GPU-{index}"),
        name: "Sim".into(),
        memory_mb,
    };
    let mut g = Gpus::new(vec![dev(2, 80_000), dev(0, 16_000), dev(1, 40_000)], 3);
    assert_eq!(g.len(), 3);
    assert_eq!(g.fitting(30_000), 2);
    // 30 GB: the 40 GB device, not the 80 GB one.
    assert_eq!(g.pin((t, 1), 1, 30_000, &[]), Some(vec![1]));
    assert_eq!(g.free_fitting(30_000), 1);
    // Two of any size: the smallest free ones.
    assert_eq!(g.pin((u, 1), 2, 0, &[]), Some(vec![0, 2]));
    assert_eq!(g.free().count(), 0);
    assert_eq!(g.pin((u, 2), 1, 0, &[]), None, "none left");
    assert_eq!(g.holdings(), vec![((u, 1), vec![0, 2]), ((t, 1), vec![1])]);
    g.unpin((u, 1));
    assert_eq!(g.free().count(), 2);
    // Preferred devices go first when free.
    assert_eq!(g.pin((u, 3), 1, 0, &[2]), Some(vec![2]));
}

#[test]
fn a_count_without_devices_means_anonymous_devices() {
    let g = Gpus::new(vec![gpus::anonymous(1)], 3);
    let indices: Vec<u32> = g.devices().iter().map(|d| d.index).collect();
    assert_eq!(indices, vec![0, 1, 2]);
    // Unknown memory meets no memory requirement.
    assert_eq!(g.fitting(1), 0);
    assert_eq!(g.fitting(0), 3);
}
