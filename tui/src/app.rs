//! Console state and its one transition function, [`App::update`].
//!
//! Everything the operator does and everything the cluster reports arrives as an [`Action`];
//! `update` changes the state synchronously and may return one [`Effect`] for the client task
//! to perform (an RPC). No I/O, no clock, no awaiting here, so key sequences can be replayed in
//! unit tests.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use mozen_model::NodeId;
use mozen_proto as pb;
use std::cell::Cell;
use std::collections::{HashMap, VecDeque};

/// How many samples each sparkline keeps: one per update, about 30 s at the agent's 500 ms
/// cadence.
pub const HISTORY: usize = 60;

/// The console's screens, in tab order (number keys 1-5).
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

    /// The name typed after `:` and shown on the tab.
    pub fn name(self) -> &'static str {
        match self {
            View::Nodes => "nodes",
            View::Queues => "queues",
            View::Requests => "requests",
            View::Raft => "raft",
            View::Events => "events",
        }
    }

    pub fn index(self) -> usize {
        View::ALL.iter().position(|v| *v == self).unwrap_or(0)
    }

    /// Finds a view by a (prefix of its) name, as k9s does: `:req`, `:no`.
    pub fn by_name(s: &str) -> Option<View> {
        let s = s.trim().to_ascii_lowercase();
        if s.is_empty() {
            return None;
        }
        // Singular forms and a couple of aliases also work.
        let s = match s.as_str() {
            "node" | "no" => "nodes",
            "queue" => "queues",
            "request" | "req" | "reqs" => "requests",
            "event" | "ev" => "events",
            other => other,
        };
        View::ALL.into_iter().find(|v| v.name().starts_with(s))
    }
}

/// Node operations of the `NodeOp` RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeOp {
    Drain,
    Undrain,
    Remove,
    Promote,
    Demote,
}

impl NodeOp {
    /// The wire name the agent expects.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeOp::Drain => "drain",
            NodeOp::Undrain => "undrain",
            NodeOp::Remove => "remove",
            NodeOp::Promote => "promote",
            NodeOp::Demote => "demote",
        }
    }
}

/// An RPC the client task performs on the operator's behalf. Its outcome comes back as
/// [`Action::Done`] (or [`Action::Tree`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    NodeOp {
        id: NodeId,
        op: NodeOp,
    },
    AddNode {
        id: NodeId,
        addr: String,
    },
    Cancel {
        key: String,
        /// `function(args)`, for messages only.
        label: String,
    },
    /// A fresh `Call` of a failed request's function and arguments with `no_cache`.
    Retry {
        function: String,
        args_json: String,
    },
    Tree {
        key: String,
    },
}

impl Effect {
    /// What the effect does, in words, for the prompt and the status line.
    pub fn describe(&self) -> String {
        match self {
            Effect::NodeOp { id, op } => format!("{} node {id}", op.as_str()),
            Effect::AddNode { id, addr } => format!("add node {id} at {addr}"),
            Effect::Cancel { key, label } => format!("cancel {label} [{}]", short_key(key)),
            Effect::Retry {
                function,
                args_json,
            } => format!("retry {}", call_label(function, args_json, 40)),
            Effect::Tree { key } => format!("load the tree of {}", short_key(key)),
        }
    }

    /// Destructive effects are confirmed with `y` before they run.
    pub fn destructive(&self) -> bool {
        matches!(
            self,
            Effect::NodeOp {
                op: NodeOp::Drain | NodeOp::Remove | NodeOp::Demote,
                ..
            } | Effect::Cancel { .. }
        )
    }
}

/// The connection as the client task sees it; always shown in the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conn {
    Connecting {
        addr: String,
    },
    /// Streaming updates from the leader at `addr`.
    Connected {
        addr: String,
    },
    /// No stream; the client retries by itself after `retry_in_ms`.
    Lost {
        error: String,
        retry_in_ms: u64,
    },
}

