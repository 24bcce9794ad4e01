#!/usr/bin/env bash
# fogmesh two-agent bulk throughput (issue 14), all on loopback, one run:
# iperf3 (1 stream) client → cli agent VIP → mesh port → srv agent → iperf3,
# for this tree and a baseline revision, plaintext and mTLS mesh, beside one
# agent (the srv agent's node-tier VIP, splice) and bench/tlspair's bare Go
# TLS+yamux relay pair (p4) and yamux pair (p2), engines interleaved (order
# rotated each round). This tree's agents also run with smaller stream
# windows (WINDOWS, agent config meshStreamWindow), one mesh per window.
#
# Rows: (a) direct; (b) one agent (this tree); (p2), (p4) bench/tlspair
# yamux and tls-yamux; (f0)/(fm0) two agents of BASELINE_REV, plaintext /
# mTLS mesh; (f)/(fm) this tree's, default window; (f-W)/(fm-W) this
# tree's with a W-byte stream window.
#
# Knobs (environment): ROUNDS (3), IPERF_SECONDS (4), TWO_BASE_PORT (24000:
# ports TWO_BASE_PORT..+299 on 127.0.0.1, below the ephemeral range),
# BASELINE_REV (default: where this branch left main; "" skips the baseline
# rows), WINDOWS ("1048576 4194304"; "" for none), MTLS (1; 0 skips every
# mTLS row), PERF_ENGINES (e.g. "f fm": in the last round, `perf record -g`
# on that row's proxy processes for the iperf3 run; the binaries are then
# built with symbols, and the reports go to bench/out/twoagents-perf-ROW.txt). VIPs: 127.180.0.0/16 (srv agents) and 127.194.0.0/16 (cli
# agents), a /20 per mesh. The report goes to stdout and to
# bench/out/twoagents-<date>.md.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

ROUNDS=${ROUNDS:-3}
BASE=${TWO_BASE_PORT:-24000}
BASELINE_REV=${BASELINE_REV-$(git merge-base HEAD main)}
WINDOWS=${WINDOWS-1048576 4194304}
MTLS=${MTLS:-1}
MESH_NS=two
P_IPERF=$((BASE + 0)); P_HTTP=$((BASE + 1))
P_PAIR=$((BASE + 10)) # yamux at +0..+2, tls-yamux at +3..+5
S_BULK=15201; S_WEB=18080
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
mb() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }

bench_init twoagents
need_tools go iperf3 curl
find_fortio
# shellcheck disable=SC2046 # a list of ports
ports_free TWO_BASE_PORT $(seq "$BASE" $((BASE + 299)))

# ---------------------------------------------------------------- build
PERF_ENGINES=${PERF_ENGINES:-}
if [ -n "$PERF_ENGINES" ]; then
  need_tools perf
  build_host() { CGO_ENABLED=0 go build -trimpath -o "$1" "$2"; } # with symbols, for perf
fi
log "building this tree into $BIN"
mkdir -p "$BIN"
build_host "$BIN/fogmesh" ./cmd/fogmesh
build_host "$BIN/fogmesh-agent" ./cmd/fogmesh-agent
build_host "$BIN/tlspair" ./bench/tlspair
build_helpers benchjson
"$BIN/tlspair" gen "$TMP/certs"
BASE_BIN=$TMP/basebin
BASE_NAME=
if [ -n "$BASELINE_REV" ]; then
  BASE_NAME=$(git rev-parse --short "$BASELINE_REV")
  log "building the baseline $BASELINE_REV ($BASE_NAME) into $BASE_BIN"
  mkdir -p "$TMP/basesrc" "$BASE_BIN"
  git archive "$BASELINE_REV" | tar -x -C "$TMP/basesrc"
  (cd "$TMP/basesrc" && build_host "$BASE_BIN/fogmesh" ./cmd/fogmesh && build_host "$BASE_BIN/fogmesh-agent" ./cmd/fogmesh-agent)
fi
machine_info
T_START=$(date -u '+%Y-%m-%d %H:%M')

