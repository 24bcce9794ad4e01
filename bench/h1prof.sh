#!/usr/bin/env bash
# Where an HTTP/1.1 request's CPU goes (issue 14): one agent (plaintext, a
# port declared http, as bench.sh's row b7), the smallest Go proxy
# (bench/h1bare, a goroutine per connection, row g7) and nginx (one worker,
# row n) in front of the same fortio backend, each at its maximum rate under
# wrk (-c CONNS, SECS seconds), the engines interleaved, ROUNDS rounds.
# Per request and engine it reports:
#   - user and kernel CPU time (utime and stime from /proc);
#   - system calls of each kind, context switches and migrations
#     (perf stat with the kernel's syscall tracepoints);
#   - what a system call costs on this machine (BenchmarkSyscallCost);
#   - from a perf recording of each proxy (cpu-clock samples), the
#     microseconds spent in each part: the kernel, and for the Go proxies
#     the system-call stubs, the scheduler, allocation and GC, clock reads,
#     maps and interface hashing, bufio and strings, the poller, the
#     agent's own packages (nginx's own code is "other").
# Every engine is recorded, and the recording's overhead (more for more
# system calls: the tracepoints) touches every round's rates and CPU;
# compare the engines within one run. Prints a markdown report and writes it to
# bench/out/h1prof-<date>.md, the recordings into PPROF_DIR (default
# bench/out/perf-h1prof-<date>; perf report -i FILE --no-children).
#
# Knobs: ROUNDS (2), SECS (6), CONNS (16), PIN (0; 1: wrk and the backend
# on CPU 0, the proxies on CPU 1), BENCH_BASE_PORT (29500), VIP_OCTET
# (235: the agent's VIP range 127.X.0.0/16), AGENT_ENV (environment for
# the agent, e.g. GOGC=200), UPROBES (0; 1: the Go proxies' scheduler
# and GC events counted per request besides, with uprobes on their
# runtime's functions: yields (gosched_m; and the background sweeper's
# calls of goschedIfBusy, which yields only if no P is idle, by the line
# of runtime.bgsweep), threads woken (notewakeup, startm) and stopped
# (stopm), timers run, GC cycles begun; 2: goroutines parked (park_m) and
# Ps woken (wakep) too, each hit a trap of a few µs: the rates and CPU of
# such a run are not comparable with one without).
# BARE_X (empty; e.g. "-spin 3us": a fourth engine, h1bare-x, h1bare's go
# model with these knobs, on BENCH_BASE_PORT+11: -spin D burns about D of
# user CPU per request, -touch N reads N bytes of a buffer per request,
# -fwdheaders adds the agent's forwarding header fields; an h1bare made
# like the agent in one respect, to tell what a difference comes from).
# NOPERF (0; 1: no perf stat or recording: the user and kernel CPU split
# of the engines as they run untraced, the system-call and parts columns
# left empty).
# TRACE (0; 1: the Go proxies built to serve net/http/pprof, the agent with
# -tags fogmesh_pprof, h1bare with -pprof, on BENCH_BASE_PORT+9 and +10,
# and a runtime trace of each round taken over the round and read by
# bench/handoffs: goroutine wake-ups, blocks, yields and GC cycles per
# request, into PPROF_DIR as ENGINE-rROUND.handoffs; the tracer costs
# every round of those engines some CPU).
# Needs root or perf_event_paranoid <= 1 for the
# tracepoints, perf (Debian: linux-perf), wrk, nginx, go and fortio
# (installed as in bench.sh). Exits non-zero if a run fails.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

