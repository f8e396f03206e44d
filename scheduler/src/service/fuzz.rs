//! Fuzzing the scheduler's edge on a real server (in this process, embedded state in a
//! temporary folder): made-up requests to every client method, arbitrary bytes as any
//! method's message, and made-up worker streams. Every call gets an answer with a fitting
//! status and a short message that shows no server path, and the scheduler goes on serving.
//! `PROPTEST_CASES` sets how many cases each test runs (the README gives the longer command).

use crate::config::SchedulerConfig;
use baton_proto as pb;
use pb::flow_service_client::FlowServiceClient;
use pb::worker_service_client::WorkerServiceClient;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::Code;

/// The longest error message a caller may get.
const MAX_MESSAGE: usize = 2048;

pub(super) struct Server {
    pub(super) rt: tokio::runtime::Runtime,
    pub(super) dir: tempfile::TempDir,
    pub(super) channel: Channel,
    stop: CancellationToken,
    /// A run that exists (its flow has one task, `a`, for workers labelled `local`).
    pub(super) run_id: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A scheduler in this process, serving, with one run waiting for a worker.
pub(super) fn start() -> Server {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let stop = CancellationToken::new();
    let config = SchedulerConfig {
        data_dir: dir.path().join("data"),
        ..SchedulerConfig::default()
    };
    let (channel, run_id) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(crate::server::serve(config, listener, stop.clone()));
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("url")
            .connect_lazy();
        let mut c = FlowServiceClient::new(channel.clone());
        let request = pb::CreateRunRequest {
            source: "name: f\ntasks:\n  - name: a\n    builtin: noop\n".into(),
            ..Default::default()
        };
        let mut run_id = String::new();
        for _ in 0..200 {
            if let Ok(r) = c.create_run(request.clone()).await {
                run_id = r.into_inner().run.map(|r| r.id).unwrap_or_default();
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!run_id.is_empty(), "the scheduler never served");
        (channel, run_id)
    });
    Server {
        rt,
        dir,
        channel,
        stop,
        run_id,
    }
}

/// Checks an answer: a status that fits bad input (never INTERNAL or UNKNOWN, except
/// tonic's own for a message that does not decode), a short message without a server path.
fn check(server: &Server, status: &tonic::Status, raw: bool) -> Result<(), TestCaseError> {
    let allowed = [
        Code::InvalidArgument,
        Code::NotFound,
        Code::FailedPrecondition,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::OutOfRange,
        Code::Unimplemented,
    ];
    let undecodable = raw && status.code() == Code::Internal;
    prop_assert!(
        allowed.contains(&status.code()) || undecodable,
        "{:?}: {}",
        status.code(),
        status.message()
    );
    prop_assert!(
        status.message().len() <= MAX_MESSAGE,
        "a {} byte message",
        status.message().len()
    );
    let path = server.dir.path().display().to_string();
    prop_assert!(!status.message().contains(&path), "{}", status.message());
    Ok(())
}

/// Text that is sometimes plausible and sometimes hostile.
fn text(known: String) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just(known),
        2 => Just(String::new()),
        4 => ".{0,24}",
        1 => prop::sample::select(vec![
            "../../etc/passwd", "file:///etc/passwd", "s3://other-bucket/key", "a/b", "\0",
            "run/../x", "%2e%2e", "default",
        ]).prop_map(str::to_string),
        1 => (1usize..200_000, any::<char>()).prop_map(|(n, c)| c.to_string().repeat(n)),
    ]
}

fn flow_source() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("name: f\ntasks:\n  - name: a\n    builtin: noop\n".to_string()),
        Just("name: g\nparameters: {n: {default: 2}}\ntasks:\n  - name: r\n    builtin: range\n    inputs: {n: {param: n}}\n  - name: e\n    builtin: echo\n    inputs: {value: {result: r}}\n    map: [value]\n".to_string()),
        ".{0,200}",
        (1usize..50_000).prop_map(|n| format!("name: x\ntasks: {}", "[".repeat(n))),
        (1usize..2_000_000).prop_map(|n| format!("name: x\ntasks: []\n#{}", "x".repeat(n))),
    ]
}

