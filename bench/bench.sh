#!/usr/bin/env bash
# fogmesh side-by-side benchmarks, all on loopback, all in one run:
#   1. TCP bulk throughput (iperf3, 1 stream): direct, one agent, two agents,
#      HAProxy (tcp, splice-auto, 1 thread), a minimal Go splice relay;
#   2. small-HTTP latency at a fixed rate (fortio, 2,000 req/s, 16 conns):
#      the same paths to an HTTP backend;
#   3. agent RSS idle and with 1,000 open proxied connections;
#   4. binary sizes (linux/amd64 and linux/arm64, stripped, CGO_ENABLED=0);
#   5. the Go micro-benchmarks of internal/proxy and internal/transport;
#   6. L7 request proxying (service ports declared http/http2/grpc): the
#      maximum request rate (closed loop, 16 connections: wrk, or fortio
#      -qps 0 without wrk) and p50/p99 at a fixed 2,000 req/s for HTTP/1.1
#      direct, through one agent, through two agents, through nginx (HTTP
#      reverse proxy, upstream keepalive pool, 1 worker) and through the
#      smallest Go HTTP/1.1 proxies (bench/h1bare: a goroutine per
#      connection, and one epoll loop), the ceilings of the agent's HTTP/1.1
#      path in Go; h2c (fortio -h2,
#      prior knowledge) and gRPC (fortio -grpc -ping) direct and through one
#      agent; h2c also with h2load (-n requests over -c connections, -m
#      streams each) direct and through one agent.
# Engines are interleaved within each round. Prints a markdown report to
# stdout and writes it to bench/out/results-<date>.md.
#
# Needs: go, iperf3, haproxy, curl, wrk (scripts/install-deps.sh bench), nginx
# and h2load (Debian nghttp2-client; both installed here with apt-get if
# missing and root) and fortio (installed with
# `go install fortio.org/fortio@v1.63.0` if missing). Without wrk the maximum
# HTTP/1.1 rate is measured with fortio -qps 0.
# Knobs (environment): ROUNDS (2), IPERF_SECONDS (4), LAT_SECONDS (5),
# QPS (2000), CONNS (16), HOLD_N (1000), BENCH_BASE_PORT (31000),
# XROUNDS (1: rounds of the h2c and gRPC rows), WRK_THREADS (1),
# H2LOAD_N (50000 requests per h2load run), H2_STREAMS (10: h2load -m),
# SKIP_GOBENCH=1, SKIP_ARM64=1.
# BASELINE_BIN=/path/to/an/older/fogmesh (a full fogmesh binary with the
# control and agent subcommands): also runs a second control plane and one
# agent of that build (ports BASE+60..64, VIPs in 127.233.0.0/16, the webl7
# service only, the same backend) as row (b7-base), interleaved with (b7) in
# every round, and adds the new/baseline ratios and the issue 9 regression
# check (within 5%); BASELINE_REV (optional) names that build's commit for
# the label (default: the binary's `version` output). ONLY_L7=1: only
# sections 2 and 6 (HTTP/1.1 rows), for a short before/after run; skips the
# iperf3 runs, RSS and held connections, binary sizes and the arm64 build,
# the Go benchmarks and the h2c, gRPC and h2load rows. PIN=1: the load
# generators and backends on CPU 0, every proxy (agents, control planes,
# HAProxy, nginx, the bare relays) on CPU 1 (taskset; lib.sh pin_setup).
# ONLY_L4LAT=1: only the L4 rows of section 2 (direct, one agent, HAProxy,
# splice relay; with BASELINE_BIN also (b-base), the baseline agent's tcp
# port) and their targets, for a focused before/after run of the per-hop
# latency (issue 14). PERFSTAT=1: perf stat (task-clock, context switches)
# of each proxy over its fortio runs of section 2, reported per request,
# and its CPU split into user and kernel time, its system calls, its
# context switches and its page faults per request over each maximum rate
# run of section 6 (not the h2load rows).
# CAPTURE=1 (the default when root): also row (b-cap), the (b) path reached
# through a ClusterIP: service webcap (tcp, the same backend) with clusterIP
# 127.237.0.10, which the srv agent captures with nftables (-capture
# required; its table inet fogmesh is removed when it stops), so the added
# cost of transparent capture over the virtual IP is (b-cap) minus (b) in
# the same run. CAPTURE=0, or not root: no capture row.
# OBS=1: also the cost of traces and access logs (issue 16): a third control
# plane and three more agents of this build, each serving the webl7 service
# from its own node with traces sampled at 100 % or 1 % (OTLP/HTTP to
# bench/otlpsink) or an access log (every request, to a file in the temp
# dir), as rows (b7-t100), (b7-t1) and (b7-log) next to (b7), in both the
# latency and the maximum-rate lists (ports BASE+70..82, VIPs
# 127.234-236.0.0/16).
# FASTPATH=1 (the default when root): also row (b-bpf), one agent with the
# kernel fast path (fastPath: required; a BPF sockmap links a local client's
# socket to the endpoint's once the agent has authorized the pair), on a
# control plane of its own (ports BASE+83..87, VIPs 127.238.0.0/16) serving
# the bulk and web services from the same backends, in the throughput and
# latency lists next to (b); its kernel-path counters are reported.
# FASTPATH=0, or not root: no such row.
# PPROF=1: builds the binaries with -tags fogmesh_pprof
# and takes a CPU profile of the srv agent (and of the baseline agent, if
# its build has the tag too) over each of its fortio runs of section 2, into
# PPROF_DIR (default bench/out/pprof-<date>); the profile's own overhead
# touches those runs, so take the figures from a run without it.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

# ROUNDS, IPERF_SECONDS, LAT_SECONDS, QPS, CONNS: defaults in lib.sh.
HOLD_N=${HOLD_N:-1000}
XROUNDS=${XROUNDS:-1}
WRK_THREADS=${WRK_THREADS:-1}
H2LOAD_N=${H2LOAD_N:-50000}
H2_STREAMS=${H2_STREAMS:-10}
BASE=${BENCH_BASE_PORT:-31000}
MESH_NS=bench
SRV_VIP_RANGE=${SRV_VIP_RANGE:-127.231.0.0/16} # the three VIP ranges: knobs, for runs beside other benches
CLI_VIP_RANGE=${CLI_VIP_RANGE:-127.232.0.0/16}
BASE_VIP_RANGE=${BASE_VIP_RANGE:-127.233.0.0/16}
BASELINE_BIN=${BASELINE_BIN:-}
ONLY_L7=${ONLY_L7:-0}
pin_setup
ONLY_L4LAT=${ONLY_L4LAT:-0}
PPROF=${PPROF:-0}
PERFSTAT=${PERFSTAT:-0}
CAPTURE=${CAPTURE:-$([ "$(id -u)" = 0 ] && echo 1 || echo 0)}
CAP_CLUSTER_IP=127.237.0.10 # loopback: with capture off nothing leaves the machine
OBS=${OBS:-0}
FASTPATH=${FASTPATH:-$([ "$(id -u)" = 0 ] && echo 1 || echo 0)}
declare -A PS_CPU PS_CS PS_MIG
[ "$ONLY_L4LAT" != 1 ] || ONLY_L7=1 # and less: see the engine lists
[ "$ONLY_L7" != 1 ] || { SKIP_ARM64=1; SKIP_GOBENCH=1; }

# Ports on 127.0.0.1.
P_CTL_ADMIN=$((BASE + 0)); P_CTL_SYNC=$((BASE + 1))
P_SRV_MESH=$((BASE + 10)); P_SRV_DNS=$((BASE + 11)); P_SRV_ADMIN=$((BASE + 12)); P_SRV_PPROF=$((BASE + 13))
P_SRV_CAP=$((BASE + 14)) # the srv agent's capture listener (CAPTURE=1)
P_CLI_MESH=$((BASE + 20)); P_CLI_DNS=$((BASE + 21)); P_CLI_ADMIN=$((BASE + 22))
P_IPERF=$((BASE + 30)); P_HTTP=$((BASE + 31)); P_SINK=$((BASE + 32)); P_GRPC=$((BASE + 33))
P_HAP_BULK=$((BASE + 40)); P_HAP_WEB=$((BASE + 41)); P_NGINX=$((BASE + 42)); P_HAP_WEBL7=$((BASE + 43))
P_REL_BULK=$((BASE + 50)); P_REL_WEB=$((BASE + 51)); P_BAREG=$((BASE + 52)); P_BAREE=$((BASE + 53))
# The baseline build's control plane and agent (BASELINE_BIN only).
P_BCTL_ADMIN=$((BASE + 60)); P_BCTL_SYNC=$((BASE + 61))
P_BSRV_MESH=$((BASE + 62)); P_BSRV_DNS=$((BASE + 63)); P_BSRV_ADMIN=$((BASE + 64)); P_BSRV_PPROF=$((BASE + 65))
# The observability rows' control plane, agents and OTLP sink (OBS=1 only).
P_OCTL_ADMIN=$((BASE + 70)); P_OCTL_SYNC=$((BASE + 71)); P_OTLP=$((BASE + 72))
P_OT100_MESH=$((BASE + 73)); P_OT100_DNS=$((BASE + 74)); P_OT100_ADMIN=$((BASE + 75))
P_OT1_MESH=$((BASE + 76)); P_OT1_DNS=$((BASE + 77)); P_OT1_ADMIN=$((BASE + 78))
P_OLOG_MESH=$((BASE + 79)); P_OLOG_DNS=$((BASE + 80)); P_OLOG_ADMIN=$((BASE + 81))
# The fast path row's control plane and agent (FASTPATH=1 only).
P_FCTL_ADMIN=$((BASE + 83)); P_FCTL_SYNC=$((BASE + 84))
P_FP_MESH=$((BASE + 85)); P_FP_DNS=$((BASE + 86)); P_FP_ADMIN=$((BASE + 87))
# Service ports (on the agents' VIPs).
S_BULK=15201; S_WEB=18080; S_HOLD=19000; S_GRPC=18079

metric() { curl -fsS --max-time 3 "http://127.0.0.1:$1/metrics" 2>/dev/null | awk -v m="$2" 'index($0, m) == 1 {s += $NF} END {print s + 0}'; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
mb() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }

bench_init bench