/// Everything that can change the console's state.
#[derive(Debug, Clone)]
pub enum Action {
    Key(KeyEvent),
    /// A full picture from the `Watch` stream.
    Update(Box<pb::ClusterUpdate>),
    Conn(Conn),
    /// Outcome of an effect: `Ok(message)` or `Err(message starting with its MZ- code)`.
    Done(Result<String, String>),
    /// Outcome of [`Effect::Tree`] for the request `key`.
    Tree {
        key: String,
        result: Result<Vec<pb::TreeEntry>, String>,
    },
}

/// What the keyboard is doing right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Normal,
    Help,
    /// `:` typed; the text after it.
    Command(String),
    /// `/` typed in the Requests view; the filter applies as it is typed.
    Filter(String),
    /// `a` typed in the Nodes view: ID@HOST:PORT being typed.
    AddNode(String),
    /// A destructive effect waiting for `y`.
    Confirm(Effect),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusKind {
    Info,
    Pending,
    Ok,
    Error,
}

/// The status line: the outcome of the last thing the operator did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub kind: StatusKind,
    pub text: String,
}

impl Status {
    fn new(kind: StatusKind, text: impl Into<String>) -> Self {
        Status {
            kind,
            text: text.into(),
        }
    }
}

/// Selection and scroll position of one list.
///
/// `offset` and `page` are written while drawing (drawing takes `&App`): they remember where the
/// last frame scrolled to, so the selection moves inside the window before the window moves.
#[derive(Debug, Default)]
pub struct ListState {
    pub selected: usize,
    offset: Cell<usize>,
    page: Cell<usize>,
}

impl ListState {
    /// The first row to draw for `len` rows in a window of `height`, keeping the selection in view.
    pub fn scroll(&self, len: usize, height: usize) -> usize {
        let h = height.max(1);
        self.page.set(h);
        let sel = self.selected.min(len.saturating_sub(1));
        let mut off = self.offset.get().min(len.saturating_sub(h));
        if sel < off {
            off = sel;
        } else if sel >= off + h {
            off = sel + 1 - h;
        }
        self.offset.set(off);
        off
    }

    fn reset(&mut self) {
        self.selected = 0;
        self.offset.set(0);
    }

    fn clamp(&mut self, len: usize) {
        self.selected = self.selected.min(len.saturating_sub(1));
    }

    fn page(&self) -> usize {
        self.page.get().max(1)
    }
}

/// One line of an opened request tree, with its drawing prefix computed once.
#[derive(Debug, Clone)]
pub struct TreeRow {
    /// `│  ├─ ` style guides for this entry's depth.
    pub prefix: String,
    pub entry: pb::TreeEntry,
}

/// The request tree opened with Enter in the Requests view.
#[derive(Debug)]
pub struct TreeView {
    pub key: String,
    pub label: String,
    /// `None` while the `Tree` RPC is under way.
    pub rows: Option<Vec<TreeRow>>,
    pub list: ListState,
}

/// The console's whole state.
#[derive(Debug)]
pub struct App {
    pub view: View,
    pub mode: Mode,
    /// `--readonly`: action keys do nothing and are not shown.
    pub readonly: bool,
    /// Set by `q`; the run loop exits.
    pub quit: bool,
    pub conn: Conn,
    pub status: Status,
    /// The last picture from the cluster.
    pub data: pb::ClusterUpdate,
    /// Updates received so far; 0 means nothing to show yet.
    pub updates: u64,
    /// The Requests view's filter (applied as typed).
    pub filter: String,
    /// Indices into `data.requests` that pass `filter`, kept in step by `update` so drawing
    /// never scans all requests.
    visible: Vec<usize>,
    pub tree: Option<TreeView>,
    pub nodes: ListState,
    pub queues: ListState,
    pub requests: ListState,
    pub events: ListState,
    /// tasks/s per node, one sample per update, oldest first.
    pub rates: HashMap<NodeId, VecDeque<f64>>,
    /// Cluster throughput, one sample per update, oldest first.
    pub throughput: VecDeque<f64>,
    /// Executions per second per function, from successive `FunctionStats`.
    pub function_rates: HashMap<String, f64>,
    /// `now_ms` and executions per function at the previous update.
    last_functions: Option<(u64, HashMap<String, u64>)>,
}

