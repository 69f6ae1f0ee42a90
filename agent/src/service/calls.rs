//! The callers' audience: call (one, a stream of tagged calls, a batch), submit, get,
//! cancel, forget, and content-addressed blobs for batch jobs. Memo hits and gets are
//! answered by any sound member; everything that starts or changes work is the leader's.

use super::{Res, Service, parse_key};
use crate::context::now_ms;
use crate::hub::Woken;
use crate::leadership::{Leadership, Start};
use crate::limits::{AdmitPermit, Candidate};
use crate::security::{Caller, Roles};
use mozen_model::{Code, RequestKey, RequestState, RetryPolicy, canonical_args};
use mozen_proto as pb;
use mozen_proto::status::{self, status};
use mozen_store::{Command, ForgetSelector, NewRequest, Response as SmResponse, SubmitReply};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_stream::Stream;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status};

/// A Calls stream's replies.
pub(super) type CallsStream = Pin<Box<dyn Stream<Item = Result<pb::TaggedReply, Status>> + Send>>;

pub(super) async fn call(s: &Service, r: Request<pb::CallRequest>) -> Res<pb::CallReply> {
    let _open = s.streams.acquire(&r)?;
    let client = Caller::of(&r).name;
    Ok(Response::new(
        s.do_call(r.into_inner(), &client, None).await?,
    ))
}

pub(super) async fn calls(
    s: &Service,
    r: Request<tonic::Streaming<pb::TaggedCall>>,
) -> Res<CallsStream> {
    // The stream counts as one open RPC of its client; the calls on it are bounded by
    // CALLS_PER_STREAM: past that the agent stops reading the stream until some finish
    // (HTTP/2 flow control then holds the client back).
    let open = s.streams.acquire(&r)?;
    let client = Caller::of(&r).name;
    let mut inbound = r.into_inner();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let svc = s.clone();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(CALLS_PER_STREAM));
    tokio::spawn(async move {
        let _open = open;
        while let Ok(Some(m)) = inbound.message().await {
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                break;
            };
            let tx = tx.clone();
            let svc = svc.clone();
            let client = client.clone();
            tokio::spawn(async move {
                let result = match m.call {
                    Some(c) => svc.do_call(c, &client, None).await,
                    None => Err(status(Code::BadArguments, "a tagged call without its call")),
                };
                let _ = tx.send(Ok(tagged_reply(m.tag, result)));
                drop(permit);
            });
        }
    });
    Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
}

pub(super) async fn call_batch(
    s: &Service,
    r: Request<pb::CallBatchRequest>,
) -> Res<pb::CallBatchReply> {
    let _open = s.streams.acquire(&r)?;
    let client = Caller::of(&r).name;
    let calls = r.into_inner().calls;
    // Admitted whole or refused whole: one look at the queue for every call of the batch.
    let mut parsed = Vec::with_capacity(calls.len());
    for c in &calls {
        parsed.push(s.parse_call(c).await?);
    }
    let permits = s.admit(&client, parsed.iter().map(|(_, new)| new))?;
    let replies = futures::future::join_all(
        calls
            .into_iter()
            .zip(parsed)
            .zip(permits)
            .map(|((c, parsed), p)| s.call_parsed(c, parsed, &client, Some(p))),
    )
    .await;
    let replies = replies.into_iter().collect::<Result<Vec<_>, _>>()?;
    Ok(Response::new(pb::CallBatchReply { replies }))
}

pub(super) async fn submit(s: &Service, r: Request<pb::CallRequest>) -> Res<pb::SubmitReply> {
    let _open = s.streams.acquire(&r)?;
    let client = Caller::of(&r).name;
    let (key, new) = s.parse_call(r.get_ref()).await?;
    let leadership = s.leadership()?;
    let permit = s.admit(&client, [&new])?;
    leadership.write_parent(&s.agent, new.parent).await;
    let resp = s
        .propose(Command::SubmitFrom {
            client: client.to_string(),
            requests: vec![new],
            at: now_ms(),
        })
        .await?;
    drop(permit);
    let disposition = match resp {
        SmResponse::Submitted(r) => match r.first() {
            Some(SubmitReply::Queued) => "queued",
            Some(SubmitReply::Joined) => "joined",
            Some(SubmitReply::MemoHit) => "memo-hit",
            _ => "parent-gone",
        },
        _ => "unknown",
    };
    Ok(Response::new(pb::SubmitReply {
        key: key.to_hex(),
        disposition: disposition.into(),
    }))
}

