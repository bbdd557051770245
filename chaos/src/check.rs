//! The linearizability check of a recorded history: Wing and Gong's search
//! with Lowe's memoisation (porcupine's `checkSingle`), run on each key's
//! sub-history from [`model::partition`], with a step bound per key, and a
//! shrinker that cuts a failing sub-history down to a small one a person
//! can read.
//!
//! Time: an operation precedes another only if it completed strictly
//! before the other was invoked; equal times count as concurrent. An
//! operation with an unknown outcome never completes.
//!
//! It owns the search and the report, not the model (see [`model`]): it
//! knows nothing of users or files beyond [`Key`] and [`describe`].

use std::cell::Cell;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::history::{Call, Op, Outcome, Ret};
use crate::model::{self, Key, KeyOp, State};

/// Checks tried by the shrinker of one failing key, at most.
const SHRINK_CHECKS: usize = 2_000;

/// The result of [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Keys with at least one operation in the check.
    pub keys_checked: usize,
    /// Operations of the history that took part (not dropped).
    pub ops_checked: usize,
    pub result: Verdict,
}

/// Whether the history is linearizable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order of `key`'s operations explains the answers. `ops` is the
    /// smallest failing sub-history the shrinker found, in history order.
    NotLinearizable {
        key: Key,
        ops: Vec<Op>,
    },
    /// An answer the call cannot have, or impossible times.
    Malformed {
        op: Op,
        reason: String,
    },
    /// The search of `key` ran out of steps: nothing is known of it.
    TimedOut {
        key: Key,
    },
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let counts = format!("{} ops on {} keys", self.ops_checked, self.keys_checked);
        match &self.result {
            Verdict::Linearizable => write!(f, "linearizable ({counts})"),
            Verdict::TimedOut { key } => write!(f, "unknown: the search of {key} ran out of steps ({counts})"),
            Verdict::Malformed { op, reason } => write!(f, "malformed history: {reason}: {}", describe(op)),
            Verdict::NotLinearizable { key, ops } => {
                writeln!(f, "not linearizable on {key}; smallest failing sub-history found:")?;
                write!(f, "{}", describe_history(ops))
            }
        }
    }
}

/// Checks `history`, spending at most `max_steps_per_key` search steps on
/// each key (a key that needs more makes the verdict [`Verdict::TimedOut`],
/// unless another key is found not linearizable).
pub fn check(history: &[Op], max_steps_per_key: u64) -> Report {
    let keys = match model::partition(history) {
        Ok(keys) => keys,
        Err(m) => {
            return Report {
                keys_checked: 0,
                ops_checked: 0,
                result: Verdict::Malformed {
                    op: history[m.index].clone(),
                    reason: m.reason,
                },
            };
        }
    };
    let ops_checked = keys.values().flatten().map(|o| o.index).collect::<HashSet<_>>().len();
    let keys: Vec<(Key, Vec<KeyOp>)> = keys.into_iter().collect();
    let results = check_keys(&keys, max_steps_per_key);

    let mut result = Verdict::Linearizable;
    for ((key, _), r) in keys.iter().zip(results) {
        match r {
            KeyResult::Ok => {}
            KeyResult::Violation(shrunk) => {
                let mut idx: Vec<usize> = shrunk.iter().map(|o| o.index).collect();
                idx.sort_unstable();
                idx.dedup();
                result = Verdict::NotLinearizable {
                    key: *key,
                    ops: idx.into_iter().map(|i| history[i].clone()).collect(),
                };
                break;
            }
            KeyResult::TimedOut => {
                if result == Verdict::Linearizable {
                    result = Verdict::TimedOut { key: *key };
                }
            }
        }
    }
    Report {
        keys_checked: keys.len(),
        ops_checked,
        result,
    }
}

/// One line for an operation, times in ms of the monotonic clock.
pub fn describe(op: &Op) -> String {
    describe_from(op, 0)
}

