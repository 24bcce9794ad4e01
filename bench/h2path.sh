#!/usr/bin/env bash
# Focused benchmark of the h2c and gRPC paths through one agent (issue 14):
# h2load (-n H2LOAD_N requests, -c H2_CONNS connections, -m H2_STREAMS
# streams each) and fortio's gRPC ping (-qps 0, GRPC_CONNS connections,
# LAT_SECONDS), each direct to the fortio backend and through one agent
# (ports declared http2 and grpc), through the smallest Go HTTP/2 proxy
# (bench/h2bare: what a Go proxy costs without the agent's per-request
# work), through nginx and HAProxy (mature proxies in C, one worker or
# thread each; PEERS=0 leaves them out), and through a
# baseline build's agent when BASELINE_BIN (a full fogmesh binary, as in
# bench.sh) is set; the
# engines interleaved in every round, ROUNDS rounds. Besides the rates it
# reports, per request, the agent's CPU time (utime+stime from /proc) and
# its read and write system calls (/proc/PID/io): on this shared 2-core
# machine the rates swing with the other work, the CPU per request much
# less. Prints a markdown report and writes it to bench/out/h2path-<date>.md.
#
# Exits non-zero if a run failed or returned errors. Knobs: ROUNDS (3),
# H2LOAD_N (50000), H2_CONNS (1), H2_STREAMS (10),
# GRPC_CONNS (16), LAT_SECONDS (4), LAT_QPS (2000: a gRPC run at that
# fixed rate per engine for p50 and p99; 0: none), PIN (0; 1: load and
# backend on CPU 0, proxies on CPU 1), BENCH_BASE_PORT (29300: below the
# ephemeral port range, where a client's source port cannot take it),
# BASELINE_BIN, BASELINE_REV, VIP_OCTET (236) and BASE_VIP_OCTET (237):
# the agents' VIP ranges 127.X.0.0/16, or VIP_RANGE and BASE_VIP_RANGE
# (CIDRs: two halves of one reserved /16, say), AGENT_ENV (environment
# assignments for this build's agent only: GOMAXPROCS=1 against a
# BASELINE_BIN of the same commit, say). PPROF=1: builds with -tags fogmesh_pprof and
# takes CPU profiles of the agent over each of its gRPC runs (the profile
# ends a second before the run) and the first 2 s of its h2load runs into PPROF_DIR (default
# bench/out/pprof-h2path-<date>); its overhead touches those runs, so take
# the rates from a run without it. PERF=1: records each proxy's gRPC
# runs (the agent's, h2bare's, nginx's, HAProxy's) with perf (cpu-clock samples with kernel and Go stacks, the
# run's first LAT_SECONDS-1 s) into PPROF_DIR as grpc-ENGINE-rN.perf: where
# a system call's time goes in the kernel, which pprof cannot show (perf
# report -i FILE --no-children). PEERSTAT=1: perf stat on fortio's
# gRPC client (the load) and on its backend over each gRPC run, and a
# second table of their CPU, system calls (read, write, futex,
# epoll_pwait) and context switches per call: what a proxy's frames make
# the peers do (issue 14, session 32). Needs go, curl, h2load (nghttp2-client)
# and fortio (installed as in bench.sh).
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# Before lib.sh, which defaults ROUNDS to 2 for the others.
ROUNDS=${ROUNDS:-3}
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

LAT_SECONDS=${LAT_SECONDS:-4}
H2LOAD_N=${H2LOAD_N:-50000}
H2_CONNS=${H2_CONNS:-1}
H2_STREAMS=${H2_STREAMS:-10}
GRPC_CONNS=${GRPC_CONNS:-16}
LAT_QPS=${LAT_QPS:-2000}
BASE=${BENCH_BASE_PORT:-29300}
BASELINE_BIN=${BASELINE_BIN:-}
PPROF=${PPROF:-0}
PERF=${PERF:-0}
PEERSTAT=${PEERSTAT:-0}
pin_setup # PIN=1: load and backend on CPU 0, proxies on CPU 1 (lib.sh)
# The agents' VIP ranges (127.X.0.0/16): another bench's agents on the
# same range would answer in their place.
VIP_OCTET=${VIP_OCTET:-236}
BASE_VIP_OCTET=${BASE_VIP_OCTET:-237}
VIP_RANGE=${VIP_RANGE:-127.$VIP_OCTET.0.0/16}
BASE_VIP_RANGE=${BASE_VIP_RANGE:-127.$BASE_VIP_OCTET.0.0/16}
MESH_NS=bench
P_CTL_ADMIN=$((BASE + 0)); P_CTL_SYNC=$((BASE + 1))
P_SRV_MESH=$((BASE + 10)); P_SRV_DNS=$((BASE + 11)); P_SRV_ADMIN=$((BASE + 12))
P_BCTL_ADMIN=$((BASE + 2)); P_BCTL_SYNC=$((BASE + 3))
P_BSRV_MESH=$((BASE + 20)); P_BSRV_DNS=$((BASE + 21)); P_BSRV_ADMIN=$((BASE + 22))
P_IPERF=$((BASE + 30)); P_HTTP=$((BASE + 31)); P_GRPC=$((BASE + 33)); P_SRV_PPROF=$((BASE + 40))
P_BARE_H2=$((BASE + 34)); P_BARE_GRPC=$((BASE + 35))
P_NGX_H2=$((BASE + 36)); P_NGX_GRPC=$((BASE + 37)); P_HAP_H2=$((BASE + 38)); P_HAP_GRPC=$((BASE + 39))
PEERS=${PEERS:-1}
S_WEB=18080; S_GRPC=18079