# ---------------------------------------------------------------- tools
need_tools go iperf3 haproxy curl
find_fortio
if ! command -v nginx >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing nginx (apt-get; only its binary is used, with a config in the temp dir)"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends nginx; } >"$TMP/apt.log" 2>&1 ||
      log "cannot install nginx: $(tail -n 2 "$TMP/apt.log")"
  fi
fi
NGINX=$(command -v nginx 2>/dev/null || true)
[ -z "$NGINX" ] && [ -x /usr/sbin/nginx ] && NGINX=/usr/sbin/nginx
[ -n "$NGINX" ] || log "nginx not found and not installable: its rows will read fail"
WRK=$(command -v wrk 2>/dev/null || true)
if [ "$ONLY_L7" != 1 ] && ! command -v h2load >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing h2load (apt-get nghttp2-client)"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get install -y -qq --no-install-recommends nghttp2-client ||
      { apt-get update -qq && apt-get install -y -qq --no-install-recommends nghttp2-client; }; } >"$TMP/apt-h2load.log" 2>&1 ||
      log "cannot install h2load: $(tail -n 2 "$TMP/apt-h2load.log")"
  fi
fi
H2LOAD=$(command -v h2load 2>/dev/null || true)
[ -n "$H2LOAD" ] || [ "$ONLY_L7" = 1 ] || log "h2load not found and not installable: its rows will read fail"
# The baseline build: a full fogmesh binary (control and agent subcommands).
# Its name in the report: BASELINE_REV through git describe, else what the
# binary says of itself.
BASELINE_NAME=
if [ -n "$BASELINE_BIN" ]; then
  [ -f "$BASELINE_BIN" ] && [ -x "$BASELINE_BIN" ] || die "BASELINE_BIN=$BASELINE_BIN is not an executable file"
  BASELINE_BIN=$(cd "$(dirname "$BASELINE_BIN")" && pwd)/$(basename "$BASELINE_BIN")
  for sub in control agent; do
    help=$("$BASELINE_BIN" "$sub" -h 2>&1 || true)
    grep -q -- '-insecure' <<<"$help" ||
      die "BASELINE_BIN=$BASELINE_BIN has no '$sub' subcommand with -insecure (it must be a full fogmesh binary)"
  done
  if [ -n "${BASELINE_REV:-}" ]; then
    BASELINE_NAME=$(git describe --always --tags "$BASELINE_REV" 2>/dev/null) ||
      die "BASELINE_REV=$BASELINE_REV is not a commit of this repository"
  else
    BASELINE_NAME=$("$BASELINE_BIN" version 2>/dev/null | head -n 1)
    [ -n "$BASELINE_NAME" ] || BASELINE_NAME=$BASELINE_BIN
  fi
fi

ports_free BENCH_BASE_PORT "$P_CTL_ADMIN" "$P_CTL_SYNC" "$P_SRV_MESH" "$P_SRV_DNS" "$P_SRV_ADMIN" "$P_CLI_MESH" \
  "$P_CLI_DNS" "$P_CLI_ADMIN" "$P_IPERF" "$P_HTTP" "$P_SINK" "$P_GRPC" "$P_HAP_BULK" "$P_HAP_WEB" "$P_NGINX" "$P_HAP_WEBL7" \
  "$P_REL_BULK" "$P_REL_WEB"
[ "$CAPTURE" != 1 ] || ports_free BENCH_BASE_PORT "$P_SRV_CAP"
[ -z "$BASELINE_BIN" ] || ports_free BENCH_BASE_PORT "$P_BCTL_ADMIN" "$P_BCTL_SYNC" "$P_BSRV_MESH" "$P_BSRV_DNS" "$P_BSRV_ADMIN"
[ "$FASTPATH" != 1 ] || ports_free BENCH_BASE_PORT "$P_FCTL_ADMIN" "$P_FCTL_SYNC" "$P_FP_MESH" "$P_FP_DNS" "$P_FP_ADMIN"

# ---------------------------------------------------------------- build
log "building (CGO_ENABLED=0 -trimpath -ldflags '-s -w') into $TMP/bin"
mkdir -p "$BIN"
[ "$PPROF" != 1 ] || export GOFLAGS="${GOFLAGS:+$GOFLAGS }-tags=fogmesh_pprof"
build amd64 "$BIN/fogmesh" ./cmd/fogmesh
build amd64 "$BIN/fogmesh-agent" ./cmd/fogmesh-agent
SIZE_AMD64_AGENT=$(stat -c %s "$BIN/fogmesh-agent")
SIZE_AMD64_FULL=$(stat -c %s "$BIN/fogmesh")
HOSTARCH=$(go env GOARCH)
if [ "$HOSTARCH" != amd64 ]; then
  # Run the host build; size figures above are still linux/amd64.
  build_host "$BIN/fogmesh" ./cmd/fogmesh
  build_host "$BIN/fogmesh-agent" ./cmd/fogmesh-agent
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
build_helpers splicerelay holdconns benchjson h1bare
[ "$OBS" != 1 ] || build_helpers otlpsink

# ---------------------------------------------------------------- machine
machine_info
HAPROXY_VERSION=$(haproxy -v 2>/dev/null | awk 'NR==1 {print $3}')
NGINX_VERSION=$([ -n "$NGINX" ] && "$NGINX" -v 2>&1 | awk -F/ 'NR==1 {print $2}' || echo none)
H2LOAD_VERSION=$([ -n "$H2LOAD" ] && "$H2LOAD" --version 2>/dev/null | awk 'NR==1 {print $2}' || echo none)
WRK_VERSION=$([ -n "$WRK" ] && { "$WRK" -v 2>&1 || true; } | awk 'NR==1 {print $2}' || echo none)

# ---------------------------------------------------------------- backends and proxies
log "starting backends, HAProxy, splice relay, control plane and two agents"
start_backends "127.0.0.1:$P_GRPC"
start sink "${PIN_LOAD[@]}" "$BIN/holdconns" -serve "127.0.0.1:$P_SINK"

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
# (h7): HAProxy as an HTTP/1.1 reverse proxy (its HTTP mode, keep-alive both
# sides), beside nginx.
listen webl7
    mode http
    http-reuse always
    bind 127.0.0.1:$P_HAP_WEBL7
    server s1 127.0.0.1:$P_HTTP
EOF
haproxy -c -q -f "$TMP/haproxy.cfg" || die "haproxy rejects its config"
start haproxy "${PIN_PROXY[@]}" "$(command -v haproxy)" -db -f "$TMP/haproxy.cfg"
start relay "${PIN_PROXY[@]}" "$BIN/splicerelay" "127.0.0.1:$P_REL_BULK=127.0.0.1:$P_IPERF" "127.0.0.1:$P_REL_WEB=127.0.0.1:$P_HTTP"
# The smallest HTTP/1.1 keep-alive proxies in Go (bench/h1bare), as
# ceilings for the agent's HTTP/1.1 path: a goroutine per connection, and
# one epoll loop (as nginx's one worker).
start bareg "${PIN_PROXY[@]}" "$BIN/h1bare" -model go "127.0.0.1:$P_BAREG=127.0.0.1:$P_HTTP"
start baree "${PIN_PROXY[@]}" "$BIN/h1bare" -model epoll -loops 1 "127.0.0.1:$P_BAREE=127.0.0.1:$P_HTTP"

# nginx as an HTTP/1.1 reverse proxy with an upstream keepalive pool (one
# worker; lib.sh start_nginx), keep-alive not capped on either side.
if [ -n "$NGINX" ]; then
  start_nginx "$NGINX" "
    upstream backend {
        server 127.0.0.1:$P_HTTP;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$P_NGINX;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }"
fi

# Plaintext on purpose (-insecure on the control plane and both agents): these
# rows compare the proxy paths with HAProxy, nginx and the splice relay, none
# of which encrypts; control and agents are secure by default, and the mTLS
# mesh is measured by bench/security.sh (row fm).
start_control ctl "$TMP/ctl" "$P_CTL_ADMIN" "$P_CTL_SYNC" -insecure
wait_port 127.0.0.1 "$P_CTL_ADMIN" ctl
services_yaml "bulk:tcp:$S_BULK" "web:http:$S_WEB" "webl7:http:$S_WEB:http" "webh2:http:$S_WEB:http2" \
  "webgrpc:grpc:$S_GRPC:grpc" "hold:tcp:$S_HOLD" >"$TMP/services.yaml"
if [ "$CAPTURE" = 1 ]; then
  printf -- '---\napiVersion: fogmesh.io/v1alpha1\nkind: Service\nmetadata: {name: webcap, namespace: %s}\nspec: {ports: [{name: http, port: %s}], clusterIP: "%s"}\n' \
    "$MESH_NS" "$S_WEB" "$CAP_CLUSTER_IP" >>"$TMP/services.yaml"
fi
"$BIN/fogmesh" apply -server "http://127.0.0.1:$P_CTL_ADMIN" -f "$TMP/services.yaml" >&2

CAP_WL=() SRV_CAPTURE=()
[ "$CAPTURE" != 1 ] || { CAP_WL=("webcap:http:$P_HTTP"); SRV_CAPTURE=(-capture required -capture-addr "127.0.0.1:$P_SRV_CAP"); }
# Health checks are off (check: none, see agent_config) so they do not touch
# iperf3 (which treats every connection as a test) or add load; the script
# checks the paths.
agent_config srv "$P_CTL_SYNC" "$P_SRV_MESH" "$P_SRV_DNS" "$P_SRV_ADMIN" "$SRV_VIP_RANGE" "bulk:tcp:$P_IPERF" \
  "web:http:$P_HTTP" "webl7:http:$P_HTTP" "webh2:http:$P_HTTP" "webgrpc:grpc:$P_GRPC" "hold:tcp:$P_SINK" \
  "${CAP_WL[@]}" >"$TMP/srv.yaml"
agent_config cli "$P_CTL_SYNC" "$P_CLI_MESH" "$P_CLI_DNS" "$P_CLI_ADMIN" "$CLI_VIP_RANGE" >"$TMP/cli.yaml"
PPENV_SRV=() PPENV_BSRV=()
[ "$PPROF" != 1 ] || { PPENV_SRV=("FOGMESH_PPROF_ADDR=127.0.0.1:$P_SRV_PPROF"); PPENV_BSRV=("FOGMESH_PPROF_ADDR=127.0.0.1:$P_BSRV_PPROF"); }
start srv "${PIN_PROXY[@]}" env "${PPENV_SRV[@]}" "$BIN/fogmesh-agent" -insecure -config "$TMP/srv.yaml" "${SRV_CAPTURE[@]}"
start cli "${PIN_PROXY[@]}" "$BIN/fogmesh-agent" -insecure -config "$TMP/cli.yaml"