const READONLY: &str = "read-only console (--readonly): actions are disabled";

impl App {
    pub fn new(readonly: bool) -> Self {
        App {
            view: View::Nodes,
            mode: Mode::Normal,
            readonly,
            quit: false,
            conn: Conn::Connecting {
                addr: String::new(),
            },
            status: Status::new(StatusKind::Info, "press ? for help, q to quit"),
            data: pb::ClusterUpdate::default(),
            updates: 0,
            filter: String::new(),
            visible: Vec::new(),
            tree: None,
            nodes: ListState::default(),
            queues: ListState::default(),
            requests: ListState::default(),
            events: ListState::default(),
            rates: HashMap::new(),
            throughput: VecDeque::new(),
            function_rates: HashMap::new(),
            last_functions: None,
        }
    }

    /// Requests that pass the filter, in the order the cluster sent them (most recent first).
    pub fn visible_requests(&self) -> impl ExactSizeIterator<Item = &pb::RequestInfo> + '_ {
        self.visible.iter().map(|&i| &self.data.requests[i])
    }

    /// The `i`-th request that passes the filter.
    pub fn visible_request(&self, i: usize) -> Option<&pb::RequestInfo> {
        self.visible.get(i).map(|&i| &self.data.requests[i])
    }

    pub fn visible_len(&self) -> usize {
        self.visible.len()
    }

    /// The node the Nodes view's selection is on.
    pub fn selected_node(&self) -> Option<&pb::Node> {
        self.data.nodes.get(self.nodes.selected)
    }

    /// The request under the selection in the Requests view (list or tree).
    pub fn selected_request(&self) -> Option<&pb::RequestInfo> {
        match &self.tree {
            Some(t) => t
                .rows
                .as_ref()
                .and_then(|r| r.get(t.list.selected))
                .and_then(|r| r.entry.request.as_ref()),
            None => self.visible_request(self.requests.selected),
        }
    }

    /// Applies one action. Returns the effect to perform, if any.
    pub fn update(&mut self, action: Action) -> Option<Effect> {
        match action {
            Action::Key(k) => self.key(k),
            Action::Update(u) => {
                self.on_update(*u);
                None
            }
            Action::Conn(c) => {
                self.conn = c;
                None
            }
            Action::Done(r) => {
                self.status = match r {
                    Ok(m) => Status::new(StatusKind::Ok, m),
                    Err(e) => Status::new(StatusKind::Error, e),
                };
                None
            }
            Action::Tree { key, result } => {
                let Some(tree) = self.tree.as_mut().filter(|t| t.key == key) else {
                    return None; // closed (or another opened) meanwhile
                };
                match result {
                    Ok(entries) => {
                        self.status = Status::new(
                            StatusKind::Ok,
                            format!("tree of {}: {} requests", tree.label, entries.len()),
                        );
                        tree.rows = Some(tree_rows(entries));
                        tree.list.reset();
                    }
                    Err(e) => {
                        self.tree = None;
                        self.status = Status::new(StatusKind::Error, e);
                    }
                }
                None
            }
        }
    }

    fn on_update(&mut self, u: pb::ClusterUpdate) {
        // Keep the selection on the same node / request when rows move.
        let sel_node = self.selected_node().map(|n| n.id);
        let sel_key = self
            .visible_request(self.requests.selected)
            .map(|r| r.key.clone());

        for n in &u.nodes {
            push(self.rates.entry(n.id).or_default(), n.tasks_per_sec);
        }
        self.rates
            .retain(|id, _| u.nodes.iter().any(|n| n.id == *id));
        push(
            &mut self.throughput,
            u.queue.as_ref().map_or(0.0, |q| q.throughput),
        );
        self.function_rates(&u);

        self.data = u;
        self.updates += 1;
        self.refilter();

        if let Some(i) = sel_node.and_then(|id| self.data.nodes.iter().position(|n| n.id == id)) {
            self.nodes.selected = i;
        }
        if let Some(i) = sel_key.and_then(|k| {
            self.visible
                .iter()
                .position(|&i| self.data.requests[i].key == k)
        }) {
            self.requests.selected = i;
        }
        self.nodes.clamp(self.data.nodes.len());
        self.queues
            .clamp(self.data.queue.as_ref().map_or(0, |q| q.groups.len()));
        self.requests.clamp(self.visible.len());
        self.events.clamp(self.data.events.len());
    }

    fn function_rates(&mut self, u: &pb::ClusterUpdate) {
        let now: HashMap<String, u64> = u
            .functions
            .iter()
            .map(|f| (f.name.clone(), f.executions))
            .collect();
        if let Some((then, before)) = &self.last_functions
            && u.now_ms > *then
        {
            let dt = (u.now_ms - then) as f64 / 1000.0;
            self.function_rates = now
                .iter()
                .map(|(name, n)| {
                    let prev = before.get(name).copied().unwrap_or(*n);
                    (name.clone(), n.saturating_sub(prev) as f64 / dt)
                })
                .collect();
        }
        self.last_functions = Some((u.now_ms, now));
    }

    fn refilter(&mut self) {
        let terms: Vec<String> = self
            .filter
            .split_whitespace()
            .map(str::to_ascii_lowercase)
            .collect();
        self.visible.clear();
        self.visible.extend(
            self.data
                .requests
                .iter()
                .enumerate()
                .filter(|(_, r)| terms.iter().all(|t| matches_term(r, t)))
                .map(|(i, _)| i),
        );
    }

    fn rows(&self) -> usize {
        match self.view {
            View::Nodes => self.data.nodes.len(),
            View::Queues => self.data.queue.as_ref().map_or(0, |q| q.groups.len()),
            View::Requests => match &self.tree {
                Some(t) => t.rows.as_ref().map_or(0, Vec::len),
                None => self.visible.len(),
            },
            View::Raft => 0,
            View::Events => self.data.events.len(),
        }
    }

    fn list_mut(&mut self) -> Option<&mut ListState> {
        match self.view {
            View::Nodes => Some(&mut self.nodes),
            View::Queues => Some(&mut self.queues),
            View::Requests => Some(match &mut self.tree {
                Some(t) => &mut t.list,
                None => &mut self.requests,
            }),
            View::Raft => None,
            View::Events => Some(&mut self.events),
        }
    }

    fn move_by(&mut self, delta: isize) {
        let len = self.rows();
        if let Some(l) = self.list_mut() {
            let to = (l.selected as isize + delta).clamp(0, len.saturating_sub(1) as isize);
            l.selected = to as usize;
        }
    }

    fn page(&self) -> isize {
        let l = match self.view {
            View::Nodes => &self.nodes,
            View::Queues => &self.queues,
            View::Requests => self.tree.as_ref().map_or(&self.requests, |t| &t.list),
            View::Raft => return 1,
            View::Events => &self.events,
        };
        l.page() as isize
    }

    fn switch(&mut self, v: View) {
        self.view = v;
    }

    fn key(&mut self, k: KeyEvent) -> Option<Effect> {
        if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
            self.quit = true;
            return None;
        }
        match std::mem::replace(&mut self.mode, Mode::Normal) {
            Mode::Normal => self.normal_key(k),
            Mode::Help => None, // any key closes the help
            Mode::Command(s) => {
                if let Some(s) = edit(s, k, |s| self.mode = Mode::Command(s)) {
                    self.command(&s);
                }
                None
            }
            Mode::Filter(s) => {
                if k.code == KeyCode::Esc {
                    self.set_filter(String::new());
                    return None;
                }
                let mut typed = None;
                let done = edit(s, k, |s| typed = Some(s));
                if let Some(s) = typed {
                    self.set_filter(s.clone());
                    self.mode = Mode::Filter(s);
                } else if let Some(s) = done {
                    self.set_filter(s);
                }
                None
            }
            Mode::AddNode(s) => {
                let s = edit(s, k, |s| self.mode = Mode::AddNode(s))?;
                match parse_add(&s) {
                    Ok((id, addr)) => self.start(Effect::AddNode { id, addr }),
                    Err(e) => {
                        self.status = Status::new(StatusKind::Error, e);
                        None
                    }
                }
            }
            Mode::Confirm(effect) => match k.code {
                KeyCode::Char('y') | KeyCode::Char('Y') => self.start(effect),
                _ => {
                    self.status =
                        Status::new(StatusKind::Info, format!("not done: {}", effect.describe()));
                    None
                }
            },
        }
    }

    /// Esc in the Requests view: closes the tree, or else clears the filter.
    fn back(&mut self) {
        if self.tree.take().is_none() && !self.filter.is_empty() {
            self.set_filter(String::new());
        }
    }

    fn set_filter(&mut self, f: String) {
        self.filter = f;
        self.refilter();
        self.requests.reset();
    }

    fn command(&mut self, s: &str) {
        let s = s.trim();
        match s {
            "" => {}
            "q" | "q!" | "quit" => self.quit = true,
            "help" | "h" => self.mode = Mode::Help,
            _ => match View::by_name(s) {
                Some(v) => self.switch(v),
                None => {
                    self.status = Status::new(
                        StatusKind::Error,
                        format!(
                            "no view named '{s}': try nodes, queues, requests, raft, events or q"
                        ),
                    )
                }
            },
        }
    }

    /// Hands an effect to the client task and says so in the status line.
    fn start(&mut self, effect: Effect) -> Option<Effect> {
        self.status = Status::new(StatusKind::Pending, format!("{}…", effect.describe()));
        Some(effect)
    }

    /// An operator action: refused when read-only, confirmed first when destructive.
    fn act(&mut self, effect: Effect) -> Option<Effect> {
        if self.readonly {
            self.status = Status::new(StatusKind::Info, READONLY);
            return None;
        }
        if effect.destructive() {
            self.mode = Mode::Confirm(effect);
            return None;
        }
        self.start(effect)
    }

    fn node_act(&mut self, op: NodeOp) -> Option<Effect> {
        let id = self.selected_node()?.id;
        self.act(Effect::NodeOp { id, op })
    }

    fn normal_key(&mut self, k: KeyEvent) -> Option<Effect> {
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        match k.code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Char('?') => self.mode = Mode::Help,
            KeyCode::Char(':') => self.mode = Mode::Command(String::new()),
            KeyCode::Char(c @ '1'..='5') => self.switch(View::ALL[(c as u8 - b'1') as usize]),
            KeyCode::Tab => self.switch(View::ALL[(self.view.index() + 1) % View::ALL.len()]),
            KeyCode::BackTab => self.switch(View::ALL[(self.view.index() + 4) % View::ALL.len()]),
            KeyCode::Char('j') | KeyCode::Down => self.move_by(1),
            KeyCode::Char('k') | KeyCode::Up => self.move_by(-1),
            KeyCode::Char('f') if ctrl => self.move_by(self.page()),
            KeyCode::Char('b') if ctrl => self.move_by(-self.page()),
            KeyCode::PageDown => self.move_by(self.page()),
            KeyCode::PageUp => self.move_by(-self.page()),
            KeyCode::Char('g') | KeyCode::Home => self.move_by(isize::MIN / 2),
            KeyCode::Char('G') | KeyCode::End => self.move_by(isize::MAX / 2),
            KeyCode::Esc if self.view == View::Requests => self.back(),
            KeyCode::Char('/') => {
                if self.view == View::Requests && self.tree.is_none() {
                    self.mode = Mode::Filter(self.filter.clone());
                } else if self.view != View::Requests {
                    self.status = Status::new(
                        StatusKind::Info,
                        "/ filters the Requests view: press 3 first",
                    );
                }
            }
            KeyCode::Enter if self.view == View::Requests && self.tree.is_none() => {
                let r = self.selected_request()?;
                let (key, label) = (r.key.clone(), call_label(&r.function, &r.args_json, 40));
                self.tree = Some(TreeView {
                    key: key.clone(),
                    label: label.clone(),
                    rows: None,
                    list: ListState::default(),
                });
                return self.start(Effect::Tree { key });
            }
            KeyCode::Char('d') if self.view == View::Nodes => return self.node_act(NodeOp::Drain),
            KeyCode::Char('u') if self.view == View::Nodes => {
                return self.node_act(NodeOp::Undrain);
            }
            KeyCode::Char('p') if self.view == View::Nodes => {
                return self.node_act(NodeOp::Promote);
            }
            KeyCode::Char('D') if self.view == View::Nodes => {
                return self.node_act(NodeOp::Demote);
            }
            KeyCode::Char('x') if self.view == View::Nodes => return self.node_act(NodeOp::Remove),
            KeyCode::Char('a') if self.view == View::Nodes => {
                if self.readonly {
                    self.status = Status::new(StatusKind::Info, READONLY);
                } else {
                    self.mode = Mode::AddNode(String::new());
                }
            }
            KeyCode::Char('x') if self.view == View::Requests => {
                let r = self.selected_request()?;
                if matches!(r.state.as_str(), "done" | "failed" | "cancelled") {
                    self.status = Status::new(
                        StatusKind::Info,
                        format!("nothing to cancel: the request is {}", r.state),
                    );
                    return None;
                }
                let effect = Effect::Cancel {
                    key: r.key.clone(),
                    label: call_label(&r.function, &r.args_json, 30),
                };
                return self.act(effect);
            }
            KeyCode::Char('r') if self.view == View::Requests => {
                let r = self.selected_request()?;
                if !matches!(r.state.as_str(), "failed" | "cancelled") {
                    self.status = Status::new(
                        StatusKind::Info,
                        format!(
                            "only failed or cancelled requests are retried; this one is {}",
                            r.state
                        ),
                    );
                    return None;
                }
                if r.args_cut {
                    self.status = Status::new(
                        StatusKind::Info,
                        format!(
                            "its arguments ({} bytes) are too long to show here, so the console cannot send them again; call it again from its caller",
                            r.args_bytes
                        ),
                    );
                    return None;
                }
                let effect = Effect::Retry {
                    function: r.function.clone(),
                    args_json: r.args_json.clone(),
                };
                return self.act(effect);
            }
            _ => {}
        }
        None
    }
}

