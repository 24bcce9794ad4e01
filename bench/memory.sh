#!/usr/bin/env bash
# Issue 14 (memory): agent memory and two-agent bulk throughput for several
# agent settings (mesh stream window, environment), in one run. For each
# setting, a pair of agents (srv
# with the iperf3 and hold workloads, cli with none) of one control plane,
# plaintext mesh (-insecure, as bench.sh's row (c)); each pair has its own
# services, so a cli agent reaches only its own srv agent. Then:
#   1. VmRSS of both agents idle 5 s after start;
#   2. iperf3 (1 stream) through both agents of each pair, ROUNDS rounds,
#      pairs interleaved (order rotated each round);
#   3. VmHWM (the peak) after the bulk runs, VmRSS right after them and
#      AFTER_SECONDS later;
#   4. HTTP/1.1 at the maximum rate (wrk -t 1 -c 16, LAT_SECONDS) through
#      both agents to a fortio server (the port declared http: L7 on the cli
#      agent), ROUNDS rounds interleaved: requests/s, the agents' CPU, and
#      VmRSS AFTER_SECONDS after;
#   5. HOLD_N connections held through both agents (mesh streams), VmRSS
#      while held, then AFTER_SECONDS after they closed, and VmHWM.
# Prints a markdown report.
#
# Knobs: PAIRS (the agent pairs, each WINDOW[:VAR=VALUE[,VAR=VALUE]]:
# meshStreamWindow in bytes, 0 = the agent's default, and environment for
# both agents; default "16777216:GOMEMLIMIT=off 0:GOMEMLIMIT=off 0": the old
# window without a memory limit, the new window without one, the agent's
# defaults), ROUNDS (2), IPERF_SECONDS (4), HOLD_N (1000), AFTER_SECONDS
# (10), BENCH_BASE_PORT (34700). VIPs: 127.176.I.0/24 (srv) and
# 127.177.I.0/24 (cli) for pair I.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

BENCH_NAME=memory # for die before bench_init
read -r -a PAIRS_A <<<"${PAIRS:-16777216:GOMEMLIMIT=off 0:GOMEMLIMIT=off 0}"
WIN=() PENV=()
for p in "${PAIRS_A[@]}"; do
  WIN+=("${p%%:*}")
  case $p in *:*) PENV+=("${p#*:}") ;; *) PENV+=("") ;; esac
  [[ ${WIN[-1]} =~ ^[0-9]+$ ]] || die "PAIRS: $p: want WINDOW[:VAR=VALUE,...]"
done
HOLD_N=${HOLD_N:-1000}
AFTER_SECONDS=${AFTER_SECONDS:-10}
BASE=${BENCH_BASE_PORT:-34700}
MESH_NS=bench
P_CTL_ADMIN=$((BASE + 0)); P_CTL_SYNC=$((BASE + 1)); P_IPERF=$((BASE + 2)); P_SINK=$((BASE + 3))
P_HTTP=$((BASE + 4))
S_BULK=15201; S_HOLD=19000; S_WEB=18080

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
mb() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
label() { # PAIR: its window and environment
  local w=${WIN[$1]}
  if [ "$w" = 0 ]; then printf 'default'; else printf '%s KiB' "$((w >> 10))"; fi
  [ -z "${PENV[$1]}" ] || printf ', %s' "${PENV[$1]//,/ }"
  echo
}
# ports of pair I: srv mesh, dns, admin, cli mesh, dns, admin
pport() { echo $((BASE + 10 + $1 * 10 + $2)); }

bench_init memory
need_tools go iperf3 curl wrk
find_fortio
log "building into $BIN"
mkdir -p "$BIN"
build_host "$BIN/fogmesh" ./cmd/fogmesh
build_host "$BIN/fogmesh-agent" ./cmd/fogmesh-agent
build_helpers holdconns benchjson
machine_info
for i in "${!WIN[@]}"; do
  ports_free BENCH_BASE_PORT "$(pport "$i" 0)" "$(pport "$i" 1)" "$(pport "$i" 2)" "$(pport "$i" 3)" "$(pport "$i" 4)" "$(pport "$i" 5)"
done
ports_free BENCH_BASE_PORT "$P_CTL_ADMIN" "$P_CTL_SYNC" "$P_IPERF" "$P_SINK" "$P_HTTP"

