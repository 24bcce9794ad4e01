# shellcheck shell=bash
# Helpers shared by bench/bench.sh and bench/security.sh; sourced by both
# (after they set ROOT and cd there), never run on its own.
#
# bench_init NAME starts a run: the log prefix, the temp dir $TMP, $BIN and the
# cleanup traps. The functions below then use these globals: TMP, BIN, PIDS,
# FORTIO, ROUNDS, IPERF_SECONDS, LAT_SECONDS, QPS, CONNS, FAILED, MESH_NS (the
# namespace of the services, for vip) and the per-engine arrays declared here.

# The knobs both scripts take (see their headers): rounds, iperf3 and fortio
# run lengths, the fixed request rate and the connections of the HTTP runs.
ROUNDS=${ROUNDS:-2}
IPERF_SECONDS=${IPERF_SECONDS:-4}
LAT_SECONDS=${LAT_SECONDS:-5}
QPS=${QPS:-2000}
CONNS=${CONNS:-16}
# fortio's histogram resolution in seconds (its -r). Its default, 1 ms, put
# every sub-millisecond request in one bucket, [min, 1 ms), and reported p50
# as a straight line through it: a figure set by the share of requests over
# 1 ms, not by the median. 10 µs buckets resolve a loopback hop.
FORTIO_RES=${FORTIO_RES:-0.00001}
FORTIO_VERSION=v1.63.0
CLK_TCK=$(getconf CLK_TCK)
# Per engine: label, bulk "host port", web URL, proxy PIDs (for CPU %), kind
# (h2, grpc, h2load; unset: HTTP/1.1). Per engine,round: the measurements.
declare -A LABEL BULK WEB CPUPIDS KIND TP TPCPU P50 P99 P999 AQPS BAD

