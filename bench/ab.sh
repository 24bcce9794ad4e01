#!/usr/bin/env bash
# A/B of one Go benchmark between two commits, in one run: the package's
# test binary built at each, then run alternately ROUNDS times, each run's
# figures printed side by side with the medians (as bench/pgo.sh does for
# PGO). Usage:
#   bench/ab.sh BASE [HEAD]       (HEAD: the working tree's commit, HEAD)
# Knobs: PKG (./internal/agent/), BENCH (^BenchmarkL7HTTP1$), N (operations
# per run, 60000), ROUNDS (5). cpu-ns/op is the CPU time (user and system,
# all threads) of the whole benchmark process per operation, where the
# benchmark reports it (BenchmarkL7HTTP1 and BenchmarkL7H2 do).
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BASE=${1:?usage: bench/ab.sh BASE [HEAD]}
HEAD=${2:-HEAD}
PKG=${PKG:-./internal/agent/}
BENCH=${BENCH:-'^BenchmarkL7HTTP1$'}
N=${N:-60000}
ROUNDS=${ROUNDS:-5}
TMP=$(mktemp -d)
cleanup() {
  for v in a b; do
    [ -d "$TMP/$v" ] && git worktree remove --force "$TMP/$v" >/dev/null 2>&1
  done
  rm -rf "$TMP"
}
trap cleanup EXIT

build() { # NAME REV
  git worktree add --detach "$TMP/$1" "$2" >/dev/null 2>&1
  echo "ab: building $PKG at $(git -C "$TMP/$1" rev-parse --short HEAD) ($1)" >&2
  (cd "$TMP/$1" && go test -c -o "$TMP/$1.test" "$PKG")
}
build a "$BASE"
build b "$HEAD"

echo "| round | build | ns/op | cpu-ns/op | allocs/op | B/op |"
echo "|---|---|---|---|---|---|"
for r in $(seq "$ROUNDS"); do
  for v in a b; do
    (cd "$ROOT/$PKG" && "$TMP/$v.test" -test.run '^$' -test.bench "$BENCH" -test.benchtime "${N}x" -test.count 1 -test.benchmem) |
      awk -v r="$r" -v v="$v" '/^Benchmark/ { c = "-"
        for (i = 2; i < NF; i++) { u = $(i+1); if (u == "ns/op") w = $i; else if (u == "cpu-ns/op") c = $i; else if (u == "allocs/op") a = $i; else if (u == "B/op") b = $i }
        printf "| %s | %s | %s | %s | %s | %s |\n", r, v, w, c, a, b }'
  done
done | tee "$TMP/rows"
awk -F'|' 'function med(x, n,  i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (x[j] < x[i]) { t = x[i]; x[i] = x[j]; x[j] = t }
    return n % 2 ? x[(n + 1) / 2] : (x[n / 2] + x[n / 2 + 1]) / 2 }
  { v = $3; gsub(/ /, "", v); n[v]++; w[v, n[v]] = $4 + 0; c[v, n[v]] = $5 + 0; a[v, n[v]] = $6 + 0 }
  END { for (v in n) { for (i = 1; i <= n[v]; i++) { ww[i] = w[v, i]; cc[i] = c[v, i]; aa[i] = a[v, i] }
      printf "| median | %s | %.0f | %.0f | %.0f | |\n", v, med(ww, n[v]), med(cc, n[v]), med(aa, n[v]) } }' "$TMP/rows" | sort -k4