/// One line for an operation, times in ms since `origin_ns`, e.g.
/// `client 3 own(file 2, peer 3) -> done [12.3 ms .. 15.0 ms]`.
pub fn describe_from(op: &Op, origin_ns: u64) -> String {
    let ms = |ns: u64| ns.saturating_sub(origin_ns) as f64 / 1e6;
    let call = match &op.call {
        Call::Register { user } => format!("register(user {user})"),
        Call::Login { user, good } => {
            format!("login(user {user}, {} password)", if *good { "good" } else { "wrong" })
        }
        Call::Own { file, peer } => format!("own(file {file}, peer {peer})"),
        Call::Disown { file, peer } => format!("disown(file {file}, peer {peer})"),
        Call::GetOwners { file } => format!("get-owners(file {file})"),
        Call::Search { text, files } => format!("search({text:?}, could match files {files:?})"),
        Call::Announce { peer } => format!("announce(peer {peer})"),
        Call::Heartbeat { peer } => format!("heartbeat(peer {peer})"),
    };
    let (answer, end) = match &op.outcome {
        Outcome::Ok(ret) => {
            let answer = match ret {
                Ret::Done => "done".to_owned(),
                Ret::UserExists => "user exists".to_owned(),
                Ret::BadCredentials => "bad credentials".to_owned(),
                Ret::UnknownFile => "unknown file".to_owned(),
                Ret::Owners(s) => format!("owners {s:?}"),
                Ret::Files(f) => {
                    let hits: Vec<String> = f.iter().map(|(file, n)| format!("file {file}: {n}")).collect();
                    format!("found [{}]", hits.join(", "))
                }
            };
            (answer, format!("{:.1} ms", ms(op.complete_ns)))
        }
        Outcome::Fail(why) => (format!("failed ({why})"), format!("{:.1} ms", ms(op.complete_ns))),
        Outcome::Unknown(why) => (
            format!("unknown ({why})"),
            format!("? (gave up at {:.1} ms)", ms(op.complete_ns)),
        ),
    };
    format!(
        "client {} {call} -> {answer} [{:.1} ms .. {end}]",
        op.client,
        ms(op.invoke_ns)
    )
}

/// One line per operation, times in ms since the earliest invocation.
pub fn describe_history(ops: &[Op]) -> String {
    let origin = ops.iter().map(|o| o.invoke_ns).min().unwrap_or(0);
    ops.iter().map(|o| describe_from(o, origin) + "\n").collect()
}

/// The verdict on one key.
enum KeyResult {
    Ok,
    /// With the shrunk failing sub-history.
    Violation(Vec<KeyOp>),
    TimedOut,
}

/// Checks every key, on as many threads as the machine has (keys are
/// independent, so any order gives the same results).
fn check_keys(keys: &[(Key, Vec<KeyOp>)], max_steps: u64) -> Vec<KeyResult> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(keys.len());
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<KeyResult>>> = keys.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((key, ops)) = keys.get(i) else { break };
                let r = check_key(*key, ops, max_steps);
                // A poisoned slot only means another worker panicked; the
                // scope propagates that panic anyway.
                if let Ok(mut slot) = results[i].lock() {
                    *slot = Some(r);
                }
            });
        }
    });
    results
        .into_iter()
        .map(|m| m.into_inner().ok().flatten().unwrap_or(KeyResult::TimedOut))
        .collect()
}

fn check_key(key: Key, ops: &[KeyOp], max_steps: u64) -> KeyResult {
    match search(key, ops, max_steps) {
        Search::Linearizable => KeyResult::Ok,
        Search::TimedOut => KeyResult::TimedOut,
        Search::Violation { unreached } => KeyResult::Violation(shrink(key, ops, &unreached, max_steps)),
    }
}

/// What [`search`] found.
#[derive(Debug, PartialEq, Eq)]
enum Search {
    Linearizable,
    /// `unreached[i]`: operation `i` was invoked after every point where
    /// the search got stuck, so it played no part in the failure.
    Violation {
        unreached: Vec<bool>,
    },
    TimedOut,
}

/// A set of small integers (the operations linearized so far).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BitSet(Vec<u64>);