log() { printf '[%s %s] %s\n' "$BENCH_NAME" "$(date +%T)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

# bench_init NAME: log prefix NAME, temp dir fogmesh-NAME.XXXXXX (removed at
# exit, with the last lines of its logs on failure), BIN=$TMP/bin, traps.
bench_init() {
  BENCH_NAME=$1
  TMP=$(mktemp -d "${TMPDIR:-/tmp}/fogmesh-$1.XXXXXX")
  BIN=$TMP/bin
  PIDS=()
  trap cleanup EXIT
  trap 'log "failed at line $LINENO: $BASH_COMMAND"' ERR
  trap 'exit 130' INT
  trap 'exit 143' TERM
}
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

# ---------------------------------------------------------------- processes
# start NAME CMD...: runs CMD in the background, logs to $TMP/NAME.log,
# remembers its PID in PIDS and in the variable PID_NAME (dashes in NAME
# become underscores; pid_of NAME prints it).
start() {
  local name=$1; shift
  "$@" >"$TMP/$name.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  printf -v "PID_${name//-/_}" '%s' "$pid"
}
pid_of() { local v="PID_${1//-/_}"; echo "${!v}"; }

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
await_port() { # host port name: false if nothing listens there within 10 s
  local i
  for i in $(seq 1 100); do port_open "$1" "$2" && return 0; sleep 0.1; done
  log "$3 is not listening on $1:$2 after 10 s (log: $(tail -n 3 "$TMP/$3.log" 2>/dev/null))"
  return 1
}
wait_port() { await_port "$@" || die "$3 did not start"; }
# ports_free KNOB PORT...: dies if something listens on 127.0.0.1:PORT.
ports_free() {
  local knob=$1 p; shift
  for p in "$@"; do
    port_open 127.0.0.1 "$p" && die "port 127.0.0.1:$p is in use; set $knob"
  done
  return 0
}
stat_ticks() { # AWK-EXPR PID...: sum of AWK-EXPR over the PIDs' /proc/PID/stat ($14 utime, $15 stime)
  local expr=$1 t=0 pid v
  shift
  for pid in "$@"; do
    v=$(awk "{print $expr}" "/proc/$pid/stat" 2>/dev/null || echo 0)
    t=$((t + v))
  done
  echo "$t"
}
cpu_ticks() { stat_ticks '$14 + $15' "$@"; } # utime+stime over the given PIDs
sys_ticks() { stat_ticks '$15' "$@"; }       # stime (the kernel's share) over the given PIDs
machine_ticks() { # busy ticks of the whole machine so far (/proc/stat: user nice system irq softirq; not idle, iowait or steal)
  awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8; exit}' /proc/stat
}
machine_cpus() { grep -c '^cpu[0-9]' /proc/stat; } # the CPUs /proc/stat counts (nproc follows affinity)
cpu_pct() { # TICKS0 TICKS1 T0 T1: CPU % over the wall time T0..T1 (100 = one core)
  awk -v d="$(($2 - $1))" -v hz="$CLK_TCK" -v a="$3" -v b="$4" 'BEGIN {printf "%.0f", 100 * d / hz / (b - a)}'
}

# ---------------------------------------------------------------- tools and build
need_tools() { # TOOL...
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null 2>&1 || die "$t not found (run scripts/install-deps.sh bench)"
  done
}
# find_fortio: sets FORTIO, installing fortio FORTIO_VERSION if missing.
find_fortio() {
  FORTIO=$(command -v fortio 2>/dev/null || true)
  [ -z "$FORTIO" ] && [ -x "$(go env GOPATH)/bin/fortio" ] && FORTIO="$(go env GOPATH)/bin/fortio"
  if [ -z "$FORTIO" ]; then
    log "installing fortio $FORTIO_VERSION (go install, outside go.mod)"
    (cd "$TMP" && GOFLAGS= go install "fortio.org/fortio@$FORTIO_VERSION") || die "cannot install fortio"
    FORTIO="$(go env GOPATH)/bin/fortio"
  fi
}
build() { # GOARCH OUT PKG: static, stripped linux/GOARCH binary
  CGO_ENABLED=0 GOOS=linux GOARCH=$1 go build -trimpath -ldflags "-s -w" -o "$2" "$3"
}
build_host() { # OUT PKG: the same for the host (BUILD_LDFLAGS: "-s -w" unless set)
  CGO_ENABLED=0 go build -trimpath -ldflags "${BUILD_LDFLAGS:--s -w}" -o "$1" "$2"
}
build_helpers() { # NAME...: the plain go builds of ./bench/NAME into $BIN
  local n
  for n in "$@"; do go build ${BUILD_LDFLAGS:+-ldflags "$BUILD_LDFLAGS"} -o "$BIN/$n" "./bench/$n"; done
}
# machine_info: sets CPU_MODEL, GIT_REV, IPERF_VERSION, FORTIO_V, LOAD_START.
machine_info() {
  CPU_MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
  [ -z "$CPU_MODEL" ] && CPU_MODEL=$(lscpu 2>/dev/null | awk -F': +' '/Model name/ {print $2; exit}')
  GIT_REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  git diff --quiet HEAD 2>/dev/null || GIT_REV="$GIT_REV (+ uncommitted changes)"
  IPERF_VERSION=$(iperf3 --version 2>/dev/null | awk 'NR==1 {print $2}')
  FORTIO_V=$("$FORTIO" version 2>/dev/null | head -n 1)
  LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
}

# pin_setup: PIN=1 puts the load generators and the backends on CPU 0 and
# every proxy (agents, their control planes, HAProxy, nginx, the bare
# relays) on CPU 1 with taskset: a proxy with a core of its own, as where
# the workloads are not on the proxy's cores. Sets PIN_LOAD and PIN_PROXY
# (command prefixes, empty without PIN=1).
PIN_LOAD=() PIN_PROXY=() # without pin_setup: no pinning
pin_setup() {
  PIN=${PIN:-0}
  PIN_LOAD=() PIN_PROXY=()
  [ "$PIN" = 1 ] || return 0
  command -v taskset >/dev/null || die "PIN=1 needs taskset (util-linux)"
  [ "$(nproc)" -ge 2 ] || die "PIN=1 needs two CPUs"
  PIN_LOAD=(taskset -c 0) PIN_PROXY=(taskset -c 1)
}

# start_nginx NGINX HTTP_BLOCK: nginx with one worker, in the foreground
# (daemon off; its master is the PID we stop), pid, logs and temp files in
# $TMP/nginx, no access log, keep-alive not capped at 1,000 requests per
# connection; HTTP_BLOCK (its upstreams and servers) goes inside http {}.
start_nginx() {
  mkdir -p "$TMP/nginx"
  cat >"$TMP/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    keepalive_requests 1000000;
$2
}
EOF
  "$1" -t -q -p "$TMP/nginx/" -e "$TMP/nginx/error.log" -c "$TMP/nginx.conf" >"$TMP/nginx-t.log" 2>&1 ||
    die "nginx rejects its config: $(cat "$TMP/nginx-t.log")"
  start nginx "${PIN_PROXY[@]}" "$1" -p "$TMP/nginx/" -e "$TMP/nginx/error.log" -c "$TMP/nginx.conf"
}
# nginx_pids: the started nginx's master and worker PIDs, space-separated (the
# worker does the proxying), once a worker is up (up to 5 s; the master alone
# after that).
nginx_pids() {
  local w= _
  for _ in $(seq 1 50); do
    w=$(ps -o pid= --ppid "$PID_nginx" 2>/dev/null | xargs)
    [ -n "$w" ] && break
    sleep 0.1
  done
  echo "$PID_nginx${w:+ $w}"
}