#[derive(Debug, Clone)]
enum Call {
    RegisterFlow(pb::RegisterFlowRequest),
    CreateRun(pb::CreateRunRequest),
    GetRun(pb::GetRunRequest),
    ListRuns(pb::ListRunsRequest),
    WatchRun(pb::WatchRunRequest),
    ListTaskRuns(pb::ListTaskRunsRequest),
    CancelRun(pb::CancelRunRequest),
    GetResult(pb::GetResultRequest),
    GetFlow(pb::GetFlowRequest),
    ListFlows(pb::ListFlowsRequest),
    GetLogs(pb::GetLogsRequest),
    SetSchedule(pb::SetScheduleRequest),
    SetLimit(pb::SetConcurrencyLimitRequest),
    DeleteLimit(pb::DeleteConcurrencyLimitRequest),
    CollectGarbage(pb::CollectGarbageRequest),
}

fn call(run: String) -> impl Strategy<Value = Call> {
    let t = move || text(run.clone());
    prop_oneof![
        (flow_source(), any::<bool>()).prop_map(|(source, schedule_active)| Call::RegisterFlow(
            pb::RegisterFlowRequest {
                source,
                schedule_active
            }
        )),
        (
            t(),
            t(),
            any::<u32>(),
            prop::collection::btree_map(t(), t(), 0..3),
            t(),
            prop_oneof![Just(String::new()), flow_source()],
            any::<i32>()
        )
            .prop_map(
                |(project, flow, version, parameters, idempotency_key, source, priority)| {
                    Call::CreateRun(pb::CreateRunRequest {
                        project,
                        flow,
                        version,
                        parameters: parameters.into_iter().collect(),
                        idempotency_key,
                        source,
                        no_cache: false,
                        priority,
                    })
                }
            ),
        t().prop_map(|run_id| Call::GetRun(pb::GetRunRequest { run_id })),
        any::<u32>().prop_map(|limit| Call::ListRuns(pb::ListRunsRequest { limit })),
        (t(), any::<bool>()).prop_map(|(run_id, with_task_runs)| Call::WatchRun(
            pb::WatchRunRequest {
                run_id,
                with_task_runs
            }
        )),
        (
            (t(), any::<bool>(), any::<u32>(), any::<u32>()),
            (
                t(),
                proptest::collection::vec(any::<i32>(), 0..20),
                proptest::option::of(any::<i64>()),
                any::<bool>()
            )
        )
            .prop_map(
                |((run_id, with_values, offset, limit), (task, states, map_index, with_counts))| {
                    Call::ListTaskRuns(pb::ListTaskRunsRequest {
                        run_id,
                        with_values,
                        offset,
                        limit,
                        task,
                        states,
                        map_index,
                        with_counts,
                    })
                }
            ),
        t().prop_map(|run_id| Call::CancelRun(pb::CancelRunRequest { run_id })),
        t().prop_map(|uri| Call::GetResult(pb::GetResultRequest { uri })),
        (t(), t(), any::<u32>()).prop_map(|(project, flow, version)| Call::GetFlow(
            pb::GetFlowRequest {
                project,
                flow,
                version
            }
        )),
        t().prop_map(|project| Call::ListFlows(pb::ListFlowsRequest { project })),
        (t(), t(), proptest::option::of(any::<i64>())).prop_map(|(run_id, task, map_index)| {
            Call::GetLogs(pb::GetLogsRequest {
                run_id,
                task,
                follow: false,
                map_index,
            })
        }),
        (t(), t(), any::<bool>()).prop_map(|(project, flow, active)| Call::SetSchedule(
            pb::SetScheduleRequest {
                project,
                flow,
                active
            }
        )),
        (t(), any::<u32>())
            .prop_map(|(tag, limit)| Call::SetLimit(pb::SetConcurrencyLimitRequest { tag, limit })),
        t().prop_map(|tag| Call::DeleteLimit(pb::DeleteConcurrencyLimitRequest { tag })),
        (any::<u64>(), any::<bool>()).prop_map(|(older_than_seconds, dry_run)| {
            Call::CollectGarbage(pb::CollectGarbageRequest {
                older_than_seconds,
                dry_run,
            })
        }),
    ]
}

