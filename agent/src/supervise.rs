//! What the agent cannot run without: the Raft core and its essential tasks, watched.
//!
//! A member whose Raft core has stopped still holds a state machine and a gRPC server, and
//! would go on answering reads from a state that no longer moves (issue 28). So the agent
//! watches the core ([`watch_raft_core`]) and the tasks it cannot do without
//! ([`Supervisor::watch`]); when one of them dies while the agent is not stopping, the
//! [`Supervisor`] records why, and `node::run` stops serving at once and returns
//! [`Death`], which the binary turns into exit code 4 (see `builder`).
//!
//! Which tasks are essential: the gRPC server, the proposer and the failover watch must run
//! as long as the agent ([`Lives::AsLongAsTheAgent`]): their ending early is a death. The
//! leadership watch, the worker loop and the leader's session loops (scheduler, liveness,
//! autoscaler, express) end by design (the core stopped, the node was removed, leadership
//! ended), so only a panic in them is a death ([`Lives::MayEnd`]). Request handlers, user
//! functions, the metrics endpoint and the fault-file watch are not essential: a panic
//! there is logged by [`install_panic_hook`] and the agent goes on (a panicking function
//! answers its caller with an error, see `functions`).

use mozen_model::Code;
use mozen_store::Raft;
use openraft::error::Fatal;
use std::any::Any;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::error;

/// Why the agent stopped without being asked to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Death {
    /// The Raft core stopped or panicked; `cause` says how.
    RaftCore { cause: String },
    /// An essential task panicked or ended.
    Task { name: &'static str, how: String },
    /// A read of the data dir failed its checksum while the agent ran: the member must not go
    /// on voting and serving on it.
    Damaged { detail: String },
}

impl fmt::Display for Death {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Death::RaftCore { cause } => write!(
                f,
                "{}: the Raft core stopped: {cause}. This member no longer follows \
                 the cluster, so the agent stops rather than serve a state that no longer \
                 moves. If the cause names missing or conflicting committed entries, this \
                 data dir or the leader's lost committed entries: keep both data dirs and see \
                 docs/operations.md (\"A member that stops with exit code 4\"); otherwise \
                 restart the agent, and report the log if it happens again",
                Code::RaftCore
            ),
            Death::Damaged { detail } => write!(
                f,
                "{detail}. The agent stops rather than go on voting and serving on a damaged \
                 data dir"
            ),
            Death::Task { name, how } => write!(
                f,
                "{}: the agent's {name} {how}. The agent cannot work without it and \
                 stops; its data dir is intact. Restart the agent, and report this log (it is \
                 a bug)",
                Code::TaskDied
            ),
        }
    }
}

/// How long a watched task is meant to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lives {
    /// Until the agent stops: ending before that is a death.
    AsLongAsTheAgent,
    /// It may end by design; only a panic is a death.
    MayEnd,
}

/// Records the first death and wakes `node::run`.
#[derive(Debug)]
pub struct Supervisor {
    /// Fires once the agent is stopping on purpose (a child of the agent's shutdown token, so
    /// it fires with the signal itself): what ends after that is no death.
    stopping: CancellationToken,
    /// Fires on the first death.
    died: CancellationToken,
    /// The first death; later ones are only logged.
    first: Mutex<Option<Death>>,
    /// Set before the agent stops its own Raft core on purpose (a quarantine): that stop is
    /// no death.
    raft_stop_expected: std::sync::atomic::AtomicBool,
}

impl Supervisor {
    /// A supervisor for an agent that stops when `shutdown` fires.
    pub fn new(shutdown: &CancellationToken) -> Arc<Self> {
        Arc::new(Supervisor {
            stopping: shutdown.child_token(),
            died: CancellationToken::new(),
            first: Mutex::new(None),
            raft_stop_expected: Default::default(),
        })
    }

    /// From now on, tasks and the core ending is the expected shutdown.
    pub fn stopping(&self) {
        self.stopping.cancel();
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.is_cancelled()
    }

    /// Says the Raft core is about to be stopped on purpose (see [`watch_raft_core`]).
    pub fn expect_raft_stop(&self) {
        self.raft_stop_expected
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Records a death (ignored once the agent is stopping on purpose).
    pub fn report(&self, death: Death) {
        if self.is_stopping() {
            return;
        }
        error!("{death}");
        let mut first = self.first.lock().expect("supervisor");
        if first.is_none() {
            *first = Some(death);
        }
        self.died.cancel();
    }

    /// The first death, if there was one.
    pub fn death(&self) -> Option<Death> {
        self.first.lock().expect("supervisor").clone()
    }

    /// Waits for the first death.
    pub async fn died(&self) -> Death {
        self.died.cancelled().await;
        self.first
            .lock()
            .expect("supervisor")
            .clone()
            .expect("a death is recorded before `died` fires")
    }

    /// Watches a task already spawned: a panic is a death, and so is its end when it `lives`
    /// as long as the agent. Returns the watcher, which is not tracked: it outlives what it
    /// watches.
    pub fn watch(
        self: &Arc<Self>,
        name: &'static str,
        lives: Lives,
        task: JoinHandle<()>,
    ) -> JoinHandle<()> {
        let sup = self.clone();
        tokio::spawn(async move {
            match task.await {
                Ok(()) if lives == Lives::MayEnd => {}
                Ok(()) => sup.report(Death::Task {
                    name,
                    how: "ended while the agent was running".into(),
                }),
                Err(e) if e.is_panic() => sup.report(Death::Task {
                    name,
                    how: format!(
                        "panicked: {} (where: see the panic logged above)",
                        panic_message(&*e.into_panic())
                    ),
                }),
                // Cancelled: only the runtime shutting down does that.
                Err(_) => {}
            }
        })
    }

    /// Spawns `fut` on `tasks` and watches it; returns the watcher.
    pub fn spawn<F>(
        self: &Arc<Self>,
        tasks: &TaskTracker,
        name: &'static str,
        lives: Lives,
        fut: F,
    ) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.watch(name, lives, tasks.spawn(fut))
    }
}

