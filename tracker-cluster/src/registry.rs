//! The replicated state of the tracker as a plain deterministic value:
//! users, sessions, peers, files with their owners, and the client table
//! for exactly-once writes. The same sequence of [`Batch`]es gives the same
//! state on every member: nothing here reads a clock, a random source or
//! the environment; time comes in the batch (`now_ms`, stamped by the
//! leader when it proposed the batch).
//!
//! What this module does not own: liveness (soft state on the leader, see
//! `liveness`), password hashing (done on the leader before proposing),
//! persistence (the store serialises this value into snapshots).

use std::collections::HashMap;
use std::net::SocketAddr;

use protocol::{
    content::{chunk_count, MAX_CHUNK, MIN_CHUNK},
    ids::{check_file_name, check_user, ClientId, FileId, PeerId},
    tracker_api::{Answer, ApiError, FileMeta, PeerInfo, Reply, SearchHit, WriteId},
};
use serde::{Deserialize, Serialize};

/// How long a client's last answer is kept for retries.
pub const CLIENT_TTL_MS: u64 = 3_600_000;
/// How often expired sessions and clients are swept (in log time).
const PRUNE_EVERY_MS: u64 = 60_000;

/// BLAKE3 of a session token: the store never holds the token itself.
pub type TokenHash = [u8; 32];

pub fn token_hash(token: &str) -> TokenHash {
    *blake3::hash(token.as_bytes()).as_bytes()
}

/// One replicated state change, as decided on the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Op {
    /// `phc` is an argon2id PHC string computed on the leader.
    CreateUser {
        user: String,
        phc: String,
    },
    CreateSession {
        token: TokenHash,
        user: String,
        expires_ms: u64,
    },
    DeleteSession {
        token: TokenHash,
    },
    AnnouncePeer {
        token: TokenHash,
        peer: PeerId,
        addrs: Vec<SocketAddr>,
    },
    Own {
        token: TokenHash,
        peer: PeerId,
        file: FileMeta,
    },
    Disown {
        token: TokenHash,
        peer: PeerId,
        file: FileId,
    },
}

/// One client write: the op and, for exactly-once, its id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Write {
    pub id: Option<WriteId>,
    pub op: Op,
}

