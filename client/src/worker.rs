//! The agents' own worker RPCs (join, heartbeat, the Work stream, completions, parking) on the
//! `MozenWorker` service, falling back to the same names on `Mozen` for a leader of the
//! previous release, which serves only those (a rolling upgrade has both for a while).

use crate::transport::AuthChannel;
use mozen_proto as pb;
use mozen_proto::mozen_client::MozenClient;
use mozen_proto::mozen_worker_client::MozenWorkerClient;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use tonic::{Response, Status, Streaming};

/// Which service the agent talked to serves the worker RPCs on, as last learnt.
const UNKNOWN: u8 = 0;
const WORKER: u8 = 1;
const LEGACY: u8 = 2;

/// The worker RPCs of one agent: `MozenWorker` when it serves it, else `Mozen`'s old names.
/// The first call (or the first after an agent answered `UNIMPLEMENTED`) tries `MozenWorker`
/// with a copy of the request, and the answer decides for the calls after it.
#[derive(Clone)]
pub struct WorkerClient {
    worker: MozenWorkerClient<AuthChannel>,
    mozen: MozenClient<AuthChannel>,
    /// Shared by the clones made for one agent: UNKNOWN, WORKER or LEGACY.
    serves: Arc<AtomicU8>,
}

macro_rules! worker_rpc {
    ($(#[$doc:meta])* $name:ident, $req:ty, $reply:ty) => {
        $(#[$doc])*
        pub async fn $name(&mut self, r: $req) -> Result<Response<$reply>, Status> {
            match self.serves.load(Ordering::Relaxed) {
                WORKER => {
                    let res = self.worker.$name(r).await;
                    self.learn(&res);
                    res
                }
                LEGACY => self.mozen.$name(r).await,
                _ => {
                    let res = self.worker.$name(r.clone()).await;
                    if self.learn(&res) {
                        return self.mozen.$name(r).await;
                    }
                    res
                }
            }
        }
    };
}

impl WorkerClient {
    pub(crate) fn new(
        worker: MozenWorkerClient<AuthChannel>,
        mozen: MozenClient<AuthChannel>,
    ) -> Self {
        WorkerClient {
            worker,
            mozen,
            serves: Arc::new(AtomicU8::new(UNKNOWN)),
        }
    }

    /// Records what `res` of a `MozenWorker` call says; true when the agent does not serve it.
    fn learn<T>(&self, res: &Result<T, Status>) -> bool {
        match res {
            Err(s) if s.code() == tonic::Code::Unimplemented => {
                self.serves.store(LEGACY, Ordering::Relaxed);
                true
            }
            Ok(_) => {
                self.serves.store(WORKER, Ordering::Relaxed);
                false
            }
            Err(_) => false,
        }
    }

    worker_rpc!(join, pb::JoinRequest, pb::JoinReply);
    worker_rpc!(heartbeat, pb::HeartbeatRequest, pb::HeartbeatReply);
    worker_rpc!(work, pb::WorkRequest, Streaming<pb::WorkItem>);
    worker_rpc!(complete, pb::CompleteRequest, pb::CompleteReply);
    worker_rpc!(park, pb::ParkRequest, pb::ParkReply);
}
