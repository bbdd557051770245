//! The replicated state of the tracker as a plain deterministic value:
//! users, sessions, peers, files with their owners, and the client table
//! for exactly-once writes. The same sequence of [`Batch`]es gives the same
//! state on every member: nothing here reads a clock, a random source or
//! the environment; time comes in the batch (`now_ms`, stamped by the
//! leader when it proposed the batch).
//!
//! Time is the replicated clock: the largest batch time applied so far
//! (`clock_ms`), so it never goes backwards whatever the clocks of
//! successive leaders say, and sessions and client records expire by it.
//!
//! What this module does not own: liveness (soft state on the leader, see
//! `liveness`), password hashing (done on the leader before proposing),
//! the snapshot file (`store::snapshot_file` frames and checksums the
//! records this module writes and reads, see [`Frozen`]).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::SocketAddr;

use crate::cow::{CowMap, Segments};

use protocol::codec::{FrameReader, FrameWriter};
use protocol::{
    config::Quotas,
    content::{chunk_count, MAX_CHUNK, MAX_TREE_ENTRIES, MIN_CHUNK},
    ids::{check_file_name, check_user, ClientId, ContentId, FileId, PeerId},
    tracker_api::{
        Answer, ApiError, FileMeta, PeerInfo, PooledItem, Reply, SearchHit, WriteId, MAX_OWN_MANY, MAX_POOLED_FILES,
        MAX_POOL_CONTENTS, MAX_POOL_FILES,
    },
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
    /// Many Owns as one write, all or nothing (`Request::OwnMany`).
    OwnMany {
        token: TokenHash,
        peer: PeerId,
        files: Vec<FileMeta>,
    },
    /// `file`, owned by `peer`, holds these contents (`Request::Pool`).
    Pool {
        token: TokenHash,
        peer: PeerId,
        file: FileId,
        contents: Vec<ContentId>,
    },
}

/// One client write: the op and, for exactly-once, its id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Write {
    pub id: Option<WriteId>,
    pub op: Op,
}

/// The payload of one Raft entry: many client writes committed together
/// (group commit), stamped with the leader's clock and quotas.
///
/// Why the quotas travel in the entry rather than being read from each
/// member's configuration at apply time, or checked only on the leader:
/// - A check on the leader before proposing is not enough: the writes of
///   one batch (and of batches in flight) are checked against a state that
///   does not yet hold each other, so a user could pass the quota by
///   sending many writes at once. The check must happen in `apply`, in log
///   order.
/// - In `apply`, the limit must be the same on every member and on every
///   replay, or members diverge (one accepts an Own another refuses). A
///   member's own file may differ (an operator raises the quota on one
///   member first), so the leader stamps its values into the entry, which
///   is replicated and replayed byte for byte. Changing the quota then
///   needs no coordinated restart: it takes effect from the next entry the
///   new leader proposes.
/// - Exactly-once holds: a retried write gets its stored answer (success or
///   the quota error) from the client table and is never re-checked against
///   a later limit.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Batch {
    pub now_ms: u64,
    pub writes: Vec<Write>,
    pub quotas: Quotas,
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
    /// Sorted by peer id (binary search; GetOwners pages resume after a
    /// peer id, which stays valid when owners before it leave).
    owners: Vec<PeerId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ClientRecord {
    seq: u64,
    answer: Answer,
    at_ms: u64,
}

/// The replicated part of the registry (what a snapshot holds), in
/// copy-on-write containers so that [`Registry::freeze`] is cheap.
#[derive(Debug, Clone, Default)]
struct Data {
    users: CowMap<String, String>,
    sessions: CowMap<TokenHash, Session>,
    peers: CowMap<PeerId, PeerRecord>,
    /// Files in registration order; the position is the search cursor.
    files: Segments<FileRecord>,
    clients: CowMap<ClientId, ClientRecord>,
    /// Content -> positions of the files holding it (ascending, at most
    /// [`MAX_POOL_FILES`]): the pooling index. Only files whose owners sent
    /// `Pool` appear, so a file without contents costs nothing here.
    pools: CowMap<ContentId, Vec<u32>>,
    last_prune_ms: u64,
    /// The replicated clock: the largest `now_ms` of the batches applied.
    clock_ms: u64,
}

/// The tracker's replicated state with its derived indexes.
#[derive(Debug, Default)]
pub struct Registry {
    data: Data,
    /// File id -> position in `data.files` (derived).
    by_id: ById,
    /// Lower-case names for substring search (derived).
    names: NameIndex,
    /// User -> peers announced (derived; quota).
    user_peers: HashMap<String, u64>,
    /// User -> ownership records over all its peers (derived; quota).
    user_owned: HashMap<String, u64>,
    /// File position -> contents the pooling index holds it under
    /// (derived; only pooled files have an entry).
    pool_counts: HashMap<u32, u32>,
}

impl Registry {
    /// Applies one batch and returns one answer per write, in order.
    pub fn apply(&mut self, batch: &Batch) -> Vec<Answer> {
        // A leader's clock may be behind the previous leader's: time as
        // the state machine sees it never goes backwards.
        let now = batch.now_ms.max(self.data.clock_ms);
        self.data.clock_ms = now;
        let answers = batch
            .writes
            .iter()
            .map(|w| self.apply_write(now, &batch.quotas, w))
            .collect();
        if now.saturating_sub(self.data.last_prune_ms) >= PRUNE_EVERY_MS {
            self.prune(now);
        }
        answers
    }