# ---------------------------------------------------------------- backends and relay pairs
start_backends disabled
wait_port 127.0.0.1 "$P_IPERF" iperf
wait_port 127.0.0.1 "$P_HTTP" httpd
i=0
for m in yamux tls-yamux; do
  pb=$((P_PAIR + 3 * i)); e=$([ "$m" = yamux ] && echo p2 || echo p4); i=$((i + 1))
  start "pair-b-$m" "$BIN/tlspair" b -mode "$m" -listen "127.0.0.1:$pb" -certs "$TMP/certs" \
    "127.0.0.1:$P_IPERF" "127.0.0.1:$P_HTTP"
  start "pair-a-$m" "$BIN/tlspair" a -mode "$m" -peer "127.0.0.1:$pb" -certs "$TMP/certs" \
    "127.0.0.1:$((pb + 1))" "127.0.0.1:$((pb + 2))"
  BULK[$e]="127.0.0.1 $((pb + 1))"; WEB[$e]="http://127.0.0.1:$((pb + 2))/"
  CPUPIDS[$e]="$(pid_of "pair-a-$m") $(pid_of "pair-b-$m")"
  wait_port 127.0.0.1 "$((pb + 2))" "pair-a-$m"
done
LABEL[direct]="(a) direct"; BULK[direct]="127.0.0.1 $P_IPERF"; WEB[direct]="http://127.0.0.1:$P_HTTP/"; CPUPIDS[direct]=""
LABEL[p2]="(p2) Go pair, one yamux session (bench/tlspair)"
LABEL[p4]="(p4) Go pair, one mutual TLS 1.3 connection carrying yamux (bench/tlspair)"

# ---------------------------------------------------------------- meshes
# mesh_up TAG INDEX BINDIR MTLS WINDOW: a control plane and two agents
# (srvTAG with the bulk and web workloads, cliTAG with none) of the build in
# BINDIR on 127.0.0.1:BASE+30*(INDEX+1)..+22, VIPs 127.180.16*INDEX.0/20 and
# 127.194.16*INDEX.0/20; MTLS 1: secure control plane, agents joined with
# tokens; WINDOW (bytes, or empty): the agents' meshStreamWindow. Sets
# BULK[TAG], WEB[TAG], CPUPIDS[TAG] (the cli agent's VIPs, both agents) and
# NODEVIP[TAG] (the srv agent's node-tier bulk VIP).
declare -A NODEVIP NODEPID
mesh_up() {
  local tag=$1 idx=$2 bin=$3 mtls=$4 win=$5
  local base=$((BASE + 30 * (idx + 1)))
  local p_adm=$base p_sync=$((base + 1)) state=$TMP/ctl$tag
  local ctl_flags=() admin=(-server "http://127.0.0.1:$p_adm")
  [ "$mtls" = 1 ] || ctl_flags=(-insecure)
  start "ctl$tag" "$bin/fogmesh" control -state-dir "$state" -admin-addr "127.0.0.1:$p_adm" \
    -sync-addr "127.0.0.1:$p_sync" "${ctl_flags[@]}"
  await_port 127.0.0.1 "$p_adm" "ctl$tag" || return 1
  if [ "$mtls" = 1 ]; then
    local i
    for i in $(seq 1 200); do
      [ -s "$state/admin.token" ] && [ -s "$state/ca.pem" ] &&
        curl -fsS -o /dev/null --max-time 2 --cacert "$state/ca.pem" "https://127.0.0.1:$p_adm/healthz" 2>/dev/null && break
      sleep 0.1
    done
    admin=(-server "https://127.0.0.1:$p_adm" -ca "$state/ca.pem" -token "$(cat "$state/admin.token")")
  fi
  services_yaml "bulk:tcp:$S_BULK" "web:http:$S_WEB" >"$TMP/services$tag.yaml"
  "$bin/fogmesh" apply "${admin[@]}" -f "$TMP/services$tag.yaml" >&2 || return 1
  local role mesh dns adm vips flags tok
  for role in srv cli; do
    if [ $role = srv ]; then mesh=$((base + 10)); vips=127.180.$((16 * idx)).0/20
    else mesh=$((base + 20)); vips=127.194.$((16 * idx)).0/20; fi
    dns=$((mesh + 1)); adm=$((mesh + 2))
    if [ $role = srv ]; then
      agent_config "srv$tag" "$p_sync" "$mesh" "$dns" "$adm" "$vips" "bulk:tcp:$P_IPERF" "web:http:$P_HTTP"
    else
      agent_config "cli$tag" "$p_sync" "$mesh" "$dns" "$adm" "$vips"
    fi >"$TMP/$role$tag.yaml"
    [ -z "$win" ] || echo "meshStreamWindow: $win" >>"$TMP/$role$tag.yaml"
    flags=(-insecure)
    if [ "$mtls" = 1 ]; then
      tok=$("$bin/fogmesh" token create -site s1 -ttl 1h "${admin[@]}") || return 1
      flags=(-join-token "$tok")
    fi
    start "$role$tag" "$bin/fogmesh-agent" -config "$TMP/$role$tag.yaml" "${flags[@]}"
    await_port 127.0.0.1 "$adm" "$role$tag" || return 1
  done
  local vb= vw= vn=
  for i in $(seq 1 200); do
    vb=$(vip $((base + 22)) bulk site "$bin/fogmesh"); vw=$(vip $((base + 22)) web site "$bin/fogmesh")
    vn=$(vip $((base + 12)) bulk node "$bin/fogmesh")
    [ -n "$vb" ] && [ -n "$vw" ] && [ -n "$vn" ] && break
    sleep 0.1
  done
  [ -n "$vb" ] && [ -n "$vw" ] && [ -n "$vn" ] || { log "mesh $tag: no routes after 20 s"; return 1; }
  if [ "$mtls" = 1 ]; then
    "$BIN/tlspair" probe "127.0.0.1:$((base + 10))" >/dev/null 2>&1 || { log "mesh $tag: mesh port does not answer TLS"; return 1; }
  else
    ! "$BIN/tlspair" probe "127.0.0.1:$((base + 10))" >/dev/null 2>&1 || { log "mesh $tag: plaintext mesh answers TLS"; return 1; }
  fi
  BULK[$tag]="$vb $S_BULK"; WEB[$tag]="http://$vw:$S_WEB/"
  CPUPIDS[$tag]="$(pid_of "cli$tag") $(pid_of "srv$tag")"
  NODEVIP[$tag]="$vn $S_BULK"; NODEPID[$tag]=$(pid_of "srv$tag")
}