bench_init h2path
FAILED=()
need_tools go curl h2load
find_fortio
ports_free BENCH_BASE_PORT "$P_CTL_ADMIN" "$P_CTL_SYNC" "$P_SRV_MESH" "$P_SRV_DNS" "$P_SRV_ADMIN" "$P_HTTP" "$P_GRPC" \
  "$P_BARE_H2" "$P_BARE_GRPC"
NGINX= HAPROXY=
if [ "$PEERS" = 1 ]; then
  NGINX=$(command -v nginx || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true)
  HAPROXY=$(command -v haproxy || { [ -x /usr/sbin/haproxy ] && echo /usr/sbin/haproxy; } || true)
  [ -n "$NGINX" ] || log "nginx not found: no nginx rows (scripts/install-deps.sh bench installs it)"
  [ -n "$HAPROXY" ] || log "haproxy not found: no HAProxy rows (scripts/install-deps.sh bench installs it)"
  [ -z "$NGINX" ] || ports_free BENCH_BASE_PORT "$P_NGX_H2" "$P_NGX_GRPC"
  [ -z "$HAPROXY" ] || ports_free BENCH_BASE_PORT "$P_HAP_H2" "$P_HAP_GRPC"
fi
if [ -n "$BASELINE_BIN" ]; then
  [ -x "$BASELINE_BIN" ] || die "BASELINE_BIN=$BASELINE_BIN is not executable"
  BASELINE_NAME=${BASELINE_REV:+$(git describe --always --tags "$BASELINE_REV" 2>/dev/null)}
  [ -n "$BASELINE_NAME" ] || BASELINE_NAME=$("$BASELINE_BIN" version 2>/dev/null | head -n 1)
  ports_free BENCH_BASE_PORT "$P_BCTL_ADMIN" "$P_BCTL_SYNC" "$P_BSRV_MESH" "$P_BSRV_DNS" "$P_BSRV_ADMIN"
fi

log "building into $TMP/bin"
mkdir -p "$BIN"
[ "$PPROF" != 1 ] || export GOFLAGS="${GOFLAGS:+$GOFLAGS }-tags=fogmesh_pprof"
# perf resolves Go symbols from an unstripped binary, which it keeps in its
# build-id cache (~/.debug) once the binary has a GNU build ID.
[ "$PERF" != 1 ] || BUILD_LDFLAGS="-B gobuildid"
build_host "$BIN/fogmesh" ./cmd/fogmesh
build_host "$BIN/fogmesh-agent" ./cmd/fogmesh-agent
build_helpers h2bare
machine_info

start httpd "${PIN_LOAD[@]}" "$FORTIO" server -http-port "127.0.0.1:$P_HTTP" -grpc-port "127.0.0.1:$P_GRPC" \
  -redirect-port disabled -tcp-port disabled -udp-port disabled -data-dir "$TMP" -loglevel Warning
