//! Fuzz targets of the decoders in `protocol` (issue 7, part 4): the
//! tracker `Envelope` and `Answer`, the peer `PeerRequest`/`PeerResponse`,
//! the `Manifest` with the checks the node applies before use, the frame
//! reader, the JSON configurations and the `quorrent:` link. Each target runs
//! `QUORRENT_FUZZ_CASES` cases (see `fuzzkit`) of arbitrary bytes and
//! structure-aware mutations of valid encodings, and checks: no panic,
//! errors not crashes, the most memory one decode holds stays within its
//! bound, and what decodes re-encodes to something that decodes the same.
//! Findings of the fuzzer are the named regression tests at the end.

use std::{net::SocketAddr, path::Path};

use fuzzkit::{ensure, proptest::test_runner::TestCaseError};
use protocol::{
    codec::{self, CodecError},
    config::{self, Limits, NodeConfig, ProxyConfig, TrackerConfig},
    content::{chunk_count, Entry, Manifest, ManifestError, Tree, MAX_CHUNK, MAX_MANIFEST_BYTES, MIN_CHUNK},
    ids::{check_file_name, ContentId, FileId, NameError, PeerId},
    link::{CaFingerprint, Link, MAX_LINK_LEN},
    peer::{PeerError, PeerRequest, PeerResponse, MAX_FRAME},
    tracker_api::{
        Answer, ApiError, ClusterStatus, Consistency, Envelope, FileMeta, FollowerLag, MemberInfo, MemberReport,
        PartialOwner, PeerInfo, PooledItem, RegistryCounts, Reply, Request, SearchHit, WriteId,
    },
};
use serde::{de::DeserializeOwned, Serialize};

#[global_allocator]
static ALLOC: fuzzkit::CountingAlloc = fuzzkit::CountingAlloc;

/// What a decode may hold beyond its frame limit: serde preallocates at
/// most 1 MiB for each sequence being decoded (`size_hint::cautious`), and
/// a few sequences nest (an owner list of address lists); plus small
/// change for the error message.
const SEQ_PREALLOC: usize = 1 << 20;
const SMALL: usize = 64 << 10;

/// The bound of one decode of `T` with `limit`: the limit, plus serde's
/// preallocation for each level of nested sequences in `T`.
fn bound(limit: usize, nesting: usize) -> usize {
    limit + nesting * SEQ_PREALLOC + SMALL
}

/// The tracker's frame limit (tracker API, proxy, node's tracker client).
fn tracker_limit() -> usize {
    Limits::default().max_frame_bytes
}

/// Decodes `body` with `limit`, measuring the peak memory, and checks the
/// shared properties: no allocation past `max_alloc`; a decoded value
/// re-encodes to a body that decodes and re-encodes identically.
fn check_decode<T: Serialize + DeserializeOwned>(
    body: &[u8],
    limit: usize,
    max_alloc: usize,
) -> Result<Option<T>, TestCaseError> {
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
            ensure(again.len() <= body.len(), || {
                format!("re-encoding grew from {} to {} bytes", body.len(), again.len())
            })?;
            let back: T = codec::decode(&again, limit).map_err(|e| TestCaseError::fail(format!("re-decode: {e}")))?;
            ensure(codec::encode_body(&back).ok().as_deref() == Some(&again[..]), || {
                "re-encoding is not stable".into()
            })?;
            Ok(Some(v))
        }
        Err(CodecError::Malformed(_)) | Err(CodecError::TooLarge { .. }) => Ok(None),
        Err(e) => Err(TestCaseError::fail(format!("unexpected error kind from decode: {e}"))),
    }
}

