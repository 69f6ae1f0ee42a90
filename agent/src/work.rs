//! Where user functions run: a tokio runtime of their own, whose threads (`mozen-work`, one
//! per core, and its blocking pool) run at a lower OS priority than the agent's own runtime.
//!
//! The agent's runtime carries what must keep its timing whatever functions do: Raft and its
//! transport, heartbeats, liveness, leadership and the gRPC service. A function that computes
//! without awaiting (a naive CPU-bound `async fn`) or blocks holds a work thread, never one of
//! those; and when every core is busy computing, the kernel gives the agent's threads the CPU
//! first (nice 0 against [`WORK_NICE`]), the way Ray keeps user code in worker processes apart
//! from its raylet and Dask keeps tasks off the event loop. See docs/functions.md.

use futures::future::BoxFuture;
use mozen_model::RequestKey;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The niceness of work threads: with the agent's threads at 0, a thread at 10 gets about a
/// tenth of the CPU the agent's get when both want it (the kernel's weights), and all of it
/// when the agent is idle.
pub const WORK_NICE: i32 = 10;

/// The work runtime: `threads` worker threads (the machine's cores), each lowering its own
/// priority when it starts, as do the threads of its blocking pool.
pub fn runtime(threads: usize) -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("mozen-work")
        .on_thread_start(lower_priority)
        .enable_all()
        .build()
}

/// Lowers the calling thread's priority by [`WORK_NICE`] (to 19 at most). On Linux the
/// niceness is per thread (`setpriority` with `who` 0 names the calling thread). A failure only
/// leaves the thread at the agent's priority, so it is logged, not fatal.
fn lower_priority() {
    let target = (current_nice() + WORK_NICE).min(19);
    // SAFETY: setpriority takes plain integers and touches no memory of ours.
    #[allow(unsafe_code)]
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, target) };
    if r != 0 {
        tracing::warn!(
            "cannot lower a work thread's priority: {}",
            io::Error::last_os_error()
        );
    }
}

/// The niceness of the calling thread (for tests).
pub fn current_nice() -> i32 {
    // SAFETY: as above; errno is reset first because -1 is also a valid niceness.
    #[allow(unsafe_code)]
    unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, 0)
    }
}

/// A function whose single poll (the stretch it runs without awaiting) lasts longer than
/// this is holding its thread: the watchdog names it. Dask warns of an event loop unresponsive
/// for 3 s; a function alone on its thread gets a little less.
pub const HOLD_WARNING: Duration = Duration::from_secs(2);

/// Watches the functions running on the work runtime and names those that hold a thread
/// without awaiting for longer than its threshold: a naive CPU-bound `async fn`, or a blocking
/// call inside one. They do not slow the agent (they run on the work runtime, below its
/// priority), but they hold a thread other functions on it wait for. Each such poll is logged
/// once, with the function's name, the request and how long it has held the thread, and
/// counted (`mozen_function_thread_holds_total`). The checks run on a thread of their own.
pub struct Watchdog {
    threshold: Duration,
    polls: Mutex<HashMap<u64, Held>>,
    seq: AtomicU64,
    holds: AtomicU64,
}

/// A poll in progress.
struct Held {
    function: Arc<str>,
    request: RequestKey,
    since: Instant,
    told: bool,
}

impl Watchdog {
    /// A watchdog with `threshold`, checking on a thread of its own about four times per
    /// threshold for as long as it is referenced.
    pub fn start(threshold: Duration) -> io::Result<Arc<Self>> {
        let dog = Arc::new(Watchdog {
            threshold,
            polls: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
            holds: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&dog);
        std::thread::Builder::new()
            .name("mozen-watchdog".into())
            .spawn(move || watch(weak, threshold / 4))?;
        Ok(dog)
    }

    /// Polls that held a thread past the threshold, since the agent started.
    pub fn holds(&self) -> u64 {
        self.holds.load(Ordering::Relaxed)
    }

    /// `call`, a run of `function` for `request`, watched at each poll.
    pub fn watch<T: Send + 'static>(
        self: &Arc<Self>,
        function: Arc<str>,
        request: RequestKey,
        call: BoxFuture<'static, T>,
    ) -> Watched<T> {
        Watched {
            call,
            id: self.seq.fetch_add(1, Ordering::Relaxed),
            function,
            request,
            dog: self.clone(),
        }
    }

