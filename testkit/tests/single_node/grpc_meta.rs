//! The scheduler's standard gRPC services on a real scheduler process: server reflection
//! (v1 and v1alpha) lists baton's services and the health service and serves their
//! descriptors, and `grpc.health.v1.Health` answers SERVING, as grpcurl and probes expect.

use baton_testkit::Cluster;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::{v1, v1alpha};

const SERVICES: [&str; 3] = [
    "baton.v1.FlowService",
    "baton.v1.WorkerService",
    "grpc.health.v1.Health",
];

async fn channel(cluster: &Cluster) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(cluster.url())?.connect().await?)
}

/// One v1 reflection request, one response.
async fn reflect_v1(
    channel: &Channel,
    request: v1::server_reflection_request::MessageRequest,
) -> anyhow::Result<v1::server_reflection_response::MessageResponse> {
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let req = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([req]))
        .await?
        .into_inner();
    let resp = stream
        .message()
        .await?
        .ok_or_else(|| anyhow::anyhow!("reflection stream ended without a response"))?;
    resp.message_response
        .ok_or_else(|| anyhow::anyhow!("empty reflection response"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_and_describes_the_services() -> anyhow::Result<()> {
    let cluster = Cluster::start(&[]).await?;
    let channel = channel(&cluster).await?;

    // v1: the list, as `grpcurl -plaintext ADDR list` asks for it.
    use v1::server_reflection_request::MessageRequest as Req;
    use v1::server_reflection_response::MessageResponse as Resp;
    let names: Vec<String> = match reflect_v1(&channel, Req::ListServices(String::new())).await? {
        Resp::ListServicesResponse(list) => list.service.into_iter().map(|s| s.name).collect(),
        other => anyhow::bail!("unexpected reflection response {other:?}"),
    };
    for want in SERVICES {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }

    // The descriptor of a service, as `grpcurl describe` asks for it.
    let symbol = Req::FileContainingSymbol("baton.v1.FlowService".to_string());
    match reflect_v1(&channel, symbol).await? {
        Resp::FileDescriptorResponse(fd) => {
            let file = fd.file_descriptor_proto.first().expect("a descriptor");
            let has = |s: &[u8]| file.windows(s.len()).any(|w| w == s);
            assert!(has(b"baton/v1/baton.proto"), "not baton.proto's descriptor");
            assert!(has(b"WatchRun") && has(b"RegisterFlowRequest"));
        }
        other => anyhow::bail!("unexpected reflection response {other:?}"),
    }
    // tonic answers an unknown symbol with a NOT_FOUND status (not an ErrorResponse).
    let unknown = Req::FileContainingSymbol("baton.v1.NoSuchService".to_string());
    let answer = reflect_v1(&channel, unknown).await;
    assert!(
        matches!(answer, Err(_) | Ok(Resp::ErrorResponse(_))),
        "an unknown symbol must be an error: {answer:?}"
    );

    // v1alpha, for older clients.
    let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let req = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let resp = alpha
        .server_reflection_info(tokio_stream::iter([req]))
        .await?
        .into_inner()
        .message()
        .await?
        .and_then(|r| r.message_response);
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        resp
    else {
        anyhow::bail!("unexpected v1alpha reflection response {resp:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in SERVICES {
        assert!(
            names.iter().any(|n| n == want),
            "v1alpha: {want} not in {names:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_answers_serving() -> anyhow::Result<()> {
    let cluster = Cluster::start(&[]).await?;
    let mut health = HealthClient::new(channel(&cluster).await?);
    for service in ["", "baton.v1.FlowService", "baton.v1.WorkerService"] {
        let resp = health
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await?
            .into_inner();
        assert_eq!(
            resp.status,
            ServingStatus::Serving as i32,
            "health of {service:?}\n{}",
            cluster.logs()
        );
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "baton.v1.NoSuchService".to_string(),
        })
        .await
        .expect_err("an unknown service is NOT_FOUND");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    Ok(())
}
