//! Process-wide memory settings of the agent and the CLI.

/// Turns transparent huge pages off for this process (and the processes it starts).
///
/// The allocator asks for huge pages on its arenas. The agents' memory churns (buffers of
/// messages, log entries and replies freed and taken again), so whenever the allocator
/// touches a page it had given back, the kernel zeroes a whole 2 MiB page for it: during the
/// W1 benchmark that zeroing was 14 % of the leader's CPU samples and 7-8 % of each
/// follower's (docs/benchmarks.md). With 4 KiB pages the same churn costs almost nothing,
/// and nothing in Mozen scans enough memory for huge pages to pay off.
///
/// Best effort: on a system without the setting the process runs as before.
pub fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_thp_disable(true);
}

#[cfg(test)]
mod tests {
    #[cfg(target_os = "linux")]
    #[test]
    fn huge_pages_are_off_once_asked() {
        super::no_huge_pages();
        assert_eq!(nix::sys::prctl::get_thp_disable(), Ok(true));
    }
}
