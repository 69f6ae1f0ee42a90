//! Fast election after the leader's death.
//!
//! openraft lets a follower elect itself only once the leader's lease (the longest election
//! timeout) *and* a random election timeout have passed since it last heard from the leader,
//! and a voter grants no vote before that lease has run out. A dead leader therefore cost
//! lease + timeout (up to twice the longest timeout) before anyone stood. [`watch`] starts
//! the election as soon as the lease is over on every voter: a follower that has heard
//! nothing from its leader for longer than the lease (plus a margin) asks for votes at once.
//! To keep the followers from splitting the vote, they stand in turn: the surviving voters by
//! id, each [`STAGGER`] after the one before. openraft's own timer stays in place behind it.
//!
//! Raft's safety does not depend on when an election starts; this only shortens the silence
//! a follower waits out, and never below the lease the other voters enforce. The wait adapts
//! to measured delays: when the leader's `AppendEntries` have lately come further apart than
//! the heartbeat interval (every core busy, a slow disk), a follower allows that lateness too
//! ([`lateness_allowance`]), up to openraft's own timer. And a follower whose own watch woke
//! late (its process was not scheduled) looks again once its transport had its turn, before
//! it takes the silence for the leader's ([`stalled`]).

use crate::context::{Context, ELECTION_TIMEOUT_MAX_MS};
use openraft::ServerState;
use std::sync::Arc;
use std::time::Duration;
use tracing::info;

/// How often the watch looks at the time since the leader was last heard.
const TICK: Duration = Duration::from_millis(20);
/// Past the lease before the first follower stands (timer and RPC jitter).
const MARGIN: Duration = Duration::from_millis(40);
/// Between two followers standing.
pub const STAGGER: Duration = Duration::from_millis(150);

/// How long follower number `rank` (0 = lowest id among the voters other than the leader)
/// waits after last hearing from its leader before it stands for election, when the leader's
/// heartbeats have arrived on time lately.
pub fn stand_after(rank: usize) -> Duration {
    Duration::from_millis(ELECTION_TIMEOUT_MAX_MS) + MARGIN + STAGGER * rank as u32
}

/// How much longer a follower waits when the leader's `AppendEntries` have lately arrived as
/// far apart as `recent_gap` (busy machines): the part of that gap beyond the heartbeat
/// interval, at most the shortest election timeout (past that, openraft's own timer, which
/// stays in place, stands first anyway). A leader whose heartbeats came late a moment ago is
/// more likely late again than dead; a dead one is replaced a little later.
pub fn lateness_allowance(recent_gap: Duration) -> Duration {
    let cfg = crate::context::raft_config();
    recent_gap
        .saturating_sub(Duration::from_millis(cfg.heartbeat_interval))
        .min(Duration::from_millis(cfg.election_timeout_min))
}

/// Whether the watch's own tick came so late (`since_last` after the one before) that this
/// agent itself was stalled (its process not scheduled, every core busy): then AppendEntries
/// may be waiting, unread, in its sockets, and the silence it measures is its own. It looks
/// again at the next tick, once the transport had its turn.
pub fn stalled(since_last: Duration) -> bool {
    since_last > TICK * 3
}

pub async fn watch(agent: Arc<Context>) {
    let mut stood_in: Option<u64> = None;
    let mut last_tick = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = agent.shutdown.cancelled() => return,
        }
        let now = std::time::Instant::now();
        let own_stall = stalled(now.duration_since(last_tick));
        last_tick = now;
        if own_stall {
            continue;
        }
        let m = agent.raft.metrics().borrow().clone();
        let me = agent.me();
        if m.state != ServerState::Follower || stood_in == Some(m.current_term) {
            continue;
        }
        let Some(leader) = m.current_leader.filter(|l| *l != me) else {
            continue;
        };
        let membership = m.membership_config.membership();
        if !membership.voter_ids().any(|v| v == me) {
            continue;
        }
        let Some(rank) = membership
            .voter_ids()
            .filter(|v| *v != leader)
            .position(|v| v == me)
        else {
            continue;
        };
        let (heard, handling, late) = {
            let c = agent.leader_contact.lock().expect("contact");
            let late = lateness_allowance(c.recent_gap(std::time::Instant::now()));
            (c.last, c.handling, late)
        };
        let Some((from, term, at)) = heard else {
            continue;
        };
        // Heard from another leader or term (a stale one), or an AppendEntries is still being
        // handled (the leader is alive): leave it to openraft's own timer.
        if from != leader
            || term != m.current_term
            || handling > 0
            || at.elapsed() < stand_after(rank) + late
        {
            continue;
        }
        info!(
            leader,
            term = m.current_term,
            silent_ms = at.elapsed().as_millis() as u64,
            allowance_ms = late.as_millis() as u64,
            "leader silent past its lease: standing for election"
        );
        stood_in = Some(m.current_term);
        if agent.raft.trigger().elect().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn followers_stand_in_turn_after_the_lease_and_before_the_raft_timer() {
        let lease = Duration::from_millis(ELECTION_TIMEOUT_MAX_MS);
        let cfg = crate::context::raft_config();
        assert_eq!(cfg.election_timeout_max, ELECTION_TIMEOUT_MAX_MS);
        // Never before a voter would grant its vote.
        assert!(stand_after(0) > lease);
        assert!(stand_after(1) >= stand_after(0) + STAGGER);
        // The first follower stands before openraft's own timer would (lease + timeout).
        assert!(stand_after(0) < lease + Duration::from_millis(cfg.election_timeout_min));
        // A heartbeat lost now and then does not make anyone stand.
        assert!(stand_after(0) > Duration::from_millis(cfg.heartbeat_interval * 4));
    }

    #[test]
    fn a_late_tick_of_its_own_is_no_silence_of_the_leader() {
        assert!(!stalled(TICK));
        assert!(!stalled(TICK * 2));
        assert!(stalled(Duration::from_millis(300)));
    }

    #[test]
    fn late_heartbeats_lately_make_followers_wait_longer_up_to_the_raft_timer() {
        let cfg = crate::context::raft_config();
        let beat = Duration::from_millis(cfg.heartbeat_interval);
        assert_eq!(lateness_allowance(Duration::ZERO), Duration::ZERO);
        assert_eq!(lateness_allowance(beat), Duration::ZERO, "on time");
        assert_eq!(
            lateness_allowance(beat + Duration::from_millis(150)),
            Duration::from_millis(150)
        );
        assert_eq!(
            lateness_allowance(Duration::from_secs(5)),
            Duration::from_millis(cfg.election_timeout_min),
            "never past openraft's own timer"
        );
    }
}