pub(super) async fn get(s: &Service, r: Request<pb::GetRequest>) -> Res<pb::CallReply> {
    s.require_sound_member()?;
    let _open = s.streams.acquire(&r)?;
    let r = r.into_inner();
    let key = parse_key(&r.key)?;
    if s.agent
        .sm
        .shared()
        .read()
        .expect("state")
        .request(&key)
        .is_none()
        && !s.agent.hub.leadership().is_some_and(|l| l.flies(&key))
    {
        return Err(status(
            Code::UnknownRequest,
            format_args!("no request {key} (never submitted, or forgotten)",),
        ));
    }
    if !r.wait {
        let mut reply = s.reply_for(&key, false, None)?;
        if reply.state == "unknown" {
            // An express call, not written down yet: held for a place, or running.
            let held = s.agent.hub.leadership().is_some_and(|l| l.is_held(&key));
            reply.set_state(if held {
                pb::RequestState::Queued
            } else {
                pb::RequestState::Running
            });
        }
        return Ok(Response::new(reply));
    }
    let limit = if r.timeout_ms == 0 {
        MAX_WAIT
    } else {
        Duration::from_millis(r.timeout_ms).min(MAX_WAIT)
    };
    Ok(Response::new(s.wait_reply(key, limit, false).await?))
}

pub(super) async fn cancel(s: &Service, r: Request<pb::CancelRequest>) -> Res<pb::CancelReply> {
    let caller = Caller::of(&r);
    let r = r.into_inner();
    if !r.function.is_empty() || !r.client.is_empty() || !r.keys.is_empty() {
        return cancel_many(s, &caller, r).await;
    }
    let key = parse_key(&r.key)?;
    let leadership = s.leadership()?;
    // An express call is written down first, so that the log can cancel it.
    if leadership.flies(&key) {
        leadership.write_down(&s.agent, Some(&[key])).await;
    }
    match s.propose(Command::Cancel { key, at: now_ms() }).await? {
        SmResponse::Cancelled(keys) => Ok(Response::new(pb::CancelReply {
            cancelled: keys.iter().map(|k| k.to_hex()).collect(),
            count: keys.len() as u64,
        })),
        SmResponse::Rejected(rej) => Err(status::coded(rej)),
        _ => Ok(Response::new(pb::CancelReply::default())),
    }
}

/// Keys in one `CancelMany` (about 140 KB of log entry).
const CANCEL_CHUNK: usize = 4096;

/// Keys a bulk cancel lists in its reply (it counts them all).
const CANCEL_LISTED: usize = 1000;