ENGINES=(direct p2)
[ "$MTLS" = 1 ] && ENGINES+=(p4)
idx=0
add_mesh() { # TAG BINDIR MTLS WINDOW LABEL
  log "starting mesh $1"
  mesh_up "$1" "$idx" "$2" "$3" "$4" || die "mesh $1 did not come up"
  idx=$((idx + 1)); ENGINES+=("$1"); LABEL[$1]=$5
}
if [ -n "$BASELINE_REV" ]; then
  add_mesh f0 "$BASE_BIN" 0 "" "(f0) two agents, plaintext mesh, baseline $BASE_NAME"
  [ "$MTLS" = 1 ] && add_mesh fm0 "$BASE_BIN" 1 "" "(fm0) two agents, mTLS mesh, baseline $BASE_NAME"
fi
add_mesh f "$BIN" 0 "" "(f) two agents, plaintext mesh, this tree (default: direct streams)"
[ "$MTLS" = 1 ] && add_mesh fm "$BIN" 1 "" "(fm) two agents, mTLS mesh, this tree (default window)"
for w in $WINDOWS; do
  wl="$((w / 1024)) KiB"; [ $((w % 1048576)) = 0 ] && wl="$((w / 1048576)) MiB"
  add_mesh "f-$w" "$BIN" 0 "$w" "(f-$wl) two agents, plaintext mesh, this tree, meshStreamWindow $wl"
  [ "$MTLS" = 1 ] && add_mesh "fm-$w" "$BIN" 1 "$w" "(fm-$wl) two agents, mTLS mesh, this tree, meshStreamWindow $wl"
done
ENGINES+=(agent1)
LABEL[agent1]="(b) one agent (node tier, splice), this tree"; BULK[agent1]=${NODEVIP[f]}; CPUPIDS[agent1]=${NODEPID[f]}
WEB[agent1]=""

for e in "${ENGINES[@]}"; do
  [ -z "${WEB[$e]}" ] || curl -fsS -o /dev/null --max-time 5 "${WEB[$e]}" || die "HTTP path $e (${WEB[$e]}) does not answer"
done