/// Sends the call; a stream is read for a moment (a watch of a live run never ends).
async fn send(c: &mut FlowServiceClient<Channel>, call: Call) -> Result<(), tonic::Status> {
    let bounded = |s: Option<tonic::Status>| s.map_or(Ok(()), Err);
    match call {
        Call::RegisterFlow(r) => c.register_flow(r).await.map(drop),
        Call::CreateRun(r) => c.create_run(r).await.map(drop),
        Call::GetRun(r) => c.get_run(r).await.map(drop),
        Call::ListRuns(r) => c.list_runs(r).await.map(drop),
        Call::WatchRun(r) => {
            let mut s = c.watch_run(r).await?.into_inner();
            let first = tokio::time::timeout(Duration::from_millis(200), s.message()).await;
            bounded(first.ok().and_then(Result::err))
        }
        Call::ListTaskRuns(r) => c.list_task_runs(r).await.map(drop),
        Call::CancelRun(r) => c.cancel_run(r).await.map(drop),
        Call::GetResult(r) => c.get_result(r).await.map(drop),
        Call::GetFlow(r) => c.get_flow(r).await.map(drop),
        Call::ListFlows(r) => c.list_flows(r).await.map(drop),
        Call::GetLogs(r) => {
            let mut s = c.get_logs(r).await?.into_inner();
            let first = tokio::time::timeout(Duration::from_millis(200), s.message()).await;
            bounded(first.ok().and_then(Result::err))
        }
        Call::SetSchedule(r) => c.set_schedule(r).await.map(drop),
        Call::SetLimit(r) => c.set_concurrency_limit(r).await.map(drop),
        Call::DeleteLimit(r) => c.delete_concurrency_limit(r).await.map(drop),
        Call::CollectGarbage(r) => c.collect_garbage(r).await.map(drop),
    }
}

/// The scheduler still answers, and the run made at the start is still there.
fn still_serving(server: &Server) {
    server.rt.block_on(async {
        let mut c = FlowServiceClient::new(server.channel.clone());
        let run = c
            .get_run(pb::GetRunRequest {
                run_id: server.run_id.clone(),
            })
            .await
            .expect("the scheduler still serves");
        assert!(run.into_inner().run.is_some());
    });
}