SECS=${SECS:-6}
BASE=${BENCH_BASE_PORT:-29500}
VIP_OCTET=${VIP_OCTET:-235}
AGENT_ENV=${AGENT_ENV:-}
UPROBES=${UPROBES:-0}
TRACE=${TRACE:-0}
NOPERF=${NOPERF:-0}
pin_setup
MESH_NS=bench
P_CTL_ADMIN=$((BASE + 0)); P_CTL_SYNC=$((BASE + 1))
P_SRV_MESH=$((BASE + 2)); P_SRV_DNS=$((BASE + 3)); P_SRV_ADMIN=$((BASE + 4))
P_HTTP=$((BASE + 5)); P_BAREG=$((BASE + 7)); P_NGINX=$((BASE + 8))
P_SRV_PPROF=$((BASE + 9)); P_BAREG_PPROF=$((BASE + 10)); P_BAREX=$((BASE + 11))
BARE_X=${BARE_X:-}
S_WEB=$((BASE + 20))
STAMP=$(date +%Y%m%d-%H%M%S)
PPROF_DIR=${PPROF_DIR:-$ROOT/bench/out/perf-h1prof-$STAMP}

bench_init h1prof
need_tools wrk perf curl
NGINX=$(command -v nginx || true)
[ -n "$NGINX" ] || die "needs nginx (Debian: nginx-light)"
find_fortio
ports_free BENCH_BASE_PORT "$P_CTL_ADMIN" "$P_CTL_SYNC" "$P_SRV_MESH" "$P_SRV_DNS" "$P_SRV_ADMIN" "$P_HTTP" "$P_BAREG" "$P_NGINX" \
  "$P_SRV_PPROF" "$P_BAREG_PPROF" "$P_BAREX"
perf stat -e raw_syscalls:sys_enter true >/dev/null 2>&1 || die "perf cannot read the syscall tracepoints (root, or kernel.perf_event_paranoid <= 1)"
mkdir -p "$BIN" "$PPROF_DIR"

log "building unstripped binaries (symbols for perf) into $BIN"
BUILD_LDFLAGS="-B gobuildid"
build_host "$BIN/fogmesh" ./cmd/fogmesh
TRACE_AGENT=() TRACE_BARE=()
if [ "$TRACE" = 1 ]; then
  CGO_ENABLED=0 go build -trimpath -tags fogmesh_pprof -ldflags "$BUILD_LDFLAGS" -o "$BIN/fogmesh-agent" ./cmd/fogmesh-agent
  (cd bench/handoffs && go build -o "$BIN/handoffs" .)
  TRACE_AGENT=("FOGMESH_PPROF_ADDR=127.0.0.1:$P_SRV_PPROF") TRACE_BARE=(-pprof "127.0.0.1:$P_BAREG_PPROF")
else
  build_host "$BIN/fogmesh-agent" ./cmd/fogmesh-agent
fi
build_helpers h1bare
# uprobes ENGINE BINARY: the runtime's scheduler and GC functions of BINARY
# probed in the group u<pid>ENGINE, added to perf stat's events (UPROBES).
UGROUPS=()
uprobes() {
  local g="u$$$1" f line addr base off vaddr
  UGROUPS+=("$g")
  local fs=(gosched=runtime.gosched_m notewakeup=runtime.notewakeup startm=runtime.startm stopm=runtime.stopm
    'timer=runtime.(*timer).unlockAndRun' gc=runtime.gcStart)
  [ "$UPROBES" = 2 ] && fs+=(park=runtime.park_m wakep=runtime.wakep)
  for f in "${fs[@]}"; do
    # Event names are unique across groups too: the engine's prefixed.
    perf probe -q -x "$2" -a "$g:${1}_$f" 2>"$TMP/probe.err" || die "perf probe $f in $2: $(tr "\n" " " <"$TMP/probe.err")"
  done
  # perf probe takes a bare address as an offset in the file.
  read -r off vaddr < <(readelf -lW "$2" | awk '$1 == "LOAD" {print $2, $3; exit}')
  base=$((vaddr - off))
  while read -r line addr; do
    perf probe -q -x "$2" -a "$g:${1}_sweepyield$line=$(printf '0x%x' $((0x$addr - base)))" 2>"$TMP/probe.err" ||
      die "perf probe bgsweep:$line in $2: $(tr "\n" " " <"$TMP/probe.err")"
  done < <(go tool objdump -s '^runtime.bgsweep$' "$2" | awk '/CALL runtime.goschedIfBusy/ {split($1, a, ":"); sub(/^0x/, "", $2); print a[2], $2}')
  EVENTS+=",$g:*"
}
drop_uprobes() {
  local g
  for g in "${UGROUPS[@]}"; do perf probe -q -d "$g:*" >/dev/null 2>&1 || true; done
}
h1prof_exit() {
  local rc=$?
  drop_uprobes
  set +e
  trap - ERR
  (exit "$rc") # cleanup's exit status is the script's
  cleanup
}
trap h1prof_exit EXIT
machine_info
# What a system call costs here (internal/httpproxy BenchmarkSyscallCost), the
# floor under each read and write counted below.
SYSCOST=$(go test -run '^$' -bench SyscallCost -benchtime 200000x ./internal/httpproxy/ 2>&1 |
  awk '/^BenchmarkSyscallCost\// {n = $1; sub(/^BenchmarkSyscallCost\//, "", n); sub(/-[0-9]+$/, "", n); printf "%s%s %.0f ns", sep, n, $3; sep = ", "}')
