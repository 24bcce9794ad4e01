#!/usr/bin/env bash
# fogmesh security benchmarks (issue 5), all on loopback, all in one run:
#   S1. TCP bulk throughput (iperf3, 1 stream) and S2. small-HTTP latency at a
#       fixed rate (fortio, QPS req/s, CONNS connections) through:
#         (a)  direct;
#         (p1)-(p4) bench/tlspair, a bare Go relay pair client → A → B →
#              backend, A→B: tcp (a TCP connection per proxied connection),
#              yamux (one session, internal/transport's config), tls (mutual
#              TLS 1.3 per proxied connection, resumption on), tls-yamux (one
#              mutual TLS 1.3 connection carrying the yamux session);
#         (f)  fogmesh, two agents, plaintext mesh port (yamux over TCP):
#              control plane and agents with -insecure (they are secure by
#              default);
#         (fm) fogmesh, two agents, mTLS mesh port: secure control plane,
#              agents joined with one-time tokens made through its admin API;
#              if the mesh does not come up or its mesh port does not answer
#              TLS 1.3, the row reads pending and no figure is printed.
#   S3. TLS 1.3 mutual handshake rate, full and resumed (go test -bench
#       ./bench/handshake), after everything else has stopped.
# Engines are interleaved within each round (order rotated each round). The
# report goes to stdout and to bench/out/security-<date>.md.
#
# Run standalone (`bash bench/security.sh`) or from bench/bench.sh with
# SECURITY=1. Needs go, iperf3, curl and fortio (installed with `go install
# fortio.org/fortio@v1.63.0` if missing); scripts/install-deps.sh bench
# installs the rest.
# Knobs (environment): ROUNDS (2), IPERF_SECONDS (4), LAT_SECONDS (5),
# QPS (2000), CONNS (16), SEC_BASE_PORT (32000: ports SEC_BASE_PORT..+99 on
# 127.0.0.1), SKIP_GOBENCH=1.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

# ROUNDS, IPERF_SECONDS, LAT_SECONDS, QPS, CONNS: defaults in lib.sh.
BASE=${SEC_BASE_PORT:-32000}
MESH_NS=sec
MODES=(tcp yamux tls tls-yamux)

# Ports on 127.0.0.1, all within BASE..BASE+99. A fogmesh mesh (control
# plane, srv and cli agents) takes 23 ports from its base (see mesh_up).
P_IPERF=$((BASE + 0)); P_HTTP=$((BASE + 1))
P_PAIR=$((BASE + 10))     # mode i: B at P_PAIR+3i, A's bulk and web listeners at +1, +2
P_MESH_PLAIN=$((BASE + 25)) P_MESH_MTLS=$((BASE + 50)) # +0..+22 each, see mesh_up
S_BULK=15201; S_WEB=18080

bench_init security

# ---------------------------------------------------------------- tools
need_tools go iperf3 curl
find_fortio
# shellcheck disable=SC2046 # a list of ports
ports_free SEC_BASE_PORT $(seq "$BASE" $((BASE + 99)))

# ---------------------------------------------------------------- build
log "building into $TMP/bin"
mkdir -p "$BIN"
build_host "$BIN/fogmesh" ./cmd/fogmesh
build_host "$BIN/fogmesh-agent" ./cmd/fogmesh-agent
build_host "$BIN/tlspair" ./bench/tlspair
build_helpers benchjson
"$BIN/tlspair" gen "$TMP/certs"

machine_info
T_START=$(date -u '+%Y-%m-%d %H:%M')

# ---------------------------------------------------------------- backends and relay pairs
log "starting backends and the relay pairs"
start_backends disabled
wait_port 127.0.0.1 "$P_IPERF" iperf
wait_port 127.0.0.1 "$P_HTTP" httpd

for i in "${!MODES[@]}"; do
  m=${MODES[$i]}; pb=$((P_PAIR + 3 * i))
  start "pair-b-$m" "$BIN/tlspair" b -mode "$m" -listen "127.0.0.1:$pb" -certs "$TMP/certs" \
    "127.0.0.1:$P_IPERF" "127.0.0.1:$P_HTTP"
  start "pair-a-$m" "$BIN/tlspair" a -mode "$m" -peer "127.0.0.1:$pb" -certs "$TMP/certs" \
    "127.0.0.1:$((pb + 1))" "127.0.0.1:$((pb + 2))"
  e=p$((i + 1))
  BULK[$e]="127.0.0.1 $((pb + 1))"; WEB[$e]="http://127.0.0.1:$((pb + 2))/"
  CPUPIDS[$e]="$(pid_of "pair-a-$m") $(pid_of "pair-b-$m")"
  wait_port 127.0.0.1 "$pb" "pair-b-$m"
  wait_port 127.0.0.1 "$((pb + 2))" "pair-a-$m"