    fn apply_write(&mut self, now: u64, quotas: &Quotas, w: &Write) -> Answer {
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
        let answer = self.apply_op(now, quotas, &w.op);
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

    fn apply_op(&mut self, now: u64, quotas: &Quotas, op: &Op) -> Answer {
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
                        let count = self.user_peers.entry(user.clone()).or_default();
                        if *count >= quotas.max_peers_per_user {
                            return Err(ApiError::Quota {
                                what: "peers".into(),
                                limit: quotas.max_peers_per_user,
                            });
                        }
                        *count += 1;
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
                let user = self.check_peer(token, peer, now)?.to_owned();
                check_meta(file)?;
                let slot = match self.by_id.get(&self.data.files, &file.id) {
                    Some(pos) => {
                        let rec = &self.data.files[pos as usize];
                        if rec.meta != *file {
                            return Err(ApiError::FileConflict(file.id));
                        }
                        match rec.owners.binary_search(peer) {
                            Ok(_) => return Ok(Reply::Done),
                            Err(at) => Some((pos, at)),
                        }
                    }
                    None => None,
                };
                let owned = self.user_owned.entry(user).or_default();
                if *owned >= quotas.max_files_per_user {
                    return Err(ApiError::Quota {
                        what: "files".into(),
                        limit: quotas.max_files_per_user,
                    });
                }
                *owned += 1;
                match slot {
                    Some((pos, at)) => self.file_mut(pos).owners.insert(at, *peer),
                    None => self.push_file(file.clone(), *peer),
                }
                Ok(Reply::Done)
            }
            Op::Disown { token, peer, file } => {
                let user = self.check_peer(token, peer, now)?.to_owned();
                let pos = self
                    .by_id
                    .get(&self.data.files, file)
                    .ok_or(ApiError::UnknownFile(*file))?;
                if let Ok(at) = self.data.files[pos as usize].owners.binary_search(peer) {
                    self.file_mut(pos).owners.remove(at);
                    if let Some(n) = self.user_owned.get_mut(&user) {
                        *n = n.saturating_sub(1);
                    }
                }
                Ok(Reply::Done)
            }
            Op::OwnMany { token, peer, files } => self.own_many(now, quotas, token, peer, files),
            Op::Pool {
                token,
                peer,
                file,
                contents,
            } => self.pool(now, token, peer, file, contents),
        }
    }

    /// [`Op::Pool`]: records that `file` holds `contents`. Only an owner of
    /// the file may say so (the tracker cannot check the claim; a
    /// downloader checks it against the file's manifest before using it).
    /// A content keeps at most [`MAX_POOL_FILES`] files: when full, a new
    /// file takes the place of the one with the fewest owners (the newest
    /// of those) if it has more owners than that one, so files nobody else
    /// owns cannot crowd out a popular one for good. A file is held under
    /// at most as many contents as it can have ([`pool_cap`]: one for a
    /// single file), over all its Pool requests, so repeated requests
    /// cannot grow the index. Idempotent.
    fn pool(&mut self, now: u64, token: &TokenHash, peer: &PeerId, file: &FileId, contents: &[ContentId]) -> Answer {
        self.check_peer(token, peer, now)?;
        check_pool_contents(contents.len())?;
        let pos = self
            .by_id
            .get(&self.data.files, file)
            .ok_or(ApiError::UnknownFile(*file))?;
        let files = &self.data.files;
        let rec = &files[pos as usize];
        if rec.owners.binary_search(peer).is_err() {
            return Err(ApiError::Invalid(format!(
                "peer {peer} does not own file {file}: only an owner may pool it (Own it first)"
            )));
        }
        let mut distinct = contents.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let held = |c: &ContentId| self.data.pools.get(c).is_some_and(|l| l.binary_search(&pos).is_ok());
        let new = distinct.iter().filter(|c| !held(c)).count();
        let recorded = self.pool_counts.get(&pos).copied().unwrap_or(0) as usize;
        let cap = pool_cap(&rec.meta);
        if recorded + new > cap {
            return Err(ApiError::Invalid(format!(
                "file {file} can hold at most {cap} contents ({recorded} recorded, {new} new)"
            )));
        }
        let owners = |p: u32| files[p as usize].owners.len();
        let counts = &mut self.pool_counts;
        for c in &distinct {
            let Some(list) = self.data.pools.get_mut(c) else {
                self.data.pools.insert(*c, vec![pos]);
                *counts.entry(pos).or_default() += 1;
                continue;
            };
            let Err(at) = list.binary_search(&pos) else {
                continue;
            };
            if list.len() < MAX_POOL_FILES {
                list.insert(at, pos);
                *counts.entry(pos).or_default() += 1;
                continue;
            }
            let (weakest, &wpos) = list
                .iter()
                .enumerate()
                .min_by_key(|&(_, &p)| (owners(p), std::cmp::Reverse(p)))
                .expect("a full list");
            if owners(wpos) < owners(pos) {
                list.remove(weakest);
                let at = list.binary_search(&pos).unwrap_err();
                list.insert(at, pos);
                *counts.entry(pos).or_default() += 1;
                if let Some(n) = counts.get_mut(&wpos) {
                    *n -= 1;
                    if *n == 0 {
                        counts.remove(&wpos);
                    }
                }
            }
        }
        Ok(Reply::Done)
    }

    /// [`Op::OwnMany`]: every file is checked first (metadata, a conflict
    /// with a registered file or with another file of the request, the
    /// quota for all the files the peer does not own yet); only then is
    /// anything changed, so a refused request leaves no trace. Files the
    /// peer owns already (or that the request lists twice) count as done,
    /// as with Own; the answer counts the files newly owned.
    fn own_many(&mut self, now: u64, quotas: &Quotas, token: &TokenHash, peer: &PeerId, files: &[FileMeta]) -> Answer {
        let user = self.check_peer(token, peer, now)?.to_owned();
        if files.is_empty() || files.len() > MAX_OWN_MANY {
            return Err(ApiError::Invalid(format!(
                "{} files in one request, 1 to {MAX_OWN_MANY} allowed",
                files.len()
            )));
        }
        let mut seen: HashMap<FileId, &FileMeta> = HashMap::with_capacity(files.len());
        let mut new = 0u64;
        for (i, f) in files.iter().enumerate() {
            check_meta(f).map_err(|e| ApiError::Invalid(format!("file {i} ({}): {e}", f.id)))?;
            if let Some(first) = seen.insert(f.id, f) {
                if first != f {
                    return Err(ApiError::FileConflict(f.id));
                }
                continue;
            }
            match self.by_id.get(&self.data.files, &f.id) {
                Some(pos) => {
                    let rec = &self.data.files[pos as usize];
                    if rec.meta != *f {
                        return Err(ApiError::FileConflict(f.id));
                    }
                    new += u64::from(rec.owners.binary_search(peer).is_err());
                }
                None => new += 1,
            }
        }
        let owned = self.user_owned.entry(user).or_default();
        if *owned + new > quotas.max_files_per_user {
            return Err(ApiError::Quota {
                what: "files".into(),
                limit: quotas.max_files_per_user,
            });
        }
        *owned += new;
        for f in files {
            match self.by_id.get(&self.data.files, &f.id) {
                Some(pos) => {
                    if let Err(at) = self.data.files[pos as usize].owners.binary_search(peer) {
                        self.file_mut(pos).owners.insert(at, *peer);
                    }
                }
                None => self.push_file(f.clone(), *peer),
            }
        }
        Ok(Reply::Owned {
            newly_owned: new as u32,
        })
    }

    /// The session's user, if `peer` exists and belongs to it.
    fn check_peer(&self, token: &TokenHash, peer: &PeerId, now: u64) -> Result<&str, ApiError> {
        let user = self.session_user(token, now)?;
        match self.data.peers.get(peer) {
            None => Err(ApiError::UnknownPeer(*peer)),
            Some(rec) if rec.user != user => Err(ApiError::PeerOfOtherUser(*peer)),
            Some(_) => Ok(user),
        }
    }

    fn prune(&mut self, now: u64) {
        self.data.sessions.retain(|_, s| s.expires_ms > now);
        self.data
            .clients
            .retain(|_, c| now.saturating_sub(c.at_ms) < CLIENT_TTL_MS);
        self.data.last_prune_ms = now;
    }

    /// Registers a file not known yet, owned by `peer`.
    fn push_file(&mut self, meta: FileMeta, peer: PeerId) {
        let pos = self.data.files.len() as u32;
        self.names.push(&meta.name);
        self.data.files.push(FileRecord {
            meta,
            owners: vec![peer],
        });
        let added = self.by_id.insert(&self.data.files, pos);
        debug_assert!(added, "push_file of a known file");
    }

    fn file_mut(&mut self, pos: u32) -> &mut FileRecord {
        self.data
            .files
            .get_mut(pos as usize)
            .expect("file positions come from by_id")
    }

    /// The replicated clock: the time of the latest batch applied, never
    /// decreasing.
    pub fn clock_ms(&self) -> u64 {
        self.data.clock_ms
    }

    /// The time to judge expiry by for a read served now: the local clock,
    /// but never earlier than the replicated clock (a leader whose clock is
    /// behind must not bring back a session the log has seen expire).
    pub fn now_ms(&self, local_ms: u64) -> u64 {
        local_ms.max(self.data.clock_ms)
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
        self.check_peer(token, peer, now_ms).map(|_| ())
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
        self.search_with(text, cursor, limit, live, None)
    }

    /// [`Registry::search`], but files below `index.upto` are looked up in
    /// the leader's [`LiveIndex`] (which leaves out files whose owners are
    /// all long gone, so they cost nothing), plus the files revived since
    /// it was built; files registered after it was built are scanned in
    /// full. Positions (and so cursors) are the same with or without it.
    pub fn search_with(
        &self,
        text: &str,
        cursor: u64,
        limit: u32,
        live: impl Fn(&PeerId) -> bool,
        index: Option<&LiveIndex>,
    ) -> (Vec<SearchHit>, Option<u64>) {
        let needle = text.to_lowercase();
        let want = limit as usize + 1;
        let start = cursor.min(self.data.files.len() as u64) as usize;
        // Up to `want` matching positions, ascending.
        let mut positions = Vec::new();
        let mut tail_from = start;
        if let Some(ix) = index.filter(|ix| ix.upto <= self.data.files.len()) {
            tail_from = start.max(ix.upto);
            if start < ix.upto {
                let first = ix.positions.partition_point(|&p| (p as usize) < start);
                let mut a = Vec::new();
                ix.names.find(&needle, first, |k| {
                    a.push(ix.positions[k] as usize);
                    a.len() < want
                });
                let b: Vec<usize> = ix
                    .revived
                    .range(start as u32..ix.upto as u32)
                    .map(|&p| p as usize)
                    .filter(|&p| self.names.contains(p, &needle))
                    .take(want)
                    .collect();
                positions = merge_sorted(a, b);
                positions.truncate(want);
            }
        }
        if positions.len() < want {
            self.names.find(&needle, tail_from, |pos| {
                positions.push(pos);
                positions.len() < want
            });
        }
        let next = (positions.len() == want).then(|| positions[limit as usize] as u64);
        positions.truncate(limit as usize);
        let hits = positions
            .into_iter()
            .map(|pos| {
                let rec = &self.data.files[pos];
                SearchHit {
                    file: rec.meta.clone(),
                    live_owners: rec.owners.iter().filter(|p| live(p)).count() as u32,
                    // Soft state of the leader, filled in by the API.
                    partial_owners: 0,
                }
            })
            .collect();
        (hits, next)
    }

    /// Builds the leader's index of files with at least one owner for
    /// which `recent` holds (seen within the dead-file window).
    pub fn build_live_index(&self, recent: impl Fn(&PeerId) -> bool) -> LiveIndex {
        let mut ix = LiveIndex {
            upto: self.data.files.len(),
            ..Default::default()
        };
        for (pos, rec) in self.data.files.iter().enumerate() {
            if rec.owners.iter().any(&recent) {
                ix.positions.push(pos as u32);
                ix.names.push_lower(self.names.name(pos));
            }
        }
        ix
    }

    /// The metadata of a registered file.
    pub fn file_meta(&self, file: &FileId) -> Option<&FileMeta> {
        self.by_id
            .get(&self.data.files, file)
            .map(|pos| &self.data.files[pos as usize].meta)
    }

    /// The addresses a peer announced.
    pub fn peer_addrs(&self, peer: &PeerId) -> Option<&[SocketAddr]> {
        self.data.peers.get(peer).map(|r| r.addrs.as_slice())
    }

    /// The position of a file (for [`LiveIndex::revive`]).
    pub fn position(&self, file: &FileId) -> Option<u32> {
        self.by_id.get(&self.data.files, file)
    }

    /// The items holding any of `contents` (in the order asked, each item
    /// once, at most [`MAX_POOLED_FILES`]), each with at most `limit` owners
    /// that pass `live` (at most [`OWNERS_SCAN`] looked at per item); items
    /// without a live owner are left out.
    pub fn pooled(&self, contents: &[ContentId], limit: u32, live: impl Fn(&PeerId) -> bool) -> Vec<PooledItem> {
        let mut seen = std::collections::HashSet::new();
        let mut items = Vec::new();
        for pos in contents.iter().filter_map(|c| self.data.pools.get(c)).flatten() {
            if items.len() == MAX_POOLED_FILES {
                break;
            }
            if !seen.insert(*pos) {
                continue;
            }
            let Some(rec) = self.data.files.get(*pos as usize) else {
                continue;
            };
            let owners: Vec<PeerInfo> = rec
                .owners
                .iter()
                .take(OWNERS_SCAN)
                .filter(|p| live(p))
                .filter_map(|p| {
                    let r = self.data.peers.get(p)?;
                    Some(PeerInfo {
                        peer_id: *p,
                        addrs: r.addrs.clone(),
                    })
                })
                .take(limit as usize)
                .collect();
            if !owners.is_empty() {
                items.push(PooledItem {
                    file: rec.meta.clone(),
                    owners,
                });
            }
        }
        items
    }

    /// All owners of a file, with addresses.
    pub fn owners(&self, file: &FileId, live: impl Fn(&PeerId) -> bool) -> Result<(FileMeta, Vec<PeerInfo>), ApiError> {
        let (meta, owners, _) = self.owners_page(file, None, u32::MAX, live)?;
        Ok((meta, owners))
    }

    /// One page of a file's owners that pass `live`, in peer-id order,
    /// starting after `after`; at most `limit` owners, and at most
    /// [`OWNERS_SCAN`] owners looked at, so a page costs a bounded time
    /// even when most owners are not live. `next` is the `after` of the
    /// following page (None at the end).
    pub fn owners_page(
        &self,
        file: &FileId,
        after: Option<PeerId>,
        limit: u32,
        live: impl Fn(&PeerId) -> bool,
    ) -> Result<(FileMeta, Vec<PeerInfo>, Option<PeerId>), ApiError> {
        let pos = self
            .by_id
            .get(&self.data.files, file)
            .ok_or(ApiError::UnknownFile(*file))?;
        let rec = &self.data.files[pos as usize];
        let from = match after {
            None => 0,
            Some(a) => rec.owners.partition_point(|p| *p <= a),
        };
        let budget = (limit as usize).max(OWNERS_SCAN);
        let mut owners = Vec::new();
        let mut next = None;
        for (i, p) in rec.owners[from..].iter().enumerate() {
            if owners.len() == limit as usize || i == budget {
                // Resume after the last one looked at.
                next = Some(rec.owners[from + i - 1]);
                break;
            }
            if !live(p) {
                continue;
            }
            if let Some(r) = self.data.peers.get(p) {
                owners.push(PeerInfo {
                    peer_id: *p,
                    addrs: r.addrs.clone(),
                });
            }
        }
        Ok((rec.meta.clone(), owners, next))
    }

    /// The sizes shown in status and metrics (`live_peers` is the
    /// leader's to fill in). Owners are summed over users: a few
    /// thousand additions, not a walk over the files.
    pub fn counts(&self) -> protocol::tracker_api::RegistryCounts {
        protocol::tracker_api::RegistryCounts {
            users: self.data.users.len() as u64,
            sessions: self.data.sessions.len() as u64,
            files: self.data.files.len() as u64,
            owners: self.user_owned.values().sum(),
            peers: self.data.peers.len() as u64,
            live_peers: None,
        }
    }

    pub fn file_count(&self) -> usize {
        self.data.files.len()
    }

    pub fn peer_exists(&self, peer: &PeerId) -> bool {
        self.data.peers.contains_key(peer)
    }

    /// A consistent view of the replicated part as of now, for a snapshot
    /// to write while `apply` goes on (a clone of the copy-on-write
    /// containers: microseconds, whatever the size).
    pub fn freeze(&self) -> Frozen {
        Frozen(self.data.clone())
    }

    /// Serialises the replicated part into one buffer (tests, benches; the
    /// store streams [`Frozen::write_to`] to its file instead).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = FrameWriter::new(Vec::new(), RECORD_LIMIT);
        self.freeze().write_to(&mut w).expect("writing to memory");
        w.into_inner()
    }

    /// Loads a registry from [`Registry::to_bytes`] output.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let mut r = FrameReader::new(bytes);
        let reg = Registry::read_from(&mut r)?;
        if !r.into_inner().is_empty() {
            return Err(SnapshotError::Invalid("bytes after the end record".into()));
        }
        Ok(reg)
    }

    /// Reads the records [`Frozen::write_to`] wrote, up to and including
    /// its end record, checking counts and duplicates, and builds the
    /// derived indexes. Memory: the registry plus one record.
    pub fn read_from<R: std::io::Read>(r: &mut FrameReader<R>) -> Result<Self, SnapshotError> {
        let head = match r.read(RECORD_LIMIT)? {
            Record::Head(h) => h,
            _ => {
                return Err(SnapshotError::Invalid(
                    "the registry does not start with its head record".into(),
                ))
            }
        };
        let mut data = Data {
            last_prune_ms: head.last_prune_ms,
            clock_ms: head.clock_ms,
            ..Default::default()
        };
        let dup = |what: &str| SnapshotError::Invalid(format!("duplicate {what}"));
        loop {
            match r.read(RECORD_LIMIT)? {
                Record::Head(_) => return Err(SnapshotError::Invalid("a second head record".into())),
                Record::User(u, phc) => {
                    if data.users.insert(u, phc).is_some() {
                        return Err(dup("user"));
                    }
                }
                Record::Session(t, sess) => {
                    if data.sessions.insert(t, sess).is_some() {
                        return Err(dup("session"));
                    }
                }
                Record::Peer(p, rec) => {
                    if data.peers.insert(p, rec).is_some() {
                        return Err(dup("peer"));
                    }
                }
                Record::File(meta, owners) => data.files.push(FileRecord { meta, owners }),
                Record::Owners(more) => match data.files.len().checked_sub(1) {
                    Some(last) => data.files.get_mut(last).expect("last file").owners.extend(more),
                    None => return Err(SnapshotError::Invalid("owners before any file".into())),
                },
                Record::Client(c, rec) => {
                    if data.clients.insert(c, rec).is_some() {
                        return Err(dup("client"));
                    }
                }
                Record::Pool(c, files) => {
                    if data.pools.insert(c, files).is_some() {
                        return Err(dup("content"));
                    }
                }
                Record::End => break,
            }
        }
        let counts = Counts::of(&data);
        if counts != head.counts {
            return Err(SnapshotError::Invalid(format!(
                "the head announces {:?} but the records hold {counts:?}",
                head.counts
            )));
        }
        Registry::index(data)
    }

    /// Builds the derived indexes of `data`.
    fn index(data: Data) -> Result<Self, SnapshotError> {
        let mut reg = Registry {
            data,
            ..Default::default()
        };
        for (i, f) in reg.data.files.iter().enumerate() {
            if !f.owners.windows(2).all(|w| w[0] < w[1]) {
                return Err(SnapshotError::Invalid(format!(
                    "owners of file {} not sorted",
                    f.meta.id
                )));
            }
            if !reg.by_id.insert(&reg.data.files, i as u32) {
                return Err(SnapshotError::Invalid(format!("file {} registered twice", f.meta.id)));
            }
            reg.names.push(&f.meta.name);
        }
        let files = reg.data.files.len();
        for (c, list) in reg.data.pools.iter() {
            let sorted = list.windows(2).all(|w| w[0] < w[1]);
            let in_range = list.last().is_some_and(|&p| (p as usize) < files);
            if !sorted || !in_range || list.len() > MAX_POOL_FILES {
                return Err(SnapshotError::Invalid(format!(
                    "content {c}: files {list:?} not 1 to {MAX_POOL_FILES} ascending positions of the {files} files"
                )));
            }
            for &p in list {
                *reg.pool_counts.entry(p).or_default() += 1;
            }
        }
        for p in reg.data.peers.values() {
            *reg.user_peers.entry(p.user.clone()).or_default() += 1;
        }
        for f in reg.data.files.iter() {
            for o in &f.owners {
                if let Some(p) = reg.data.peers.get(o) {
                    *reg.user_owned.entry(p.user.clone()).or_default() += 1;
                }
            }
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
        feed(enc(&self.data.files.iter().collect::<Vec<_>>()));
        let mut clients: Vec<_> = self.data.clients.iter().collect();
        clients.sort_by_key(|(k, _)| **k);
        feed(enc(&clients));
        // Only when there is an index, so the digest of a state without one
        // is what it was before pooling existed.
        if !self.data.pools.is_empty() {
            let mut pools: Vec<_> = self.data.pools.iter().collect();
            pools.sort_by_key(|(k, _)| **k);
            feed(enc(&pools));
        }
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

/// Most bytes one snapshot record may take.
pub const RECORD_LIMIT: usize = 1 << 20;
/// Owners per file record: a file with more owners continues in
/// [`Record::Owners`] records, so no record passes [`RECORD_LIMIT`].
const OWNERS_PER_RECORD: usize = 16_384;

/// Why a registry could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Codec(#[from] protocol::codec::CodecError),
    #[error("{0}")]
    Invalid(String),
}

/// How many of each the registry holds (the head record's check).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Counts {
    users: u64,
    sessions: u64,
    peers: u64,
    files: u64,
    clients: u64,
}

