//! The standard gRPC services every agent serves beside `Mozen` and `Raft`:
//!
//! - `grpc.health.v1.Health`: the overall service (`""`), `mozen.v1.Mozen` and
//!   `mozen.v1.MozenWorker` are `SERVING`
//!   only while this agent reaches a leader (it leads, or its Raft metrics name a current
//!   leader; an agent that is only a worker, the leader it last learnt), and `NOT_SERVING`
//!   without a quorum, quarantined or stopping. Answered without a token, like a load
//!   balancer's or an orchestrator's probe expects (docs/operations.md).
//! - `grpc.reflection.v1` and `v1alpha`: the schema of every service served, behind the same
//!   guard as the Mozen API.

use crate::agent::Agent;
use mozen_proto::mozen_server::MozenServer;
use mozen_proto::mozen_worker_server::MozenWorkerServer;
use std::sync::Arc;
use std::time::Duration;
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;

/// The service name health reports on besides the overall `""`.
const MOZEN: &str = <MozenServer<super::Service> as NamedService>::NAME;
/// The workers' service, reported with the same status (its RPCs need the leader too).
const WORKER: &str = <MozenWorkerServer<super::Service> as NamedService>::NAME;

/// How often the health is evaluated again without a Raft metrics change (quarantine and
/// shutdown do not always change the metrics).
const RECHECK: Duration = Duration::from_secs(1);

/// The health service, its statuses set for the agent's state now and kept current by a task
/// on the agent's task tracker until shutdown.
pub(super) async fn health(agent: &Arc<Agent>) -> HealthServer<impl Health> {
    let (reporter, server) = tonic_health::server::health_reporter();
    let serving = reaches_leader(agent);
    report(&reporter, serving).await;
    agent.tasks.spawn(follow(agent.clone(), reporter, serving));
    server
}

/// Whether this agent can hand a call to a leader now.
fn reaches_leader(agent: &Agent) -> bool {
    if agent.stopping.is_cancelled() || agent.integrity.is_quarantined() {
        return false;
    }
    if agent.is_member() {
        agent.current_leader().is_some()
    } else {
        agent.leader().is_some()
    }
}

async fn report(reporter: &HealthReporter, serving: bool) {
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    for name in ["", MOZEN, WORKER] {
        reporter.set_service_status(name, status).await;
    }
}

/// Follows the Raft metrics (and rechecks every [`RECHECK`]) and reports changes of
/// [`reaches_leader`]; reports `NOT_SERVING` when the agent shuts down.
async fn follow(agent: Arc<Agent>, reporter: HealthReporter, mut serving: bool) {
    let mut metrics = agent.raft.metrics();
    // A stopped Raft member closes the channel; then only the recheck remains.
    let mut raft_open = true;
    let mut tick = tokio::time::interval(RECHECK);
    loop {
        tokio::select! {
            _ = agent.shutdown.cancelled() => break,
            _ = agent.stopping.cancelled(), if !agent.stopping.is_cancelled() => {}
            r = metrics.changed(), if raft_open => raft_open = r.is_ok(),
            _ = tick.tick() => {}
        }
        let now = reaches_leader(&agent);
        if now != serving {
            tracing::info!(
                serving = now,
                "health: {MOZEN} now {}",
                if now { "SERVING" } else { "NOT_SERVING" }
            );
            report(&reporter, now).await;
            serving = now;
        }
    }
    report(&reporter, false).await;
}

/// Server reflection (v1 and v1alpha) over Mozen's schema and the health service's.
pub(super) fn reflection() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    tonic_reflection::server::Error,
> {
    // Each version lists both reflection services (the builder alone lists only its own), so
    // a client that asks either learns that both are served.
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .include_reflection_service(false)
            .register_encoded_file_descriptor_set(mozen_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}
