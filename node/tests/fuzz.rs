//! Fuzz targets of what the node parses from peers and from its home
//! (issue 7, part 4): the have-bitmap of a peer's `Have` answer as the
//! downloader uses it (`Scheduler::add_peer`/`update_have`, then
//! `assign`) and as the verified-chunk sidecar is read back
//! (`HaveBits::from_bytes`), and the home's `state.json` and
//! `session.json` (`Home::state`, `Home::session`). Properties: no panic,
//! errors not crashes, memory that follows the chunk count and not the
//! size of the bitmap, and the bitmap read exactly as the wire form says
//! (bit `i` of byte `i / 8`, bits past the chunk count ignored).

use std::path::PathBuf;

use fuzzkit::{ensure, proptest::test_runner::TestCaseError};
use node::{
    download::scheduler::{SchedConfig, Scheduler},
    home::{Home, Session},
    state::{FileRecord, State},
    store::HaveBits,
};
use protocol::{
    codec,
    ids::FileId,
    peer::{PeerResponse, MAX_FRAME},
};

#[global_allocator]
static ALLOC: fuzzkit::CountingAlloc = fuzzkit::CountingAlloc;

const SMALL: usize = 64 << 10;
/// Largest chunk count the scheduler check runs with (`assign` is
/// quadratic in the worst case; the bit reading is the same at any size).
const MAX_N: u32 = 256;

