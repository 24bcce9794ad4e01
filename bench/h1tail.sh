#!/usr/bin/env bash
# What the HTTP/1.1 p99 at a fixed rate waits on (issue 14, bench.sh row
# b7): direct, nginx (one worker, as row n) and one or more agents
# (plaintext, a port declared http, as row b7), each in front of the same
# fortio backend, with bench/h1bare's two models (a goroutine per
# connection, "bareg"; one epoll loop, "baree") beside them, loaded by fortio at QPS req/s over CONNS connections
# (10 µs histogram buckets), the engines interleaved and rotated, ROUNDS
# rounds. Prints p50, p99 and p99.9 per engine and round (ms), and for
# each agent the GC cycles it ran in the round (GODEBUG=gctrace=1 in its
# environment, counted from its log) and its RSS after the last round.
#
# AGENTS: space-separated NAME=BINARY[:ENV,ENV...] (default: this tree's
# agent as "agent"), e.g. "old=/tmp/a-old new=/tmp/a-new g400=/tmp/a-new:GOGC=400".
# Each agent has a control plane of its own (so none balances onto
# another's endpoint) and VIPs in 127.VIP_OCTET.N.0/24.
# TRACE=1 (agent binaries built with -tags fogmesh_pprof): a runtime trace
# of TRACE_SECS (/debug/pprof/trace) of each agent in its last round, into
# OUT_DIR (go tool trace; bench/handoffs/tailwait splits each request's
# time in the agent: cd bench/handoffs && go run ./tailwait OUT_DIR/NAME.trace).
#
# PEERS: the engines besides the agents (default "direct nginx bareg baree").
# Knobs: ROUNDS (5), SECS (20), QPS (2000), CONNS (16), FORTIO_RES
# (0.00001), BENCH_BASE_PORT (29800), VIP_OCTET (100), PIN (0), TRACE (0),
# TRACE_SECS (5), OUT_DIR (bench/out/h1tail-<date>).
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

ROUNDS=${ROUNDS:-5}
SECS=${SECS:-20}
QPS=${QPS:-2000}
CONNS=${CONNS:-16}
FORTIO_RES=${FORTIO_RES:-0.00001}
BASE=${BENCH_BASE_PORT:-29800}
VIP_OCTET=${VIP_OCTET:-100}
TRACE=${TRACE:-0}
TRACE_SECS=${TRACE_SECS:-5}
OUT_DIR=${OUT_DIR:-$ROOT/bench/out/h1tail-$(date +%Y%m%d-%H%M%S)}
pin_setup
MESH_NS=bench
P_HTTP=$((BASE + 0)); P_NGINX=$((BASE + 1))
S_WEB=$((BASE + 2)); P_BAREG=$((BASE + 3)); P_BAREE=$((BASE + 4))

bench_init h1tail
NGINX=$(command -v nginx || true)
[ -n "$NGINX" ] || die "needs nginx (Debian: nginx-light)"
find_fortio
mkdir -p "$BIN" "$OUT_DIR"
build_host "$BIN/fogmesh" ./cmd/fogmesh
build_helpers benchjson h1bare
if [ -z "${AGENTS:-}" ]; then
  build_host "$BIN/fogmesh-agent" ./cmd/fogmesh-agent
  AGENTS="agent=$BIN/fogmesh-agent"
fi

ports_free BENCH_BASE_PORT "$P_HTTP" "$P_NGINX" "$P_BAREG" "$P_BAREE"
start httpd "${PIN_LOAD[@]}" "$FORTIO" server -http-port "127.0.0.1:$P_HTTP" -grpc-port disabled \
  -redirect-port disabled -tcp-port disabled -udp-port disabled -data-dir "$TMP" -loglevel Warning
start_nginx "$NGINX" "
    upstream backend { server 127.0.0.1:$P_HTTP; keepalive 64; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$P_NGINX;
        location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
    }"

# The smallest HTTP/1.1 keep-alive proxies in Go (bench/h1bare, as bench.sh's
# rows g7 and e7): a goroutine per connection (the agent's model, none of
# its code), and one epoll loop (nginx's model, in Go).
start bareg "${PIN_PROXY[@]}" "$BIN/h1bare" -model go "127.0.0.1:$P_BAREG=127.0.0.1:$P_HTTP"
start baree "${PIN_PROXY[@]}" "$BIN/h1bare" -model epoll -loops 1 "127.0.0.1:$P_BAREE=127.0.0.1:$P_HTTP"
read -ra ENGINES <<<"${PEERS:-direct nginx bareg baree}"
declare -A URL=([direct]="http://127.0.0.1:$P_HTTP/" [nginx]="http://127.0.0.1:$P_NGINX/"
  [bareg]="http://127.0.0.1:$P_BAREG/" [baree]="http://127.0.0.1:$P_BAREE/")
