//! Console state and its transition function.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use mozen_proto as pb;
use std::collections::{BTreeMap, VecDeque};

/// How many tasks/s samples each node's sparkline keeps.
pub const HISTORY: usize = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Nodes,
    Queues,
    Requests,
    Raft,
    Events,
}

impl View {
    pub const ALL: [View; 5] = [
        View::Nodes,
        View::Queues,
        View::Requests,
        View::Raft,
        View::Events,
    ];

    pub fn name(self) -> &'static str {
        match self {
            View::Nodes => "nodes",
            View::Queues => "queues",
            View::Requests => "requests",
            View::Raft => "raft",
            View::Events => "events",
        }
    }
}

/// What the operator is typing, if anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// `:` view switch.
    Command(String),
    /// `/` request filter.
    Filter(String),
    /// `a`: ID@HOST:PORT of a node to add.
    AddNode(String),
    /// y/n for a destructive operation.
    Confirm(Op),
}

/// An operation the feed task performs against the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    NodeOp { id: u64, op: &'static str },
    AddNode { id: u64, addr: String },
    Cancel { key: String },
    Retry { function: String, args_json: String },
    Tree { key: String },
}

impl Op {
    pub fn describe(&self) -> String {
        match self {
            Op::NodeOp { id, op } => format!("{op} node {id}"),
            Op::AddNode { id, addr } => format!("add node {id} at {addr}"),
            Op::Cancel { key } => format!("cancel request {}", &key[..12.min(key.len())]),
            Op::Retry {
                function,
                args_json,
            } => format!("retry {function}({args_json})"),
            Op::Tree { key } => format!("tree of {}", &key[..12.min(key.len())]),
        }
    }
}

/// Connection to the cluster as the feed sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conn {
    Connecting(String),
    Connected(String),
    Lost(String),
}

#[derive(Debug, Clone)]
pub enum Action {
    Key(KeyEvent),
    Update(Box<pb::ClusterUpdate>),
    Conn(Conn),
    /// Outcome of an operation: Ok(message) or Err(error with its code).
    Done(Result<String, String>),
    Tree(Vec<pb::TreeEntry>),
}

pub struct App {
    pub view: View,
    pub mode: Mode,
    pub readonly: bool,
    pub help: bool,
    pub quit: bool,
    pub data: pb::ClusterUpdate,
    pub conn: Conn,
    pub status: String,
    pub selected: usize,
    pub filter: String,
    pub tree: Option<Vec<pb::TreeEntry>>,
    pub rates: BTreeMap<u64, VecDeque<u64>>,
}

impl App {
    pub fn new(readonly: bool) -> Self {
        App {
            view: View::Nodes,
            mode: Mode::Normal,
            readonly,
            help: false,
            quit: false,
            data: pb::ClusterUpdate::default(),
            conn: Conn::Connecting(String::new()),
            status: "press ? for help".into(),
            selected: 0,
            filter: String::new(),
            tree: None,
            rates: BTreeMap::new(),
        }
    }

    /// Requests shown in the Requests view (after the filter).
    pub fn requests(&self) -> Vec<&pb::RequestInfo> {
        let f = self.filter.to_lowercase();
        self.data
            .requests
            .iter()
            .filter(|r| {
                f.is_empty()
                    || r.function.to_lowercase().contains(&f)
                    || r.state.contains(&f)
                    || r.key.starts_with(&f)
                    || r.args_json.to_lowercase().contains(&f)
            })
            .collect()
    }

    fn rows(&self) -> usize {
        match self.view {
            View::Nodes => self.data.nodes.len(),
            View::Requests => self
                .tree
                .as_ref()
                .map_or_else(|| self.requests().len(), Vec::len),
            View::Queues => self.data.queue.as_ref().map_or(0, |q| q.groups.len()),
            View::Events => self.data.events.len(),
            View::Raft => 0,
        }
    }

    fn selected_node(&self) -> Option<u64> {
        (self.view == View::Nodes)
            .then(|| self.data.nodes.get(self.selected).map(|n| n.id))
            .flatten()
    }