# The baseline build (BASELINE_BIN): its own control plane and one agent,
# plaintext like the rows above, with only the webl7 service and the srv
# agent's webl7 workload (the same fortio backend), so (b7-base) is the (b7)
# path of the older build.
if [ -n "$BASELINE_BIN" ]; then
  log "starting the baseline build's control plane and agent ($BASELINE_NAME)"
  start ctlbase "${PIN_PROXY[@]}" "$BASELINE_BIN" control -state-dir "$TMP/ctlbase" -admin-addr "127.0.0.1:$P_BCTL_ADMIN" \
    -sync-addr "127.0.0.1:$P_BCTL_SYNC" -insecure
  wait_port 127.0.0.1 "$P_BCTL_ADMIN" ctlbase
  services_yaml "webl7:http:$S_WEB:http" "web:http:$S_WEB" >"$TMP/services-base.yaml"
  "$BASELINE_BIN" apply -server "http://127.0.0.1:$P_BCTL_ADMIN" -f "$TMP/services-base.yaml" >&2
  agent_config srvbase "$P_BCTL_SYNC" "$P_BSRV_MESH" "$P_BSRV_DNS" "$P_BSRV_ADMIN" "$BASE_VIP_RANGE" \
    "webl7:http:$P_HTTP" "web:http:$P_HTTP" >"$TMP/srvbase.yaml"
  start srvbase "${PIN_PROXY[@]}" env "${PPENV_BSRV[@]}" "$BASELINE_BIN" agent -insecure -config "$TMP/srvbase.yaml"
fi

# OBS=1: the observability rows' agents, one per setting, on a control plane
# of their own (so the other rows' agents see none of their endpoints).
if [ "$OBS" = 1 ]; then
  log "starting the observability rows' control plane, OTLP sink and three agents"
  start otlpsink "${PIN_LOAD[@]}" "$BIN/otlpsink" -addr "127.0.0.1:$P_OTLP"
  start_control ctlobs "$TMP/ctlobs" "$P_OCTL_ADMIN" "$P_OCTL_SYNC" -insecure
  wait_port 127.0.0.1 "$P_OCTL_ADMIN" ctlobs
  services_yaml "webl7:http:$S_WEB:http" >"$TMP/services-obs.yaml"
  "$BIN/fogmesh" apply -server "http://127.0.0.1:$P_OCTL_ADMIN" -f "$TMP/services-obs.yaml" >&2
  agent_config ot100 "$P_OCTL_SYNC" "$P_OT100_MESH" "$P_OT100_DNS" "$P_OT100_ADMIN" 127.234.0.0/16 "webl7:http:$P_HTTP" >"$TMP/ot100.yaml"
  echo "tracing: {endpoint: \"http://127.0.0.1:$P_OTLP\", sampleRatio: 1}" >>"$TMP/ot100.yaml"
  agent_config ot1 "$P_OCTL_SYNC" "$P_OT1_MESH" "$P_OT1_DNS" "$P_OT1_ADMIN" 127.235.0.0/16 "webl7:http:$P_HTTP" >"$TMP/ot1.yaml"
  echo "tracing: {endpoint: \"http://127.0.0.1:$P_OTLP\", sampleRatio: 0.01}" >>"$TMP/ot1.yaml"
  agent_config olog "$P_OCTL_SYNC" "$P_OLOG_MESH" "$P_OLOG_DNS" "$P_OLOG_ADMIN" 127.236.0.0/16 "webl7:http:$P_HTTP" >"$TMP/olog.yaml"
  echo "accessLog: {path: \"$TMP/olog-access.log\"}" >>"$TMP/olog.yaml"
  # One endpoint name per node: the control plane refuses a second node's
  # endpoint of the same name.
  for n in ot100 ot1 olog; do sed -i "s/name: webl7-srv,/name: webl7-$n,/" "$TMP/$n.yaml"; done
  start ot100 "${PIN_PROXY[@]}" "$BIN/fogmesh-agent" -insecure -config "$TMP/ot100.yaml"
  start ot1 "${PIN_PROXY[@]}" "$BIN/fogmesh-agent" -insecure -config "$TMP/ot1.yaml"
  start olog "${PIN_PROXY[@]}" "$BIN/fogmesh-agent" -insecure -config "$TMP/olog.yaml"
  for p in "$P_OT100_ADMIN" "$P_OT1_ADMIN" "$P_OLOG_ADMIN"; do wait_port 127.0.0.1 "$p" obs-agent; done
fi

# FASTPATH=1: one agent with the kernel fast path, on a control plane of its
# own (so the other rows' agents see none of its endpoints).
if [ "$FASTPATH" = 1 ]; then
  log "starting the fast path row's control plane and agent"
  start_control ctlfp "$TMP/ctlfp" "$P_FCTL_ADMIN" "$P_FCTL_SYNC" -insecure
  wait_port 127.0.0.1 "$P_FCTL_ADMIN" ctlfp
  services_yaml "bulk:tcp:$S_BULK" "web:http:$S_WEB" >"$TMP/services-fp.yaml"
  "$BIN/fogmesh" apply -server "http://127.0.0.1:$P_FCTL_ADMIN" -f "$TMP/services-fp.yaml" >&2
  agent_config fp "$P_FCTL_SYNC" "$P_FP_MESH" "$P_FP_DNS" "$P_FP_ADMIN" 127.238.0.0/16 \
    "bulk:tcp:$P_IPERF" "web:http:$P_HTTP" >"$TMP/fp.yaml"
  echo "fastPath: {mode: required}" >>"$TMP/fp.yaml"
  start fp "${PIN_PROXY[@]}" "$BIN/fogmesh-agent" -insecure -config "$TMP/fp.yaml"
  wait_port 127.0.0.1 "$P_FP_ADMIN" fp
fi

wait_port 127.0.0.1 "$P_IPERF" iperf
wait_port 127.0.0.1 "$P_HTTP" httpd
wait_port 127.0.0.1 "$P_GRPC" httpd
[ -n "$NGINX" ] && wait_port 127.0.0.1 "$P_NGINX" nginx
wait_port 127.0.0.1 "$P_SINK" sink
wait_port 127.0.0.1 "$P_HAP_BULK" haproxy
wait_port 127.0.0.1 "$P_REL_BULK" relay
wait_port 127.0.0.1 "$P_BAREG" bareg
wait_port 127.0.0.1 "$P_BAREE" baree
wait_port 127.0.0.1 "$P_SRV_ADMIN" srv
wait_port 127.0.0.1 "$P_CLI_ADMIN" cli
[ -z "$BASELINE_BIN" ] || wait_port 127.0.0.1 "$P_BSRV_ADMIN" srvbase

SRV_VIP_BULK= SRV_VIP_WEB= SRV_VIP_WEBL7= SRV_VIP_HOLD= CLI_VIP_BULK= CLI_VIP_WEB= CLI_VIP_WEBL7= CLI_VIP_HOLD=
SRV_VIP_WEBH2= SRV_VIP_GRPC= BASE_VIP_WEBL7= BASE_VIP_WEB= OT100_VIP= OT1_VIP= OLOG_VIP= FP_VIP_BULK= FP_VIP_WEB=
all_vips() {
  { [ "$FASTPATH" != 1 ] || { [ -n "$FP_VIP_BULK" ] && [ -n "$FP_VIP_WEB" ]; }; } &&
  { [ "$OBS" != 1 ] || { [ -n "$OT100_VIP" ] && [ -n "$OT1_VIP" ] && [ -n "$OLOG_VIP" ]; }; } &&
  [ -n "$SRV_VIP_BULK" ] && [ -n "$SRV_VIP_WEB" ] && [ -n "$SRV_VIP_WEBL7" ] && [ -n "$SRV_VIP_HOLD" ] &&
    [ -n "$SRV_VIP_WEBH2" ] && [ -n "$SRV_VIP_GRPC" ] &&
    [ -n "$CLI_VIP_BULK" ] && [ -n "$CLI_VIP_WEB" ] && [ -n "$CLI_VIP_WEBL7" ] && [ -n "$CLI_VIP_HOLD" ] &&
    { [ -z "$BASELINE_BIN" ] || { [ -n "$BASE_VIP_WEBL7" ] && [ -n "$BASE_VIP_WEB" ]; }; }
}
for i in $(seq 1 150); do
  SRV_VIP_BULK=$(vip "$P_SRV_ADMIN" bulk node); SRV_VIP_WEB=$(vip "$P_SRV_ADMIN" web node)
  SRV_VIP_WEBL7=$(vip "$P_SRV_ADMIN" webl7 node); SRV_VIP_HOLD=$(vip "$P_SRV_ADMIN" hold node)
  SRV_VIP_WEBH2=$(vip "$P_SRV_ADMIN" webh2 node); SRV_VIP_GRPC=$(vip "$P_SRV_ADMIN" webgrpc node)
  CLI_VIP_BULK=$(vip "$P_CLI_ADMIN" bulk site); CLI_VIP_WEB=$(vip "$P_CLI_ADMIN" web site)
  CLI_VIP_WEBL7=$(vip "$P_CLI_ADMIN" webl7 site); CLI_VIP_HOLD=$(vip "$P_CLI_ADMIN" hold site)
  # The baseline agent, asked with its own build's CLI.
  [ -z "$BASELINE_BIN" ] || BASE_VIP_WEBL7=$(vip "$P_BSRV_ADMIN" webl7 node "$BASELINE_BIN")
  [ -z "$BASELINE_BIN" ] || BASE_VIP_WEB=$(vip "$P_BSRV_ADMIN" web node "$BASELINE_BIN")
  if [ "$OBS" = 1 ]; then
    OT100_VIP=$(vip "$P_OT100_ADMIN" webl7 node); OT1_VIP=$(vip "$P_OT1_ADMIN" webl7 node); OLOG_VIP=$(vip "$P_OLOG_ADMIN" webl7 node)
  fi
  [ "$FASTPATH" != 1 ] || { FP_VIP_BULK=$(vip "$P_FP_ADMIN" bulk node); FP_VIP_WEB=$(vip "$P_FP_ADMIN" web node); }
  all_vips && break
  sleep 0.1
