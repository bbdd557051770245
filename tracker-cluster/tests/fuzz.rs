//! Fuzz targets of the Raft port's decoders (issue 7, part 4): the
//! `RaftRequest` a member reads from another member or the admin (with
//! `limits.max_raft_frame_bytes`, as `network/raft.rs` does) and the
//! `RaftReply` a member reads back. Arbitrary bytes and structure-aware
//! mutations of valid requests of every variant (append entries carrying
//! batches of every write, votes, snapshot pieces, admin requests); the
//! properties are those of `protocol/tests/fuzz.rs`: no panic, errors not
//! crashes, memory held by one decode within its bound, stable re-encoding.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

use fuzzkit::{ensure, proptest::test_runner::TestCaseError};
use openraft::{
    error::{Fatal, RaftError, SnapshotMismatch},
    raft::{
        AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
        VoteResponse,
    },
    CommittedLeaderId, EntryPayload, LogId, Membership, SnapshotMeta, SnapshotSegmentId, StoredMembership, Vote,
};
use protocol::{
    codec::{self, CodecError},
    config::Limits,
    ids::{FileId, PeerId},
    tracker_api::{ClusterStatus, FileMeta, WriteId},
};
use serde::{de::DeserializeOwned, Serialize};
use tracker_cluster::{
    network::{
        management::{AdminReply, AdminRequest},
        RaftReply, RaftRequest,
    },
    registry::{Batch, Op, Write},
    typ::{Entry, Member, TypeConfig},
};

#[global_allocator]
static ALLOC: fuzzkit::CountingAlloc = fuzzkit::CountingAlloc;

/// serde's preallocation per sequence being decoded, and small change.
const SEQ_PREALLOC: usize = 1 << 20;
const SMALL: usize = 64 << 10;
/// Nested sequences in a Raft request: entries, writes, addresses.
const NESTING: usize = 3;

fn raft_limit() -> usize {
    Limits::default().max_raft_frame_bytes
}

/// The bound of one decode: the limit plus serde's preallocation per
/// nested sequence; a body under 4 KiB may claim at most 64 KiB whatever
/// the limit (`codec::decode`).
fn bound(limit: usize, len: usize) -> usize {
    let claims = if len <= 4096 { 64 << 10 } else { limit };
    claims + NESTING * SEQ_PREALLOC + SMALL
}

fn check_decode<T: Serialize + DeserializeOwned>(body: &[u8], limit: usize) -> Result<(), TestCaseError> {
    let max_alloc = bound(limit, body.len());
    let (res, peak) = fuzzkit::measure(|| codec::decode::<T>(body, limit));
    ensure(peak <= max_alloc, || {
        format!(
            "decode of {} bytes held {peak} bytes (bound {max_alloc}, limit {limit})",
            body.len()
        )
    })?;
    match res {
        Ok(v) => {
            let again = codec::encode_body(&v).map_err(|e| TestCaseError::fail(format!("re-encode: {e}")))?;
            let back: T = codec::decode(&again, limit).map_err(|e| TestCaseError::fail(format!("re-decode: {e}")))?;
            ensure(codec::encode_body(&back).ok().as_deref() == Some(&again[..]), || {
                "re-encoding is not stable".into()
            })
        }
        Err(CodecError::Malformed(_) | CodecError::TooLarge { .. }) => Ok(()),
        Err(e) => Err(TestCaseError::fail(format!("unexpected error kind: {e}"))),
    }
}

fn log_id(term: u64, node: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, node), index)
}

fn addr(i: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i as u8], 7000 + i))
}

fn membership() -> Membership<u64, Member> {
    let nodes: BTreeMap<u64, Member> = (1..=3)
        .map(|i| {
            (
                i,
                Member {
                    api: format!("127.0.0.1:740{i}"),
                    raft: format!("127.0.0.1:741{i}"),
                },
            )
        })
        .collect();
    Membership::new(vec![BTreeSet::from([1, 2, 3]), BTreeSet::from([1, 2])], nodes)
}

