#!/usr/bin/env bash
# fogmesh side-by-side benchmarks, all on loopback, all in one run:
#   1. TCP bulk throughput (iperf3, 1 stream): direct, one agent, two agents,
#      HAProxy (tcp, splice-auto, 1 thread), a minimal Go splice relay;
#   2. small-HTTP latency at a fixed rate (fortio, 2,000 req/s, 16 conns):
#      the same paths to an HTTP backend;
#   3. agent RSS idle and with 1,000 open proxied connections;
#   4. binary sizes (linux/amd64 and linux/arm64, stripped, CGO_ENABLED=0);
#   5. the Go micro-benchmarks of internal/proxy and internal/transport.
# Engines are interleaved within each round. Prints a markdown report to
# stdout and writes it to bench/out/results-<date>.md.
#
# Needs: go, iperf3, haproxy, curl (scripts/install-deps.sh bench), and fortio
# (installed with `go install fortio.org/fortio@v1.63.0` if missing).
# Knobs (environment): ROUNDS (2), IPERF_SECONDS (4), LAT_SECONDS (5),
# QPS (2000), CONNS (16), HOLD_N (1000), BENCH_BASE_PORT (31000),
# SKIP_GOBENCH=1, SKIP_ARM64=1.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

ROUNDS=${ROUNDS:-2}
IPERF_SECONDS=${IPERF_SECONDS:-4}
LAT_SECONDS=${LAT_SECONDS:-5}
QPS=${QPS:-2000}
CONNS=${CONNS:-16}
HOLD_N=${HOLD_N:-1000}
BASE=${BENCH_BASE_PORT:-31000}
FORTIO_VERSION=v1.63.0
SRV_VIP_RANGE=127.231.0.0/16
CLI_VIP_RANGE=127.232.0.0/16

# Ports on 127.0.0.1.
P_CTL_ADMIN=$((BASE + 0)); P_CTL_SYNC=$((BASE + 1))
P_SRV_MESH=$((BASE + 10)); P_SRV_DNS=$((BASE + 11)); P_SRV_ADMIN=$((BASE + 12))
P_CLI_MESH=$((BASE + 20)); P_CLI_DNS=$((BASE + 21)); P_CLI_ADMIN=$((BASE + 22))
P_IPERF=$((BASE + 30)); P_HTTP=$((BASE + 31)); P_SINK=$((BASE + 32))
P_HAP_BULK=$((BASE + 40)); P_HAP_WEB=$((BASE + 41))
P_REL_BULK=$((BASE + 50)); P_REL_WEB=$((BASE + 51))
# Service ports (on the agents' VIPs).
S_BULK=15201; S_WEB=18080; S_HOLD=19000

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/fogmesh-bench.XXXXXX")
PIDS=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_pids "${PIDS[@]}"
  if [ "$rc" != 0 ] && [ -d "$TMP" ]; then
    log "failed (exit $rc); last lines of the logs:"
    for f in "$TMP"/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 5 "$f" >&2; }; done
  fi
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'log "failed at line $LINENO: $BASH_COMMAND"' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME CMD...: runs CMD in the background, logs to $TMP/NAME.log,
# remembers its PID in PIDS and in the variable PID_NAME.
start() {
  local name=$1; shift
  "$@" >"$TMP/$name.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  printf -v "PID_$name" '%s' "$pid"
}