done
LABEL[direct]="(a) direct"; BULK[direct]="127.0.0.1 $P_IPERF"; WEB[direct]="http://127.0.0.1:$P_HTTP/"; CPUPIDS[direct]=""
LABEL[p1]="(p1) Go pair, TCP per proxied connection"
LABEL[p2]="(p2) Go pair, one yamux session"
LABEL[p3]="(p3) Go pair, mutual TLS 1.3 per proxied connection"
LABEL[p4]="(p4) Go pair, one mutual TLS 1.3 connection carrying yamux"
LABEL[f]="(f) fogmesh, two agents, plaintext mesh"
LABEL[fm]="(fm) fogmesh, two agents, mTLS mesh"

# ---------------------------------------------------------------- fogmesh meshes
# mesh_up TAG BASE SRV_VIPS CLI_VIPS [HOOK]: a control plane ctlTAG and two
# agents, srvTAG (with the bulk and web workloads) and cliTAG (none), on
# 127.0.0.1:BASE..BASE+22; the cli agent reaches the workloads through the
# srv agent's mesh port. HOOK, if given, is called as `HOOK ROLE CTL_ADMIN_PORT
# CONFIG_FILE` for ROLE srv and cli after the control plane is up and the
# agent's config is written; it may append to the config and set the array
# AGENT_FLAGS (extra agent flags; without HOOK they are -insecure), and
# returns non-zero if it cannot. CTL_STATE is the control plane's state dir
# and ADMIN_FLAGS the admin CLI flags (-server...) while HOOK runs. Each
# mesh has its own control plane, so the two meshes never share endpoints.
# Sets MESH_BULK[TAG], MESH_WEB[TAG] (the cli agent's VIP addresses),
# MESH_PIDS[TAG] (the two agents) and MESH_SRV_MESH[TAG] (srv's mesh port).
declare -A MESH_BULK MESH_WEB MESH_PIDS MESH_SRV_MESH
mesh_up() {
  local tag=$1 base=$2 srv_vips=$3 cli_vips=$4 hook=${5:-}
  local p_adm=$base p_sync=$((base + 1))
  local srv_mesh=$((base + 10)) srv_dns=$((base + 11)) srv_adm=$((base + 12))
  local cli_mesh=$((base + 20)) cli_dns=$((base + 21)) cli_adm=$((base + 22))
  # Control plane and agents are secure by default: the plaintext mesh (no
  # HOOK) runs them with -insecure; with HOOK, mtls_control_flags gives the
  # control plane's flags and mtls_admin_flags the admin CLI's (ADMIN_FLAGS).
  local ctl_flags=(-insecure)
  [ -n "$hook" ] && read -r -a ctl_flags <<<"$(mtls_control_flags)"
  CTL_STATE=$TMP/ctl$tag
  start_control "ctl$tag" "$CTL_STATE" "$p_adm" "$p_sync" "${ctl_flags[@]}"
  await_port 127.0.0.1 "$p_adm" "ctl$tag" || return 1
  ADMIN_FLAGS=(-server "http://127.0.0.1:$p_adm")
  if [ -n "$hook" ]; then mtls_admin_flags "$p_adm" || return 1; fi
  services_yaml "bulk:tcp:$S_BULK" "web:http:$S_WEB" >"$TMP/services$tag.yaml"
  "$BIN/fogmesh" apply "${ADMIN_FLAGS[@]}" -f "$TMP/services$tag.yaml" >&2 || return 1
  # Health checks off (iperf3 treats every connection as a test), as in bench.sh.
  agent_config "srv$tag" "$p_sync" "$srv_mesh" "$srv_dns" "$srv_adm" "$srv_vips" \
    "bulk:tcp:$P_IPERF" "web:http:$P_HTTP" >"$TMP/srv$tag.yaml"
  agent_config "cli$tag" "$p_sync" "$cli_mesh" "$cli_dns" "$cli_adm" "$cli_vips" >"$TMP/cli$tag.yaml"
  local role
  for role in srv cli; do
    AGENT_FLAGS=(-insecure)
    if [ -n "$hook" ]; then "$hook" "$role" "$p_adm" "$TMP/$role$tag.yaml" || return 1; fi
    start "$role$tag" "$BIN/fogmesh-agent" -config "$TMP/$role$tag.yaml" "${AGENT_FLAGS[@]}"
  done
  await_port 127.0.0.1 "$srv_adm" "srv$tag" || return 1
  await_port 127.0.0.1 "$cli_adm" "cli$tag" || return 1
  local i vb= vw=
  for i in $(seq 1 150); do
    vb=$(vip "$cli_adm" bulk); vw=$(vip "$cli_adm" web)
    [ -n "$vb" ] && [ -n "$vw" ] && break
    sleep 0.1
  done
  [ -n "$vb" ] && [ -n "$vw" ] || {
    dump_routes "$cli_adm"
    log "mesh $tag: the cli agent did not route bulk and web within 15 s"
    return 1
  }
  MESH_BULK[$tag]="$vb $S_BULK"; MESH_WEB[$tag]="http://$vw:$S_WEB/"
  MESH_PIDS[$tag]="$(pid_of "cli$tag") $(pid_of "srv$tag")"; MESH_SRV_MESH[$tag]=$srv_mesh
}