/// Reads `stream` as a frame (prefix and body) the way a server does.
fn check_read_frame<T: Serialize + DeserializeOwned>(
    rt: &tokio::runtime::Runtime,
    stream: &[u8],
    limit: usize,
    max_alloc: usize,
) -> Result<(), TestCaseError> {
    let (res, peak) = fuzzkit::measure(|| rt.block_on(codec::read_frame::<_, T>(&mut &stream[..], limit)));
    ensure(peak <= max_alloc, || {
        format!(
            "read_frame of {} bytes held {peak} bytes (bound {max_alloc}, limit {limit})",
            stream.len()
        )
    })?;
    match res {
        Ok(_) | Err(CodecError::Malformed(_) | CodecError::TooLarge { .. } | CodecError::Truncated) => Ok(()),
        Err(e) => Err(TestCaseError::fail(format!(
            "unexpected error kind from read_frame: {e}"
        ))),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().build().unwrap()
}

fn bodies<T: Serialize>(values: &[T]) -> Vec<Vec<u8>> {
    values.iter().map(|v| codec::encode_body(v).unwrap()).collect()
}

fn frames<T: Serialize>(values: &[T]) -> Vec<Vec<u8>> {
    values.iter().map(|v| codec::encode(v).unwrap()).collect()
}

fn addr(i: u16) -> SocketAddr {
    if i.is_multiple_of(2) {
        SocketAddr::from(([127, 0, 0, 1], 7000 + i))
    } else {
        SocketAddr::from(([0xfe80, 0, 0, 0, 0, 0, 0, i], 7000 + i))
    }
}

fn meta(name: &str) -> FileMeta {
    FileMeta {
        id: FileId([0xab; 32]),
        name: name.into(),
        size: 1 << 30,
        chunk_size: 256 << 10,
        chunk_count: 4096,
        files: 0,
    }
}

fn requests() -> Vec<Request> {
    let peer_id = PeerId([7; 32]);
    vec![
        Request::Register {
            user: "alice".into(),
            password: "correct horse battery staple".into(),
        },
        Request::Login {
            user: "bob".into(),
            password: "p".into(),
        },
        Request::Logout,
        Request::AnnouncePeer {
            peer_id,
            addrs: (0..8).map(addr).collect(),
        },
        Request::Own {
            peer_id,
            file: meta("ünïcödé film.mkv"),
        },
        Request::Disown {
            peer_id,
            file_id: FileId([1; 32]),
        },
        Request::Search {
            text: "film".into(),
            cursor: 123_456_789,
            limit: 1000,
        },
        Request::GetOwners {
            file_id: FileId([2; 32]),
            cursor: Some(PeerId([3; 32])),
            limit: 2000,
        },
        Request::Heartbeat { peer_id },
        Request::ClusterStatus,
        Request::MemberStatus,
        Request::WatchLeader {
            leader: Some(2),
            term: 77,
            wait_ms: 30_000,
        },
        Request::OwnMany {
            peer_id,
            files: (0..3).map(|i| meta(&format!("synthetic-{i}-film.bin"))).collect(),
        },
        Request::AnnouncePartial {
            peer_id,
            file_id: FileId([4; 32]),
            have: vec![0b1010_0101, 0xff, 0x03],
        },
        Request::Pool {
            peer_id,
            file_id: FileId([5; 32]),
            contents: (0..3).map(|i| ContentId([i; 32])).collect(),
        },
        Request::GetPooled {
            contents: (0..2).map(|i| ContentId([i; 32])).collect(),
            limit: 32,
        },
    ]
}

fn envelopes() -> Vec<Envelope> {
    requests()
        .into_iter()
        .enumerate()
        .map(|(i, request)| Envelope {
            token: i.is_multiple_of(2).then(|| "0123456789abcdef0123456789abcdef".into()),
            write_id: request.is_write().then_some(WriteId {
                client: u128::MAX - i as u128,
                seq: i as u64 * 1000,
            }),
            origin: i.is_multiple_of(3).then(|| addr(i as u16)),
            consistency: if i.is_multiple_of(2) {
                Consistency::Linearizable
            } else {
                Consistency::Stale
            },
            request,
        })
        .collect()
}

fn answers() -> Vec<Answer> {
    let status = ClusterStatus {
        responder: 1,
        leader: Some(2),
        term: 9,
        last_applied: Some(1234),
        members: (1..=3)
            .map(|id| MemberInfo {
                id,
                api_addr: format!("127.0.0.1:740{id}"),
                raft_addr: format!("127.0.0.1:741{id}"),
                voter: id != 3,
                last_applied: (id != 2).then_some(1000 + id),
            })
            .collect(),
        removed: false,
    };
    vec![
        Ok(Reply::Registered { user: "alice".into() }),
        Ok(Reply::LoggedIn {
            user: "alice".into(),
            token: "t".repeat(32),
            expires_ms: 1 << 41,
        }),
        Ok(Reply::Done),
        Ok(Reply::Files {
            hits: (0..3)
                .map(|i| SearchHit {
                    file: meta(&format!("file {i}")),
                    live_owners: i,
                    partial_owners: 2 * i,
                })
                .collect(),
            next: Some(3),
        }),
        Ok(Reply::Owners {
            file: meta("x"),
            owners: (0..3)
                .map(|i| PeerInfo {
                    peer_id: PeerId([i as u8; 32]),
                    addrs: (0..i).map(addr).collect(),
                })
                .collect(),
            next: Some(PeerId([2; 32])),
            partial: (0..2)
                .map(|i| PartialOwner {
                    peer: PeerInfo {
                        peer_id: PeerId([9 + i as u8; 32]),
                        addrs: vec![addr(i)],
                    },
                    have: vec![0x5a; 1 + i as usize],
                })
                .collect(),
        }),
        Ok(Reply::Status(status)),
        Ok(Reply::Owned { newly_owned: 1024 }),
        Ok(Reply::Pooled {
            items: (0..2)
                .map(|i| PooledItem {
                    file: meta("renamed.flac"),
                    owners: (0..i)
                        .map(|j| PeerInfo {
                            peer_id: PeerId([j as u8; 32]),
                            addrs: vec![addr(j)],
                        })
                        .collect(),
                })
                .collect(),
        }),
        Ok(Reply::Member(Box::new(MemberReport {
            id: 2,
            api_addr: "127.0.0.1:7402".into(),
            role: "leader".into(),
            term: 9,
            leader: Some(2),
            last_log_index: Some(1000),
            commit_index: Some(999),
            applied_index: Some(998),
            snapshot_index: None,
            followers: vec![FollowerLag {
                id: 1,
                matched: Some(990),
                lag: 10,
            }],
            elections_seen: 3,
            quorum_ack_ms: Some(12),
            registry: RegistryCounts {
                users: 1,
                sessions: 2,
                files: 3,
                owners: 4,
                peers: 5,
                live_peers: Some(1),
            },
            uptime_ms: 1,
            version: "0.1.0".into(),
        }))),
        Err(ApiError::NotLeader {
            leader: Some(3),
            addr: Some("127.0.0.1:7403".into()),
        }),
        Err(ApiError::NotLoggedIn),
        Err(ApiError::BadCredentials),
        Err(ApiError::UserExists("alice".into())),
        Err(ApiError::TooManyAttempts { retry_after_ms: 500 }),
        Err(ApiError::InvalidName(NameError::TooLong {
            what: "file name".into(),
            len: 300,
            max: 255,
        })),
        Err(ApiError::InvalidName(NameError::BadId("zz".into()))),
        Err(ApiError::Invalid("no".into())),
        Err(ApiError::UnknownFile(FileId([3; 32]))),
        Err(ApiError::UnknownPeer(PeerId([4; 32]))),
        Err(ApiError::PeerOfOtherUser(PeerId([5; 32]))),
        Err(ApiError::FileConflict(FileId([6; 32]))),
        Err(ApiError::StaleWrite { seq: 1, last: 2 }),
        Err(ApiError::BadFrame("frame".into())),
        Err(ApiError::Unavailable("down".into())),
        Err(ApiError::Overloaded),
        Err(ApiError::Internal),
        Err(ApiError::Quota {
            what: "files".into(),
            limit: 10_000,
        }),
        Err(ApiError::Throttled {
            what: "register".into(),
            retry_after_ms: 1000,
        }),
    ]
}

fn peer_requests() -> Vec<PeerRequest> {
    vec![
        PeerRequest::Manifest { file: FileId([1; 32]) },
        PeerRequest::Have { file: FileId([2; 32]) },
        PeerRequest::Chunk {
            file: FileId([3; 32]),
            index: 70_000,
        },
    ]
}

fn peer_responses() -> Vec<PeerResponse> {
    vec![
        PeerResponse::Manifest {
            bytes: sample_manifest(5).encode(),
        },
        PeerResponse::Have {
            bits: vec![0xff, 0x0f, 0x00, 0x81],
            complete: false,
        },
        PeerResponse::Have {
            bits: vec![0xff; 40],
            complete: true,
        },
        PeerResponse::Chunk { len: 256 << 10 },
        PeerResponse::Error(PeerError::UnknownFile),
        PeerResponse::Error(PeerError::MissingChunk),
        PeerResponse::Error(PeerError::Busy),
        PeerResponse::Error(PeerError::BadRequest("frame".into())),
        PeerResponse::Error(PeerError::Internal),
    ]
}

fn sample_manifest(chunks: u64) -> Manifest {
    let chunk_size = MIN_CHUNK;
    Manifest {
        name: "holiday video.mp4".into(),
        size: if chunks == 0 {
            0
        } else {
            (chunks - 1) * chunk_size as u64 + 1000
        },
        chunk_size,
        chunks: (0..chunks)
            .map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes())
            .collect(),
        tree: None,
    }
}