# stop_pids PID...: SIGTERM, up to 3 s, then SIGKILL; reaps them and drops
# them from PIDS.
stop_pids() {
  local pid i alive keep=()
  [ $# -eq 0 ] && return 0
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  for i in $(seq 1 30); do
    alive=0
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "$@"; do kill -KILL "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    case " $* " in *" $pid "*) ;; *) keep+=("$pid") ;; esac
  done
  PIDS=("${keep[@]}")
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
wait_port() { # host port name
  local i
  for i in $(seq 1 100); do port_open "$1" "$2" && return 0; sleep 0.1; done
  die "$3 is not listening on $1:$2 after 10 s (log: $(tail -n 3 "$TMP/$3.log" 2>/dev/null))"
}
metric() { curl -fsS --max-time 3 "http://127.0.0.1:$1/metrics" 2>/dev/null | awk -v m="$2" 'index($0, m) == 1 {s += $NF} END {print s + 0}'; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
mb() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
cpu_ticks() { # sum of utime+stime over the given PIDs
  local t=0 pid v
  for pid in "$@"; do
    v=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
    t=$((t + v))
  done
  echo "$t"
}
CLK_TCK=$(getconf CLK_TCK)

# ---------------------------------------------------------------- tools
for t in go iperf3 haproxy curl; do
  command -v "$t" >/dev/null 2>&1 || die "$t not found (run scripts/install-deps.sh bench)"
done
FORTIO=$(command -v fortio 2>/dev/null || true)
[ -z "$FORTIO" ] && [ -x "$(go env GOPATH)/bin/fortio" ] && FORTIO="$(go env GOPATH)/bin/fortio"
if [ -z "$FORTIO" ]; then
  log "installing fortio $FORTIO_VERSION (go install, outside go.mod)"
  (cd "$TMP" && GOFLAGS= go install "fortio.org/fortio@$FORTIO_VERSION") || die "cannot install fortio"
  FORTIO="$(go env GOPATH)/bin/fortio"
fi

for p in $P_CTL_ADMIN $P_CTL_SYNC $P_SRV_MESH $P_SRV_DNS $P_SRV_ADMIN $P_CLI_MESH $P_CLI_DNS \
         $P_CLI_ADMIN $P_IPERF $P_HTTP $P_SINK $P_HAP_BULK $P_HAP_WEB $P_REL_BULK $P_REL_WEB; do
  port_open 127.0.0.1 "$p" && die "port 127.0.0.1:$p is in use; set BENCH_BASE_PORT"
done

# ---------------------------------------------------------------- build
log "building (CGO_ENABLED=0 -trimpath -ldflags '-s -w') into $TMP/bin"
BIN=$TMP/bin
mkdir -p "$BIN"
build() { # GOARCH out pkg
  CGO_ENABLED=0 GOOS=linux GOARCH=$1 go build -trimpath -ldflags "-s -w" -o "$2" "$3"
}
build amd64 "$BIN/fogmesh" ./cmd/fogmesh
build amd64 "$BIN/fogmesh-agent" ./cmd/fogmesh-agent
SIZE_AMD64_AGENT=$(stat -c %s "$BIN/fogmesh-agent")
SIZE_AMD64_FULL=$(stat -c %s "$BIN/fogmesh")
HOSTARCH=$(go env GOARCH)
if [ "$HOSTARCH" != amd64 ]; then
  # Run the host build; size figures above are still linux/amd64.
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$BIN/fogmesh" ./cmd/fogmesh
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$BIN/fogmesh-agent" ./cmd/fogmesh-agent
fi
if [ "${SKIP_ARM64:-0}" != 1 ]; then
  build arm64 "$TMP/fogmesh-arm64" ./cmd/fogmesh
  build arm64 "$TMP/fogmesh-agent-arm64" ./cmd/fogmesh-agent
  SIZE_ARM64_AGENT=$(stat -c %s "$TMP/fogmesh-agent-arm64")
  SIZE_ARM64_FULL=$(stat -c %s "$TMP/fogmesh-arm64")
  rm -f "$TMP/fogmesh-arm64" "$TMP/fogmesh-agent-arm64"
else
  SIZE_ARM64_AGENT=0; SIZE_ARM64_FULL=0
fi
go build -o "$BIN/splicerelay" ./bench/splicerelay
go build -o "$BIN/holdconns" ./bench/holdconns
go build -o "$BIN/benchjson" ./bench/benchjson

# ---------------------------------------------------------------- machine
CPU_MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
[ -z "$CPU_MODEL" ] && CPU_MODEL=$(lscpu 2>/dev/null | awk -F': +' '/Model name/ {print $2; exit}')
GIT_REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || GIT_REV="$GIT_REV (+ uncommitted changes)"
HAPROXY_VERSION=$(haproxy -v 2>/dev/null | awk 'NR==1 {print $3}')
IPERF_VERSION=$(iperf3 --version 2>/dev/null | awk 'NR==1 {print $2}')
FORTIO_V=$("$FORTIO" version 2>/dev/null | head -n 1)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- backends and proxies
log "starting backends, HAProxy, splice relay, control plane and two agents"
start iperf "$(command -v iperf3)" -s -B 127.0.0.1 -p "$P_IPERF"
start httpd "$FORTIO" server -http-port "127.0.0.1:$P_HTTP" -grpc-port disabled \
  -redirect-port disabled -tcp-port disabled -udp-port disabled -data-dir "$TMP" -loglevel Warning
start sink "$BIN/holdconns" -serve "127.0.0.1:$P_SINK"

cat >"$TMP/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4000
defaults
    mode tcp
    option splice-auto
    timeout connect 5s
    timeout client 60s
    timeout server 60s
listen bulk
    bind 127.0.0.1:$P_HAP_BULK
    server s1 127.0.0.1:$P_IPERF
listen web
    bind 127.0.0.1:$P_HAP_WEB
    server s1 127.0.0.1:$P_HTTP
EOF
haproxy -c -q -f "$TMP/haproxy.cfg" || die "haproxy rejects its config"
start haproxy "$(command -v haproxy)" -db -f "$TMP/haproxy.cfg"
start relay "$BIN/splicerelay" "127.0.0.1:$P_REL_BULK=127.0.0.1:$P_IPERF" "127.0.0.1:$P_REL_WEB=127.0.0.1:$P_HTTP"

start ctl "$BIN/fogmesh" control -state-dir "$TMP/ctl" -admin-addr "127.0.0.1:$P_CTL_ADMIN" \
  -sync-addr "127.0.0.1:$P_CTL_SYNC"
wait_port 127.0.0.1 "$P_CTL_ADMIN" ctl
cat >"$TMP/services.yaml" <<EOF
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: bulk, namespace: bench}
spec: {ports: [{name: tcp, port: $S_BULK}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: web, namespace: bench}
spec: {ports: [{name: http, port: $S_WEB}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: webl7, namespace: bench}
spec: {ports: [{name: http, port: $S_WEB, protocol: http}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: hold, namespace: bench}
spec: {ports: [{name: tcp, port: $S_HOLD}]}
EOF
"$BIN/fogmesh" apply -server "http://127.0.0.1:$P_CTL_ADMIN" -f "$TMP/services.yaml" >&2

# Health checks are off (check: none) so they do not touch iperf3 (which
# treats every connection as a test) or add load; the script checks the paths.
cat >"$TMP/srv.yaml" <<EOF
node: {name: srv, site: s1, region: r1}
control: ["127.0.0.1:$P_CTL_SYNC"]
meshAddr: "127.0.0.1:$P_SRV_MESH"
dnsAddr: "127.0.0.1:$P_SRV_DNS"
adminAddr: "127.0.0.1:$P_SRV_ADMIN"
vipRange: "$SRV_VIP_RANGE"
stateDir: $TMP/srv
workloads:
  - {name: bulk-srv, service: bulk, namespace: bench, address: 127.0.0.1, ports: [{name: tcp, port: $P_IPERF}], check: {type: none}}
  - {name: web-srv, service: web, namespace: bench, address: 127.0.0.1, ports: [{name: http, port: $P_HTTP}], check: {type: none}}
  - {name: webl7-srv, service: webl7, namespace: bench, address: 127.0.0.1, ports: [{name: http, port: $P_HTTP}], check: {type: none}}
  - {name: hold-srv, service: hold, namespace: bench, address: 127.0.0.1, ports: [{name: tcp, port: $P_SINK}], check: {type: none}}
EOF
cat >"$TMP/cli.yaml" <<EOF
node: {name: cli, site: s1, region: r1}
control: ["127.0.0.1:$P_CTL_SYNC"]
meshAddr: "127.0.0.1:$P_CLI_MESH"
dnsAddr: "127.0.0.1:$P_CLI_DNS"
adminAddr: "127.0.0.1:$P_CLI_ADMIN"
vipRange: "$CLI_VIP_RANGE"
stateDir: $TMP/cli
EOF
start srv "$BIN/fogmesh-agent" -config "$TMP/srv.yaml"
start cli "$BIN/fogmesh-agent" -config "$TMP/cli.yaml"

wait_port 127.0.0.1 "$P_IPERF" iperf
wait_port 127.0.0.1 "$P_HTTP" httpd
wait_port 127.0.0.1 "$P_SINK" sink
wait_port 127.0.0.1 "$P_HAP_BULK" haproxy
wait_port 127.0.0.1 "$P_REL_BULK" relay
wait_port 127.0.0.1 "$P_SRV_ADMIN" srv
wait_port 127.0.0.1 "$P_CLI_ADMIN" cli

# vip AGENT_ADMIN_PORT SERVICE TIER: the service's VIP once the agent routes
# it to a healthy endpoint of that tier, else empty.
vip() {
  "$BIN/fogmesh" routes -agent "http://127.0.0.1:$1" 2>/dev/null |
    awk -v s="bench/$2" -v t="$3" '$1 == s && $6 == t && $7 == "true" {print $2; exit}'
}
SRV_VIP_BULK= SRV_VIP_WEB= SRV_VIP_WEBL7= SRV_VIP_HOLD= CLI_VIP_BULK= CLI_VIP_WEB= CLI_VIP_WEBL7= CLI_VIP_HOLD=
all_vips() {
  [ -n "$SRV_VIP_BULK" ] && [ -n "$SRV_VIP_WEB" ] && [ -n "$SRV_VIP_WEBL7" ] && [ -n "$SRV_VIP_HOLD" ] &&
    [ -n "$CLI_VIP_BULK" ] && [ -n "$CLI_VIP_WEB" ] && [ -n "$CLI_VIP_WEBL7" ] && [ -n "$CLI_VIP_HOLD" ]
}
for i in $(seq 1 150); do
  SRV_VIP_BULK=$(vip "$P_SRV_ADMIN" bulk node); SRV_VIP_WEB=$(vip "$P_SRV_ADMIN" web node)
  SRV_VIP_WEBL7=$(vip "$P_SRV_ADMIN" webl7 node); SRV_VIP_HOLD=$(vip "$P_SRV_ADMIN" hold node)
  CLI_VIP_BULK=$(vip "$P_CLI_ADMIN" bulk site); CLI_VIP_WEB=$(vip "$P_CLI_ADMIN" web site)
  CLI_VIP_WEBL7=$(vip "$P_CLI_ADMIN" webl7 site); CLI_VIP_HOLD=$(vip "$P_CLI_ADMIN" hold site)
  all_vips && break
  sleep 0.1
done
all_vips || {
  "$BIN/fogmesh" routes -agent "http://127.0.0.1:$P_SRV_ADMIN" >&2 || true
  "$BIN/fogmesh" routes -agent "http://127.0.0.1:$P_CLI_ADMIN" >&2 || true
  die "agents did not route all services within 15 s"
}
log "srv agent VIPs: bulk $SRV_VIP_BULK web $SRV_VIP_WEB webl7 $SRV_VIP_WEBL7 hold $SRV_VIP_HOLD; cli agent: bulk $CLI_VIP_BULK web $CLI_VIP_WEB webl7 $CLI_VIP_WEBL7 hold $CLI_VIP_HOLD"

# Engines: name, label, bulk address, web URL. LATENGINES adds the agents'
# L7 path (the same backend behind a service port declared protocol: http),
# informational: HAProxy here is L4, so the targets use the L4 rows.
ENGINES=(direct agent1 agent2 haproxy relay)
LATENGINES=(direct agent1 agent2 haproxy relay agent1l7 agent2l7)
declare -A LABEL BULK WEB CPUPIDS
LABEL[direct]="(a) direct";                 BULK[direct]="127.0.0.1 $P_IPERF";          WEB[direct]="http://127.0.0.1:$P_HTTP/"
LABEL[agent1]="(b) one agent (node tier)";  BULK[agent1]="$SRV_VIP_BULK $S_BULK";       WEB[agent1]="http://$SRV_VIP_WEB:$S_WEB/"
LABEL[agent2]="(c) two agents (mesh port)"; BULK[agent2]="$CLI_VIP_BULK $S_BULK";       WEB[agent2]="http://$CLI_VIP_WEB:$S_WEB/"
LABEL[haproxy]="(d) HAProxy $HAPROXY_VERSION (tcp, splice-auto, 1 thread)"; BULK[haproxy]="127.0.0.1 $P_HAP_BULK"; WEB[haproxy]="http://127.0.0.1:$P_HAP_WEB/"
LABEL[relay]="(e) minimal Go splice relay"; BULK[relay]="127.0.0.1 $P_REL_BULK";       WEB[relay]="http://127.0.0.1:$P_REL_WEB/"
LABEL[agent1l7]="(b7) one agent, port declared http (L7)";  WEB[agent1l7]="http://$SRV_VIP_WEBL7:$S_WEB/"
LABEL[agent2l7]="(c7) two agents, port declared http (L7)"; WEB[agent2l7]="http://$CLI_VIP_WEBL7:$S_WEB/"
CPUPIDS[direct]=""; CPUPIDS[agent1]="$PID_srv"; CPUPIDS[agent2]="$PID_cli $PID_srv"
CPUPIDS[haproxy]="$PID_haproxy"; CPUPIDS[relay]="$PID_relay"

# Every path answers before anything is measured (the L7 rows are optional).
FAILED=() WARNED=()
# failed ENGINE MESSAGE: a failure of an informational (L7) row is a warning.
failed() { case $1 in *l7) WARNED+=("$2") ;; *) FAILED+=("$2") ;; esac; }
for e in "${LATENGINES[@]}"; do
  if ! curl -fsS -o /dev/null --max-time 5 "${WEB[$e]}"; then
    case $e in
      *l7) log "HTTP path $e (${WEB[$e]}) does not answer"; failed "$e" "HTTP path $e does not answer" ;;
      *) die "HTTP path $e (${WEB[$e]}) does not answer" ;;
    esac
  fi
done

# ---------------------------------------------------------------- RSS idle (before load)
log "idle 5 s"
sleep 5
RSS_SRV_IDLE0=$(rss_kb "$PID_srv"); RSS_CLI_IDLE0=$(rss_kb "$PID_cli")

# ---------------------------------------------------------------- 1. throughput
declare -A TP TPCPU TPRSS
# rotate ROUND: the engine order for a round (rotated each round so no engine
# always runs first or last).
order() {
  local r=$1; shift
  local list=("$@"); local n=${#list[@]} i
  for i in $(seq 0 $((n - 1))); do echo "${list[$(((i + r) % n))]}"; done
}
for r in $(seq 1 "$ROUNDS"); do
  for e in $(order "$r" "${ENGINES[@]}"); do
    read -r host port <<<"${BULK[$e]}"
    log "iperf3 round $r/$ROUNDS: $e ($host:$port, ${IPERF_SECONDS}s)"
    out="$TMP/iperf-$e-$r.json"; v=
    c0=$(cpu_ticks ${CPUPIDS[$e]})
    t0=$(date +%s.%N)
    if timeout $((IPERF_SECONDS + 20)) iperf3 -c "$host" -p "$port" -t "$IPERF_SECONDS" -J >"$out" 2>&1 &&
       v=$("$BIN/benchjson" iperf3 "$out" 2>&1); then
      t1=$(date +%s.%N); c1=$(cpu_ticks ${CPUPIDS[$e]})
      TP[$e,$r]=${v%% *}
      TPCPU[$e,$r]=$(awk -v d="$((c1 - c0))" -v hz="$CLK_TCK" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", 100 * d / hz / (b - a)}')
      TPRSS[$e,$r]="$(mb "$(rss_kb "$PID_srv")")/$(mb "$(rss_kb "$PID_cli")")"
    else
      log "iperf3 $e round $r FAILED: $(head -c 300 "$out") ${v:-}"
      TP[$e,$r]=fail; TPCPU[$e,$r]=fail; TPRSS[$e,$r]=fail; FAILED+=("iperf3 $e round $r")
    fi
    sleep 0.5
  done
done

RSS_SRV_TP=$(rss_kb "$PID_srv"); RSS_CLI_TP=$(rss_kb "$PID_cli")

# ---------------------------------------------------------------- 2. latency
declare -A P50 P99 P999 AQPS BAD
for r in $(seq 1 "$ROUNDS"); do
  for e in $(order "$r" "${LATENGINES[@]}"); do
    log "fortio round $r/$ROUNDS: $e (${QPS} req/s, $CONNS conns, ${LAT_SECONDS}s)"
    out="$TMP/fortio-$e-$r.json"; v=
    if timeout $((LAT_SECONDS + 30)) "$FORTIO" load -qps "$QPS" -c "$CONNS" -t "${LAT_SECONDS}s" \
         -p "50,99,99.9" -loglevel Error -json "$out" "${WEB[$e]}" >"$TMP/fortio-$e-$r.log" 2>&1 &&
       v=$("$BIN/benchjson" fortio "$out" 2>&1); then
      read -r P50[$e,$r] P99[$e,$r] P999[$e,$r] AQPS[$e,$r] BAD[$e,$r] _ <<<"$v"
      [ "${BAD[$e,$r]}" = 0 ] || failed "$e" "fortio $e round $r: ${BAD[$e,$r]} non-200 responses"
    else
      log "fortio $e round $r FAILED: $(tail -n 3 "$TMP/fortio-$e-$r.log") ${v:-}"
      P50[$e,$r]=fail; P99[$e,$r]=fail; P999[$e,$r]=fail; AQPS[$e,$r]=fail; BAD[$e,$r]=fail
      failed "$e" "fortio $e round $r"
    fi
    sleep 0.5
  done
done

# ---------------------------------------------------------------- 3. RSS
RSS_SRV_LAT=$(rss_kb "$PID_srv"); RSS_CLI_LAT=$(rss_kb "$PID_cli")
log "idle 5 s after load"
sleep 5
RSS_SRV_IDLE1=$(rss_kb "$PID_srv"); RSS_CLI_IDLE1=$(rss_kb "$PID_cli")

# hold ADDR: opens HOLD_N connections through ADDR, echoes "ok" once all
# are up and the RSS has been read (into HOLD_SRV, HOLD_CLI), then closes them.
hold() {
  local addr=$1 name=$2 i
  HOLD_SRV=fail HOLD_CLI=fail HOLD_UP= HOLD_ACTIVE_SRV= HOLD_ACTIVE_CLI=
  start "$name" "$BIN/holdconns" -n "$HOLD_N" -hold 60s -timeout 30s "$addr"
  local pid_var="PID_$name"; local pid=${!pid_var}
  for i in $(seq 1 350); do
    grep -q '^up ' "$TMP/$name.log" 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if grep -q '^up ' "$TMP/$name.log"; then
    HOLD_UP=$(awk '/^up / {print $3}' "$TMP/$name.log")
    sleep 2
    HOLD_SRV=$(rss_kb "$PID_srv"); HOLD_CLI=$(rss_kb "$PID_cli")
    HOLD_ACTIVE_SRV=$(metric "$P_SRV_ADMIN" fogmesh_agent_active_connections)
    HOLD_ACTIVE_CLI=$(metric "$P_CLI_ADMIN" fogmesh_agent_active_connections)
    [ "$HOLD_ACTIVE_SRV" -ge "$HOLD_N" ] || [ "$HOLD_ACTIVE_CLI" -ge "$HOLD_N" ] ||
      FAILED+=("holdconns via $addr: agents report only ${HOLD_ACTIVE_SRV}/${HOLD_ACTIVE_CLI} active connections")
  else
    log "holdconns via $addr FAILED: $(tail -n 3 "$TMP/$name.log")"
    FAILED+=("holdconns via $addr")
  fi
  stop_pids "$pid"
}
log "opening $HOLD_N connections through the srv agent ($SRV_VIP_HOLD:$S_HOLD)"
hold "$SRV_VIP_HOLD:$S_HOLD" hold1
RSS_SRV_HOLD1=$HOLD_SRV; HOLD1_UP=$HOLD_UP; HOLD1_ACTIVE_SRV=$HOLD_ACTIVE_SRV
sleep 2
log "opening $HOLD_N connections through both agents ($CLI_VIP_HOLD:$S_HOLD)"
hold "$CLI_VIP_HOLD:$S_HOLD" hold2
RSS_SRV_HOLD2=$HOLD_SRV; RSS_CLI_HOLD2=$HOLD_CLI; HOLD2_UP=$HOLD_UP
HOLD2_ACTIVE_SRV=$HOLD_ACTIVE_SRV; HOLD2_ACTIVE_CLI=$HOLD_ACTIVE_CLI
HWM_SRV=$(hwm_kb "$PID_srv"); HWM_CLI=$(hwm_kb "$PID_cli")
sleep 3
RSS_SRV_AFTER=$(rss_kb "$PID_srv"); RSS_CLI_AFTER=$(rss_kb "$PID_cli")

# The agents' own counters over the whole run.
counters() {
  curl -fsS --max-time 3 "http://127.0.0.1:$1/metrics" 2>/dev/null |
    grep -E '^fogmesh_(agent_connections_total|agent_dial_failures_total|agent_failovers_total|mesh_bad_streams_total|mesh_streams_total)' |
    awk '{printf "%s%s %s", sep, $1, $2; sep = ", "} END {print ""}'
}
COUNTERS_SRV=$(counters "$P_SRV_ADMIN"); COUNTERS_CLI=$(counters "$P_CLI_ADMIN")

# ---------------------------------------------------------------- 5. Go benchmarks
# The mesh processes are idle now; stop them so they take no CPU.
stop_pids "${PIDS[@]}"
GOBENCH="(skipped: SKIP_GOBENCH=1)"
if [ "${SKIP_GOBENCH:-0}" != 1 ]; then
  log "go test -bench (internal/proxy, internal/transport)"
  if ! GOBENCH=$(timeout 150 go test -run '^$' -bench . -benchtime 2s ./internal/proxy ./internal/transport 2>&1); then
    FAILED+=("go test -bench")
  fi
fi

# ---------------------------------------------------------------- report
med() { # values... -> median (ignores "fail"; "fail" if none)
  printf '%s\n' "$@" | { grep -v '^fail$' || true; } | sort -g |
    awk '{v[NR] = $1} END {if (NR == 0) {print "fail"; exit} if (NR % 2) printf "%.3f\n", v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}
# calc EXPR with a, b: prints "n/a" if an operand failed.
calc() { # fmt a b expr
  case "$2$3" in *fail*|*n/a*) echo "n/a"; return ;; esac
  awk -v a="$2" -v b="$3" "BEGIN {printf \"$1\", ($4)}"
}
rounds_of() { # array-name engine -> "x / y"
  local -n arr=$1; local out="" r
  for r in $(seq 1 "$ROUNDS"); do out+="${out:+ / }${arr[$2,$r]}"; done
  echo "$out"
}
met() { case "$1" in 1) echo "**met**" ;; 0) echo "**missed**" ;; *) echo "not measured" ;; esac; }

