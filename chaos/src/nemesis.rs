//! The nemesis: which faults happen when. The schedule is a pure function
//! of the seed, the run time and the fault kinds, so the same seed gives
//! the same schedule; which member a fault hits ("the leader", "a random
//! member") is decided when it happens.

use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};
use serde::Serialize;

/// The fault kinds named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Kind {
    Partition,
    Loss,
    Delay,
    Pause,
    Kill,
    Replace,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Partition,
        Kind::Loss,
        Kind::Delay,
        Kind::Pause,
        Kind::Kill,
        Kind::Replace,
    ];

    pub fn parse(s: &str) -> Result<Kind, String> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown fault kind {s:?} (known: partition, loss, delay, pause, kill, replace)"))
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Partition => "partition",
            Kind::Loss => "loss",
            Kind::Delay => "delay",
            Kind::Pause => "pause",
            Kind::Kill => "kill",
            Kind::Replace => "replace",
        }
    }
}

/// One concrete fault.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Fault {
    /// The leader's host drops everything from the other members and the
    /// proxies, and they drop everything from it.
    IsolateLeader,
    /// A random minority of the members (and proxy 2) against the rest
    /// (and proxy 1).
    Split,
    /// Each member reaches only its ring neighbours: every member sees a
    /// majority, no two the same one (with 3 members: one link cut).
    Ring,
    /// The leader is heard by no one but still hears everyone.
    OneWay,
    /// The leader is cut off with writes in flight; after the heal the
    /// others are paused in turn until it leads again (having caught up,
    /// by snapshot when it fell far behind).
    LeaderReturns,
    /// A random proxy and the leader drop each other's packets.
    ProxyCut,
    /// Every host drops this percentage of incoming UDP packets.
    Loss {
        pct: u32,
    },
    /// Every member's Raft traffic is delayed, jittered (so reordered) and
    /// sometimes duplicated by its relay.
    Delay {
        ms: u32,
        jitter_ms: u32,
        dup_pct: u32,
    },
    /// SIGSTOP, then SIGCONT when the fault heals.
    PauseLeader,
    PauseRandom,
    /// SIGKILL, then a restart from the member's data when it heals.
    KillLeader,
    KillRandom,
    KillAll,
    /// A random member's data is wiped: it is removed from the
    /// membership, started empty and added back, catching up by snapshot.
    Replace,
}

impl Fault {
    pub fn kind(&self) -> Kind {
        match self {
            Fault::IsolateLeader
            | Fault::Split
            | Fault::Ring
            | Fault::OneWay
            | Fault::ProxyCut
            | Fault::LeaderReturns => Kind::Partition,
            Fault::Loss { .. } => Kind::Loss,
            Fault::Delay { .. } => Kind::Delay,
            Fault::PauseLeader | Fault::PauseRandom => Kind::Pause,
            Fault::KillLeader | Fault::KillRandom | Fault::KillAll => Kind::Kill,
            Fault::Replace => Kind::Replace,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Fault::IsolateLeader => "partition: leader cut from everyone".into(),
            Fault::Split => "partition: majority/minority split".into(),
            Fault::Ring => "partition: ring (each sees a different majority)".into(),
            Fault::OneWay => "partition: one-way (leader hears, is not heard)".into(),
            Fault::ProxyCut => "partition: a proxy cut from the leader".into(),
            Fault::LeaderReturns => "partition: leader cut off, then elected again".into(),
            Fault::Loss { pct } => format!("loss: {pct}% of packets dropped on every host"),
            Fault::Delay { ms, jitter_ms, dup_pct } => {
                format!("delay: Raft {ms} ms + 0..{jitter_ms} ms jitter, {dup_pct}% duplicated")
            }
            Fault::PauseLeader => "pause: SIGSTOP leader".into(),
            Fault::PauseRandom => "pause: SIGSTOP a random member".into(),
            Fault::KillLeader => "kill: SIGKILL leader, restart".into(),
            Fault::KillRandom => "kill: SIGKILL a random member, restart".into(),
            Fault::KillAll => "kill: SIGKILL every member, restart".into(),
            Fault::Replace => "replace: wipe a member, remove it, add it back empty".into(),
        }
    }
}