fn batch() -> Batch {
    let token = [9u8; 32];
    let peer = PeerId([8; 32]);
    let ops = vec![
        Op::CreateUser {
            user: "alice".into(),
            phc: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA".into(),
        },
        Op::CreateSession {
            token,
            user: "alice".into(),
            expires_ms: 1 << 41,
        },
        Op::DeleteSession { token },
        Op::AnnouncePeer {
            token,
            peer,
            addrs: (0..4).map(addr).collect(),
        },
        Op::Own {
            token,
            peer,
            file: FileMeta {
                id: FileId([1; 32]),
                name: "film.mkv".into(),
                size: 1 << 33,
                chunk_size: 1 << 18,
                chunk_count: 1 << 15,
                files: 0,
            },
        },
        Op::Disown {
            token,
            peer,
            file: FileId([1; 32]),
        },
    ];
    Batch {
        now_ms: 1_700_000_000_000,
        writes: ops
            .into_iter()
            .enumerate()
            .map(|(i, op)| Write {
                id: (!i.is_multiple_of(3)).then_some(WriteId {
                    client: 0xdead_beef_u128 << 64 | i as u128,
                    seq: i as u64 + 1,
                }),
                op,
            })
            .collect(),
        quotas: protocol::config::Quotas {
            max_files_per_user: 100_000,
            max_peers_per_user: 64,
        },
    }
}

fn requests() -> Vec<RaftRequest> {
    let vote = Vote::new_committed(7, 1);
    let entries: Vec<Entry> = vec![
        Entry {
            log_id: log_id(7, 1, 10),
            payload: EntryPayload::Blank,
        },
        Entry {
            log_id: log_id(7, 1, 11),
            payload: EntryPayload::Normal(batch()),
        },
        Entry {
            log_id: log_id(7, 1, 12),
            payload: EntryPayload::Membership(membership()),
        },
    ];
    vec![
        RaftRequest::Append(AppendEntriesRequest::<TypeConfig> {
            vote,
            prev_log_id: Some(log_id(6, 2, 9)),
            entries,
            leader_commit: Some(log_id(7, 1, 9)),
        }),
        RaftRequest::Append(AppendEntriesRequest::<TypeConfig> {
            vote,
            prev_log_id: None,
            entries: vec![],
            leader_commit: None,
        }),
        RaftRequest::Vote(VoteRequest::new(Vote::new(8, 2), Some(log_id(7, 1, 12)))),
        RaftRequest::Snapshot(InstallSnapshotRequest::<TypeConfig> {
            vote,
            meta: SnapshotMeta {
                last_log_id: Some(log_id(7, 1, 12)),
                last_membership: StoredMembership::new(Some(log_id(7, 1, 12)), membership()),
                snapshot_id: "7-1-12-3".into(),
            },
            offset: 4 << 20,
            data: (0..200u8).collect(),
            done: false,
        }),
        RaftRequest::Admin(AdminRequest::Add {
            id: 4,
            api: "127.0.0.1:7404".into(),
            raft: "127.0.0.1:7414".into(),
        }),
        RaftRequest::Admin(AdminRequest::Remove { id: 2 }),
        RaftRequest::Admin(AdminRequest::Status),
        RaftRequest::Admin(AdminRequest::Snapshot { wait_ms: 120_000 }),
    ]
}

fn replies() -> Vec<RaftReply> {
    let vote = Vote::new_committed(7, 1);
    vec![
        RaftReply::Append(Ok(AppendEntriesResponse::Success)),
        RaftReply::Append(Ok(AppendEntriesResponse::PartialSuccess(Some(log_id(7, 1, 3))))),
        RaftReply::Append(Ok(AppendEntriesResponse::Conflict)),
        RaftReply::Append(Ok(AppendEntriesResponse::HigherVote(vote))),
        RaftReply::Append(Err(RaftError::Fatal(Fatal::Stopped))),
        RaftReply::Vote(Ok(VoteResponse {
            vote,
            vote_granted: true,
            last_log_id: Some(log_id(7, 1, 12)),
        })),
        RaftReply::Snapshot(Ok(InstallSnapshotResponse { vote })),
        RaftReply::Snapshot(Err(RaftError::APIError(
            SnapshotMismatch {
                expect: SnapshotSegmentId {
                    id: "a".into(),
                    offset: 0,
                },
                got: SnapshotSegmentId {
                    id: "b".into(),
                    offset: 4 << 20,
                },
            }
            .into(),
        ))),
        RaftReply::Admin(Ok(AdminReply::Status(ClusterStatus {
            responder: 1,
            leader: Some(1),
            term: 7,
            last_applied: Some(12),
            members: vec![],
            removed: false,
        }))),
        RaftReply::Admin(Ok(AdminReply::NotLeader {
            leader: Some(2),
            raft: Some("127.0.0.1:7412".into()),
        })),
        RaftReply::Admin(Ok(AdminReply::Snapshot {
            index: 1_000_000,
            millis: 1234,
        })),
        RaftReply::Admin(Err("refused".into())),
        RaftReply::Malformed("frame".into()),
        RaftReply::Refused("vote refused".into()),
        RaftReply::NotMember { membership_index: 9 },
    ]
}

