//! The report of a chaos run: operations by outcome, each fault with the
//! longest client-visible write gap during it and the time to recover
//! after it healed, and the verdicts (linearizable, lost and doubled
//! writes, final reads answered, members equal, writes resumed after each
//! heal); leaders per term are reported, not judged (see `summarise`).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    time::Duration,
};

use crate::{
    check,
    history::{Call, Op, Outcome, Ret},
    nemesis::{Fault, Planned},
    runner::Options,
};

/// What happened to one planned fault.
#[derive(Debug, Clone)]
pub struct FaultRecord {
    pub fault: Fault,
    pub start_ns: u64,
    /// When it was healed (None: injecting or healing failed).
    pub heal_ns: Option<u64>,
    /// Whom it hit, or why it could not be injected.
    pub target: String,
    /// From the heal until a leader was known and every member had applied
    /// what the leader had at that moment; None: not within 30 s.
    pub recovered: Option<Duration>,
    pub error: bool,
}

impl FaultRecord {
    pub fn new(p: &Planned, start_ns: u64, heal_ns: u64, target: String, recovered: Option<Duration>) -> Self {
        FaultRecord {
            fault: p.fault.clone(),
            start_ns,
            heal_ns: Some(heal_ns),
            target,
            recovered,
            error: false,
        }
    }

    pub fn failed(p: &Planned, start_ns: u64, why: String) -> Self {
        FaultRecord {
            fault: p.fault.clone(),
            start_ns,
            heal_ns: None,
            target: why,
            recovered: None,
            error: true,
        }
    }
}

/// A member's id and its (applied index, registry digest), None when it
/// did not answer.
pub type MemberDigest = (u64, Option<(Option<u64>, String)>);

pub struct Inputs<'a> {
    pub options: &'a Options,
    pub t0_ns: u64,
    pub history: &'a [Op],
    pub faults: &'a [FaultRecord],
    /// Terms in which members named more than one leader.
    pub split_terms: Vec<(u64, BTreeSet<u64>)>,
    /// How long after the workload stopped the members became equal.
    pub converged: Option<Duration>,
    pub digests: Vec<MemberDigest>,
}

/// The verdicts and the printable report.
#[derive(Debug, Clone)]
pub struct Summary {
    pub passed: bool,
    pub text: String,
    pub linearizable: Option<bool>,
    pub lost: usize,
    pub doubled: usize,
}

/// After a fault heals, a write must be acknowledged within this.
const WRITES_RESUME_NS: u64 = 5_000_000_000;

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// Writes answered definitely, by completion time.
fn acked_write_times(history: &[Op]) -> Vec<u64> {
    let mut t: Vec<u64> = history
        .iter()
        .filter(|op| op.call.is_write() && matches!(op.outcome, Outcome::Ok(_)))
        .map(|op| op.complete_ns)
        .collect();
    t.sort_unstable();
    t
}

/// The longest stretch of [from, to] in which no write was acknowledged.
pub fn longest_gap(acked: &[u64], from: u64, to: u64) -> u64 {
    let mut prev = from;
    let mut gap = 0;
    for &t in acked.iter().filter(|&&t| t > from && t < to) {
        gap = gap.max(t - prev);
        prev = t;
    }
    gap.max(to.saturating_sub(prev))
}

/// Acknowledged writes whose effect the final reads do not show, and
/// acknowledged disowns undone by an earlier own applied again.
///
/// Only client p owns and disowns peer p, one operation at a time, so
/// the final membership of p in a file's owners is decided by p's last
/// write to that file when that write's outcome is known.
pub fn lost_and_doubled(history: &[Op], reader: u32) -> LostDoubled {
    let mut finals: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
    let mut logins: BTreeMap<u32, bool> = BTreeMap::new();
    for op in history.iter().filter(|op| op.client == reader) {
        match (&op.call, &op.outcome) {
            (Call::GetOwners { file }, Outcome::Ok(Ret::Owners(s))) => {
                finals.insert(*file, s.clone());
            }
            (Call::GetOwners { file }, Outcome::Ok(Ret::UnknownFile)) => {
                finals.insert(*file, BTreeSet::new());
            }
            (Call::Login { user, good: true }, Outcome::Ok(r)) => {
                logins.insert(*user, *r == Ret::Done);
            }
            _ => {}
        }
    }
    let mut last: BTreeMap<(u32, u32), &Op> = BTreeMap::new();
    let mut registered = BTreeSet::new();
    for op in history.iter().filter(|op| op.client != reader) {
        match &op.call {
            Call::Own { file, peer } | Call::Disown { file, peer } => {
                let e = last.entry((*file, *peer)).or_insert(op);
                if op.invoke_ns > e.invoke_ns {
                    *e = op;
                }
            }
            Call::Register { user } if op.outcome == Outcome::Ok(Ret::Done) => {
                registered.insert(*user);
            }
            _ => {}
        }
    }
    let (mut lost, mut doubled, mut notes, mut checked) = (0, 0, Vec::new(), 0);
    for ((file, peer), op) in last {
        let Some(owners) = finals.get(&file) else { continue };
        if op.outcome != Outcome::Ok(Ret::Done) {
            continue;
        }
        checked += 1;
        let present = owners.contains(&peer);
        match op.call {
            Call::Own { .. } if !present => {
                lost += 1;
                notes.push(format!("lost: {}", check::describe(op)));
            }
            Call::Disown { .. } if present => {
                doubled += 1;
                notes.push(format!(
                    "undone (an earlier own applied again?): {}",
                    check::describe(op)
                ));
            }
            _ => {}
        }
    }
    for u in registered {
        match logins.get(&u) {
            Some(true) => checked += 1,
            Some(false) => {
                checked += 1;
                lost += 1;
                notes.push(format!("lost: register of user {u} acknowledged, final login refused"));
            }
            None => {}
        }
    }
    LostDoubled {
        lost,
        doubled,
        notes,
        checked,
        unread: files_unread(history, reader, &finals),
    }
}

