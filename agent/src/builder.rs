//! Building an agent binary, with the built-ins and any user functions.
//!
//! ```no_run
//! use mozen_agent::{Agent, Ctx, TaskError};
//! fn main() -> std::process::ExitCode {
//!     Agent::builder()
//!         .function("square", |_ctx: Ctx, x: i64| async move { Ok::<_, TaskError>(x * x) })
//!         .main()
//! }
//! ```

use crate::config::AgentArgs;
use crate::functions::{Ctx, Functions};
use crate::node::{Agent, run};
use clap::Parser;
use mozen_model::TaskError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// Collects user functions, then runs the agent with the process's command line.
/// Adds one user function to a registry.
type Registration = Box<dyn FnOnce(&mut Functions)>;

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

    /// Parses the command line, runs the agent until SIGTERM/SIGINT, and returns the exit code:
    /// 0 after a clean stop, 1 on a runtime error, 2 on bad flags, 3 when the data dir is
    /// quarantined. A second signal exits at once.
    pub fn main(self) -> ExitCode {
        let args = AgentArgs::parse();
        let cfg = match args.validate() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("mozen-agent: {e}");
                return ExitCode::from(2);
            }
        };
        init_tracing();
        crate::memory::no_huge_pages();
        let mut functions = Functions::with_builtins(cfg.allow_exec);
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
                return ExitCode::from(1);
            }
        };
        rt.block_on(async move {
            let listener = match tokio::net::TcpListener::bind(cfg.listen).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("mozen-agent: --listen '{}': cannot bind: {e}", cfg.listen);
                    return ExitCode::from(1);
                }
            };
            let shutdown = CancellationToken::new();
            tokio::spawn(signals(shutdown.clone()));
            match run(cfg, functions, listener, shutdown).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mozen-agent: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        })
    }
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