start_backends disabled
start sink "$BIN/holdconns" -serve "127.0.0.1:$P_SINK"
start_control ctl "$TMP/ctl" "$P_CTL_ADMIN" "$P_CTL_SYNC" -insecure
wait_port 127.0.0.1 "$P_CTL_ADMIN" ctl
svcs=()
for i in "${!WIN[@]}"; do svcs+=("bulk$i:tcp:$S_BULK" "hold$i:tcp:$S_HOLD" "web$i:http:$S_WEB:http"); done
services_yaml "${svcs[@]}" >"$TMP/services.yaml"
"$BIN/fogmesh" apply -server "http://127.0.0.1:$P_CTL_ADMIN" -f "$TMP/services.yaml" >&2

for i in "${!WIN[@]}"; do
  agent_config "srv$i" "$P_CTL_SYNC" "$(pport "$i" 0)" "$(pport "$i" 1)" "$(pport "$i" 2)" "127.176.$i.0/24" \
    "bulk$i:tcp:$P_IPERF" "hold$i:tcp:$P_SINK" "web$i:http:$P_HTTP" >"$TMP/srv$i.yaml"
  agent_config "cli$i" "$P_CTL_SYNC" "$(pport "$i" 3)" "$(pport "$i" 4)" "$(pport "$i" 5)" "127.177.$i.0/24" >"$TMP/cli$i.yaml"
  if [ "${WIN[$i]}" != 0 ]; then
    echo "meshStreamWindow: ${WIN[$i]}" >>"$TMP/srv$i.yaml"
    echo "meshStreamWindow: ${WIN[$i]}" >>"$TMP/cli$i.yaml"
  fi
  IFS=, read -r -a envs <<<"${PENV[$i]}"
  start "srv$i" env "${envs[@]}" "$BIN/fogmesh-agent" -insecure -config "$TMP/srv$i.yaml"
  start "cli$i" env "${envs[@]}" "$BIN/fogmesh-agent" -insecure -config "$TMP/cli$i.yaml"
done
wait_port 127.0.0.1 "$P_IPERF" iperf
wait_port 127.0.0.1 "$P_SINK" sink
wait_port 127.0.0.1 "$P_HTTP" httpd
FAILED=()
declare -A VBULK VHOLD VWEB
for i in "${!WIN[@]}"; do
  wait_port 127.0.0.1 "$(pport "$i" 2)" "srv$i"
  wait_port 127.0.0.1 "$(pport "$i" 5)" "cli$i"
  for _ in $(seq 1 150); do
    VBULK[$i]=$(vip "$(pport "$i" 5)" "bulk$i" site); VHOLD[$i]=$(vip "$(pport "$i" 5)" "hold$i" site)
    VWEB[$i]=$(vip "$(pport "$i" 5)" "web$i" site)
    [ -n "${VBULK[$i]}" ] && [ -n "${VHOLD[$i]}" ] && [ -n "${VWEB[$i]}" ] && break
    sleep 0.1
  done
  [ -n "${VBULK[$i]}" ] && [ -n "${VHOLD[$i]}" ] && [ -n "${VWEB[$i]}" ] ||
    { dump_routes "$(pport "$i" 5)"; die "cli$i does not route bulk$i, hold$i and web$i"; }
  curl -fsS -o /dev/null --max-time 5 "http://${VWEB[$i]}:$S_WEB/" || die "web$i through cli$i does not answer"
  e="w$i"
  LABEL[$e]="$(label "$i")"
  BULK[$e]="${VBULK[$i]} $S_BULK"
  CPUPIDS[$e]="$(pid_of "cli$i") $(pid_of "srv$i")"
done
# The agent's real PIDs: "env" execs the agent, so the PIDs are the agents'.
log "idle 5 s"
sleep 5
declare -A IDLE HWMB RSSB RSSBA HOLDR HOLDA HWMH
both() { echo "$(mb "$($1 "$(pid_of "srv$2")")") / $(mb "$($1 "$(pid_of "cli$2")")")"; }
for i in "${!WIN[@]}"; do IDLE[$i]=$(both rss_kb "$i"); done

ENGINES=()
for i in "${!WIN[@]}"; do ENGINES+=("w$i"); done
iperf_rounds "${ENGINES[@]}"
for i in "${!WIN[@]}"; do HWMB[$i]=$(both hwm_kb "$i"); RSSB[$i]=$(both rss_kb "$i"); done
log "idle $AFTER_SECONDS s after the bulk runs"
sleep "$AFTER_SECONDS"
for i in "${!WIN[@]}"; do RSSBA[$i]=$(both rss_kb "$i"); done

