//! Named functions: the registry, the context a running function gets, and the built-ins.
//!
//! A function takes typed (serde) arguments and returns a typed result or a [`TaskError`]. It
//! may call other functions on the cluster through [`Ctx::call`]; while it awaits them the
//! state machine counts it as waiting, so its slot serves other work (see docs/architecture.md).

use futures::future::{BoxFuture, FutureExt, join_all};
use mozen_model::{NodeId, RequestKey, TaskError, codes};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// How a running function reaches the cluster for child calls.
pub trait ClusterCaller: Send + Sync + 'static {
    /// Calls `function(args)` on the cluster as a child of `parent`, waiting for its outcome:
    /// the value, and whether it came from the memo table.
    fn call_child(
        &self,
        parent: RequestKey,
        function: String,
        args: Value,
    ) -> BoxFuture<'static, Result<(Value, bool), TaskError>>;

    /// Tells the cluster that attempt `attempt` of `key` gives its slot back (`parked`) or
    /// takes one again; true when the cluster took note. Without a cluster: nothing to tell.
    fn park(&self, _key: RequestKey, _attempt: u32, _parked: bool) -> BoxFuture<'static, bool> {
        Box::pin(async { false })
    }
}

/// A worker slot held by a running request. While the request waits on child calls it gives
/// the slot back (the requests queued on the worker may use it) and takes one again before it
/// goes on, so waiting parents never starve the worker of slots.
pub struct Slot {
    slots: Arc<Semaphore>,
    held: tokio::sync::Mutex<(u32, Option<OwnedSemaphorePermit>)>,
}

impl Slot {
    /// Waits for a free slot of `slots` (or for `cancel`: then `None`).
    pub async fn acquire(slots: Arc<Semaphore>, cancel: &CancellationToken) -> Option<Slot> {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.ok()?,
            _ = cancel.cancelled() => return None,
        };
        Some(Slot {
            slots,
            held: tokio::sync::Mutex::new((0, Some(permit))),
        })
    }

    async fn park(&self) {
        let mut h = self.held.lock().await;
        h.0 += 1;
        if h.0 == 1 {
            h.1 = None;
        }
    }

    /// Takes the slot back once the last wait ends. With `queue` it waits for a slot (after a
    /// timer or I/O, the function may compute at length). Without, after child calls
    /// answered, it takes a free slot if there is one, else none, the request running over
    /// the worker's slot count until it ends: its children are done, so it is near its end
    /// (or calls again), and waiting behind the requests queued on the worker would hold the
    /// whole tree above it back (the W3 benchmark's parents spent most of their time there,
    /// docs/benchmarks.md).
    async fn resume(&self, queue: bool) {
        let mut h = self.held.lock().await;
        h.0 = h.0.saturating_sub(1);
        if h.0 == 0 && h.1.is_none() {
            h.1 = if queue {
                self.slots.clone().acquire_owned().await.ok()
            } else {
                self.slots.clone().try_acquire_owned().ok()
            };
        }
    }
}

/// What a running function knows about itself and its cluster.
#[derive(Clone)]
pub struct Ctx {
    pub key: RequestKey,
    pub node: NodeId,
    pub attempt: u32,
    /// Fires when the request is cancelled; long functions should watch it.
    pub cancel: CancellationToken,
    caller: Arc<dyn ClusterCaller>,
    slot: Option<Arc<Slot>>,
}

impl Ctx {
    pub fn new(
        key: RequestKey,
        node: NodeId,
        attempt: u32,
        cancel: CancellationToken,
        caller: Arc<dyn ClusterCaller>,
    ) -> Self {
        Ctx {
            key,
            node,
            attempt,
            cancel,
            caller,
            slot: None,
        }
    }

    /// Runs the request in `slot`, given back while it waits on child calls.
    pub fn with_slot(mut self, slot: Slot) -> Self {
        self.slot = Some(Arc::new(slot));
        self
    }

    /// Awaits `fut` without holding a worker slot (the cluster may run other requests in it
    /// meanwhile), then takes a slot again: for functions that wait on timers or I/O.
    /// Runs a CPU-bound or blocking section of an async function on a blocking thread of the
    /// work runtime, so that the function's async thread (and any other function sharing it)
    /// is not held meanwhile. A panic in `f` fails the call with `MZ-FUNCTION-FAILED`.
    ///
    /// ```no_run
    /// # use mozen_agent::{Ctx, TaskError};
    /// async fn checksum(ctx: Ctx, data: Vec<u8>) -> Result<u64, TaskError> {
    ///     ctx.compute(move || data.iter().map(|b| u64::from(*b)).sum()).await
    /// }
    /// ```
    pub async fn compute<R, F>(&self, f: F) -> Result<R, TaskError>
    where
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
    {
        tokio::task::spawn_blocking(f).await.map_err(|e| {
            let why = match e.try_into_panic() {
                Ok(panic) => crate::supervise::panic_message(&*panic),
                Err(e) => e.to_string(),
            };
            fail(format!("a computed section panicked: {why}"))
        })
    }