/// A fault at a time, held for a while.
#[derive(Debug, Clone, Serialize)]
pub struct Planned {
    /// Seconds from the start of the workload.
    pub at_s: f64,
    /// How long it holds before it is healed (Replace: ignored, it takes
    /// what it takes).
    pub hold_s: f64,
    pub fault: Fault,
}

/// Seconds without faults between one heal and the next fault.
const GAP_S: (f64, f64) = (2.0, 4.0);

/// The schedule for `secs` of workload: kinds in shuffled rounds (so each
/// enabled kind comes once before any comes twice), variants of a kind in
/// turn, times and strengths from the seed.
pub fn schedule(seed: u64, secs: f64, kinds: &[Kind]) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    let mut t = 3.0;
    let mut turn = [0usize; 6];
    'outer: loop {
        let mut round = kinds.to_vec();
        round.shuffle(&mut rng);
        for kind in round {
            let n = &mut turn[Kind::ALL.iter().position(|k| *k == kind).expect("a kind")];
            let variant = *n;
            *n += 1;
            let fault = match kind {
                Kind::Partition => [
                    Fault::LeaderReturns,
                    Fault::Split,
                    Fault::IsolateLeader,
                    Fault::Ring,
                    Fault::OneWay,
                    Fault::ProxyCut,
                ][variant % 6]
                    .clone(),
                Kind::Loss => Fault::Loss {
                    pct: rng.gen_range(5..=30),
                },
                // openraft 0.9 gives every AppendEntries the heartbeat
                // interval (50 ms by default) to complete, so a round trip
                // near it stalls all writes: delays stay below it here. A
                // deployment across sites sets raft.heartbeat_ms above its
                // round trip (README, "Running on several machines").
                Kind::Delay => Fault::Delay {
                    ms: rng.gen_range(3..=12),
                    jitter_ms: rng.gen_range(0..=8),
                    dup_pct: rng.gen_range(0..=10),
                },
                Kind::Pause => [Fault::PauseLeader, Fault::PauseRandom][variant % 2].clone(),
                Kind::Kill => [Fault::KillLeader, Fault::KillRandom, Fault::KillAll][variant % 3].clone(),
                Kind::Replace => Fault::Replace,
            };
            let hold_s = match kind {
                Kind::Pause => rng.gen_range(1.0..4.0),
                Kind::Kill => rng.gen_range(0.5..3.0),
                Kind::Replace => 8.0,
                // Long enough for the others to snapshot past the cut-off
                // leader's log, which is what made its writes hang.
                Kind::Partition if variant % 6 == 0 => rng.gen_range(6.0..8.0),
                _ => rng.gen_range(3.0..8.0),
            };
            if t + hold_s > secs {
                break 'outer;
            }
            out.push(Planned { at_s: t, hold_s, fault });
            t += hold_s + rng.gen_range(GAP_S.0..GAP_S.1);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_schedule_and_every_kind_in_the_first_round() {
        let a = schedule(7, 120.0, &Kind::ALL);
        let b = schedule(7, 120.0, &Kind::ALL);
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        let first: std::collections::HashSet<_> = a.iter().take(6).map(|p| p.fault.kind()).collect();
        assert_eq!(first.len(), 6, "{a:?}");
        let c = schedule(8, 120.0, &Kind::ALL);
        assert_ne!(format!("{a:?}"), format!("{c:?}"));
        assert!(a.iter().all(|p| p.at_s + p.hold_s <= 120.0));
        assert!(a.windows(2).all(|w| w[0].at_s + w[0].hold_s < w[1].at_s));
    }

    #[test]
    fn kinds_parse_by_name() {
        assert_eq!(Kind::parse("loss"), Ok(Kind::Loss));
        assert!(Kind::parse("flood").unwrap_err().contains("flood"));
    }
}
