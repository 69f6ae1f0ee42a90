//! The hub: what the agent does when the state machine applies commands.
//!
//! The store calls [`Hub::applied`] after each applied batch (on every voter). From it,
//! callers waiting on a request are woken when it finishes, on every member. The hub also
//! holds the agent's current [`Leadership`], if any, and shows it every applied command first
//! (it pushes assignments down Work streams, ends express flights, wakes its scheduler).

use crate::leadership::Leadership;
use mozen_model::{Outcome, RequestKey};
use mozen_store::{ApplyObserver, Command, CompleteReply, Response, SharedState};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::oneshot;

/// What a waiter on a request is woken with: the request's value when the command that
/// finished it carried one.
pub type Woken = Option<Arc<[u8]>>;

pub struct Hub {
    pub state: SharedState,
    waiters: Mutex<HashMap<RequestKey, Vec<oneshot::Sender<Woken>>>>,
    /// The leadership this agent holds, if any (see [`crate::leadership::watch`]).
    leadership: RwLock<Option<Arc<Leadership>>>,
}

impl Hub {
    pub fn new(state: SharedState) -> Self {
        Hub {
            state,
            waiters: Mutex::new(HashMap::new()),
            leadership: RwLock::new(None),
        }
    }

    /// The leadership installed now, if any. Whether this agent still leads is the agent's
    /// question (see [`crate::agent::Agent::leadership`]).
    pub fn leadership(&self) -> Option<Arc<Leadership>> {
        self.leadership.read().expect("leadership").clone()
    }

    /// Installs (or, with None, removes) the leadership that applied commands are shown to.
    pub fn set_leadership(&self, l: Option<Arc<Leadership>>) {
        *self.leadership.write().expect("leadership") = l;
    }

    /// Registers interest in `key` finishing. Register before checking the state, then check,
    /// then await: a finish applied in between still wakes the receiver.
    pub fn wait_for(&self, key: RequestKey) -> oneshot::Receiver<Woken> {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .expect("waiters")
            .entry(key)
            .or_default()
            .push(tx);
        rx
    }

    /// Wakes the callers waiting on `key`, handing them its value when the applied command
    /// carries it (so that they need not read it back from the store).
    fn wake(&self, key: &RequestKey, value: Option<&[u8]>) {
        if let Some(ws) = self.waiters.lock().expect("waiters").remove(key) {
            let value: Woken = value.map(Arc::from);
            for w in ws {
                let _ = w.send(value.clone());
            }
        }
    }

    /// Wakes every caller waiting on a request.
    pub fn wake_all(&self) {
        let all: Vec<_> = self.waiters.lock().expect("waiters").drain().collect();
        for (_, ws) in all {
            for w in ws {
                let _ = w.send(None);
            }
        }
    }

    fn on(&self, cmd: &Command, resp: &Response) {
        match (cmd, resp) {
            (Command::Batch(cs), Response::Batch(rs)) => {
                for (c, r) in cs.iter().zip(rs) {
                    self.on(c, r);
                }
            }
            (Command::Complete { completions, .. }, Response::Completed(replies)) => {
                for (c, r) in completions.iter().zip(replies) {
                    if *r == CompleteReply::Finished {
                        let value = match &c.outcome {
                            Outcome::Value(v) => Some(v.as_slice()),
                            Outcome::Error(_) => None,
                        };
                        self.wake(&c.key, value);
                    }
                }
            }
            (Command::Ran { runs, .. }, Response::Ran(ran)) => {
                for (r, counted) in runs.iter().zip(ran) {
                    self.wake(&r.request.key, counted.then_some(r.value.as_slice()));
                }
            }
            (Command::Cancel { .. } | Command::CancelMany { .. }, Response::Cancelled(keys)) => {
                for k in keys {
                    self.wake(k, None);
                }
            }
            (
                Command::Requeue { .. }
                | Command::SetNodeState { .. }
                | Command::RemoveNode { .. }
                | Command::Forget { .. },
                _,
            ) => self.wake_all(),
            _ => {}
        }
    }
}

impl ApplyObserver for Hub {
    fn applied(&self, batch: &[(u64, &Command, &Response)]) {
        // The leader's part first (an express flight ends before its caller is woken).
        if let Some(l) = self.leadership() {
            for (_, c, r) in batch {
                l.on_applied(c, r);
            }
        }
        for (_, c, r) in batch {
            self.on(c, r);
        }
    }

    fn snapshot_installed(&self) {
        if let Some(l) = self.leadership() {
            l.on_snapshot();
        }
        self.wake_all();
    }
}