    pub async fn idle<F: Future>(&self, fut: F) -> F::Output {
        if let Some(s) = &self.slot {
            s.park().await;
        }
        let told = self.caller.park(self.key, self.attempt, true).await;
        let out = fut.await;
        if told {
            self.caller.park(self.key, self.attempt, false).await;
        }
        if let Some(s) = &self.slot {
            s.resume(true).await;
        }
        out
    }

    /// Calls another function on the cluster; identical calls anywhere share one execution.
    pub async fn call<A: Serialize, R: DeserializeOwned>(
        &self,
        function: &str,
        args: A,
    ) -> Result<R, TaskError> {
        self.call_traced(function, args).await.map(|(v, _)| v)
    }

    /// Like [`call`](Self::call), also telling whether the value was a memo hit.
    pub async fn call_traced<A: Serialize, R: DeserializeOwned>(
        &self,
        function: &str,
        args: A,
    ) -> Result<(R, bool), TaskError> {
        let args = serde_json::to_value(args).map_err(|e| {
            TaskError::new(
                codes::BAD_ARGUMENTS,
                format!("{function}: arguments do not encode: {e}"),
            )
        })?;
        let fut = self.caller.call_child(self.key, function.to_string(), args);
        if let Some(s) = &self.slot {
            s.park().await;
        }
        let value = tokio::select! {
            v = fut => v,
            _ = self.cancel.cancelled() => Err(TaskError::new(codes::CANCELLED, "cancelled while waiting on a child")),
        };
        if let Some(s) = &self.slot {
            s.resume(false).await;
        }
        let (value, cached) = value?;
        let value = serde_json::from_value(value).map_err(|e| {
            TaskError::new(
                codes::BAD_ARGUMENTS,
                format!("{function}: result does not decode: {e}"),
            )
        })?;
        Ok((value, cached))
    }
}

type Handler =
    Arc<dyn Fn(Ctx, Value) -> BoxFuture<'static, Result<Value, TaskError>> + Send + Sync>;

struct Function {
    /// Its name, shared by every run the watchdog watches.
    name: Arc<str>,
    shape: String,
    origin: &'static str,
    handler: Handler,
}

/// Where a function comes from, as `Functions` lists it.
pub mod origin {
    /// The core built-ins of every agent (`noop`, `echo`, `sleep`...).
    pub const BUILT_IN: &str = "built-in";
    /// The batch-job functions of every agent (`mapreduce`, `blob`, the slices' map and
    /// reduce).
    pub const BATCH: &str = "batch";
    /// Test-only functions of an agent started with `--fault-file`.
    pub const FAULTS: &str = "faults";
    /// Added by the program the agent was built into (`AgentBuilder::function`...).
    pub const CUSTOM: &str = "custom";
}

/// The functions an agent can run.
#[derive(Clone, Default)]
pub struct Functions {
    map: BTreeMap<String, Arc<Function>>,
    /// The runtime functions run on (see [`crate::work`]); `None`: the caller's runtime.
    pool: Option<tokio::runtime::Handle>,
    /// Names functions that hold a work thread without awaiting (see [`crate::work`]).
    watchdog: Option<Arc<crate::work::Watchdog>>,
    /// The origin given to functions registered from now on (see [`Functions::origin`]).
    registering: Option<&'static str>,
}

/// A failure of the function itself (retryable under the request's retry policy).
pub fn fail(message: impl Into<String>) -> TaskError {
    TaskError::new(codes::FUNCTION_FAILED, message)
}

impl Functions {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The core built-ins (`noop`, `echo`, `sleep`, `fib`, ...). An agent also has the batch
    /// functions, which its builder registers ([`crate::batch::register`]): the registry knows
    /// nothing of batch jobs.
    pub fn with_builtins(allow_exec: bool) -> Self {
        let mut f = Self::new();
        f.origin(origin::BUILT_IN);
        builtins(&mut f, allow_exec);
        f.origin(origin::CUSTOM);
        f
    }