    fn selected_request(&self) -> Option<pb::RequestInfo> {
        if self.view != View::Requests {
            return None;
        }
        match &self.tree {
            Some(t) => t.get(self.selected).and_then(|e| e.request.clone()),
            None => self.requests().get(self.selected).map(|r| (*r).clone()),
        }
    }

    /// Applies one action; returns an operation for the feed to perform, if any.
    pub fn update(&mut self, action: Action) -> Option<Op> {
        match action {
            Action::Update(u) => {
                for n in &u.nodes {
                    let h = self.rates.entry(n.id).or_default();
                    h.push_back(n.tasks_per_sec.round() as u64);
                    while h.len() > HISTORY {
                        h.pop_front();
                    }
                }
                self.data = *u;
                self.selected = self.selected.min(self.rows().saturating_sub(1));
                None
            }
            Action::Conn(c) => {
                self.conn = c;
                None
            }
            Action::Done(r) => {
                self.status = match r {
                    Ok(m) => m,
                    Err(e) => format!("error: {e}"),
                };
                None
            }
            Action::Tree(t) => {
                self.tree = Some(t);
                self.selected = 0;
                None
            }
            Action::Key(k) => self.key(k),
        }
    }

    fn key(&mut self, k: KeyEvent) -> Option<Op> {
        if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
            self.quit = true;
            return None;
        }
        match std::mem::replace(&mut self.mode, Mode::Normal) {
            Mode::Normal => self.normal_key(k),
            Mode::Command(mut s) => {
                match k.code {
                    KeyCode::Enter => match View::ALL
                        .iter()
                        .find(|v| v.name().starts_with(s.trim()) && !s.trim().is_empty())
                    {
                        Some(v) => self.switch(*v),
                        None if s.trim() == "q" || s.trim() == "quit" => self.quit = true,
                        None => {
                            self.status = format!(
                                "error: no view named '{s}' (nodes, queues, requests, raft, events)"
                            )
                        }
                    },
                    KeyCode::Esc => {}
                    KeyCode::Backspace => {
                        s.pop();
                        self.mode = Mode::Command(s);
                    }
                    KeyCode::Char(c) => {
                        s.push(c);
                        self.mode = Mode::Command(s);
                    }
                    _ => self.mode = Mode::Command(s),
                }
                None
            }
            Mode::Filter(mut s) => {
                match k.code {
                    KeyCode::Enter => {}
                    KeyCode::Esc => self.filter.clear(),
                    KeyCode::Backspace => {
                        s.pop();
                        self.filter = s.clone();
                        self.mode = Mode::Filter(s);
                    }
                    KeyCode::Char(c) => {
                        s.push(c);
                        self.filter = s.clone();
                        self.mode = Mode::Filter(s);
                    }
                    _ => self.mode = Mode::Filter(s),
                }
                self.selected = 0;
                None
            }
            Mode::AddNode(mut s) => match k.code {
                KeyCode::Enter => match parse_add(&s) {
                    Ok((id, addr)) => Some(Op::AddNode { id, addr }),
                    Err(e) => {
                        self.status = format!("error: {e}");
                        None
                    }
                },
                KeyCode::Esc => None,
                KeyCode::Backspace => {
                    s.pop();
                    self.mode = Mode::AddNode(s);
                    None
                }
                KeyCode::Char(c) => {
                    s.push(c);
                    self.mode = Mode::AddNode(s);
                    None
                }
                _ => {
                    self.mode = Mode::AddNode(s);
                    None
                }
            },
            Mode::Confirm(op) => match k.code {
                KeyCode::Char('y') | KeyCode::Char('Y') => {
                    self.status = format!("{}...", op.describe());
                    Some(op)
                }
                _ => {
                    self.status = format!("{} not done", op.describe());
                    None
                }
            },
        }
    }

    fn switch(&mut self, v: View) {
        self.view = v;
        self.selected = 0;
        self.tree = None;
    }

    fn confirm(&mut self, op: Op) -> Option<Op> {
        if self.readonly {
            self.status = "read-only console: actions are disabled".into();
            return None;
        }
        self.mode = Mode::Confirm(op);
        None
    }

    fn act(&mut self, op: Op) -> Option<Op> {
        if self.readonly {
            self.status = "read-only console: actions are disabled".into();
            return None;
        }
        self.status = format!("{}...", op.describe());
        Some(op)
    }

    fn normal_key(&mut self, k: KeyEvent) -> Option<Op> {
        if self.help {
            self.help = false;
            return None;
        }
        match k.code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Char('?') => self.help = true,
            KeyCode::Char(':') => self.mode = Mode::Command(String::new()),
            KeyCode::Char(c @ '1'..='5') => self.switch(View::ALL[(c as u8 - b'1') as usize]),
            KeyCode::Char('j') | KeyCode::Down => {
                self.selected = (self.selected + 1).min(self.rows().saturating_sub(1))
            }
            KeyCode::Char('k') | KeyCode::Up => self.selected = self.selected.saturating_sub(1),
            KeyCode::Char('g') | KeyCode::Home => self.selected = 0,
            KeyCode::Char('G') | KeyCode::End => self.selected = self.rows().saturating_sub(1),
            KeyCode::Esc => {
                self.tree = None;
                self.selected = 0;
            }
            KeyCode::Char('/') if self.view == View::Requests => {
                self.mode = Mode::Filter(self.filter.clone())
            }
            KeyCode::Enter if self.view == View::Requests && self.tree.is_none() => {
                if let Some(r) = self.selected_request() {
                    return Some(Op::Tree { key: r.key });
                }
            }
            KeyCode::Char('d') => {
                if let Some(id) = self.selected_node() {
                    return self.confirm(Op::NodeOp { id, op: "drain" });
                }
            }
            KeyCode::Char('u') => {
                if let Some(id) = self.selected_node() {
                    return self.act(Op::NodeOp { id, op: "undrain" });
                }
            }
            KeyCode::Char('p') => {
                if let Some(id) = self.selected_node() {
                    return self.act(Op::NodeOp { id, op: "promote" });
                }
            }
            KeyCode::Char('D') => {
                if let Some(id) = self.selected_node() {
                    return self.confirm(Op::NodeOp { id, op: "demote" });
                }
            }
            KeyCode::Char('x') => {
                if let Some(id) = self.selected_node() {
                    return self.confirm(Op::NodeOp { id, op: "remove" });
                }
                if let Some(r) = self.selected_request() {
                    return self.confirm(Op::Cancel { key: r.key });
                }
            }
            KeyCode::Char('a') if self.view == View::Nodes => {
                if self.readonly {
                    self.status = "read-only console: actions are disabled".into();
                } else {
                    self.mode = Mode::AddNode(String::new());
                }
            }
            KeyCode::Char('r') => {
                if let Some(r) = self
                    .selected_request()
                    .filter(|r| r.state == "failed" || r.state == "cancelled")
                {
                    return self.act(Op::Retry {
                        function: r.function,
                        args_json: r.args_json,
                    });
                }
            }
            _ => {}
        }
        None
    }
}