fn manifests() -> Vec<Manifest> {
    vec![
        sample_manifest(0),
        sample_manifest(1),
        sample_manifest(7),
        Manifest {
            name: "x".into(),
            size: MAX_CHUNK as u64 * 3,
            chunk_size: MAX_CHUNK,
            chunks: vec![[9; 32]; 3],
            tree: None,
        },
        Manifest {
            name: "ü".repeat(127),
            size: 0,
            chunk_size: 1 << 20,
            chunks: vec![],
            tree: None,
        },
        Manifest {
            name: "album".into(),
            size: 3 + MIN_CHUNK as u64 + 1,
            chunk_size: MIN_CHUNK,
            chunks: vec![[1; 32], [2; 32], [3; 32]],
            tree: Some(Tree::new(vec![
                Entry::Dir { path: "cd1".into() },
                Entry::Dir {
                    path: "cd1/empty".into(),
                },
                Entry::File {
                    path: "cd1/one.bin".into(),
                    size: MIN_CHUNK as u64 + 1,
                },
                Entry::File {
                    path: "read me.txt".into(),
                    size: 3,
                },
                Entry::File {
                    path: "zero".into(),
                    size: 0,
                },
            ])),
        },
    ]
}

// ---------------------------------------------------------------- targets

#[test]
fn fuzz_tracker_envelope() {
    let limit = tracker_limit();
    fuzzkit::run("tracker Envelope", fuzzkit::inputs(bodies(&envelopes())), |body| {
        check_decode::<Envelope>(body, limit, bound(limit, 1)).map(drop)
    });
}