# The smallest HTTP/2 proxy in Go (bench/h2bare), for comparison with the
# agent's h2c and gRPC paths: one instance in front of each port.
start bareh2 "${PIN_PROXY[@]}" "$BIN/h2bare" "127.0.0.1:$P_BARE_H2=127.0.0.1:$P_HTTP"
start baregrpc "${PIN_PROXY[@]}" "$BIN/h2bare" "127.0.0.1:$P_BARE_GRPC=127.0.0.1:$P_GRPC"
# Two mature proxies in C, for what this machine allows a proxy: nginx
# (one worker; h2c in, HTTP/1.1 with a keep-alive pool to the h2c
# backend, as nginx proxies plain HTTP; gRPC with grpc_pass) and HAProxy
# (one thread; HTTP/2 on both sides, as its gRPC proxying does).
if [ -n "$NGINX" ]; then
  start_nginx "$NGINX" "
    http2_max_requests 1000000;
    upstream web { server 127.0.0.1:$P_HTTP; keepalive 64; keepalive_requests 1000000; }
    upstream grpcb { server 127.0.0.1:$P_GRPC; keepalive 64; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$P_NGX_H2 http2;
        location / { proxy_pass http://web; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
    }
    server {
        listen 127.0.0.1:$P_NGX_GRPC http2;
        location / { grpc_pass grpc://grpcb; }
    }"
fi
if [ -n "$HAPROXY" ]; then
  cat >"$TMP/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4000
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    http-reuse always
listen h2
    bind 127.0.0.1:$P_HAP_H2 proto h2
    server s1 127.0.0.1:$P_HTTP proto h2
listen grpc
    bind 127.0.0.1:$P_HAP_GRPC proto h2
    server s1 127.0.0.1:$P_GRPC proto h2
EOF
  "$HAPROXY" -c -q -f "$TMP/haproxy.cfg" || die "haproxy rejects its config"
  start haproxy "${PIN_PROXY[@]}" "$HAPROXY" -db -f "$TMP/haproxy.cfg"
fi
start_control ctl "$TMP/ctl" "$P_CTL_ADMIN" "$P_CTL_SYNC" -insecure
wait_port 127.0.0.1 "$P_CTL_ADMIN" ctl
services_yaml "webh2:http:$S_WEB:http2" "webgrpc:grpc:$S_GRPC:grpc" >"$TMP/services.yaml"
"$BIN/fogmesh" apply -server "http://127.0.0.1:$P_CTL_ADMIN" -f "$TMP/services.yaml" >&2
agent_config srv "$P_CTL_SYNC" "$P_SRV_MESH" "$P_SRV_DNS" "$P_SRV_ADMIN" "$VIP_RANGE" \
  "webh2:http:$P_HTTP" "webgrpc:grpc:$P_GRPC" >"$TMP/srv.yaml"
PPENV_SRV=()
[ "$PPROF" != 1 ] || PPENV_SRV=("FOGMESH_PPROF_ADDR=127.0.0.1:$P_SRV_PPROF")
# AGENT_ENV: environment for this build's agent alone (say GOMAXPROCS=1),
# the baseline agent and the peers run without it.
read -r -a AGENT_ENV_A <<<"${AGENT_ENV:-}"
PPENV_SRV+=("${AGENT_ENV_A[@]}")
start srv "${PIN_PROXY[@]}" env "${PPENV_SRV[@]}" "$BIN/fogmesh-agent" -insecure -config "$TMP/srv.yaml"
if [ -n "$BASELINE_BIN" ]; then
  # The baseline agent: its own control plane (the same services) and VIP
  # range, the same backend.
  start ctlbase "$BASELINE_BIN" control -state-dir "$TMP/ctlbase" -admin-addr "127.0.0.1:$P_BCTL_ADMIN" \
    -sync-addr "127.0.0.1:$P_BCTL_SYNC" -insecure
  wait_port 127.0.0.1 "$P_BCTL_ADMIN" ctlbase
  "$BASELINE_BIN" apply -server "http://127.0.0.1:$P_BCTL_ADMIN" -f "$TMP/services.yaml" >&2
  agent_config srvbase "$P_BCTL_SYNC" "$P_BSRV_MESH" "$P_BSRV_DNS" "$P_BSRV_ADMIN" "$BASE_VIP_RANGE" \
    "webh2:http:$P_HTTP" "webgrpc:grpc:$P_GRPC" >"$TMP/srvbase.yaml"
  start srvbase "${PIN_PROXY[@]}" "$BASELINE_BIN" agent -insecure -config "$TMP/srvbase.yaml"
  wait_port 127.0.0.1 "$P_BSRV_ADMIN" srvbase
fi
wait_port 127.0.0.1 "$P_SRV_ADMIN" srv
wait_port 127.0.0.1 "$P_HTTP" httpd
wait_port 127.0.0.1 "$P_GRPC" httpd
wait_port 127.0.0.1 "$P_BARE_H2" bareh2
wait_port 127.0.0.1 "$P_BARE_GRPC" baregrpc
[ -z "$NGINX" ] || { wait_port 127.0.0.1 "$P_NGX_H2" nginx; wait_port 127.0.0.1 "$P_NGX_GRPC" nginx; }
[ -z "$HAPROXY" ] || { wait_port 127.0.0.1 "$P_HAP_H2" haproxy; wait_port 127.0.0.1 "$P_HAP_GRPC" haproxy; }

H2=() GR=()
for i in $(seq 1 100); do
  H2[0]=$(vip "$P_SRV_ADMIN" webh2 node); GR[0]=$(vip "$P_SRV_ADMIN" webgrpc node)
  if [ -n "$BASELINE_BIN" ]; then
    H2[1]=$(vip "$P_BSRV_ADMIN" webh2 node "$BASELINE_BIN"); GR[1]=$(vip "$P_BSRV_ADMIN" webgrpc node "$BASELINE_BIN")
  else H2[1]=x; GR[1]=x; fi
  [ -n "${H2[0]}" ] && [ -n "${GR[0]}" ] && [ -n "${H2[1]}" ] && [ -n "${GR[1]}" ] && break
  sleep 0.2
done
[ -n "${H2[0]}" ] && [ -n "${GR[0]}" ] || die "the agent routes no VIP to the backend"

ENGINES=(direct agent bare)
LABEL[direct]="direct"; LABEL[agent]="one agent ($GIT_REV)"
LABEL[bare]="minimal Go HTTP/2 proxy (h2bare)"; WEB[bare]="http://127.0.0.1:$P_BARE_H2/ 127.0.0.1:$P_BARE_GRPC"
CPUPIDS[bare]="$PID_bareh2 $PID_baregrpc"
WEB[direct]="http://127.0.0.1:$P_HTTP/ 127.0.0.1:$P_GRPC"
WEB[agent]="http://${H2[0]}:$S_WEB/ ${GR[0]}:$S_GRPC"
CPUPIDS[direct]=""; CPUPIDS[agent]=$PID_srv
if [ -n "$NGINX" ]; then
  ENGINES+=(nginx); LABEL[nginx]="nginx $("$NGINX" -v 2>&1 | awk -F/ 'NR==1 {print $2}') (1 worker; h2c in, HTTP/1.1 out; grpc_pass)"
  WEB[nginx]="http://127.0.0.1:$P_NGX_H2/ 127.0.0.1:$P_NGX_GRPC"
  CPUPIDS[nginx]=$(nginx_pids)
fi
if [ -n "$HAPROXY" ]; then
  ENGINES+=(haproxy); LABEL[haproxy]="HAProxy $("$HAPROXY" -v 2>/dev/null | awk 'NR==1 {print $3}') (1 thread; HTTP/2 both sides)"
  WEB[haproxy]="http://127.0.0.1:$P_HAP_H2/ 127.0.0.1:$P_HAP_GRPC"; CPUPIDS[haproxy]=$PID_haproxy
fi
if [ -n "$BASELINE_BIN" ]; then
  ENGINES+=(base); LABEL[base]="one agent, baseline $BASELINE_NAME"
  WEB[base]="http://${H2[1]}:$S_WEB/ ${GR[1]}:$S_GRPC"; CPUPIDS[base]=$PID_srvbase
fi
for e in "${ENGINES[@]}"; do
  read -r h g <<<"${WEB[$e]}"
  curl -fsS -o /dev/null --max-time 5 --http2-prior-knowledge "$h" || die "h2c path $e ($h) does not answer"
  timeout 10 "$FORTIO" grpcping -n 1 -loglevel Error "$g" >/dev/null 2>&1 || die "gRPC path $e ($g) does not answer"
done

syscalls() { # PID...: their read and write system calls so far
  local p n=0
  for p in "$@"; do n=$((n + $(awk '/^syscr/ {r = $2} /^syscw/ {w = $2} END {print r + w}' "/proc/$p/io"))); done
  echo "$n"
}
# per ARRAY ENGINE ROUND DELTA N: ARRAY[ENGINE,ROUND] = DELTA / N
declare -A HQ HCPU HKRN HSC GQ GCPU GKRN GSC GBUSY GMCH
run_h2load() { # ENGINE ROUND
  local e=$1 r=$2 h g c0 c1 k0 k1 s0=0 s1=0 out="$TMP/h2load-$e-$r.log" q
  read -r h g <<<"${WEB[$e]}"
  log "h2load round $r: $e ($h)"
  c0=$(cpu_ticks ${CPUPIDS[$e]}); k0=$(sys_ticks ${CPUPIDS[$e]}); [ -z "${CPUPIDS[$e]}" ] || s0=$(syscalls ${CPUPIDS[$e]})
  local ppid=
  if [ "$PPROF" = 1 ] && [ "$e" = agent ]; then
    curl -fsS --max-time 15 -o "$PPROF_DIR/h2load-$e-r$r.pprof" \
      "http://127.0.0.1:$P_SRV_PPROF/debug/pprof/profile?seconds=2" &
    ppid=$!
  fi
  if timeout 120 "${PIN_LOAD[@]}" h2load -n "$H2LOAD_N" -c "$H2_CONNS" -m "$H2_STREAMS" -t 1 "$h" >"$out" 2>&1 &&
     q=$(awk '/^finished in/ {q = $4} /^requests:/ {b += $10 + $12 + $14} /^status codes:/ {b += $5 + $7 + $9}
              END {if (q == "" || b > 0) exit 1; printf "%.0f\n", q}' "$out"); then
    c1=$(cpu_ticks ${CPUPIDS[$e]}); k1=$(sys_ticks ${CPUPIDS[$e]}); [ -z "${CPUPIDS[$e]}" ] || s1=$(syscalls ${CPUPIDS[$e]})
    HQ[$e,$r]=$q
    HCPU[$e,$r]=$(awk -v t=$((c1 - c0)) -v hz="$CLK_TCK" -v n="$H2LOAD_N" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
    HKRN[$e,$r]=$(awk -v t=$((k1 - k0)) -v hz="$CLK_TCK" -v n="$H2LOAD_N" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
    HSC[$e,$r]=$(awk -v s=$((s1 - s0)) -v n="$H2LOAD_N" 'BEGIN {printf "%.2f", s / n}')
    [ "$e" != haproxy ] || HSC[$e,$r]=n/a
    [ -z "$ppid" ] || wait "$ppid" || log "pprof of round $r failed"
  else
    log "h2load $e round $r FAILED: $(tail -n 3 "$out")"; HQ[$e,$r]=fail; HCPU[$e,$r]=fail; HKRN[$e,$r]=fail; HSC[$e,$r]=fail
    FAILED+=("h2load $e round $r")
  fi
}
run_grpc() { # ENGINE ROUND
  local e=$1 r=$2 h g c0 c1 k0 k1 m0 m1 t0 t1 s0=0 s1=0 out="$TMP/grpc-$e-$r" v n
  read -r h g <<<"${WEB[$e]}"
  log "gRPC ping round $r: $e ($g)"
  c0=$(cpu_ticks ${CPUPIDS[$e]}); k0=$(sys_ticks ${CPUPIDS[$e]}); [ -z "${CPUPIDS[$e]}" ] || s0=$(syscalls ${CPUPIDS[$e]})
  m0=$(machine_ticks); t0=$(date +%s.%N)
  local ppid=
  if [ "$PPROF" = 1 ] && [ "$e" = agent ]; then
    curl -fsS --max-time $((LAT_SECONDS + 10)) -o "$PPROF_DIR/grpc-$e-r$r.pprof" \
      "http://127.0.0.1:$P_SRV_PPROF/debug/pprof/profile?seconds=$((LAT_SECONDS > 1 ? LAT_SECONDS - 1 : 1))" &
    ppid=$!
  fi
  if [ "$PERF" = 1 ] && [ -n "${CPUPIDS[$e]}" ]; then
    perf record -q -e cpu-clock -F 1999 -g -p "$(tr ' ' , <<<"${CPUPIDS[$e]}")" -o "$PPROF_DIR/grpc-$e-r$r.perf" \
      -- sleep $((LAT_SECONDS > 1 ? LAT_SECONDS - 1 : 1)) >/dev/null 2>&1 &
    ppid="$ppid $!"
  fi
  local pstat=() bspid=
  if [ "$PEERSTAT" = 1 ]; then
    pstat=(perf stat -x, -e "$PEER_EVENTS" -o "$out.client.stat" --)
    perf stat -x, -e "$PEER_EVENTS" -p "$PID_httpd" -o "$out.backend.stat" -- sleep "$LAT_SECONDS" >/dev/null 2>&1 &
    bspid=$!
  fi
  if timeout $((LAT_SECONDS + 30)) "${PIN_LOAD[@]}" "${pstat[@]}" "$FORTIO" load -grpc -ping -qps 0 -c "$GRPC_CONNS" -t "${LAT_SECONDS}s" \
       -r "$FORTIO_RES" -loglevel Error -json "$out.json" "$g" >"$out.log" 2>&1 &&
     v=$("$BIN/benchjson" fortio "$out.json" 2>&1); then
    m1=$(machine_ticks); t1=$(date +%s.%N)
    c1=$(cpu_ticks ${CPUPIDS[$e]}); k1=$(sys_ticks ${CPUPIDS[$e]}); [ -z "${CPUPIDS[$e]}" ] || s1=$(syscalls ${CPUPIDS[$e]})
    read -r _ _ _ q bad _ <<<"$v"
    n=$(awk -v q="$q" -v s="$LAT_SECONDS" 'BEGIN {printf "%d", q * s}')
    GQ[$e,$r]=$(printf '%.0f' "$q")
    [ "$bad" = 0 ] || FAILED+=("gRPC $e round $r: $bad non-OK")
    GCPU[$e,$r]=$(awk -v t=$((c1 - c0)) -v hz="$CLK_TCK" -v n="$n" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
    GKRN[$e,$r]=$(awk -v t=$((k1 - k0)) -v hz="$CLK_TCK" -v n="$n" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
    GSC[$e,$r]=$(awk -v s=$((s1 - s0)) -v n="$n" 'BEGIN {printf "%.2f", s / n}')
    [ "$e" != haproxy ] || GSC[$e,$r]=n/a
    # The whole machine (client, backend, agent and whatever else runs):
    # busy % of all cores over the run (fortio's own start and end
    # included), and its CPU per call.
    GBUSY[$e,$r]=$(awk -v m=$((m1 - m0)) -v hz="$CLK_TCK" -v a="$t0" -v b="$t1" -v c="$(machine_cpus)" 'BEGIN {printf "%.0f", 100 * m / hz / (b - a) / c}')
    GMCH[$e,$r]=$(awk -v m=$((m1 - m0)) -v hz="$CLK_TCK" -v n="$n" 'BEGIN {printf "%.1f", m / hz * 1e6 / n}')
    # shellcheck disable=SC2086 # one PID or two
    [ -z "$ppid" ] || wait $ppid || log "profile of round $r failed"
    if [ -n "$bspid" ]; then
      wait "$bspid" || log "perf stat of the backend, round $r, failed"
      PCLI[$e,$r]=$(peer_stat "$out.client.stat" "$n"); PBACK[$e,$r]=$(peer_stat "$out.backend.stat" "$n")
    fi
  else
    [ -z "$bspid" ] || wait "$bspid" || true
    log "gRPC $e round $r FAILED: $(tail -n 3 "$out.log") ${v:-}"; GQ[$e,$r]=fail; GCPU[$e,$r]=fail; GKRN[$e,$r]=fail; GSC[$e,$r]=fail
    GBUSY[$e,$r]=fail; GMCH[$e,$r]=fail
    FAILED+=("gRPC $e round $r")
  fi
}
declare -A GP50 GP99 PCLI PBACK
# PEERSTAT: task-clock (ms), context switches and system calls as perf
# stat -x, counts them; peer_stat FILE N prints them per call:
# "CPU-µs cs sys read write futex epoll_pwait".
PEER_EVENTS=task-clock,context-switches,raw_syscalls:sys_enter,syscalls:sys_enter_read,syscalls:sys_enter_write,syscalls:sys_enter_futex,syscalls:sys_enter_epoll_pwait
peer_stat() {
  awk -F, -v n="$2" '$3 == "task-clock" {t = $1} $3 == "context-switches" {cs = $1} $3 == "raw_syscalls:sys_enter" {sc = $1}
    $3 == "syscalls:sys_enter_read" {rd = $1} $3 == "syscalls:sys_enter_write" {wr = $1}
    $3 == "syscalls:sys_enter_futex" {fx = $1} $3 == "syscalls:sys_enter_epoll_pwait" {ep = $1}
    END {printf "%.1f %.2f %.2f %.2f %.2f %.2f %.2f\n", t * 1000 / n, cs / n, sc / n, rd / n, wr / n, fx / n, ep / n}' "$1"
}
run_grpc_lat() { # ENGINE ROUND: gRPC ping at a fixed rate, its p50 and p99 (ms)
  local e=$1 r=$2 h g out="$TMP/grpclat-$1-$2" v p50 p99 bad
  read -r h g <<<"${WEB[$e]}"
  log "gRPC ping at $LAT_QPS/s round $r: $e ($g)"
  if timeout $((LAT_SECONDS + 30)) "${PIN_LOAD[@]}" "$FORTIO" load -grpc -ping -qps "$LAT_QPS" -c "$GRPC_CONNS" -t "${LAT_SECONDS}s" \
       -r "$FORTIO_RES" -loglevel Error -json "$out.json" "$g" >"$out.log" 2>&1 &&
     v=$("$BIN/benchjson" fortio "$out.json" 2>&1); then
    read -r p50 p99 _ _ bad _ <<<"$v"
    GP50[$e,$r]=$p50; GP99[$e,$r]=$p99
    [ "$bad" = 0 ] || FAILED+=("gRPC at $LAT_QPS/s $e round $r: $bad non-OK")
  else
    log "gRPC at $LAT_QPS/s $e round $r FAILED: $(tail -n 3 "$out.log") ${v:-}"; GP50[$e,$r]=fail; GP99[$e,$r]=fail
    FAILED+=("gRPC at $LAT_QPS/s $e round $r")
  fi
}
go build -o "$BIN/benchjson" ./bench/benchjson
PPROF_DIR=${PPROF_DIR:-$ROOT/bench/out/pprof-h2path-$(date +%Y%m%d-%H%M%S)}
[ "$PPROF" != 1 ] && [ "$PERF" != 1 ] || mkdir -p "$PPROF_DIR"
[ "$PERF" != 1 ] || command -v perf >/dev/null || die "PERF=1 needs perf (Debian: linux-perf)"
for r in $(seq 1 "$ROUNDS"); do
  for e in $(order "$r" "${ENGINES[@]}"); do run_h2load "$e" "$r"; sleep 0.5; done
  for e in $(order "$r" "${ENGINES[@]}"); do run_grpc "$e" "$r"; sleep 0.5; done
  if [ "$LAT_QPS" != 0 ]; then
    for e in $(order "$r" "${ENGINES[@]}"); do run_grpc_lat "$e" "$r"; sleep 0.5; done
  fi
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
stop_pids "${PIDS[@]}"

ratios() { # ARRAY ENGINE: per round ARRAY[ENGINE,r] / ARRAY[direct,r]
  local -n ra=$1; local out="" r
  for r in $(seq 1 "$ROUNDS"); do out+="${out:+ / }$(calc "%.2f" "${ra[$2,$r]}" "${ra[direct,$r]}" "a / b")"; done
  echo "$out"
}
report_file h2path
{
  echo "# fogmesh h2c and gRPC through one agent ($(date -u '+%Y-%m-%d %H:%M UTC'))"
  echo
  machine_rows
  echo "| load (1/5/15 min) at start, end | $LOAD_START; $LOAD_END |"
  echo "| peers | h2load $(h2load --version 2>/dev/null | awk 'NR==1 {print $2}'), fortio $FORTIO_V${NGINX:+, nginx $("$NGINX" -v 2>&1 | awk -F/ 'NR==1 {print $2}')}${HAPROXY:+, HAProxy $("$HAPROXY" -v 2>/dev/null | awk 'NR==1 {print $3}')} |"
  echo
  echo "h2load -n $H2LOAD_N -c $H2_CONNS -m $H2_STREAMS; fortio load -grpc -ping -qps 0 -c $GRPC_CONNS -t ${LAT_SECONDS}s;"
  echo "$ROUNDS rounds, engines interleaved. Per round, a / b / c; the ratio is to direct in the same round."
  [ "$PIN" != 1 ] || echo "PIN=1: load generators and backend on CPU 0, each proxy on CPU 1."
  echo "CPU (of it, the kernel's share: stime) and system calls (read + write) are the proxy's, per request"
  echo "(/proc/PID/io counts the read and write families, not send and recv: HAProxy's read n/a);"
  echo "machine busy is all cores' (100 = every core busy) over a gRPC run, machine CPU per call all processes' (client, backend, agent)."
  echo
  echo "| path | h2load req/s | ratio | CPU µs/req | of it kernel | syscalls/req | gRPC ping req/s | ratio | CPU µs/req | of it kernel | syscalls/req | machine busy % | machine CPU µs/call |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  for e in "${ENGINES[@]}"; do
    if [ "$e" = direct ]; then
      echo "| ${LABEL[$e]} | $(rounds_of HQ "$e") | 1 | — | — | — | $(rounds_of GQ "$e") | 1 | — | — | — | $(rounds_of GBUSY "$e") | $(rounds_of GMCH "$e") |"
    else
      echo "| ${LABEL[$e]} | $(rounds_of HQ "$e") | $(ratios HQ "$e") | $(rounds_of HCPU "$e") | $(rounds_of HKRN "$e") | $(rounds_of HSC "$e") |" \
        "$(rounds_of GQ "$e") | $(ratios GQ "$e") | $(rounds_of GCPU "$e") | $(rounds_of GKRN "$e") | $(rounds_of GSC "$e") |" \
        "$(rounds_of GBUSY "$e") | $(rounds_of GMCH "$e") |"
    fi
  done
  echo
  echo "Medians: h2load ratio $(calc "%.2f" "$(median_of HQ agent "$ROUNDS")" "$(median_of HQ direct "$ROUNDS")" "a / b")," \
    "gRPC ratio $(calc "%.2f" "$(median_of GQ agent "$ROUNDS")" "$(median_of GQ direct "$ROUNDS")" "a / b")" \
    "(h2bare: h2load $(calc "%.2f" "$(median_of HQ bare "$ROUNDS")" "$(median_of HQ direct "$ROUNDS")" "a / b"), gRPC $(calc "%.2f" "$(median_of GQ bare "$ROUNDS")" "$(median_of GQ direct "$ROUNDS")" "a / b"))" \
    "${NGINX:+(nginx: h2load $(calc "%.2f" "$(median_of HQ nginx "$ROUNDS")" "$(median_of HQ direct "$ROUNDS")" "a / b"), gRPC $(calc "%.2f" "$(median_of GQ nginx "$ROUNDS")" "$(median_of GQ direct "$ROUNDS")" "a / b"))}" \
    "${HAPROXY:+(HAProxy: h2load $(calc "%.2f" "$(median_of HQ haproxy "$ROUNDS")" "$(median_of HQ direct "$ROUNDS")" "a / b"), gRPC $(calc "%.2f" "$(median_of GQ haproxy "$ROUNDS")" "$(median_of GQ direct "$ROUNDS")" "a / b"))}" \
    "${BASELINE_BIN:+(baseline: h2load $(calc "%.2f" "$(median_of HQ base "$ROUNDS")" "$(median_of HQ direct "$ROUNDS")" "a / b"), gRPC $(calc "%.2f" "$(median_of GQ base "$ROUNDS")" "$(median_of GQ direct "$ROUNDS")" "a / b"))}"
  if [ "$PEERSTAT" = 1 ]; then
    echo
    echo "PEERSTAT: fortio's gRPC client and its backend (perf stat over each gRPC run; the backend's over"
    echo "LAT_SECONDS from the client's start), per call, per round a / b / c: CPU µs (task-clock), context"
    echo "switches, all system calls, read, write, futex, epoll_pwait."
    echo
    echo "| path | side | CPU µs | cs | syscalls | read | write | futex | epoll_pwait |"
    echo "|---|---|---|---|---|---|---|---|---|"
    for e in "${ENGINES[@]}"; do
      for side in client backend; do
        local_row="| ${LABEL[$e]} | $side |"
        for col in 1 2 3 4 5 6 7; do
          vals=""
          for r in $(seq 1 "$ROUNDS"); do
            if [ "$side" = client ]; then v=${PCLI[$e,$r]:-}; else v=${PBACK[$e,$r]:-}; fi
            vals+="${vals:+ / }$(awk -v c="$col" '{print $c}' <<<"${v:-n/a}")"
          done
          local_row+=" $vals |"
        done
        echo "$local_row"
      done
    done
  fi
  if [ "$LAT_QPS" != 0 ]; then
    echo
    echo "gRPC ping at a fixed $LAT_QPS req/s (fortio load -grpc -ping -qps $LAT_QPS -c $GRPC_CONNS -t ${LAT_SECONDS}s); times in ms,"
    echo "added: the medians over the rounds minus direct's."
    echo
    echo "| path | p50 per round | p99 per round | added p50 | added p99 |"
    echo "|---|---|---|---|---|"
    for e in "${ENGINES[@]}"; do
      if [ "$e" = direct ]; then
        echo "| ${LABEL[$e]} | $(rounds_of GP50 "$e") | $(rounds_of GP99 "$e") | — | — |"
      else
        echo "| ${LABEL[$e]} | $(rounds_of GP50 "$e") | $(rounds_of GP99 "$e") |" \
          "$(calc "%+.3f" "$(median_of GP50 "$e" "$ROUNDS")" "$(median_of GP50 direct "$ROUNDS")" "a - b") |" \
          "$(calc "%+.3f" "$(median_of GP99 "$e" "$ROUNDS")" "$(median_of GP99 direct "$ROUNDS")" "a - b") |"
      fi
    done
  fi
  list_section "Failures:" "${FAILED[@]}"
} | tee "$REPORT"
log "report: $REPORT"
[ "$PPROF" != 1 ] || log "CPU profiles in $PPROF_DIR (go tool pprof -top FILE)"
[ "$PERF" != 1 ] || log "perf recordings in $PPROF_DIR (perf report -i FILE --no-children)"
[ ${#FAILED[@]} -eq 0 ]