/// Line editing for the prompt modes. Returns the text on Enter; on other keys calls `keep`
/// with the edited text (the mode stays) or, on Esc, drops it.
fn edit(mut s: String, k: KeyEvent, keep: impl FnOnce(String)) -> Option<String> {
    match k.code {
        KeyCode::Enter => return Some(s),
        KeyCode::Esc => return None,
        KeyCode::Backspace => {
            s.pop();
        }
        KeyCode::Char('u') if k.modifiers.contains(KeyModifiers::CONTROL) => s.clear(),
        KeyCode::Char(c) => s.push(c),
        _ => {}
    }
    keep(s);
    None
}

fn push(h: &mut VecDeque<f64>, v: f64) {
    h.push_back(v);
    while h.len() > HISTORY {
        h.pop_front();
    }
}

/// Whether one lower-case filter term matches a request: a substring of its function, arguments
/// or state, a prefix of its key, or `node:N` / `nN` for the node it runs on.
fn matches_term(r: &pb::RequestInfo, t: &str) -> bool {
    if let Some(n) = t.strip_prefix("node:").and_then(|n| n.parse::<u64>().ok()) {
        return r.node == Some(n);
    }
    contains_ci(&r.function, t)
        || contains_ci(&r.args_json, t)
        || contains_ci(&r.state, t)
        || r.key.starts_with(t)
        || contains_ci(&r.error, t)
}

