//! Compact records of finished requests.
//!
//! A memoized request is kept for as long as its result is, far longer than it was queued or
//! running, and one agent may hold a million of them. Queued and running requests keep the
//! full [`Request`]; a request that reaches a terminal state (Done, Failed, Cancelled) moves to
//! a [`Finished`] record: fixed-size fields plus its argument bytes and parents, with the
//! function name, priority and retry policy interned together as one [`Profile`] id, so no
//! record owns a `String`. See docs/benchmarks.md for the memory this saves.

use mozen_model::{Millis, NodeId, Request, RequestKey, RequestState, RetryPolicy};
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

/// The terminal states a [`Finished`] record can be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum FinalState {
    Done,
    Failed,
    Cancelled,
}

impl FinalState {
    /// The terminal state of `state`, or None for a live one.
    pub(crate) fn of(state: RequestState) -> Option<Self> {
        match state {
            RequestState::Done => Some(FinalState::Done),
            RequestState::Failed => Some(FinalState::Failed),
            RequestState::Cancelled => Some(FinalState::Cancelled),
            RequestState::Queued | RequestState::Running { .. } => None,
        }
    }

    pub(crate) fn state(self) -> RequestState {
        match self {
            FinalState::Done => RequestState::Done,
            FinalState::Failed => RequestState::Failed,
            FinalState::Cancelled => RequestState::Cancelled,
        }
    }
}

/// A finished request. Holds every field of its `Request` but the key (the map's key), the
/// interned ones (in its profile) and `waiting`, which is 0 for any request not running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Finished {
    pub(crate) profile: u32,
    pub(crate) state: FinalState,
    pub(crate) attempts: u32,
    pub(crate) failures: u32,
    pub(crate) last_node: Option<NodeId>,
    pub(crate) created: Millis,
    pub(crate) updated: Millis,
    pub(crate) duration_ms: u64,
    pub(crate) not_before: Millis,
    /// Submission order.
    pub(crate) seq: u64,
    /// Position in the finished (eviction) order: the key of `ClusterState::finished`.
    pub(crate) finish_seq: u64,
    pub(crate) args: Box<[u8]>,
    pub(crate) parents: Box<[RequestKey]>,
}

impl Finished {
    /// The record of `r`, which must be in a terminal state (None otherwise).
    pub(crate) fn new(r: Request, profile: u32, finish_seq: u64) -> Option<Self> {
        Some(Finished {
            profile,
            state: FinalState::of(r.state)?,
            attempts: r.attempts,
            failures: r.failures,
            last_node: r.last_node,
            created: r.created,
            updated: r.updated,
            duration_ms: r.duration_ms,
            not_before: r.not_before,
            seq: r.seq,
            finish_seq,
            args: r.args.into_boxed_slice(),
            parents: r.parents.into_boxed_slice(),
        })
    }

    /// The full request again (allocates its function name, arguments and parents).
    pub(crate) fn to_request(&self, key: RequestKey, profile: &Profile) -> Request {
        Request {
            key,
            function: profile.function.clone(),
            args: self.args.to_vec(),
            parents: self.parents.to_vec(),
            priority: profile.priority,
            state: self.state.state(),
            attempts: self.attempts,
            failures: self.failures,
            created: self.created,
            updated: self.updated,
            retry: profile.retry(),
            last_node: self.last_node,
            duration_ms: self.duration_ms,
            waiting: 0,
            not_before: self.not_before,
            seq: self.seq,
        }
    }

    pub(crate) fn add_parent(&mut self, parent: RequestKey) {
        if !self.parents.contains(&parent) {
            let mut v = std::mem::take(&mut self.parents).into_vec();
            v.push(parent);
            self.parents = v.into_boxed_slice();
        }
    }

    pub(crate) fn remove_parent(&mut self, parent: &RequestKey) {
        if self.parents.contains(parent) {
            let mut v = std::mem::take(&mut self.parents).into_vec();
            v.retain(|p| p != parent);
            self.parents = v.into_boxed_slice();
        }
    }
}

/// What many requests share: function name, priority and retry policy.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct Profile {
    pub(crate) function: String,
    pub(crate) priority: i32,
    retries: u32,
    backoff_ms: u64,
    max_attempts: u32,
}

impl Profile {
    fn of(r: &Request) -> Self {
        Profile {
            function: r.function.clone(),
            priority: r.priority,
            retries: r.retry.retries,
            backoff_ms: r.retry.backoff_ms,
            max_attempts: r.retry.max_attempts,
        }
    }

    fn retry(&self) -> RetryPolicy {
        RetryPolicy {
            retries: self.retries,
            backoff_ms: self.backoff_ms,
            max_attempts: self.max_attempts,
        }
    }
}

/// Interned profiles, by id. Ids are handed out in first-use order and never reused, so the
/// table is the same on every voter that applied the same commands. It only grows: a profile
/// is a few dozen bytes and a cluster has few distinct ones.
#[derive(Debug, Clone, Default)]
pub(crate) struct Profiles {
    list: Vec<Profile>,
    /// The reverse of `list`; derived, so neither encoded nor compared.
    ids: BTreeMap<Profile, u32>,
}

impl Profiles {
    /// The id of `r`'s profile, adding it if new.
    pub(crate) fn intern(&mut self, r: &Request) -> u32 {
        let p = Profile::of(r);
        if let Some(id) = self.ids.get(&p) {
            return *id;
        }
        let id = self.list.len() as u32;
        self.list.push(p.clone());
        self.ids.insert(p, id);
        id
    }

    pub(crate) fn get(&self, id: u32) -> Option<&Profile> {
        self.list.get(id as usize)
    }
}

impl PartialEq for Profiles {
    fn eq(&self, other: &Self) -> bool {
        self.list == other.list
    }
}

impl Serialize for Profiles {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.list.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Profiles {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let list = Vec::<Profile>::deserialize(d)?;
        let mut ids = BTreeMap::new();
        for (i, p) in list.iter().enumerate() {
            ids.entry(p.clone()).or_insert(i as u32);
        }
        Ok(Profiles { list, ids })
    }
}

/// Decodes a `BTreeMap` (encoded as serde's map) into densely packed nodes.
///
/// serde inserts decoded entries one by one; in key order that leaves every B-tree node about
/// half full. Collecting them first lets `BTreeMap::from_iter` build full nodes, which makes a
/// million finished requests take about a third less memory after a restart.
pub(crate) fn packed<'de, D, K, V>(d: D) -> Result<BTreeMap<K, V>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Ord,
    V: Deserialize<'de>,
{
    struct Packed<K, V>(PhantomData<(K, V)>);

    impl<'de, K: Deserialize<'de> + Ord, V: Deserialize<'de>> Visitor<'de> for Packed<K, V> {
        type Value = BTreeMap<K, V>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            // The length comes from the input: do not trust it with a large allocation.
            let mut items = Vec::with_capacity(map.size_hint().unwrap_or(0).min(1 << 12));
            while let Some(kv) = map.next_entry()? {
                items.push(kv);
            }
            Ok(items.into_iter().collect())
        }
    }

    d.deserialize_map(Packed(PhantomData))
}
