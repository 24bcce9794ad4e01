#!/usr/bin/env bash
# HTTP/1.1 uploads side by side (issue 14, opt-in: neither `make bench` nor
# CI runs it): keep-alive POSTs of each size in SIZES (bytes, Content-Length
# bodies sent whole by wrk with a Lua script) to a sink that reads and
# drops them (bench/otlpsink, path /v1/traces), direct, through one agent
# (a port declared http, this tree's build), through nginx (one worker,
# upstream keepalive pool, proxy_request_buffering off: it streams the body
# as the agent does) and, with BASELINE_BIN, through one agent of that
# build; the engines interleaved and rotated per round. Per engine and size:
# req/s, upload MB/s and the proxy's CPU (all its threads, /proc ticks) per
# MiB uploaded. A client that pauses inside its body (the agent's full
# duplex path) is BenchmarkL7Upload's paced case (internal/agent), not here.
# Usage:
#   bench/upload.sh
# Knobs: ROUNDS (3), SECS (5: each wrk run), CONNS (8), SIZES
# ("1024 65536 4194304"), BENCH_BASE_PORT (27000; uses BASE..BASE+19),
# VIP_OCTET (113: the agents' VIPs in 127.VIP_OCTET.N.0/24), PIN (0),
# BASELINE_BIN (a full fogmesh binary of another build, with its commit in
# BASELINE_REV), OUT_DIR (bench/out/upload-<date>).
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ROUNDS=${ROUNDS:-3} # before lib.sh, whose defaults differ
CONNS=${CONNS:-8}
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

SECS=${SECS:-5}
SIZES=${SIZES:-1024 65536 4194304}
BASE=${BENCH_BASE_PORT:-27000}
VIP_OCTET=${VIP_OCTET:-113}
BASELINE_BIN=${BASELINE_BIN:-}
OUT_DIR=${OUT_DIR:-$ROOT/bench/out/upload-$(date +%Y%m%d-%H%M%S)}
pin_setup
MESH_NS=bench
P_SINK=$((BASE + 0)); P_NGINX=$((BASE + 1)); S_UP=$((BASE + 2))

bench_init upload
need_tools wrk curl
NGINX=$(command -v nginx || true)
[ -n "$NGINX" ] || die "needs nginx (Debian: nginx-light)"
mkdir -p "$BIN" "$OUT_DIR"
build_host "$BIN/fogmesh" ./cmd/fogmesh
build_helpers otlpsink
ports_free BENCH_BASE_PORT "$P_SINK" "$P_NGINX"

start sink "${PIN_LOAD[@]}" "$BIN/otlpsink" -addr "127.0.0.1:$P_SINK"
start_nginx "$NGINX" "
    upstream backend { server 127.0.0.1:$P_SINK; keepalive 64; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$P_NGINX;
        client_max_body_size 0;
        location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\";
                     proxy_request_buffering off; }
    }"
ENGINES=(direct nginx)
declare -A URL=([direct]="http://127.0.0.1:$P_SINK/v1/traces" [nginx]="http://127.0.0.1:$P_NGINX/v1/traces")
declare -A CPIDS
services_yaml "upload:http:$S_UP:http" >"$TMP/services.yaml"
AGENTS="agent=$BIN/fogmesh"
[ -z "$BASELINE_BIN" ] || AGENTS+=" base=$BASELINE_BIN"
i=0
for spec in $AGENTS; do
  i=$((i + 1))
  name=${spec%%=*}; bin=${spec#*=}
  [ -x "$bin" ] || die "agent $name: $bin is not executable"
  b=$((BASE + 5 * i))
  ports_free BENCH_BASE_PORT $b $((b + 1)) $((b + 2)) $((b + 3)) $((b + 4))
  start_control "ctl$i" "$TMP/ctl$i" $b $((b + 1)) -insecure
  wait_port 127.0.0.1 $b "ctl$i"
  "$bin" apply -server "http://127.0.0.1:$b" -f "$TMP/services.yaml" >&2
  agent_config "$name" $((b + 1)) $((b + 2)) $((b + 3)) $((b + 4)) "127.$VIP_OCTET.$i.0/24" "upload:http:$P_SINK" >"$TMP/$name.yaml"
  start "$name" "${PIN_PROXY[@]}" "$bin" agent -insecure -config "$TMP/$name.yaml"
  wait_port 127.0.0.1 $((b + 4)) "$name"
  V=
  for _ in $(seq 1 100); do V=$(vip $((b + 4)) upload node "$bin") && [ -n "$V" ] && break; sleep 0.1; done
  [ -n "$V" ] || die "agent $name does not route upload"
  ENGINES+=("$name"); URL[$name]="http://$V:$S_UP/v1/traces"; CPIDS[$name]=$(pid_of "$name")
  log "agent $name: $bin at ${URL[$name]}"
done
wait_port 127.0.0.1 "$P_SINK" sink
wait_port 127.0.0.1 "$P_NGINX" nginx
CPIDS[nginx]=$(nginx_pids)
CPIDS[direct]=
for e in "${ENGINES[@]}"; do
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 --data-binary 'x' "${URL[$e]}" || true)
  [ "$code" = 200 ] || die "$e answers $code at ${URL[$e]}"
