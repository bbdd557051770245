#!/usr/bin/env bash
# The long fuzz run (issue 7, part 4): the same fuzz targets `cargo test`
# runs with a few thousand cases each (protocol/tests/fuzz.rs,
# tracker-cluster/tests/fuzz.rs, node/tests/fuzz.rs, harness in fuzzkit/),
# built in release and run with CASES cases per target (default
# 1,000,000). Prints a Markdown table: target, cases, seconds, cases/s,
# failures. A failure prints the shrunk input as a byte literal (above the
# table); turn it into a named regression test.
# Environment: FUZZ_THREADS (targets run at once, default 2),
# CARGO_TARGET_DIR (default target).
# Usage: scripts/fuzz.sh [CASES]
set -euo pipefail
cd "$(dirname "$0")/.."

CASES="${1:-1000000}"
THREADS="${FUZZ_THREADS:-2}"
mkdir -p run
STATS="run/fuzz-stats.tsv"
: >"$STATS"

status=0
QUORRENT_FUZZ_CASES="$CASES" QUORRENT_FUZZ_STATS="$PWD/$STATS" RUST_BACKTRACE=0 \
    cargo test --release -p protocol -p tracker-cluster -p node --test fuzz -- fuzz_ \
    --test-threads="$THREADS" || status=$?

echo
echo "| decoder | cases | seconds | cases/s | failures |"
echo "|---|---:|---:|---:|---:|"
awk -F'\t' '{
        if (!($1 in cases)) order[n++] = $1
        cases[$1] += $2; secs[$1] += $3; fail[$1] += $4
    }
    END {
        for (i = 0; i < n; i++) {
            k = order[i]
            rate = secs[k] > 0 ? cases[k] / secs[k] : 0
            printf "| %s | %d | %.1f | %.0f | %d |\n", k, cases[k], secs[k], rate, fail[k]
        }
    }' "$STATS"
echo
echo "(threads: $THREADS; figures per target as it ran, sharing the machine)"
exit "$status"