fn bodies<T: Serialize>(values: &[T]) -> Vec<Vec<u8>> {
    values.iter().map(|v| codec::encode_body(v).unwrap()).collect()
}

#[test]
fn fuzz_raft_request() {
    let limit = raft_limit();
    fuzzkit::run("raft RaftRequest", fuzzkit::inputs(bodies(&requests())), |body| {
        check_decode::<RaftRequest>(body, limit)
    });
}

/// The whole frame as the Raft endpoint reads it (prefix checked against
/// the limit before the body is allocated).
#[test]
fn fuzz_raft_request_frames() {
    let limit = raft_limit();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let frames: Vec<Vec<u8>> = requests().iter().map(|r| codec::encode(r).unwrap()).collect();
    fuzzkit::run("raft RaftRequest frame", fuzzkit::inputs(frames), |stream| {
        // `read_body` allocates the announced length (when within the
        // limit) before reading; then the body is decoded.
        let announced = stream
            .get(..codec::PREFIX)
            .map_or(0, |p| u32::from_le_bytes(p.try_into().unwrap()) as usize);
        let body = if announced <= limit { announced } else { 0 };
        let max_alloc = body + bound(limit, body);
        let (res, peak) =
            fuzzkit::measure(|| rt.block_on(codec::read_frame::<_, RaftRequest>(&mut &stream[..], limit)));
        ensure(peak <= max_alloc, || {
            format!("read_frame of {} bytes held {peak} bytes", stream.len())
        })?;
        match res {
            Ok(_) | Err(CodecError::Malformed(_) | CodecError::TooLarge { .. } | CodecError::Truncated) => Ok(()),
            Err(e) => Err(TestCaseError::fail(format!("unexpected error kind: {e}"))),
        }
    });
}

#[test]
fn fuzz_raft_reply() {
    let limit = raft_limit();
    fuzzkit::run("raft RaftReply", fuzzkit::inputs(bodies(&replies())), |body| {
        check_decode::<RaftReply>(body, limit)
    });
}

#[test]
fn every_corpus_value_round_trips() {
    for body in bodies(&requests()) {
        let back: RaftRequest = codec::decode(&body, raft_limit()).unwrap();
        assert_eq!(codec::encode_body(&back).unwrap(), body);
    }
    for body in bodies(&replies()) {
        let back: RaftReply = codec::decode(&body, raft_limit()).unwrap();
        assert_eq!(codec::encode_body(&back).unwrap(), body);
    }
}

/// Finding 1 (see `protocol/tests/fuzz.rs`) on the Raft port: a 16-byte
/// `Admin(Add)` whose `api` string announces 128 MiB made the member
/// allocate it (bincode's 256 MiB tier for the 64 MiB limit).
#[test]
fn regression_tiny_raft_frame_claims_128_mib() {
    let body = b"\x03\x00\x04\xfc\x00\x00\x00\x08127.0.0.1";
    let (res, peak) = fuzzkit::measure(|| codec::decode::<RaftRequest>(body, raft_limit()));
    assert!(matches!(res, Err(CodecError::Malformed(_))), "{res:?}");
    assert!(peak <= SMALL + 1024, "held {peak} bytes");
}