/// The payload of one Raft entry: many client writes committed together
/// (group commit), stamped with the leader's clock.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Batch {
    pub now_ms: u64,
    pub writes: Vec<Write>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    user: String,
    expires_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PeerRecord {
    user: String,
    addrs: Vec<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FileRecord {
    meta: FileMeta,
    owners: Vec<PeerId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ClientRecord {
    seq: u64,
    answer: Answer,
    at_ms: u64,
}

/// The serialisable part of the registry (what a snapshot holds).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Data {
    users: HashMap<String, String>,
    sessions: HashMap<TokenHash, Session>,
    peers: HashMap<PeerId, PeerRecord>,
    /// Files in registration order; the position is the search cursor.
    files: Vec<FileRecord>,
    clients: HashMap<ClientId, ClientRecord>,
    last_prune_ms: u64,
}

/// The tracker's replicated state with its derived indexes.
#[derive(Debug, Default)]
pub struct Registry {
    data: Data,
    /// File id -> position in `data.files` (derived).
    by_id: HashMap<FileId, u32>,
    /// Lower-case names for substring search (derived).
    names: NameIndex,
}

impl Registry {
    /// Applies one batch and returns one answer per write, in order.
    pub fn apply(&mut self, batch: &Batch) -> Vec<Answer> {
        let now = batch.now_ms;
        let answers = batch.writes.iter().map(|w| self.apply_write(now, w)).collect();
        if now.saturating_sub(self.data.last_prune_ms) >= PRUNE_EVERY_MS {
            self.prune(now);
        }
        answers
    }

    fn apply_write(&mut self, now: u64, w: &Write) -> Answer {
        if let Some(id) = w.id {
            if let Some(rec) = self.data.clients.get(&id.client) {
                if id.seq == rec.seq {
                    return rec.answer.clone();
                }
                if id.seq < rec.seq {
                    return Err(ApiError::StaleWrite {
                        seq: id.seq,
                        last: rec.seq,
                    });
                }
            }
        }
        let answer = self.apply_op(now, &w.op);
        if let Some(id) = w.id {
            self.data.clients.insert(
                id.client,
                ClientRecord {
                    seq: id.seq,
                    answer: answer.clone(),
                    at_ms: now,
                },
            );
        }
        answer
    }

    fn apply_op(&mut self, now: u64, op: &Op) -> Answer {
        match op {
            Op::CreateUser { user, phc } => {
                check_user(user)?;
                if self.data.users.contains_key(user) {
                    return Err(ApiError::UserExists(user.clone()));
                }
                self.data.users.insert(user.clone(), phc.clone());
                Ok(Reply::Registered { user: user.clone() })
            }
            Op::CreateSession {
                token,
                user,
                expires_ms,
            } => {
                if !self.data.users.contains_key(user) {
                    return Err(ApiError::BadCredentials);
                }
                self.data.sessions.insert(
                    *token,
                    Session {
                        user: user.clone(),
                        expires_ms: *expires_ms,
                    },
                );
                Ok(Reply::Done)
            }
            Op::DeleteSession { token } => {
                self.data.sessions.remove(token);
                Ok(Reply::Done)
            }
            Op::AnnouncePeer { token, peer, addrs } => {
                let user = self.session_user(token, now)?.to_owned();
                match self.data.peers.get_mut(peer) {
                    Some(rec) if rec.user != user => Err(ApiError::PeerOfOtherUser(*peer)),
                    Some(rec) => {
                        rec.addrs = addrs.clone();
                        Ok(Reply::Done)
                    }
                    None => {
                        self.data.peers.insert(
                            *peer,
                            PeerRecord {
                                user,
                                addrs: addrs.clone(),
                            },
                        );
                        Ok(Reply::Done)
                    }
                }
            }
            Op::Own { token, peer, file } => {
                self.check_peer(token, peer, now)?;
                check_meta(file)?;
                match self.by_id.get(&file.id) {
                    Some(&pos) => {
                        let rec = &mut self.data.files[pos as usize];
                        if rec.meta != *file {
                            return Err(ApiError::FileConflict(file.id));
                        }
                        if !rec.owners.contains(peer) {
                            rec.owners.push(*peer);
                        }
                    }
                    None => {
                        let pos = self.data.files.len() as u32;
                        self.names.push(&file.name);
                        self.by_id.insert(file.id, pos);
                        self.data.files.push(FileRecord {
                            meta: file.clone(),
                            owners: vec![*peer],
                        });
                    }
                }
                Ok(Reply::Done)
            }
            Op::Disown { token, peer, file } => {
                self.check_peer(token, peer, now)?;
                let pos = *self.by_id.get(file).ok_or(ApiError::UnknownFile(*file))?;
                self.data.files[pos as usize].owners.retain(|p| p != peer);
                Ok(Reply::Done)
            }
        }
    }

    fn check_peer(&self, token: &TokenHash, peer: &PeerId, now: u64) -> Result<(), ApiError> {
        let user = self.session_user(token, now)?;
        match self.data.peers.get(peer) {
            None => Err(ApiError::UnknownPeer(*peer)),
            Some(rec) if rec.user != user => Err(ApiError::PeerOfOtherUser(*peer)),
            Some(_) => Ok(()),
        }
    }

    fn prune(&mut self, now: u64) {
        self.data.sessions.retain(|_, s| s.expires_ms > now);
        self.data
            .clients
            .retain(|_, c| now.saturating_sub(c.at_ms) < CLIENT_TTL_MS);
        self.data.last_prune_ms = now;
    }

    /// The user of a live session.
    pub fn session_user(&self, token: &TokenHash, now_ms: u64) -> Result<&str, ApiError> {
        match self.data.sessions.get(token) {
            Some(s) if s.expires_ms > now_ms => Ok(&s.user),
            _ => Err(ApiError::NotLoggedIn),
        }
    }

    /// Checks that `peer` exists and belongs to the session's user.
    pub fn check_peer_session(&self, token: &TokenHash, peer: &PeerId, now_ms: u64) -> Result<(), ApiError> {
        self.check_peer(token, peer, now_ms)
    }

    /// The stored argon2id PHC string of a user.
    pub fn password_hash(&self, user: &str) -> Option<&str> {
        self.data.users.get(user).map(String::as_str)
    }

    /// Case-insensitive substring search from position `cursor`, at most
    /// `limit` hits; `next` is the cursor of the following page.
    pub fn search(
        &self,
        text: &str,
        cursor: u64,
        limit: u32,
        live: impl Fn(&PeerId) -> bool,
    ) -> (Vec<SearchHit>, Option<u64>) {
        let needle = text.to_lowercase();
        let mut hits = Vec::new();
        let mut next = None;
        let start = cursor.min(self.data.files.len() as u64) as usize;
        self.names.find(&needle, start, |pos| {
            if hits.len() == limit as usize {
                next = Some(pos as u64);
                return false;
            }
            let rec = &self.data.files[pos];
            let live_owners = rec.owners.iter().filter(|p| live(p)).count() as u32;
            hits.push(SearchHit {
                file: rec.meta.clone(),
                live_owners,
            });
            true
        });
        (hits, next)
    }

    /// A file's metadata and its owners that pass `live`, with addresses.
    pub fn owners(&self, file: &FileId, live: impl Fn(&PeerId) -> bool) -> Result<(FileMeta, Vec<PeerInfo>), ApiError> {
        let pos = *self.by_id.get(file).ok_or(ApiError::UnknownFile(*file))?;
        let rec = &self.data.files[pos as usize];
        let owners = rec
            .owners
            .iter()
            .filter(|p| live(p))
            .filter_map(|p| {
                self.data.peers.get(p).map(|r| PeerInfo {
                    peer_id: *p,
                    addrs: r.addrs.clone(),
                })
            })
            .collect();
        Ok((rec.meta.clone(), owners))
    }

    pub fn file_count(&self) -> usize {
        self.data.files.len()
    }

    pub fn peer_exists(&self, peer: &PeerId) -> bool {
        self.data.peers.contains_key(peer)
    }

    /// Serialises the replicated part (derived indexes are rebuilt on load).
    pub fn to_bytes(&self) -> Vec<u8> {
        protocol::codec::encode_body(&self.data).expect("registry encodes")
    }

    /// Loads a registry from [`Registry::to_bytes`] output.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, protocol::codec::CodecError> {
        let data: Data = protocol::codec::decode(bytes, usize::MAX)?;
        let mut reg = Registry {
            data,
            ..Default::default()
        };
        reg.by_id.reserve(reg.data.files.len());
        for (i, f) in reg.data.files.iter().enumerate() {
            reg.by_id.insert(f.meta.id, i as u32);
            reg.names.push(&f.meta.name);
        }
        Ok(reg)
    }

    /// A digest of the state that does not depend on hash-map order, so
    /// that two members' states can be compared.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        let mut feed = |bytes: Vec<u8>| {
            h.update(&(bytes.len() as u64).to_le_bytes());
            h.update(&bytes);
        };
        let enc = |v: &dyn erased::Enc| v.enc();
        let mut users: Vec<_> = self.data.users.iter().collect();
        users.sort();
        feed(enc(&users));
        let mut sessions: Vec<_> = self.data.sessions.iter().collect();
        sessions.sort_by_key(|(k, _)| **k);
        feed(enc(&sessions));
        let mut peers: Vec<_> = self.data.peers.iter().collect();
        peers.sort_by_key(|(k, _)| **k);
        feed(enc(&peers));
        feed(enc(&self.data.files));
        let mut clients: Vec<_> = self.data.clients.iter().collect();
        clients.sort_by_key(|(k, _)| **k);
        feed(enc(&clients));
        *h.finalize().as_bytes()
    }
}

