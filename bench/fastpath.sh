#!/usr/bin/env bash
# Focused benchmark of the kernel fast path's bulk throughput (issue 14,
# row (b-bpf) of bench.sh): iperf3 (1 stream, IPERF_SECONDS) direct,
# through one agent with `fastPath: {mode: required}` and through one
# without it (its userspace splice relay, row (b)), interleaved,
# ROUNDS rounds, first on a machine left alone, then (HOG_SECONDS > 0)
# with one busy shell loop beside them for the rounds' length: a core
# taken by other work, as on a shared edge node. After each set it reads
# the agent's fast path counters: the bytes the kernel carried past the
# agent against all bytes sent tell how often a connection fell back to
# the agent's own relay (its socket to the endpoint held more than 1 MiB
# unacknowledged) and stayed there. Prints a markdown report and writes it
# to bench/out/fastpath-<date>.md.
#
# Root only (BPF). Knobs: ROUNDS (4), IPERF_SECONDS (4), HOG_SECONDS
# (ROUNDS x 3 x (IPERF_SECONDS + 2); 0: no busy set), BENCH_BASE_PORT
# (38500), VIP_OCTET (239: the fast path agent's VIPs 127.X.0.0/16; the
# other agent's are 127.X+1.0.0/16).
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# Before lib.sh, which defaults ROUNDS to 2 for the others.
ROUNDS=${ROUNDS:-4}
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

IPERF_SECONDS=${IPERF_SECONDS:-4}
HOG_SECONDS=${HOG_SECONDS:-$((ROUNDS * 3 * (IPERF_SECONDS + 2)))}
BASE=${BENCH_BASE_PORT:-38500}
VIP_OCTET=${VIP_OCTET:-239}
MESH_NS=bench
P_CTL_ADMIN=$BASE; P_CTL_SYNC=$((BASE + 1))
P_MESH=$((BASE + 2)); P_DNS=$((BASE + 3)); P_ADM=$((BASE + 4)); P_IPERF=$((BASE + 5))
P_UMESH=$((BASE + 6)); P_UDNS=$((BASE + 7)); P_UADM=$((BASE + 8))
S_BULK=15201

BENCH_NAME=fastpath
[ "$(id -u)" = 0 ] || die "the kernel fast path needs root"
bench_init fastpath
need_tools go iperf3 curl
ports_free BENCH_BASE_PORT "$P_CTL_ADMIN" "$P_CTL_SYNC" "$P_MESH" "$P_DNS" "$P_ADM" "$P_IPERF" "$P_UMESH" "$P_UDNS" "$P_UADM"
log "building into $BIN"
mkdir -p "$BIN"
build_host "$BIN/fogmesh" ./cmd/fogmesh
build_host "$BIN/fogmesh-agent" ./cmd/fogmesh-agent
build_helpers benchjson
GIT_REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || GIT_REV="$GIT_REV (+ uncommitted changes)"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

start iperf "$(command -v iperf3)" -s -B 127.0.0.1 -p "$P_IPERF"
start_control ctl "$TMP/ctl" "$P_CTL_ADMIN" "$P_CTL_SYNC" -insecure
wait_port 127.0.0.1 "$P_CTL_ADMIN" ctl
services_yaml "bulk:tcp:$S_BULK" >"$TMP/services.yaml"
"$BIN/fogmesh" apply -server "http://127.0.0.1:$P_CTL_ADMIN" -f "$TMP/services.yaml" >&2
agent_config fp "$P_CTL_SYNC" "$P_MESH" "$P_DNS" "$P_ADM" "127.$VIP_OCTET.0.0/16" "bulk:tcp:$P_IPERF" >"$TMP/fp.yaml"
echo "fastPath: {mode: required}" >>"$TMP/fp.yaml"
start fp "$BIN/fogmesh-agent" -insecure -config "$TMP/fp.yaml"
# The same workload on a second node's agent, without the fast path: each
# agent routes bulk to its own node's endpoint.
agent_config user "$P_CTL_SYNC" "$P_UMESH" "$P_UDNS" "$P_UADM" "127.$((VIP_OCTET + 1)).0.0/16" "bulk:tcp:$P_IPERF" >"$TMP/user.yaml"
start user "$BIN/fogmesh-agent" -insecure -config "$TMP/user.yaml"
wait_port 127.0.0.1 "$P_ADM" fp
wait_port 127.0.0.1 "$P_UADM" user
wait_port 127.0.0.1 "$P_IPERF" iperf
VIP= UVIP=
for _ in $(seq 1 100); do
  VIP=$(vip "$P_ADM" bulk node); UVIP=$(vip "$P_UADM" bulk node)
  [ -n "$VIP" ] && [ -n "$UVIP" ] && break
  sleep 0.1
done
[ -n "$VIP" ] && [ -n "$UVIP" ] || die "the agents route no node-tier VIP for bulk (fast path: '$VIP', userspace: '$UVIP')"

