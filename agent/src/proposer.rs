//! Batching proposer: many small facts ride in one Raft log entry.
//!
//! Every write of the agent (submits, assignments, completions, node changes) goes through one
//! channel. A task takes whatever is waiting (up to [`MAX_BATCH`] commands), wraps it in
//! `Command::Batch`, and writes it with `client_write`. While one entry is being written the
//! next gathers (group commit); up to [`IN_FLIGHT`] entries are in flight when each carries at
//! least [`PIPELINE_BATCH`] commands.

use mozen_model::NodeId;
use mozen_store::{Command, Raft, Response};
use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot};

/// Most commands in one log entry.
pub const MAX_BATCH: usize = 2048;
/// Log entries written concurrently.
pub const IN_FLIGHT: usize = 4;
/// Commands waiting before a further entry starts while another is still being written.
pub const PIPELINE_BATCH: usize = 256;

/// Why a proposal did not commit.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    #[error("MZ-NOT-LEADER: node {me} is not the leader")]
    NotLeader {
        me: NodeId,
        leader: Option<(NodeId, String)>,
    },
    #[error("MZ-RAFT: {0}")]
    Raft(String),
    #[error("MZ-SHUTTING-DOWN: the agent is stopping")]
    Closed,
}

type Pending = (Command, oneshot::Sender<Result<Response, ProposeError>>);

/// Handle to the proposer task.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::UnboundedSender<Pending>,
}

impl Proposer {
    /// Starts the proposer for `raft` (node `me`).
    pub fn start(raft: Raft, me: NodeId) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, me, rx));
        Proposer { tx }
    }

    /// Commits `cmd` and returns the state machine's response.
    pub async fn propose(&self, cmd: Command) -> Result<Response, ProposeError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send((cmd, tx)).map_err(|_| ProposeError::Closed)?;
        rx.await.unwrap_or(Err(ProposeError::Closed))
    }
}

async fn run(raft: Raft, me: NodeId, mut rx: mpsc::UnboundedReceiver<Pending>) {
    // Group commit: while an entry is being written, commands gather into the next one. A
    // second entry starts before the first commits only when enough is waiting to be worth
    // a log entry of its own, so a loaded cluster writes few large entries (each costs a
    // flush and a replication round on every voter) and an idle one answers at once.
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<()>();
    let mut in_flight = 0usize;
    let mut open = true;
    while open || in_flight > 0 {
        let mut batch: Vec<Pending> = Vec::new();
        loop {
            drain(&mut rx, &mut batch);
            let ready = !batch.is_empty()
                && (in_flight == 0 || (batch.len() >= PIPELINE_BATCH && in_flight < IN_FLIGHT));
            if ready || (!open && batch.is_empty() && in_flight == 0) {
                break;
            }
            tokio::select! {
                Some(()) = done_rx.recv(), if in_flight > 0 => in_flight -= 1,
                p = rx.recv(), if open => match p {
                    Some(p) => batch.push(p),
                    None => open = false,
                },
                else => break,
            }
        }
        if batch.is_empty() {
            if !open && in_flight == 0 {
                return;
            }
            continue;
        }
        in_flight += 1;
        let raft = raft.clone();
        let done = done_tx.clone();
        tokio::spawn(async move {
            write(&raft, me, batch).await;
            let _ = done.send(());
        });
    }
}

/// Moves whatever is waiting into `batch`, up to [`MAX_BATCH`].
fn drain(rx: &mut mpsc::UnboundedReceiver<Pending>, batch: &mut Vec<Pending>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(p) => batch.push(p),
            Err(_) => break,
        }
    }
}

async fn write(raft: &Raft, me: NodeId, mut batch: Vec<Pending>) {
    let single = batch.len() == 1;
    let cmd = if single {
        batch[0].0.clone()
    } else {
        Command::Batch(
            batch
                .iter_mut()
                .map(|(c, _)| std::mem::replace(c, Command::Batch(Vec::new())))
                .collect(),
        )
    };
    match raft.client_write(cmd).await {
        Ok(resp) => {
            if single {
                let (_, tx) = batch.pop().expect("one");
                let _ = tx.send(Ok(resp.data));
            } else if let Response::Batch(rs) = resp.data {
                for ((_, tx), r) in batch.into_iter().zip(rs) {
                    let _ = tx.send(Ok(r));
                }
            }
        }
        Err(e) => {
            let err = match e {
                RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                    ProposeError::NotLeader {
                        me,
                        leader: f.leader_id.zip(f.leader_node.map(|n| n.addr)),
                    }
                }
                other => ProposeError::Raft(other.to_string()),
            };
            for (_, tx) in batch {
                let _ = tx.send(Err(err.clone()));
            }
        }
    }
}