[ -n "$SYSCOST" ] || die "BenchmarkSyscallCost did not run"

start httpd "${PIN_LOAD[@]}" "$FORTIO" server -http-port "127.0.0.1:$P_HTTP" -grpc-port disabled \
  -redirect-port disabled -tcp-port disabled -udp-port disabled -data-dir "$TMP" -loglevel Warning
start bareg "${PIN_PROXY[@]}" "$BIN/h1bare" -model go "${TRACE_BARE[@]}" "127.0.0.1:$P_BAREG=127.0.0.1:$P_HTTP"
if [ -n "$BARE_X" ]; then
  # shellcheck disable=SC2086 # BARE_X: words on purpose
  start barex "${PIN_PROXY[@]}" "$BIN/h1bare" -model go $BARE_X "127.0.0.1:$P_BAREX=127.0.0.1:$P_HTTP"
fi
start_nginx "$NGINX" "
    upstream backend { server 127.0.0.1:$P_HTTP; keepalive 64; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$P_NGINX;
        location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
    }"
start_control ctl "$TMP/ctl" "$P_CTL_ADMIN" "$P_CTL_SYNC" -insecure
wait_port 127.0.0.1 "$P_CTL_ADMIN" ctl
services_yaml "webl7:http:$S_WEB:http" >"$TMP/services.yaml"
"$BIN/fogmesh" apply -server "http://127.0.0.1:$P_CTL_ADMIN" -f "$TMP/services.yaml" >&2
agent_config srv "$P_CTL_SYNC" "$P_SRV_MESH" "$P_SRV_DNS" "$P_SRV_ADMIN" "127.$VIP_OCTET.0.0/16" "webl7:http:$P_HTTP" >"$TMP/srv.yaml"
# Plaintext, as bench.sh's HTTP/1.1 rows: nginx and h1bare do not encrypt.
# shellcheck disable=SC2086 # AGENT_ENV: words on purpose
start srv "${PIN_PROXY[@]}" env $AGENT_ENV "${TRACE_AGENT[@]}" "$BIN/fogmesh-agent" -insecure -config "$TMP/srv.yaml"
for p in "$P_HTTP" "$P_BAREG" "$P_NGINX"; do wait_port 127.0.0.1 "$p" "port $p"; done
V=
for _ in $(seq 1 100); do V=$(vip "$P_SRV_ADMIN" webl7 node) && [ -n "$V" ] && break; sleep 0.1; done
[ -n "$V" ] || die "the agent does not route webl7"
# nginx: its master and worker (the worker serves).
NPIDS=$(nginx_pids)
[ "$(wc -w <<<"$NPIDS")" -ge 2 ] || die "no nginx worker"

ENGINES=(agent h1bare nginx)
declare -A URL=([agent]="http://$V:$S_WEB/" [h1bare]="http://127.0.0.1:$P_BAREG/" [nginx]="http://127.0.0.1:$P_NGINX/")
declare -A PID=([agent]="$(pid_of srv)" [h1bare]="$(pid_of bareg)" [nginx]="$NPIDS") # PIDs, space-separated
if [ -n "$BARE_X" ]; then
  wait_port 127.0.0.1 "$P_BAREX" h1bare-x
  ENGINES+=(h1bare-x) URL[h1bare-x]="http://127.0.0.1:$P_BAREX/" PID[h1bare-x]="$(pid_of barex)"