/// A tiny helper so `digest` can encode values of different types.
mod erased {
    pub trait Enc {
        fn enc(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Enc for T {
        fn enc(&self) -> Vec<u8> {
            protocol::codec::encode_body(self).expect("encodes")
        }
    }
}

/// Checks file metadata proposed by a node.
pub fn check_meta(m: &FileMeta) -> Result<(), ApiError> {
    check_file_name(&m.name)?;
    if !(MIN_CHUNK..=MAX_CHUNK).contains(&m.chunk_size) {
        return Err(ApiError::Invalid(format!(
            "chunk size {} out of range {MIN_CHUNK}..={MAX_CHUNK}",
            m.chunk_size
        )));
    }
    if chunk_count(m.size, m.chunk_size) != m.chunk_count as u64 {
        return Err(ApiError::Invalid(format!(
            "chunk count {} does not match size {} and chunk size {}",
            m.chunk_count, m.size, m.chunk_size
        )));
    }
    Ok(())
}

/// Lower-cased names laid end to end, one `\n` after each, so that a
/// substring search is one SIMD scan over contiguous memory rather than a
/// million small ones. Names never contain `\n` (control characters are
/// refused), so a hit never spans two names.
#[derive(Debug, Default)]
struct NameIndex {
    text: Vec<u8>,
    /// Start offset of each name in `text`.
    starts: Vec<usize>,
}

impl NameIndex {
    fn push(&mut self, name: &str) {
        self.starts.push(self.text.len());
        self.text.extend_from_slice(name.to_lowercase().as_bytes());
        self.text.push(b'\n');
    }