# ---------------------------------------------------------------- throughput
FAILED=()
declare -A RSSX CPB
for r in $(seq 1 "$ROUNDS"); do
  for e in $(order "$r" "${ENGINES[@]}"); do
    perfpid=
    if [ "$r" = "$ROUNDS" ] && [[ " $PERF_ENGINES " == *" $e "* ]]; then
      perf record -q -g -o "$TMP/perf-$e.data" -p "$(echo "${CPUPIDS[$e]}" | tr ' ' ',')" \
        -- sleep "$((IPERF_SECONDS - 1))" >"$TMP/perf-$e.log" 2>&1 &
      perfpid=$!
    fi
    iperf_run "$e" "$r"
    CPB[$e,$r]=$(calc "%.3f" "${TPCPU[$e,$r]}" "${TP[$e,$r]}" "a * 8 / 100 / b")
    [ "${CPB[$e,$r]}" != n/a ] || CPB[$e,$r]=fail
    if [ -n "$perfpid" ]; then
      wait "$perfpid" || true
      mkdir -p "$ROOT/bench/out"
      perf report -i "$TMP/perf-$e.data" --no-children --sort dso,symbol -g none --percent-limit 0.3 --stdio 2>/dev/null |
        grep -v '^$' | head -n 400 >"$ROOT/bench/out/twoagents-perf-$e.txt" || true
    fi
    sleep 0.5
  done
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
# Peak RSS (VmHWM) of each mesh's agents over the run, srv/cli.
for e in "${ENGINES[@]}"; do
  case $e in f*) RSSX[$e]="$(mb "$(hwm_kb "$(pid_of "srv$e")")")/$(mb "$(hwm_kb "$(pid_of "cli$e")")")" ;; esac
done

# ---------------------------------------------------------------- report
declare -A TPM CPUM CPBM
for e in "${ENGINES[@]}"; do
  TPM[$e]=$(median_of TP "$e" "$ROUNDS"); CPUM[$e]=$(median_of TPCPU "$e" "$ROUNDS")
  CPBM[$e]=$(median_of CPB "$e" "$ROUNDS")
done
ratio() { calc "%.2f" "${TPM[$1]:-n/a}" "${TPM[$2]:-n/a}" "a / b"; }
report_file twoagents
{
echo "# fogmesh two-agent bulk throughput, issue 14 ($T_START UTC)"
echo
machine_rows
echo "| baseline | ${BASELINE_REV:-none} ${BASE_NAME:+($BASE_NAME)} |"
echo "| load average (1/5/15 min) before / after | $LOAD_START / $LOAD_END |"
echo "| tools | iperf3 $IPERF_VERSION |"
echo
echo "iperf3 \`-t $IPERF_SECONDS -J\`, 1 stream, $ROUNDS rounds, engines interleaved (order rotated each round); the figure is the median."
echo
echo "Proxy CPU: the proxy processes' utime+stime over the iperf3 run (100 = one core; both agents, or A+B); CPU s/GB: that CPU per GB carried, per round, median (steadier than Gbit/s on a shared machine)."
echo
echo "| path | Gbit/s (median) | per round | proxy CPU % (median) | proxy CPU s per GB (median) | agents' peak RSS MB over the run (VmHWM, srv/cli) |"
echo "|---|---|---|---|---|---|"
for e in direct agent1 p2 p4 f0 fm0 f fm $(for w in $WINDOWS; do echo "f-$w fm-$w"; done); do
  [ -n "${TPM[$e]:-}" ] || continue
  cpu=$(calc "%.0f" "${CPUM[$e]}" 0 a); [ "$e" = direct ] && cpu="—"
  cpb=$(calc "%.3f" "${CPBM[$e]}" 0 a); [ "$e" = direct ] && cpb="—"
  echo "| ${LABEL[$e]} | $(calc "%.2f" "${TPM[$e]}" 0 a) | $(rounds_of TP "$e") | $cpu | $cpb | ${RSSX[$e]:-—} |"
done
echo
echo "| ratio | value |"
echo "|---|---|"
echo "| (f) two agents plaintext / (b) one agent (aim ≥ 0.75) | $(ratio f agent1) |"
echo "| (fm) two agents mTLS / (p4) TLS+yamux pair (aim ≥ 1.3) | $(ratio fm p4) |"
echo "| (f0) baseline plaintext / (b) one agent | $(ratio f0 agent1) |"
echo "| (fm0) baseline mTLS / (p4) TLS+yamux pair | $(ratio fm0 p4) |"
echo "| (f) / (f0): this tree / baseline, plaintext | $(ratio f f0) |"
echo "| (fm) / (fm0): this tree / baseline, mTLS | $(ratio fm fm0) |"
echo "| (f) plaintext / (p2) yamux pair | $(ratio f p2) |"
for w in $WINDOWS; do
  echo "| (f-$w) / (b) one agent; (fm-$w) / (p4) | $(ratio "f-$w" agent1); $(ratio "fm-$w" p4) |"
done
list_section "### Failures" "${FAILED[@]}"
} | tee "$REPORT"
log "report written to $REPORT"
[ ${#FAILED[@]} -eq 0 ] || exit 1