# ================================================================ fill in when pki lands
# The (fm) row: a second, secure control plane (no -insecure) and agent pair
# (mesh_up with the hook mtls_agent_setup), a check that the srv agent's mesh
# port really answers a TLS 1.3 handshake, then the rows, ratios and aims.
#
# mtls_supported: true if this build's agent looks like it has mTLS on the
# mesh port (its flags mention join or TLS). The help is captured first:
# `--help` exits 2, which under pipefail would fail a pipe into grep.
mtls_supported() {
  local help
  help=$("$BIN/fogmesh" agent --help 2>&1 || true)
  grep -qiE 'join|tls' <<<"$help"
}
# mtls_control_flags: prints extra `fogmesh control` flags for the mTLS mesh:
# none, the control plane is secure by default (a CA in its state dir, HTTPS
# admin API, bootstrap admin token in STATE/admin.token, bundle in
# STATE/ca.pem).
mtls_control_flags() { :; }
# mtls_admin_flags CTL_ADMIN_PORT: waits (up to 20 s) until the secure control
# plane has written STATE/admin.token and STATE/ca.pem and its HTTPS admin API
# answers, then sets ADMIN_FLAGS to reach it (-server https://... -ca -token).
mtls_admin_flags() {
  local i
  for i in $(seq 1 200); do
    if [ -s "$CTL_STATE/admin.token" ] && [ -s "$CTL_STATE/ca.pem" ] &&
       curl -fsS -o /dev/null --max-time 2 --cacert "$CTL_STATE/ca.pem" "https://127.0.0.1:$1/healthz" 2>/dev/null; then
      ADMIN_FLAGS=(-server "https://127.0.0.1:$1" -ca "$CTL_STATE/ca.pem" -token "$(cat "$CTL_STATE/admin.token")")
      return 0
    fi
    sleep 0.1
  done
  log "secure control plane on 127.0.0.1:$1: no admin token, bundle or HTTPS /healthz after 20 s"
  return 1
}
# mtls_agent_setup ROLE CTL_ADMIN_PORT CONFIG_FILE: makes the agent ROLE (srv
# or cli) run its mesh port with mTLS: a one-time join token for the agent's
# site, made through the secure admin API, passed as -join-token (the agent
# then makes its node key, gets its certificate over TLS to the sync port and
# runs the sync stream and the mesh port with mutual TLS 1.3).
mtls_agent_setup() {
  local site tok
  site=$(awk -F'site: *' '/^node:/ {split($2, a, /[,}]/); print a[1]; exit}' "$3")
  [ -n "$site" ] || { log "$3: no node site"; return 1; }
  tok=$("$BIN/fogmesh" token create -site "$site" -ttl 1h "${ADMIN_FLAGS[@]}" 2>"$TMP/token-$1.log") || {
    log "token create for $1 (site $site) failed: $(tail -n 2 "$TMP/token-$1.log")"
    return 1
  }
  AGENT_FLAGS=(-join-token "$tok")
}
# fogmesh_mtls_up: brings up the mTLS mesh and sets BULK[fm], WEB[fm],
# CPUPIDS[fm]; returns 1 with MTLS_NOTE set when it cannot, and then no
# (fm) figure is printed.
MTLS_NOTE=
fogmesh_mtls_up() {
  if ! mtls_supported; then
    MTLS_NOTE="mTLS row: not available in this build (fogmesh agent --help mentions neither join nor TLS)"
    return 1
  fi
  if ! mesh_up m "$P_MESH_MTLS" 127.243.0.0/16 127.244.0.0/16 mtls_agent_setup; then
    MTLS_NOTE="mTLS row: not measured: the secure mesh (join tokens, mTLS) did not come up (see the log above)"
    return 1
  fi
  local probe
  if ! probe=$("$BIN/tlspair" probe "127.0.0.1:${MESH_SRV_MESH[m]}" 2>&1); then
    MTLS_NOTE="mTLS row: not measured: the srv agent's mesh port does not answer a TLS 1.3 handshake ($probe)"
    return 1
  fi
  MTLS_NOTE="mTLS mesh port: $probe"
  BULK[fm]=${MESH_BULK[m]}; WEB[fm]=${MESH_WEB[m]}; CPUPIDS[fm]=${MESH_PIDS[m]}
}
# ================================================================