/// ASCII case-insensitive substring test without allocating; `needle` is lower case.
fn contains_ci(hay: &str, needle: &str) -> bool {
    let (h, n) = (hay.as_bytes(), needle.as_bytes());
    n.is_empty()
        || h.windows(n.len())
            .any(|w| w.iter().zip(n).all(|(a, b)| a.to_ascii_lowercase() == *b))
}

/// Parses the add-node prompt, `ID@HOST:PORT`.
pub fn parse_add(s: &str) -> Result<(NodeId, String), String> {
    let s = s.trim();
    let bad = |why: &str| format!("MZ-BAD-ARGUMENTS: '{s}': {why}");
    let (id, addr) = s
        .split_once('@')
        .ok_or_else(|| bad("expected ID@HOST:PORT, e.g. 4@10.0.0.4:7070"))?;
    let id: NodeId = id
        .parse()
        .ok()
        .filter(|i| *i > 0)
        .ok_or_else(|| bad("the id must be a positive integer"))?;
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| bad("expected ID@HOST:PORT, e.g. 4@10.0.0.4:7070"))?;
    if host.is_empty() {
        return Err(bad("the host is empty"));
    }
    if !port.parse::<u16>().is_ok_and(|p| p > 0) {
        return Err(bad("port must be 1-65535"));
    }
    Ok((id, addr.to_string()))
}

