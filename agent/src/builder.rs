//! Building an agent binary, with the built-ins, the batch functions and any user functions.
//!
//! ```no_run
//! use mozen_agent::{Agent, Ctx, TaskError};
//! fn main() -> std::process::ExitCode {
//!     Agent::builder()
//!         .function("square", |_ctx: Ctx, x: i64| async move { Ok::<_, TaskError>(x * x) })
//!         .main()
//! }
//! ```
//!
//! Exit codes of an agent binary:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | stopped cleanly after SIGTERM or SIGINT |
//! | 1 | a runtime error: the listener, the runtime, the store could not be opened, ... |
//! | 2 | bad flags (nothing was started) |
//! | 3 | [`EXIT_DAMAGED`]: a damaged data dir (`MZ-DAMAGED`): run `mozen-agent repair` with the same flags |
//! | 4 | [`EXIT_DIED`]: the Raft core, or a task the agent cannot run without, died (`MZ-RAFT-CORE`, `MZ-TASK-DIED`) |
//! | 130 | a second signal during shutdown |
//!
//! Panics are logged through `tracing` with their thread and location. A panic in a user
//! function fails only that call; one in the Raft core or an essential task ends the agent
//! with code 4 (see [`crate::supervise`]).

use crate::agent::Agent;
use crate::config::AgentArgs;
use crate::functions::{Ctx, Functions};
use crate::node::run;
use clap::Parser;
use mozen_model::TaskError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub use crate::error::{EXIT_DAMAGED, EXIT_DIED, EXIT_ERROR};

/// Adds one user function to a registry.
type Registration = Box<dyn FnOnce(&mut Functions)>;

/// Collects user functions, then runs the agent with the process's command line.
pub struct AgentBuilder {
    extra: Vec<Registration>,
}

impl Agent {
    pub fn builder() -> AgentBuilder {
        AgentBuilder { extra: Vec::new() }
    }
}

impl AgentBuilder {
    /// Adds a function taking typed arguments `A` (decoded from the call's JSON).
    pub fn function<A, R, F, Fut>(self, name: &str, f: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(Ctx, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, TaskError>> + Send + 'static,
    {
        let shape = std::any::type_name::<A>().to_string();
        self.function_with_shape(name, &shape, f)
    }

    /// Like [`function`](Self::function), describing the expected arguments for error messages.
    pub fn function_with_shape<A, R, F, Fut>(mut self, name: &str, shape: &str, f: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(Ctx, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, TaskError>> + Send + 'static,
    {
        let name = name.to_string();
        let shape = shape.to_string();
        self.extra.push(Box::new(move |fs: &mut Functions| {
            fs.register(&name, &shape, f);
        }));
        self
    }

    /// Adds a synchronous function taking typed arguments `A`: each call runs on a blocking
    /// thread of the work runtime (see [`crate::work`]), so it may compute or block for as long
    /// as it needs. Prefer it to an `async fn` that computes without awaiting.
    pub fn function_blocking<A, R, F>(mut self, name: &str, shape: &str, f: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(Ctx, A) -> Result<R, TaskError> + Send + Sync + 'static,
    {
        let name = name.to_string();
        let shape = shape.to_string();
        self.extra.push(Box::new(move |fs: &mut Functions| {
            fs.register_blocking(&name, &shape, f);
        }));
        self
    }

    /// Parses the command line, runs the agent until SIGTERM/SIGINT, and returns the exit code
    /// (the table is in the module doc). A second signal exits at once.
    ///
    /// `mozen-agent repair <flags>` first moves a damaged data dir aside and takes the node
    /// out of the Raft membership, then runs the agent as a new member that is promoted back
    /// once it has caught up (see [`crate::repair`]). `mozen-agent bench-scale N` runs no agent:
    /// it prints the figures of `mozen bench`'s scale workload (see [`crate::bench_scale`]).
    pub fn main(self) -> ExitCode {
        let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
        // `mozen bench` measures the leader's scheduling code in an agent binary.
        if argv
            .get(1)
            .is_some_and(|a| a == crate::bench_scale::COMMAND)
        {
            return crate::bench_scale::main();
        }
        if argv.get(1).is_some_and(|a| a == "token") {
            argv.remove(1);
            return token_command(TokenArgs::parse_from(argv));
        }
        let repair = argv.get(1).is_some_and(|a| a == "repair");
        if repair {
            argv.remove(1);
        }
        let args = AgentArgs::parse_from(argv);
        // Before the config: the default --max-client-connections follows the raised limit.
        let open_files = crate::connections::raise_open_files();
        let mut cfg = match args.validate() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("mozen-agent: {e}");
                return ExitCode::from(2);
            }
        };
        init_tracing();
        if cfg.security.access.is_none() && cfg.security.token.is_some() {
            tracing::warn!(
                "--token-file without --access-file: the one token grants every role (peer, \
                 worker, operator, client) to whoever holds it; give each its own token with \
                 --access-file (docs/operations.md, \"Roles\"). This mode goes away in the next release"
            );
        }
        match open_files {
            Ok((before, after)) if before != after => {
                tracing::info!("open-file limit raised from {before} to {after}")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
        }
        crate::supervise::install_panic_hook();
        crate::memory::no_huge_pages();
        let mut functions = Functions::with_builtins(cfg.allow_exec);
        functions.origin(crate::functions::origin::BATCH);
        crate::batch::register(&mut functions);
        if cfg.fault_file.is_some() {
            functions.origin(crate::functions::origin::FAULTS);
            crate::faults::register_functions(&mut functions);
        }
        functions.origin(crate::functions::origin::CUSTOM);
        for f in self.extra {
            f(&mut functions);
        }
        let rt = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("mozen-agent: cannot start the runtime: {e}");
                return ExitCode::from(EXIT_ERROR);
            }
        };
        // Functions run on a runtime of their own, below the agent's priority (crate::work).
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let work = match crate::work::runtime(cores) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("mozen-agent: cannot start the work runtime: {e}");
                return ExitCode::from(EXIT_ERROR);
            }
        };
        let watchdog = match crate::work::Watchdog::start(crate::work::HOLD_WARNING) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!("no watchdog for functions holding their thread: {e}");
                None
            }
        };
        functions.run_on(work.handle().clone(), watchdog);
        let code = rt.block_on(async move {
            let listener = match tokio::net::TcpListener::bind(cfg.listen).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("mozen-agent: --listen '{}': cannot bind: {e}", cfg.listen);
                    return ExitCode::from(EXIT_ERROR);
                }
            };
            if repair {
                match crate::repair::prepare(&cfg).await {
                    Ok(r) => {
                        eprintln!(
                            "mozen-agent: repair: the damaged data dir is kept at {}; rejoining from the peers{}",
                            r.moved_to.display(),
                            if r.was_voter { " (promoted back to voter once caught up)" } else { "" }
                        );
                        cfg.rejoin_as_voter = r.was_voter;
                    }
                    Err(e) => {
                        eprintln!("mozen-agent: {e}");
                        return ExitCode::from(e.exit_code());
                    }
                }
            }
            let shutdown = CancellationToken::new();
            tokio::spawn(signals(shutdown.clone()));
            match run(cfg, functions, listener, shutdown).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mozen-agent: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        });
        // A function still running on a blocking thread (after a death, say) does not hold
        // the exit back.
        rt.shutdown_timeout(Duration::from_secs(2));
        work.shutdown_timeout(Duration::from_secs(2));
        code
    }
}

