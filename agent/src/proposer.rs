//! Batching proposer: many small facts ride in one Raft log entry.
//!
//! Every write of the agent (submits, assignments, completions, node changes) goes through one
//! channel. A task takes whatever is waiting (up to [`MAX_BATCH`] commands and about
//! [`MAX_ENTRY_BYTES`]), wraps it in `Command::Batch`, and writes it with `client_write`. While
//! one entry is being written the next gathers (group commit); up to [`IN_FLIGHT`] entries are
//! in flight when each carries at least [`PIPELINE_BATCH`] commands (or is full by size).

use mozen_model::{Code, NodeId};
use mozen_store::{Command, Raft, Response};
use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot};

/// Most commands in one log entry.
pub const MAX_BATCH: usize = 2048;
/// Log entries written concurrently.
pub const IN_FLIGHT: usize = 4;
/// Commands waiting before a further entry starts while another is still being written.
pub const PIPELINE_BATCH: usize = 256;
/// About the most bytes of arguments and results in one entry (a single larger command gets
/// an entry of its own). Followers must take an entry within a heartbeat interval, or the
/// leader sends it again and again; big payloads are cut into entries of this size.
pub const MAX_ENTRY_BYTES: usize = 1 << 20;

/// `items` in consecutive groups of at most [`MAX_ENTRY_BYTES`] by `size` (an item larger than
/// that alone), so that each group can make one log entry of bounded size.
pub fn chunk_by_bytes<T>(items: Vec<T>, size: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = Vec::new();
    let mut bytes = 0;
    for item in items {
        let n = size(&item);
        match out.last_mut() {
            Some(group) if bytes + n <= MAX_ENTRY_BYTES => {
                bytes += n;
                group.push(item);
            }
            _ => {
                bytes = n;
                out.push(vec![item]);
            }
        }
    }
    out
}

/// Why a proposal did not commit.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    #[error("{}: node {me} is not the leader", Code::NotLeader)]
    NotLeader {
        me: NodeId,
        leader: Option<(NodeId, String)>,
    },
    #[error("{code}: {0}", code = Code::Raft)]
    Raft(String),
    #[error("{}: the agent is stopping", Code::ShuttingDown)]
    Closed,
}

type Pending = (Command, oneshot::Sender<Result<Response, ProposeError>>);

/// Handle to the proposer task.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::UnboundedSender<Pending>,
}

impl Proposer {
    /// Starts the proposer for `raft` (node `me`); returns its task too, for the agent to
    /// watch (it ends once every `Proposer` is dropped).
    pub fn start(raft: Raft, me: NodeId) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(raft, me, rx));
        (Proposer { tx }, task)
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
    // A command that did not fit the previous entry: it opens the next.
    let mut held: Option<Pending> = None;
    while open || in_flight > 0 || held.is_some() {
        let mut batch = Batch::default();
        if let Some(p) = held.take() {
            batch.push(p);
        }
        loop {
            if held.is_none() {
                held = batch.drain(&mut rx);
            }
            // Full by count or size, or a command waits for the next entry.
            let full = batch.full() || held.is_some();
            let ready =
                !batch.items.is_empty() && (in_flight == 0 || (full && in_flight < IN_FLIGHT));
            if ready || (!open && batch.items.is_empty() && in_flight == 0) {
                break;
            }
            tokio::select! {
                Some(()) = done_rx.recv(), if in_flight > 0 => in_flight -= 1,
                p = rx.recv(), if open && held.is_none() => match p {
                    Some(p) => {
                        if batch.fits(&p.0) {
                            batch.push(p);
                        } else {
                            held = Some(p);
                        }
                    }
                    None => open = false,
                },
                else => break,
            }
        }
        let batch = batch.items;
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

/// The commands gathering for one log entry.
#[derive(Default)]
struct Batch {
    items: Vec<Pending>,
    bytes: usize,
}

impl Batch {
    fn push(&mut self, p: Pending) {
        self.bytes += p.0.approx_bytes();
        self.items.push(p);
    }

    /// Whether `cmd` may join: the first command always does.
    fn fits(&self, cmd: &Command) -> bool {
        self.items.is_empty()
            || (self.items.len() < MAX_BATCH && self.bytes + cmd.approx_bytes() <= MAX_ENTRY_BYTES)
    }

    /// Worth an entry of its own while others are in flight.
    fn full(&self) -> bool {
        self.items.len() >= PIPELINE_BATCH || self.bytes >= MAX_ENTRY_BYTES / 2
    }

    /// Moves whatever is waiting in, while it fits; returns the first command that did not.
    fn drain(&mut self, rx: &mut mpsc::UnboundedReceiver<Pending>) -> Option<Pending> {
        while let Ok(p) = rx.try_recv() {
            if !self.fits(&p.0) {
                return Some(p);
            }
            self.push(p);
        }
        None
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_stay_within_the_entry_bound_and_keep_the_order() {
        let sizes = vec![600 << 10, 300 << 10, 200 << 10, 3 << 20, 10, 20];
        let chunks = chunk_by_bytes(sizes.clone(), |n| *n);
        assert_eq!(
            chunks,
            vec![
                vec![600 << 10, 300 << 10],
                vec![200 << 10],
                vec![3 << 20],
                vec![10, 20]
            ]
        );
        assert_eq!(chunks.concat(), sizes);
        assert!(chunk_by_bytes(Vec::<usize>::new(), |n| *n).is_empty());
    }
}
