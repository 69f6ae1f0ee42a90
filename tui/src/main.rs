//! `mozen-console`: the live terminal console. Thin: flags, terminal setup and restore, the
//! event loop. Everything else is in the library (see `lib.rs`).

use clap::Parser;
use crossterm::event::{Event, EventStream, KeyEventKind};
use futures::StreamExt;
use mozen_console::app::{Action, App};
use mozen_console::{demo, feed, ui};
use std::process::ExitCode;
use tokio::sync::mpsc;

#[derive(Parser)]
#[command(
    name = "mozen-console",
    version,
    about = "The live terminal console for a Mozen cluster"
)]
struct Args {
    /// Agents to connect to, HOST:PORT[,HOST:PORT...]; the leader is followed.
    #[arg(long, env = "MOZEN_ADDR", default_value = "127.0.0.1:7070")]
    addr: String,
    /// Hide every action: look, don't touch.
    #[arg(long)]
    readonly: bool,
    /// Start a local 3-agent cluster with a demo workload and watch it.
    #[arg(long)]
    demo: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mozen-console: {e}");
            return ExitCode::from(1);
        }
    };
    let demo = if args.demo {
        match demo::start() {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!("mozen-console: --demo: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        None
    };
    let addrs: Vec<String> = match &demo {
        Some(d) => d.addrs.clone(),
        None => args
            .addr
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
    };
    if addrs.is_empty() {
        eprintln!(
            "mozen-console: --addr '{}': expected HOST:PORT[,HOST:PORT...]",
            args.addr
        );
        return ExitCode::from(2);
    }
    let result = rt.block_on(async {
        if demo.is_some() {
            tokio::spawn(demo::workload(addrs.clone()));
        }
        run(addrs, args.readonly).await
    });
    drop(demo);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mozen-console: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(addrs: Vec<String>, readonly: bool) -> std::io::Result<()> {
    // ratatui::init installs a panic hook that restores the terminal first.
    let mut terminal = ratatui::init();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (op_tx, op_rx) = mpsc::unbounded_channel();
    tokio::spawn(feed::run(addrs, tx, op_rx));
    let mut app = App::new(readonly);
    let mut events = EventStream::new();
    let result = loop {
        if let Err(e) = terminal.draw(|f| ui::draw(&app, f)) {
            break Err(e);
        }
        let action = tokio::select! {
            e = events.next() => match e {
                Some(Ok(Event::Key(k))) if k.kind == KeyEventKind::Press => Action::Key(k),
                Some(Ok(_)) => continue,
                Some(Err(e)) => break Err(e),
                None => break Ok(()),
            },
            a = rx.recv() => match a { Some(a) => a, None => continue },
        };
        if let Some(op) = app.update(action) {
            let _ = op_tx.send(op);
        }
        if app.quit {
            break Ok(());
        }
    };
    ratatui::restore();
    result
}
