//! Everyone's reads: cluster info, Raft status, the node table, trees, functions, the queue,
//! events, the console's Watch stream, state digests. Served from the applied state by any
//! sound member, but the node table and Watch, which carry the leader's liveness view.

use super::{Res, Service, parse_key};
use crate::paging;
use crate::view;
use mozen_proto as pb;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// The console's stream of cluster updates.
pub(super) type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::ClusterUpdate, Status>> + Send>>;

pub(super) async fn cluster_info(
    s: &Service,
    r: Request<pb::ClusterInfoRequest>,
) -> Res<pb::ClusterInfoReply> {
    let asking = r.into_inner().asking_node;
    let a = &s.agent;
    let m = a.raft.metrics().borrow().clone();
    let initialized = a.raft.is_initialized().await.unwrap_or(false);
    let voters = m
        .membership_config
        .nodes()
        .filter(|(id, _)| {
            m.membership_config
                .membership()
                .voter_ids()
                .any(|v| v == **id)
        })
        .map(|(id, n)| pb::Member {
            id: *id,
            addr: n.addr.clone(),
        })
        .collect();
    let leader_addr = a.leader().map(|(_, addr)| addr).unwrap_or_default();
    Ok(Response::new(pb::ClusterInfoReply {
        node_id: a.me(),
        initialized,
        leader_id: m.current_leader,
        leader_addr,
        voters,
        term: m.current_term,
        role: a.role_of(a.me()).as_str().into(),
        asking_node_registered: asking != 0
            && a.sm.shared().read().expect("state").node(asking).is_some(),
    }))
}

pub(super) async fn status(s: &Service, _r: Request<pb::StatusRequest>) -> Res<pb::RaftStatus> {
    s.require_member_or_quarantined()?;
    Ok(Response::new(view::raft_status(&s.agent)))
}

pub(super) async fn nodes(s: &Service, _r: Request<pb::NodesRequest>) -> Res<pb::NodesReply> {
    let leadership = s.leadership()?;
    Ok(Response::new(pb::NodesReply {
        nodes: view::nodes(&s.agent, &leadership),
    }))
}

pub(super) async fn tree(s: &Service, r: Request<pb::TreeRequest>) -> Res<pb::TreeReply> {
    s.require_sound_member()?;
    let r = r.into_inner();
    let key = parse_key(&r.key)?;
    let max = if r.max_nodes == 0 {
        10_000
    } else {
        r.max_nodes as usize
    };
    let depth = if r.max_depth == 0 {
        u32::MAX
    } else {
        r.max_depth
    };
    let page = view::TreePage {
        max: max.min(paging::MAX_PAGE),
        max_depth: depth,
        with_args: !r.omit_args,
        skip: paging::tree_token(&r.page_token)?,
    };
    let mut fit = s.fit();
    let (entries, next_page_token) =
        view::tree(&s.agent, key, &page, &mut fit).map_err(Status::not_found)?;
    Ok(Response::new(pb::TreeReply {
        entries,
        next_page_token,
    }))
}

pub(super) async fn functions(
    s: &Service,
    r: Request<pb::FunctionsRequest>,
) -> Res<pb::FunctionsReply> {
    s.require_sound_member()?;
    let r = r.into_inner();
    let after = paging::functions_token(&r.page_token)?;
    let limit = paging::page_size(r.limit, 1000);
    let (functions, next_page_token) = view::functions(&s.agent, after, limit, &mut s.fit());
    Ok(Response::new(pb::FunctionsReply {
        functions,
        next_page_token,
    }))
}

pub(super) async fn queue(s: &Service, r: Request<pb::QueueRequest>) -> Res<pb::QueueReply> {
    s.require_sound_member()?;
    let r = r.into_inner();
    let after = paging::queue_token(&r.page_token)?;
    let limit = paging::page_size(r.limit, 1);
    let (summary, head, next_page_token) = view::queue(&s.agent, limit, after, &mut s.fit());
    Ok(Response::new(pb::QueueReply {
        summary: Some(summary),
        head,
        next_page_token,
    }))
}

pub(super) async fn events(s: &Service, r: Request<pb::EventsRequest>) -> Res<pb::EventsReply> {
    s.require_member_or_quarantined()?;
    let r = r.into_inner();
    let before = paging::events_token(&r.page_token)?;
    let limit = paging::page_size(r.limit, 100);
    let (events, next_page_token) = view::events(&s.agent, limit, before, &mut s.fit());
    Ok(Response::new(pb::EventsReply {
        events,
        next_page_token,
    }))
}

pub(super) async fn watch(s: &Service, r: Request<pb::WatchRequest>) -> Res<WatchStream> {
    let leadership = s.leadership()?;
    let open = s.streams.acquire(&r)?;
    let n = r.into_inner().requests;
    let n = if n == 0 { 200 } else { n as usize };
    let budget = paging::reply_budget(s.agent.cfg.max_message);
    let feed = s.feed.clone();
    let agent = s.agent.clone();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    // The stream ends with the leadership: the console reconnects and follows the new leader.
    let ended = leadership.ended().clone();
    let leadership = Arc::downgrade(&leadership);
    s.agent.tasks.spawn(async move {
        let _open = open;
        loop {
            let Some(l) = leadership.upgrade().filter(|_| agent.is_leader()) else {
                break;
            };
            let update = feed.update(&agent, &l, n, budget);
            drop(l);
            if tx.send(Ok(update)).await.is_err() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = ended.cancelled() => break,
            }
        }
    });
    Ok(Response::new(Box::pin(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    )))
}

pub(super) async fn state_digest(
    s: &Service,
    r: Request<pb::StateDigestRequest>,
) -> Res<pb::StateDigestReply> {
    s.require_member_or_quarantined()?;
    if r.get_ref().checkpoints_only {
        return Ok(Response::new(crate::checks::checkpoints_reply(&s.agent)));
    }
    Ok(Response::new(view::state_digest(&s.agent)))
}

/// How old a computed update may be and still serve another Watch stream.
const FEED_FRESH: Duration = Duration::from_millis(250);

/// The console's feed of this agent, computed at most once per [`FEED_FRESH`] whatever the
/// number of Watch streams: each update reads the whole state under its lock, which a crowd
/// of watchers asking for their own would hold most of the time, starving the state
/// machine.
#[derive(Default)]
pub(super) struct Feed {
    last: std::sync::Mutex<Option<(std::time::Instant, Arc<pb::ClusterUpdate>)>>,
}

impl Feed {
    /// An update with the `n` most recent requests, computed now or shared with the other
    /// streams.
    fn update(
        &self,
        agent: &crate::agent::Agent,
        leadership: &crate::leadership::Leadership,
        n: usize,
        budget: usize,
    ) -> pb::ClusterUpdate {
        let shared = {
            // Held while computing: the other streams wait and take this one's update.
            let mut last = self.last.lock().expect("feed");
            match &*last {
                Some((at, u)) if at.elapsed() < FEED_FRESH => u.clone(),
                _ => {
                    let u = Arc::new(view::cluster_update(
                        agent,
                        leadership,
                        view::WATCH_REQUESTS_MAX,
                        budget,
                    ));
                    *last = Some((std::time::Instant::now(), u.clone()));
                    u
                }
            }
        };
        let mut update = (*shared).clone();
        // Cut to what this stream asked; it lost requests to the byte bound only if fewer
        // than it asked for made it in.
        update.truncated = shared.truncated && shared.requests.len() < n;
        update.requests.truncate(n);
        update
    }
}