# ---------------------------------------------------------------- backends and meshes
# start_backends GRPC_PORT: iperf3 on 127.0.0.1:P_IPERF and the fortio server
# on 127.0.0.1:P_HTTP (its gRPC port: GRPC_PORT, an address or "disabled").
start_backends() {
  start iperf "${PIN_LOAD[@]}" "$(command -v iperf3)" -s -B 127.0.0.1 -p "$P_IPERF"
  start httpd "${PIN_LOAD[@]}" "$FORTIO" server -http-port "127.0.0.1:$P_HTTP" -grpc-port "$1" \
    -redirect-port disabled -tcp-port disabled -udp-port disabled -data-dir "$TMP" -loglevel Warning
}
# start_control NAME STATE_DIR ADMIN_PORT SYNC_PORT [FLAG...]: a control plane.
start_control() {
  local name=$1 state=$2 adm=$3 sync=$4; shift 4
  start "$name" "${PIN_PROXY[@]}" "$BIN/fogmesh" control -state-dir "$state" -admin-addr "127.0.0.1:$adm" \
    -sync-addr "127.0.0.1:$sync" "$@"
}
# services_yaml SERVICE... : the Services (namespace MESH_NS), each given as
# NAME:PORTNAME:PORT[:PROTOCOL], as one YAML stream on stdout.
services_yaml() {
  local s name pname port proto sep=
  for s in "$@"; do
    IFS=: read -r name pname port proto <<<"$s"
    printf '%sapiVersion: fogmesh.io/v1alpha1\nkind: Service\nmetadata: {name: %s, namespace: %s}\n' "$sep" "$name" "$MESH_NS"
    printf 'spec: {ports: [{name: %s, port: %s%s}]}\n' "$pname" "$port" "${proto:+, protocol: $proto}"
    sep=$'---\n'
  done
}
# agent_config NAME SYNC_PORT MESH_PORT DNS_PORT ADMIN_PORT VIP_RANGE
# [WORKLOAD...]: an agent config (node NAME, site s1, state in $TMP/NAME) on
# stdout. Each WORKLOAD is SERVICE:PORTNAME:PORT, a workload SERVICE-srv of
# namespace MESH_NS on 127.0.0.1:PORT with health checks off (iperf3 treats
# every connection as a test; the scripts check the paths themselves).
agent_config() {
  local name=$1 sync=$2 mesh=$3 dns=$4 adm=$5 vips=$6 w svc pname port; shift 6
  cat <<EOF
node: {name: $name, site: s1, region: r1}
control: ["127.0.0.1:$sync"]
meshAddr: "127.0.0.1:$mesh"
dnsAddr: "127.0.0.1:$dns"
adminAddr: "127.0.0.1:$adm"
vipRange: "$vips"
stateDir: $TMP/$name
EOF
  [ $# -eq 0 ] && return 0
  echo "workloads:"
  for w in "$@"; do
    IFS=: read -r svc pname port <<<"$w"
    echo "  - {name: $svc-srv, service: $svc, namespace: $MESH_NS, address: 127.0.0.1, ports: [{name: $pname, port: $port}], check: {type: none}}"
  done
}
# vip AGENT_ADMIN_PORT SERVICE [TIER [CLI]]: the VIP of MESH_NS/SERVICE once
# the agent routes it to a healthy endpoint of TIER (default site: another
# agent, over the mesh), else empty. CLI: the fogmesh binary that asks
# (default $BIN/fogmesh; bench.sh's baseline agent is asked by its own build).
vip() {
  "${4:-$BIN/fogmesh}" routes -agent "http://127.0.0.1:$1" 2>/dev/null |
    awk -v s="$MESH_NS/$2" -v t="${3:-site}" '$1 == s && $6 == t && $7 == "true" {print $2; exit}'
}
dump_routes() { # AGENT_ADMIN_PORT...: the agents' route tables, to stderr
  local p
  for p in "$@"; do "$BIN/fogmesh" routes -agent "http://127.0.0.1:$p" >&2 || true; done
}

# ---------------------------------------------------------------- measurements
failed() { FAILED+=("$2"); } # ENGINE MESSAGE
order() { # ROUND ENGINE...: the engines rotated by ROUND (so none always runs first or last)
  local r=$1; shift
  local list=("$@"); local n=${#list[@]} i
  for i in $(seq 0 $((n - 1))); do echo "${list[$(((i + r) % n))]}"; done
}
# iperf_run ENGINE ROUND: one iperf3 client run (1 stream, IPERF_SECONDS) to
# BULK[ENGINE]; sets TP (Gbit/s) and TPCPU (CPU % of CPUPIDS[ENGINE]), both
# "fail" (and a FAILED entry) if it fails.
iperf_rounds() { # ENGINE...: ROUNDS rounds of iperf_run over the engines, rotated per round
  local r e
  for r in $(seq 1 "$ROUNDS"); do
    for e in $(order "$r" "$@"); do
      iperf_run "$e" "$r"
      sleep 0.5
    done
  done
}
iperf_run() {
  local e=$1 r=$2 host port out v= c0 c1 t0 t1
  read -r host port <<<"${BULK[$e]}"
  log "iperf3 round $r/$ROUNDS: $e ($host:$port, ${IPERF_SECONDS}s)"
  out="$TMP/iperf-$e-$r.json"
  # shellcheck disable=SC2086 # CPUPIDS is a list of PIDs
  c0=$(cpu_ticks ${CPUPIDS[$e]}); t0=$(date +%s.%N)
  if timeout $((IPERF_SECONDS + 20)) "${PIN_LOAD[@]}" iperf3 -c "$host" -p "$port" -t "$IPERF_SECONDS" -J >"$out" 2>&1 &&
     v=$("$BIN/benchjson" iperf3 "$out" 2>&1); then
    # shellcheck disable=SC2086
    t1=$(date +%s.%N); c1=$(cpu_ticks ${CPUPIDS[$e]})
    TP[$e,$r]=${v%% *}
    TPCPU[$e,$r]=$(cpu_pct "$c0" "$c1" "$t0" "$t1")
  else
    log "iperf3 $e round $r FAILED: $(head -c 300 "$out") ${v:-}"
    TP[$e,$r]=fail; TPCPU[$e,$r]=fail; FAILED+=("iperf3 $e round $r")
  fi
}
# fortio_load ENGINE QPS JSON LOG: one time-bound fortio run against ENGINE
# (HTTP/1.1, h2c with -h2, or gRPC ping with -grpc -ping, by KIND).
fortio_load() {
  local e=$1 qps=$2 extra=()
  case ${KIND[$e]:-h1} in h2) extra=(-h2) ;; grpc) extra=(-grpc -ping) ;; esac
  timeout $((LAT_SECONDS + 30)) "${PIN_LOAD[@]}" "$FORTIO" load "${extra[@]}" -qps "$qps" -c "$CONNS" -t "${LAT_SECONDS}s" \
    -r "$FORTIO_RES" -p "50,99,99.9" -loglevel Error -json "$3" "${WEB[$e]}" >"$4" 2>&1
}
# fixed_rate ENGINE ROUND [ROUNDS]: QPS req/s over CONNS connections;
# P50/P99/P999 (ms), AQPS (achieved req/s), BAD (non-OK responses).
fixed_rate() {
  local e=$1 r=$2 v=
  log "fortio round $r${3:+/$3}: $e (${QPS} req/s, $CONNS conns, ${LAT_SECONDS}s)"
  if fortio_load "$e" "$QPS" "$TMP/fortio-$e-$r.json" "$TMP/fortio-$e-$r.log" &&
     v=$("$BIN/benchjson" fortio "$TMP/fortio-$e-$r.json" 2>&1); then
    read -r "P50[$e,$r]" "P99[$e,$r]" "P999[$e,$r]" "AQPS[$e,$r]" "BAD[$e,$r]" _ <<<"$v"
    [ "${BAD[$e,$r]}" = 0 ] || failed "$e" "fortio $e round $r: ${BAD[$e,$r]} non-OK responses"
  else
    log "fortio $e round $r FAILED: $(tail -n 3 "$TMP/fortio-$e-$r.log") ${v:-}"
    P50[$e,$r]=fail; P99[$e,$r]=fail; P999[$e,$r]=fail; AQPS[$e,$r]=fail; BAD[$e,$r]=fail
    failed "$e" "fortio $e round $r"
  fi
}