impl BitSet {
    fn new(n: usize) -> Self {
        BitSet(vec![0; n.div_ceil(64)])
    }

    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// No node (end of the list).
const NIL: usize = usize::MAX;
/// The list's sentinel head node.
const HEAD: usize = 0;

/// The doubly linked list of call and return events, in time order, that
/// the search lifts operations out of as it linearizes them. Node 0 is the
/// head; node `k + 1` is the `k`-th event in time order.
struct Events {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// For each node: the operation, and whether it is the call.
    node: Vec<(usize, bool)>,
    call: Vec<usize>,
    ret: Vec<usize>,
}

impl Events {
    fn new(ops: &[KeyOp]) -> Self {
        // (time, 0 for a call and 1 for a return, op): at equal times calls
        // come first, so equal times count as concurrent.
        let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * ops.len());
        for (i, o) in ops.iter().enumerate() {
            events.push((o.invoke_ns, 0, i));
            events.push((o.complete_ns, 1, i));
        }
        events.sort_unstable();
        let n = events.len() + 1;
        let mut ev = Events {
            next: (1..=n).map(|k| if k == n { NIL } else { k }).collect(),
            prev: (0..n).map(|k| if k == 0 { NIL } else { k - 1 }).collect(),
            node: Vec::with_capacity(n),
            call: vec![NIL; ops.len()],
            ret: vec![NIL; ops.len()],
        };
        ev.node.push((NIL, false));
        for (k, &(_, kind, i)) in events.iter().enumerate() {
            ev.node.push((i, kind == 0));
            if kind == 0 {
                ev.call[i] = k + 1;
            } else {
                ev.ret[i] = k + 1;
            }
        }
        ev
    }

    fn unlink(&mut self, n: usize) {
        let (p, x) = (self.prev[n], self.next[n]);
        self.next[p] = x;
        if x != NIL {
            self.prev[x] = p;
        }
    }

    fn relink(&mut self, n: usize) {
        let (p, x) = (self.prev[n], self.next[n]);
        self.next[p] = n;
        if x != NIL {
            self.prev[x] = n;
        }
    }

    /// Takes operation `op`'s call and return out of the list.
    fn lift(&mut self, op: usize) {
        self.unlink(self.call[op]);
        self.unlink(self.ret[op]);
    }

    /// Puts back what [`Events::lift`] took out (in reverse order).
    fn unlift(&mut self, op: usize) {
        self.relink(self.ret[op]);
        self.relink(self.call[op]);
    }
}

