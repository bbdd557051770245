//! The sequential model of the registry, split by key (P-compositionality,
//! as porcupine and Knossos do): a history is linearizable if and only if
//! each key's sub-history is, so [`partition`] turns every recorded
//! [`Op`] into per-key [`KeyOp`]s and [`KeyOpKind::step`] is the
//! sequential specification of one key.
//!
//! Keys and their state:
//! - [`Key::User`]: whether the shared user name exists.
//! - [`Key::File`]: whether the file is registered, and its owning peers.
//!
//! What it deliberately leaves out:
//! - Announce and Heartbeat: liveness is soft state, not part of the model.
//! - Live-owner filtering: a search's count is checked against all owners,
//!   so the workload must keep its peers alive (heartbeats) while it runs.
//! - Multi-key atomicity of Search: a search is split into one read per key
//!   file, and each is checked on its own. That is a weakening: a search
//!   that saw file 1 before an Own and file 2 after another Own, in an
//!   order no single instant had, is accepted.
//! - Absent search hits: a file a search leaves out may be unregistered or
//!   have no owners, because the leader's live index (soft state, see
//!   `LiveIndex` in `tracker-cluster`) may drop files with no live owner.
//!
//! Outcomes: `Fail` ops certainly did not happen and are dropped. `Unknown`
//! ops may or may not have happened: their completion is taken as +infinity
//! and any answer is accepted, so a write whose effect is optional is
//! modelled by a step that always succeeds (it can be linearized at the
//! very end, where it affects nobody); an unknown read constrains nothing
//! and is dropped. Any definite answer the registry cannot give for that
//! call is a malformed history ([`Malformed`]).

use std::collections::{BTreeMap, BTreeSet};

use crate::history::{Call, Op, Outcome, Ret};

/// One independent piece of the registry's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// Shared user `k` (see [`crate::history::user_name`]).
    User(u32),
    /// File `k` of the key space (see [`crate::history::file_name`]).
    File(u32),
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::User(k) => write!(f, "user {k}"),
            Key::File(k) => write!(f, "file {k}"),
        }
    }
}

/// The state of one key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum State {
    User { exists: bool },
    File { registered: bool, owners: BTreeSet<u32> },
}

impl State {
    /// The state of `key` before any operation.
    pub fn initial(key: Key) -> State {
        match key {
            Key::User(_) => State::User { exists: false },
            Key::File(_) => State::File {
                registered: false,
                owners: BTreeSet::new(),
            },
        }
    }
}

/// What one operation does to (or requires of) one key, given its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOpKind {
    /// Register answered Done: the user did not exist and now does.
    RegisterNew,
    /// Register answered UserExists: the user existed.
    RegisterTaken,
    /// Register with an unknown outcome: the user exists afterwards,
    /// whatever it was before.
    RegisterMaybe,
    /// Login with the good password answered Done: the user exists.
    LoginOk,
    /// Login with the good password answered BadCredentials: no such user.
    LoginRefused,
    /// Own answered Done, or its outcome is unknown (the step always
    /// succeeds, so an unknown Own is optional in effect).
    Own { peer: u32 },
    /// Disown answered Done: the file is registered; `peer` no longer owns it.
    Disown { peer: u32 },
    /// Disown answered UnknownFile: the file is not registered.
    DisownUnknownFile,
    /// Disown with an unknown outcome: removes `peer` if the file exists.
    DisownMaybe { peer: u32 },
    /// GetOwners answered these owners: registered with exactly these.
    Owners(BTreeSet<u32>),
    /// GetOwners answered UnknownFile: not registered.
    OwnersUnknownFile,
    /// A search listed the file with this owner count.
    SearchCount(u32),
    /// A search that could list the file did not: not registered, or no
    /// owners.
    SearchAbsent,
}