/// Files whose final read did not get a definite answer.
fn files_unread(history: &[Op], reader: u32, finals: &BTreeMap<u32, BTreeSet<u32>>) -> usize {
    history
        .iter()
        .filter(|op| op.client == reader)
        .filter_map(|op| match op.call {
            Call::GetOwners { file } => Some(file),
            _ => None,
        })
        .collect::<BTreeSet<_>>()
        .iter()
        .filter(|f| !finals.contains_key(f))
        .count()
}

/// What the final reads showed of the acknowledged writes.
pub struct LostDoubled {
    pub lost: usize,
    pub doubled: usize,
    pub notes: Vec<String>,
    /// Acknowledged last writes (per file and peer) and registers compared
    /// with the final state.
    pub checked: usize,
    /// Files whose final read got no definite answer.
    pub unread: usize,
}

pub fn summarise(i: Inputs<'_>) -> Summary {
    let o = i.options;
    let mut t = String::new();
    let rel = |ns: u64| ns.saturating_sub(i.t0_ns) as f64 / 1e9;
    let _ = writeln!(
        t,
        "quorrent chaos run: seed {}, {:.0} s, {} clients on {} client hosts through 2 proxies, {} members",
        o.seed, o.secs, o.clients, o.client_hosts, o.trackers
    );
    let kinds: Vec<_> = o.kinds.iter().map(|k| k.name()).collect();
    let _ = writeln!(t, "fault kinds: {}", kinds.join(", "));

    // Operations by kind and outcome.
    let mut by_kind: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
    let mut fail_codes: BTreeMap<String, usize> = BTreeMap::new();
    for op in i.history {
        let e = by_kind.entry(op.call.kind()).or_default();
        match &op.outcome {
            Outcome::Ok(_) => e.0 += 1,
            Outcome::Fail(c) => {
                e.1 += 1;
                *fail_codes.entry(c.clone()).or_default() += 1;
            }
            Outcome::Unknown(_) => e.2 += 1,
        }
    }
    let _ = writeln!(t, "\noperations: {}", i.history.len());
    let _ = writeln!(t, "  {:<12} {:>8} {:>8} {:>8}", "kind", "ok", "failed", "unknown");
    for (k, (a, b, c)) in &by_kind {
        let _ = writeln!(t, "  {k:<12} {a:>8} {b:>8} {c:>8}");
    }
    // Refusals that a healthy cluster gives under load are expected; any
    // other error means a client lost something (a session, a peer).
    let expected = ["overloaded", "throttled"];
    let unexpected: usize = fail_codes
        .iter()
        .filter(|(c, _)| !expected.contains(&c.as_str()))
        .map(|(_, n)| n)
        .sum();
    if !fail_codes.is_empty() {
        let codes: Vec<_> = fail_codes.iter().map(|(c, n)| format!("{c} x{n}")).collect();
        let _ = writeln!(t, "  failed answers: {}", codes.join(", "));
    }

    // Faults.
    let acked = acked_write_times(i.history);
    // The clean write rate: acknowledged writes per second outside every
    // fault, its recovery and one second after.
    let busy: Vec<(u64, u64)> = i
        .faults
        .iter()
        .map(|f| {
            let end = f.heal_ns.unwrap_or(f.start_ns) + f.recovered.map_or(0, |d| d.as_nanos() as u64);
            (f.start_ns, end + 1_000_000_000)
        })
        .collect();
    let in_busy = |t: u64| busy.iter().any(|&(a, b)| t >= a && t < b);
    let (first, last) = (acked.first().copied().unwrap_or(0), acked.last().copied().unwrap_or(0));
    let busy_ns: u64 = busy
        .iter()
        .map(|&(a, b)| b.min(last).saturating_sub(a.max(first)))
        .sum();
    let clean_ns = (last - first).saturating_sub(busy_ns).max(1);
    let clean_rate = acked.iter().filter(|&&t| !in_busy(t)).count() as f64 / (clean_ns as f64 / 1e9);
    let _ = writeln!(t, "\nfaults: {}", i.faults.len());
    let _ = writeln!(
        t,
        "  {:>7} {:>6}  {:<52} {:>10} {:>10} {:>10} {:>6}  target",
        "at s", "held s", "fault", "write gap", "recovered", "writes", "rate"
    );
    let mut fault_errors = 0;
    let mut not_recovered = 0;
    let mut cut_leader = Vec::new();
    let mut no_writes_after = 0;
    for f in i.faults {
        // From the heal to the first write acknowledged after it.
        let resumed = f.heal_ns.and_then(|h| acked.iter().find(|&&t| t > h).map(|&t| t - h));
        let resumed_text = match resumed {
            Some(d) if d <= WRITES_RESUME_NS => format!("{:.0} ms", ms(d)),
            Some(d) => {
                no_writes_after += 1;
                format!("{:.0} ms!", ms(d))
            }
            None if f.heal_ns.is_some() && f.heal_ns < acked.last().copied() => "-".into(),
            None => {
                no_writes_after += 1;
                "never!".into()
            }
        };
        let (gap, rec) = match f.heal_ns {
            Some(h) => {
                let end = h + f.recovered.map_or(0, |d| d.as_nanos() as u64);
                (
                    format!("{:.0} ms", ms(longest_gap(&acked, f.start_ns, end))),
                    f.recovered
                        .map_or("no (30 s)".into(), |d| format!("{:.0} ms", d.as_secs_f64() * 1e3)),
                )
            }
            None => ("-".into(), "-".into()),
        };
        if f.error {
            fault_errors += 1;
        } else if f.recovered.is_none() {
            not_recovered += 1;
        }
        if matches!(f.fault, Fault::IsolateLeader | Fault::LeaderReturns) {
            // First write invoked after the cut and acknowledged.
            if let Some(first) = i
                .history
                .iter()
                .filter(|op| op.call.is_write() && op.invoke_ns >= f.start_ns && matches!(op.outcome, Outcome::Ok(_)))
                .map(|op| op.complete_ns)
                .min()
            {
                cut_leader.push(ms(first - f.start_ns));
            }
        }
        // Writes per second while the fault held, against the clean rate.
        let rate = match f.heal_ns {
            Some(h) if h > f.start_ns && clean_rate > 0.0 => {
                let n = acked.iter().filter(|&&t| t >= f.start_ns && t < h).count() as f64;
                format!("{:.0}%", 100.0 * n / ((h - f.start_ns) as f64 / 1e9) / clean_rate)
            }
            _ => "-".into(),
        };
        let _ = writeln!(
            t,
            "  {:>7.1} {:>6.1}  {:<52} {:>10} {:>10} {:>10} {:>6}  {}",
            rel(f.start_ns),
            f.heal_ns.map_or(0.0, |h| (h - f.start_ns) as f64 / 1e9),
            f.fault.describe(),
            gap,
            rec,
            resumed_text,
            rate,
            f.target
        );
    }
    let _ = writeln!(
        t,
        "  (write gap: longest time without an acknowledged write from the fault to its recovery; \
         recovered: heal -> every member follows one leader and has applied what it had; \
         writes: heal -> first acknowledged write; rate: write rate while it held, against the clean rate)"
    );
    let _ = writeln!(t, "  clean write rate: {clean_rate:.0} acknowledged writes/s");
    if let (Some(first), Some(last)) = (acked.first(), acked.last()) {
        let _ = writeln!(
            t,
            "  longest time without an acknowledged write over the whole run: {:.0} ms",
            ms(longest_gap(&acked, *first, *last))
        );
    }
    if !cut_leader.is_empty() {
        let s: Vec<_> = cut_leader.iter().map(|m| format!("{m:.0} ms")).collect();
        let _ = writeln!(t, "  leader cut off -> first acknowledged write: {}", s.join(", "));
    }

    // Verdicts.
    let _ = writeln!(t, "\nchecks:");
    let report = check::check(i.history, o.max_steps);
    let linearizable = match &report.result {
        check::Verdict::Linearizable => {
            let _ = writeln!(
                t,
                "  linearizable: yes ({} keys, {} operations checked)",
                report.keys_checked, report.ops_checked
            );
            Some(true)
        }
        check::Verdict::NotLinearizable { key, ops } => {
            let _ = writeln!(t, "  linearizable: NO, on {key:?}; shortest failing sub-history:");
            for op in ops {
                let _ = writeln!(t, "    {}", check::describe(op));
            }
            Some(false)
        }
        check::Verdict::Malformed { op, reason } => {
            let _ = writeln!(
                t,
                "  linearizable: NO, an impossible answer: {reason}: {}",
                check::describe(op)
            );
            Some(false)
        }
        check::Verdict::TimedOut { key } => {
            let _ = writeln!(t, "  linearizable: undecided (search limit reached on {key:?})");
            None
        }
    };
    let LostDoubled {
        lost,
        doubled,
        notes,
        checked,
        unread,
    } = lost_and_doubled(i.history, o.clients);
    let _ = writeln!(
        t,
        "  lost acknowledged writes: {lost} (of {checked} last writes and registers compared with the final reads)"
    );
    let _ = writeln!(t, "  doubled writes: {doubled}");
    if unread > 0 {
        let _ = writeln!(t, "  final reads without an answer: {unread} files");
    }
    for n in notes.iter().take(20) {
        let _ = writeln!(t, "    {n}");
    }
    // openraft 0.9 without its `single-term-leader` feature identifies a
    // leader by (term, node id) and may grant votes to two candidates of
    // one term, so two leaders in one term are allowed there; the safety
    // checks are the ones above.
    if i.split_terms.is_empty() {
        let _ = writeln!(t, "  leaders per term: at most one");
    } else {
        let _ = writeln!(
            t,
            "  leaders per term: two in {:?} (allowed by openraft 0.9's default leader ids (term, node); not a failure)",
            i.split_terms
        );
    }
    match i.converged {
        Some(d) => {
            let (_, first) = &i.digests[0];
            let (applied, digest) = first.clone().unwrap_or_default();
            let _ = writeln!(
                t,
                "  members equal: yes, {:.0} ms after the workload stopped (index {}, digest {})",
                d.as_secs_f64() * 1e3,
                applied.unwrap_or(0),
                &digest[..digest.len().min(16)]
            );
        }
        None => {
            let _ = writeln!(t, "  members equal: NO within 30 s: {:?}", i.digests);
        }
    }
    let _ = writeln!(t, "  unexpected errors: {unexpected}");
    let _ = writeln!(t, "  faults that could not be injected or healed: {fault_errors}");
    let _ = writeln!(t, "  faults not recovered from within 30 s: {not_recovered}");
    let _ = writeln!(
        t,
        "  faults after which no write was acknowledged within {} s: {no_writes_after}",
        WRITES_RESUME_NS / 1_000_000_000
    );
    let passed = linearizable == Some(true)
        && lost == 0
        && doubled == 0
        && unread == 0
        && i.converged.is_some()
        && unexpected == 0
        && fault_errors == 0
        && not_recovered == 0
        && no_writes_after == 0;
    let _ = writeln!(t, "\nresult: {}", if passed { "PASS" } else { "FAIL" });
    Summary {
        passed,
        text: t,
        linearizable,
        lost,
        doubled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_gap_counts_the_edges() {
        assert_eq!(longest_gap(&[], 10, 50), 40);
        assert_eq!(longest_gap(&[20, 25, 45], 10, 50), 20);
        assert_eq!(longest_gap(&[5, 60], 10, 50), 40);
    }

    fn op(client: u32, t: u64, call: Call, ret: Ret) -> Op {
        Op {
            client,
            invoke_ns: t,
            complete_ns: t + 1,
            call,
            outcome: Outcome::Ok(ret),
        }
    }

    #[test]
    fn lost_and_doubled_follow_each_peers_last_write() {
        let reader = 9;
        let h = vec![
            op(1, 10, Call::Own { file: 0, peer: 1 }, Ret::Done),
            op(2, 10, Call::Own { file: 0, peer: 2 }, Ret::Done),
            op(2, 20, Call::Disown { file: 0, peer: 2 }, Ret::Done),
            op(3, 10, Call::Own { file: 0, peer: 3 }, Ret::Done),
            op(reader, 100, Call::GetOwners { file: 0 }, Ret::Owners([2, 3].into())),
        ];
        let r = lost_and_doubled(&h, reader);
        assert_eq!((r.lost, r.doubled, r.checked, r.unread), (1, 1, 3, 0)); // peer 1 lost, peer 2 back
    }
}
