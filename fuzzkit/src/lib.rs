//! The fuzzing harness shared by the fuzz tests of every crate
//! (`protocol/tests/fuzz.rs`, `tracker-cluster/tests/fuzz.rs`,
//! `node/tests/fuzz.rs`): it runs on the stable toolchain with `proptest`,
//! no nightly and no libFuzzer.
//!
//! It owns three things:
//! - inputs: [`arbitrary_bytes`] (random lengths, including huge varint
//!   length prefixes) and [`mutated`], structure-aware mutations of a corpus
//!   of valid encodings (bit flips, truncation, extension, splicing, removed
//!   and duplicated sections, length fields overwritten with huge or
//!   non-canonical varints);
//! - the [`CountingAlloc`] global allocator and [`measure`], to check that a
//!   decode never holds more memory than its limit allows;
//! - [`run`]: one fuzz target for [`cases`] cases (env `QUORRENT_FUZZ_CASES`),
//!   a line of figures per target appended to `QUORRENT_FUZZ_STATS` when set
//!   (read by `scripts/fuzz.sh`), and on failure the shrunk input printed as
//!   a byte literal ready for a regression test.
//!
//! Only test code depends on this crate.

mod alloc;

use std::{io::Write as _, time::Instant};

pub use alloc::{measure, CountingAlloc};
pub use proptest;
use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestError, TestRunner},
};

/// Cases per target when `QUORRENT_FUZZ_CASES` is not set: the CI share.
pub const DEFAULT_CASES: u32 = 3000;

/// Cases per fuzz target: `QUORRENT_FUZZ_CASES`, else [`DEFAULT_CASES`].
pub fn cases() -> u32 {
    std::env::var("QUORRENT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// Formats bytes as a Rust byte-string literal for a regression test.
pub fn byte_literal(bytes: &[u8]) -> String {
    let mut s = String::from("b\"");
    for &b in bytes {
        match b {
            b'"' | b'\\' => s.push_str(&format!("\\{}", b as char)),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s.push('"');
    s
}

/// Runs one fuzz target: `check` gets [`cases`] inputs drawn from
/// `inputs`; a panic inside `check` counts as a failure (proptest catches
/// it). On failure the input is shrunk and the test panics with it as a
/// byte literal.
pub fn run<S>(name: &str, inputs: S, check: impl Fn(&[u8]) -> Result<(), TestCaseError>)
where
    S: Strategy<Value = Vec<u8>>,
{
    let cases = cases();
    let config = Config {
        cases,
        // Findings become named regression tests; no files beside the tests.
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let started = Instant::now();
    let result = runner.run(&inputs, |bytes| check(&bytes));
    let secs = started.elapsed().as_secs_f64();
    let failures = u32::from(result.is_err());
    if let Ok(path) = std::env::var("QUORRENT_FUZZ_STATS") {
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{name}\t{cases}\t{secs:.3}\t{failures}");
        }
    }
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, input)) => panic!(
            "fuzz target {name} failed: {why}\nminimal input ({} bytes): {}",
            input.len(),
            byte_literal(&input)
        ),
        Err(TestError::Abort(why)) => panic!("fuzz target {name} aborted: {why}"),
    }
}

/// Random bytes: mostly short, sometimes a few KiB, and often opening with
/// (or holding) a varint that announces a huge length.
pub fn arbitrary_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..64),
        1 => proptest::collection::vec(any::<u8>(), 0..4096),
        2 => (
            proptest::collection::vec(any::<u8>(), 0..8),
            huge_varint(),
            proptest::collection::vec(any::<u8>(), 0..32)
        )
            .prop_map(|(mut head, mid, tail)| {
                head.extend_from_slice(&mid);
                head.extend_from_slice(&tail);
                head
            }),
    ]
}

/// A value that is interesting as a length: limits, limits plus one,
/// powers of two, the largest integers.
pub fn huge_value() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(u64::MAX),
        Just(u64::from(u32::MAX)),
        Just(u64::from(u16::MAX)),
        Just(1 << 62),
        Just(1 << 32),
        Just(64 << 10),
        Just((1 << 20) - 1),
        Just(1 << 20),
        Just((1 << 20) + 1),
        Just((4 << 20) + 1024),
        Just((4 << 20) + 1025),
        Just(16 << 20),
        Just((16 << 20) + 1),
        Just(64 << 20),
        Just(256 << 20),
        Just(8 << 20),
        Just(128 << 20),
        Just((16 << 20) - 64),
        Just((256 << 20) - 64),
        (1u64 << 20)..(1 << 28),
        Just(usize::MAX as u64 / 32 + 1),
        any::<u64>(),
        (251u64..=65535),
    ]
}