# ---------------------------------------------------------------- report
med() { # values... -> median (ignores "fail"; "fail" if none)
  printf '%s\n' "$@" | { grep -v '^fail$' || true; } | sort -g |
    awk '{v[NR] = $1} END {if (NR == 0) {print "fail"; exit} if (NR % 2) printf "%.3f\n", v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}
median_of() { # ARRAY ENGINE ROUNDS: the median of ARRAY[ENGINE,1..ROUNDS]
  local -n marr=$1; local r vals=()
  for r in $(seq 1 "$3"); do vals+=("${marr[$2,$r]:-fail}"); done
  med "${vals[@]}"
}
calc() { # fmt a b expr: printf fmt of expr over a, b; "n/a" if an operand is missing or failed
  case "$2$3" in *fail*|*n/a*|*pending*) echo "n/a"; return ;; esac
  [ -n "$2" ] && [ -n "$3" ] || { echo "n/a"; return; }
  awk -v a="$2" -v b="$3" "BEGIN {printf \"$1\", ($4)}"
}
rounds_of() { # array-name engine [rounds] -> "x / y"
  local -n arr=$1; local out="" r
  for r in $(seq 1 "${3:-$ROUNDS}"); do out+="${out:+ / }${arr[$2,$r]:-fail}"; done
  echo "$out"
}
met() { case "$1" in 1) echo "**met**" ;; 0) echo "**missed**" ;; *) echo "not measured" ;; esac; }
# report_file NAME: sets REPORT to bench/out/NAME-<date>.md (and makes the dir).
report_file() {
  mkdir -p "$ROOT/bench/out"
  REPORT="$ROOT/bench/out/$1-$(date +%Y%m%d-%H%M%S).md"
}
machine_rows() { # the report's machine table, up to the fogmesh revision
  echo "| machine | |"
  echo "|---|---|"
  echo "| cores (nproc) | $(nproc) |"
  echo "| CPU | $CPU_MODEL |"
  echo "| kernel | $(uname -sr) |"
  echo "| Go | $(go version | awk '{print $3, $4}') |"
  echo "| fogmesh | $GIT_REV |"
}
list_section() { # HEADING ITEM...: a markdown list under HEADING, nothing without items
  [ $# -gt 1 ] || return 0
  echo
  echo "$1"
  echo
  shift
  local f
  for f in "$@"; do echo "* $f"; done
}