done
all_vips || {
  dump_routes "$P_SRV_ADMIN" "$P_CLI_ADMIN"
  [ -z "$BASELINE_BIN" ] || "$BASELINE_BIN" routes -agent "http://127.0.0.1:$P_BSRV_ADMIN" >&2 || true
  die "agents did not route all services within 15 s"
}
log "srv agent VIPs: bulk $SRV_VIP_BULK web $SRV_VIP_WEB webl7 $SRV_VIP_WEBL7 webh2 $SRV_VIP_WEBH2 webgrpc $SRV_VIP_GRPC hold $SRV_VIP_HOLD; cli agent: bulk $CLI_VIP_BULK web $CLI_VIP_WEB webl7 $CLI_VIP_WEBL7 hold $CLI_VIP_HOLD${BASELINE_BIN:+; baseline agent: webl7 $BASE_VIP_WEBL7 web $BASE_VIP_WEB}"

# Engines: name, label, bulk address, web URL. LATENGINES adds the agents'
# L7 path (the same backend behind a service port declared protocol: http)
# and nginx (HTTP reverse proxy): the L4 targets use the L4 rows (b)-(e), the
# L7 targets the rows (b7), (c7), (n) and (h7). L7ENGINES are measured for the
# maximum request rate too; XENGINES (h2c, gRPC) for both, XROUNDS rounds.
ENGINES=(direct agent1 agent2 haproxy relay)
LATENGINES=(direct agent1 agent2 haproxy relay agent1l7 agent2l7 nginx haproxy7)
L7ENGINES=(direct agent1l7 agent2l7 nginx haproxy7)
XENGINES=(h2direct h2agent1 grpcdirect grpcagent1)
H2LENGINES=(h2ldirect h2lagent1) # h2load: maximum rate only
if [ "$ONLY_L7" = 1 ]; then XENGINES=(); H2LENGINES=(); fi
# BASELINE_BIN: the baseline build's (b7) path, in both lists.
if [ -n "$BASELINE_BIN" ]; then
  LATENGINES=(direct agent1 agent2 haproxy relay agent1l7 agent1l7base agent2l7 nginx haproxy7)
  L7ENGINES=(direct agent1l7 agent1l7base agent2l7 nginx haproxy7)
fi
# The bare Go HTTP/1.1 proxies, in both lists.
LATENGINES+=(bareg baree); L7ENGINES+=(bareg baree)
# OBS=1: the observability rows next to (b7).
if [ "$OBS" = 1 ]; then
  LATENGINES+=(agent1l7t100 agent1l7t1 agent1l7log); L7ENGINES+=(agent1l7t100 agent1l7t1 agent1l7log)
fi
# ONLY_L4LAT: the L4 rows of section 2 only, with the baseline's tcp port.
if [ "$ONLY_L4LAT" = 1 ]; then
  LATENGINES=(direct agent1 haproxy relay); L7ENGINES=()
  [ -z "$BASELINE_BIN" ] || LATENGINES=(direct agent1 agent1base haproxy relay)
fi
# FASTPATH: the (b) path with the kernel fast path, after (b), in both lists.
if [ "$FASTPATH" = 1 ]; then
  for i in "${!LATENGINES[@]}"; do
    [ "${LATENGINES[$i]}" = agent1 ] && LATENGINES=("${LATENGINES[@]:0:i+1}" agent1bpf "${LATENGINES[@]:i+1}") && break
  done
  ENGINES=(direct agent1 agent1bpf agent2 haproxy relay)
fi
# CAPTURE: the (b) path through the captured ClusterIP, after (b).
if [ "$CAPTURE" = 1 ]; then
  for i in "${!LATENGINES[@]}"; do
    [ "${LATENGINES[$i]}" = agent1 ] && LATENGINES=("${LATENGINES[@]:0:i+1}" agent1cap "${LATENGINES[@]:i+1}") && break
  done
fi
LABEL[direct]="(a) direct";                 BULK[direct]="127.0.0.1 $P_IPERF";          WEB[direct]="http://127.0.0.1:$P_HTTP/"
LABEL[agent1]="(b) one agent (node tier)";  BULK[agent1]="$SRV_VIP_BULK $S_BULK";       WEB[agent1]="http://$SRV_VIP_WEB:$S_WEB/"
LABEL[agent2]="(c) two agents (mesh port)"; BULK[agent2]="$CLI_VIP_BULK $S_BULK";       WEB[agent2]="http://$CLI_VIP_WEB:$S_WEB/"
LABEL[haproxy]="(d) HAProxy $HAPROXY_VERSION (tcp, splice-auto, 1 thread)"; BULK[haproxy]="127.0.0.1 $P_HAP_BULK"; WEB[haproxy]="http://127.0.0.1:$P_HAP_WEB/"
LABEL[relay]="(e) minimal Go splice relay"; BULK[relay]="127.0.0.1 $P_REL_BULK";       WEB[relay]="http://127.0.0.1:$P_REL_WEB/"
LABEL[agent1bpf]="(b-bpf) one agent (node tier), kernel fast path (BPF sockmap)"; BULK[agent1bpf]="$FP_VIP_BULK $S_BULK"; WEB[agent1bpf]="http://$FP_VIP_WEB:$S_WEB/"
LABEL[agent1cap]="(b-cap) one agent (node tier) through its ClusterIP, transparent capture (nftables)"; WEB[agent1cap]="http://$CAP_CLUSTER_IP:$S_WEB/"
LABEL[agent1l7]="(b7) one agent, port declared http (L7)";  WEB[agent1l7]="http://$SRV_VIP_WEBL7:$S_WEB/"
LABEL[agent1base]="(b-base) one agent (node tier), baseline build $BASELINE_NAME"; WEB[agent1base]="http://$BASE_VIP_WEB:$S_WEB/"
LABEL[agent1l7base]="(b7-base) one agent, L7, baseline build $BASELINE_NAME"; WEB[agent1l7base]="http://$BASE_VIP_WEBL7:$S_WEB/"
LABEL[agent1l7t100]="(b7-t100) one agent, L7, traces sampled 100 %"; WEB[agent1l7t100]="http://$OT100_VIP:$S_WEB/"
LABEL[agent1l7t1]="(b7-t1) one agent, L7, traces sampled 1 %"; WEB[agent1l7t1]="http://$OT1_VIP:$S_WEB/"
LABEL[agent1l7log]="(b7-log) one agent, L7, access log of every request"; WEB[agent1l7log]="http://$OLOG_VIP:$S_WEB/"
LABEL[agent2l7]="(c7) two agents, port declared http (L7 on the cli agent, mesh to srv)"; WEB[agent2l7]="http://$CLI_VIP_WEBL7:$S_WEB/"
LABEL[nginx]="(n) nginx $NGINX_VERSION (HTTP reverse proxy, upstream keepalive 64, 1 worker)"; WEB[nginx]="http://127.0.0.1:$P_NGINX/"
LABEL[haproxy7]="(h7) HAProxy $HAPROXY_VERSION (HTTP mode, keep-alive both sides, 1 thread)"; WEB[haproxy7]="http://127.0.0.1:$P_HAP_WEBL7/"
LABEL[bareg]="(g7) minimal Go HTTP/1.1 proxy, a goroutine per connection (h1bare -model go)"; WEB[bareg]="http://127.0.0.1:$P_BAREG/"
LABEL[baree]="(e7) minimal Go HTTP/1.1 proxy, one epoll loop (h1bare -model epoll)"; WEB[baree]="http://127.0.0.1:$P_BAREE/"
LABEL[h2direct]="(a2) h2c direct";          WEB[h2direct]="http://127.0.0.1:$P_HTTP/"
LABEL[h2agent1]="(b2) h2c, one agent, port declared http2"; WEB[h2agent1]="http://$SRV_VIP_WEBH2:$S_WEB/"
LABEL[grpcdirect]="(ag) gRPC ping direct";  WEB[grpcdirect]="127.0.0.1:$P_GRPC"
LABEL[grpcagent1]="(bg) gRPC ping, one agent, port declared grpc"; WEB[grpcagent1]="$SRV_VIP_GRPC:$S_GRPC"
LABEL[h2ldirect]="(a2l) h2c direct, h2load";  WEB[h2ldirect]="${WEB[h2direct]}"
LABEL[h2lagent1]="(b2l) h2c, one agent, port declared http2, h2load"; WEB[h2lagent1]="${WEB[h2agent1]}"
KIND[h2direct]=h2; KIND[h2agent1]=h2; KIND[grpcdirect]=grpc; KIND[grpcagent1]=grpc
KIND[h2ldirect]=h2load; KIND[h2lagent1]=h2load
CPUPIDS[direct]=""; CPUPIDS[agent1]="$PID_srv"; CPUPIDS[agent1cap]="$PID_srv"; CPUPIDS[agent2]="$PID_cli $PID_srv"
CPUPIDS[bareg]="$PID_bareg"; CPUPIDS[baree]="$PID_baree"
CPUPIDS[haproxy]="$PID_haproxy"; CPUPIDS[haproxy7]="$PID_haproxy"; CPUPIDS[relay]="$PID_relay"; CPUPIDS[agent1bpf]="${PID_fp:-}"
CPUPIDS[agent1l7]="$PID_srv"; CPUPIDS[agent2l7]="$PID_cli $PID_srv"
CPUPIDS[agent1l7t100]="${PID_ot100:-}"; CPUPIDS[agent1l7t1]="${PID_ot1:-}"; CPUPIDS[agent1l7log]="${PID_olog:-}"
CPUPIDS[agent1l7base]="${PID_srvbase:-}"; CPUPIDS[agent1base]="${PID_srvbase:-}"
CPUPIDS[h2ldirect]=""; CPUPIDS[h2lagent1]="$PID_srv"
CPUPIDS[h2direct]=""; CPUPIDS[h2agent1]="$PID_srv"; CPUPIDS[grpcdirect]=""; CPUPIDS[grpcagent1]="$PID_srv"
# nginx: the master and its worker(s) (the worker does the proxying).
CPUPIDS[nginx]=""
if [ -n "$NGINX" ]; then
  CPUPIDS[nginx]=$(nginx_pids)
fi

# The captured ClusterIP answers once the srv agent has the webcap service.
if [ "$CAPTURE" = 1 ]; then
  for i in $(seq 1 100); do curl -fsS -o /dev/null --max-time 2 "${WEB[agent1cap]}" && break; sleep 0.1; done
