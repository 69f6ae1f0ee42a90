//! `mozen-console`: the live terminal console for a Mozen cluster.
//!
//! ```text
//! mozen-console [--addr HOST:PORT,...] [--readonly]     watch (and operate) a cluster
//! mozen-console --demo                                  start a local 3-agent cluster and watch it
//! ```
//!
//! Thin on purpose: parses the flags, sets the terminal up and restores it (on quit, on error,
//! on panic, on SIGTERM), and runs the loop that turns terminal events and client messages into
//! actions for `App::update`, drawing after each. Everything else lives in the library (see its
//! `lib.rs`).

use anyhow::Context;
use clap::Parser;
use crossterm::event::{Event, EventStream, KeyEventKind};
use crossterm::terminal::{EnterAlternateScreen, LeaveAlternateScreen};
use futures::StreamExt;
use mozen_client::ClientTransport;
use mozen_console::app::{Action, App, Effect};
use mozen_console::client::{self, Cluster};
use mozen_console::error::parse_addrs;
use mozen_console::{demo, ui};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use std::io::Stdout;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

#[derive(Debug, Parser)]
#[command(
    name = "mozen-console",
    version,
    about = "The live terminal console for a Mozen cluster",
    after_help = "Keys: 1-5 or :name switch views, j/k move, / filter, Enter tree, ? help, q quit."
)]
struct Args {
    /// Agents to connect to; any member will do, the console follows the leader.
    #[arg(
        long,
        env = "MOZEN_ADDR",
        default_value = "127.0.0.1:7070",
        value_name = "HOST:PORT,..."
    )]
    addr: String,
    /// Look, don't touch: hide every action that changes the cluster.
    #[arg(long)]
    readonly: bool,
    /// Start a local 3-agent cluster (the mozen-agent binary next to this one) with a demo
    /// workload, and watch it. Everything is removed on exit.
    #[arg(long)]
    demo: bool,
    /// How many recently updated requests each update carries (the Requests view).
    #[arg(long, default_value_t = 1000, value_name = "N")]
    requests: u32,
    #[command(flatten)]
    access: mozen_console::access::AccessArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let access = match args.access.transport() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("mozen-console: {e}");
            return ExitCode::from(2);
        }
    };
    match run(args, access) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mozen-console: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(args: Args, access: ClientTransport) -> anyhow::Result<()> {
    let addrs = if args.demo {
        Vec::new()
    } else {
        parse_addrs("--addr", &args.addr)?
    };
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    // Started before the terminal is taken over, so a failure prints plainly. Dropped (agents
    // killed, data removed) after the runtime is gone, whatever happened in between.
    let demo = if args.demo {
        Some(demo::start()?)
    } else {
        None
    };
    let addrs = demo.as_ref().map_or(addrs, |d| d.addrs.clone());
    let result = rt.block_on(console(
        addrs,
        access,
        args.readonly,
        demo.is_some(),
        args.requests,
    ));
    rt.shutdown_timeout(Duration::from_secs(1));
    drop(demo);
    result
}

async fn console(
    addrs: Vec<String>,
    access: ClientTransport,
    readonly: bool,
    demo: bool,
    requests: u32,
) -> anyhow::Result<()> {
    let cluster = Arc::new(Cluster::with_access(addrs.clone(), access));
    // Bounded: when drawing falls behind, the stream reader waits instead of queueing updates.
    let (tx, rx) = mpsc::channel(64);
    let (effects, effects_rx) = mpsc::unbounded_channel();
    let client = tokio::spawn(client::run(cluster, tx, effects_rx, requests));
    let workload = demo.then(|| tokio::spawn(demo::workload(Arc::new(Cluster::new(addrs)))));

    let mut tui = Tui::enter().context("setting up the terminal")?;
    let result = event_loop(&mut tui.0, App::new(readonly), rx, effects, client).await;
    drop(tui);
    if let Some(w) = workload {
        w.abort();
    }
    result
}

/// The terminal in raw mode on the alternate screen; restored when dropped.
struct Tui(Terminal<CrosstermBackend<Stdout>>);

impl Tui {
    fn enter() -> anyhow::Result<Tui> {
        install_panic_hook();
        let setup = || -> std::io::Result<Tui> {
            crossterm::terminal::enable_raw_mode()?;
            crossterm::execute!(std::io::stdout(), EnterAlternateScreen)?;
            Ok(Tui(Terminal::new(
                CrosstermBackend::new(std::io::stdout()),
            )?))
        };
        setup()
            .inspect_err(|_| restore_terminal())
            .map_err(Into::into)
    }
}

impl Drop for Tui {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Leaves raw mode and the alternate screen and shows the cursor. Safe to call twice.
fn restore_terminal() {
    let _ = crossterm::terminal::disable_raw_mode();
    let _ = crossterm::execute!(
        std::io::stdout(),
        LeaveAlternateScreen,
        crossterm::cursor::Show
    );
}

/// Restores the terminal before the panic message is printed, so it is readable and the shell
/// usable. (Unwinding then drops the demo, which kills its agents.)
fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        previous(info);
    }));
}

async fn event_loop(
    terminal: &mut Terminal<CrosstermBackend<Stdout>>,
    mut app: App,
    mut rx: mpsc::Receiver<Action>,
    effects: mpsc::UnboundedSender<Effect>,
    mut client: JoinHandle<()>,
) -> anyhow::Result<()> {
    let mut keys = EventStream::new();
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let apply = |app: &mut App, action: Action| {
        if let Some(effect) = app.update(action) {
            let _ = effects.send(effect);
        }
    };
    loop {
        terminal
            .draw(|f| ui::draw(&app, f))
            .context("drawing the console")?;
        tokio::select! {
            e = keys.next() => match e {
                Some(Ok(Event::Key(k))) if k.kind == KeyEventKind::Press => apply(&mut app, Action::Key(k)),
                Some(Ok(_)) => {} // resize, focus, release: redraw
                Some(Err(e)) => return Err(e).context("reading the terminal"),
                None => return Ok(()),
            },
            Some(a) = rx.recv() => {
                apply(&mut app, a);
                // Take whatever else is waiting before drawing again.
                while let Ok(a) = rx.try_recv() {
                    apply(&mut app, a);
                }
            }
            r = &mut client => anyhow::bail!("internal error: the connection task stopped ({r:?})"),
            _ = sigterm.recv() => return Ok(()),
            _ = sighup.recv() => return Ok(()),
        }
        if app.quit {
            return Ok(());
        }
    }
}