declare -A APID APORT
services_yaml "webl7:http:$S_WEB:http" >"$TMP/services.yaml"
i=0
for spec in $AGENTS; do
  i=$((i + 1))
  name=${spec%%=*}; rest=${spec#*=}; bin=${rest%%:*}; envs=
  [ "$rest" = "$bin" ] || envs=${rest#*:}
  [ -x "$bin" ] || die "agent $name: $bin is not executable"
  b=$((BASE + 10 * i))
  ports_free BENCH_BASE_PORT $b $((b + 1)) $((b + 2)) $((b + 3)) $((b + 4)) $((b + 5))
  start_control "ctl$i" "$TMP/ctl$i" $b $((b + 1)) -insecure
  wait_port 127.0.0.1 $b "ctl$i"
  "$BIN/fogmesh" apply -server "http://127.0.0.1:$b" -f "$TMP/services.yaml" >&2
  agent_config "$name" $((b + 1)) $((b + 2)) $((b + 3)) $((b + 4)) "127.$VIP_OCTET.$i.0/24" "webl7:http:$P_HTTP" >"$TMP/$name.yaml"
  # shellcheck disable=SC2086 # envs: words on purpose
  start "$name" "${PIN_PROXY[@]}" env GODEBUG=gctrace=1 FOGMESH_PPROF_ADDR=127.0.0.1:$((b + 5)) ${envs//,/ } \
    "$bin" -insecure -config "$TMP/$name.yaml"
  wait_port 127.0.0.1 $((b + 4)) "$name"
  V=
  for _ in $(seq 1 100); do V=$(vip $((b + 4)) webl7 node) && [ -n "$V" ] && break; sleep 0.1; done
  [ -n "$V" ] || die "agent $name does not route webl7"
  ENGINES+=("$name"); URL[$name]="http://$V:$S_WEB/"; APID[$name]=$(pid_of "$name"); APORT[$name]=$((b + 5))
  log "agent $name: $bin ${envs:+($envs) }at ${URL[$name]}"
done
wait_port 127.0.0.1 "$P_HTTP" httpd
wait_port 127.0.0.1 "$P_NGINX" nginx
wait_port 127.0.0.1 "$P_BAREG" bareg
wait_port 127.0.0.1 "$P_BAREE" baree
for e in "${ENGINES[@]}"; do
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "${URL[$e]}" || true)
  [ "$code" = 200 ] || die "$e answers $code at ${URL[$e]}"
done

gcs() { grep -c '^gc [0-9]' "$TMP/$1.log" || true; } # GC cycles so far (gctrace lines)
declare -A R
for r in $(seq 1 "$ROUNDS"); do
  for e in $(order "$r" "${ENGINES[@]}"); do
    g0=0; [ -z "${APID[$e]:-}" ] || g0=$(gcs "$e")
    tpid=
    if [ "$TRACE" = 1 ] && [ "$r" = "$ROUNDS" ] && [ -n "${APID[$e]:-}" ]; then
      (sleep 2; curl -fsS --max-time $((TRACE_SECS + 10)) -o "$OUT_DIR/$e.trace" \
        "http://127.0.0.1:${APORT[$e]}/debug/pprof/trace?seconds=$TRACE_SECS") &
      tpid=$!
    fi
    timeout $((SECS + 30)) "${PIN_LOAD[@]}" "$FORTIO" load -qps "$QPS" -c "$CONNS" -t "${SECS}s" -r "$FORTIO_RES" \
      -p "50,99,99.9" -loglevel Error -json "$OUT_DIR/$e-r$r.json" "${URL[$e]}" >"$TMP/fortio-$e-$r.log" 2>&1 ||
      die "fortio $e round $r: $(tail -n 3 "$TMP/fortio-$e-$r.log")"
    [ -z "$tpid" ] || wait "$tpid" || log "no trace of $e"
    read -r p50 p99 p999 aq bad _ <<<"$("$BIN/benchjson" fortio "$OUT_DIR/$e-r$r.json")"
    g=-; [ -z "${APID[$e]:-}" ] || g=$(($(gcs "$e") - g0))
    R[$e,$r]="$p50 $p99 $p999 $aq $bad $g"
    log "round $r $e: p50 $p50 p99 $p99 p99.9 $p999 ms, $aq req/s, $bad bad, GCs $g"
    sleep 0.5
  done
done
sleep 3 # memtrim: one idle second, then the trim
{
  echo "h1tail $(git rev-parse --short HEAD) $(date -u +%FT%TZ): $QPS req/s, $CONNS conns, ${SECS}s, -r $FORTIO_RES, $ROUNDS rounds, load at end $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  echo "| engine | round | p50 ms | p99 ms | p99.9 ms | req/s | GCs in round |"
  echo "|---|---|---|---|---|---|---|"
  for e in "${ENGINES[@]}"; do
    for r in $(seq 1 "$ROUNDS"); do
      read -r p50 p99 p999 aq bad g <<<"${R[$e,$r]}"
      echo "| $e | $r | $p50 | $p99 | $p999 | $aq | $g |"
    done
  done
  echo
  echo "| engine | p99 ms per round | median p99 | min–max |"
  echo "|---|---|---|---|"
  for e in "${ENGINES[@]}"; do
    vals=(); for r in $(seq 1 "$ROUNDS"); do read -r _ p99 _ <<<"${R[$e,$r]}"; vals+=("$p99"); done
    sorted=$(printf '%s\n' "${vals[@]}" | sort -g | xargs)
    echo "| $e | ${vals[*]} | $(med "${vals[@]}") | ${sorted%% *}–${sorted##* } |"
  done
  echo
  for e in "${ENGINES[@]}"; do
    [ -n "${APID[$e]:-}" ] || continue
    echo "agent $e: RSS after load $(awk '/^VmRSS:/ {printf "%.1f MB", $2 / 1024}' "/proc/${APID[$e]}/status"), GCs in all $(gcs "$e")"
  done
} | tee "$OUT_DIR/report.md"
for e in "${ENGINES[@]}"; do [ -z "${APID[$e]:-}" ] || cp "$TMP/$e.log" "$OUT_DIR/$e.log"; done