LABEL[direct]="(a) direct"; BULK[direct]="127.0.0.1 $P_IPERF"; CPUPIDS[direct]=""
LABEL[bpf]="(b-bpf) one agent, kernel fast path"; BULK[bpf]="$VIP $S_BULK"; CPUPIDS[bpf]="$PID_fp"
LABEL[user]="(b) one agent, userspace relay"; BULK[user]="$UVIP $S_BULK"; CPUPIDS[user]="$PID_user"
FAILED=()
kernel_bytes() { # the bytes the kernel carried past the agent so far, both ways
  curl -fsS "http://127.0.0.1:$P_ADM/metrics" |
    awk '/^fogmesh_agent_fastpath_bytes_total/ {s += $2} END {printf "%.0f", s}'
}
gave_up() { # pairs that left the kernel path so far
  curl -fsS "http://127.0.0.1:$P_ADM/metrics" | awk '/^fogmesh_agent_fastpath_gave_up_total/ {print $2}'
}
declare -A SET_TP SET_KB SET_SENT SET_GAVE
run_set() { # NAME: ROUNDS rounds of both engines; the medians and the kernel's share
  local name=$1 k0 k1 g0 g1 r sent=0
  k0=$(kernel_bytes); g0=$(gave_up)
  iperf_rounds direct bpf user
  k1=$(kernel_bytes); g1=$(gave_up)
  SET_GAVE[$name]=$((g1 - g0))
  for r in $(seq 1 "$ROUNDS"); do
    case ${TP[bpf,$r]} in fail) ;; *) sent=$(awk -v s="$sent" -v g="${TP[bpf,$r]}" -v t="$IPERF_SECONDS" 'BEGIN {printf "%.0f", s + g * 1e9 / 8 * t}') ;; esac
  done
  SET_TP[$name,direct]="$(median_of TP direct "$ROUNDS") ($(rounds_of TP direct "$ROUNDS"))"
  SET_TP[$name,bpf]="$(median_of TP bpf "$ROUNDS") ($(rounds_of TP bpf "$ROUNDS"))"
  SET_TP[$name,user]="$(median_of TP user "$ROUNDS") ($(rounds_of TP user "$ROUNDS"))"
  SET_TP[$name,ratio]=$(calc "%.2f" "$(median_of TP bpf "$ROUNDS")" "$(median_of TP direct "$ROUNDS")" "a / b")
  SET_TP[$name,uratio]=$(calc "%.2f" "$(median_of TP user "$ROUNDS")" "$(median_of TP direct "$ROUNDS")" "a / b")
  SET_KB[$name]=$((k1 - k0)); SET_SENT[$name]=$sent
}

log "set 1: the machine left alone"
run_set quiet
HOG_PID=
if [ "$HOG_SECONDS" -gt 0 ]; then
  log "set 2: one busy loop beside the runs (${HOG_SECONDS}s at most)"
  # A bounded busy loop: it ends by itself, and at exit in any case.
  bash -c 'end=$((SECONDS + '"$HOG_SECONDS"')); while [ $SECONDS -lt $end ]; do :; done' &
  HOG_PID=$!
  PIDS+=("$HOG_PID")
  run_set busy
  kill "$HOG_PID" 2>/dev/null || true
fi

OUT="$ROOT/bench/out/fastpath-$(date -u +%Y%m%d-%H%M%S).md"
mkdir -p "$ROOT/bench/out"
{
  echo "## Kernel fast path, bulk (bench/fastpath.sh, $(date -u '+%Y-%m-%d %H:%M') UTC, fogmesh $GIT_REV, load $LOAD_START)"
  echo
  echo "iperf3 1 stream ${IPERF_SECONDS}s, $ROUNDS rounds per set, engines interleaved; Gbit/s median (per round)."
  echo
  echo "| set | (a) direct | (b-bpf) one agent, kernel fast path | ratio | kernel carried of the bytes through the agent | pairs that gave up the kernel path | (b) one agent, userspace | ratio |"
  echo "|---|---|---|---|---|---|---|---|"
  for s in quiet busy; do
    [ -n "${SET_TP[$s,direct]:-}" ] || continue
    share=$(calc "%.0f %%" "${SET_KB[$s]}" "${SET_SENT[$s]}" "b > 0 ? 100 * a / b : 0")
    label=$s; [ "$s" = busy ] && label="one busy loop beside"
    [ "$s" = quiet ] && label="machine left alone"
    echo "| $label | ${SET_TP[$s,direct]} | ${SET_TP[$s,bpf]} | ${SET_TP[$s,ratio]} | $share | ${SET_GAVE[$s]} of $((2 * ROUNDS)) | ${SET_TP[$s,user]} | ${SET_TP[$s,uratio]} |"
  done
  echo
  echo "The kernel's share comes from the agent's fogmesh_agent_fastpath_bytes_total against iperf3's received"
  echo "bytes (the control connection's few bytes aside). Below 100 %, connections fell back to the agent's relay."
} | tee "$OUT"
log "report: $OUT"
[ ${#FAILED[@]} -eq 0 ] || die "failed: ${FAILED[*]}"