/// Wing-Gong search with Lowe's cache of (linearized set, state) pairs
/// already explored, as porcupine's `checkSingle`.
fn search(key: Key, ops: &[KeyOp], max_steps: u64) -> Search {
    let mut ev = Events::new(ops);
    let mut state = State::initial(key);
    let mut linearized = BitSet::new(ops.len());
    let mut cache: HashSet<(BitSet, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    // The latest return event the search got stuck at.
    let mut stuck = HEAD;
    let mut steps = 0u64;
    let mut entry = ev.next[HEAD];
    while ev.next[HEAD] != NIL {
        steps += 1;
        if steps > max_steps {
            return Search::TimedOut;
        }
        // The list always ends with a return event, so the walk meets one
        // before running off the end; NIL is handled as a return anyway.
        let (op, is_call) = ev.node.get(entry).copied().unwrap_or((NIL, false));
        if is_call {
            if let Some(next_state) = ops[op].kind.step(&state) {
                let mut tried = linearized.clone();
                tried.set(op);
                if cache.insert((tried, next_state.clone())) {
                    stack.push((op, std::mem::replace(&mut state, next_state)));
                    linearized.set(op);
                    ev.lift(op);
                    entry = ev.next[HEAD];
                    continue;
                }
            }
            entry = ev.next[entry];
        } else {
            if entry != NIL {
                stuck = stuck.max(entry);
            }
            let Some((op, before)) = stack.pop() else {
                let unreached = ev.call.iter().map(|&c| c > stuck).collect();
                return Search::Violation { unreached };
            };
            state = before;
            linearized.clear(op);
            ev.unlift(op);
            entry = ev.next[ev.call[op]];
        }
    }
    Search::Linearizable
}

/// Cuts a failing sub-history down: first the reads invoked after the
/// search's last stuck point (they took no part), then reads by delta
/// debugging with every write kept, then writes the same way. Reads go
/// first because with all writes present a history of correct reads is
/// linearizable, so the read that was wrong can never be removed.
///
/// Writes are removed only while every remaining read still shows a state
/// that some order of the remaining writes passes through (checked by
/// letting the reads float over all time), if that held before: otherwise
/// a stale read would shrink to the read alone, seemingly showing owners
/// nobody added. The result still fails, but greedy removal on a property
/// that is not monotone is a heuristic: it is small, not always minimal.
fn shrink(key: Key, ops: &[KeyOp], unreached: &[bool], max_steps: u64) -> Vec<KeyOp> {
    let budget = Cell::new(SHRINK_CHECKS);
    let run = |trial: &[KeyOp]| {
        let left = budget.get();
        budget.set(left.saturating_sub(1));
        (left > 0).then(|| search(key, trial, max_steps))
    };
    let fails = |trial: &[KeyOp]| matches!(run(trial), Some(Search::Violation { .. }));
    let explained = |trial: &[KeyOp]| matches!(run(&floating_reads(trial)), Some(Search::Linearizable));
    // Sound without a check: the search never looked at those calls.
    let mut cur: Vec<KeyOp> = ops
        .iter()
        .zip(unreached)
        .filter(|(o, &late)| !(late && o.kind.is_read()))
        .map(|(o, _)| o.clone())
        .collect();
    ddmin(&mut cur, |o| o.kind.is_read(), &mut |t: &[KeyOp]| fails(t));
    let keep_explained = explained(&cur);
    ddmin(&mut cur, |o| !o.kind.is_read(), &mut |t: &[KeyOp]| {
        fails(t) && (!keep_explained || explained(t))
    });
    cur
}

/// `ops` with every read free to take effect at any time.
fn floating_reads(ops: &[KeyOp]) -> Vec<KeyOp> {
    ops.iter()
        .map(|o| {
            let mut o = o.clone();
            if o.kind.is_read() {
                o.invoke_ns = 0;
                o.complete_ns = u64::MAX;
            }
            o
        })
        .collect()
}

/// Delta debugging restricted to the operations `pick` selects: removes
/// chunks of them (halving the chunk size down to one) while the rest
/// still fails.
fn ddmin(cur: &mut Vec<KeyOp>, pick: impl Fn(&KeyOp) -> bool, fails: &mut impl FnMut(&[KeyOp]) -> bool) {
    let picked = |cur: &[KeyOp]| -> Vec<usize> { (0..cur.len()).filter(|&i| pick(&cur[i])).collect() };
    let mut chunk = picked(cur).len();
    while chunk > 0 {
        let mut start = 0;
        loop {
            let cands = picked(cur);
            if start >= cands.len() {
                break;
            }
            let drop: HashSet<usize> = cands[start..(start + chunk).min(cands.len())].iter().copied().collect();
            let trial: Vec<KeyOp> = (0..cur.len())
                .filter(|i| !drop.contains(i))
                .map(|i| cur[i].clone())
                .collect();
            if fails(&trial) {
                *cur = trial;
            } else {
                start += chunk;
            }
        }
        chunk /= 2;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::history::file_name;

    const STEPS: u64 = 10_000_000;

    fn op(client: u32, invoke_ns: u64, complete_ns: u64, call: Call, outcome: Outcome) -> Op {
        Op {
            client,
            invoke_ns,
            complete_ns,
            call,
            outcome,
        }
    }

    fn ok(ret: Ret) -> Outcome {
        Outcome::Ok(ret)
    }

    fn owners(peers: &[u32]) -> Ret {
        Ret::Owners(peers.iter().copied().collect())
    }

    fn own(file: u32, peer: u32) -> Call {
        Call::Own { file, peer }
    }

    fn get(file: u32) -> Call {
        Call::GetOwners { file }
    }

    fn verdict(h: &[Op]) -> Verdict {
        check(h, STEPS).result
    }

    #[track_caller]
    fn assert_linearizable(h: &[Op]) {
        let r = check(h, STEPS);
        assert_eq!(r.result, Verdict::Linearizable, "{r}");
    }

    /// The failing key's shrunk sub-history.
    #[track_caller]
    fn assert_violation(h: &[Op], on: Key) -> Vec<Op> {
        match check(h, STEPS).result {
            Verdict::NotLinearizable { key, ops } if key == on => ops,
            other => panic!("expected a violation on {on}, got {other:?}"),
        }
    }

    /// A read strictly after an acknowledged Own must see it.
    #[test]
    fn stale_read_is_refused() {
        let h = [
            op(1, 0, 10, own(0, 1), ok(Ret::Done)),
            op(2, 20, 30, own(0, 2), ok(Ret::Done)),
            op(3, 40, 50, get(0), ok(owners(&[1]))),
        ];
        let ops = assert_violation(&h, Key::File(0));
        assert!(ops.contains(&h[2]), "{ops:?}");
        // The same read concurrent with the second Own is fine.
        let mut h2 = h.clone();
        h2[2].invoke_ns = 25;
        assert_linearizable(&h2);
    }

    /// A name can be registered once, even by concurrent Registers.
    #[test]
    fn two_concurrent_registers_both_done_are_refused() {
        let h = [
            op(1, 0, 10, Call::Register { user: 0 }, ok(Ret::Done)),
            op(2, 5, 15, Call::Register { user: 0 }, ok(Ret::Done)),
        ];
        assert_eq!(assert_violation(&h, Key::User(0)).len(), 2);
    }

    /// An acknowledged Disown is not undone without a new Own (a doubled
    /// Own, e.g. a retried entry applied twice, would do that).
    #[test]
    fn owner_back_after_disown_is_refused() {
        let h = [
            op(1, 0, 10, own(0, 1), ok(Ret::Done)),
            op(1, 20, 30, Call::Disown { file: 0, peer: 1 }, ok(Ret::Done)),
            op(2, 40, 50, get(0), ok(owners(&[1]))),
        ];
        assert_violation(&h, Key::File(0));
    }

    /// Once Register is acknowledged, a good Login cannot be refused.
    #[test]
    fn login_refused_after_register_is_refused() {
        let h = [
            op(1, 0, 10, Call::Register { user: 3 }, ok(Ret::Done)),
            op(2, 20, 30, Call::Login { user: 3, good: true }, ok(Ret::BadCredentials)),
        ];
        assert_violation(&h, Key::User(3));
        // Concurrent with the Register it may come first.
        let mut h2 = h.clone();
        h2[1].invoke_ns = 10;
        assert_linearizable(&h2);
    }

    /// Concurrent operations that only fit in one order are accepted: the
    /// long Register must come first, the Own before the Disown.
    #[test]
    fn concurrent_ops_in_the_only_good_order_are_accepted() {
        let h = [
            op(1, 0, 100, Call::Register { user: 0 }, ok(Ret::Done)),
            op(2, 10, 20, Call::Register { user: 0 }, ok(Ret::UserExists)),
            op(3, 0, 100, own(0, 3), ok(Ret::Done)),
            op(4, 10, 20, get(0), ok(owners(&[3]))),
            op(3, 30, 40, Call::Disown { file: 0, peer: 3 }, ok(Ret::Done)),
            op(5, 5, 25, get(0), ok(Ret::UnknownFile)),
            op(6, 50, 60, get(0), ok(owners(&[]))),
            // Equal times are concurrent: this read may precede the Disown.
            op(7, 20, 30, get(0), ok(owners(&[3]))),
        ];
        assert_linearizable(&h);
    }

    /// An Own that timed out may have taken effect: a later read may see it.
    #[test]
    fn unknown_own_seen_later_is_accepted() {
        let h = [
            op(1, 0, 10, own(0, 1), Outcome::Unknown("timeout".into())),
            op(2, 20, 30, get(0), ok(owners(&[1]))),
            op(2, 40, 50, get(0), ok(owners(&[1]))),
        ];
        assert_linearizable(&h);
    }

    /// An Own that timed out may never take effect.
    #[test]
    fn unknown_own_never_seen_is_accepted() {
        let h = [
            op(1, 0, 10, own(0, 1), Outcome::Unknown("timeout".into())),
            op(2, 20, 30, get(0), ok(Ret::UnknownFile)),
            op(2, 40, 50, get(0), ok(Ret::UnknownFile)),
            op(3, 60, 70, Call::Register { user: 0 }, Outcome::Unknown("lost".into())),
        ];
        assert_linearizable(&h);
    }

    /// But once seen, its effect stays.
    #[test]
    fn unknown_own_seen_then_gone_is_refused() {
        let h = [
            op(1, 0, 10, own(0, 1), Outcome::Unknown("timeout".into())),
            op(2, 20, 30, get(0), ok(owners(&[1]))),
            op(2, 40, 50, get(0), ok(Ret::UnknownFile)),
        ];
        assert_violation(&h, Key::File(0));
    }

    /// Failed operations certainly did not happen.
    #[test]
    fn fail_ops_are_ignored() {
        let h = [
            op(1, 0, 10, own(0, 1), Outcome::Fail("not leader".into())),
            op(2, 20, 30, get(0), ok(Ret::UnknownFile)),
            op(2, 30, 40, get(1), Outcome::Fail("refused".into())),
        ];
        let r = check(&h, STEPS);
        assert_eq!(r.result, Verdict::Linearizable);
        assert_eq!((r.keys_checked, r.ops_checked), (1, 1));
        // A failed Own that was seen is a violation.
        let mut h2 = h.clone();
        h2[1].outcome = ok(owners(&[1]));
        assert_violation(&h2, Key::File(0));
    }

    /// A search count must be the owner count at some instant.
    #[test]
    fn search_count_no_owner_set_had_is_refused() {
        let search = |files: &[(u32, u32)]| {
            let call = Call::Search {
                text: "chaos-file-0".into(),
                files: vec![0, 1],
            };
            (call, ok(Ret::Files(files.to_vec())))
        };
        let (c, o) = search(&[(0, 3)]);
        let h = [
            op(1, 0, 10, own(0, 1), ok(Ret::Done)),
            op(2, 5, 15, own(0, 2), ok(Ret::Done)),
            op(3, 0, 20, c, o),
        ];
        assert_violation(&h, Key::File(0));
        // Counts 1 and 2 were both possible; file 1 is absent (never owned).
        for n in [1, 2] {
            let (c, o) = search(&[(0, n)]);
            let mut h2 = h.clone();
            h2[2] = op(3, 0, 20, c, o);
            assert_linearizable(&h2);
        }
        // A file with owners cannot be left out after its Own completed.
        let (c, o) = search(&[]);
        let mut h3 = h.clone();
        h3[2] = op(3, 30, 40, c, o);
        assert_violation(&h3, Key::File(0));
    }

    /// Answers a call cannot have are reported, naming the op.
    #[test]
    fn malformed_history_is_reported() {
        let h = [
            op(1, 0, 10, own(0, 1), ok(Ret::Done)),
            op(1, 20, 30, own(0, 1), ok(owners(&[1]))),
        ];
        match verdict(&h) {
            Verdict::Malformed { op, .. } => assert_eq!(op, h[1]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn describe_is_one_line() {
        let o = op(3, 1_000_000, 13_300_000, own(2, 3), ok(Ret::Done));
        assert_eq!(
            describe_from(&o, 1_000_000),
            "client 3 own(file 2, peer 3) -> done [0.0 ms .. 12.3 ms]"
        );
    }

    /// A history of a real linearizable registry: `clients` clients, each
    /// running `per_client` random operations one at a time, with random
    /// overlapping intervals; each takes effect at a random instant inside
    /// its interval. About 1 op in 300 times out (applied or not) and 1 in
    /// 100 fails (not applied).
    fn generate(
        seed: u64,
        clients: u32,
        per_client: u32,
        files: u32,
        users: u32,
    ) -> (Vec<Op>, Vec<Option<BTreeSet<u32>>>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let texts = ["chaos-file-0", "file-03", "-05", "chaos"];
        // (op, instant it takes effect, whether it takes effect)
        let mut planned = Vec::new();
        for client in 0..clients {
            let mut t: u64 = rng.gen_range(0..1_000_000);
            for _ in 0..per_client {
                let invoke_ns = t + rng.gen_range(0..3_000_000);
                let complete_ns = invoke_ns + rng.gen_range(50_000..2_000_000);
                t = complete_ns;
                let file = rng.gen_range(0..files);
                let user = rng.gen_range(0..users);
                let call = match rng.gen_range(0..100) {
                    0..=24 => own(file, client),
                    25..=39 => Call::Disown { file, peer: client },
                    40..=64 => get(file),
                    65..=74 => {
                        let text = texts[rng.gen_range(0..texts.len())];
                        let files = (0..files).filter(|&f| file_name(f).contains(text)).collect();
                        Call::Search {
                            text: text.into(),
                            files,
                        }
                    }
                    75..=84 => Call::Register { user },
                    _ => Call::Login {
                        user,
                        good: rng.gen_bool(0.7),
                    },
                };
                let (outcome, applied) = match rng.gen_range(0..300) {
                    0 => (Outcome::Unknown("timeout".into()), rng.gen_bool(0.5)),
                    1..=3 => (Outcome::Fail("refused".into()), false),
                    _ => (ok(Ret::Done), true),
                };
                let at = rng.gen_range(invoke_ns..=complete_ns);
                planned.push((op(client, invoke_ns, complete_ns, call, outcome), at, applied));
            }
        }
        planned.sort_by_key(|p| p.1);
        let mut exists = vec![false; users as usize];
        let mut reg: Vec<Option<BTreeSet<u32>>> = vec![None; files as usize];
        let mut history = Vec::new();
        for (mut o, _, applied) in planned {
            if applied {
                let ret = match &o.call {
                    Call::Register { user } => {
                        let e = &mut exists[*user as usize];
                        if std::mem::replace(e, true) {
                            Ret::UserExists
                        } else {
                            Ret::Done
                        }
                    }
                    Call::Login { user, good } => {
                        if *good && exists[*user as usize] {
                            Ret::Done
                        } else {
                            Ret::BadCredentials
                        }
                    }
                    Call::Own { file, peer } => {
                        reg[*file as usize].get_or_insert_with(BTreeSet::new).insert(*peer);
                        Ret::Done
                    }
                    Call::Disown { file, peer } => match &mut reg[*file as usize] {
                        Some(s) => {
                            s.remove(peer);
                            Ret::Done
                        }
                        None => Ret::UnknownFile,
                    },
                    Call::GetOwners { file } => match &reg[*file as usize] {
                        Some(s) => Ret::Owners(s.clone()),
                        None => Ret::UnknownFile,
                    },
                    Call::Search { files, .. } => Ret::Files(
                        files
                            .iter()
                            .filter_map(|&f| {
                                let s = reg[f as usize].as_ref()?;
                                // The live index may leave out files with no owner.
                                (!s.is_empty() || rng.gen_bool(0.5)).then_some((f, s.len() as u32))
                            })
                            .collect(),
                    ),
                    Call::Announce { .. } | Call::Heartbeat { .. } => Ret::Done,
                };
                if matches!(o.outcome, Outcome::Ok(_)) {
                    o.outcome = Outcome::Ok(ret);
                }
            }
            history.push(o);
        }
        history.sort_by_key(|o| o.invoke_ns);
        (history, reg)
    }

    /// A large history of a linearizable registry passes.
    #[test]
    fn large_linearizable_history_passes() {
        let (h, _) = generate(7, 64, 200, 8, 4);
        let r = check(&h, STEPS);
        assert_eq!(r.result, Verdict::Linearizable, "{r}");
        assert!(r.ops_checked > 12_000, "{r:?}");
    }

    /// The same history with one read corrupted fails, and the shrunk
    /// sub-history is small and holds the corrupted read.
    #[test]
    fn large_history_with_one_bad_read_fails_and_shrinks() {
        let (mut h, _) = generate(7, 64, 200, 8, 4);
        let (i, file) = h
            .iter()
            .enumerate()
            .skip(h.len() / 2)
            .find_map(|(i, o)| match (&o.call, &o.outcome) {
                (Call::GetOwners { file }, Outcome::Ok(Ret::Owners(_))) => Some((i, *file)),
                _ => None,
            })
            .unwrap();
        if let Outcome::Ok(Ret::Owners(s)) = &mut h[i].outcome {
            // A peer that never owned anything.
            s.insert(1000);
        }
        let ops = assert_violation(&h, Key::File(file));
        assert!(ops.contains(&h[i]), "{}", describe_history(&ops));
        assert!(ops.len() <= 3, "{}", describe_history(&ops));
    }

    /// A stale read at the end of a busy file shrinks to a few ops in
    /// which every read shows a state the writes kept pass through (so
    /// the report shows a stale read, not a read of owners nobody added).
    #[test]
    fn stale_read_in_a_busy_history_shrinks_to_its_cause() {
        let (mut h, reg) = generate(3, 8, 40, 1, 1);
        let t = h.iter().map(|o| o.complete_ns).max().unwrap_or(0) + 1_000;
        let stale = match &reg[0] {
            Some(s) => Ret::Owners(s.clone()),
            None => Ret::UnknownFile,
        };
        h.push(op(500, t + 10, t + 20, own(0, 500), ok(Ret::Done)));
        h.push(op(501, t + 30, t + 40, get(0), ok(stale)));
        let ops = assert_violation(&h, Key::File(0));
        let shown = describe_history(&ops);
        assert_eq!(ops.last(), h.last(), "{shown}");
        assert!(ops.len() < 20, "{shown}");
        let parts = model::partition(&ops).unwrap();
        let floating = floating_reads(&parts[&Key::File(0)]);
        assert_eq!(search(Key::File(0), &floating, STEPS), Search::Linearizable, "{shown}");
    }

    /// Running out of steps is a timeout, never a pass.
    #[test]
    fn exceeding_max_steps_times_out() {
        let (h, _) = generate(1, 8, 50, 2, 1);
        assert_eq!(check(&h, STEPS).result, Verdict::Linearizable);
        assert!(matches!(check(&h, 10).result, Verdict::TimedOut { .. }));
    }
}