/// Waits until the Raft core stops, and reports it unless the agent is stopping.
///
/// The core reports a storage error or a clean stop in its metrics before it ends; a core that
/// panicked ends without a word, and its metrics channel closes.
pub async fn watch_raft_core(raft: Raft, sup: Arc<Supervisor>) {
    let mut metrics = raft.metrics();
    let reported = loop {
        if let Err(fatal) = metrics.borrow_and_update().running_state.clone() {
            break Some(fatal);
        }
        if metrics.changed().await.is_err() {
            break None;
        }
    };
    if sup.is_stopping()
        || sup
            .raft_stop_expected
            .load(std::sync::atomic::Ordering::SeqCst)
    {
        return;
    }
    // A core that returns reports why first: ending without a report is a panic.
    let fatal = reported.unwrap_or(Fatal::Panicked);
    let cause = match fatal {
        Fatal::StorageError(e) => format!("storage error: {e}"),
        Fatal::Panicked => "it panicked (the panic is logged above)".to_string(),
        Fatal::Stopped => "it stopped by itself".to_string(),
    };
    sup.report(Death::RaftCore { cause });
}

/// The text a panic carries (`panic!` with a literal or a formatted message).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// Logs every panic through `tracing` (thread, location, message, and a backtrace when
/// `RUST_BACKTRACE` asks for one), so it reaches the agent's log with the rest. Whether the
/// panic ends the agent is decided by what panicked (see the module doc), not here.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("unnamed");
        let location = info
            .location()
            .map_or_else(|| "unknown".to_string(), |l| l.to_string());
        let message = panic_message(info.payload());
        let backtrace = std::backtrace::Backtrace::capture();
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            error!(thread, %location, %backtrace, "panic: {message}");
        } else {
            error!(thread, %location, "panic: {message}");
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_is_a_death_naming_it_and_the_message() {
        let sup = Supervisor::new(&CancellationToken::new());
        let tasks = TaskTracker::new();
        let watcher = sup.spawn(&tasks, "scheduler", Lives::MayEnd, async {
            panic!("boom at step 3");
        });
        watcher.await.expect("the watcher");
        match sup.death() {
            Some(Death::Task { name, how }) => {
                assert_eq!(name, "scheduler");
                assert!(how.contains("panicked: boom at step 3"), "{how}");
            }
            other => panic!("expected the scheduler's death, got {other:?}"),
        }
        assert!(sup.died.is_cancelled(), "run is woken");
    }

    #[tokio::test]
    async fn an_essential_task_ending_early_is_a_death_and_one_that_may_end_is_not() {
        let sup = Supervisor::new(&CancellationToken::new());
        let tasks = TaskTracker::new();
        let worker = sup.spawn(&tasks, "worker loop", Lives::MayEnd, async {});
        worker.await.expect("the watcher");
        assert_eq!(sup.death(), None, "the worker loop may end");
        let server = sup.spawn(&tasks, "gRPC server", Lives::AsLongAsTheAgent, async {});
        server.await.expect("the watcher");
        match sup.death() {
            Some(Death::Task { name, how }) => {
                assert_eq!(name, "gRPC server");
                assert!(how.contains("ended while the agent was running"), "{how}");
            }
            other => panic!("expected the server's death, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn nothing_that_ends_once_the_agent_is_told_to_stop_is_a_death() {
        let shutdown = CancellationToken::new();
        let sup = Supervisor::new(&shutdown);
        // The signal alone, before `run` calls `stopping`: tasks watching the same token
        // may end first.
        shutdown.cancel();
        let tasks = TaskTracker::new();
        let server = sup.spawn(&tasks, "gRPC server", Lives::AsLongAsTheAgent, async {});
        let proposer = sup.spawn(&tasks, "proposer", Lives::AsLongAsTheAgent, async {
            panic!("late");
        });
        server.await.expect("the watcher");
        proposer.await.expect("the watcher");
        assert_eq!(sup.death(), None);
        assert!(!sup.died.is_cancelled());
    }

    #[test]
    fn death_messages_carry_their_codes() {
        let core = Death::RaftCore {
            cause: "storage error: x".into(),
        };
        assert!(
            core.to_string()
                .starts_with("MZ-RAFT-CORE: the Raft core stopped: storage error: x.")
        );
        let task = Death::Task {
            name: "gRPC server",
            how: "ended while the agent was running".into(),
        };
        assert!(
            task.to_string()
                .starts_with("MZ-TASK-DIED: the agent's gRPC server ended")
        );
    }
}