    /// Calls `f` with the position of each name from `start` on that
    /// contains `needle`, until `f` returns false.
    fn find(&self, needle: &str, start: usize, mut f: impl FnMut(usize) -> bool) {
        if start >= self.starts.len() {
            return;
        }
        if needle.is_empty() {
            for pos in start..self.starts.len() {
                if !f(pos) {
                    return;
                }
            }
            return;
        }
        let finder = memchr::memmem::Finder::new(needle.as_bytes());
        let mut at = self.starts[start];
        while let Some(off) = finder.find(&self.text[at..]) {
            let hit = at + off;
            // The name holding byte `hit`: the last start <= hit.
            let pos = self.starts.partition_point(|&s| s <= hit) - 1;
            if !f(pos) {
                return;
            }
            match self.starts.get(pos + 1) {
                Some(&next) => at = next,
                None => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(name: &str, seed: u8) -> FileMeta {
        FileMeta {
            id: FileId([seed; 32]),
            name: name.into(),
            size: 100,
            chunk_size: MIN_CHUNK,
            chunk_count: 1,
        }
    }

    fn w(client: u128, seq: u64, op: Op) -> Write {
        Write {
            id: Some(WriteId { client, seq }),
            op,
        }
    }

    fn setup(reg: &mut Registry) -> TokenHash {
        let t = token_hash("tok");
        let peer = PeerId([9; 32]);
        let b = Batch {
            now_ms: 1000,
            writes: vec![
                w(
                    1,
                    1,
                    Op::CreateUser {
                        user: "alice".into(),
                        phc: "$argon2id$x".into(),
                    },
                ),
                Write {
                    id: None,
                    op: Op::CreateSession {
                        token: t,
                        user: "alice".into(),
                        expires_ms: 1_000_000,
                    },
                },
                w(
                    1,
                    2,
                    Op::AnnouncePeer {
                        token: t,
                        peer,
                        addrs: vec!["127.0.0.1:1".parse().unwrap()],
                    },
                ),
            ],
        };
        for a in reg.apply(&b) {
            a.unwrap();
        }
        t
    }

    /// The same log gives the same state, whatever happens around it.
    #[test]
    fn deterministic() {
        let mut a = Registry::default();
        let mut b = Registry::default();
        setup(&mut a);
        setup(&mut b);
        assert_eq!(a.digest(), b.digest());
        let c = Registry::from_bytes(&a.to_bytes()).unwrap();
        assert_eq!(a.digest(), c.digest());
    }

    /// A write retried with the same client id and sequence number is
    /// applied once and answered the same.
    #[test]
    fn exactly_once() {
        let mut reg = Registry::default();
        let t = setup(&mut reg);
        let peer = PeerId([9; 32]);
        let own = w(
            7,
            1,
            Op::Own {
                token: t,
                peer,
                file: meta("a.iso", 1),
            },
        );
        let first = reg.apply(&Batch {
            now_ms: 2000,
            writes: vec![own.clone()],
        });
        // Disown in between by another client, then the retry of `own`.
        reg.apply(&Batch {
            now_ms: 2001,
            writes: vec![w(
                8,
                1,
                Op::Disown {
                    token: t,
                    peer,
                    file: FileId([1; 32]),
                },
            )],
        });
        let again = reg.apply(&Batch {
            now_ms: 2002,
            writes: vec![own],
        });
        assert_eq!(first, again);
        // The retry did not re-add the owner.
        assert!(reg.owners(&FileId([1; 32]), |_| true).unwrap().1.is_empty());
        // An older sequence number is refused.
        let old = reg.apply(&Batch {
            now_ms: 2003,
            writes: vec![w(7, 0, Op::DeleteSession { token: t })],
        });
        assert!(matches!(old[0], Err(ApiError::StaleWrite { .. })));
    }

    #[test]
    fn sessions_expire_and_gate_writes() {
        let mut reg = Registry::default();
        let t = setup(&mut reg);
        let peer = PeerId([9; 32]);
        let late = reg.apply(&Batch {
            now_ms: 2_000_000,
            writes: vec![w(
                3,
                1,
                Op::Own {
                    token: t,
                    peer,
                    file: meta("x", 2),
                },
            )],
        });
        assert_eq!(late[0], Err(ApiError::NotLoggedIn));
        let unknown = reg.apply(&Batch {
            now_ms: 2000,
            writes: vec![w(
                3,
                2,
                Op::Own {
                    token: token_hash("nope"),
                    peer,
                    file: meta("x", 2),
                },
            )],
        });
        assert_eq!(unknown[0], Err(ApiError::NotLoggedIn));
    }

    #[test]
    fn search_is_case_insensitive_and_paginated() {
        let mut reg = Registry::default();
        let t = setup(&mut reg);
        let peer = PeerId([9; 32]);
        let names = ["Ubuntu.iso", "debian.ISO", "notes.txt", "ubuntu-server.iso", "readme"];
        let writes = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                w(
                    4,
                    i as u64 + 1,
                    Op::Own {
                        token: t,
                        peer,
                        file: meta(n, i as u8 + 10),
                    },
                )
            })
            .collect();
        for a in reg.apply(&Batch { now_ms: 3000, writes }) {
            a.unwrap();
        }
        let (hits, next) = reg.search("ISO", 0, 2, |_| true);
        assert_eq!(
            hits.iter().map(|h| h.file.name.as_str()).collect::<Vec<_>>(),
            ["Ubuntu.iso", "debian.ISO"]
        );
        assert_eq!(hits[0].live_owners, 1);
        let (hits2, next2) = reg.search("ISO", next.unwrap(), 2, |_| false);
        assert_eq!(hits2.len(), 1);
        assert_eq!(hits2[0].file.name, "ubuntu-server.iso");
        assert_eq!(hits2[0].live_owners, 0);
        assert_eq!(next2, None);
        assert_eq!(reg.search("", 0, 100, |_| true).0.len(), 5);
        assert!(reg.search("zzz", 0, 100, |_| true).0.is_empty());
    }

    #[test]
    fn bad_metadata_and_conflicts() {
        let mut reg = Registry::default();
        let t = setup(&mut reg);
        let peer = PeerId([9; 32]);
        let mut bad = meta("../etc/passwd", 3);
        let r = reg.apply(&Batch {
            now_ms: 4000,
            writes: vec![w(
                5,
                1,
                Op::Own {
                    token: t,
                    peer,
                    file: bad.clone(),
                },
            )],
        });
        assert!(matches!(r[0], Err(ApiError::InvalidName(_))));
        bad.name = "ok".into();
        bad.chunk_count = 9;
        let r = reg.apply(&Batch {
            now_ms: 4000,
            writes: vec![w(
                5,
                2,
                Op::Own {
                    token: t,
                    peer,
                    file: bad,
                },
            )],
        });
        assert!(matches!(r[0], Err(ApiError::Invalid(_))));
        reg.apply(&Batch {
            now_ms: 4000,
            writes: vec![w(
                5,
                3,
                Op::Own {
                    token: t,
                    peer,
                    file: meta("one", 4),
                },
            )],
        });
        let r = reg.apply(&Batch {
            now_ms: 4000,
            writes: vec![w(
                5,
                4,
                Op::Own {
                    token: t,
                    peer,
                    file: meta("two", 4),
                },
            )],
        });
        assert!(matches!(r[0], Err(ApiError::FileConflict(_))));
    }
}