done
for s in $SIZES; do
  printf 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/octet-stream"\nwrk.body = string.rep("x", %d)\n' "$s" >"$TMP/post-$s.lua"
done

declare -A RPS MBS CPM
for r in $(seq 1 "$ROUNDS"); do
  for s in $SIZES; do
    for e in $(order "$r" "${ENGINES[@]}"); do
      # shellcheck disable=SC2086 # CPIDS: a list of PIDs
      c0=$(cpu_ticks ${CPIDS[$e]:-}); t0=$(date +%s.%N)
      timeout $((SECS + 30)) "${PIN_LOAD[@]}" wrk -t1 -c "$CONNS" -d "${SECS}s" --timeout 30s -s "$TMP/post-$s.lua" "${URL[$e]}" \
        >"$OUT_DIR/wrk-$e-$s-r$r.txt" 2>&1 || die "wrk $e $s round $r: $(tail -n 3 "$OUT_DIR/wrk-$e-$s-r$r.txt")"
      # shellcheck disable=SC2086
      c1=$(cpu_ticks ${CPIDS[$e]:-}); t1=$(date +%s.%N)
      ! grep -q 'Non-2xx\|Socket errors' "$OUT_DIR/wrk-$e-$s-r$r.txt" || die "wrk $e $s round $r: errors: $(grep 'Non-2xx\|Socket errors' "$OUT_DIR/wrk-$e-$s-r$r.txt")"
      rps=$(awk '/^Requests\/sec:/ {print $2}' "$OUT_DIR/wrk-$e-$s-r$r.txt")
      RPS[$e,$s,$r]=$rps
      MBS[$e,$s,$r]=$(awk -v q="$rps" -v s="$s" 'BEGIN {printf "%.1f", q * s / 1e6}')
      # CPU seconds per MiB uploaded over the run (wall time t0..t1 of wrk's run).
      CPM[$e,$s,$r]=$(awk -v c="$((c1 - c0))" -v k="$CLK_TCK" -v q="$rps" -v s="$s" -v t0="$t0" -v t1="$t1" \
        'BEGIN { mib = q * (t1 - t0) * s / 1048576; if (c == 0 || mib == 0) print "-"; else printf "%.2f", c / k * 1000 / mib }')
      log "round $r size $s $e: $rps req/s, ${MBS[$e,$s,$r]} MB/s, ${CPM[$e,$s,$r]} CPU ms/MiB"
      sleep 0.5
    done
  done
done

{
  echo "upload $(git rev-parse --short HEAD)${BASELINE_BIN:+ vs base ${BASELINE_REV:-$("$BASELINE_BIN" version 2>/dev/null | head -n 1)}} $(date -u +%FT%TZ): wrk -t1 -c $CONNS -d ${SECS}s, $ROUNDS rounds, load at end $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  echo "| size (bytes) | engine | req/s (median) | MB/s (median) | proxy CPU ms per MiB (median) | MB/s per round |"
  echo "|---|---|---|---|---|---|"
  for s in $SIZES; do
    for e in "${ENGINES[@]}"; do
      q=(); m=(); c=(); for r in $(seq 1 "$ROUNDS"); do q+=("${RPS[$e,$s,$r]}"); m+=("${MBS[$e,$s,$r]}"); c+=("${CPM[$e,$s,$r]}"); done
      cm=-; [ "$e" = direct ] || cm=$(med "${c[@]}")
      echo "| $s | $e | $(med "${q[@]}") | $(med "${m[@]}") | $cm | ${m[*]} |"
    done
  done
} | tee "$OUT_DIR/report.md"