#[test]
fn fuzz_tracker_envelope_frames() {
    let limit = tracker_limit();
    let rt = runtime();
    fuzzkit::run(
        "tracker Envelope frame",
        fuzzkit::inputs(frames(&envelopes())),
        |stream| check_read_frame::<Envelope>(&rt, stream, limit, bound(limit, 1) + stream.len()),
    );
}

#[test]
fn fuzz_tracker_answer() {
    let limit = tracker_limit();
    fuzzkit::run("tracker Answer", fuzzkit::inputs(bodies(&answers())), |body| {
        check_decode::<Answer>(body, limit, bound(limit, 2)).map(drop)
    });
}

#[test]
fn fuzz_peer_request() {
    let rt = runtime();
    fuzzkit::run(
        "peer PeerRequest",
        fuzzkit::inputs(frames(&peer_requests())),
        |stream| {
            if stream.len() >= codec::PREFIX {
                check_decode::<PeerRequest>(&stream[codec::PREFIX..], MAX_FRAME, bound(MAX_FRAME, 0))?;
            }
            check_read_frame::<PeerRequest>(&rt, stream, MAX_FRAME, bound(MAX_FRAME, 0) + stream.len())
        },
    );
}

#[test]
fn fuzz_peer_response() {
    fuzzkit::run(
        "peer PeerResponse",
        fuzzkit::inputs(bodies(&peer_responses())),
        |body| {
            check_decode::<PeerResponse>(body, MAX_FRAME, bound(MAX_FRAME, 1))?;
            // The header frame before a chunk is read with a 64 KiB limit.
            let chunk_limit = 64 << 10;
            check_decode::<PeerResponse>(body, chunk_limit, bound(chunk_limit, 1)).map(drop)
        },
    );
}