impl Counts {
    fn of(d: &Data) -> Self {
        Counts {
            users: d.users.len() as u64,
            sessions: d.sessions.len() as u64,
            peers: d.peers.len() as u64,
            files: d.files.len() as u64,
            clients: d.clients.len() as u64,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Head {
    clock_ms: u64,
    last_prune_ms: u64,
    counts: Counts,
}

/// One snapshot record, as read. [`RecordRef`] is the same layout written
/// from borrowed values (bincode encodes `&str` as `String` and `&[T]` as
/// `Vec<T>`), so writing copies nothing.
#[derive(Deserialize)]
enum Record {
    Head(Head),
    User(String, String),
    Session(TokenHash, Session),
    Peer(PeerId, PeerRecord),
    File(FileMeta, Vec<PeerId>),
    Owners(Vec<PeerId>),
    Client(ClientId, ClientRecord),
    End,
    /// A content and the positions of the files holding it (after `End`
    /// in the enum so earlier record kinds keep their tags; written before
    /// the end record).
    Pool(ContentId, Vec<u32>),
}

#[derive(Serialize)]
enum RecordRef<'a> {
    Head(Head),
    User(&'a str, &'a str),
    Session(&'a TokenHash, &'a Session),
    Peer(&'a PeerId, &'a PeerRecord),
    File(&'a FileMeta, &'a [PeerId]),
    Owners(&'a [PeerId]),
    Client(&'a ClientId, &'a ClientRecord),
    End,
    Pool(&'a ContentId, &'a [u32]),
}

/// A frozen view of the replicated state ([`Registry::freeze`]).
pub struct Frozen(Data);

impl Frozen {
    /// Writes the state as a sequence of records, each at most
    /// [`RECORD_LIMIT`] bytes, ending with an end record.
    pub fn write_to<W: std::io::Write>(&self, w: &mut FrameWriter<W>) -> Result<(), protocol::codec::CodecError> {
        let d = &self.0;
        w.write(&RecordRef::Head(Head {
            clock_ms: d.clock_ms,
            last_prune_ms: d.last_prune_ms,
            counts: Counts::of(d),
        }))?;
        for (u, phc) in d.users.iter() {
            w.write(&RecordRef::User(u, phc))?;
        }
        for (t, sess) in d.sessions.iter() {
            w.write(&RecordRef::Session(t, sess))?;
        }
        for (p, rec) in d.peers.iter() {
            w.write(&RecordRef::Peer(p, rec))?;
        }
        for f in d.files.iter() {
            let mut parts = f.owners.chunks(OWNERS_PER_RECORD);
            w.write(&RecordRef::File(&f.meta, parts.next().unwrap_or_default()))?;
            for more in parts {
                w.write(&RecordRef::Owners(more))?;
            }
        }
        for (c, rec) in d.clients.iter() {
            w.write(&RecordRef::Client(c, rec))?;
        }
        for (c, files) in d.pools.iter() {
            w.write(&RecordRef::Pool(c, files))?;
        }
        w.write(&RecordRef::End)
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
    let least = chunk_count(m.size, m.chunk_size);
    let fits = if m.files == 0 {
        least == m.chunk_count as u64
    } else {
        m.files as usize <= MAX_TREE_ENTRIES && (least..=least + m.files as u64).contains(&(m.chunk_count as u64))
    };
    if !fits {
        return Err(ApiError::Invalid(format!(
            "chunk count {} does not match size {} and chunk size {} ({} files)",
            m.chunk_count, m.size, m.chunk_size, m.files
        )));
    }
    Ok(())
}

/// Most contents a file can be pooled under: one for a single file; for a
/// folder, its file count, at most [`MAX_POOL_CONTENTS`].
pub fn pool_cap(m: &FileMeta) -> usize {
    (m.files.max(1) as usize).min(MAX_POOL_CONTENTS)
}

/// Checks the number of contents of a Pool or GetPooled request.
pub fn check_pool_contents(n: usize) -> Result<(), ApiError> {
    if n == 0 || n > MAX_POOL_CONTENTS {
        return Err(ApiError::Invalid(format!(
            "{n} contents in one request, 1 to {MAX_POOL_CONTENTS} allowed"
        )));
    }
    Ok(())
}

/// Most owners one GetOwners page looks at (live or not).
pub const OWNERS_SCAN: usize = 8192;

/// Merges two ascending lists.
fn merge_sorted(a: Vec<usize>, b: Vec<usize>) -> Vec<usize> {
    if b.is_empty() {
        return a;
    }
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if j == b.len() || (i < a.len() && a[i] < b[j]) {
            out.push(a[i]);
            i += 1;
        } else {
            if i < a.len() && a[i] == b[j] {
                i += 1;
            }
            out.push(b[j]);
            j += 1;
        }
    }
    out
}

/// File id -> position in the files, holding the positions alone (4 bytes
/// and a control byte a slot, where a map keyed by the 32-byte id would
/// take 37): the id is read from the file record when a slot is compared.
/// Keyed hashing, as file ids are chosen by nodes.
#[derive(Debug, Default)]
struct ById {
    table: hashbrown::HashTable<u32>,
    hasher: std::hash::RandomState,
}

impl ById {
    fn get(&self, files: &Segments<FileRecord>, id: &FileId) -> Option<u32> {
        self.table
            .find(self.hasher.hash_one(id), |&p| files[p as usize].meta.id == *id)
            .copied()
    }

    /// Indexes the file at `pos`; false if its id is indexed already.
    fn insert(&mut self, files: &Segments<FileRecord>, pos: u32) -> bool {
        let id = &files[pos as usize].meta.id;
        if self.get(files, id).is_some() {
            return false;
        }
        let hasher = &self.hasher;
        self.table.insert_unique(hasher.hash_one(id), pos, |&p| {
            hasher.hash_one(files[p as usize].meta.id)
        });
        true
    }
}

/// The leader's search index of files with a recently live owner (soft
/// state, rebuilt periodically; see `ARCHITECTURE.md`, "Dead files").
/// Files registered after it was built (positions from `upto` on) are
/// always searched in full; files it left out that an owner claims again
/// are `revive`d so they show up before the next rebuild.
#[derive(Debug, Default)]
pub struct LiveIndex {
    /// `files.len()` when built.
    upto: usize,
    /// File position of each name in `names`, ascending.
    positions: Vec<u32>,
    names: NameIndex,
    revived: std::collections::BTreeSet<u32>,
}

impl LiveIndex {
    /// Files in the index.
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// A file at `pos` has a live owner again (e.g. a successful Own).
    pub fn revive(&mut self, pos: u32) {
        if (pos as usize) < self.upto && self.positions.binary_search(&pos).is_err() {
            self.revived.insert(pos);
        }
    }
}

/// Lower-cased names laid end to end, one `\n` after each, so that a
/// substring search is one SIMD scan over contiguous memory rather than a
/// million small ones. Names never contain `\n` (control characters are
/// refused), so a hit never spans two names.
///
/// A search that finds few hits must look at every name: 370 MB at ten
/// million files, ~40 ms. So each block of [`BLOCK`] names also keeps the
/// set of its names' byte trigrams, hashed into [`FILTER_BITS`] bits (16
/// bytes a name), and a needle of three bytes or more scans only the
/// blocks whose set holds all of its trigrams (a name that contains the
/// needle contains its trigrams, so no hit is skipped; a block passes by
/// chance with a probability of about 0.25 per trigram).
#[derive(Debug, Default)]
struct NameIndex {
    text: Vec<u8>,
    /// Start offset of each name in `text`.
    starts: Vec<usize>,
    /// One trigram filter per block of names (boxed: the vector grows by
    /// pointers, not by copying kilobytes with twice the room).
    #[allow(clippy::vec_box)]
    filters: Vec<Box<[u64; FILTER_BITS / 64]>>,
}

/// Names per trigram filter.
const BLOCK: usize = 64;
/// Bits per trigram filter.
const FILTER_BITS: usize = 8192;

/// The filter bit of the trigram `t`.
fn trigram_bit(t: &[u8]) -> usize {
    let v = u32::from(t[0]) << 16 | u32::from(t[1]) << 8 | u32::from(t[2]);
    (v.wrapping_mul(0x9E37_79B1) >> (32 - FILTER_BITS.trailing_zeros())) as usize
}

impl NameIndex {
    fn push(&mut self, name: &str) {
        self.push_lower(name.to_lowercase().as_bytes());
    }

    fn push_lower(&mut self, lower: &[u8]) {
        if self.starts.len().is_multiple_of(BLOCK) {
            self.filters.push(Box::new([0; FILTER_BITS / 64]));
        }
        let filter = self.filters.last_mut().expect("a filter");
        for t in lower.windows(3) {
            let b = trigram_bit(t);
            filter[b / 64] |= 1 << (b % 64);
        }
        self.starts.push(self.text.len());
        self.text.extend_from_slice(lower);
        self.text.push(b'\n');
    }

    /// The lower-cased name at `pos` (without its `\n`).
    fn name(&self, pos: usize) -> &[u8] {
        let end = self.starts.get(pos + 1).copied().unwrap_or(self.text.len());
        &self.text[self.starts[pos]..end - 1]
    }

    /// Whether the name at `pos` contains `needle` (lower case).
    fn contains(&self, pos: usize, needle: &str) -> bool {
        memchr::memmem::find(self.name(pos), needle.as_bytes()).is_some()
    }

    /// Calls `f` with the position of each name from `start` on that
    /// contains `needle`, in order, until `f` returns false.
    fn find(&self, needle: &str, start: usize, mut f: impl FnMut(usize) -> bool) {
        let n = self.starts.len();
        if start >= n {
            return;
        }
        if needle.is_empty() {
            for pos in start..n {
                if !f(pos) {
                    return;
                }
            }
            return;
        }
        let finder = memchr::memmem::Finder::new(needle.as_bytes());
        let mut bits: Vec<usize> = needle.as_bytes().windows(3).map(trigram_bit).collect();
        bits.sort_unstable();
        bits.dedup();
        // Names [from, to): scans them, false once `f` has had enough.
        let mut scan = |from: usize, to: usize| -> bool {
            let end = self.starts.get(to).copied().unwrap_or(self.text.len());
            let mut at = self.starts[from];
            while let Some(off) = finder.find(&self.text[at..end]) {
                let hit = at + off;
                // The name holding byte `hit`: the last start <= hit.
                let pos = self.starts[from..to].partition_point(|&s| s <= hit) - 1 + from;
                if !f(pos) {
                    return false;
                }
                match self.starts.get(pos + 1) {
                    Some(&next) if pos + 1 < to => at = next,
                    _ => return true,
                }
            }
            true
        };
        if bits.is_empty() {
            scan(start, n);
            return;
        }
        let mut block = start / BLOCK;
        let mut from = start;
        while from < n {
            let to = ((block + 1) * BLOCK).min(n);
            let filter = &self.filters[block];
            if bits.iter().all(|&b| filter[b / 64] & (1 << (b % 64)) != 0) && !scan(from, to) {
                return;
            }
            block += 1;
            from = to;
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
            files: 0,
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
            quotas: Quotas::default(),
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

    /// The trigram filters skip blocks, never hits: `find` agrees with a
    /// plain scan for needles of every length, from every kind of start.
    #[test]
    fn name_filters_never_skip_a_hit() {
        let words = ["cedar", "quartz", "Été", "x", "ab", "naïve", "bin", "iso", "ZZ"];
        let mut ix = NameIndex::default();
        let mut names = Vec::new();
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as usize
        };
        for i in 0..(5 * BLOCK + 17) {
            let name = format!("{}-{i}-{}.{}", words[next() % 9], words[next() % 9], words[next() % 9]);
            ix.push(&name);
            names.push(name.to_lowercase());
        }
        let needles = [
            "", "a", "ab", "cedar", "-1", "-12-", "été", "ïve-", ".iso", "quartz-", "nothing", "zz", "7-c",
        ];
        for needle in needles {
            for start in [0, 1, BLOCK - 1, BLOCK, 2 * BLOCK + 5, names.len() - 1, names.len()] {
                let want: Vec<usize> = (start..names.len()).filter(|&p| names[p].contains(needle)).collect();
                let mut got = Vec::new();
                ix.find(needle, start, |p| {
                    got.push(p);
                    true
                });
                assert_eq!(got, want, "needle {needle:?} from {start}");
                // Stopping early stops at the first hit.
                let mut first = None;
                ix.find(needle, start, |p| {
                    first = Some(p);
                    false
                });
                assert_eq!(first, want.first().copied(), "needle {needle:?} from {start}");
            }
        }
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
            quotas: Quotas::default(),
            writes: vec![own.clone()],
        });
        // Disown in between by another client, then the retry of `own`.
        reg.apply(&Batch {
            now_ms: 2001,
            quotas: Quotas::default(),
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
            quotas: Quotas::default(),
            writes: vec![own],
        });
        assert_eq!(first, again);
        // The retry did not re-add the owner.
        assert!(reg.owners(&FileId([1; 32]), |_| true).unwrap().1.is_empty());
        // An older sequence number is refused.
        let old = reg.apply(&Batch {
            now_ms: 2003,
            quotas: Quotas::default(),
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
            quotas: Quotas::default(),
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
            quotas: Quotas::default(),
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
        for a in reg.apply(&Batch {
            now_ms: 3000,
            writes,
            quotas: Quotas::default(),
        }) {
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

    fn batch(now_ms: u64, quotas: Quotas, writes: Vec<Write>) -> Batch {
        Batch { now_ms, writes, quotas }
    }

    #[test]
    fn quotas_come_from_the_batch() {
        let mut reg = Registry::default();
        let t = setup(&mut reg);
        let q = Quotas {
            max_files_per_user: 2,
            max_peers_per_user: 2,
        };
        let announce = |seq, p: u8| {
            w(
                6,
                seq,
                Op::AnnouncePeer {
                    token: t,
                    peer: PeerId([p; 32]),
                    addrs: vec![],
                },
            )
        };
        let own = |seq, p: u8, f: u8| {
            w(
                6,
                seq,
                Op::Own {
                    token: t,
                    peer: PeerId([p; 32]),
                    file: meta(&format!("f{f}"), f),
                },
            )
        };
        // setup() announced peer 9: one more fits.
        let r = reg.apply(&batch(
            5000,
            q,
            vec![
                announce(1, 10),
                announce(2, 11),
                own(3, 9, 1),
                own(4, 10, 1),
                own(5, 10, 2),
            ],
        ));
        assert_eq!(r[0], Ok(Reply::Done));
        assert_eq!(
            r[1],
            Err(ApiError::Quota {
                what: "peers".into(),
                limit: 2
            })
        );
        assert_eq!(r[2], Ok(Reply::Done));
        assert_eq!(r[3], Ok(Reply::Done));
        assert_eq!(
            r[4],
            Err(ApiError::Quota {
                what: "files".into(),
                limit: 2
            })
        );
        // A retry of the refused write gets its stored answer even under
        // a larger quota; a new write gets the new quota.
        let big = Quotas::default();
        let r = reg.apply(&batch(5001, big, vec![own(5, 10, 2)]));
        assert!(matches!(r[0], Err(ApiError::Quota { .. })));
        let r = reg.apply(&batch(5002, big, vec![own(6, 10, 2)]));
        assert_eq!(r[0], Ok(Reply::Done));
        // The derived counts survive a snapshot round trip.
        let mut copy = Registry::from_bytes(&reg.to_bytes()).unwrap();
        let r = copy.apply(&batch(5003, q, vec![own(7, 9, 3)]));
        assert!(matches!(r[0], Err(ApiError::Quota { .. })));
        assert_eq!(copy.user_owned.get("alice"), Some(&3));
        assert_eq!(copy.user_peers.get("alice"), Some(&2));
    }

    #[test]
    fn owners_paginate_in_peer_order_and_survive_removals() {
        let mut reg = Registry::default();
        let t = setup(&mut reg);
        let q = Quotas {
            max_files_per_user: 1000,
            max_peers_per_user: 1000,
        };
        let mut writes = Vec::new();
        for p in (10..=250u8).rev() {
            writes.push(Write {
                id: None,
                op: Op::AnnouncePeer {
                    token: t,
                    peer: PeerId([p; 32]),
                    addrs: vec![],
                },
            });
            writes.push(Write {
                id: None,
                op: Op::Own {
                    token: t,
                    peer: PeerId([p; 32]),
                    file: meta("big", 1),
                },
            });
        }
        for a in reg.apply(&batch(6000, q, writes)) {
            a.unwrap();
        }
        let id = FileId([1; 32]);
        // Odd peers are not live.
        let live = |p: &PeerId| p.0[0].is_multiple_of(2);
        let (_, page, next) = reg.owners_page(&id, None, 10, live).unwrap();
        assert_eq!(
            page.iter().map(|o| o.peer_id.0[0]).collect::<Vec<_>>(),
            (10..=28).step_by(2).collect::<Vec<_>>()
        );
        assert_eq!(next, Some(PeerId([28; 32])));
        // An owner before the cursor leaves: the next page is unaffected.
        reg.apply(&batch(
            6001,
            q,
            vec![Write {
                id: None,
                op: Op::Disown {
                    token: t,
                    peer: PeerId([12; 32]),
                    file: id,
                },
            }],
        ));
        let (_, page2, _) = reg.owners_page(&id, next, 10, live).unwrap();
        assert_eq!(page2[0].peer_id, PeerId([30; 32]));
        // Walk all pages: every live owner exactly once.
        let mut all = Vec::new();
        let mut cursor = None;
        for _ in 0..100 {
            let (_, page, next) = reg.owners_page(&id, cursor, 7, live).unwrap();
            all.extend(page.into_iter().map(|o| o.peer_id));
            match next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        let want: Vec<_> = (10..=250u8)
            .filter(|p| p.is_multiple_of(2) && *p != 12)
            .map(|p| PeerId([p; 32]))
            .collect();
        assert_eq!(all, want);
    }

    /// A page of the largest size the tracker allows, each owner with the
    /// most addresses a peer may announce, fits in the 1 MiB frame.
    #[test]
    fn a_full_owners_page_fits_in_a_frame() {
        let limits = protocol::config::Limits::default();
        let page = protocol::config::OwnerLimits::default().max_owners_page;
        let addr: SocketAddr = "[2001:db8:1234:5678:9abc:def0:1234:5678]:65535".parse().unwrap();
        let owners = (0..page)
            .map(|i| PeerInfo {
                peer_id: PeerId([i as u8; 32]),
                addrs: vec![addr; limits.max_peer_addrs],
            })
            .collect();
        let reply: Answer = Ok(Reply::Owners {
            file: FileMeta {
                name: "n".repeat(255),
                ..meta("x", 1)
            },
            owners,
            next: Some(PeerId([255; 32])),
            partial: Vec::new(),
        });
        let len = protocol::codec::encode_body(&reply).unwrap().len();
        assert!(len < limits.max_frame_bytes, "{len} bytes");
    }

    #[test]
    fn live_index_skips_dead_files_and_keeps_cursors() {
        let mut reg = Registry::default();
        let t = setup(&mut reg);
        let q = Quotas::default();
        let (alive, dead) = (PeerId([9; 32]), PeerId([10; 32]));
        let mut writes = vec![Write {
            id: None,
            op: Op::AnnouncePeer {
                token: t,
                peer: dead,
                addrs: vec![],
            },
        }];
        // Files 0..10 named "song N": even ones owned by a live peer.
        for i in 0..10u8 {
            writes.push(Write {
                id: None,
                op: Op::Own {
                    token: t,
                    peer: if i % 2 == 0 { alive } else { dead },
                    file: meta(&format!("song {i}"), 100 + i),
                },
            });
        }
        for a in reg.apply(&batch(7000, q, writes)) {
            a.unwrap();
        }
        let mut ix = reg.build_live_index(|p| *p == alive);
        assert_eq!(ix.len(), 5);
        let names = |hits: &[SearchHit]| hits.iter().map(|h| h.file.name.clone()).collect::<Vec<_>>();
        let (hits, next) = reg.search_with("SONG", 0, 3, |_| true, Some(&ix));
        assert_eq!(names(&hits), ["song 0", "song 2", "song 4"]);
        let (hits, next) = reg.search_with("song", next.unwrap(), 3, |_| true, Some(&ix));
        assert_eq!(names(&hits), ["song 6", "song 8"]);
        assert_eq!(next, None);
        // A file registered after the build is searched in full; a dead
        // file claimed again is revived before the next build.
        reg.apply(&batch(
            7001,
            q,
            vec![Write {
                id: None,
                op: Op::Own {
                    token: t,
                    peer: dead,
                    file: meta("song new", 200),
                },
            }],
        ));
        ix.revive(reg.position(&FileId([103; 32])).unwrap());
        let (hits, next) = reg.search_with("song", 0, 100, |_| true, Some(&ix));
        assert_eq!(
            names(&hits),
            ["song 0", "song 2", "song 3", "song 4", "song 6", "song 8", "song new"]
        );
        assert_eq!(next, None);
        // Pages across the revived file and the tail.
        let (hits, next) = reg.search_with("song", 0, 2, |_| true, Some(&ix));
        assert_eq!(names(&hits), ["song 0", "song 2"]);
        let (hits, next) = reg.search_with("song", next.unwrap(), 4, |_| true, Some(&ix));
        assert_eq!(names(&hits), ["song 3", "song 4", "song 6", "song 8"]);
        let (hits, next) = reg.search_with("song", next.unwrap(), 4, |_| true, Some(&ix));
        assert_eq!(names(&hits), ["song new"]);
        assert_eq!(next, None);
        // Without the index (a follower's stale read) every file is there.
        assert_eq!(reg.search("song", 0, 100, |_| true).0.len(), 11);
    }

    #[test]
    fn bad_metadata_and_conflicts() {
        let mut reg = Registry::default();
        let t = setup(&mut reg);
        let peer = PeerId([9; 32]);
        let mut bad = meta("../etc/passwd", 3);
        let r = reg.apply(&Batch {
            now_ms: 4000,
            quotas: Quotas::default(),
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
            quotas: Quotas::default(),
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
            quotas: Quotas::default(),
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
            quotas: Quotas::default(),
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

    fn many(from: u32, to: u32) -> Vec<FileMeta> {
        (from..to)
            .map(|n| {
                let mut id = [0xee; 32];
                id[..4].copy_from_slice(&n.to_le_bytes());
                FileMeta {
                    id: FileId(id),
                    name: format!("synthetic-{n}.bin"),
                    size: 100,
                    chunk_size: MIN_CHUNK,
                    chunk_count: 1,
                    files: 0,
                }
            })
            .collect()
    }

    fn own_many(t: TokenHash, peer: u8, files: Vec<FileMeta>) -> Op {
        Op::OwnMany {
            token: t,
            peer: PeerId([peer; 32]),
            files,
        }
    }

    /// OwnMany counts the files newly owned; what the peer owns already,
    /// or what the request lists twice, counts as done.
    #[test]
    fn own_many_counts_new_files() {
        let mut reg = Registry::default();
        let t = setup(&mut reg);
        let q = Quotas::default();
        let r = reg.apply(&batch(5000, q, vec![w(9, 1, own_many(t, 9, many(0, 10)))]));
        assert_eq!(r[0], Ok(Reply::Owned { newly_owned: 10 }));
        let mut files = many(5, 15);
        files.push(many(14, 15).remove(0));
        let r = reg.apply(&batch(5001, q, vec![w(9, 2, own_many(t, 9, files))]));
        assert_eq!(r[0], Ok(Reply::Owned { newly_owned: 5 }));
        assert_eq!(reg.file_count(), 15);
        assert_eq!(reg.user_owned.get("alice"), Some(&15));
        assert_eq!(reg.search("synthetic-1", 0, 100, |_| true).0.len(), 6);
        // The same as Owns one by one.
        let mut one_by_one = Registry::default();
        let t2 = setup(&mut one_by_one);
        assert_eq!(t, t2);
        let writes = many(0, 15)
            .into_iter()
            .enumerate()
            .map(|(i, file)| {
                w(
                    9,
                    i as u64 + 1,
                    Op::Own {
                        token: t,
                        peer: PeerId([9; 32]),
                        file,
                    },
                )
            })
            .collect();
        one_by_one.apply(&batch(5000, q, writes));
        let strip = |r: &Registry| {
            let mut c = Registry::from_bytes(&r.to_bytes()).unwrap();
            c.data.clients = Default::default();
            c.digest()
        };
        assert_eq!(strip(&reg), strip(&one_by_one));
        // Bounds.
        let r = reg.apply(&batch(5002, q, vec![w(9, 3, own_many(t, 9, vec![]))]));
        assert!(matches!(r[0], Err(ApiError::Invalid(_))));
        let too_many = many(0, MAX_OWN_MANY as u32 + 1);
        let r = reg.apply(&batch(5003, q, vec![w(9, 4, own_many(t, 9, too_many))]));
        assert!(matches!(r[0], Err(ApiError::Invalid(_))));
    }

    /// The quota covers the whole request: over it, nothing is owned.
    #[test]
    fn own_many_quota_is_all_or_nothing() {
        let mut reg = Registry::default();
        let t = setup(&mut reg);
        let q = Quotas {
            max_files_per_user: 20,
            max_peers_per_user: 64,
        };
        let r = reg.apply(&batch(5000, q, vec![w(9, 1, own_many(t, 9, many(0, 15)))]));
        assert_eq!(r[0], Ok(Reply::Owned { newly_owned: 15 }));
        // 5 of these are owned already, 6 are new: 21 > 20.
        let r = reg.apply(&batch(5001, q, vec![w(9, 2, own_many(t, 9, many(10, 21)))]));
        assert_eq!(
            r[0],
            Err(ApiError::Quota {
                what: "files".into(),
                limit: 20
            })
        );
        assert_eq!(reg.file_count(), 15);
        assert_eq!(reg.user_owned.get("alice"), Some(&15));
        // Exactly up to the quota passes; files owned already cost nothing.
        let r = reg.apply(&batch(5002, q, vec![w(9, 3, own_many(t, 9, many(10, 20)))]));
        assert_eq!(r[0], Ok(Reply::Owned { newly_owned: 5 }));
        let r = reg.apply(&batch(5003, q, vec![w(9, 4, own_many(t, 9, many(0, 20)))]));
        assert_eq!(r[0], Ok(Reply::Owned { newly_owned: 0 }));
        let r = reg.apply(&batch(5004, q, vec![w(9, 5, own_many(t, 9, many(20, 21)))]));
        assert!(matches!(r[0], Err(ApiError::Quota { .. })));
    }

    /// A bad file, a conflict with a registered file or within the
    /// request refuses the whole request and names the file.
    #[test]
    fn own_many_conflicts_and_bad_files_change_nothing() {
        let mut reg = Registry::default();
        let t = setup(&mut reg);
        let q = Quotas::default();
        reg.apply(&batch(5000, q, vec![w(9, 1, own_many(t, 9, many(0, 3)))]));
        let before = reg.digest();
        let mut files = many(3, 8);
        let mut clash = many(1, 2).remove(0);
        clash.name = "another name".into();
        files.push(clash.clone());
        let r = reg.apply(&batch(
            5001,
            q,
            vec![Write {
                id: None,
                op: own_many(t, 9, files),
            }],
        ));
        assert_eq!(r[0], Err(ApiError::FileConflict(clash.id)));
        // Twice in one request with different metadata.
        let mut files = many(3, 8);
        let mut twin = files[2].clone();
        twin.size = 200;
        files.push(twin.clone());
        let r = reg.apply(&batch(
            5002,
            q,
            vec![Write {
                id: None,
                op: own_many(t, 9, files),
            }],
        ));
        assert_eq!(r[0], Err(ApiError::FileConflict(twin.id)));
        // Bad metadata: the error says which file.
        let mut files = many(3, 8);
        files[3].chunk_count = 7;
        let r = reg.apply(&batch(
            5003,
            q,
            vec![Write {
                id: None,
                op: own_many(t, 9, files),
            }],
        ));
        match &r[0] {
            Err(ApiError::Invalid(m)) => assert!(m.starts_with("file 3 ("), "{m}"),
            other => panic!("{other:?}"),
        }
        // A peer of nobody, a session that is not there.
        let r = reg.apply(&batch(
            5004,
            q,
            vec![Write {
                id: None,
                op: own_many(t, 77, many(3, 8)),
            }],
        ));
        assert_eq!(r[0], Err(ApiError::UnknownPeer(PeerId([77; 32]))));
        let r = reg.apply(&batch(
            5005,
            q,
            vec![Write {
                id: None,
                op: own_many(token_hash("nope"), 9, many(3, 8)),
            }],
        ));
        assert_eq!(r[0], Err(ApiError::NotLoggedIn));
        assert_eq!(reg.digest(), before);
        assert_eq!(reg.file_count(), 3);
    }

    /// A retried OwnMany gets its stored answer and is not applied again,
    /// even after its files were disowned in between.
    #[test]
    fn own_many_is_exactly_once() {
        let mut reg = Registry::default();
        let t = setup(&mut reg);
        let q = Quotas::default();
        let write = w(9, 1, own_many(t, 9, many(0, 4)));
        let first = reg.apply(&batch(5000, q, vec![write.clone()]));
        assert_eq!(first[0], Ok(Reply::Owned { newly_owned: 4 }));
        let disown = Op::Disown {
            token: t,
            peer: PeerId([9; 32]),
            file: many(0, 1)[0].id,
        };
        reg.apply(&batch(5001, q, vec![w(10, 1, disown)]));
        let again = reg.apply(&batch(5002, q, vec![write]));
        assert_eq!(first, again);
        assert!(reg.owners(&many(0, 1)[0].id, |_| true).unwrap().1.is_empty());
        assert_eq!(reg.user_owned.get("alice"), Some(&3));
        // A refused one is answered the same on retry, even when it would
        // now pass.
        let small = Quotas {
            max_files_per_user: 5,
            max_peers_per_user: 64,
        };
        let write = w(9, 2, own_many(t, 9, many(4, 7)));
        let refused = reg.apply(&batch(5003, small, vec![write.clone()]));
        assert!(matches!(refused[0], Err(ApiError::Quota { .. })));
        let again = reg.apply(&batch(5004, q, vec![write]));
        assert_eq!(refused, again);
        assert_eq!(reg.file_count(), 4);
    }

    fn pool_op(t: TokenHash, peer: u8, file: FileId, contents: Vec<ContentId>) -> Op {
        Op::Pool {
            token: t,
            peer: PeerId([peer; 32]),
            file,
            contents,
        }
    }

    fn own(t: TokenHash, peer: u8, file: FileMeta) -> Op {
        Op::Own {
            token: t,
            peer: PeerId([peer; 32]),
            file,
        }
    }

    fn pos_of(reg: &Registry, id: &FileId) -> u32 {
        reg.position(id).unwrap()
    }

    fn pooled_ids(reg: &Registry, contents: &[ContentId]) -> Vec<FileId> {
        reg.pooled(contents, 32, |_| true).iter().map(|i| i.file.id).collect()
    }

    #[test]
    fn pool_index_applies_checks_bounds_and_survives_a_snapshot() {
        let mut reg = Registry::default();
        let t = setup(&mut reg);
        let q = Quotas::default();
        let mut seq = 10;
        let mut apply = |reg: &mut Registry, op: Op| {
            seq += 1;
            reg.apply(&batch(5000 + seq, q, vec![w(7, seq, op)])).remove(0)
        };
        for p in 10..40u8 {
            let op = Op::AnnouncePeer {
                token: t,
                peer: PeerId([p; 32]),
                addrs: vec![format!("127.0.0.1:{p}").parse().unwrap()],
            };
            apply(&mut reg, op).unwrap();
        }
        // A folder of two files, and a single file.
        let a = FileMeta {
            files: 2,
            ..meta("album", 1)
        };
        let b = meta("renamed.flac", 2);
        apply(&mut reg, own(t, 9, a.clone())).unwrap();
        apply(&mut reg, own(t, 10, b.clone())).unwrap();
        let (c1, c2) = (ContentId([0xc1; 32]), ContentId([0xc2; 32]));
        // Refusals change nothing.
        let e = apply(&mut reg, pool_op(t, 10, a.id, vec![c1])).unwrap_err();
        assert!(e.to_string().contains("does not own"), "{e}");
        let e = apply(&mut reg, pool_op(t, 9, FileId([77; 32]), vec![c1])).unwrap_err();
        assert_eq!(e, ApiError::UnknownFile(FileId([77; 32])));
        for n in [0, MAX_POOL_CONTENTS + 1] {
            let e = apply(&mut reg, pool_op(t, 9, a.id, vec![c1; n])).unwrap_err();
            assert!(e.to_string().contains("1 to 1024 allowed"), "{e}");
        }
        assert!(reg.data.pools.is_empty(), "refusals change nothing");
        // Applied, and idempotent.
        assert_eq!(apply(&mut reg, pool_op(t, 9, a.id, vec![c1, c2])), Ok(Reply::Done));
        assert_eq!(apply(&mut reg, pool_op(t, 10, b.id, vec![c1])), Ok(Reply::Done));
        let index = |reg: &Registry| {
            let mut v: Vec<_> = reg.data.pools.iter().map(|(c, l)| (*c, l.clone())).collect();
            v.sort();
            v
        };
        let once = index(&reg);
        assert_eq!(apply(&mut reg, pool_op(t, 9, a.id, vec![c2, c1, c1])), Ok(Reply::Done));
        assert_eq!(index(&reg), once);
        assert_eq!(pooled_ids(&reg, &[c1]), [a.id, b.id]);
        assert_eq!(pooled_ids(&reg, &[c2, c1]), [a.id, b.id]);
        // A file holds no more contents than it has files, over all its
        // requests: a single file one.
        let e = apply(&mut reg, pool_op(t, 10, b.id, vec![c2])).unwrap_err();
        assert!(e.to_string().contains("at most 1 contents (1 recorded, 1 new)"), "{e}");
        let e = apply(&mut reg, pool_op(t, 9, a.id, vec![ContentId([3; 32])])).unwrap_err();
        assert!(e.to_string().contains("at most 2 contents"), "{e}");
        assert_eq!(index(&reg), once);
        assert_eq!(pooled_ids(&reg, &[c2]), [a.id]);
        assert!(pooled_ids(&reg, &[ContentId([3; 32])]).is_empty());
        // Owners: live ones only, capped; items without one left out.
        let items = reg.pooled(&[c1], 32, |p| *p == PeerId([10; 32]));
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].file, b);
        assert_eq!(items[0].owners[0].addrs, vec!["127.0.0.1:10".parse().unwrap()]);
        // A full content keeps MAX_POOL_FILES files; a file with more
        // owners takes the place of the newest of those with the fewest.
        let extra: Vec<FileMeta> = (0..MAX_POOL_FILES as u8)
            .map(|i| meta(&format!("x{i}"), 100 + i))
            .collect();
        for (i, f) in extra.iter().enumerate() {
            apply(&mut reg, own(t, 11 + i as u8, f.clone())).unwrap();
            apply(&mut reg, pool_op(t, 11 + i as u8, f.id, vec![c1])).unwrap();
        }
        let ids = pooled_ids(&reg, &[c1]);
        assert_eq!(ids.len(), MAX_POOL_FILES);
        assert!(!ids.contains(&extra[MAX_POOL_FILES - 1].id) && ids.contains(&extra[MAX_POOL_FILES - 3].id));
        let popular = meta("popular", 200);
        apply(&mut reg, own(t, 30, popular.clone())).unwrap();
        apply(&mut reg, pool_op(t, 30, popular.id, vec![c1])).unwrap();
        assert!(!pooled_ids(&reg, &[c1]).contains(&popular.id), "a tie does not evict");
        apply(&mut reg, own(t, 31, popular.clone())).unwrap();
        apply(&mut reg, pool_op(t, 31, popular.id, vec![c1])).unwrap();
        let ids = pooled_ids(&reg, &[c1]);
        assert_eq!(ids.len(), MAX_POOL_FILES);
        assert!(ids.contains(&popular.id) && !ids.contains(&extra[MAX_POOL_FILES - 3].id));
        assert_eq!(ids[..2], [a.id, b.id]);
        // The counts follow evictions.
        let evicted = pos_of(&reg, &extra[MAX_POOL_FILES - 3].id);
        assert_eq!(reg.pool_counts.get(&evicted), None);
        assert_eq!(reg.pool_counts.get(&pos_of(&reg, &a.id)), Some(&2));
        // Snapshot round trip, the derived counts included.
        let copy = Registry::from_bytes(&reg.to_bytes()).unwrap();
        assert_eq!(copy.digest(), reg.digest());
        assert_eq!(copy.pool_counts, reg.pool_counts);
        assert_eq!(pooled_ids(&copy, &[c1, c2]), pooled_ids(&reg, &[c1, c2]));
        // A damaged index in a snapshot is refused.
        let mut bad = Registry::from_bytes(&reg.to_bytes()).unwrap();
        bad.data.pools.insert(ContentId([9; 32]), vec![5, 3]);
        let e = Registry::from_bytes(&bad.to_bytes()).unwrap_err();
        assert!(e.to_string().contains("ascending positions"), "{e}");
        bad.data.pools.insert(ContentId([9; 32]), vec![10_000]);
        assert!(Registry::from_bytes(&bad.to_bytes()).is_err());
    }
}