impl KeyOpKind {
    /// The state after this step, or None if it cannot happen in `state`.
    pub fn step(&self, state: &State) -> Option<State> {
        use KeyOpKind as K;
        match (self, state) {
            (K::RegisterNew, State::User { exists: false }) => Some(State::User { exists: true }),
            (K::RegisterTaken | K::LoginOk, State::User { exists: true }) => Some(state.clone()),
            (K::LoginRefused, State::User { exists: false }) => Some(state.clone()),
            (K::RegisterMaybe, State::User { .. }) => Some(State::User { exists: true }),
            (K::Own { peer }, State::File { owners, .. }) => {
                let mut owners = owners.clone();
                owners.insert(*peer);
                Some(State::File {
                    registered: true,
                    owners,
                })
            }
            (
                K::Disown { peer } | K::DisownMaybe { peer },
                State::File {
                    registered: true,
                    owners,
                },
            ) => {
                let mut owners = owners.clone();
                owners.remove(peer);
                Some(State::File {
                    registered: true,
                    owners,
                })
            }
            (K::DisownMaybe { .. }, State::File { registered: false, .. }) => Some(state.clone()),
            (K::DisownUnknownFile | K::OwnersUnknownFile, State::File { registered: false, .. }) => Some(state.clone()),
            (
                K::Owners(want),
                State::File {
                    registered: true,
                    owners,
                },
            ) if owners == want => Some(state.clone()),
            (
                K::SearchCount(c),
                State::File {
                    registered: true,
                    owners,
                },
            ) if owners.len() == *c as usize => Some(state.clone()),
            (K::SearchAbsent, State::File { registered, owners }) if !registered || owners.is_empty() => {
                Some(state.clone())
            }
            _ => None,
        }
    }

    /// Whether the step never changes the state (only constrains it).
    pub fn is_read(&self) -> bool {
        use KeyOpKind as K;
        !matches!(
            self,
            K::RegisterNew | K::RegisterMaybe | K::Own { .. } | K::Disown { .. } | K::DisownMaybe { .. }
        )
    }
}

/// One operation's part on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyOp {
    /// Position of the operation in the history.
    pub index: usize,
    pub invoke_ns: u64,
    /// `u64::MAX` (never) for an operation whose outcome is unknown.
    pub complete_ns: u64,
    pub kind: KeyOpKind,
}

/// An answer the registry cannot give to that call, or impossible times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// Position of the operation in the history.
    pub index: usize,
    pub reason: String,
}