    /// Looks at the polls in progress: names each one past the threshold, once.
    fn check(&self) {
        let now = Instant::now();
        let mut polls = self.polls.lock().unwrap_or_else(|p| p.into_inner());
        for h in polls.values_mut().filter(|h| !h.told) {
            let held = now.duration_since(h.since);
            if held >= self.threshold {
                h.told = true;
                self.holds.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    function = %h.function,
                    request = %h.request,
                    held_ms = held.as_millis() as u64,
                    "function {} has held a work thread for {} ms without awaiting: other functions on that thread wait; register it with function_blocking or run its CPU-bound part in Ctx::compute (docs/functions.md)",
                    h.function,
                    held.as_millis()
                );
            }
        }
    }
}

fn watch(dog: Weak<Watchdog>, every: Duration) {
    loop {
        std::thread::sleep(every.max(Duration::from_millis(10)));
        match dog.upgrade() {
            Some(d) => d.check(),
            None => return,
        }
    }
}

/// A function's run, timed at each poll (see [`Watchdog`]).
pub struct Watched<T> {
    call: BoxFuture<'static, T>,
    id: u64,
    function: Arc<str>,
    request: RequestKey,
    dog: Arc<Watchdog>,
}

impl<T> Future for Watched<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = &mut *self;
        let held = Held {
            function: this.function.clone(),
            request: this.request,
            since: Instant::now(),
            told: false,
        };
        this.dog
            .polls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(this.id, held);
        let out = this.call.as_mut().poll(cx);
        let ended = this
            .dog
            .polls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&this.id);
        if let Some(h) = ended.filter(|h| h.told) {
            tracing::info!(
                function = %h.function,
                request = %h.request,
                "function {} awaited again after holding its thread for {} ms",
                h.function,
                h.since.elapsed().as_millis()
            );
        }
        out
    }
}

impl<T> Drop for Watched<T> {
    fn drop(&mut self) {
        // A run dropped inside its poll (a panic unwinding) is not left behind as held.
        self.dog
            .polls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    /// Waits until `dog` counted `n` holds, checking as often as its own thread does.
    fn until_holds(dog: &Watchdog, n: u64) -> bool {
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if dog.holds() >= n {
                return true;
            }
            std::thread::yield_now();
        }
        false
    }

    #[test]
    fn a_function_computing_without_awaiting_is_named_once_and_one_that_awaits_never() {
        let dog = Watchdog::start(Duration::from_millis(50)).expect("watchdog");
        let rt = runtime(1).expect("runtime");
        // Holds its thread until the watchdog has seen it (then a little longer).
        let seen = dog.clone();
        let naive = dog.watch(
            Arc::from("naive"),
            RequestKey([1; 32]),
            async move {
                let t = Instant::now();
                while seen.holds() == 0 && t.elapsed() < Duration::from_secs(10) {
                    std::hint::spin_loop();
                }
            }
            .boxed(),
        );
        rt.block_on(naive);
        assert!(until_holds(&dog, 1), "the naive function was not named");
        let polite = dog.watch(
            Arc::from("polite"),
            RequestKey([2; 32]),
            async {
                for _ in 0..20 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            .boxed(),
        );
        rt.block_on(polite);
        dog.check();
        assert_eq!(dog.holds(), 1, "a function that awaits is never named");
        assert!(dog.polls.lock().unwrap().is_empty());
    }

    #[test]
    fn work_threads_run_below_the_agent() {
        let rt = runtime(2).expect("runtime");
        let (worker, blocking) = rt.block_on(async {
            let worker = tokio::spawn(async { current_nice() }).await.expect("task");
            let blocking = tokio::task::spawn_blocking(current_nice)
                .await
                .expect("task");
            (worker, blocking)
        });
        let here = current_nice();
        assert!(
            worker >= here + WORK_NICE.min(19 - here),
            "worker {worker}, agent {here}"
        );
        assert!(
            blocking >= here + WORK_NICE.min(19 - here),
            "blocking {blocking}"
        );
    }
}
