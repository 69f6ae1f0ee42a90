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
    pub(crate) args: Args,
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
            args: Args::from(r.args),
            parents: r.parents.into_boxed_slice(),
        })
    }

    /// The full request again (allocates its function name, arguments and parents).
    pub(crate) fn to_request(&self, key: RequestKey, profile: &Profile) -> Request {
        Request {
            key,
            function: profile.function.clone(),
            args: self.args.as_slice().to_vec(),
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

/// Longest argument encoding kept inside the record.
const INLINE_ARGS: usize = 22;

/// Argument bytes of a finished request: short ones (the JSON of most memoized calls, such
/// as `[3,4]`) inside the record, longer ones on the heap. 24 bytes either way, where a
/// boxed slice costs 16 plus an allocation of at least 32.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Args {
    Inline { len: u8, bytes: [u8; INLINE_ARGS] },
    Heap(Box<[u8]>),
}

impl Args {
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Args::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Args::Heap(b) => b,
        }
    }
}

impl From<Vec<u8>> for Args {
    fn from(v: Vec<u8>) -> Self {
        if v.len() <= INLINE_ARGS {
            let mut bytes = [0; INLINE_ARGS];
            bytes[..v.len()].copy_from_slice(&v);
            Args::Inline {
                len: v.len() as u8,
                bytes,
            }
        } else {
            Args::Heap(v.into_boxed_slice())
        }
    }
}

impl fmt::Debug for Args {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_slice().fmt(f)
    }
}

/// Encoded as the byte sequence alone, like the `Vec<u8>` it came from.
impl Serialize for Args {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.as_slice().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Args {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<u8>::deserialize(d).map(Args::from)
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
/// half full. Collecting them first lets `BTreeMap::from_iter` build full nodes: the state
/// of a million finished requests is about 210 MiB after a restart, against 256 MiB after
/// applying them (random keys leave nodes about two-thirds full).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_stay_inline_up_to_their_limit_and_encode_like_a_vec() {
        assert_eq!(std::mem::size_of::<Args>(), 24);
        for len in [0, 1, INLINE_ARGS, INLINE_ARGS + 1, 300] {
            let v: Vec<u8> = (0..len as u8).collect();
            let a = Args::from(v.clone());
            assert_eq!(matches!(a, Args::Inline { .. }), len <= INLINE_ARGS);
            assert_eq!(a.as_slice(), &v[..]);
            let bytes = postcard::to_allocvec(&a).expect("encodes");
            assert_eq!(bytes, postcard::to_allocvec(&v).expect("encodes"));
            assert_eq!(postcard::from_bytes::<Args>(&bytes).expect("decodes"), a);
        }
    }
}