declare -A TPM CPUM L50 L99 L999 Q
for e in "${LATENGINES[@]}"; do
  vals=(); cpus=(); a=(); b=(); c=(); q=()
  for r in $(seq 1 "$ROUNDS"); do
    vals+=("${TP[$e,$r]:-fail}"); cpus+=("${TPCPU[$e,$r]:-fail}"); a+=("${P50[$e,$r]}"); b+=("${P99[$e,$r]}")
    c+=("${P999[$e,$r]}"); q+=("${AQPS[$e,$r]}")
  done
  TPM[$e]=$(med "${vals[@]}"); CPUM[$e]=$(med "${cpus[@]}")
  L50[$e]=$(med "${a[@]}"); L99[$e]=$(med "${b[@]}"); L999[$e]=$(med "${c[@]}"); Q[$e]=$(med "${q[@]}")
done
arm() { [ "$1" = 0 ] && echo "skipped" || mb $(($1 / 1024)); }
add50() { calc "%+.3f" "${L50[$1]}" "${L50[direct]}" "a - b"; }
add99() { calc "%+.3f" "${L99[$1]}" "${L99[direct]}" "a - b"; }

STAMP=$(date +%Y%m%d-%H%M%S)
mkdir -p "$ROOT/bench/out"
REPORT="$ROOT/bench/out/results-$STAMP.md"
{
echo "# fogmesh benchmark results ($(date -u '+%Y-%m-%d %H:%M UTC'))"
echo
echo "| machine | |"
echo "|---|---|"
echo "| cores (nproc) | $(nproc) |"
echo "| CPU | $CPU_MODEL |"
echo "| kernel | $(uname -sr) |"
echo "| Go | $(go version | awk '{print $3, $4}') |"
echo "| fogmesh | $GIT_REV |"
echo "| load average (1/5/15 min) before the run | $LOAD_START (other jobs on the machine perturb every figure) |"
echo "| peers | HAProxy $HAPROXY_VERSION, iperf3 $IPERF_VERSION, fortio $FORTIO_V |"
echo
echo "Everything on loopback, no CPU pinning (load generator, backend and proxies share all cores); agents with default GOMAXPROCS/GOGC."
echo "$ROUNDS rounds, engines interleaved (order rotated each round); the figure is the median of the rounds, per-round values follow."
echo
echo "## 1. TCP bulk throughput (iperf3, 1 stream, ${IPERF_SECONDS} s)"
echo
echo "| path | Gbit/s (median) | per round | proxy CPU % (median) | srv/cli agent RSS MB after each round |"
echo "|---|---|---|---|---|"
for e in "${ENGINES[@]}"; do
  cpu="${CPUM[$e]}"; [ "$e" = direct ] && cpu="—"
  [ "$cpu" != "—" ] && [ "$cpu" != fail ] && cpu=$(printf '%.0f' "$cpu")
  echo "| ${LABEL[$e]} | $(calc "%.2f" "${TPM[$e]}" 0 a) | $(rounds_of TP "$e") | $cpu | $(rounds_of TPRSS "$e") |"
done
echo
echo "Proxy CPU % is the proxy processes' utime+stime over the test's wall time (100 = one core; two agents summed)."
echo
echo "| ratio | value |"
echo "|---|---|"
echo "| (b) one agent / (e) splice relay | $(calc "%.2f" "${TPM[agent1]}" "${TPM[relay]}" "a / b") |"
echo "| (b) one agent / (d) HAProxy | $(calc "%.2f" "${TPM[agent1]}" "${TPM[haproxy]}" "a / b") |"
echo "| (b) one agent / (a) direct | $(calc "%.2f" "${TPM[agent1]}" "${TPM[direct]}" "a / b") |"
echo "| (c) two agents / (e) splice relay | $(calc "%.2f" "${TPM[agent2]}" "${TPM[relay]}" "a / b") |"
echo "| (c) two agents / (d) HAProxy | $(calc "%.2f" "${TPM[agent2]}" "${TPM[haproxy]}" "a / b") |"
echo "| (c) two agents / (b) one agent | $(calc "%.2f" "${TPM[agent2]}" "${TPM[agent1]}" "a / b") |"
echo "| (d) HAProxy / (e) splice relay | $(calc "%.2f" "${TPM[haproxy]}" "${TPM[relay]}" "a / b") |"
echo
echo "## 2. Small-HTTP latency at a fixed rate (fortio, $QPS req/s, $CONNS connections, ${LAT_SECONDS} s, keep-alive)"
echo
echo "Backend: fortio server (empty 200 response). Times in ms."
echo
echo "| path | p50 | p99 | p99.9 | p50 per round | p99 per round | achieved req/s | added p50 vs direct | added p99 vs direct |"
echo "|---|---|---|---|---|---|---|---|---|"
for e in "${LATENGINES[@]}"; do
  ad50=$(add50 "$e"); ad99=$(add99 "$e"); [ "$e" = direct ] && { ad50="—"; ad99="—"; }
  echo "| ${LABEL[$e]} | ${L50[$e]} | ${L99[$e]} | ${L999[$e]} | $(rounds_of P50 "$e") | $(rounds_of P99 "$e") | ${Q[$e]%.*} | $ad50 | $ad99 |"
done
echo
echo "| added latency per hop (ms) | p50 | p99 |"
echo "|---|---|---|"
echo "| HAProxy (1 hop) | $(add50 haproxy) | $(add99 haproxy) |"
echo "| splice relay (1 hop) | $(add50 relay) | $(add99 relay) |"
echo "| one agent (1 hop) | $(add50 agent1) | $(add99 agent1) |"
echo "| two agents, per hop (added / 2) | $(calc "%+.3f" "$(add50 agent2)" 0 "a / 2") | $(calc "%+.3f" "$(add99 agent2)" 0 "a / 2") |"
echo "| one agent minus HAProxy | $(calc "%+.3f" "$(add50 agent1)" "$(add50 haproxy)" "a - b") | $(calc "%+.3f" "$(add99 agent1)" "$(add99 haproxy)" "a - b") |"
echo "| one agent, L7 (informational) | $(add50 agent1l7) | $(add99 agent1l7) |"
echo "| two agents, L7, per hop (informational) | $(calc "%+.3f" "$(add50 agent2l7)" 0 "a / 2") | $(calc "%+.3f" "$(add99 agent2l7)" 0 "a / 2") |"
echo "| two agents per hop minus HAProxy | $(calc "%+.3f" "$(add50 agent2)" "$(add50 haproxy)" "a / 2 - b") | $(calc "%+.3f" "$(add99 agent2)" "$(add99 haproxy)" "a / 2 - b") |"
echo
echo "## 3. Agent memory (VmRSS)"
echo
echo "| state | srv agent MB | cli agent MB |"
echo "|---|---|---|"
echo "| idle 5 s after start (before any load) | $(mb "$RSS_SRV_IDLE0") | $(mb "$RSS_CLI_IDLE0") |"
echo "| right after the throughput runs | $(mb "$RSS_SRV_TP") | $(mb "$RSS_CLI_TP") |"
echo "| right after the latency runs | $(mb "$RSS_SRV_LAT") | $(mb "$RSS_CLI_LAT") |"
echo "| idle 5 s after the throughput and latency runs | $(mb "$RSS_SRV_IDLE1") | $(mb "$RSS_CLI_IDLE1") |"
if [ "$RSS_SRV_HOLD1" != fail ]; then
echo "| $HOLD_N open connections through the srv agent (2 sockets each in the agent; all up in ${HOLD1_UP}) | $(mb "$RSS_SRV_HOLD1") | — |"
else
echo "| $HOLD_N open connections through the srv agent | fail | — |"
fi
if [ "$RSS_SRV_HOLD2" != fail ]; then
echo "| $HOLD_N open connections through both agents (mesh streams; all up in ${HOLD2_UP}) | $(mb "$RSS_SRV_HOLD2") | $(mb "$RSS_CLI_HOLD2") |"
else
echo "| $HOLD_N open connections through both agents | fail | fail |"
fi
echo "| 3 s after those closed | $(mb "$RSS_SRV_AFTER") | $(mb "$RSS_CLI_AFTER") |"
echo "| peak (VmHWM) over the run | $(mb "$HWM_SRV") | $(mb "$HWM_CLI") |"
echo
echo "Agents' active-connections gauge while holding: srv ${HOLD1_ACTIVE_SRV:-?} (one agent); cli ${HOLD2_ACTIVE_CLI:-?}, srv ${HOLD2_ACTIVE_SRV:-?} (two agents)."
echo
echo "Agent counters over the whole run: srv: ${COUNTERS_SRV:-none}; cli: ${COUNTERS_CLI:-none}."
if [ "$RSS_SRV_HOLD1" != fail ]; then
echo
echo "Per proxied connection through the srv agent: $(awk -v a="$RSS_SRV_HOLD1" -v b="$RSS_SRV_IDLE1" -v n="$HOLD_N" 'BEGIN {printf "%.1f", (a - b) / n}') KB of RSS (vs idle after load)."
fi
echo
echo "## 4. Binary size (CGO_ENABLED=0, -trimpath, -ldflags '-s -w')"
echo
echo "| binary | linux/amd64 MB | linux/arm64 MB |"
echo "|---|---|---|"
echo "| fogmesh-agent | $(mb $((SIZE_AMD64_AGENT / 1024))) | $(arm $SIZE_ARM64_AGENT) |"
echo "| fogmesh (everything) | $(mb $((SIZE_AMD64_FULL / 1024))) | $(arm $SIZE_ARM64_FULL) |"
echo
echo "(MB = MiB.)"
echo
echo "## Targets"
echo
echo "| target | figure | |"
echo "|---|---|---|"
echo "| (b) one agent within 10% of the splice relay (e) | (b)/(e) = $(calc "%.2f" "${TPM[agent1]}" "${TPM[relay]}" "a / b") | $(met "$(calc "%d" "${TPM[agent1]}" "${TPM[relay]}" "a >= 0.9 * b")") |"
echo "| (b) one agent above HAProxy (d) | (b)/(d) = $(calc "%.2f" "${TPM[agent1]}" "${TPM[haproxy]}" "a / b") | $(met "$(calc "%d" "${TPM[agent1]}" "${TPM[haproxy]}" "a > b")") |"
echo "| added p50 per agent hop <= HAProxy's (one agent) | $(add50 agent1) vs $(add50 haproxy) ms | $(met "$(calc "%d" "$(add50 agent1)" "$(add50 haproxy)" "a <= b")") |"
echo "| added p99 per agent hop <= HAProxy's (one agent) | $(add99 agent1) vs $(add99 haproxy) ms | $(met "$(calc "%d" "$(add99 agent1)" "$(add99 haproxy)" "a <= b")") |"
echo "| added p50 per agent hop <= HAProxy's (two agents / 2) | $(calc "%+.3f" "$(add50 agent2)" 0 "a / 2") vs $(add50 haproxy) ms | $(met "$(calc "%d" "$(add50 agent2)" "$(add50 haproxy)" "a / 2 <= b")") |"
echo "| added p99 per agent hop <= HAProxy's (two agents / 2) | $(calc "%+.3f" "$(add99 agent2)" 0 "a / 2") vs $(add99 haproxy) ms | $(met "$(calc "%d" "$(add99 agent2)" "$(add99 haproxy)" "a / 2 <= b")") |"
echo "| agent idle RSS < 20 MB | $(mb "$RSS_SRV_IDLE0") MB before load, $(mb "$RSS_SRV_IDLE1") MB after | $(met "$(calc "%d" "$RSS_SRV_IDLE0" "$RSS_SRV_IDLE1" "a < 20480 && b < 20480")") |"
echo "| agent RSS < 50 MB with $HOLD_N connections | $(mb "$RSS_SRV_HOLD1") MB | $(met "$(calc "%d" "$RSS_SRV_HOLD1" 0 "a < 51200")") |"
echo "| agent binary < 25 MB | $(mb $((SIZE_AMD64_AGENT / 1024))) MB amd64, $(arm $SIZE_ARM64_AGENT) MB arm64 | $(met $((SIZE_AMD64_AGENT < 26214400 && SIZE_ARM64_AGENT < 26214400))) |"
echo
echo "## 5. Go benchmarks"
echo
echo '`go test -run '"'"'^$'"'"' -bench . -benchtime 2s ./internal/proxy ./internal/transport`'
echo
echo '```'
echo "$GOBENCH"
echo '```'
if [ ${#FAILED[@]} -gt 0 ]; then
  echo
  echo "## Failures"
  echo
  for f in "${FAILED[@]}"; do echo "* $f"; done
fi
if [ ${#WARNED[@]} -gt 0 ]; then
  echo
  echo "## Warnings (informational rows)"
  echo
  for f in "${WARNED[@]}"; do echo "* $f"; done
fi
} | tee "$REPORT"
log "report written to $REPORT"
[ ${#FAILED[@]} -eq 0 ] || exit 1