fn bit(bits: &[u8], i: u32) -> bool {
    bits.get(i as usize / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

fn have_bodies() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (len, fill) in [
        (0usize, 0u8),
        (1, 0x01),
        (2, 0xff),
        (8, 0xa5),
        (64, 0x7f),
        (75, 0xff),
        (600, 0x10),
    ] {
        let resp = PeerResponse::Have {
            bits: vec![fill; len],
            complete: fill == 0xff,
        };
        out.push(codec::encode_body(&resp).unwrap());
    }
    out
}

/// Chunk counts to read one bitmap with: the edges around its length and
/// one derived from the input.
fn chunk_counts(input: &[u8], bits: &[u8]) -> Vec<u32> {
    let l = bits.len() as u32 * 8;
    let derived = u32::from(u16::from_le_bytes([
        input.first().copied().unwrap_or(0),
        input.get(1).copied().unwrap_or(0),
    ])) % (MAX_N + 1);
    let mut ns = vec![0, 1, 7, 8, 9, 63, 64, 65, l.saturating_sub(1), l, l + 1, derived];
    ns.retain(|&n| n <= MAX_N);
    ns.sort_unstable();
    ns.dedup();
    ns
}

fn check_have_bits(n: u32, bits: &[u8]) -> Result<(), TestCaseError> {
    let (have, peak) = fuzzkit::measure(|| HaveBits::from_bytes(n, bits));
    ensure(peak <= n as usize / 8 + SMALL, || {
        format!("HaveBits::from_bytes({n}, {} bytes) held {peak} bytes", bits.len())
    })?;
    let want: Vec<u8> = (0..n.div_ceil(8))
        .map(|byte| {
            (0..8)
                .filter(|k| byte * 8 + k < n && bit(bits, byte * 8 + k))
                .fold(0u8, |acc, k| acc | 1 << k)
        })
        .collect();
    ensure(have.to_bytes() == want, || format!("HaveBits of {n} chunks misread"))?;
    let count = want.iter().map(|b| b.count_ones()).sum::<u32>();
    ensure(have.count() == count, || "HaveBits count".into())?;
    ensure(have.is_complete() == (count == n), || "HaveBits completeness".into())?;
    ensure(!have.get(n), || "a chunk past the end is held".into())
}

/// A peer joins with `first`, then refreshes to `second`; the scheduler
/// must ask it for exactly the chunks `second` holds.
fn check_scheduler(n: u32, first: &[u8], second: &[u8]) -> Result<(), TestCaseError> {
    let mut cfg = SchedConfig::new(n as usize + 2, n as usize + 2);
    cfg.min_depth = n as usize + 2;
    let mut s = Scheduler::new(n, cfg, |_| false);
    let (p, peak) = fuzzkit::measure(|| s.add_peer(first));
    ensure(peak <= n as usize + SMALL, || {
        format!("add_peer of {} bytes for {n} chunks held {peak} bytes", first.len())
    })?;
    s.update_have(p, second);
    let q = s.add_peer(first);
    s.peer_gone(q);
    let mut asked: Vec<u32> = s
        .assign(0)
        .into_iter()
        .map(|(peer, c)| {
            assert_eq!(peer, p, "a request went to a peer that is gone");
            c
        })
        .collect();
    asked.sort_unstable();
    let want: Vec<u32> = (0..n).filter(|&c| bit(second, c)).collect();
    ensure(asked == want, || {
        format!("asked for {} chunks, the peer holds {} of {n}", asked.len(), want.len())
    })?;
    let _ = s.progress();
    Ok(())
}

/// The bitmap as it arrives: a `PeerResponse` frame body; a `Have` answer
/// is used as the downloader uses it, and bytes that do not decode are
/// used as a raw bitmap too (the sidecar file holds one).
#[test]
fn fuzz_have_bitmap() {
    fuzzkit::run("have-bitmap", fuzzkit::inputs(have_bodies()), |input| {
        let bits = match codec::decode::<PeerResponse>(input, MAX_FRAME) {
            Ok(PeerResponse::Have { bits, .. }) => bits,
            _ => input.to_vec(),
        };
        let ns = chunk_counts(input, &bits);
        for &n in &ns {
            check_have_bits(n, &bits)?;
        }
        // Against itself, its complement and a truncation.
        let flipped: Vec<u8> = bits.iter().map(|b| !b).collect();
        let half = &bits[..bits.len() / 2];
        let n = ns[ns.len() / 2];
        check_scheduler(n, &bits, &flipped)?;
        check_scheduler(ns[ns.len() - 1], &flipped, half)?;
        Ok(())
    });
}

fn state_corpus() -> Vec<Vec<u8>> {
    let mut state = State::default();
    state.files.insert(
        FileId([1; 32]).to_hex(),
        FileRecord {
            name: "film.mkv".into(),
            size: 1 << 30,
            path: PathBuf::from("/data/film.mkv"),
            partial_in: None,
        },
    );
    state.files.insert(
        FileId([2; 32]).to_hex(),
        FileRecord {
            name: "ünï cödé".into(),
            size: 0,
            path: PathBuf::from("/tmp/dl/.quorrent/x.part"),
            partial_in: Some(PathBuf::from("/tmp/dl")),
        },
    );
    let session = Session {
        user: "alice".into(),
        token: "0123456789abcdef".into(),
        expires_ms: 1 << 41,
    };
    vec![
        b"{}".to_vec(),
        b"{\"files\": {}}".to_vec(),
        serde_json::to_vec(&state).unwrap(),
        serde_json::to_vec_pretty(&state).unwrap(),
        serde_json::to_vec(&session).unwrap(),
    ]
}

/// `state.json` and `session.json` as the node reads them from its home
/// (written by an older or crashed run, or by hand): every case through
/// the parser `Home::state` uses (`serde_json::from_slice`), one case in
/// eight through the real file and `Home::state`/`Home::session` (disk
/// writes are slow on a busy machine).
#[test]
fn fuzz_home_state_and_session() {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::open(Some(dir.path().to_path_buf()), None).unwrap();
    fuzzkit::run("home state.json", fuzzkit::inputs(state_corpus()), |bytes| {
        let (state, peak) = fuzzkit::measure(|| serde_json::from_slice::<State>(bytes));
        ensure(peak <= 16 * bytes.len() + SMALL, || {
            format!("state.json of {} bytes held {peak} bytes", bytes.len())
        })?;
        let _ = serde_json::from_slice::<Session>(bytes);
        if !bytes.len().is_multiple_of(8) {
            return Ok(());
        }
        std::fs::write(dir.path().join("state.json"), bytes).unwrap();
        std::fs::write(dir.path().join("session.json"), bytes).unwrap();
        let read = home.state();
        ensure(read.is_ok() == state.is_ok(), || {
            "Home::state disagrees with the parser".into()
        })?;
        let _ = home.session();
        if let Ok(state) = read {
            for (hex, rec) in &state.files {
                let _ = hex.parse::<FileId>();
                let _ = protocol::ids::check_file_name(&rec.name);
            }
            // What the node writes back reads back the same.
            home.update_state(|_| {})
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let again = home.state().map_err(|e| TestCaseError::fail(e.to_string()))?;
            ensure(again.files == state.files, || "state.json does not round-trip".into())?;
        }
        Ok(())
    });
}

/// The largest bitmap a manifest allows (4 MiB / 32 = 131,072 chunks),
/// read from an oversized and an undersized wire form.
#[test]
fn have_bits_at_the_largest_chunk_count() {
    let n = (protocol::content::MAX_MANIFEST_BYTES / 32) as u32;
    for bits in [vec![0xffu8; n as usize / 8 + 4096], vec![0x55; 100]] {
        check_have_bits(n, &bits).unwrap();
    }
}