/// A manifest from the network: the downloader checks it hashes to the
/// file id, decodes it and validates it (`Manifest::decode_checked`). An
/// attacker can register any manifest, so the id given here is the hash of
/// the bytes: the decode and the checks are what is fuzzed.
#[test]
fn fuzz_manifest() {
    fuzzkit::run("Manifest", fuzzkit::inputs(bodies(&manifests())), |bytes| {
        let id = FileId(*blake3::hash(bytes).as_bytes());
        let (res, peak) = fuzzkit::measure(|| Manifest::decode_checked(bytes, id));
        let max_alloc = bound(MAX_MANIFEST_BYTES, 1);
        ensure(peak <= max_alloc, || format!("manifest decode held {peak} bytes"))?;
        match res {
            Ok(m) => check_manifest_in_use(&m, id),
            Err(ManifestError::Codec(_) | ManifestError::Name(_) | ManifestError::ChunkSize(_))
            | Err(ManifestError::ChunkCount { .. } | ManifestError::Tree(_) | ManifestError::TreeSize { .. }) => Ok(()),
            Err(e) => Err(TestCaseError::fail(format!("unexpected manifest error: {e}"))),
        }
    });
}

/// What the node relies on once a manifest passed `decode_checked`.
fn check_manifest_in_use(m: &Manifest, id: FileId) -> Result<(), TestCaseError> {
    ensure(check_file_name(&m.name).is_ok(), || format!("unsafe name {:?}", m.name))?;
    ensure((MIN_CHUNK..=MAX_CHUNK).contains(&m.chunk_size), || "chunk size".into())?;
    let want = match &m.tree {
        None => chunk_count(m.size, m.chunk_size),
        Some(t) => t.chunk_total(m.chunk_size),
    };
    ensure(m.chunks.len() as u64 == want, || "chunk count".into())?;
    if let Some(t) = &m.tree {
        for e in &t.entries {
            let p = e.path();
            ensure(
                !p.starts_with('/') && p.split('/').all(|c| check_file_name(c).is_ok()),
                || format!("unsafe path {p:?}"),
            )?;
        }
    }
    // The node files it under `m.id()` (store, state, the tracker's
    // metadata): it must be the id it was fetched by.
    ensure(m.id() == id, || {
        format!("manifest accepted for {id} but its id is {}", m.id())
    })?;
    let total: u64 = (0..m.chunks.len() as u32).map(|i| m.chunk_len(i) as u64).sum();
    ensure(total == m.size, || {
        format!("chunk lengths sum to {total}, size {}", m.size)
    })?;
    let meta = m.meta();
    ensure(meta.chunk_count as usize == m.chunks.len(), || {
        "meta chunk count".into()
    })
}

/// A link as a friend pastes it (command-line text, so UTF-8): no panic,
/// a refusal names a field, an accepted link re-formats within the length
/// limit and parses back to itself, and a parse holds little memory.
#[test]
fn fuzz_link() {
    let sample = Link {
        id: FileId([0x3c; 32]),
        name: "a b%c ü.iso".into(),
        size: 4_700_000_000,
        proxies: vec![
            "10.0.0.21:7400".into(),
            "[2001:db8::21]:7400".into(),
            "p.example.org:1".into(),
        ],
        ca: CaFingerprint([0xa5; 32]),
    };
    let corpus = vec![
        sample.to_string().into_bytes(),
        format!("quorrent:?x=1&{}", &sample.to_string()["quorrent:?".len()..]).into_bytes(),
        b"quorrent:?v=1&id=00&name=%zz&size=-1&proxy=[::1]:0&ca=sha256:".to_vec(),
    ];
    const FIELDS: [&str; 8] = ["link", "scheme", "v", "id", "name", "size", "proxy", "ca"];
    fuzzkit::run("quorrent: link", fuzzkit::inputs(corpus), |bytes| {
        let text = String::from_utf8_lossy(bytes);
        let (res, peak) = fuzzkit::measure(|| Link::parse(&text));
        ensure(peak <= 4 * MAX_LINK_LEN + SMALL, || {
            format!("link parse held {peak} bytes")
        })?;
        match res {
            Err(e) => ensure(FIELDS.contains(&e.field), || format!("refusal names no field: {e}")),
            Ok(link) => {
                let again = link.to_string();
                ensure(again.len() <= MAX_LINK_LEN, || {
                    format!("re-formatted link is {} bytes", again.len())
                })?;
                ensure(Link::parse(&again).as_ref() == Ok(&link), || {
                    format!("{again} does not parse back")
                })
            }
        }
    });
}

#[test]
fn fuzz_config_tracker() {
    fuzz_config::<TrackerConfig>("config TrackerConfig", |c, p| c.validate(p).map_err(|e| e.to_string()));
}

