//! The standard gRPC services on real agents: health follows the member's reach of a leader,
//! reflection lists the Mozen service, and only health answers without the cluster's token.
//! Errors carry `google.rpc.Status` details.

use crate::harness::*;
use mozen_agent::security::{AuthChannel, ClientTransport, Security};
use std::time::Duration;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1 as refl;
use tonic_reflection::pb::v1alpha as refl_alpha;

const TOKEN: &str = "mozen-test-token-0123456789abcdef";

fn channel(t: &ClientTransport, addr: &str) -> AuthChannel {
    t.channel(addr).unwrap()
}

/// The health status of `service` at `addr`, or the refusal.
async fn check(t: &ClientTransport, addr: &str, service: &str) -> Result<i32, tonic::Status> {
    let mut c = HealthClient::new(channel(t, addr));
    let mut req = tonic::Request::new(HealthCheckRequest {
        service: service.into(),
    });
    req.set_timeout(Duration::from_secs(3));
    c.check(req).await.map(|r| r.into_inner().status)
}

/// Whether both the overall service and `mozen.v1.Mozen` report `want` at `addr`.
async fn reports(addr: &str, want: ServingStatus) -> bool {
    let t = ClientTransport::default();
    for service in ["", "mozen.v1.Mozen"] {
        if check(&t, addr, service).await.ok() != Some(want as i32) {
            return false;
        }
    }
    true
}

/// The services a reflection client of version `$v` (`refl` or `refl_alpha`) lists at
/// `$addr` through `$t`: the two versions have the same messages in different modules.
macro_rules! listed {
    ($v:ident, $t:expr, $addr:expr) => {
        async {
            let mut c =
                $v::server_reflection_client::ServerReflectionClient::new(channel($t, $addr));
            let req = $v::ServerReflectionRequest {
                host: String::new(),
                message_request: Some($v::server_reflection_request::MessageRequest::ListServices(
                    String::new(),
                )),
            };
            let mut replies = c
                .server_reflection_info(tokio_stream::iter([req]))
                .await?
                .into_inner();
            match replies.message().await?.and_then(|r| r.message_response) {
                Some($v::server_reflection_response::MessageResponse::ListServicesResponse(l)) => {
                    Ok::<Vec<String>, tonic::Status>(
                        l.service.into_iter().map(|s| s.name).collect(),
                    )
                }
                other => panic!("reflection answered {other:?}"),
            }
        }
    };
}

/// The services reflection v1 lists at `addr`.
async fn listed_v1(t: &ClientTransport, addr: &str) -> Result<Vec<String>, tonic::Status> {
    listed!(refl, t, addr).await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_agent_serves_health_and_reflection() {
    let c = Cluster::start(3, &[]);
    c.ready(3).await;
    for a in &c.agents {
        eventually(Duration::from_secs(10), "health SERVING", || {
            reports(&a.addr, ServingStatus::Serving)
        })
        .await;
        let v1 = listed_v1(&ClientTransport::default(), &a.addr)
            .await
            .unwrap();
        assert!(v1.iter().any(|s| s == "mozen.v1.Mozen"), "{v1:?}");
        assert!(v1.iter().any(|s| s == "grpc.health.v1.Health"), "{v1:?}");
        let alpha = listed!(refl_alpha, &ClientTransport::default(), &a.addr)
            .await
            .unwrap();
        assert!(alpha.iter().any(|s| s == "mozen.v1.Mozen"), "{alpha:?}");
        // Either version names both reflection services.
        for listed in [&v1, &alpha] {
            for r in [
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
            ] {
                assert!(listed.iter().any(|s| s == r), "{r} not in {listed:?}");
            }
        }
    }
    let unknown = check(
        &ClientTransport::default(),
        &c.agents[0].addr,
        "no.such.Service",
    )
    .await
    .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_cut_from_its_quorum_reports_not_serving() {
    let mut c = Cluster::new(3, &[]).with_fault_control();
    for a in &mut c.agents {
        a.start();
    }
    c.ready(3).await;
    let leader = c.leader().await;
    let cut = c
        .agents
        .iter()
        .map(|a| a.id)
        .find(|i| *i != leader)
        .unwrap();
    let cut_addr = c.by_id(cut).addr.clone();
    eventually(Duration::from_secs(10), "the follower SERVING", || {
        reports(&cut_addr, ServingStatus::Serving)
    })
    .await;

    c.partition(&[cut]);
    eventually(
        Duration::from_secs(20),
        "the cut-off member NOT_SERVING",
        || reports(&cut_addr, ServingStatus::NotServing),
    )
    .await;
    let leader_addr = c.by_id(leader).addr.clone();
    assert!(
        reports(&leader_addr, ServingStatus::Serving).await,
        "the majority's leader still serves"
    );

    c.heal();
    eventually(
        Duration::from_secs(30),
        "SERVING again after healing",
        || reports(&cut_addr, ServingStatus::Serving),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn health_answers_without_the_token_and_reflection_does_not() {
    let secrets = tempfile::TempDir::new().unwrap();
    let tok = secrets.path().join("token");
    std::fs::write(&tok, format!("{TOKEN}\n")).unwrap();
    let with_token = Security::for_client(Some(&tok), None, None, None)
        .unwrap()
        .client();
    let mut c = Cluster::new(1, &["--voters", "1", "--token-file", tok.to_str().unwrap()])
        .with_client_transport(with_token.clone());
    c.agents[0].start();
    c.ready(1).await;
    let addr = c.agents[0].addr.clone();
    eventually(
        Duration::from_secs(10),
        "health SERVING without a token",
        || reports(&addr, ServingStatus::Serving),
    )
    .await;

    let none = ClientTransport::default();
    let e = listed_v1(&none, &addr).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let listed = listed_v1(&with_token, &addr).await.unwrap();
    assert!(listed.iter().any(|s| s == "mozen.v1.Mozen"), "{listed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_refusal_carries_error_info_naming_the_leader() {
    use tonic_types::StatusExt;
    let c = Cluster::start(3, &[]);
    c.ready(3).await;
    let leader = c.leader().await;
    let follower = c.agents.iter().find(|a| a.id != leader).unwrap();
    let mut conn = mozen_proto::mozen_client::MozenClient::new(channel(
        &ClientTransport::default(),
        &follower.addr,
    ));
    let refusal = conn
        .node_op(mozen_proto::NodeOpRequest {
            node_id: leader,
            op: "drain".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refusal.code(), tonic::Code::FailedPrecondition);
    assert!(
        refusal.message().starts_with("MZ-NOT-LEADER: "),
        "{refusal:?}"
    );
    let info = refusal.get_details_error_info().expect("an ErrorInfo");
    assert_eq!(info.reason, "MZ-NOT-LEADER");
    assert_eq!(info.domain, "mozen");
    assert_eq!(
        info.metadata.get("leader_addr"),
        Some(&c.by_id(leader).addr),
        "{info:?}"
    );
    let retry = refusal.get_details_retry_info().expect("a RetryInfo");
    assert_eq!(retry.retry_delay, Some(Duration::ZERO));
}