fi
for e in "${ENGINES[@]}"; do
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "${URL[$e]}" || true)
  [ "$code" = 200 ] || die "$e answers $code at ${URL[$e]}"
done

# The parts of a Go proxy's profile (awk regular expressions over perf's
# symbol names, tried in order; the rest is "other").
PARTS=(kernel syscall-stub scheduler alloc+gc clock maps+iface net+poll bufio+strings agent-code other)
SYSCALLS=read,write,readv,writev,recvfrom,sendto,futex,epoll_wait,epoll_pwait,nanosleep,sched_yield,getpid,tgkill,rt_sigreturn,mmap,madvise
EVENTS="raw_syscalls:sys_enter,context-switches,cpu-migrations,page-faults"
for s in ${SYSCALLS//,/ }; do EVENTS+=",syscalls:sys_enter_$s"; done
if [ "$UPROBES" != 0 ]; then
  uprobes agent "$BIN/fogmesh-agent"
  uprobes h1bare "$BIN/h1bare"
fi

# part_us FILE US_PER_REQ: "part us" lines, each part's share of the
# recording times the CPU microseconds per request.
part_us() {
  perf report -i "$1" --no-children -g none --sort dso,sym 2>/dev/null | awk -v t="$2" '
    /^#/ || !/%/ { next }
    { p = $1; sub(/%/, "", p); s = $0
      c = "other"
      if (s ~ /\[kernel|\[k\]/) c = "kernel"
      else if (s ~ /vdso|clock_gettime|nanotime|walltime|time\.now|runtimeNow/) c = "clock"
      else if (s ~ /Syscall6|RawSyscall|entersyscall|exitsyscall/) c = "syscall-stub"
      else if (s ~ /malloc|memclr|newobject|makeslice|growslice|scanObject|gcDrain|gcBgMark|greyobject|findObject|sweep|heapBits|HeapBits|tryDeferToSpanScan|mspan|mcache|mcentral|nextFree|gcWriteBarrier|wbBuf|markBits|spanOf|scanblock|typePointers|gcAssist|mheap|fixalloc|makemap|concatstring|slicebytetostring|rawstring|moveInlineMarks/) c = "alloc+gc"
      else if (s ~ /findRunnable|netpoll|schedule|park_m|gopark|goready|ready|casgstatus|futex|lock2|unlock2|mcall|runq|wakep|startm|stopm|notesleep|notewakeup|procyield|usleep|osyield|execute|gogo|stealWork|checkTimers|sysmon|retake|Gosched|pollWait|pollReset|pollDesc|resetspinning|acquirep|releasep|injectglist|sema/) c = "scheduler"
      else if (s ~ /maps\.|mapaccess|mapassign|mapdelete|aeshash|memhash|strhash|typehash|HashTrieMap|efaceeq|ifaceeq|interhash|mapclear/) c = "maps+iface"
      else if (s ~ /internal\/poll|net\.\(|syscall\./) c = "net+poll"
      else if (s ~ /bufio|bytes\.|strings\.|indexbyte|memmove|memeqbody|cmpbody|countbody/) c = "bufio+strings"
      else if (s ~ /fogmesh\/fogmesh\//) c = "agent-code"
      us[c] += p * t / 100 }
    END { for (c in us) printf "%s %.2f\n", c, us[c] }'
}

declare -A RPS USER SYS CALLS PARTUS
round() { # ROUND ENGINE
  local r=$1 e=$2 out n c0 s0 c1 s1 rec pids
  read -ra pids <<<"${PID[$2]}"
  local plist=${PID[$2]// /,}
  "${PIN_LOAD[@]}" wrk -t1 -c"$CONNS" -d1s "${URL[$e]}" >/dev/null # warm-up
  c0=$(cpu_ticks "${pids[@]}"); s0=$(sys_ticks "${pids[@]}")
  local waits=()
  rec="$PPROF_DIR/$e-r$r.perf"
  if [ "$NOPERF" != 1 ]; then
    perf stat -e "$EVENTS" -p "$plist" -x, -o "$TMP/$e-$r.stat" -- sleep "$SECS" &
    waits+=($!)
    # Every engine is recorded, so each carries the same overhead.
    perf record -q -F 2999 -g -p "$plist" -o "$rec" -- sleep "$SECS" >/dev/null 2>&1 &
    waits+=($!)
  fi
  local tport=
  if [ "$TRACE" = 1 ]; then
    case $e in agent) tport=$P_SRV_PPROF ;; h1bare) tport=$P_BAREG_PPROF ;; esac
  fi
  [ -z "$tport" ] || {
    curl -s -o "$PPROF_DIR/$e-r$r.trace" --max-time $((SECS + 10)) "http://127.0.0.1:$tport/debug/pprof/trace?seconds=$SECS" &
    waits+=($!)
  }
  out=$("${PIN_LOAD[@]}" wrk -t1 -c"$CONNS" -d"$SECS"s "${URL[$e]}")
  [ ${#waits[@]} = 0 ] || wait "${waits[@]}" || true
  c1=$(cpu_ticks "${pids[@]}"); s1=$(sys_ticks "${pids[@]}")
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  if [ -z "$n" ] || [ "$n" = 0 ] || grep -q "Non-2xx\|Socket errors" <<<"$out"; then
    failed "$e" "round $r: $(tr '\n' ' ' <<<"$out")"
    return 0
  fi
  RPS[$e,$r]=$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
  USER[$e,$r]=$(awk -v d=$((c1 - c0 - (s1 - s0))) -v n="$n" -v hz="$CLK_TCK" 'BEGIN {printf "%.1f", d / hz * 1e6 / n}')
  SYS[$e,$r]=$(awk -v d=$((s1 - s0)) -v n="$n" -v hz="$CLK_TCK" 'BEGIN {printf "%.1f", d / hz * 1e6 / n}')
  # perf stat -x,: value,unit,event,...; per request.
  [ "$NOPERF" = 1 ] || CALLS[$e,$r]=$(awk -F, -v n="$n" '$1 ~ /^[0-9]+$/ && $1 > 0 {e = $3; sub(/^syscalls:sys_enter_/, "", e); sub(/^raw_syscalls:sys_enter$/, "all", e); sub(/^u[0-9]+(agent|h1bare):(agent|h1bare)_/, "u:", e); printf (e ~ /^u:/ ? "%s=%.4f " : "%s=%.2f "), e, $1 / n}' "$TMP/$e-$r.stat")
  # The trace's window is the round's, give or take the start of each.
  [ -z "$tport" ] || "$BIN/handoffs" -n "$n" "$PPROF_DIR/$e-r$r.trace" >"$PPROF_DIR/$e-r$r.handoffs" 2>&1 || true
  [ "$NOPERF" = 1 ] || PARTUS[$e,$r]=$(part_us "$rec" "$(awk -v a="${USER[$e,$r]}" -v b="${SYS[$e,$r]}" 'BEGIN {print a + b}')" | tr '\n' ';')
  log "$e round $r: ${RPS[$e,$r]} req/s, user ${USER[$e,$r]} + kernel ${SYS[$e,$r]} us/req"
}

FAILED=()
for r in $(seq 1 "$ROUNDS"); do
  for e in $(order "$r" "${ENGINES[@]}"); do round "$r" "$e"; done
done

# The agent's memory after the rounds: RSS now and its peak (VmHWM).
AGENT_RSS=$(awk '/^VmRSS:/ {r = $2} /^VmHWM:/ {h = $2} END {printf "%.1f MB (peak %.1f MB)", r / 1024, h / 1024}' "/proc/${PID[agent]}/status")

# ---------------------------------------------------------------- report
REPORT=$ROOT/bench/out/h1prof-$STAMP.md
mkdir -p "$ROOT/bench/out"
partcell() { # ENGINE ROUND PART
  local v
  v=$(tr ';' '\n' <<<"${PARTUS[$1,$2]:-}" | awk -v p="$3" '$1 == p {print $2}')
  echo "${v:-0.00}"
}
{
  echo "# HTTP/1.1 per-request CPU: agent, h1bare, nginx ($STAMP)"
  echo
  echo "\`ROUNDS=$ROUNDS SECS=$SECS CONNS=$CONNS PIN=$PIN${AGENT_ENV:+ AGENT_ENV=\"$AGENT_ENV\"}$([ "$UPROBES" = 0 ] || echo " UPROBES=$UPROBES")$([ "$TRACE" = 0 ] || echo " TRACE=$TRACE")$([ "$NOPERF" = 0 ] || echo " NOPERF=$NOPERF")${BARE_X:+ BARE_X=\"$BARE_X\"} bench/h1prof.sh\` at $GIT_REV; $CPU_MODEL, $(nproc) CPUs, load at start $LOAD_START."
  echo "wrk -t1 -c$CONNS at the maximum rate; CPU from /proc (utime, stime) over the run, system calls and"
  echo "switches from perf stat (syscall tracepoints) over the same window; every engine was also recorded"
  echo "with perf (-F 2999), which touches every round's figures alike."
  echo
  echo "| engine | round | req/s | user µs/req | kernel µs/req | per request (perf stat) |"
  echo "|---|---|---|---|---|---|"
  for e in "${ENGINES[@]}"; do
    for r in $(seq 1 "$ROUNDS"); do
      echo "| $e | $r | ${RPS[$e,$r]:-fail} | ${USER[$e,$r]:-} | ${SYS[$e,$r]:-} | ${CALLS[$e,$r]:-} |"
    done
  done
  echo
  echo "The agent's RSS after the rounds: $AGENT_RSS."
  echo
  echo "A system call here (BenchmarkSyscallCost: getpid; a read that finds a socket empty; a 1-byte write"
  echo "and the read that takes it over loopback): $SYSCOST."
  echo
  echo "Where the proxies' CPU goes, µs per request by part of the perf recording (the share of samples"
  echo "times user+kernel µs per request; \"syscall-stub\": samples in user mode in Go's system-call functions,"
  echo "where this VM's sampling puts much of a system call's return):"
  echo
  printf '| part |'; for e in "${ENGINES[@]}"; do for r in $(seq 1 "$ROUNDS"); do printf ' %s r%s |' "$e" "$r"; done; done; echo
  printf '|---|'; for _ in $(seq 1 $((${#ENGINES[@]} * ROUNDS))); do printf -- '---|'; done; echo
  for p in "${PARTS[@]}"; do
    printf '| %s |' "$p"
    for e in "${ENGINES[@]}"; do for r in $(seq 1 "$ROUNDS"); do printf ' %s |' "$(partcell "$e" "$r" "$p")"; done; done
    echo
  done
  echo
  echo "Recordings: $PPROF_DIR (perf report -i FILE --no-children)."
  if [ "$TRACE" = 1 ]; then
    echo
    echo "Runtime traces of the Go proxies' rounds, and bench/handoffs' counts per request: $PPROF_DIR/*.trace, *.handoffs."
    for f in "$PPROF_DIR"/*.handoffs; do
      echo
      echo "$(basename "$f"):"
      echo
      echo '```'
      cat "$f"
      echo '```'
    done
  fi
  [ -z "$BARE_X" ] || echo "h1bare-x: h1bare -model go $BARE_X."
  [ "$UPROBES" = 0 ] || echo "u:NAME: uprobe hits per request (UPROBES): their traps slow this run's engines."
  [ ${#FAILED[@]} -eq 0 ] || { echo; echo "Failed:"; printf -- '- %s\n' "${FAILED[@]}"; }
} | tee "$REPORT"
log "report: $REPORT"
[ ${#FAILED[@]} -eq 0 ]
