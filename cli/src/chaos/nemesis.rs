//! The nemesis: a seeded schedule of faults applied to a [`LocalCluster`] one at a time. Each
//! fault is undone before the next begins; the choice of fault, target and hold time come from
//! the seed, their exact timing from the machine.

use super::history::History;
use super::procs::LocalCluster;
use super::{ChaosError, Fault};
use rand::Rng;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Sleeps `ms`, or less when `stop` fires.
async fn hold(ms: u64, stop: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
        _ = stop.cancelled() => {}
    }
}

/// What the nemesis did, by fault name (e.g. `kill-leader`, `partition-split`).
pub type FaultCounts = BTreeMap<String, u64>;

/// A target: the leader half of the time (when one is known), otherwise any agent.
async fn pick_target(cluster: &LocalCluster, rng: &mut ChaCha8Rng) -> (u64, bool) {
    let leader = cluster.leader().await;
    let ids = cluster.ids();
    match leader {
        Some(l) if rng.random_bool(0.5) => (l, true),
        _ => {
            let t = *ids.choose(rng).expect("agents");
            (t, Some(t) == leader)
        }
    }
}

/// Injects faults from `faults` until `stop` fires, then undoes the one in progress.
pub async fn run(
    cluster: &mut LocalCluster,
    faults: &[Fault],
    rng: &mut ChaCha8Rng,
    history: &History,
    stop: &CancellationToken,
) -> Result<FaultCounts, ChaosError> {
    let mut counts = FaultCounts::new();
    let mut count = |name: &str| *counts.entry(name.to_string()).or_default() += 1;
    if faults.is_empty() {
        stop.cancelled().await;
        return Ok(counts);
    }
    loop {
        hold(rng.random_range(500..2500), stop).await;
        if stop.is_cancelled() {
            break;
        }
        let fault = *faults.choose(rng).expect("faults");
        match fault {
            Fault::Kill => {
                let (t, is_leader) = pick_target(cluster, rng).await;
                let name = if is_leader { "kill-leader" } else { "kill" };
                count(name);
                history.fault(name, &[t], true);
                cluster.kill(t).await;
                hold(rng.random_range(200..3000), stop).await;
                cluster.start(t)?;
                history.fault(name, &[t], false);
            }
            Fault::Pause => {
                let (t, is_leader) = pick_target(cluster, rng).await;
                let name = if is_leader { "pause-leader" } else { "pause" };
                count(name);
                history.fault(name, &[t], true);
                cluster.pause(t);
                // Up to twice the agents' 2 s lease: long pauses get the node marked down and
                // its work re-queued while it still holds it.
                hold(rng.random_range(500..4500), stop).await;
                cluster.resume(t);
                history.fault(name, &[t], false);
            }
            Fault::Partition => {
                let ids = cluster.ids();
                let leader = cluster.leader().await;
                let (name, side) = match leader {
                    Some(l) if rng.random_bool(0.5) => ("partition-leader", vec![l]),
                    _ => {
                        // A minority of at most (n - 1) / 2 agents, at least one.
                        let k = rng.random_range(1..=((ids.len() - 1) / 2).max(1));
                        let side: Vec<u64> = ids.choose_multiple(rng, k).copied().collect();
                        ("partition-split", side)
                    }
                };
                count(name);
                history.fault(name, &side, true);
                cluster.partition(&side)?;
                hold(rng.random_range(1000..6000), stop).await;
                cluster.heal()?;
                history.fault(name, &side, false);
            }
            Fault::Restart => {
                let ids = cluster.ids();
                count("restart");
                history.fault("restart", &ids, true);
                cluster.kill_all().await;
                hold(rng.random_range(100..1500), stop).await;
                cluster.start_all()?;
                history.fault("restart", &ids, false);
            }
        }
    }
    cluster.heal_all()?;
    Ok(counts)
}
