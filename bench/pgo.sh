#!/usr/bin/env bash
# What profile-guided optimization would buy the agent (issue 14), in one
# run: CPU profiles of the data-plane Go benchmarks, merged into one
# profile, then the agent's L7 benchmarks built without PGO and with that
# profile, run alternately ROUNDS times, each run's cpu-ns/op printed side
# by side. The profiled benchmarks are the request paths a node carries:
#   - BenchmarkL7HTTP1: keep-alive HTTP/1.1 through one agent (the fast path);
#   - BenchmarkL7H2: h2c with 10 streams, and gRPC unary calls (h2srv, h2up);
#   - BenchmarkTwoAgentRelay: TCP between two agents over the mesh (yamux);
#   - BenchmarkPingPongRelay: the agent's L4 copy loop.
# The binaries do not use PGO (no default.pgo in cmd/): BENCHMARKS.md
# ("Looked at and not taken: profile-guided optimization") has why.
#
# Knobs: ROUNDS (5), N (operations per benchmark run, 60000), OUT (where
# the merged profile is kept; default bench/out/agent-<date>.pgo).
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ROUNDS=${ROUNDS:-5}
N=${N:-60000}
mkdir -p bench/out
OUT=${OUT:-bench/out/agent-$(date -u +%Y%m%d-%H%M%S).pgo}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

prof() { # PKG BENCH COUNT: one benchmark's CPU profile into $TMP
  local name=${2//[^A-Za-z0-9]/_}
  echo "pgo: profiling $2 ($3 operations) in $1" >&2
  # -pgo=off: the profile is of code built without one, as PGO expects.
  go test -pgo=off -run '^$' -bench "^$2\$" -benchtime "$3x" -count 1 \
    -cpuprofile "$TMP/$name.pprof" -o "$TMP/$name.test" "$1" >/dev/null
}
prof ./internal/agent/ BenchmarkL7HTTP1 200000
prof ./internal/agent/ BenchmarkL7H2 100000
prof ./internal/transport/ BenchmarkTwoAgentRelay 20000
prof ./internal/proxy/ BenchmarkPingPongRelay 100000
go tool pprof -proto "$TMP"/*.pprof >"$OUT" 2>/dev/null
echo "pgo: merged profile $OUT ($(stat -c %s "$OUT") bytes)" >&2

echo "pgo: building the agent's benchmarks without and with it" >&2
go test -c -pgo=off -o "$TMP/off.test" ./internal/agent/
go test -c -pgo="$ROOT/$OUT" -o "$TMP/pgo.test" ./internal/agent/

echo "| round | build | benchmark | cpu-ns/op | ns/op |"
echo "|---|---|---|---|---|"
for r in $(seq "$ROUNDS"); do
  for v in off pgo; do
    "$TMP/$v.test" -test.run '^$' -test.bench 'BenchmarkL7HTTP1$|BenchmarkL7H2$' -test.benchtime "${N}x" -test.count 1 |
      awk -v r="$r" -v v="$v" '/^Benchmark/ { for (i = 1; i < NF; i++) if ($(i+1) == "cpu-ns/op") c = $i; else if ($(i+1) == "ns/op") w = $i
        sub(/-[0-9]+$/, "", $1); printf "| %s | %s | %s | %s | %s |\n", r, v, $1, c, w }'
  done
done