/// Bulk cancel: every queued or running request matching all the selectors of `r`, in
/// `CancelMany` entries of [`CANCEL_CHUNK`] keys. A caller without the operator role matches
/// only its own requests (the owner its submissions recorded).
async fn cancel_many(s: &Service, caller: &Caller, r: pb::CancelRequest) -> Res<pb::CancelReply> {
    let operator = caller.roles.contains(Roles::OPERATOR);
    if !r.client.is_empty() && !operator && *r.client != *caller.name {
        return Err(status(
            Code::Forbidden,
            format_args!(
                "client '{}' may cancel only its own requests in bulk, not client '{}''s; \
                 ask an operator",
                caller.name, r.client
            ),
        ));
    }
    let mut keys = r
        .keys
        .iter()
        .map(|k| parse_key(k))
        .collect::<Result<Vec<_>, _>>()?;
    if !r.key.is_empty() {
        keys.push(parse_key(&r.key)?);
    }
    let owner: Option<&str> = if !r.client.is_empty() {
        Some(&r.client)
    } else if operator {
        None
    } else {
        Some(&caller.name)
    };
    let leadership = s.leadership()?;
    // Express calls named by key are written down first, so that the log can cancel them.
    let flying: Vec<RequestKey> = keys
        .iter()
        .filter(|k| leadership.flies(k))
        .copied()
        .collect();
    if !flying.is_empty() {
        leadership.write_down(&s.agent, Some(&flying)).await;
    }
    let selected: Vec<RequestKey> = {
        let state = s.agent.sm.shared();
        let state = state.read().expect("state");
        let matches = |req: &mozen_model::Request| {
            (r.function.is_empty() || req.function == r.function)
                && owner.is_none_or(|o| state.owners().owner(&req.key) == o)
        };
        if keys.is_empty() {
            state.live().filter(|q| matches(q)).map(|q| q.key).collect()
        } else {
            keys.iter()
                .filter(|k| state.live_request(k).is_some_and(matches))
                .copied()
                .collect()
        }
    };
    let at = now_ms();
    let writes = selected.chunks(CANCEL_CHUNK).map(|chunk| {
        s.propose(Command::CancelMany {
            keys: chunk.to_vec(),
            at,
        })
    });
    let mut reply = pb::CancelReply::default();
    for resp in futures::future::join_all(writes).await {
        if let SmResponse::Cancelled(ks) = resp? {
            reply.count += ks.len() as u64;
            let room = CANCEL_LISTED.saturating_sub(reply.cancelled.len());
            reply
                .cancelled
                .extend(ks.iter().take(room).map(|k| k.to_hex()));
        }
    }
    Ok(Response::new(reply))
}

pub(super) async fn forget(s: &Service, r: Request<pb::ForgetRequest>) -> Res<pb::ForgetReply> {
    let r = r.into_inner();
    let selector = if !r.key.is_empty() {
        let key = parse_key(&r.key)?;
        ForgetSelector::Keys(vec![key])
    } else if !r.function.is_empty() {
        ForgetSelector::Function(r.function)
    } else if r.older_than_ms > 0 {
        ForgetSelector::OlderThan(now_ms().saturating_sub(r.older_than_ms))
    } else {
        return Err(status(
            Code::BadArguments,
            "forget needs a key, a function or an age",
        ));
    };
    s.leadership()?;
    match s
        .propose(Command::Forget {
            selector,
            at: now_ms(),
        })
        .await?
    {
        SmResponse::Forgotten(n) => Ok(Response::new(pb::ForgetReply { forgotten: n })),
        _ => Ok(Response::new(pb::ForgetReply { forgotten: 0 })),
    }
}

pub(super) async fn put_blobs(
    s: &Service,
    r: Request<pb::PutBlobsRequest>,
) -> Res<pb::PutBlobsReply> {
    use crate::batch::job::{MAX_BLOB_BYTES, blob_key, blob_memo, is_blob_hash};
    s.leadership()?;
    let r = r.into_inner();
    if let Some((i, h)) = r.check.iter().enumerate().find(|(_, h)| !is_blob_hash(h)) {
        return Err(status(
            Code::BadArguments,
            format_args!(
                "check[{i}] ({} bytes) is not a blob hash (64 lowercase hex digits)",
                h.len()
            ),
        ));
    }
    let limit = MAX_BLOB_BYTES.min(s.agent.cfg.limits.max_result.saturating_sub(2));
    if let Some((i, b)) = r.blobs.iter().enumerate().find(|(_, b)| b.len() > limit) {
        return Err(status(
            Code::TooLarge,
            format_args!(
                "blob {i} is {} bytes; this cluster takes blobs of at most {limit}: cut the job into smaller slices",
                b.len()
            ),
        ));
    }
    let memos: Vec<_> = r.blobs.iter().map(|b| blob_memo(b).1).collect();
    let missing = {
        let state = s.agent.sm.shared();
        let state = state.read().expect("state");
        let done = |k: &RequestKey| state.request_state(k) == Some(RequestState::Done);
        let missing: Vec<String> = r
            .check
            .into_iter()
            .filter(|h| !done(&blob_key(h)))
            .collect();
        let memos: Vec<_> = memos.into_iter().filter(|m| !done(&m.key)).collect();
        (missing, memos)
    };
    let (missing, memos) = missing;
    let mut stored = 0;
    if !memos.is_empty() {
        let cmd = Command::Memoize {
            memos,
            at: now_ms(),
        };
        if let SmResponse::Memoized(new) = s.propose(cmd).await? {
            stored = new.iter().filter(|n| **n).count() as u64;
        }
    }
    Ok(Response::new(pb::PutBlobsReply { missing, stored }))
}

