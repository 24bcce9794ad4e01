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
#
# FOCUS (a pprof regexp, e.g. 'Agent..handleConn': the agent's connection
# goroutines) adds a CPU profile of every run and the column focus-ns/op:
# the samples under FOCUS outside system calls and the scheduler (IGNORE)
# per operation, the part of the process's CPU that is the proxy's own
# user-mode work. At the end it prints, from the rounds' profiles pooled per
# build, that figure and each part of it named in PARTS (pprof regexps,
# separated by ';'). pprof samples at 100 Hz: pool several rounds.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BASE=${1:?usage: bench/ab.sh BASE [HEAD]}
HEAD=${2:-HEAD}
PKG=${PKG:-./internal/agent/}
BENCH=${BENCH:-'^BenchmarkL7HTTP1$'}
N=${N:-60000}
ROUNDS=${ROUNDS:-5}
FOCUS=${FOCUS:-}
IGNORE=${IGNORE:-'Syscall|rawRead|rawWrite|runtime.schedule|findRunnable|park_m|runtime.mcall|futex|netpoll|wakep|ready'}
PARTS=${PARTS:-'mallocgc|newobject|makemap|growToSmall|newarray|makeslice|gcAssist|gcDrain;time.Now|time.now|nanotime|walltime|runtimeNano|time.Since;sync...Map|internal/sync'}
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

# seconds: the "accounting for" total of pprof -top over the given profiles.
seconds() {
  go tool pprof -top -nodefraction=0 -nodecount=1000000 "$@" 2>/dev/null |
    awk '/accounting for/ { for (i = 1; i <= NF; i++) if ($i == "for") { v = $(i+1); sub(/,$/, "", v)
      if (v ~ /ms$/) { sub(/ms$/, "", v); v /= 1000 } else if (v ~ /us$/) { sub(/us$/, "", v); v /= 1e6 } else sub(/s$/, "", v)
      print v + 0; exit } }'
}

echo "| round | build | ns/op | cpu-ns/op | allocs/op | B/op | focus-ns/op |"
echo "|---|---|---|---|---|---|---|"
for r in $(seq "$ROUNDS"); do
  for v in a b; do
    prof=()
    [ -n "$FOCUS" ] && prof=(-test.cpuprofile "$TMP/$v-$r.pprof")
    line=$(cd "$ROOT/$PKG" && "$TMP/$v.test" -test.run '^$' -test.bench "$BENCH" -test.benchtime "${N}x" -test.count 1 -test.benchmem "${prof[@]}" | grep '^Benchmark')
    f="-"
    if [ -n "$FOCUS" ]; then
      f=$(awk -v s="$(seconds -focus "$FOCUS" -ignore "$IGNORE" "$TMP/$v.test" "$TMP/$v-$r.pprof")" -v n="$N" 'BEGIN { printf "%.0f", s * 1e9 / n }')
    fi
    echo "$line" | awk -v r="$r" -v v="$v" -v f="$f" '{ c = "-"
        for (i = 2; i < NF; i++) { u = $(i+1); if (u == "ns/op") w = $i; else if (u == "cpu-ns/op") c = $i; else if (u == "allocs/op") a = $i; else if (u == "B/op") b = $i }
        printf "| %s | %s | %s | %s | %s | %s | %s |\n", r, v, w, c, a, b, f }'
  done
done | tee "$TMP/rows"
awk -F'|' 'function med(x, n,  i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (x[j] < x[i]) { t = x[i]; x[i] = x[j]; x[j] = t }
    return n % 2 ? x[(n + 1) / 2] : (x[n / 2] + x[n / 2 + 1]) / 2 }
  { v = $3; gsub(/ /, "", v); n[v]++; w[v, n[v]] = $4 + 0; c[v, n[v]] = $5 + 0; a[v, n[v]] = $6 + 0; f[v, n[v]] = $8 + 0 }
  END { for (v in n) { for (i = 1; i <= n[v]; i++) { ww[i] = w[v, i]; cc[i] = c[v, i]; aa[i] = a[v, i]; ff[i] = f[v, i] }
      printf "| median | %s | %.0f | %.0f | %.0f | | %.0f |\n", v, med(ww, n[v]), med(cc, n[v]), med(aa, n[v]), med(ff, n[v]) } }' "$TMP/rows" | sort -k4
if [ -n "$FOCUS" ]; then
  echo
  echo "Pooled over the $ROUNDS rounds, ns per operation under $FOCUS (outside system calls and the scheduler), and the parts of it:"
  echo
  echo "| part | a | b |"
  echo "|---|---|---|"
  IFS=';' read -r -a parts <<<"$PARTS"
  for part in "(all)" "${parts[@]}"; do
    row="| ${part//|/\\|} |"
    for v in a b; do
      if [ "$part" = "(all)" ]; then
        s=$(seconds -focus "$FOCUS" -ignore "$IGNORE" "$TMP/$v.test" "$TMP/$v"-*.pprof)
      else
        s=$(seconds -focus "$FOCUS" -ignore "$IGNORE" -show_from "$part" "$TMP/$v.test" "$TMP/$v"-*.pprof)
      fi
      row+=" $(awk -v s="${s:-0}" -v n="$((N * ROUNDS))" 'BEGIN { printf "%.0f", s * 1e9 / n }') |"
    done
    echo "$row"
  done
fi
