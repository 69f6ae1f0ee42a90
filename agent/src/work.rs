//! Where user functions run: a tokio runtime of their own, whose threads (`mozen-work`, one
//! per core, and its blocking pool) run at a lower OS priority than the agent's own runtime.
//!
//! The agent's runtime carries what must keep its timing whatever functions do: Raft and its
//! transport, heartbeats, liveness, leadership and the gRPC service. A function that computes
//! without awaiting (a naive CPU-bound `async fn`) or blocks holds a work thread, never one of
//! those; and when every core is busy computing, the kernel gives the agent's threads the CPU
//! first (nice 0 against [`WORK_NICE`]), the way Ray keeps user code in worker processes apart
//! from its raylet and Dask keeps tasks off the event loop. See docs/functions.md.

use std::io;

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

#[cfg(test)]
mod tests {
    use super::*;

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