/// Each key's sub-history, in history order, or the first malformed op.
pub fn partition(history: &[Op]) -> Result<BTreeMap<Key, Vec<KeyOp>>, Malformed> {
    let mut keys: BTreeMap<Key, Vec<KeyOp>> = BTreeMap::new();
    for (index, op) in history.iter().enumerate() {
        let bad = |reason: String| Malformed { index, reason };
        if op.complete_ns < op.invoke_ns {
            return Err(bad("completed before it was invoked".into()));
        }
        let (ret, complete_ns) = match &op.outcome {
            Outcome::Fail(_) => continue,
            Outcome::Ok(ret) => (Some(ret), op.complete_ns),
            Outcome::Unknown(_) => (None, u64::MAX),
        };
        let mut push = |key: Key, kind: KeyOpKind| {
            keys.entry(key).or_default().push(KeyOp {
                index,
                invoke_ns: op.invoke_ns,
                complete_ns,
                kind,
            })
        };
        let unexpected = || bad(format!("{} cannot answer {ret:?}", op.call.kind()));
        use KeyOpKind as K;
        match (&op.call, ret) {
            (Call::Announce { .. } | Call::Heartbeat { .. }, _) => {}
            (Call::Register { user }, None) => push(Key::User(*user), K::RegisterMaybe),
            (Call::Register { user }, Some(Ret::Done)) => push(Key::User(*user), K::RegisterNew),
            (Call::Register { user }, Some(Ret::UserExists)) => push(Key::User(*user), K::RegisterTaken),
            (Call::Login { .. }, None) => {}
            (Call::Login { user, good: true }, Some(Ret::Done)) => push(Key::User(*user), K::LoginOk),
            (Call::Login { user, good: true }, Some(Ret::BadCredentials)) => push(Key::User(*user), K::LoginRefused),
            // A wrong password is always refused, whatever the state.
            (Call::Login { good: false, .. }, Some(Ret::BadCredentials)) => {}
            (Call::Login { good: false, .. }, Some(Ret::Done)) => {
                return Err(bad("login with a wrong password answered done".into()));
            }
            (Call::Own { file, peer }, None | Some(Ret::Done)) => push(Key::File(*file), K::Own { peer: *peer }),
            (Call::Disown { file, peer }, None) => push(Key::File(*file), K::DisownMaybe { peer: *peer }),
            (Call::Disown { file, peer }, Some(Ret::Done)) => push(Key::File(*file), K::Disown { peer: *peer }),
            (Call::Disown { file, .. }, Some(Ret::UnknownFile)) => push(Key::File(*file), K::DisownUnknownFile),
            (Call::GetOwners { .. } | Call::Search { .. }, None) => {}
            (Call::GetOwners { file }, Some(Ret::Owners(s))) => push(Key::File(*file), K::Owners(s.clone())),
            (Call::GetOwners { file }, Some(Ret::UnknownFile)) => push(Key::File(*file), K::OwnersUnknownFile),
            (Call::Search { files, .. }, Some(Ret::Files(found))) => {
                let mut counts = BTreeMap::new();
                for &(file, count) in found {
                    if !files.contains(&file) {
                        return Err(bad(format!("search found file {file}, whose name does not match")));
                    }
                    if counts.insert(file, count).is_some() {
                        return Err(bad(format!("search found file {file} twice")));
                    }
                }
                let wanted: BTreeSet<u32> = files.iter().copied().collect();
                for file in wanted {
                    let kind = match counts.get(&file) {
                        Some(&c) => K::SearchCount(c),
                        None => K::SearchAbsent,
                    };
                    push(Key::File(file), kind);
                }
            }
            _ => return Err(unexpected()),
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(call: Call, outcome: Outcome) -> Op {
        Op {
            client: 0,
            invoke_ns: 1,
            complete_ns: 2,
            call,
            outcome,
        }
    }

    /// A search is split into one read per matching file, present or not.
    #[test]
    fn search_splits_per_file() {
        let h = [op(
            Call::Search {
                text: "0".into(),
                files: vec![0, 1, 2],
            },
            Outcome::Ok(Ret::Files(vec![(1, 2)])),
        )];
        let p = partition(&h).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[&Key::File(0)][0].kind, KeyOpKind::SearchAbsent);
        assert_eq!(p[&Key::File(1)][0].kind, KeyOpKind::SearchCount(2));
    }

    /// Fail ops and unknown reads are dropped; unknown writes never complete.
    #[test]
    fn outcomes() {
        let h = [
            op(Call::Own { file: 0, peer: 1 }, Outcome::Fail("refused".into())),
            op(Call::GetOwners { file: 0 }, Outcome::Unknown("timeout".into())),
            op(Call::Own { file: 0, peer: 1 }, Outcome::Unknown("timeout".into())),
        ];
        let p = partition(&h).unwrap();
        let ops = &p[&Key::File(0)];
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].index, 2);
        assert_eq!(ops[0].complete_ns, u64::MAX);
    }

    /// An answer the call cannot have is reported with the op's position.
    #[test]
    fn malformed_answers() {
        let cases = [
            op(
                Call::Own { file: 0, peer: 1 },
                Outcome::Ok(Ret::Owners(BTreeSet::new())),
            ),
            op(Call::Login { user: 0, good: false }, Outcome::Ok(Ret::Done)),
            op(
                Call::Search {
                    text: "x".into(),
                    files: vec![0],
                },
                Outcome::Ok(Ret::Files(vec![(3, 1)])),
            ),
        ];
        for c in cases {
            assert_eq!(partition(&[c]).unwrap_err().index, 0);
        }
    }
}
