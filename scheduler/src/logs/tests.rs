//! The keeper's bounds, chunking and ordering, without I/O.

use super::*;

fn key(task: &str, index: i64, attempt: u32) -> AttemptKey {
    AttemptKey {
        run: "r".into(),
        task: task.into(),
        map_index: index,
        attempt,
    }
}

fn line(i: usize) -> Line {
    Line {
        at_ms: i as i64,
        stream: "stdout".into(),
        line: format!("line-{i}"),
    }
}

#[test]
fn lines_are_chunked_in_order_and_chunks_numbered() {
    let mut k = Keeper::new(100, 1 << 20);
    let a = key("t", -1, 1);
    for i in 0..5 {
        k.push(a.clone(), line(i), 0);
    }
    // Not due yet: young, few, the attempt still running.
    assert!(k.take_due(10, false).is_empty());
    let c = k.take_due(FLUSH_AFTER_MS, false);
    assert_eq!(c.len(), 1);
    assert_eq!((c[0].chunk, c[0].lines.len()), (0, 5));
    assert_eq!(c[0].lines[4], line(4));
    k.push(a.clone(), line(5), FLUSH_AFTER_MS);
    k.ended(&a);
    let c2 = k.take_due(FLUSH_AFTER_MS, false);
    assert_eq!((c2[0].chunk, c2[0].lines.len()), (1, 1));
    // While chunk 0 is being written, readers get it from memory.
    let held = k.held("r", "", None);
    assert_eq!(held[0].next_chunk, 2);
    assert_eq!(held[0].inflight.len(), 2);
    k.stored(&a, 0, Some(0));
    k.stored(&a, 1, Some(1));
    // Written and ended: it leaves memory.
    k.evict(FLUSH_AFTER_MS);
    assert!(k.held("r", "", None).is_empty());
    // The stored form reads back.
    assert_eq!(decode(&encode(&c[0].lines)), *c[0].lines);
}

#[test]
fn the_oldest_lines_are_dropped_past_the_bounds_with_a_marker() {
    let mut k = Keeper::new(10, 1 << 20);
    let a = key("t", -1, 1);
    for i in 0..25 {
        k.push(a.clone(), line(i), 0);
    }
    let c = k.take_due(0, true);
    let lines = &c[0].lines;
    assert_eq!(lines.len(), 11);
    assert!(
        lines[0].line.contains("15 earlier lines dropped"),
        "{lines:?}"
    );
    assert_eq!(lines[1], line(15));
    assert_eq!(lines[10], line(24));

    let mut k = Keeper::new(1000, 200);
    for i in 0..100 {
        k.push(a.clone(), line(i), 0);
    }
    let held = k.held("r", "t", None);
    let bytes: usize = held[0].pending.iter().map(Line::bytes).sum();
    assert!(bytes <= 200 && !held[0].pending.is_empty());
    assert_eq!(held[0].pending.last(), Some(&line(99)));
}

#[test]
fn readers_see_only_their_run_and_task_and_followers_get_new_lines() {
    let mut k = Keeper::new(100, 1 << 20);
    k.push(key("a", 0, 1), line(1), 0);
    k.push(key("b", -1, 1), line(2), 0);
    k.push(
        AttemptKey {
            run: "other".into(),
            ..key("a", 0, 1)
        },
        line(3),
        0,
    );
    assert_eq!(k.held("r", "", None).len(), 2);
    let (tx, mut rx) = mpsc::channel(2);
    let held = k.held("r", "a", Some(tx));
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].pending, vec![line(1)]);
    k.push(key("b", -1, 1), line(4), 0);
    k.push(key("a", 1, 2), line(5), 0);
    let e = rx.try_recv().unwrap();
    assert_eq!(
        (e.task.as_str(), e.map_index, e.attempt, e.line.as_str()),
        ("a", 1, 2, "line-5")
    );
    assert!(rx.try_recv().is_err());
    // A follower whose buffer fills is cut off rather than skipped silently.
    for i in 6..10 {
        k.push(key("a", 0, 1), line(i), 0);
    }
    assert_eq!(rx.try_recv().unwrap().line, "line-6");
    assert_eq!(rx.try_recv().unwrap().line, "line-7");
    assert!(matches!(
        rx.try_recv(),
        Err(mpsc::error::TryRecvError::Disconnected)
    ));
}

#[test]
fn an_attempt_stores_at_most_its_limit_then_says_so_once() {
    let mut k = Keeper::new(1000, 1 << 20).with_stored_limit(1000);
    let a = key("t", -1, 1);
    let mut stored = Vec::new();
    for round in 0..20 {
        for i in 0..10 {
            k.push(a.clone(), line(round * 10 + i), 0);
        }
        for c in k.take_due(0, true) {
            stored.extend(c.lines.iter().cloned());
        }
    }
    let bytes: usize = stored
        .iter()
        .filter(|l| l.stream != "log")
        .map(Line::bytes)
        .sum();
    assert!(bytes <= 1000, "{bytes} bytes stored");
    assert!(bytes > 900, "only {bytes} bytes stored");
    let markers: Vec<&Line> = stored.iter().filter(|l| l.stream == "log").collect();
    assert_eq!(markers.len(), 1, "{markers:?}");
    assert!(markers[0].line.contains("limit of 1000 bytes"));
    // In order, with nothing after the marker.
    assert_eq!(stored.last().map(|l| l.stream.as_str()), Some("log"));
}
