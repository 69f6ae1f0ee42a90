//! The recorded history of a chaos run: what each client invoked and what it was told, and
//! when each fault started and ended. Kept in memory for the checker and written as JSON lines
//! (one entry per line, in the order recorded) for a human to read afterwards.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

/// One line of the history. `at_ms` counts from the start of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Entry {
    /// A client sends a call.
    Invoke {
        op: u64,
        client: usize,
        at_ms: u64,
        function: String,
        args: Value,
        key: String,
    },
    /// The call was acknowledged done with `value`.
    Ok {
        op: u64,
        client: usize,
        at_ms: u64,
        value: Value,
    },
    /// The call definitely ended without a value: the request failed, or the cluster refused
    /// it.
    Fail {
        op: u64,
        client: usize,
        at_ms: u64,
        code: String,
        message: String,
    },
    /// The client does not know what became of the call (timeout, no agent reachable).
    Info {
        op: u64,
        client: usize,
        at_ms: u64,
        message: String,
    },
    /// A fault begins (`start: true`) or is undone.
    Fault {
        at_ms: u64,
        fault: String,
        targets: Vec<u64>,
        start: bool,
    },
}

/// A history being recorded; shared by the clients and the nemesis.
pub struct History {
    start: Instant,
    entries: Mutex<Vec<Entry>>,
    file: Option<Mutex<std::io::BufWriter<std::fs::File>>>,
}

impl History {
    /// A history that also goes to `path` (when given), one JSON entry per line.
    pub fn new(path: Option<&Path>) -> std::io::Result<History> {
        let file = match path {
            Some(p) => Some(Mutex::new(std::io::BufWriter::new(std::fs::File::create(
                p,
            )?))),
            None => None,
        };
        Ok(History {
            start: Instant::now(),
            entries: Mutex::new(Vec::new()),
            file,
        })
    }

    /// Milliseconds since the run started.
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub fn record(&self, e: Entry) {
        if let Some(f) = &self.file {
            let mut f = f.lock().expect("history file");
            // A history line that cannot be written is lost for the reader, not for the check.
            let _ = serde_json::to_writer(&mut *f, &e);
            let _ = f.write_all(b"\n");
        }
        self.entries.lock().expect("history").push(e);
    }

    pub fn fault(&self, fault: &str, targets: &[u64], start: bool) {
        self.record(Entry::Fault {
            at_ms: self.now_ms(),
            fault: fault.to_string(),
            targets: targets.to_vec(),
            start,
        });
    }

    /// Everything recorded so far, in order; flushes the file.
    pub fn entries(&self) -> Vec<Entry> {
        if let Some(f) = &self.file {
            let _ = f.lock().expect("history file").flush();
        }
        self.entries.lock().expect("history").clone()
    }
}
