#!/usr/bin/env bash
# System calls and context switches per gRPC call through one agent
# (issue 14), the gRPC counterpart of h1prof.sh: fortio's gRPC ping
# (-qps 0, CONNS connections, SECS seconds) through the agent to a fortio
# backend (a port declared grpc), with perf stat on the agent over the
# run (every system call by kind, context switches, migrations) and, over
# its first second, perf record of its reads and writes by descriptor: on
# the client connections (the VIP's port) and on the upstream ones (the
# backend's port), those that found the socket empty (EAGAIN) counted
# apart. With BASELINE_REV (a commit) the agent built there is measured
# too; the builds take turns, one agent running at a time (each started
# for its turn, on the same ports and VIP range), ROUNDS rounds. Prints a
# markdown report and writes it to bench/out/h2prof-<date>.md, the
# recordings (and ss's list of the agent's connections) into REC_DIR
# (default bench/out/perf-h2prof-<date>; perf script -i FILE).
#
# STACKS=1 also records, over the run's second second, the call stacks of
# the agent's futex and epoll_pwait calls and of the wake-ups it makes
# (sched:sched_wakeup) into REC_DIR as stacks-BUILD-rN.perf (perf report
# -i FILE --no-children -g caller): which hand-offs wake whom.
#
# Knobs: ROUNDS (2), SECS (5), CONNS (16), STACKS (0), BASELINE_REV, BENCH_BASE_PORT
# (29700), VIP_OCTET (238: the agent's VIP range 127.X.0.0/16), PIN (0; 1:
# load and backend on CPU 0, the agent on CPU 1). Needs perf (Debian:
# linux-perf) with the syscall tracepoints (root, or
# kernel.perf_event_paranoid <= 1), go and fortio (as in bench.sh).
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

SECS=${SECS:-5}
BASE=${BENCH_BASE_PORT:-29700}
VIP_OCTET=${VIP_OCTET:-238}
BASELINE_REV=${BASELINE_REV:-}
STAMP=$(date +%Y%m%d-%H%M%S)
REC_DIR=${REC_DIR:-$ROOT/bench/out/perf-h2prof-$STAMP}
pin_setup
MESH_NS=bench
P_CTL_ADMIN=$((BASE + 0)); P_CTL_SYNC=$((BASE + 1))
P_SRV_MESH=$((BASE + 2)); P_SRV_DNS=$((BASE + 3)); P_SRV_ADMIN=$((BASE + 4))
P_HTTP=$((BASE + 5)); P_GRPC=$((BASE + 6))
S_GRPC=$((BASE + 20))

bench_init h2prof
need_tools perf
find_fortio
ports_free BENCH_BASE_PORT "$P_CTL_ADMIN" "$P_CTL_SYNC" "$P_SRV_MESH" "$P_SRV_DNS" "$P_SRV_ADMIN" "$P_HTTP" "$P_GRPC"
perf stat -e raw_syscalls:sys_enter true >/dev/null 2>&1 || die "perf cannot read the syscall tracepoints (root, or kernel.perf_event_paranoid <= 1)"
mkdir -p "$BIN" "$REC_DIR"

STACKS=${STACKS:-0}
BUILD_LDFLAGS="-B gobuildid" # symbols, for perf's stacks
log "building into $BIN"
build_host "$BIN/fogmesh" ./cmd/fogmesh
build_host "$BIN/agent-head" ./cmd/fogmesh-agent
go build -o "$BIN/benchjson" ./bench/benchjson
BUILDS=(head)
declare -A REV=([head]="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . || echo +)")
if [ -n "$BASELINE_REV" ]; then
  git worktree add --detach "$TMP/base" "$BASELINE_REV" >/dev/null 2>&1 || die "cannot check out $BASELINE_REV"
  (cd "$TMP/base" && build_host "$BIN/agent-base" ./cmd/fogmesh-agent)
  git worktree remove --force "$TMP/base"
  BUILDS+=(base); REV[base]=$(git rev-parse --short "$BASELINE_REV")
fi
machine_info

start httpd "${PIN_LOAD[@]}" "$FORTIO" server -http-port "127.0.0.1:$P_HTTP" -grpc-port "127.0.0.1:$P_GRPC" \
  -redirect-port disabled -tcp-port disabled -udp-port disabled -data-dir "$TMP" -loglevel Warning
