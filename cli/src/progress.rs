//! The progress display of `mozen run`: a bar on a terminal, plain lines otherwise (stderr in
//! both cases, so stdout carries only the result).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mozen_client::batch::Progress;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Shows a job's progress.
pub struct Display {
    bar: Option<ProgressBar>,
    /// Plain mode: when the last line was printed.
    last: Mutex<Option<Instant>>,
    /// The job's root was announced.
    announced: std::sync::atomic::AtomicBool,
    start: Instant,
}

impl Display {
    /// A bar when stdout is a terminal, plain lines otherwise.
    pub fn new() -> Display {
        let bar = std::io::stdout().is_terminal().then(|| {
            let b = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {percent:>3}% {binary_bytes_per_sec} ETA {eta} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        Display {
            bar,
            last: Mutex::new(None),
            announced: Default::default(),
            start: Instant::now(),
        }
    }

    fn message(p: &Progress) -> String {
        let m = format!(
            "slices {}/{}  memo hits {}  failed {}  reduces {}",
            p.done, p.slices, p.memo_hits, p.failed, p.reduces
        );
        if p.uploaded == 0 {
            return m;
        }
        format!("shipped {:.1} MB  {m}", p.uploaded as f64 / 1e6)
    }

    pub fn update(&self, p: &Progress) {
        if let Some(root) = p.root
            && !self
                .announced
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            let root = root.to_hex();
            let line = format!(
                "job root {root}: `mozen tree {root}` shows it; it runs on if this command stops"
            );
            match &self.bar {
                Some(b) => b.println(line),
                None => eprintln!("{line}"),
            }
        }
        if let Some(b) = &self.bar {
            b.set_length(p.bytes_total);
            b.set_position(p.bytes_done);
            b.set_message(Self::message(p));
            return;
        }
        let mut last = self.last.lock().expect("progress lock");
        let finished = p.done == p.slices;
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) && !finished {
            return;
        }
        *last = Some(Instant::now());
        let secs = self.start.elapsed().as_secs_f64();
        let rate = p.bytes_done as f64 / 1e6 / secs.max(1e-9);
        let eta = if p.bytes_done > 0 {
            (p.bytes_total - p.bytes_done) as f64 / (p.bytes_done as f64 / secs)
        } else {
            f64::NAN
        };
        eprintln!(
            "progress: {}  {rate:.1} MB/s  ETA {eta:.0}s",
            Self::message(p)
        );
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Default for Display {
    fn default() -> Self {
        Self::new()
    }
}
