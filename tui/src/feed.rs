//! The background task owning the gRPC connection: streams `Watch` updates into the app,
//! follows the leader, reconnects with backoff, and runs operator actions.

use crate::app::{Action, Conn, Op};
use mozen_proto as pb;
use mozen_proto::mozen_client::MozenClient;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

fn channel(addr: &str) -> Option<Channel> {
    Some(
        Endpoint::from_shared(format!("http://{addr}"))
            .ok()?
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy(),
    )
}

/// The leader address from a follower's refusal.
fn leader_hint(s: &tonic::Status) -> Option<String> {
    if !s.message().starts_with("MZ-NOT-LEADER") {
        return None;
    }
    s.metadata()
        .get(pb::LEADER_ADDR_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|a| !a.is_empty())
        .map(String::from)
}

/// Runs until `ops` closes. Sends actions to the UI through `tx`.
pub async fn run(
    addrs: Vec<String>,
    tx: mpsc::UnboundedSender<Action>,
    mut ops: mpsc::UnboundedReceiver<Op>,
) {
    let mut i = 0usize;
    let mut target = addrs[0].clone();
    let mut delay = Duration::from_millis(100);
    loop {
        let _ = tx.send(Action::Conn(Conn::Connecting(target.clone())));
        let Some(ch) = channel(&target) else {
            let _ = tx.send(Action::Conn(Conn::Lost(format!("bad address {target}"))));
            return;
        };
        let mut client =
            MozenClient::new(ch).max_decoding_message_size(pb::DEFAULT_MAX_MESSAGE_BYTES);
        match client.watch(pb::WatchRequest { requests: 500 }).await {
            Ok(resp) => {
                delay = Duration::from_millis(100);
                let _ = tx.send(Action::Conn(Conn::Connected(target.clone())));
                let mut stream = resp.into_inner();
                loop {
                    tokio::select! {
                        m = stream.message() => match m {
                            Ok(Some(u)) => { let _ = tx.send(Action::Update(Box::new(u))); }
                            Ok(None) => break,
                            Err(e) => { let _ = tx.send(Action::Conn(Conn::Lost(e.message().to_string()))); break; }
                        },
                        op = ops.recv() => match op {
                            Some(op) => { let r = perform(&mut client, op, &tx).await; if let Some(r) = r { let _ = tx.send(Action::Done(r)); } }
                            None => return,
                        },
                    }
                }
                // Stream ended (leader changed or agent gone): start over from the list.
                i += 1;
                target = addrs[i % addrs.len()].clone();
            }
            Err(s) => match leader_hint(&s) {
                Some(leader) => target = leader,
                None => {
                    let _ = tx.send(Action::Conn(Conn::Lost(format!(
                        "{target}: {}",
                        s.message()
                    ))));
                    i += 1;
                    target = addrs[i % addrs.len()].clone();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        op = ops.recv() => match op {
                            Some(op) => { let _ = tx.send(Action::Done(Err(format!("MZ-UNREACHABLE: not connected; {} not done", op.describe())))); }
                            None => return,
                        },
                    }
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            },
        }
    }
}

fn err(s: tonic::Status) -> String {
    s.message().to_string()
}

async fn perform(
    c: &mut MozenClient<Channel>,
    op: Op,
    tx: &mpsc::UnboundedSender<Action>,
) -> Option<Result<String, String>> {
    Some(match op {
        Op::NodeOp { id, op } => c
            .node_op(pb::NodeOpRequest {
                node_id: id,
                op: op.into(),
            })
            .await
            .map(|r| r.into_inner().message)
            .map_err(err),
        Op::AddNode { id, addr } => c
            .add_node(pb::AddNodeRequest { node_id: id, addr })
            .await
            .map(|r| r.into_inner().message)
            .map_err(err),
        Op::Cancel { key } => c
            .cancel(pb::CancelRequest { key })
            .await
            .map(|r| format!("cancelled {} request(s)", r.into_inner().cancelled.len()))
            .map_err(err),
        Op::Retry {
            function,
            args_json,
        } => c
            .submit(pb::CallRequest {
                function: function.clone(),
                args_json,
                no_cache: true,
                ..Default::default()
            })
            .await
            .map(|r| format!("retrying {function}: {}", r.into_inner().key))
            .map_err(err),
        Op::Tree { key } => match c
            .tree(pb::TreeRequest {
                key,
                max_nodes: 2000,
            })
            .await
        {
            Ok(r) => {
                let _ = tx.send(Action::Tree(r.into_inner().entries));
                return None;
            }
            Err(e) => Err(err(e)),
        },
    })
}