#[test]
fn fuzz_config_proxy() {
    fuzz_config::<ProxyConfig>("config ProxyConfig", |_, _| Ok(()));
}

#[test]
fn fuzz_config_node() {
    fuzz_config::<NodeConfig>("config NodeConfig", |_, _| Ok(()));
}

fn config_corpus<T: Serialize + Default>() -> Vec<Vec<u8>> {
    let d = T::default();
    vec![
        b"{}".to_vec(),
        serde_json::to_vec(&d).unwrap(),
        serde_json::to_vec_pretty(&d).unwrap(),
        br#"{"raft": {"snapshot_chunk_bytes": 1}, "limits": {"max_frame_bytes": 2}}"#.to_vec(),
        br#"{"members": [{"id": 1, "api": "127.0.0.1:1", "raft": "[::1]:2"}], "join": true}"#.to_vec(),
    ]
}

/// JSON text: mutations of valid files, with numbers swapped for extreme
/// ones (the config holds sizes and times), and arbitrary bytes.
fn json_inputs(corpus: Vec<Vec<u8>>) -> impl fuzzkit::proptest::strategy::Strategy<Value = Vec<u8>> {
    use fuzzkit::proptest::prelude::*;
    let extreme = prop_oneof![
        Just("18446744073709551615"),
        Just("18446744073709551616"),
        Just("9223372036854775808"),
        Just("4294967296"),
        Just("-1"),
        Just("0"),
        Just("1e400"),
        Just("0.5"),
        Just("null"),
        Just("\"\""),
        Just("[]"),
        Just("{}"),
    ];
    (fuzzkit::inputs(corpus), any::<usize>(), extreme).prop_map(|(mut b, nth, num)| {
        // Swap the `nth` number in the text (if any) for an extreme one.
        let starts: Vec<usize> = (0..b.len())
            .filter(|&i| b[i].is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_alphanumeric()))
            .collect();
        if !starts.is_empty() && nth.is_multiple_of(2) {
            let s = starts[nth % starts.len()];
            let e = (s..b.len()).find(|&i| !b[i].is_ascii_digit()).unwrap_or(b.len());
            b.splice(s..e, num.bytes());
        }
        b
    })
}

fn fuzz_config<T>(name: &str, validate: impl Fn(&T, &Path) -> Result<(), String>)
where
    T: Serialize + DeserializeOwned + Default,
{
    let path = Path::new("fuzz.json");
    fuzzkit::run(name, json_inputs(config_corpus::<T>()), |bytes| {
        let text = String::from_utf8_lossy(bytes);
        let (res, peak) = fuzzkit::measure(|| config::parse::<T>(path, &text));
        // JSON has no preallocation from lengths: memory follows the text.
        let max_alloc = 16 * text.len() + SMALL;
        ensure(peak <= max_alloc, || {
            format!("parse of {} bytes held {peak} bytes", text.len())
        })?;
        if let Ok(c) = res {
            let _ = validate(&c, path);
            let out = serde_json::to_string(&c).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back: T = config::parse(path, &out).map_err(|e| TestCaseError::fail(format!("re-parse: {e}")))?;
            ensure(serde_json::to_string(&back).ok() == Some(out), || {
                "config does not round-trip".into()
            })?;
        }
        Ok(())
    });
}

// ------------------------------------------------------------- round trips

#[test]
fn every_corpus_value_round_trips() {
    fn same<T: Serialize + DeserializeOwned>(values: &[T], limit: usize) {
        for v in values {
            let body = codec::encode_body(v).unwrap();
            let back: T = codec::decode(&body, limit).unwrap();
            assert_eq!(codec::encode_body(&back).unwrap(), body);
        }
    }
    same(&envelopes(), tracker_limit());
    same(&answers(), tracker_limit());
    same(&peer_requests(), MAX_FRAME);
    same(&peer_responses(), MAX_FRAME);
    for m in manifests() {
        assert_eq!(Manifest::decode_checked(&m.encode(), m.id()).unwrap(), m);
    }
}

#[test]
fn the_allocator_counts() {
    let (v, peak) = fuzzkit::measure(|| vec![1u8; 3 << 20]);
    assert!(peak >= 3 << 20, "{peak}");
    drop(v);
}

// ------------------------------------------------------ regression tests

