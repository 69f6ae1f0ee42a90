//! The cost model of a batch job: how long a line takes, what one request costs the cluster,
//! and from these the slice size and the time a job should take on N workers. Auto slicing,
//! `mozen plan` and the benchmark all use [`CostModel`].

/// Target duration of one slice.
pub const TARGET_SLICE_SECS: f64 = 0.3;
/// Largest share of a slice's time the per-request overhead may take.
pub const MAX_OVERHEAD_SHARE: f64 = 0.05;
/// Largest average slice when the job ships its data: each slice's text is one value in the
/// replicated log (which followers must take within a heartbeat) and one message to the worker
/// that maps it.
pub const SHIP_SLICE_BYTES: f64 = 1024.0 * 1024.0;

/// Measured costs of one job on one cluster.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CostModel {
    /// Seconds of map work per line on one core.
    pub per_line: f64,
    /// Seconds one request adds end to end (submit, schedule, complete) when the cluster is idle.
    pub overhead: f64,
    /// Requests per second the cluster sustains when many are in flight.
    pub max_rate: f64,
    /// Map requests that can run at the same time (free slots, capped by real cores).
    pub workers: usize,
    /// Average bytes of input per line.
    pub bytes_per_line: f64,
    /// Seconds to store one byte of shipped input in the cluster (it is written to the
    /// replicated log before the maps start); 0 when the agents read the files themselves.
    pub ship_per_byte: f64,
}

/// What a job should cost with some number of workers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub workers: usize,
    pub lines_per_slice: u64,
    pub slices: u64,
    pub seconds: f64,
}

impl CostModel {
    /// Lines per slice: each slice takes about [`TARGET_SLICE_SECS`], at least 1/[`MAX_OVERHEAD_SHARE`]
    /// times the per-request overhead, and there are enough slices to keep every worker busy.
    pub fn slice_lines(&self, total_lines: u64, workers: usize) -> u64 {
        let per_line = self.per_line.max(1e-9);
        let secs = TARGET_SLICE_SECS.max(self.overhead / MAX_OVERHEAD_SHARE);
        let by_cost = (secs / per_line).ceil() as u64;
        let by_workers = total_lines.div_ceil(workers.max(1) as u64);
        let by_size = if self.ship_per_byte > 0.0 {
            (SHIP_SLICE_BYTES / self.bytes_per_line.max(1.0)) as u64
        } else {
            u64::MAX
        };
        by_cost.min(by_workers).min(by_size).max(1)
    }

    /// Seconds to ship the input of `total_lines` lines into the cluster.
    pub fn ship_seconds(&self, total_lines: u64) -> f64 {
        total_lines as f64 * self.bytes_per_line * self.ship_per_byte
    }

    /// Time to run the whole job in one process on one core.
    pub fn local_seconds(&self, total_lines: u64) -> f64 {
        total_lines as f64 * self.per_line
    }

    /// Time of the job on `workers` parallel workers, sliced as auto slicing would, reduced with
    /// `fan_in`: shipping the input (it does not get faster with more workers: every byte goes
    /// through the leader's log), then the map phase, bounded by the work per worker and by the
    /// cluster's request rate, then one request round trip per reduce level.
    pub fn cluster(&self, total_lines: u64, workers: usize, fan_in: usize) -> Estimate {
        let lines_per_slice = self.slice_lines(total_lines, workers);
        self.cluster_sliced(total_lines, workers, fan_in, lines_per_slice)
    }

    /// Like [`cluster`](Self::cluster) with a fixed slice size.
    pub fn cluster_sliced(
        &self,
        total_lines: u64,
        workers: usize,
        fan_in: usize,
        lines_per_slice: u64,
    ) -> Estimate {
        let workers = workers.max(1);
        let slices = total_lines.div_ceil(lines_per_slice.max(1)).max(1);
        let slice_secs = lines_per_slice.min(total_lines) as f64 * self.per_line;
        let map = self.requests_seconds(slices, slice_secs, workers);
        let mut levels = 0u32;
        let mut n = slices;
        while n > 1 || levels == 0 {
            n = n.div_ceil(fan_in.max(2) as u64);
            levels += 1;
        }
        Estimate {
            workers,
            lines_per_slice,
            slices,
            seconds: self.ship_seconds(total_lines) + map + levels as f64 * self.overhead,
        }
    }