log "starting fogmesh (plaintext mesh)"
mesh_up p "$P_MESH_PLAIN" 127.241.0.0/16 127.242.0.0/16 || die "plaintext mesh did not come up"
BULK[f]=${MESH_BULK[p]}; WEB[f]=${MESH_WEB[p]}; CPUPIDS[f]=${MESH_PIDS[p]}
# (f) must stay plaintext (-insecure): its mesh port must not answer TLS.
"$BIN/tlspair" probe "127.0.0.1:${MESH_SRV_MESH[p]}" >/dev/null 2>&1 &&
  die "the plaintext mesh's srv agent answers TLS on its mesh port: -insecure did not take"
ENGINES=(direct p1 p2 p3 p4 f)
log "starting fogmesh (mTLS mesh), if this build has it"
if fogmesh_mtls_up; then
  ENGINES+=(fm)
else
  # Stop whatever a half-started mTLS mesh left running.
  half=()
  for n in ctlm srvm clim; do v="PID_$n"; [ -n "${!v:-}" ] && half+=("${!v}"); done
  stop_pids "${half[@]}"
fi
log "$MTLS_NOTE"

FAILED=()
for e in "${ENGINES[@]}"; do
  curl -fsS -o /dev/null --max-time 5 "${WEB[$e]}" || die "HTTP path $e (${WEB[$e]}) does not answer"
done

# ---------------------------------------------------------------- S1. throughput
iperf_rounds "${ENGINES[@]}"

# ---------------------------------------------------------------- S2. latency
for r in $(seq 1 "$ROUNDS"); do
  for e in $(order "$r" "${ENGINES[@]}"); do
    fixed_rate "$e" "$r" "$ROUNDS"
    sleep 0.5
  done
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# The pairs print their connection and handshake counts on SIGTERM.
log "stopping everything"
stop_pids "${PIDS[@]}"
PAIR_COUNTS=$(for m in "${MODES[@]}"; do tail -n 1 "$TMP/pair-a-$m.log" 2>/dev/null; done)