fi
# Every path answers before anything is measured; an L4 path that does not
# is fatal, an L7 one (or nginx) is recorded as a failure and measured anyway.
FAILED=() WARNED=()
for e in "${LATENGINES[@]}"; do
  if ! curl -fsS -o /dev/null --max-time 5 "${WEB[$e]}"; then
    case $e in
      *l7|*l7base|nginx|haproxy7|bare?) log "HTTP path $e (${WEB[$e]}) does not answer"; failed "$e" "HTTP path $e does not answer" ;;
      *) die "HTTP path $e (${WEB[$e]}) does not answer" ;;
    esac
  fi
done
for e in "${XENGINES[@]}"; do
  [ "${KIND[$e]}" = h2 ] || continue
  curl -fsS -o /dev/null --max-time 5 --http2-prior-knowledge "${WEB[$e]}" ||
    { log "h2c path $e (${WEB[$e]}) does not answer"; failed "$e" "h2c path $e does not answer"; }
done
for e in "${XENGINES[@]}"; do
  [ "${KIND[$e]}" = grpc ] || continue
  timeout 10 "$FORTIO" grpcping -n 1 -loglevel Error "${WEB[$e]}" >"$TMP/grpcping-$e.log" 2>&1 ||
    { log "gRPC path $e (${WEB[$e]}) does not answer: $(tail -n 2 "$TMP/grpcping-$e.log")"; failed "$e" "gRPC path $e does not answer"; }
done

# ---------------------------------------------------------------- RSS idle (before load)
log "idle 5 s"
sleep 5
RSS_SRV_IDLE0=$(rss_kb "$PID_srv"); RSS_CLI_IDLE0=$(rss_kb "$PID_cli")

# ---------------------------------------------------------------- 1. throughput
declare -A TPRSS
[ "$ONLY_L7" = 1 ] || for r in $(seq 1 "$ROUNDS"); do
  for e in $(order "$r" "${ENGINES[@]}"); do
    iperf_run "$e" "$r"
    if [ "${TP[$e,$r]}" = fail ]; then TPRSS[$e,$r]=fail
    else TPRSS[$e,$r]="$(mb "$(rss_kb "$PID_srv")")/$(mb "$(rss_kb "$PID_cli")")"; fi
    sleep 0.5
  done
done

RSS_SRV_TP=$(rss_kb "$PID_srv"); RSS_CLI_TP=$(rss_kb "$PID_cli")

# ---------------------------------------------------------------- 2. latency
# PPROF=1: a CPU profile of the agent over each of its L4 fortio runs
# (the profile ends a second before the run does).
PPROF_DIR=${PPROF_DIR:-$ROOT/bench/out/pprof-$(date +%Y%m%d-%H%M%S)}
[ "$PPROF" != 1 ] || mkdir -p "$PPROF_DIR"
declare -A PPORT=([agent1]=$P_SRV_PPROF [agent1base]=$P_BSRV_PPROF)
for r in $(seq 1 "$ROUNDS"); do
  for e in $(order "$r" "${LATENGINES[@]}"); do
    ppid=
    if [ "$PPROF" = 1 ] && [ -n "${PPORT[$e]:-}" ] && port_open 127.0.0.1 "${PPORT[$e]}"; then
      curl -fsS --max-time $((LAT_SECONDS + 10)) -o "$PPROF_DIR/$e-r$r.pprof" \
        "http://127.0.0.1:${PPORT[$e]}/debug/pprof/profile?seconds=$((LAT_SECONDS > 1 ? LAT_SECONDS - 1 : 1))" &
      ppid=$!
    fi
    spid=
    if [ "$PERFSTAT" = 1 ] && [ -n "${CPUPIDS[$e]:-}" ]; then
      # shellcheck disable=SC2086 # CPUPIDS is a list of PIDs
      perf stat -x, -e task-clock,context-switches,cpu-migrations -p "$(echo ${CPUPIDS[$e]} | tr ' ' ,)" \
        -o "$TMP/perfstat-$e-$r.csv" -- sleep $((LAT_SECONDS > 1 ? LAT_SECONDS - 1 : 1)) >/dev/null 2>&1 &
      spid=$!
    fi
    fixed_rate "$e" "$r"
    [ -z "$ppid" ] || wait "$ppid" || log "pprof of $e round $r failed"
    if [ -n "$spid" ]; then
      if wait "$spid"; then
        # task-clock (ms) and context switches over the window, per request
        # at the achieved rate.
        read -r "PS_CPU[$e,$r]" "PS_CS[$e,$r]" "PS_MIG[$e,$r]" < <(awk -F, -v q="${AQPS[$e,$r]:-0}" -v s=$((LAT_SECONDS > 1 ? LAT_SECONDS - 1 : 1)) \
          '$3 == "task-clock" {t = $1} $3 == "context-switches" {c = $1} $3 == "cpu-migrations" {m = $1}
           END {n = q * s; if (n > 0 && q != "fail") printf "%.1f %.2f %.3f\n", t * 1000 / n, c / n, m / n; else print "fail fail fail"}' "$TMP/perfstat-$e-$r.csv")
      else
        log "perf stat of $e round $r failed"; PS_CPU[$e,$r]=fail; PS_CS[$e,$r]=fail; PS_MIG[$e,$r]=fail
      fi
    fi
    sleep 0.5
  done
done
[ "$PPROF" != 1 ] || log "CPU profiles in $PPROF_DIR (go tool pprof -top FILE)"
# The fast path agent's own count of what the kernel took (sections 1 and 2).
FP_KCONNS=0 FP_ACONNS=0 FP_KBYTES=0
if [ "$FASTPATH" = 1 ]; then
  FP_KCONNS=$(metric "$P_FP_ADMIN" 'fogmesh_agent_fastpath_connections_total{path="kernel"}')
  FP_ACONNS=$(metric "$P_FP_ADMIN" 'fogmesh_agent_fastpath_connections_total{path="agent"}')
  FP_KBYTES=$(metric "$P_FP_ADMIN" 'fogmesh_agent_fastpath_bytes_total')
  FP_KBYTES=$(printf '%.0f' "$FP_KBYTES")
fi

# ---------------------------------------------------------------- 6. L7 request rate
# max_rate ENGINE ROUND: closed loop, CONNS connections, LAT_SECONDS: wrk for
# HTTP/1.1 when installed, else (and for h2c and gRPC) fortio -qps 0. Also the
# proxy's CPU over the run.
declare -A MAXQ MAXERR MAXCPU MS_SYS MS_CS MS_PF MS_USR MS_KRN
if [ -n "$WRK" ]; then MAXTOOL="wrk $WRK_VERSION -t $WRK_THREADS -c $CONNS -d ${LAT_SECONDS}s"
else MAXTOOL="fortio load -qps 0 -c $CONNS -t ${LAT_SECONDS}s"; fi
max_rate() {
  local e=$1 r=$2 out="$TMP/max-$e-$r" v= c0 c1 k0 k1 t0 t1
  log "max rate round $r: $e (closed loop, $CONNS conns, ${LAT_SECONDS}s)"
  local spid= sw=$((LAT_SECONDS > 1 ? LAT_SECONDS - 1 : 1))
  if [ "$PERFSTAT" = 1 ] && [ -n "${CPUPIDS[$e]:-}" ] && [ "${KIND[$e]:-}" != h2load ]; then
    # shellcheck disable=SC2086 # CPUPIDS is a list of PIDs
    perf stat -x, -e raw_syscalls:sys_enter,context-switches,page-faults -p "$(echo ${CPUPIDS[$e]} | tr ' ' ,)" \
      -o "$TMP/perfmax-$e-$r.csv" -- sleep "$sw" >/dev/null 2>&1 &
    spid=$!
  fi
  c0=$(cpu_ticks ${CPUPIDS[$e]}); k0=$(sys_ticks ${CPUPIDS[$e]}); t0=$(date +%s.%N)
  if [ "${KIND[$e]:-}" = h2load ]; then
    # "finished in 2.01s, 24875.12 req/s, ..."; errors: failed + errored +
    # timeout requests and non-2xx statuses.
    [ -n "$H2LOAD" ] && timeout $((LAT_SECONDS + 60)) "${PIN_LOAD[@]}" "$H2LOAD" -n "$H2LOAD_N" -c "$CONNS" -m "$H2_STREAMS" -t 1 "${WEB[$e]}" >"$out.log" 2>&1 &&
      v=$(awk '/^finished in/ {q = $4} /^requests:/ {b += $10 + $12 + $14} /^status codes:/ {b += $5 + $7 + $9}
               END {if (q == "") exit 1; printf "%.0f %d\n", q, b}' "$out.log")
  elif [ -n "$WRK" ] && [ -z "${KIND[$e]:-}" ]; then
    timeout $((LAT_SECONDS + 20)) "${PIN_LOAD[@]}" "$WRK" -t "$WRK_THREADS" -c "$CONNS" -d "${LAT_SECONDS}s" "${WEB[$e]}" >"$out.log" 2>&1 &&
      v=$(awk '/^Requests\/sec:/ {q = $2} /Non-2xx or 3xx responses:/ {b += $NF}
               /Socket errors:/ {gsub(",", ""); b += $4 + $6 + $8 + $10}
               END {if (q == "") exit 1; printf "%.0f %d\n", q, b}' "$out.log")
  else
    fortio_load "$e" 0 "$out.json" "$out.log" && v=$("$BIN/benchjson" fortio "$out.json" 2>&1) &&
      v=$(awk '{print $4, $5}' <<<"$v")
  fi
  t1=$(date +%s.%N); c1=$(cpu_ticks ${CPUPIDS[$e]}); k1=$(sys_ticks ${CPUPIDS[$e]})
  if [ -n "$v" ]; then
    read -r MAXQ[$e,$r] MAXERR[$e,$r] <<<"$v"
    MAXCPU[$e,$r]=$(cpu_pct "$c0" "$c1" "$t0" "$t1")
    if [ -n "$spid" ]; then
      # The proxy's CPU split into user space and kernel (utime and stime
      # over the whole run), and its system calls and context switches over
      # the first LAT_SECONDS-1 s, per request at the run's rate.
      read -r "MS_USR[$e,$r]" "MS_KRN[$e,$r]" < <(awk -v c=$((c1 - c0)) -v k=$((k1 - k0)) -v hz="$CLK_TCK" \
        -v q="${MAXQ[$e,$r]}" -v a="$t0" -v b="$t1" \
        'BEGIN {n = q * (b - a); if (n > 0) printf "%.1f %.1f\n", (c - k) * 1e6 / hz / n, k * 1e6 / hz / n; else print "fail fail"}')
      if wait "$spid"; then
        read -r "MS_SYS[$e,$r]" "MS_CS[$e,$r]" "MS_PF[$e,$r]" < <(awk -F, -v q="${MAXQ[$e,$r]}" -v s="$sw" \
          '$3 ~ /sys_enter/ {y = $1} $3 == "context-switches" {c = $1} $3 == "page-faults" {f = $1}
           END {n = q * s; if (n > 0) printf "%.2f %.2f %.3f\n", y / n, c / n, f / n; else print "fail fail fail"}' "$TMP/perfmax-$e-$r.csv")
      else
        log "perf stat of $e round $r failed"; MS_SYS[$e,$r]=fail; MS_CS[$e,$r]=fail; MS_PF[$e,$r]=fail
      fi
    fi
    [ "${MAXERR[$e,$r]}" = 0 ] || failed "$e" "max rate $e round $r: ${MAXERR[$e,$r]} errors or non-OK responses"
  else
    log "max rate $e round $r FAILED: $(tail -n 3 "$out.log")"
    MAXQ[$e,$r]=fail; MAXERR[$e,$r]=fail; MAXCPU[$e,$r]=fail
    failed "$e" "max rate $e round $r"
  fi
}
for r in $(seq 1 "$ROUNDS"); do
  for e in $(order "$r" "${L7ENGINES[@]}"); do
    max_rate "$e" "$r"
    sleep 0.5
  done
done
for r in $(seq 1 "$XROUNDS"); do
  for e in $(order "$r" "${XENGINES[@]}"); do
    max_rate "$e" "$r"; sleep 0.5
    fixed_rate "$e" "$r"; sleep 0.5
  done
  for e in $(order "$r" "${H2LENGINES[@]}"); do
    max_rate "$e" "$r"; sleep 0.5
  done
done

# ---------------------------------------------------------------- 3. RSS
# (Not with ONLY_L7=1: up to the Go benchmarks.)
if [ "$ONLY_L7" != 1 ]; then
RSS_SRV_LAT=$(rss_kb "$PID_srv"); RSS_CLI_LAT=$(rss_kb "$PID_cli")
log "idle 5 s after load"
sleep 5
RSS_SRV_IDLE1=$(rss_kb "$PID_srv"); RSS_CLI_IDLE1=$(rss_kb "$PID_cli")

# hold ADDR: opens HOLD_N connections through ADDR, echoes "ok" once all
# are up and the RSS has been read (into HOLD_SRV, HOLD_CLI), then closes them.
hold() {
  local addr=$1 name=$2 i
  HOLD_SRV=fail HOLD_CLI=fail HOLD_UP= HOLD_ACTIVE_SRV= HOLD_ACTIVE_CLI=
  start "$name" "${PIN_LOAD[@]}" "$BIN/holdconns" -n "$HOLD_N" -hold 60s -timeout 30s "$addr"
  local pid; pid=$(pid_of "$name")
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
fi

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

declare -A TPM CPUM L50 L99 L999 Q MQ MCPU NR
for e in "${LATENGINES[@]}"; do NR[$e]=$ROUNDS; done
for e in "${XENGINES[@]}" "${H2LENGINES[@]}"; do NR[$e]=$XROUNDS; done
for e in "${LATENGINES[@]}" "${XENGINES[@]}" "${H2LENGINES[@]}"; do
  n=${NR[$e]}
  TPM[$e]=$(median_of TP "$e" "$n"); CPUM[$e]=$(median_of TPCPU "$e" "$n")
  L50[$e]=$(median_of P50 "$e" "$n"); L99[$e]=$(median_of P99 "$e" "$n"); L999[$e]=$(median_of P999 "$e" "$n")
  Q[$e]=$(median_of AQPS "$e" "$n"); MQ[$e]=$(median_of MAXQ "$e" "$n"); MCPU[$e]=$(median_of MAXCPU "$e" "$n")
done
arm() { [ "$1" = 0 ] && echo "skipped" || mb $(($1 / 1024)); }
add50() { calc "%+.3f" "${L50[$1]}" "${L50[${2:-direct}]}" "a - b"; }
add99() { calc "%+.3f" "${L99[$1]}" "${L99[${2:-direct}]}" "a - b"; }
# The direct row each L7 row compares with, and its number of agent hops.
declare -A REF HOPS
REF[direct]=direct; REF[agent1l7]=direct; REF[agent2l7]=direct; REF[nginx]=direct; REF[haproxy7]=direct
REF[h2direct]=h2direct; REF[h2agent1]=h2direct; REF[grpcdirect]=grpcdirect; REF[grpcagent1]=grpcdirect
HOPS[direct]=0; HOPS[agent1l7]=1; HOPS[agent2l7]=2; HOPS[nginx]=1; HOPS[haproxy7]=1
REF[agent1l7base]=direct; HOPS[agent1l7base]=1
REF[bareg]=direct; HOPS[bareg]=1; REF[baree]=direct; HOPS[baree]=1
for e in agent1l7t100 agent1l7t1 agent1l7log; do REF[$e]=direct; HOPS[$e]=1; done
HOPS[h2direct]=0; HOPS[h2agent1]=1; HOPS[grpcdirect]=0; HOPS[grpcagent1]=1
REF[h2ldirect]=h2ldirect; REF[h2lagent1]=h2ldirect; HOPS[h2ldirect]=0; HOPS[h2lagent1]=1
hop99() { calc "%+.3f" "$(add99 "$1" "${REF[$1]}")" "${HOPS[$1]}" "a / b"; } # added p99 per hop, ms
rounds_added() { # ARRAY ENGINE: per round, ARRAY[ENGINE,r] - ARRAY[direct,r] ("x / y / z")
  local -n ra=$1; local out="" r
  for r in $(seq 1 "$ROUNDS"); do out+="${out:+ / }$(calc "%+.3f" "${ra[$2,$r]:-fail}" "${ra[direct,$r]:-fail}" "a - b")"; done
  echo "$out"
}
us() { case "$1" in *fail*|*n/a*) echo "n/a" ;; *) awk -v a="$1" 'BEGIN {printf "%+.0f µs", a * 1000}' ;; esac; }
ratio() { # A B: A / B, "n/a" if B is 0 or either is missing
  case $(calc "%d" "$1" "$2" "b == 0") in 0) calc "%.3f" "$1" "$2" "a / b" ;; *) echo "n/a" ;; esac
}
# cpureq ENGINE: the proxy's CPU time per request at the maximum rate, µs.
cpureq() { calc "%.1f" "${MCPU[$1]}" "${MQ[$1]}" "a * 10000 / b"; }
# The issue 9 regression check (BASELINE_BIN): the new build's (b7) within 5%
# of the baseline's (b7-base): max req/s at least 95% of it, added p50 and
# p99 at most 5% (of its magnitude) above it.
within5() { # NEW BASE: 1 if NEW <= BASE + 5% of |BASE|, 0 if not, n/a
  calc "%d" "$1" "$2" "a <= b + 0.05 * (b < 0 ? -b : b)"
}
if [ -n "$BASELINE_BIN" ] && [ "$ONLY_L4LAT" != 1 ]; then
  REG_Q=$(calc "%d" "${MQ[agent1l7]}" "${MQ[agent1l7base]}" "a >= 0.95 * b")
  REG_50=$(within5 "$(add50 agent1l7)" "$(add50 agent1l7base)")
  REG_99=$(within5 "$(add99 agent1l7)" "$(add99 agent1l7base)")
  case "$REG_Q$REG_50$REG_99" in 111) REG=1 ;; *n/a*) REG=n/a ;; *) REG=0 ;; esac