declare -A RPS RCPU RSSL
for r in $(seq 1 "$ROUNDS"); do
  for e in $(order "$r" "${ENGINES[@]}"); do
    i=${e#w}
    log "wrk round $r/$ROUNDS: pair $i (${LAT_SECONDS}s)"
    # shellcheck disable=SC2086 # CPUPIDS is a list of PIDs
    c0=$(cpu_ticks ${CPUPIDS[$e]}); t0=$(date +%s.%N)
    if out=$(wrk -t 1 -c 16 -d "${LAT_SECONDS}s" "http://${VWEB[$i]}:$S_WEB/" 2>&1); then
      # shellcheck disable=SC2086
      t1=$(date +%s.%N); c1=$(cpu_ticks ${CPUPIDS[$e]})
      RPS[$e,$r]=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' <<<"$out")
      RCPU[$e,$r]=$(cpu_pct "$c0" "$c1" "$t0" "$t1")
      grep -q 'Non-2xx\|Socket errors' <<<"$out" && FAILED+=("wrk pair $i round $r: $(grep 'Non-2xx\|Socket errors' <<<"$out")")
    else
      RPS[$e,$r]=fail; RCPU[$e,$r]=fail; FAILED+=("wrk pair $i round $r: $(tail -n 2 <<<"$out")")
    fi
    sleep 0.5
  done
done
log "idle $AFTER_SECONDS s after the HTTP runs"
sleep "$AFTER_SECONDS"
for i in "${!WIN[@]}"; do RSSL[$i]=$(both rss_kb "$i"); done

for i in "${!WIN[@]}"; do
  log "holding $HOLD_N connections through cli$i and srv$i"
  start "hold$i" "$BIN/holdconns" -n "$HOLD_N" -hold 60s -timeout 30s "${VHOLD[$i]}:$S_HOLD"
  pid=$(pid_of "hold$i")
  for _ in $(seq 1 350); do
    grep -q '^up ' "$TMP/hold$i.log" 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  grep -q '^up ' "$TMP/hold$i.log" || die "holdconns through pair $i: $(tail -n 3 "$TMP/hold$i.log")"
  sleep 2
  HOLDR[$i]="$(both rss_kb "$i") (up in $(awk '/^up / {print $3}' "$TMP/hold$i.log"))"
  stop_pids "$pid"
done
log "idle $AFTER_SECONDS s after the held connections closed"
sleep "$AFTER_SECONDS"
for i in "${!WIN[@]}"; do HOLDA[$i]=$(both rss_kb "$i"); HWMH[$i]=$(both hwm_kb "$i"); done

echo "## Agent memory by mesh stream window ($(date -u '+%Y-%m-%d %H:%M') UTC, fogmesh $GIT_REV, load $LOAD_START)"
echo
echo "Two agents (plaintext mesh), iperf3 1 stream ${IPERF_SECONDS}s, $ROUNDS rounds interleaved; MB = MiB, srv / cli agent."
echo
echo "| pair: window, environment | bulk Gbit/s (median) | per round | agents CPU % | HTTP/1.1 req/s (median) | per round | agents CPU % |"
echo "|---|---|---|---|---|---|---|"
for i in "${!WIN[@]}"; do
  e="w$i"
  echo "| $(label "$i") | $(median_of TP "$e" "$ROUNDS") | $(rounds_of TP "$e") | $(median_of TPCPU "$e" "$ROUNDS") | $(median_of RPS "$e" "$ROUNDS") | $(rounds_of RPS "$e") | $(median_of RCPU "$e" "$ROUNDS") |"
done
echo
echo "| pair: window, environment | idle RSS | peak (VmHWM) after bulk | RSS right after bulk | RSS ${AFTER_SECONDS}s after bulk | RSS ${AFTER_SECONDS}s after HTTP | RSS, $HOLD_N conns held | RSS ${AFTER_SECONDS}s after they closed | VmHWM at the end |"
echo "|---|---|---|---|---|---|---|---|---|"
for i in "${!WIN[@]}"; do
  echo "| $(label "$i") | ${IDLE[$i]} | ${HWMB[$i]} | ${RSSB[$i]} | ${RSSBA[$i]} | ${RSSL[$i]} | ${HOLDR[$i]} | ${HOLDA[$i]} | ${HWMH[$i]} |"
done
if [ "${#WIN[@]}" -ge 2 ]; then
  echo
  for i in "${!WIN[@]}"; do
    [ "$i" = 0 ] && continue
    echo "Throughput, ($(label "$i")) / ($(label 0)): $(calc "%.2f" "$(median_of TP "w$i" "$ROUNDS")" "$(median_of TP w0 "$ROUNDS")" "a / b")"
  done
fi
[ "${#FAILED[@]}" = 0 ] || list_section "Failures:" "${FAILED[@]}"
