#!/usr/bin/env bash
# Goroutine hand-offs per operation of a Go benchmark (issue 14): the
# package's test binary built at REV (default: the working tree), the
# benchmark run once under the runtime tracer, and bench/handoffs (its own
# module) counting in the trace which goroutine woke which, per operation.
# Setup (the agent's start, the benchmark's first run of one operation)
# is in the trace too: with N in the tens of thousands it adds under 1 %.
# Usage:
#   bench/handoffs.sh [REV]
# Knobs: PKG (./internal/agent/), BENCH (^BenchmarkL7H2/grpc$), N
# (operations, 20000), DEPTH (frames of the waker's stack named, 3).
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
REV=${1:-}
PKG=${PKG:-./internal/agent/}
BENCH=${BENCH:-'^BenchmarkL7H2/grpc$'}
N=${N:-20000}
DEPTH=${DEPTH:-3}
TMP=$(mktemp -d)
cleanup() {
  [ -d "$TMP/src" ] && git worktree remove --force "$TMP/src" >/dev/null 2>&1
  rm -rf "$TMP"
}
trap cleanup EXIT

SRC=$ROOT
if [ -n "$REV" ]; then
  git worktree add --detach "$TMP/src" "$REV" >/dev/null 2>&1
  SRC=$TMP/src
fi
echo "handoffs: building $PKG at $(git -C "$SRC" rev-parse --short HEAD)$( [ -z "$REV" ] && ! git diff --quiet && echo ' (with changes)')" >&2
(cd "$SRC" && go test -c -o "$TMP/pkg.test" "$PKG")
(cd bench/handoffs && go build -o "$TMP/handoffs" .)
(cd "$SRC/$PKG" && "$TMP/pkg.test" -test.run '^$' -test.bench "$BENCH" -test.benchtime "${N}x" -test.trace "$TMP/trace.out") |
  grep -E '^Benchmark' >&2
"$TMP/handoffs" -n "$N" -depth "$DEPTH" "$TMP/trace.out"