/// The first 8 hex digits of a request key.
pub fn short_key(key: &str) -> &str {
    &key[..key.len().min(8)]
}

/// `function(args)`, the arguments cut to keep the whole within `max` characters.
pub fn call_label(function: &str, args_json: &str, max: usize) -> String {
    let room = max.saturating_sub(function.chars().count() + 2);
    if args_json.chars().count() <= room {
        format!("{function}({args_json})")
    } else {
        let cut: String = args_json.chars().take(room.saturating_sub(1)).collect();
        format!("{function}({cut}…)")
    }
}

/// Computes the `├─`/`└─` guides of a pre-order list of tree entries.
pub fn tree_rows(entries: Vec<pb::TreeEntry>) -> Vec<TreeRow> {
    // last[i]: no later sibling follows entry i. Found scanning backwards: a later sibling at
    // depth d is one seen at depth d with nothing shallower in between.
    let mut last = vec![true; entries.len()];
    let mut seen: Vec<bool> = Vec::new();
    for (i, e) in entries.iter().enumerate().rev() {
        let d = e.depth as usize;
        if seen.len() <= d {
            seen.resize(d + 1, false);
        }
        last[i] = !seen[d];
        seen[d] = true;
        seen.truncate(d + 1);
    }
    let mut ancestors_last: Vec<bool> = Vec::new();
    entries
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            let d = entry.depth as usize;
            ancestors_last.truncate(d);
            let mut prefix = String::new();
            if d > 0 {
                for &l in ancestors_last.iter().skip(1) {
                    prefix.push_str(if l { "   " } else { "│  " });
                }
                prefix.push_str(if last[i] { "└─ " } else { "├─ " });
            }
            ancestors_last.resize(d, true);
            ancestors_last.push(last[i]);
            TreeRow { prefix, entry }
        })
        .collect()
}