    /// Functions registered from now on come from `origin` (one of [`origin`]); unset, they
    /// are [`origin::CUSTOM`].
    pub fn origin(&mut self, origin: &'static str) -> &mut Self {
        self.registering = Some(origin);
        self
    }

    /// Runs every function on `pool` (the work runtime) instead of the caller's runtime,
    /// watched by `watchdog` when given.
    pub fn run_on(
        &mut self,
        pool: tokio::runtime::Handle,
        watchdog: Option<Arc<crate::work::Watchdog>>,
    ) {
        self.pool = Some(pool);
        self.watchdog = watchdog;
    }

    /// The watchdog of the work runtime, if functions run on one.
    pub fn watchdog(&self) -> Option<&crate::work::Watchdog> {
        self.watchdog.as_deref()
    }

    /// Registers a synchronous function: each call runs on a blocking thread of the work
    /// runtime (see [`crate::work`]), so it may compute or block as long as it likes without
    /// holding an async thread. `shape` describes the expected arguments for error messages.
    pub fn register_blocking<A, R, F>(&mut self, name: &str, shape: &str, f: F) -> &mut Self
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(Ctx, A) -> Result<R, TaskError> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        self.register(name, shape, move |ctx: Ctx, a: A| {
            let f = f.clone();
            async move {
                let inner = ctx.clone();
                ctx.compute(move || f(inner, a)).await?
            }
        })
    }

    /// Registers `name`. `shape` describes the expected arguments for error messages.
    pub fn register<A, R, F, Fut>(&mut self, name: &str, shape: &str, f: F) -> &mut Self
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(Ctx, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, TaskError>> + Send + 'static,
    {
        let f = Arc::new(f);
        let fname = name.to_string();
        let fshape = shape.to_string();
        let handler: Handler = Arc::new(move |ctx, args| {
            let f = f.clone();
            let fname = fname.clone();
            let fshape = fshape.clone();
            async move {
                let a: A = serde_json::from_value(args.clone()).map_err(|e| {
                    TaskError::new(
                        codes::BAD_ARGUMENTS,
                        format!(
                            "{fname}: arguments {} do not match the expected shape {fshape}: {}",
                            mozen_model::quote(&args.to_string(), mozen_model::QUOTED_ARGS_BYTES),
                            // serde quotes the value it could not take (a whole string).
                            mozen_model::quote(&e.to_string(), mozen_model::QUOTED_ARGS_BYTES)
                        ),
                    )
                })?;
                let r = f(ctx, a).await?;
                serde_json::to_value(r)
                    .map_err(|e| fail(format!("{fname}: result does not encode: {e}")))
            }
            .boxed()
        });
        self.map.insert(
            name.to_string(),
            Arc::new(Function {
                name: Arc::from(name),
                shape: shape.to_string(),
                origin: self.registering.unwrap_or(origin::CUSTOM),
                handler,
            }),
        );
        self
    }

    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// Registered names with their argument shapes and origins.
    pub fn list(&self) -> Vec<(String, String, &'static str)> {
        self.map
            .iter()
            .map(|(k, v)| (k.clone(), v.shape.clone(), v.origin))
            .collect()
    }

    /// The argument shape and origin of `name`, if registered.
    pub fn describe(&self, name: &str) -> Option<(&str, &'static str)> {
        self.map.get(name).map(|f| (f.shape.as_str(), f.origin))
    }

    /// Runs `name` with JSON arguments. An unknown name is a typed error, not a hang; a
    /// function that panics fails its call with `MZ-FUNCTION-FAILED` naming the panic, and
    /// nothing else (the panic itself is logged by the agent's panic hook).
    pub fn run(
        &self,
        name: &str,
        ctx: Ctx,
        args: Value,
    ) -> BoxFuture<'static, Result<Value, TaskError>> {
        match self.map.get(name) {
            Some(f) => {
                // Unwind safety: what a panicking function leaves behind is its own state
                // (poisoned locks included); the call's context is dropped with the call.
                let node = ctx.node;
                let key = ctx.key;
                let name = name.to_string();
                let call = std::panic::AssertUnwindSafe((f.handler)(ctx, args))
                    .catch_unwind()
                    .map(move |r| {
                        r.unwrap_or_else(|panic| {
                            Err(fail(format!(
                                "{name} panicked on node {node}: {}",
                                crate::supervise::panic_message(&*panic)
                            )))
                        })
                    });
                match &self.pool {
                    None => call.boxed(),
                    // On the work runtime; dropping the returned future (a cancelled call)
                    // stops the function there too.
                    Some(pool) => {
                        let running = match &self.watchdog {
                            Some(dog) => pool.spawn(dog.watch(f.name.clone(), key, call.boxed())),
                            None => pool.spawn(call),
                        };
                        let running = tokio_util::task::AbortOnDropHandle::new(running);
                        async move {
                            running.await.unwrap_or_else(|e| {
                                Err(fail(format!("the function did not finish: {e}")))
                            })
                        }
                        .boxed()
                    }
                }
            }
            None => {
                let node = ctx.node;
                let e = TaskError::new(
                    codes::UNKNOWN_FUNCTION,
                    format!("no function named '{name}' on node {node}"),
                );
                async move { Err(e) }.boxed()
            }
        }
    }
}