/// `mozen-agent token`: mints a credential for the access file.
#[derive(Debug, clap::Parser)]
#[command(
    name = "mozen-agent token",
    about = "Mint a token: prints the token on stdout and its --access-file line on stderr",
    after_help = "Example: mozen-agent token --role client --name alice > alice.token 2>> access\n\
                  Give alice.token to the client (--token-file) and append the line to every \
                  agent's --access-file (docs/operations.md, \"Roles\")."
)]
pub struct TokenArgs {
    /// Roles, comma-separated: peer, worker, operator, client.
    #[arg(long)]
    pub role: String,
    /// The credential's name: the caller's identity (fair share, events); `node-N` binds a
    /// peer or worker credential to node N.
    #[arg(long)]
    pub name: String,
    /// Print the line of this existing token instead of minting one (nothing on stdout).
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<std::path::PathBuf>,
}

fn token_command(args: TokenArgs) -> ExitCode {
    let (token, minted) = match &args.token_file {
        Some(p) => match crate::security::read_token("token-file", p) {
            Ok(t) => (t.expose().to_string(), false),
            Err(e) => {
                eprintln!("mozen-agent token: {e}");
                return ExitCode::from(2);
            }
        },
        None => match crate::security::mint_token() {
            Ok(t) => (t, true),
            Err(e) => {
                eprintln!("mozen-agent token: no randomness from the system: {e}");
                return ExitCode::from(EXIT_ERROR);
            }
        },
    };
    let line = crate::security::AccessList::line(&args.role, &args.name, &token);
    // The line is checked as the agent will read it.
    if let Err(e) = crate::security::AccessList::parse(&line) {
        eprintln!("mozen-agent token: {}", e.trim_start_matches("line 1: "));
        return ExitCode::from(2);
    }
    if minted {
        println!("{token}");
    }
    eprintln!("{line}");
    ExitCode::SUCCESS
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MOZEN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("signal received: shutting down (a second signal exits at once)");
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    eprintln!("mozen-agent: second signal: exiting now");
    std::process::exit(130);
}