/// Finding 1: a 12-byte peer answer `Error(BadRequest(s))` whose string
/// announces 16 MiB - 64 bytes made the decoder allocate that much before
/// finding the bytes missing: `MAX_FRAME` (4 MiB + 1 KiB) picked bincode's
/// 16 MiB tier. The tier now follows the body too.
#[test]
fn regression_tiny_peer_frame_claims_16_mib() {
    let body = b"\x03\x03\xfc\xc0\xff\xff\x00frame";
    let (res, peak) = fuzzkit::measure(|| codec::decode::<PeerResponse>(body, MAX_FRAME));
    assert!(matches!(res, Err(CodecError::Malformed(_))), "{res:?}");
    assert!(peak <= SMALL + 1024, "held {peak} bytes");
}

/// Finding 1, the manifest form: a 27-byte manifest whose name announces
/// 16 MiB - 64 bytes (and the file id an attacker registers for it).
#[test]
fn regression_tiny_manifest_claims_16_mib() {
    let bytes = b"\xfc\xc0\xff\xff\x00holiday video.mp4\x00\xfb\x00\x40\x00";
    let id = FileId(*blake3::hash(bytes).as_bytes());
    let (res, peak) = fuzzkit::measure(|| Manifest::decode_checked(bytes, id));
    assert!(matches!(res, Err(ManifestError::Codec(_))), "{res:?}");
    assert!(peak <= SMALL + 1024, "held {peak} bytes");
}

/// Finding 1, the Raft-sized limit: a tiny frame read with a 64 MiB limit
/// could claim 256 MiB; now its claim is bounded by its own size.
#[test]
fn regression_tiny_frame_with_large_limit() {
    let body = b"\x03\x03\xfd\x00\x00\x00\x0f\x00\x00\x00\x00x";
    let (res, peak) = fuzzkit::measure(|| codec::decode::<PeerResponse>(body, 64 << 20));
    assert!(res.is_err());
    assert!(peak <= SMALL + 1024, "held {peak} bytes");
}

/// Finding 2: a manifest with a non-canonical integer (the size 1000 as
/// `0xfb 0xe8 0x03`, a u16 form bincode accepts) hashes to the id it is
/// fetched by, but decodes to a manifest whose own id (of the canonical
/// encoding, under which the node stores, serves and announces it) is
/// another. Such bytes are now refused. (The last byte is the manifest's
/// `tree: None`.)
#[test]
fn regression_non_canonical_manifest() {
    let bytes = b"\x11holiday video.mp4\xfb\xe8\x00\xfb\x00@\x01q\xe0\xa9\x91sVI1\xc0\xb8\xac\xc5-&\x85\xa8\xe3\x9cd\xdcR\xe3\xd0#\x90\xfd\xac*\x12\xb1U\xcb\x00";
    let id = FileId(*blake3::hash(bytes).as_bytes());
    let err = Manifest::decode_checked(bytes, id).unwrap_err();
    assert!(err.to_string().contains("canonical"), "{err}");
    // The canonical form of the same manifest is accepted.
    let m: Manifest = codec::decode(bytes, MAX_MANIFEST_BYTES).unwrap();
    assert_eq!(Manifest::decode_checked(&m.encode(), m.id()).unwrap(), m);
}

/// Finding 3: `TrackerConfig::validate` doubled `raft.snapshot_chunk_bytes`
/// unchecked: a huge value panicked with an overflow (debug) or wrapped to
/// a small number and passed (release).
#[test]
fn regression_config_snapshot_chunk_overflow() {
    let text = "{\"raft\": {\"snapshot_chunk_bytes\": 18446744073709551615}, \"limits\": {\"max_frame_bytes\": 2}}";
    let path = Path::new("t.json");
    let c: TrackerConfig = config::parse(path, text).unwrap();
    let err = c.validate(path).unwrap_err().to_string();
    assert!(err.contains("snapshot_chunk_bytes"), "{err}");
}

#[test]
fn every_request_kind_is_listed() {
    // Metrics keep one handle per listed kind; a kind missing from the
    // list would still be counted, only more slowly.
    for r in requests() {
        assert!(
            Request::KINDS.contains(&r.kind()),
            "{} missing from Request::KINDS",
            r.kind()
        );
    }
    assert_eq!(requests().len(), Request::KINDS.len(), "one sample request per kind");
}