fi

report_file results
{
echo "# fogmesh benchmark results ($(date -u '+%Y-%m-%d %H:%M UTC'))"
echo
machine_rows
echo "| load average (1/5/15 min) before the run | $LOAD_START (other jobs on the machine perturb every figure) |"
echo "| peers | HAProxy $HAPROXY_VERSION, nginx $NGINX_VERSION, iperf3 $IPERF_VERSION, fortio $FORTIO_V, wrk $WRK_VERSION, h2load $H2LOAD_VERSION |"
[ -z "$BASELINE_BIN" ] || echo "| baseline build (b7-base) | $BASELINE_NAME (\`$BASELINE_BIN agent\`, its own control plane) |"
echo
if [ "$PIN" = 1 ]; then
  echo "Everything on loopback; PIN=1: load generators and backends on CPU 0, every proxy on CPU 1 (taskset); agents with default GOMAXPROCS/GOGC."
else
  echo "Everything on loopback, no CPU pinning (load generator, backend and proxies share all cores); agents with default GOMAXPROCS/GOGC."
fi
echo "$ROUNDS rounds, engines interleaved (order rotated each round); the figure is the median of the rounds, per-round values follow."
if [ "$ONLY_L4LAT" = 1 ]; then echo "ONLY_L4LAT=1: only the L4 rows of section 2 (and their targets); every other section is skipped."
elif [ "$ONLY_L7" = 1 ]; then echo "ONLY_L7=1: sections 1 (iperf3), 3 (RSS), 4 (binary sizes), 5 (Go benchmarks) and the h2c, gRPC and h2load rows are skipped."; fi
if [ "$ONLY_L7" != 1 ]; then
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
[ "$FASTPATH" != 1 ] || echo "| (b-bpf) one agent, kernel fast path / (a) direct | $(calc "%.2f" "${TPM[agent1bpf]}" "${TPM[direct]}" "a / b") |"
echo "| (c) two agents / (e) splice relay | $(calc "%.2f" "${TPM[agent2]}" "${TPM[relay]}" "a / b") |"
echo "| (c) two agents / (d) HAProxy | $(calc "%.2f" "${TPM[agent2]}" "${TPM[haproxy]}" "a / b") |"
echo "| (c) two agents / (b) one agent | $(calc "%.2f" "${TPM[agent2]}" "${TPM[agent1]}" "a / b") |"
echo "| (d) HAProxy / (e) splice relay | $(calc "%.2f" "${TPM[haproxy]}" "${TPM[relay]}" "a / b") |"
fi
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
# Over every round's requests: the rounds' histograms pooled (benchjson
# fortio-pool), steadier at p99 than the median of the rounds' p99s, which
# a handful of late wake-ups in one round moves by a millisecond.
declare -A PL50 PL99 PL999
for e in "${LATENGINES[@]}"; do
  files=()
  for r in $(seq 1 "$ROUNDS"); do [ "${P50[$e,$r]:-fail}" = fail ] || files+=("$TMP/fortio-$e-$r.json"); done
  PL50[$e]=fail; PL99[$e]=fail; PL999[$e]=fail
  [ ${#files[@]} -eq 0 ] || read -r "PL50[$e]" "PL99[$e]" "PL999[$e]" _ < <("$BIN/benchjson" fortio-pool "${files[@]}" 2>/dev/null || echo fail fail fail)
done
echo "Over all rounds' requests together (their histograms pooled), ms:"
echo
echo "| path | p50 | p99 | p99.9 | added p50 | added p99 |"
echo "|---|---|---|---|---|---|"
for e in "${LATENGINES[@]}"; do
  ad50=$(calc "%+.3f" "${PL50[$e]}" "${PL50[direct]}" "a - b"); ad99=$(calc "%+.3f" "${PL99[$e]}" "${PL99[direct]}" "a - b")
  [ "$e" = direct ] && { ad50="—"; ad99="—"; }
  echo "| ${LABEL[$e]} | ${PL50[$e]} | ${PL99[$e]} | ${PL999[$e]} | $ad50 | $ad99 |"
done
echo
echo "| added latency per hop (ms) | p50 | p99 |"
echo "|---|---|---|"
echo "| HAProxy (1 hop) | $(add50 haproxy) | $(add99 haproxy) |"
echo "| splice relay (1 hop) | $(add50 relay) | $(add99 relay) |"
echo "| one agent (1 hop) | $(add50 agent1) | $(add99 agent1) |"
[ "$FASTPATH" != 1 ] || echo "| one agent, kernel fast path (b-bpf, 1 hop) | $(add50 agent1bpf) | $(add99 agent1bpf) |"
[ "$CAPTURE" != 1 ] || echo "| transparent capture: (b-cap) ClusterIP minus (b) virtual IP | $(calc "%+.3f" "${L50[agent1cap]}" "${L50[agent1]}" "a - b") | $(calc "%+.3f" "${L99[agent1cap]}" "${L99[agent1]}" "a - b") |"
[ -z "$BASELINE_BIN" ] || [ "$ONLY_L4LAT" != 1 ] || echo "| one agent, baseline build (b-base, 1 hop) | $(add50 agent1base) | $(add99 agent1base) |"
echo "| one agent / splice relay (added) | $(ratio "$(add50 agent1)" "$(add50 relay)") | $(ratio "$(add99 agent1)" "$(add99 relay)") |"
echo "| one agent / HAProxy (added) | $(ratio "$(add50 agent1)" "$(add50 haproxy)") | $(ratio "$(add99 agent1)" "$(add99 haproxy)") |"
if [ "$ONLY_L4LAT" = 1 ]; then
[ -z "$BASELINE_BIN" ] || echo "| baseline (b-base) / splice relay (added) | $(ratio "$(add50 agent1base)" "$(add50 relay)") | $(ratio "$(add99 agent1base)" "$(add99 relay)") |"
echo
echo "Added latency per round (engine minus direct of the same round, ms):"
echo
echo "| path | added p50 per round | added p99 per round |"
echo "|---|---|---|"
for e in "${LATENGINES[@]}"; do
  [ "$e" = direct ] && continue
  echo "| ${LABEL[$e]} | $(rounds_added P50 "$e") | $(rounds_added P99 "$e") |"
done
if [ "$PERFSTAT" = 1 ]; then
echo
echo "Proxy CPU, context switches and CPU migrations per request (perf stat over each run, at the achieved rate; per round):"
echo
echo "| path | CPU µs per request | context switches per request | CPU migrations per request |"
echo "|---|---|---|---|"
for e in "${LATENGINES[@]}"; do
  [ "$e" = direct ] && continue
  echo "| ${LABEL[$e]} | $(rounds_of PS_CPU "$e") | $(rounds_of PS_CS "$e") | $(rounds_of PS_MIG "$e") |"
done
fi
else
echo "| two agents, per hop (added / 2) | $(calc "%+.3f" "$(add50 agent2)" 0 "a / 2") | $(calc "%+.3f" "$(add99 agent2)" 0 "a / 2") |"
echo "| one agent minus HAProxy | $(calc "%+.3f" "$(add50 agent1)" "$(add50 haproxy)" "a - b") | $(calc "%+.3f" "$(add99 agent1)" "$(add99 haproxy)" "a - b") |"
echo "| one agent, L7 (port declared http) | $(add50 agent1l7) | $(add99 agent1l7) |"
echo "| two agents, L7, per hop (added / 2) | $(calc "%+.3f" "$(add50 agent2l7)" 0 "a / 2") | $(calc "%+.3f" "$(add99 agent2l7)" 0 "a / 2") |"
if [ -n "$BASELINE_BIN" ]; then
echo "| one agent, L7, baseline build (b7-base) | $(add50 agent1l7base) | $(add99 agent1l7base) |"
echo "| one agent, L7: new (b7) minus baseline (b7-base) | $(calc "%+.3f" "$(add50 agent1l7)" "$(add50 agent1l7base)" "a - b") | $(calc "%+.3f" "$(add99 agent1l7)" "$(add99 agent1l7base)" "a - b") |"
echo "| one agent, L7: new (b7) / baseline (b7-base) | $(ratio "$(add50 agent1l7)" "$(add50 agent1l7base)") | $(ratio "$(add99 agent1l7)" "$(add99 agent1l7base)") |"
fi
echo "| nginx, HTTP reverse proxy (1 hop) | $(add50 nginx) | $(add99 nginx) |"
echo "| HAProxy, HTTP mode (1 hop) | $(add50 haproxy7) | $(add99 haproxy7) |"
echo "| two agents per hop minus HAProxy | $(calc "%+.3f" "$(add50 agent2)" "$(add50 haproxy)" "a / 2 - b") | $(calc "%+.3f" "$(add99 agent2)" "$(add99 haproxy)" "a / 2 - b") |"
fi
echo
if [ "$ONLY_L7" != 1 ]; then
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
fi
if [ "$ONLY_L4LAT" != 1 ]; then
echo "## 6. L7 proxying: request rate and latency (HTTP/1.1, h2c, gRPC)"
echo
echo "Backend: the same fortio server (empty 200; gRPC: its ping service). Max req/s: closed loop, $CONNS connections, ${LAT_SECONDS} s"
echo "(HTTP/1.1: \`$MAXTOOL\`; h2c and gRPC: \`fortio load -qps 0 -c $CONNS\` with \`-h2\` / \`-grpc -ping\`; the h2load rows:"
echo "\`h2load $H2LOAD_VERSION -n $H2LOAD_N -c $CONNS -m $H2_STREAMS -t 1\`, maximum rate only); proxy CPU % over that run"
echo "(100 = one core; two agents summed). p50/p99 at a fixed $QPS req/s, $CONNS connections, ${LAT_SECONDS} s (fortio; the HTTP/1.1"
echo "rows are those of section 2). HTTP/1.1: $ROUNDS round(s); h2c and gRPC: $XROUNDS round(s). Added latency: vs the direct row of"
echo "the same protocol, same run; per hop: added / number of proxies on the path. Times in ms."
[ "$ONLY_L7" != 1 ] || { echo; echo "ONLY_L7=1: HTTP/1.1 rows only (no h2c, gRPC or h2load)."; }
echo
echo "| path | max req/s (median) | per round | proxy CPU % at max | p50 | p99 | added p50 | added p99 | added p99 per hop |"
echo "|---|---|---|---|---|---|---|---|---|"
for e in "${L7ENGINES[@]}" "${XENGINES[@]}" "${H2LENGINES[@]}"; do
  cpu="${MCPU[$e]}"; [ "${HOPS[$e]}" = 0 ] && cpu="—"
  [ "$cpu" != "—" ] && [ "$cpu" != fail ] && cpu=$(printf '%.0f' "$cpu")
  if [ "${HOPS[$e]}" = 0 ]; then ad50="—"; ad99="—"; hp="—"
  else ad50=$(add50 "$e" "${REF[$e]}"); ad99=$(add99 "$e" "${REF[$e]}"); hp="$(hop99 "$e") ($(us "$(hop99 "$e")"))"; fi
  l50=${L50[$e]}; l99=${L99[$e]}
  if [ "${KIND[$e]:-}" = h2load ]; then l50="—"; l99="—"; ad50="—"; ad99="—"; hp="—"; fi
  echo "| ${LABEL[$e]} | $(calc "%.0f" "${MQ[$e]}" 0 a) | $(rounds_of MAXQ "$e" "${NR[$e]}") | $cpu | $l50 | $l99 | $ad50 | $ad99 | $hp |"
done
if [ "$PERFSTAT" = 1 ]; then
echo
echo "PERFSTAT=1: the proxy's CPU per request at the maximum rate split into user space and kernel (utime, stime"
echo "over the run), and its system calls (all kinds), context switches and page faults per request (perf stat over the first"
echo "$((LAT_SECONDS > 1 ? LAT_SECONDS - 1 : 1)) s of each run); per round:"
echo
echo "| path | user µs per request | kernel µs per request | system calls per request | context switches per request | page faults per request |"
echo "|---|---|---|---|---|---|"
for e in "${L7ENGINES[@]}" "${XENGINES[@]}"; do
  [ "${HOPS[$e]}" = 0 ] && continue
  echo "| ${LABEL[$e]} | $(rounds_of MS_USR "$e" "${NR[$e]}") | $(rounds_of MS_KRN "$e" "${NR[$e]}") | $(rounds_of MS_SYS "$e" "${NR[$e]}") | $(rounds_of MS_CS "$e" "${NR[$e]}") | $(rounds_of MS_PF "$e" "${NR[$e]}") |"
done
fi
echo
echo "| max req/s ratio | value |"
echo "|---|---|"
echo "| (b7) one agent / (n) nginx | $(calc "%.2f" "${MQ[agent1l7]}" "${MQ[nginx]}" "a / b") |"
echo "| (c7) two agents / (n) nginx | $(calc "%.2f" "${MQ[agent2l7]}" "${MQ[nginx]}" "a / b") |"
echo "| (b7) one agent / (a) direct | $(calc "%.2f" "${MQ[agent1l7]}" "${MQ[direct]}" "a / b") |"
echo "| (n) nginx / (a) direct | $(calc "%.2f" "${MQ[nginx]}" "${MQ[direct]}" "a / b") |"
echo "| (c7) two agents / (b7) one agent | $(calc "%.2f" "${MQ[agent2l7]}" "${MQ[agent1l7]}" "a / b") |"
echo "| (g7) minimal Go proxy, goroutines / (n) nginx | $(calc "%.2f" "${MQ[bareg]}" "${MQ[nginx]}" "a / b") |"
echo "| (e7) minimal Go proxy, epoll loop / (n) nginx | $(calc "%.2f" "${MQ[baree]}" "${MQ[nginx]}" "a / b") |"
echo "| (h7) HAProxy, HTTP mode / (n) nginx | $(calc "%.2f" "${MQ[haproxy7]}" "${MQ[nginx]}" "a / b") |"
echo "| (b7) one agent / (h7) HAProxy, HTTP mode | $(calc "%.2f" "${MQ[agent1l7]}" "${MQ[haproxy7]}" "a / b") |"
echo "| (b7) one agent / (g7) minimal Go proxy, goroutines | $(calc "%.2f" "${MQ[agent1l7]}" "${MQ[bareg]}" "a / b") |"
echo "| proxy CPU µs per request at max rate: (b7) agent, (g7) goroutines, (e7) epoll loop, (n) nginx, (h7) HAProxy | $(cpureq agent1l7), $(cpureq bareg), $(cpureq baree), $(cpureq nginx), $(cpureq haproxy7) |"
if [ -n "$BASELINE_BIN" ]; then
echo "| (b7) new / (b7-base) baseline: max req/s | $(ratio "${MQ[agent1l7]}" "${MQ[agent1l7base]}") ($(calc "%.0f" "${MQ[agent1l7]}" 0 a) vs $(calc "%.0f" "${MQ[agent1l7base]}" 0 a) req/s) |"
echo "| (b7) new / (b7-base) baseline: agent CPU per request at max rate | $(ratio "$(cpureq agent1l7)" "$(cpureq agent1l7base)") ($(cpureq agent1l7) vs $(cpureq agent1l7base) µs) |"
fi
if [ "$OBS" = 1 ]; then
for e in agent1l7t100 agent1l7t1 agent1l7log; do
echo "| ${LABEL[$e]%%,*}${LABEL[$e]#*L7} / (b7): max req/s; p99 | $(calc "%.3f" "${MQ[$e]}" "${MQ[agent1l7]}" "a / b"); ${L99[$e]} vs ${L99[agent1l7]} ms |"
done
fi
if [ "$ONLY_L7" != 1 ]; then
echo "| (b2) h2c one agent / (a2) h2c direct | $(calc "%.2f" "${MQ[h2agent1]}" "${MQ[h2direct]}" "a / b") |"
echo "| (b2l) h2c one agent / (a2l) h2c direct, h2load -m $H2_STREAMS | $(calc "%.2f" "${MQ[h2lagent1]}" "${MQ[h2ldirect]}" "a / b") |"
echo "| (bg) gRPC one agent / (ag) gRPC direct | $(calc "%.2f" "${MQ[grpcagent1]}" "${MQ[grpcdirect]}" "a / b") |"
fi
echo
fi # ONLY_L4LAT
echo "## Targets"
echo
echo "| target | figure | |"
echo "|---|---|---|"
if [ "$ONLY_L7" != 1 ]; then
echo "| (b) one agent within 10% of the splice relay (e) | (b)/(e) = $(calc "%.2f" "${TPM[agent1]}" "${TPM[relay]}" "a / b") | $(met "$(calc "%d" "${TPM[agent1]}" "${TPM[relay]}" "a >= 0.9 * b")") |"
echo "| (b) one agent above HAProxy (d) | (b)/(d) = $(calc "%.2f" "${TPM[agent1]}" "${TPM[haproxy]}" "a / b") | $(met "$(calc "%d" "${TPM[agent1]}" "${TPM[haproxy]}" "a > b")") |"
fi
echo "| added p50 per agent hop <= HAProxy's (one agent) | $(add50 agent1) vs $(add50 haproxy) ms | $(met "$(calc "%d" "$(add50 agent1)" "$(add50 haproxy)" "a <= b")") |"
echo "| added p99 per agent hop <= HAProxy's (one agent) | $(add99 agent1) vs $(add99 haproxy) ms | $(met "$(calc "%d" "$(add99 agent1)" "$(add99 haproxy)" "a <= b")") |"
echo "| added p50 per agent hop within 10% of the splice relay's (one agent) | $(add50 agent1) vs $(add50 relay) ms | $(met "$(calc "%d" "$(add50 agent1)" "$(add50 relay)" "a <= b + 0.1 * (b < 0 ? -b : b)")") |"
if [ "$FASTPATH" = 1 ]; then
echo "| kernel fast path (b-bpf): added p50 <= 0.05 ms (stretch) | $(add50 agent1bpf) ms | $(met "$(calc "%d" "$(add50 agent1bpf)" 0 "a <= 0.05")") |"
[ "$ONLY_L7" = 1 ] || echo "| kernel fast path (b-bpf): bulk >= 0.8x direct (stretch) | (b-bpf)/(a) = $(calc "%.2f" "${TPM[agent1bpf]}" "${TPM[direct]}" "a / b") | $(met "$(calc "%d" "${TPM[agent1bpf]}" "${TPM[direct]}" "a >= 0.8 * b")") |"
echo "| (b-bpf) pairs the kernel took / relayed by the agent; bytes past the agent | $FP_KCONNS / $FP_ACONNS; $(mb $((FP_KBYTES / 1024))) MB | |"
fi
if [ "$ONLY_L4LAT" != 1 ]; then
echo "| added p50 per agent hop <= HAProxy's (two agents / 2) | $(calc "%+.3f" "$(add50 agent2)" 0 "a / 2") vs $(add50 haproxy) ms | $(met "$(calc "%d" "$(add50 agent2)" "$(add50 haproxy)" "a / 2 <= b")") |"
echo "| added p99 per agent hop <= HAProxy's (two agents / 2) | $(calc "%+.3f" "$(add99 agent2)" 0 "a / 2") vs $(add99 haproxy) ms | $(met "$(calc "%d" "$(add99 agent2)" "$(add99 haproxy)" "a / 2 <= b")") |"
if [ "$ONLY_L7" != 1 ]; then
echo "| agent idle RSS < 20 MB | $(mb "$RSS_SRV_IDLE0") MB before load, $(mb "$RSS_SRV_IDLE1") MB after | $(met "$(calc "%d" "$RSS_SRV_IDLE0" "$RSS_SRV_IDLE1" "a < 20480 && b < 20480")") |"
echo "| agent RSS < 50 MB with $HOLD_N connections | $(mb "$RSS_SRV_HOLD1") MB | $(met "$(calc "%d" "$RSS_SRV_HOLD1" 0 "a < 51200")") |"
echo "| agent binary < 25 MB | $(mb $((SIZE_AMD64_AGENT / 1024))) MB amd64, $(arm $SIZE_ARM64_AGENT) MB arm64 | $(met $((SIZE_AMD64_AGENT < 26214400 && SIZE_ARM64_AGENT < 26214400))) |"
fi
echo "| L7: max req/s through one agent (b7) >= nginx (n) | $(calc "%.0f" "${MQ[agent1l7]}" 0 a) vs $(calc "%.0f" "${MQ[nginx]}" 0 a) req/s, (b7)/(n) = $(calc "%.2f" "${MQ[agent1l7]}" "${MQ[nginx]}" "a / b") | $(met "$(calc "%d" "${MQ[agent1l7]}" "${MQ[nginx]}" "a >= b")") |"
echo "| L7: added p99 per hop < 300 µs at $QPS req/s, one agent (b7) | $(us "$(hop99 agent1l7)") | $(met "$(calc "%d" "$(hop99 agent1l7)" 0 "a < 0.3")") |"
echo "| L7: added p99 per hop < 300 µs at $QPS req/s, two agents (c7) / 2 | $(us "$(hop99 agent2l7)") | $(met "$(calc "%d" "$(hop99 agent2l7)" 0 "a < 0.3")") |"
if [ "$ONLY_L7" != 1 ]; then
echo "| L7: the same for h2c, one agent (b2) | $(us "$(hop99 h2agent1)") | $(met "$(calc "%d" "$(hop99 h2agent1)" 0 "a < 0.3")") |"
echo "| L7: the same for gRPC, one agent (bg) | $(us "$(hop99 grpcagent1)") | $(met "$(calc "%d" "$(hop99 grpcagent1)" 0 "a < 0.3")") |"
fi
echo "| (for comparison) nginx added p99 at $QPS req/s | $(us "$(hop99 nginx)") | $(met "$(calc "%d" "$(hop99 nginx)" 0 "a < 0.3")") |"
fi # ONLY_L4LAT
if [ -n "$BASELINE_BIN" ] && [ "$ONLY_L4LAT" != 1 ]; then
echo "| Regression check (issue 9): new within 5% of baseline ((b7) vs (b7-base): max req/s >= 95%, added p50 and p99 <= +5%) | max req/s new/baseline $(ratio "${MQ[agent1l7]}" "${MQ[agent1l7base]}") ($(met "$REG_Q")); added p50 $(add50 agent1l7) vs $(add50 agent1l7base) ms ($(met "$REG_50")); added p99 $(add99 agent1l7) vs $(add99 agent1l7base) ms ($(met "$REG_99")) | $(met "$REG") |"
fi
if [ "$ONLY_L7" != 1 ]; then
echo
echo "## 5. Go benchmarks"
echo
echo '`go test -run '"'"'^$'"'"' -bench . -benchtime 2s ./internal/proxy ./internal/transport`'
echo
echo '```'
echo "$GOBENCH"
echo '```'
fi
list_section "## Failures" "${FAILED[@]}"
list_section "## Warnings" "${WARNED[@]}"
} | tee "$REPORT"
log "report written to $REPORT"
[ ${#FAILED[@]} -eq 0 ] || exit 1
[ "${SECURITY:-0}" != 1 ] || bash "$ROOT/bench/security.sh" # SECURITY=1: also the issue 5 security benchmarks