fn builtins(f: &mut Functions, allow_exec: bool) {
    f.register(
        "noop",
        "any JSON value",
        |_c, x: Value| async move { Ok(x) },
    );
    f.register(
        "echo",
        "any JSON value",
        |_c, x: Value| async move { Ok(x) },
    );
    f.register("sleep", "milliseconds (integer)", |c: Ctx, ms: u64| async move {
        // Sleeping holds no slot.
        c.idle(async {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(ms)) => Ok(Value::Null),
                _ = c.cancel.cancelled() => Err(TaskError::new(codes::CANCELLED, "sleep cancelled")),
            }
        })
        .await
    });
    f.register(
        "spin",
        "milliseconds (integer)",
        |c: Ctx, ms: u64| async move {
            let cancel = c.cancel.clone();
            tokio::task::spawn_blocking(move || {
                let end = Instant::now() + Duration::from_millis(ms);
                let mut x: u64 = 0;
                while Instant::now() < end && !cancel.is_cancelled() {
                    for i in 0..10_000u64 {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
                    }
                    std::hint::black_box(x);
                }
            })
            .await
            .map_err(|e| fail(format!("spin: {e}")))?;
            Ok(Value::Null)
        },
    );
    f.register(
        "fib",
        "n (non-negative integer)",
        |c: Ctx, n: u64| async move {
            if n < 2 {
                return Ok(n);
            }
            let (a, b) = futures::join!(
                c.call::<_, u64>("fib", n - 1),
                c.call::<_, u64>("fib", n - 2)
            );
            a?.checked_add(b?)
                .ok_or_else(|| fail(format!("fib({n}) overflows u64")))
        },
    );
    f.register(
        "tree",
        "[depth, fanout, nonce]",
        |c: Ctx, (depth, fanout, nonce): (u32, u32, Value)| async move {
            if depth == 0 {
                return Ok(1u64);
            }
            let calls = (0..fanout)
                .map(|i| c.call::<_, u64>("tree", json!([depth - 1, fanout, [nonce.clone(), i]])));
            let mut total = 1u64;
            for r in join_all(calls).await {
                total += r?;
            }
            Ok(total)
        },
    );
    f.register(
        "divide",
        "[x, y] (numbers)",
        |_c, (x, y): (f64, f64)| async move {
            if y == 0.0 {
                Err(fail("division by zero"))
            } else {
                Ok(x / y)
            }
        },
    );
    f.register("ratio", "i (number)", |c: Ctx, i: f64| async move {
        c.call::<_, f64>("divide", json!([i, i - 1.0])).await
    });
    f.register("fail", "message (string)", |_c, msg: String| async move {
        Err::<Value, _>(fail(msg))
    });
    f.register(
        "bogosity",
        "[msec, jobnum, reclevel, numrecjobs, args]",
        |c: Ctx, (msec, jobnum, reclevel, numrecjobs, args): (u64, u64, u32, u32, Value)| async move {
            let mut kids = Vec::new();
            if reclevel > 0 {
                let calls = (0..numrecjobs)
                    .map(|j| c.call::<_, String>("bogosity", json!([msec, j, reclevel - 1, numrecjobs, args.clone()])));
                for r in join_all(calls).await {
                    kids.push(r?);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(msec)) => {}
                _ = c.cancel.cancelled() => return Err(TaskError::new(codes::CANCELLED, "bogosity cancelled")),
            }
            Ok(format!(
                "bogosity(job {jobnum}, level {reclevel}, args {args}) on node {} [{}]",
                c.node,
                kids.join(", ")
            ))
        },
    );
    f.register("exec", "{\"cmd\": [program, args...], \"stdin\": string, \"timeout_ms\": n}", move |c: Ctx, spec: ExecSpec| async move {
        if !allow_exec {
            return Err(TaskError::new(
                codes::EXEC_REFUSED,
                format!("exec is refused on node {}: start the agent with --allow-exec to run programs", c.node),
            ));
        }
        run_exec(c, spec).await
    });
}

