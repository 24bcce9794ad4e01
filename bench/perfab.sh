#!/usr/bin/env bash
# perf A/B of one Go benchmark between two commits: bench/ab.sh's FOCUS
# column from perf's sampling (FREQ Hz, 4000 by default) instead of pprof's
# 100 Hz, so that a part of ~50 ns per operation shows. The two builds run
# alternately, the order swapped every round. Usage:
#   bench/perfab.sh BASE HEAD
# Knobs: PKG (./internal/agent/), BENCH (^BenchmarkL7HTTP1$), N (300000),
# ROUNDS (8), FREQ (4000), FOCUS (Agent..handleConn: a frame every counted
# sample has), IGNORE (bench/ab.sh's: samples with such a frame are not
# counted), PARTS (function names, ';'-separated: each one's inclusive
# ns per operation, pooled over the rounds; a name matches a frame that
# ends with it).
set -Eeuo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BASE=${1:?usage: bench/perfab.sh BASE HEAD}
HEAD=${2:?usage: bench/perfab.sh BASE HEAD}
PKG=${PKG:-./internal/agent/}
BENCH=${BENCH:-'^BenchmarkL7HTTP1$'}
N=${N:-300000}
ROUNDS=${ROUNDS:-8}
FREQ=${FREQ:-4000}
FOCUS=${FOCUS:-'Agent\)\.handleConn'}
IGNORE=${IGNORE:-'Syscall|rawRead|rawWrite|runtime.schedule|findRunnable|park_m|runtime.mcall|futex|netpoll|wakep|ready'}
PARTS=${PARTS:-'.ScrubRequestHeader;.leanFields;.poolFor;.writeRequest;.MonoTime'}
TMP=$(mktemp -d)
cleanup() {
  for v in a b; do
    [ -d "$TMP/$v" ] && git worktree remove --force "$TMP/$v" >/dev/null 2>&1
  done
  rm -rf "$TMP"
}
trap cleanup EXIT
for v in a b; do
  rev=$BASE
  [ "$v" = b ] && rev=$HEAD
  git worktree add --detach "$TMP/$v" "$rev" >/dev/null 2>&1
  echo "perfab: building $PKG at $(git -C "$TMP/$v" rev-parse --short HEAD) ($v)" >&2
  (cd "$TMP/$v" && go test -c -o "$TMP/$v.test" "$PKG")
done

# count SCRIPT: "focus N" then "COUNT FRAME" for every frame of the counted
# samples (each frame once per sample).
count() {
  awk -v focus="$FOCUS" -v ig="$IGNORE" 'BEGIN { RS = ""; FS = "\n" }
    { f = 0; i0 = 0; delete seen
      for (i = 1; i <= NF; i++) { s = $i; sub(/^[ \t]*[0-9a-f]+ /, "", s); fr[i] = s
        if (s ~ focus) f = 1; if (s ~ ig) i0 = 1 }
      if (!f || i0) next
      n++; for (i = 1; i <= NF; i++) if (!(fr[i] in seen)) { seen[fr[i]] = 1; c[fr[i]]++ } }
    END { print "focus", n + 0; for (k in c) print c[k], k }' "$1"
}

echo "| round | build | cpu-ns/op | focus-ns/op (perf) |"
echo "|---|---|---|---|"
for r in $(seq "$ROUNDS"); do
  order="a b"
  [ $((r % 2)) = 0 ] && order="b a"
  for v in $order; do
    line=$(cd "$ROOT/$PKG" && perf record -q -F "$FREQ" -g -o "$TMP/$v-$r.perf" "$TMP/$v.test" -test.run '^$' -test.bench "$BENCH" -test.benchtime "${N}x" -test.count 1 -test.benchmem 2>/dev/null | grep '^Benchmark')
    perf script -i "$TMP/$v-$r.perf" -F ip,sym 2>/dev/null >"$TMP/$v-$r.script"
    rm -f "$TMP/$v-$r.perf"
    count "$TMP/$v-$r.script" >"$TMP/$v-$r.count"
    s=$(awk 'NR == 1 { print $2 }' "$TMP/$v-$r.count")
    echo "$line" | awk -v r="$r" -v v="$v" -v s="$s" -v f="$FREQ" -v n="$N" '{ c = "-"
        for (i = 2; i < NF; i++) if ($(i+1) == "cpu-ns/op") c = $i
        printf "| %s | %s | %s | %.0f |\n", r, v, c, s / f / n * 1e9 }'
  done
done | tee "$TMP/rows"
awk -F'|' 'function med(x, n,  i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (x[j] < x[i]) { t = x[i]; x[i] = x[j]; x[j] = t }
    return n % 2 ? x[(n + 1) / 2] : (x[n / 2] + x[n / 2 + 1]) / 2 }
  { v = $3; gsub(/ /, "", v); n[v]++; c[v, n[v]] = $4 + 0; f[v, n[v]] = $5 + 0 }
  END { for (v in n) { for (i = 1; i <= n[v]; i++) { cc[i] = c[v, i]; ff[i] = f[v, i] }
      printf "| median | %s | %.0f | %.0f |\n", v, med(cc, n[v]), med(ff, n[v]) } }' "$TMP/rows" | sort -k4
echo
echo "Pooled over the $ROUNDS rounds, ns per operation (inclusive) under $FOCUS:"
echo
echo "| part | a | b |"
echo "|---|---|---|"
pooled() { # BUILD PART: inclusive samples of frames ending in PART, summed over rounds (largest frame)
  cat "$TMP/$1"-*.count | awk -v p="$2" 'NR > 0 && $1 != "focus" { k = $0; sub(/^[0-9]+ /, "", k); if (p == "" || substr(k, length(k) - length(p) + 1) == p) t[k] += $1 }
    $1 == "focus" && p == "" { all += $2 }
    END { if (p == "") { print all + 0; exit } m = 0; for (k in t) if (t[k] > m) m = t[k]; print m + 0 }'
}
ta=$(pooled a "")
tb=$(pooled b "")
k=$(awk -v f="$FREQ" -v n="$N" -v r="$ROUNDS" 'BEGIN { print 1e9 / f / n / r }')
awk -v a="$ta" -v b="$tb" -v k="$k" 'BEGIN { printf "| (all) | %.0f | %.0f |\n", a * k, b * k }'
IFS=';' read -ra parts <<<"$PARTS"
for p in "${parts[@]}"; do
  awk -v p="$p" -v a="$(pooled a "$p")" -v b="$(pooled b "$p")" -v k="$k" 'BEGIN { printf "| %s | %.0f | %.0f |\n", p, a * k, b * k }'
done