/// The bincode varint encoding of `v` in the form `marker` asks for
/// (251: u16, 252: u32, 253: u64, 254: u128, anything else: the shortest),
/// truncating `v` to the width of the form.
pub fn varint(v: u64, marker: u8) -> Vec<u8> {
    match marker {
        251 => [&[251u8][..], &(v as u16).to_le_bytes()].concat(),
        252 => [&[252u8][..], &(v as u32).to_le_bytes()].concat(),
        253 => [&[253u8][..], &v.to_le_bytes()].concat(),
        254 => [&[254u8][..], &u128::from(v).to_le_bytes()].concat(),
        _ if v < 251 => vec![v as u8],
        _ if v <= u64::from(u16::MAX) => varint(v, 251),
        _ if v <= u64::from(u32::MAX) => varint(v, 252),
        _ => varint(v, 253),
    }
}

fn huge_varint() -> impl Strategy<Value = Vec<u8>> {
    (
        huge_value(),
        prop_oneof![Just(0u8), Just(251), Just(252), Just(253), Just(254), Just(255)],
    )
        .prop_map(|(v, m)| if m == 255 { vec![255] } else { varint(v, m) })
}

/// One structure-aware edit of an encoded value. Positions are taken
/// modulo the length of the input when applied.
#[derive(Debug, Clone)]
pub enum Mutation {
    FlipBit {
        at: usize,
        bit: u8,
    },
    SetByte {
        at: usize,
        value: u8,
    },
    /// A byte that matters to bincode: 0, 1, 0x7f, 0x80, 250-255.
    Interesting {
        at: usize,
        value: u8,
    },
    Truncate {
        at: usize,
    },
    Extend {
        bytes: Vec<u8>,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    Remove {
        at: usize,
        len: usize,
    },
    /// Copies a section and inserts the copy elsewhere.
    Duplicate {
        at: usize,
        len: usize,
        to: usize,
    },
    /// Inserts a section of another corpus entry.
    Splice {
        other: usize,
        from: usize,
        len: usize,
        to: usize,
    },
    /// Replaces the byte at `at` (a length or an integer, if small) with a
    /// huge varint.
    HugeVarint {
        at: usize,
        value: Vec<u8>,
    },
    /// Replaces the `nth` byte that looks like a length (a value below 251
    /// with at least that many bytes after it) with a huge varint.
    HugeLength {
        nth: usize,
        value: Vec<u8>,
    },
    /// Re-encodes a one-byte varint in a wider, non-canonical form.
    WidenVarint {
        at: usize,
        marker: u8,
    },
}

/// A strategy of single mutations.
pub fn mutation() -> impl Strategy<Value = Mutation> {
    let at = any::<usize>();
    prop_oneof![
        (at, 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        (at, any::<u8>()).prop_map(|(at, value)| Mutation::SetByte { at, value }),
        (at, prop_oneof![Just(0u8), Just(1), Just(0x7f), Just(0x80), 250u8..=255])
            .prop_map(|(at, value)| Mutation::Interesting { at, value }),
        at.prop_map(|at| Mutation::Truncate { at }),
        proptest::collection::vec(any::<u8>(), 1..64).prop_map(|bytes| Mutation::Extend { bytes }),
        (at, proptest::collection::vec(any::<u8>(), 1..16)).prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (at, 1usize..64).prop_map(|(at, len)| Mutation::Remove { at, len }),
        (at, 1usize..128, any::<usize>()).prop_map(|(at, len, to)| Mutation::Duplicate { at, len, to }),
        (any::<usize>(), any::<usize>(), 1usize..256, any::<usize>())
            .prop_map(|(other, from, len, to)| Mutation::Splice { other, from, len, to }),
        (at, huge_varint()).prop_map(|(at, value)| Mutation::HugeVarint { at, value }),
        (any::<usize>(), huge_varint()).prop_map(|(nth, value)| Mutation::HugeLength { nth, value }),
        (at, 251u8..=253).prop_map(|(at, marker)| Mutation::WidenVarint { at, marker }),
    ]
}

impl Mutation {
    /// Applies the edit; `corpus` is the source of splices.
    pub fn apply(&self, b: &mut Vec<u8>, corpus: &[Vec<u8>]) {
        let pos = |at: usize, len: usize| if len == 0 { 0 } else { at % len };
        match self {
            Mutation::FlipBit { at, bit } if !b.is_empty() => {
                let i = pos(*at, b.len());
                b[i] ^= 1 << bit;
            }
            Mutation::SetByte { at, value } | Mutation::Interesting { at, value } if !b.is_empty() => {
                let i = pos(*at, b.len());
                b[i] = *value;
            }
            Mutation::Truncate { at } => b.truncate(pos(*at, b.len())),
            Mutation::Extend { bytes } => b.extend_from_slice(bytes),
            Mutation::Insert { at, bytes } => {
                let i = pos(*at, b.len() + 1);
                b.splice(i..i, bytes.iter().copied());
            }
            Mutation::Remove { at, len } if !b.is_empty() => {
                let i = pos(*at, b.len());
                let end = (i + len).min(b.len());
                b.drain(i..end);
            }
            Mutation::Duplicate { at, len, to } if !b.is_empty() => {
                let i = pos(*at, b.len());
                let section = b[i..(i + len).min(b.len())].to_vec();
                let j = pos(*to, b.len() + 1);
                b.splice(j..j, section);
            }
            Mutation::Splice { other, from, len, to } if !corpus.is_empty() => {
                let o = &corpus[other % corpus.len()];
                if !o.is_empty() {
                    let i = pos(*from, o.len());
                    let section = o[i..(i + len).min(o.len())].to_vec();
                    let j = pos(*to, b.len() + 1);
                    b.splice(j..j, section);
                }
            }
            Mutation::HugeVarint { at, value } if !b.is_empty() => {
                let i = pos(*at, b.len());
                b.splice(i..i + 1, value.iter().copied());
            }
            Mutation::HugeLength { nth, value } => {
                let candidates: Vec<usize> = (0..b.len())
                    .filter(|&i| b[i] > 0 && b[i] < 251 && i + 1 + b[i] as usize <= b.len())
                    .collect();
                if !candidates.is_empty() {
                    let i = candidates[nth % candidates.len()];
                    b.splice(i..i + 1, value.iter().copied());
                }
            }
            Mutation::WidenVarint { at, marker } if !b.is_empty() => {
                let i = pos(*at, b.len());
                if b[i] < 251 {
                    let wide = varint(u64::from(b[i]), *marker);
                    b.splice(i..i + 1, wide);
                }
            }
            _ => {}
        }
    }
}

/// Structure-aware inputs: an entry of `corpus` (valid encodings) with one
/// to four [`Mutation`]s applied, and now and then the entry unchanged.
pub fn mutated(corpus: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    assert!(!corpus.is_empty(), "empty corpus");
    let n = corpus.len();
    (0..n, proptest::collection::vec(mutation(), 0..=4)).prop_map(move |(i, edits)| {
        let mut b = corpus[i].clone();
        for e in &edits {
            e.apply(&mut b, &corpus);
        }
        b
    })
}

/// Both kinds of input for one target: a quarter arbitrary bytes, the rest
/// mutations of `corpus`.
pub fn inputs(corpus: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![1 => arbitrary_bytes(), 3 => mutated(corpus)]
}

/// Fails the case with `what` when `cond` is false (like `prop_assert!`,
/// usable from plain functions).
pub fn ensure(cond: bool, what: impl FnOnce() -> String) -> Result<(), TestCaseError> {
    if cond {
        Ok(())
    } else {
        Err(TestCaseError::fail(what()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::ValueTree;

    #[test]
    fn varints_have_the_requested_form() {
        assert_eq!(varint(5, 0), vec![5]);
        assert_eq!(varint(5, 251), vec![251, 5, 0]);
        assert_eq!(varint(300, 0), vec![251, 0x2c, 1]);
        assert_eq!(varint(u64::MAX, 0)[0], 253);
    }

    #[test]
    fn byte_literals_escape() {
        assert_eq!(byte_literal(b"a\"\\\x00\xff"), r#"b"a\"\\\x00\xff""#);
    }

    #[test]
    fn mutations_stay_in_bounds() {
        let corpus = vec![vec![], vec![3, b'a', b'b', b'c'], vec![0; 10]];
        let mut runner = TestRunner::default();
        for _ in 0..2000 {
            let m = mutation().new_tree(&mut runner).unwrap().current();
            for c in &corpus {
                let mut b = c.clone();
                m.apply(&mut b, &corpus);
            }
        }
    }
}