/// Arguments of the built-in `exec`.
#[derive(Debug, serde::Deserialize)]
pub struct ExecSpec {
    pub cmd: Vec<String>,
    #[serde(default)]
    pub stdin: String,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

async fn run_exec(c: Ctx, spec: ExecSpec) -> Result<Value, TaskError> {
    use tokio::io::AsyncWriteExt;
    let Some((prog, rest)) = spec.cmd.split_first() else {
        return Err(TaskError::new(
            codes::BAD_ARGUMENTS,
            "exec: cmd must name a program",
        ));
    };
    let mut child = tokio::process::Command::new(prog)
        .args(rest)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("exec: cannot start {prog}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let input = spec.stdin.clone().into_bytes();
        tokio::spawn(async move {
            let _ = stdin.write_all(&input).await;
        });
    }
    let timeout = Duration::from_millis(spec.timeout_ms.unwrap_or(60_000));
    let out = tokio::select! {
        r = child.wait_with_output() => r.map_err(|e| fail(format!("exec: {prog}: {e}")))?,
        _ = tokio::time::sleep(timeout) => return Err(TaskError::new(codes::TIMEOUT, format!("exec: {prog} ran longer than {} ms", timeout.as_millis()))),
        _ = c.cancel.cancelled() => return Err(TaskError::new(codes::CANCELLED, "exec cancelled")),
    };
    Ok(json!({
        "status": out.status.code(),
        "stdout": String::from_utf8_lossy(&out.stdout),
        "stderr": String::from_utf8_lossy(&out.stderr),
    }))
}

/// The caller of a function run in this process alone (a local batch run, a test): a child
/// call fails, naming the function it wanted.
pub struct NoCluster;

impl ClusterCaller for NoCluster {
    fn call_child(
        &self,
        _parent: RequestKey,
        function: String,
        _args: Value,
    ) -> BoxFuture<'static, Result<(Value, bool), TaskError>> {
        Box::pin(async move {
            Err(fail(format!(
                "{function}: a local run cannot call the cluster"
            )))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    fn ctx() -> Ctx {
        Ctx::new(
            RequestKey::of("f", b"x"),
            7,
            1,
            CancellationToken::new(),
            Arc::new(NoCluster),
        )
    }

    #[tokio::test]
    async fn a_panicking_function_fails_its_call_and_the_next_call_runs() {
        let mut fs = Functions::new();
        fs.register("explode", "a string", |_c, why: String| async move {
            if why.is_empty() {
                return Ok(Value::Null);
            }
            panic!("{why}")
        });
        let err = fs
            .run("explode", ctx(), json!("bad input 42"))
            .await
            .expect_err("the panic fails the call");
        assert_eq!(err.code, codes::FUNCTION_FAILED);
        assert!(
            err.message
                .contains("explode panicked on node 7: bad input 42"),
            "{}",
            err.message
        );
        assert_eq!(
            fs.run("explode", ctx(), json!("")).await.ok(),
            Some(Value::Null)
        );
    }

    #[tokio::test]
    async fn a_parent_whose_children_answered_does_not_queue_for_its_slot() {
        let slots = Arc::new(Semaphore::new(1));
        let parent = Slot::acquire(slots.clone(), &CancellationToken::new())
            .await
            .expect("a free slot");
        parent.park().await;
        // While the parent waits on its child, queued work takes the worker's only slot.
        let queued = slots.clone().try_acquire_owned().expect("the parked slot");
        assert!(
            parent.resume(false).now_or_never().is_some(),
            "the parent went on while every slot was taken"
        );
        assert!(parent.held.lock().await.1.is_none(), "it holds no slot");
        drop(queued);
        // Once it ends, the slot count is whole again: it gives back no slot it did not take.
        drop(parent);
        assert_eq!(slots.available_permits(), 1);
        // A timer or I/O wait (`Ctx::idle`) still waits for a slot before going on.
        let idle = Slot::acquire(slots.clone(), &CancellationToken::new())
            .await
            .expect("a free slot");
        idle.park().await;
        let queued = slots.clone().try_acquire_owned().expect("the parked slot");
        assert!(idle.resume(true).now_or_never().is_none());
        drop(queued);
    }
}