start_control ctl "$TMP/ctl" "$P_CTL_ADMIN" "$P_CTL_SYNC" -insecure
wait_port 127.0.0.1 "$P_CTL_ADMIN" ctl
wait_port 127.0.0.1 "$P_GRPC" httpd
services_yaml "webgrpc:grpc:$S_GRPC:grpc" >"$TMP/services.yaml"
"$BIN/fogmesh" apply -server "http://127.0.0.1:$P_CTL_ADMIN" -f "$TMP/services.yaml" >&2
agent_config srv "$P_CTL_SYNC" "$P_SRV_MESH" "$P_SRV_DNS" "$P_SRV_ADMIN" "127.$VIP_OCTET.0.0/16" "webgrpc:grpc:$P_GRPC" >"$TMP/srv.yaml"

SYSCALLS=read,write,readv,writev,recvfrom,sendto,futex,epoll_wait,epoll_pwait,nanosleep,sched_yield,getpid,tgkill,rt_sigreturn,mmap,madvise,setsockopt
EVENTS="raw_syscalls:sys_enter,context-switches,cpu-migrations"
for s in ${SYSCALLS//,/ }; do EVENTS+=",syscalls:sys_enter_$s"; done

# by_conn SCRIPT SS CALLS: reads and writes per call on the client and the
# upstream connections, from perf script's read/write enter and exit
# events (paired by thread) and ss's descriptors.
by_conn() {
  awk -v calls="$3" -v sport=":$S_GRPC" -v bport=":$P_GRPC" '
    function hex(s,  i, v) { v = 0; s = tolower(substr(s, 3)); for (i = 1; i <= length(s); i++) v = v * 16 + index("0123456789abcdef", substr(s, i, 1)) - 1; return v }
    FNR == NR { if ($1 != "ESTAB" || !match($0, /fd=[0-9]+/)) next
      fd = substr($0, RSTART + 3, RLENGTH - 3)
      if (index($4, sport) && substr($4, length($4) - length(sport) + 1) == sport) role[fd] = "client"
      else if (substr($5, length($5) - length(bport) + 1) == bport) role[fd] = "upstream"
      next }
    $2 ~ /sys_enter_(read|write):/ { k = $2; sub(/.*sys_enter_/, "", k); sub(/:$/, "", k)
      f = $4; sub(/,$/, "", f); pend[$1] = k " " hex(f); next }
    $2 ~ /sys_exit_(read|write):/ && ($1 in pend) { split(pend[$1], a, " "); delete pend[$1]
      r = (a[2] in role) ? role[a[2]] : "other"
      t = ($3 == "0xfffffffffffffff5") ? "-empty" : ""
      n[r " " a[1] t]++ }
    END { for (k in n) { split(k, a, " "); if (a[1] != "other") printf "%s %s=%.2f\n", a[1], a[2], n[k] / calls } }
  ' "$2" "$1" | sort | awk '{ if ($1 != last) { if (last != "") printf "; "; printf "%s: ", $1; last = $1 } else printf " "; printf "%s", $2 } END { print "" }'
}

declare -A QPS CALLS CONN CSW USR KRN
round() { # ROUND BUILD
  local r=$1 b=$2 pid v q n c0 c1 s0 s1 rec="$REC_DIR/$2-r$1.perf"
  start srv "${PIN_PROXY[@]}" "$BIN/agent-$b" -insecure -config "$TMP/srv.yaml"
  pid=$(pid_of srv)
  wait_port 127.0.0.1 "$P_SRV_ADMIN" srv
  local vip=
  for _ in $(seq 1 100); do vip=$(vip "$P_SRV_ADMIN" webgrpc node) && [ -n "$vip" ] && break; sleep 0.1; done
  [ -n "$vip" ] || die "the agent does not route webgrpc"
  timeout 10 "$FORTIO" load -grpc -ping -qps 0 -c "$CONNS" -t 1s -loglevel Error "$vip:$S_GRPC" >/dev/null 2>&1 # warm-up
  c0=$(cpu_ticks "$pid"); s0=$(sys_ticks "$pid")
  perf stat -e "$EVENTS" -p "$pid" -x, -o "$TMP/$b-$r.stat" -- sleep "$SECS" &
  local waits=($!)
  perf record -q -e syscalls:sys_enter_read,syscalls:sys_exit_read,syscalls:sys_enter_write,syscalls:sys_exit_write \
    -p "$pid" -o "$rec" -- sleep 1 >/dev/null 2>&1 &
  waits+=($!)
  if [ "$STACKS" = 1 ]; then
    (sleep 1; perf record -q -g -e syscalls:sys_enter_futex,syscalls:sys_enter_epoll_pwait,sched:sched_wakeup \
      -p "$pid" -o "$REC_DIR/stacks-$b-r$r.perf" -- sleep 1 >/dev/null 2>&1) &
    waits+=($!)
  fi
  "${PIN_LOAD[@]}" "$FORTIO" load -grpc -ping -qps 0 -c "$CONNS" -t "${SECS}s" -r "$FORTIO_RES" -loglevel Error \
    -json "$TMP/$b-$r.json" "$vip:$S_GRPC" >"$TMP/fortio-$b-$r.log" 2>&1 &
  local load=$!
  sleep 0.5
  ss -tanpe 2>/dev/null | grep "pid=$pid," >"$REC_DIR/ss-$b-r$r.txt" || true
  wait "$load" || die "fortio failed: $(tail -n 3 "$TMP/fortio-$b-$r.log")"
  c1=$(cpu_ticks "$pid"); s1=$(sys_ticks "$pid")
  wait "${waits[@]}" || true
  v=$("$BIN/benchjson" fortio "$TMP/$b-$r.json")
  read -r _ _ _ q bad _ <<<"$v"
  [ "$bad" = 0 ] || die "$b round $r: $bad calls failed"
  QPS[$b,$r]=$(printf '%.0f' "$q")
  n=$(awk -v q="$q" -v s="$SECS" 'BEGIN {printf "%d", q * s}')
  CALLS[$b,$r]=$(awk -F, -v n="$n" '$1 ~ /^[0-9]+$/ && $1 > 0 && $3 ~ /sys_enter/ {e = $3; sub(/^syscalls:sys_enter_/, "", e); sub(/^raw_syscalls:sys_enter$/, "all", e); printf "%s=%.2f ", e, $1 / n}' "$TMP/$b-$r.stat")
  USR[$b,$r]=$(awk -v d=$((c1 - c0 - (s1 - s0))) -v n="$n" -v hz="$CLK_TCK" 'BEGIN {printf "%.1f", d / hz * 1e6 / n}')
  KRN[$b,$r]=$(awk -v d=$((s1 - s0)) -v n="$n" -v hz="$CLK_TCK" 'BEGIN {printf "%.1f", d / hz * 1e6 / n}')
  CSW[$b,$r]=$(awk -F, -v n="$n" '$3 == "context-switches" {printf "%.2f", $1 / n}' "$TMP/$b-$r.stat")
  CONN[$b,$r]=$(by_conn <(perf script -i "$rec" -F tid,event,trace 2>/dev/null) "$REC_DIR/ss-$b-r$r.txt" \
    "$(awk -v q="$q" 'BEGIN {printf "%d", q}')")
  stop_pids "$pid"
  log "$b round $r: ${QPS[$b,$r]} calls/s; user ${USR[$b,$r]} + kernel ${KRN[$b,$r]} µs/call; ${CSW[$b,$r]} switches/call; ${CONN[$b,$r]}"
}

for r in $(seq 1 "$ROUNDS"); do
  for b in $(order "$r" "${BUILDS[@]}"); do round "$r" "$b"; done
done

REPORT=$ROOT/bench/out/h2prof-$STAMP.md
mkdir -p "$ROOT/bench/out"
{
  echo "# gRPC per-call system calls through one agent ($(date -u '+%Y-%m-%d %H:%M UTC'))"
  echo
  echo "\`ROUNDS=$ROUNDS SECS=$SECS CONNS=$CONNS PIN=$PIN${BASELINE_REV:+ BASELINE_REV=$BASELINE_REV} bench/h2prof.sh\`; $CPU_MODEL, $(nproc) CPUs, load at start $LOAD_START."
  echo "fortio load -grpc -ping -qps 0 -c $CONNS -t ${SECS}s through the agent; per call: the agent's system calls (perf stat,"
  echo "the whole run) and its reads and writes by connection over the run's first second (perf record; empty: EAGAIN)."
  echo
  echo "CPU: the agent's user and kernel time (utime, stime from /proc) over the run, per call; perf's recording adds to both."
  echo
  echo "| build | round | calls/s | user µs/call | kernel µs/call | switches/call | system calls per call | by connection, per call |"
  echo "|---|---|---|---|---|---|---|---|"
  for b in "${BUILDS[@]}"; do
    for r in $(seq 1 "$ROUNDS"); do
      echo "| $b (${REV[$b]}) | $r | ${QPS[$b,$r]} | ${USR[$b,$r]} | ${KRN[$b,$r]} | ${CSW[$b,$r]} | ${CALLS[$b,$r]} | ${CONN[$b,$r]} |"
    done
  done
} | tee "$REPORT"
log "report: $REPORT"
