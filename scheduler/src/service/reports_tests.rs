//! A worker that reports a result outside the cluster's result store, on a real server:
//! the attempt fails, naming why, and the scheduler never reads the file it named.

use super::fuzz::start;
use baton_proto as pb;
use pb::flow_service_client::FlowServiceClient;
use pb::worker_message::Msg as Up;
use pb::worker_service_client::WorkerServiceClient;
use std::time::Duration;

fn up(msg: Up) -> pb::WorkerMessage {
    pb::WorkerMessage { msg: Some(msg) }
}

#[test]
fn a_result_reported_outside_the_store_fails_the_attempt() {
    let server = start();
    server.rt.block_on(async {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tx.send(up(Up::Register(pb::Register {
            worker_id: "w1".into(),
            labels: vec!["local".into()],
            resources: Some(pb::Resources {
                slots: 1,
                ..Default::default()
            }),
            ..Default::default()
        })))
        .expect("send");
        let mut w = WorkerServiceClient::new(server.channel.clone());
        let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
        let mut down = w.connect(stream).await.expect("connect").into_inner();
        let key = loop {
            let m = tokio::time::timeout(Duration::from_secs(10), down.message())
                .await
                .expect("an assignment in time")
                .expect("the stream")
                .expect("a message");
            if let Some(pb::scheduler_message::Msg::Assign(a)) = m.msg {
                break a.key.expect("a key");
            }
        };
        // A file of the scheduler's host, with its real size: it must not become the result.
        let passwd = std::fs::metadata("/etc/passwd").map_or(10, |m| m.len());
        tx.send(up(Up::Finished(pb::Finished {
            key: Some(key),
            at_ms: 1,
            outcome: Some(pb::finished::Outcome::Success(pb::TaskSuccess {
                result: Some(pb::ResultRef {
                    uri: "file:///etc/passwd".into(),
                    size: passwd,
                    ..Default::default()
                }),
                inline_value: String::new(),
            })),
            ahead: Vec::new(),
        })))
        .expect("send");

        let mut c = FlowServiceClient::new(server.channel.clone());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let trs = c
                .list_task_runs(pb::ListTaskRunsRequest {
                    run_id: server.run_id.clone(),
                    with_values: true,
                    ..Default::default()
                })
                .await
                .expect("task runs")
                .into_inner()
                .task_runs;
            let a = trs.first().expect("task a");
            if a.state == pb::TaskState::Failed as i32 {
                assert!(
                    a.error.contains("outside this cluster's result store"),
                    "{}",
                    a.error
                );
                assert!(a.result.is_none() && a.value.is_empty(), "{a:?}");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never failed: {a:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}