# ---------------------------------------------------------------- S3. handshakes
GOBENCH="(skipped: SKIP_GOBENCH=1)"
declare -A HS HSCPU
if [ "${SKIP_GOBENCH:-0}" != 1 ]; then
  log "go test -bench BenchmarkTLSHandshake ./bench/handshake"
  if GOBENCH=$(timeout 300 go test -run '^$' -bench BenchmarkTLSHandshake -benchtime 2s ./bench/handshake 2>&1); then
    while read -r name rate cpu; do HS[$name]=$rate; HSCPU[$name]=$cpu; done < <(
      awk '/^BenchmarkTLSHandshake\// {
             n = $1; sub(/^BenchmarkTLSHandshake\//, "", n); sub(/-[0-9]+$/, "", n); r = ""; c = ""
             for (i = 2; i < NF; i++) { if ($(i + 1) == "handshakes/s") r = $i; if ($(i + 1) == "cpu-µs/op") c = $i }
             if (r != "" && c != "") print n, r, c
           }' <<<"$GOBENCH")
  else
    FAILED+=("go test -bench ./bench/handshake")
  fi
fi

# ---------------------------------------------------------------- report

declare -A TPM CPUM L50 L99 L999 Q
ALL=(direct p1 p2 p3 p4 f fm)
for e in "${ENGINES[@]}"; do
  TPM[$e]=$(median_of TP "$e" "$ROUNDS"); CPUM[$e]=$(median_of TPCPU "$e" "$ROUNDS")
  L50[$e]=$(median_of P50 "$e" "$ROUNDS"); L99[$e]=$(median_of P99 "$e" "$ROUNDS")
  L999[$e]=$(median_of P999 "$e" "$ROUNDS"); Q[$e]=$(median_of AQPS "$e" "$ROUNDS")
done
for e in "${ALL[@]}"; do
  [ -n "${TPM[$e]:-}" ] || { TPM[$e]=pending; CPUM[$e]=pending; L50[$e]=pending; L99[$e]=pending; L999[$e]=pending; Q[$e]=pending; }
done
add() { # ARRAY ENGINE: added vs direct
  local -n arr=$1
  [ "$2" = direct ] && { echo "—"; return; }
  calc "%+.3f" "${arr[$2]}" "${arr[direct]}" "a - b"
}
gbps() { [ "$1" = pending ] && echo "pending" || calc "%.2f" "$1" 0 a; }
hsrate() { [ -n "${HS[$1]:-}" ] && printf '%.0f' "${HS[$1]}" || echo "n/a"; }
hscpu() { [ -n "${HSCPU[$1]:-}" ] && printf '%.0f' "${HSCPU[$1]}" || echo "n/a"; }
hspercore() { [ -n "${HSCPU[$1]:-}" ] && awk -v c="${HSCPU[$1]}" 'BEGIN {printf "%.0f", 1e6 / c}' || echo "n/a"; }

report_file security
{
echo "# fogmesh security benchmarks, issue 5 ($T_START UTC)"
echo
machine_rows
echo "| load average (1/5/15 min) before / after the S1–S2 runs | $LOAD_START / $LOAD_END (other jobs on the machine perturb every figure) |"
echo "| tools | iperf3 $IPERF_VERSION, fortio $FORTIO_V |"
echo
echo "Everything on loopback, no CPU pinning. Rounds: $ROUNDS, engines interleaved (order rotated each round); the figure is the median of the rounds."
echo "Relay pair: \`bench/tlspair\` (client → A → B → backend, io.Copy both ways, internal/transport's yamux config, ECDSA P-256 certificates made at run time, TLS 1.3 with mutual auth; (p3) resumes sessions from tickets)."
echo
echo "### S1. TCP bulk throughput (iperf3, 1 stream, ${IPERF_SECONDS} s)"
echo
echo "| path | Gbit/s (median) | per round | proxy CPU % (median; A+B or both agents, 100 = one core) |"
echo "|---|---|---|---|"
for e in "${ALL[@]}"; do
  if [ "${TPM[$e]}" = pending ]; then echo "| ${LABEL[$e]} | pending | — | — |"; continue; fi
  cpu="${CPUM[$e]}"; [ "$e" = direct ] && cpu="—"
  [ "$cpu" != "—" ] && [ "$cpu" != fail ] && cpu=$(printf '%.0f' "$cpu")
  echo "| ${LABEL[$e]} | $(gbps "${TPM[$e]}") | $(rounds_of TP "$e") | $cpu |"
done
echo
echo "| ratio | value |"
echo "|---|---|"
echo "| (f) fogmesh plaintext / (p2) yamux pair | $(calc "%.2f" "${TPM[f]}" "${TPM[p2]}" "a / b") |"
echo "| (fm) fogmesh mTLS / (p4) TLS+yamux pair | $(calc "%.2f" "${TPM[fm]}" "${TPM[p4]}" "a / b") |"
echo "| (fm) fogmesh mTLS / (f) fogmesh plaintext | $(calc "%.2f" "${TPM[fm]}" "${TPM[f]}" "a / b") |"
echo "| (p3) TLS per connection / (p1) TCP per connection | $(calc "%.2f" "${TPM[p3]}" "${TPM[p1]}" "a / b") |"
echo "| (p4) TLS+yamux / (p2) yamux | $(calc "%.2f" "${TPM[p4]}" "${TPM[p2]}" "a / b") |"
echo "| (p2) yamux / (p1) TCP per connection | $(calc "%.2f" "${TPM[p2]}" "${TPM[p1]}" "a / b") |"
echo
echo "### S2. Small-HTTP latency at a fixed rate (fortio, $QPS req/s, $CONNS connections, ${LAT_SECONDS} s, keep-alive)"
echo
echo "Backend: fortio server (empty 200). Times in ms; added = path − direct, same run."
echo
echo "| path | p50 | p99 | p99.9 | p50 per round | p99 per round | achieved req/s | added p50 | added p99 |"
echo "|---|---|---|---|---|---|---|---|---|"
for e in "${ALL[@]}"; do
  if [ "${L50[$e]}" = pending ]; then echo "| ${LABEL[$e]} | pending | pending | pending | — | — | — | — | — |"; continue; fi
  echo "| ${LABEL[$e]} | ${L50[$e]} | ${L99[$e]} | ${L999[$e]} | $(rounds_of P50 "$e") | $(rounds_of P99 "$e") | ${Q[$e]%.*} | $(add L50 "$e") | $(add L99 "$e") |"
done
echo
echo "### S3. TLS 1.3 mutual handshakes (ECDSA P-256), loopback TCP, one at a time, client and server in one process"
echo
echo '`go test -run '"'"'^$'"'"' -bench BenchmarkTLSHandshake -benchtime 2s ./bench/handshake` (after the S1–S2 processes stopped)'
echo
echo "Wall-clock rate (one handshake at a time, so it also waits for CPUs other jobs hold) and the process's CPU time per handshake,"
echo "client and server together (less sensitive to the machine's load); per core-second = 10⁶ / CPU µs."
echo
echo "| key exchange | handshake | handshakes/s | CPU µs per handshake (both ends) | handshakes per core-second |"
echo "|---|---|---|---|---|"
for k in X25519MLKEM768 X25519; do
  for h in full resumed; do
    echo "| $k$([ $k = X25519MLKEM768 ] && echo " (Go default)") | $h$([ $h = resumed ] && echo " (session ticket)") | $(hsrate "$k/$h") | $(hscpu "$k/$h") | $(hspercore "$k/$h") |"
  done
  echo "| $k | resumed / full | $(calc "%.2f" "${HS[$k/resumed]:-}" "${HS[$k/full]:-}" "a / b") | $(calc "%.2f" "${HSCPU[$k/resumed]:-}" "${HSCPU[$k/full]:-}" "a / b") | |"
done
echo
echo "### Aims (issue 5)"
echo
echo "| aim | this run | |"
echo "|---|---|---|"
echo "| two-agent mTLS path within 10% of the bare TLS 1.3 pair with the same multiplexing: (fm)/(p4) ≥ 0.90 | $(calc "%.2f" "${TPM[fm]}" "${TPM[p4]}" "a / b") | $(met "$(calc "%d" "${TPM[fm]}" "${TPM[p4]}" "a >= 0.9 * b")") |"
echo "| (for comparison) plaintext two-agent path vs the yamux pair: (f)/(p2) ≥ 0.90 | $(calc "%.2f" "${TPM[f]}" "${TPM[p2]}" "a / b") | $(met "$(calc "%d" "${TPM[f]}" "${TPM[p2]}" "a >= 0.9 * b")") |"
echo "| handshakes off the per-request path (cost of one, S3, default key exchange) | CPU per handshake, both ends: full $(hscpu X25519MLKEM768/full) µs, resumed $(hscpu X25519MLKEM768/resumed) µs; (p4) and the agents hold one TLS connection per peer, (p3) resumes (counters below) | — |"
echo
echo "$MTLS_NOTE."
echo
echo "Relay pair counters (A side, at exit):"
echo
echo '```'
echo "$PAIR_COUNTS"
echo '```'
echo
echo '```'
echo "$GOBENCH"
echo '```'
list_section "### Failures" "${FAILED[@]}"
} | tee "$REPORT"
log "report written to $REPORT"
[ ${#FAILED[@]} -eq 0 ] || exit 1