    /// Seconds to run `requests` independent requests of `secs_each` on `workers` parallel
    /// slots: whole waves of work plus one request's overhead, and never faster than the
    /// cluster's request rate allows. It is the map phase of a job, and the autoscaler's
    /// estimate of how long the queue will take.
    pub fn requests_seconds(&self, requests: u64, secs_each: f64, workers: usize) -> f64 {
        let waves = requests.div_ceil(workers.max(1) as u64) as f64;
        let by_work = waves * secs_each + self.overhead;
        let by_rate = requests as f64 / self.max_rate.max(1e-9);
        by_work.max(by_rate)
    }

    /// The fewest workers that run `requests` of `secs_each` within `target` seconds, or
    /// `None` when no number of workers can (one request alone takes longer, or the request
    /// rate binds).
    pub fn workers_within(&self, requests: u64, secs_each: f64, target: f64) -> Option<usize> {
        if requests == 0 {
            return Some(0);
        }
        let most = usize::try_from(requests).unwrap_or(usize::MAX);
        if self.requests_seconds(requests, secs_each, most) > target {
            return None;
        }
        // requests_seconds does not grow with workers: the first that fits is the answer.
        let (mut lo, mut hi) = (1usize, most);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.requests_seconds(requests, secs_each, mid) <= target {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Some(lo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: CostModel = CostModel {
        per_line: 1e-5,
        overhead: 0.02,
        max_rate: 300.0,
        workers: 4,
        bytes_per_line: 50.0,
        ship_per_byte: 0.0,
    };

    #[test]
    fn slices_keep_overhead_small_and_workers_busy() {
        // 0.4 s of work per slice (20 x 20 ms overhead) = 40 000 lines.
        assert_eq!(M.slice_lines(10_000_000, 4), 40_000);
        // A small job is split so every worker gets a slice.
        assert_eq!(M.slice_lines(1000, 4), 250);
        assert_eq!(M.slice_lines(0, 4), 1);
    }

    #[test]
    fn more_workers_help_until_the_request_rate_binds() {
        let lines = 100_000_000; // 1000 s of work on one core
        assert!((M.local_seconds(lines) - 1000.0).abs() < 1e-6);
        let four = M.cluster(lines, 4, 16);
        assert!((four.seconds - 250.0).abs() < 5.0, "{four:?}");
        let many = M.cluster(lines, 100_000, 16);
        // 100 000 slices of 1000 lines at 300 requests/s.
        assert_eq!(many.slices, 100_000);
        assert!(many.seconds > 300.0, "{many:?}");
    }

    #[test]
    fn shipping_costs_time_no_worker_saves_and_bounds_slices() {
        // 20 MB/s into the cluster: 100 MB of input take 5 s before any map.
        let ship = CostModel {
            ship_per_byte: 1.0 / 20e6,
            ..M
        };
        let lines = 2_000_000; // 100 MB at 50 bytes a line
        assert!((ship.ship_seconds(lines) - 5.0).abs() < 1e-9);
        let extra = |w| {
            ship.cluster_sliced(lines, w, 16, 10_000).seconds
                - M.cluster_sliced(lines, w, 16, 10_000).seconds
        };
        let (few, many) = (extra(4), extra(400));
        assert!((few - 5.0).abs() < 1e-6 && (many - 5.0).abs() < 1e-6);
        // A slice of a shipped job stays near SHIP_SLICE_BYTES (1 MiB / 50 B = 20,971 lines).
        assert_eq!(M.slice_lines(100_000_000, 4), 40_000);
        let slow = CostModel {
            per_line: 1e-7,
            ..ship
        };
        assert_eq!(slow.slice_lines(100_000_000, 4), 20_971);
        assert!(ship.slice_lines(100_000_000, 4) < M.slice_lines(100_000_000, 4));
    }

    #[test]
    fn workers_within_a_target() {
        let m = CostModel {
            per_line: 0.0,
            overhead: 0.0,
            max_rate: f64::INFINITY,
            workers: 6,
            bytes_per_line: 50.0,
            ship_per_byte: 0.0,
        };
        // 60 requests of 2 s: 6 workers need 20 s; 10 s needs 12 workers.
        assert!((m.requests_seconds(60, 2.0, 6) - 20.0).abs() < 1e-9);
        assert_eq!(m.workers_within(60, 2.0, 10.0), Some(12));
        assert_eq!(m.workers_within(60, 2.0, 100.0), Some(2));
        assert_eq!(m.workers_within(0, 2.0, 1.0), Some(0));
        // One request alone is longer than the target.
        assert_eq!(m.workers_within(5, 3.0, 2.0), None);
        // The request rate binds: 1000 requests at 300/s cannot finish in 2 s.
        assert_eq!(M.workers_within(1000, 0.001, 2.0), None);
    }
}