#[test]
fn client_requests_of_any_shape_get_a_clear_answer() {
    let server = start();
    let mut runner = TestRunner::new(Config::default());
    let result = runner.run(&call(server.run_id.clone()), |call| {
        let answer = server.rt.block_on(async {
            let mut c = FlowServiceClient::new(server.channel.clone())
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20);
            send(&mut c, call).await
        });
        match answer {
            Ok(()) => Ok(()),
            Err(status) => check(&server, &status, false),
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    still_serving(&server);
}

/// Passes bytes through as a message, so that anything can be sent to any method.
#[derive(Debug, Clone, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

const METHODS: &[&str] = &[
    "RegisterFlow",
    "CreateRun",
    "GetRun",
    "ListRuns",
    "WatchRun",
    "ListTaskRuns",
    "CancelRun",
    "ListWorkers",
    "GetResult",
    "GetLeader",
    "ListFlows",
    "GetFlow",
    "GetLogs",
    "SetSchedule",
    "SetConcurrencyLimit",
    "DeleteConcurrencyLimit",
    "ListConcurrencyLimits",
    "CollectGarbage",
];

#[test]
fn arbitrary_bytes_to_any_method_get_a_clear_answer() {
    let server = start();
    let mut runner = TestRunner::new(Config::default());
    let strategy = (
        prop::sample::select(METHODS),
        prop::collection::vec(any::<u8>(), 0..512),
    );
    let result = runner.run(&strategy, |(method, bytes)| {
        let answer = server.rt.block_on(async {
            let mut grpc = tonic::client::Grpc::new(server.channel.clone());
            grpc.ready()
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let path = http::uri::PathAndQuery::try_from(format!(
                "/{}/{method}",
                pb::flow_service_server::SERVICE_NAME
            ))
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
            if method == "WatchRun" || method == "GetLogs" {
                let mut s = grpc
                    .server_streaming(tonic::Request::new(bytes), path, RawCodec)
                    .await?
                    .into_inner();
                let first = tokio::time::timeout(Duration::from_millis(200), s.message()).await;
                return first.ok().and_then(Result::err).map_or(Ok(()), Err);
            }
            grpc.unary(tonic::Request::new(bytes), path, RawCodec)
                .await
                .map(drop)
        });
        match answer {
            Ok(()) => Ok(()),
            Err(status) => check(&server, &status, true),
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    still_serving(&server);
}

fn key(run: String) -> impl Strategy<Value = pb::AttemptKey> {
    (
        text(run),
        prop_oneof![Just("a".to_string()), ".{0,8}"],
        prop_oneof![Just(-1i64), any::<i64>()],
        prop_oneof![1u32..3, any::<u32>()],
    )
        .prop_map(|(run_id, task, map_index, attempt)| pb::AttemptKey {
            run_id,
            task,
            map_index,
            attempt,
        })
}

fn worker_message(run: String) -> impl Strategy<Value = pb::WorkerMessage> {
    use pb::worker_message::Msg;
    let k = move || key(run.clone());
    let msg = prop_oneof![
        (
            prop_oneof![Just("fuzz-w".to_string()), ".{0,300}"],
            prop::collection::vec(prop_oneof![Just("local".to_string()), ".{0,20}"], 0..70),
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            prop::collection::vec(k(), 0..3),
            prop::collection::vec(".{0,12}", 0..2),
        )
            .prop_map(
                |(worker_id, labels, slots, gpus, memory_mb, running, executors)| {
                    Msg::Register(pb::Register {
                        worker_id,
                        labels,
                        resources: Some(pb::Resources {
                            slots,
                            gpus: gpus % 100,
                            memory_mb,
                            ..Default::default()
                        }),
                        running,
                        executors,
                        ..Default::default()
                    })
                }
            ),
        (k(), any::<i64>()).prop_map(|(key, at_ms)| Msg::Started(pb::Started {
            key: Some(key),
            at_ms,
            at_us: at_ms,
        })),
        any::<i64>().prop_map(|at_ms| Msg::Heartbeat(pb::Heartbeat { at_ms })),
        prop::collection::vec((k(), ".{0,40}", 0usize..20_000), 0..20).prop_map(|lines| {
            Msg::Logs(pb::LogLines {
                lines: lines
                    .into_iter()
                    .map(|(key, line, pad)| pb::LogLine {
                        key: Some(key),
                        at_ms: 0,
                        stream: "stdout".into(),
                        line: format!("{line}{}", "x".repeat(pad)),
                    })
                    .collect(),
            })
        }),
        (k(), any::<bool>(), ".{0,40}", text(String::new())).prop_map(|(key, ok, value, uri)| {
            use pb::finished::Outcome;
            // The same attempt claimed as run ahead after itself: never taken.
            let ahead = vec![pb::RanAhead {
                finished: Some(pb::Finished {
                    key: Some(key.clone()),
                    at_ms: 0,
                    outcome: Some(Outcome::Success(pb::TaskSuccess {
                        result: Some(pb::ResultRef {
                            uri: uri.clone(),
                            size: value.len() as u64,
                            ..Default::default()
                        }),
                        inline_value: value.clone(),
                    })),
                    ahead: Vec::new(),
                }),
                after: Some(key.clone()),
                inputs_digest: value.len() as u64,
                started_us: 0,
                ended_us: i64::MAX,
            }];
            Msg::Finished(pb::Finished {
                key: Some(key),
                at_ms: 0,
                ahead,
                outcome: Some(if ok {
                    Outcome::Success(pb::TaskSuccess {
                        result: Some(pb::ResultRef {
                            uri,
                            size: value.len() as u64,
                            ..Default::default()
                        }),
                        inline_value: value,
                    })
                } else {
                    Outcome::Failure(pb::TaskFailure {
                        error: value,
                        retryable: true,
                    })
                }),
            })
        }),
        Just(Msg::Draining(pb::Draining {})),
    ];
    msg.prop_map(|m| pb::WorkerMessage { msg: Some(m) })
}

#[test]
fn worker_streams_of_any_shape_never_break_the_scheduler() {
    let server = start();
    let mut runner = TestRunner::new(Config {
        cases: Config::default().cases.min(64),
        ..Config::default()
    });
    let strategy = prop::collection::vec(worker_message(server.run_id.clone()), 1..8);
    let result = runner.run(&strategy, |messages| {
        let answer: Result<(), tonic::Status> = server.rt.block_on(async {
            let mut w = WorkerServiceClient::new(server.channel.clone());
            let mut down = w.connect(tokio_stream::iter(messages)).await?.into_inner();
            // Read what comes back until the scheduler ends the stream, or for a moment.
            let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
            loop {
                match tokio::time::timeout_at(deadline, down.message()).await {
                    Err(_) | Ok(Ok(None)) => return Ok(()),
                    Ok(Ok(Some(_))) => {}
                    Ok(Err(s)) => return Err(s),
                }
            }
        });
        match answer {
            Ok(()) => Ok(()),
            Err(status) if status.code() == Code::Cancelled => Ok(()),
            Err(status) => check(&server, &status, false),
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    still_serving(&server);
}