impl Service {
    /// Waits for a wake-up `rx` until `deadline`: what it was woken with, None once the time
    /// is up or the agent stops.
    async fn woken(
        &self,
        rx: tokio::sync::oneshot::Receiver<Woken>,
        deadline: Instant,
    ) -> Option<Woken> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        tokio::select! {
            w = rx => Some(w.unwrap_or_default()),
            _ = tokio::time::sleep(left) => Some(None),
            _ = self.agent.shutdown.cancelled() => None,
        }
    }

    /// Waits until `key` is terminal or `limit` passes; answers its reply either way.
    async fn wait_reply(
        &self,
        key: RequestKey,
        limit: Duration,
        cached: bool,
    ) -> Result<pb::CallReply, Status> {
        let deadline = Instant::now() + limit;
        let mut known = None;
        loop {
            let rx = self.agent.hub.wait_for(key);
            let reply = self.reply_for(&key, cached, known.take())?;
            if is_final(&reply) {
                return Ok(reply);
            }
            match self.woken(rx, deadline).await {
                Some(w) => known = w,
                None => return Ok(reply),
            }
        }
    }

    /// Waits for an express call (see `express`): answered once its value is committed. A
    /// call whose flight ended without a value in the log (it failed, or its worker went away)
    /// takes the usual way; on an agent that stopped leading it is refused, so that its
    /// caller sends it to the new leader.
    async fn wait_express(
        &self,
        new: NewRequest,
        limit: Duration,
        client: &str,
    ) -> Result<pb::CallReply, Status> {
        let key = new.key;
        let deadline = Instant::now() + limit;
        let mut known = None;
        loop {
            let rx = self.agent.hub.wait_for(key);
            let reply = self.reply_for(&key, false, known.take())?;
            if is_final(&reply) {
                return Ok(reply);
            }
            if reply.state != "unknown" {
                let left = deadline.saturating_duration_since(Instant::now());
                return self.wait_reply(key, left, false).await;
            }
            if !self.leadership()?.flies(&key) {
                if let SmResponse::Submitted(r) = self
                    .propose(Command::SubmitFrom {
                        client: client.to_string(),
                        requests: vec![new],
                        at: now_ms(),
                    })
                    .await?
                    && r.first() == Some(&SubmitReply::ParentGone)
                {
                    return Err(parent_gone());
                }
                let left = deadline.saturating_duration_since(Instant::now());
                return self.wait_reply(key, left, false).await;
            }
            match self.woken(rx, deadline).await {
                Some(w) => known = w,
                None => return Ok(reply),
            }
        }
    }

    async fn parse_call(&self, c: &pb::CallRequest) -> Result<(RequestKey, NewRequest), Status> {
        if c.function.is_empty() {
            return Err(status(Code::BadArguments, "function name is empty"));
        }
        crate::limits::check_function_name(&c.function)?;
        (self.agent.cfg.limits).check_args(&c.function, c.args_json.len())?;
        let (key, canon) = if c.args_json.len() <= LARGE_ARGS {
            canonical_call(&c.function, &c.args_json)?
        } else {
            // Parsing and hashing megabytes takes a while: off the threads that serve Raft.
            let (function, text) = (c.function.clone(), c.args_json.clone());
            tokio::task::spawn_blocking(move || canonical_call(&function, &text))
                .await
                .map_err(|e| status(Code::Internal, format_args!("parsing arguments: {e}")))??
        };
        let parent = if c.parent.is_empty() {
            None
        } else {
            Some(
                c.parent
                    .parse::<RequestKey>()
                    .map_err(|e| status(Code::BadArguments, format_args!("parent: {e}",)))?,
            )
        };
        let def = RetryPolicy::default();
        let unset = c.retries == 0 && c.backoff_ms == 0 && c.max_attempts == 0;
        // A child call that sets no policy of its own inherits its caller's: a request allowed
        // ten attempts does not fail because one of its children was allowed three.
        let inherited = parent.filter(|_| unset).and_then(|p| {
            let state = self.agent.sm.shared();
            let state = state.read().expect("state");
            state.request(&p).map(|r| r.retry)
        });
        let retry = inherited.unwrap_or(RetryPolicy {
            retries: c.retries,
            backoff_ms: if c.backoff_ms == 0 {
                def.backoff_ms
            } else {
                c.backoff_ms
            },
            max_attempts: if c.max_attempts == 0 {
                def.max_attempts
            } else {
                c.max_attempts
            },
        });
        Ok((
            key,
            NewRequest {
                key,
                function: c.function.clone(),
                args: canon,
                parent,
                priority: c.priority,
                retry,
                no_cache: c.no_cache,
            },
        ))
    }

    fn memo_hit(&self, key: &RequestKey) -> bool {
        self.agent.is_member()
            && !self.agent.integrity.is_quarantined()
            && self
                .agent
                .sm
                .shared()
                .read()
                .expect("state")
                .request_state(key)
                == Some(RequestState::Done)
    }

    /// Admits `new` calls of `client` together, or refuses them all (see `limits.rs`).
    fn admit<'a>(
        &self,
        client: &Arc<str>,
        new: impl IntoIterator<Item = &'a NewRequest>,
    ) -> Result<Vec<AdmitPermit>, Status> {
        let calls: Vec<Candidate<'_>> = new
            .into_iter()
            .map(|n| Candidate {
                key: &n.key,
                bytes: n.args.len(),
                child: n.parent.is_some(),
                no_cache: n.no_cache,
            })
            .collect();
        let state = self.agent.sm.shared();
        let state = state.read().expect("state");
        (self.agent.cfg.limits).admit(&self.admission, &state, client, &calls)
    }

    /// One call of `client`: a memo hit, or started and waited for. `admitted` is its
    /// permit when admitted already (with the rest of its batch).
    async fn do_call(
        &self,
        c: pb::CallRequest,
        client: &Arc<str>,
        admitted: Option<AdmitPermit>,
    ) -> Result<pb::CallReply, Status> {
        let parsed = self.parse_call(&c).await?;
        self.call_parsed(c, parsed, client, admitted).await
    }

    /// [`Self::do_call`] of a call already parsed into its key and request.
    async fn call_parsed(
        &self,
        c: pb::CallRequest,
        (key, new): (RequestKey, NewRequest),
        client: &Arc<str>,
        admitted: Option<AdmitPermit>,
    ) -> Result<pb::CallReply, Status> {
        if !c.no_cache && self.memo_hit(&key) {
            return self.reply_for(&key, true, None);
        }
        let leadership = self.leadership()?;
        if new.parent.is_none() {
            return self
                .start_call(&leadership, &c, key, new, client, admitted)
                .await;
        }
        // A child call is answered with its value as soon as a worker reports it: the caller
        // is a running function, whose own value is committed before anyone outside the
        // cluster sees it (see "Child values" in docs/architecture.md).
        let mut reported = leadership.wait_reported(key);
        tokio::select! {
            r = self.start_call(&leadership, &c, key, new, client, admitted) => r,
            Ok((value, node, ms)) = &mut reported => Ok(pb::CallReply {
                key: key.to_hex(),
                node: Some(node),
                duration_ms: ms,
                result_json: Some(String::from_utf8_lossy(&value).into_owned()),
                state: "done".into(),
                state_enum: pb::RequestState::Done.into(),
                ..Default::default()
            }),
        }
    }

    /// Starts `new` (express, or submitted to the log) and waits for its outcome.
    async fn start_call(
        &self,
        leadership: &Leadership,
        c: &pb::CallRequest,
        key: RequestKey,
        new: NewRequest,
        client: &Arc<str>,
        admitted: Option<AdmitPermit>,
    ) -> Result<pb::CallReply, Status> {
        // Held until the submission is applied (then the queue counts it).
        let permit = match admitted {
            Some(p) => p,
            None => self
                .admit(client, [&new])?
                .pop()
                .unwrap_or_else(AdmitPermit::none),
        };
        let limit = if c.timeout_ms == 0 {
            MAX_WAIT
        } else {
            Duration::from_millis(c.timeout_ms).min(MAX_WAIT)
        };
        leadership.write_parent(&self.agent, new.parent).await;
        match leadership.start_express(&self.agent, &new) {
            Start::Flying | Start::Joined | Start::Held => {
                // A flying or held call is outstanding work the state does not show yet: it
                // stays counted until its caller is answered (after it is written down, both
                // count it for a moment, which errs on the safe side).
                let out = self.wait_express(new, limit, client).await;
                drop(permit);
                return out;
            }
            _ => {}
        }
        let at = now_ms();
        let placed = leadership.place_now(&self.agent, key, &new.function, new.parent);
        let submit = Command::SubmitFrom {
            client: client.to_string(),
            requests: vec![new],
            at,
        };
        let resp = match placed {
            // Submitted and started in one log entry; the place stays held until then.
            Some((a, _held)) => match self
                .propose(Command::Batch(vec![
                    submit,
                    Command::Assign {
                        assignments: vec![a],
                        at,
                    },
                ]))
                .await?
            {
                SmResponse::Batch(mut rs) if !rs.is_empty() => rs.swap_remove(0),
                other => other,
            },
            None => self.propose(submit).await?,
        };
        drop(permit);
        match resp {
            SmResponse::Submitted(r) if r.first() == Some(&SubmitReply::MemoHit) => {
                self.reply_for(&key, true, None)
            }
            SmResponse::Submitted(r) if r.first() == Some(&SubmitReply::ParentGone) => {
                Err(parent_gone())
            }
            _ => self.wait_reply(key, limit, false).await,
        }
    }
}