fn parse_add(s: &str) -> Result<(u64, String), String> {
    let (id, addr) = s
        .trim()
        .split_once('@')
        .ok_or_else(|| format!("'{s}': expected ID@HOST:PORT"))?;
    let id: u64 = id
        .parse()
        .ok()
        .filter(|i| *i > 0)
        .ok_or_else(|| format!("'{s}': id must be a positive integer"))?;
    let port_ok = addr
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .is_some_and(|p| p > 0);
    if !port_ok {
        return Err(format!("'{s}': port must be 1-65535"));
    }
    Ok((id, addr.to_string()))
}

/// Every key, for the help screen.
pub const KEYS: &[(&str, &str)] = &[
    (
        "1-5 or :name",
        "switch view: nodes, queues, requests, raft, events",
    ),
    ("j/k, arrows", "move the selection"),
    ("g/G", "first / last row"),
    ("/", "filter requests (Requests view)"),
    ("Enter", "open the request tree (Requests view)"),
    ("Esc", "close the tree, clear the filter"),
    ("d / u", "drain (asks) / undrain the selected node"),
    ("p / D", "promote / demote (asks) the selected node"),
    ("x", "remove the node / cancel the request (asks)"),
    ("a", "add a node: type ID@HOST:PORT"),
    ("r", "retry a failed request"),
    ("?", "this help"),
    ("q", "quit"),
];