/// One help line: keys, what they do, and whether the keys act on the cluster (hidden when
/// read-only).
pub struct KeyHelp {
    pub keys: &'static str,
    pub does: &'static str,
    pub action: bool,
}

const fn k(keys: &'static str, does: &'static str, action: bool) -> KeyHelp {
    KeyHelp { keys, does, action }
}

/// Every key, for the help screen.
pub const KEYS: &[KeyHelp] = &[
    k(
        "1-5, :name",
        "switch view: nodes queues requests raft events",
        false,
    ),
    k("Tab, S-Tab", "next / previous view", false),
    k("j k ↑ ↓", "move the selection", false),
    k("g G Home End", "first / last row", false),
    k("PgUp PgDn ^b ^f", "page up / down", false),
    k(
        "/",
        "filter requests (words: function, args, state, node:N)",
        false,
    ),
    k("Enter", "open the request's tree (Requests)", false),
    k(
        "Esc",
        "close the tree, clear the filter, leave a prompt",
        false,
    ),
    k("d", "drain the selected node (asks)", true),
    k("u", "undrain the selected node", true),
    k("a", "add a node: type ID@HOST:PORT, Enter", true),
    k("p", "promote the selected node to voter", true),
    k("D", "demote the selected node to learner (asks)", true),
    k(
        "x",
        "remove the node (Nodes) / cancel the request (asks)",
        true,
    ),
    k("r", "retry a failed request (Requests)", true),
    k("?", "this help; any key closes it", false),
    k("q, :q, ^c", "quit", false),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(depth: u32, f: &str) -> pb::TreeEntry {
        pb::TreeEntry {
            depth,
            request: Some(pb::RequestInfo {
                function: f.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn tree_guides_follow_siblings() {
        let rows = tree_rows(vec![
            entry(0, "root"),
            entry(1, "a"),
            entry(2, "a1"),
            entry(2, "a2"),
            entry(1, "b"),
            entry(2, "b1"),
        ]);
        let got: Vec<String> = rows
            .iter()
            .map(|r| format!("{}{}", r.prefix, r.entry.request.as_ref().unwrap().function))
            .collect();
        assert_eq!(
            got,
            ["root", "├─ a", "│  ├─ a1", "│  └─ a2", "└─ b", "   └─ b1"]
        );
    }

    #[test]
    fn add_node_prompt_validates() {
        assert_eq!(parse_add(" 4@h:7070 "), Ok((4, "h:7070".into())));
        assert!(
            parse_add("4@h:0")
                .unwrap_err()
                .contains("port must be 1-65535")
        );
        assert!(parse_add("0@h:1").unwrap_err().contains("positive integer"));
        assert!(parse_add("h:1").unwrap_err().contains("ID@HOST:PORT"));
        assert!(parse_add("4@:1").unwrap_err().contains("host is empty"));
    }

    #[test]
    fn view_names_and_aliases() {
        assert_eq!(View::by_name("req"), Some(View::Requests));
        assert_eq!(View::by_name("node"), Some(View::Nodes));
        assert_eq!(View::by_name("r"), Some(View::Requests));
        assert_eq!(View::by_name("ra"), Some(View::Raft));
        assert_eq!(View::by_name("xyz"), None);
    }

    #[test]
    fn labels_are_cut() {
        assert_eq!(call_label("fib", "20", 40), "fib(20)");
        assert_eq!(call_label("f", "123456789", 8), "f(1234…)");
    }

    #[test]
    fn scrolling_keeps_selection_in_view() {
        let mut l = ListState::default();
        assert_eq!(l.scroll(100, 10), 0);
        l.selected = 15;
        assert_eq!(l.scroll(100, 10), 6);
        l.selected = 10; // still inside the window: it does not move
        assert_eq!(l.scroll(100, 10), 6);
        l.selected = 2;
        assert_eq!(l.scroll(100, 10), 2);
        assert_eq!(l.scroll(5, 10), 0, "shrunk list");
    }

    #[test]
    fn case_insensitive_filter_terms() {
        let r = pb::RequestInfo {
            key: "abcdef".into(),
            function: "Fib".into(),
            args_json: "20".into(),
            state: "done".into(),
            node: Some(3),
            ..Default::default()
        };
        assert!(matches_term(&r, "fib"));
        assert!(matches_term(&r, "abc"));
        assert!(matches_term(&r, "node:3"));
        assert!(!matches_term(&r, "node:2"));
        assert!(matches_term(&r, "done"));
        assert!(!matches_term(&r, "sleep"));
    }
}