/// Whether a reply is the last word on its request (done, failed or cancelled).
fn is_final(reply: &pb::CallReply) -> bool {
    matches!(reply.state.as_str(), "done" | "failed" | "cancelled")
}

/// Longest a single Call or Get(wait) RPC waits before answering "still running"; the client
/// then re-attaches, so no RPC outlives a leader change by much.
const MAX_WAIT: Duration = Duration::from_secs(20);

/// Calls in progress on one Calls stream before the agent stops reading it.
const CALLS_PER_STREAM: usize = 16_384;

fn parent_gone() -> Status {
    status(
        Code::ParentGone,
        format_args!("the calling request is no longer running (cancelled or re-queued)",),
    )
}

/// A call's outcome as a Calls stream message.
fn tagged_reply(tag: u64, result: Result<pb::CallReply, Status>) -> pb::TaggedReply {
    match result {
        Ok(reply) => pb::TaggedReply {
            tag,
            reply: Some(reply),
            ..Default::default()
        },
        Err(s) => pb::TaggedReply {
            tag,
            code: s.code() as i32,
            message: s.message().to_string(),
            leader_addr: s
                .metadata()
                .get(pb::LEADER_ADDR_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
            ..Default::default()
        },
    }
}

/// Arguments longer than this are parsed on a blocking thread.
const LARGE_ARGS: usize = 64 << 10;

/// The key and canonical argument bytes of a call of `function` with `args_json` (empty:
/// `null`).
fn canonical_call(function: &str, args_json: &str) -> Result<(RequestKey, Vec<u8>), Status> {
    let text = if args_json.trim().is_empty() {
        "null"
    } else {
        args_json
    };
    let args: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        status(
            Code::BadArguments,
            format_args!("arguments of {function} are not one JSON value: {e}"),
        )
    })?;
    let canon = canonical_args(&args);
    Ok((RequestKey::of(function, &canon), canon))
}
