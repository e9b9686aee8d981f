#!/usr/bin/env bash
# What recording metrics costs the proxy: two real daemons from the same
# build, one with metrics on (the default) and one with `metrics = false`
# in its config file, each in front of its own instance of the same app
# deployed through `git push`.
#
#   wrk (CPU $WRK_CPU) ──► cygni serve (metrics on)  ──► app instance (nginx, fixed 200)
#                     └──► cygni serve (metrics off) ──► app instance (nginx, fixed 200)
#                          (both daemons and both apps on CPU $SERVER_CPU)
#
# Scenarios, each run for both sides, alternating (the order flips every
# round), ROUNDS times in one invocation; medians and ratios at the end:
#   http-c50 http-c200  keep-alive, 50 and 200 connections
#   http-close          a new connection per request, 50 at a time
# Figures per run: req/s, p99, and CPU per request of the daemon process
# (all threads, /proc/PID/stat).
#
# Usage: scripts/bench-metrics.sh          (from the repository root)
# Knobs: ROUNDS=3 DURATION=10 WRK_CPU=0 SERVER_CPU=1
#        SCENARIOS="http-c50 http-c200 http-close" CYGNI_BIN=path KEEP=1
#
# Installs nginx, wrk, curl, openssl and sqlite3 when missing (needs root).
# Everything listens on 127.0.0.1; every wait and wrk run is bounded; all
# processes it starts are stopped on exit.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WRK_CPU=${WRK_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
SCENARIOS=${SCENARIOS:-"http-c50 http-c200 http-close"}
APP=bench

cd "$(dirname "$0")/.."
[ -f Cargo.toml ] || { echo "run from the Cygni repository" >&2; exit 1; }
# shellcheck source=scripts/lib-bench-daemon.sh disable=SC1091
. scripts/lib-bench-daemon.sh

bench_tools
if [ "$(nproc)" -lt 2 ]; then
    echo "warning: only $(nproc) CPU; wrk and the servers will share it" >&2
    WRK_CPU=0; SERVER_CPU=0
fi
bench_build

ROOT=$(mktemp -d /tmp/cygni-bench-metrics.XXXXXX)
chmod 755 "$ROOT"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ -n "${KEEP:-}" ]; then echo "kept $ROOT"; else rm -rf "$ROOT"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
echo "load before the run: $(cut -d' ' -f1-3 /proc/loadavg)"

# Two daemons side by side; the metrics listener on a free port for both.
export CYGNI_METRICS_LISTEN=127.0.0.1:0
declare -A PID PORT BACKEND
for side in on off; do
    WORK="$ROOT/$side"
    mkdir -p "$WORK"
    bench_daemon_init
    if [ "$side" = off ]; then
        echo "metrics = false" >"$WORK/cygni.toml"
        export CYGNI_CONFIG="$WORK/cygni.toml"
    fi
    daemon_start
    unset CYGNI_CONFIG
    deploy_app "$APP"
    PID[$side]=$DAEMON_PID
    PORT[$side]=$HTTP_PORT
    BACKEND[$side]=$(pgrep -f -- "-c $APPS_DIR/$APP.${APP_PORT[$APP]}/nginx.conf" | head -1)
    [ -n "${BACKEND[$side]}" ] || die "cannot find the $side side's app"
    echo "metrics $side: daemon pid ${PID[$side]}, http 127.0.0.1:${PORT[$side]}, app pid ${BACKEND[$side]}"
done
# The metrics listener's port, from the daemon's own `metrics:` line.
METRICS_ON=$(awk '$1 == "metrics:" { split($2, a, ":"); print a[2] }' "$ROOT/on/daemon.out" | tail -1)
[ -n "$METRICS_ON" ] || die "the metrics-on daemon printed no metrics address"

cat >"$ROOT/loopback.lua" <<'EOF'
function wrk.resolve(host, service)
    wrk.addrs = wrk.lookup("127.0.0.1", service)
end
EOF
url() { echo "http://$APP.localhost:${PORT[$1]}/"; }
wrk_args() { # scenario
    case $1 in
    *-c50) echo "-c50" ;;
    *-c200) echo "-c200" ;;
    http-close) echo "-c50 -H Connection:close" ;;
    *) die "unknown scenario $1" ;;
    esac
}
for s in $SCENARIOS; do wrk_args "$s" >/dev/null; done

to_us() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) print n; else if (v ~ /ms$/) print n * 1000;
        else if (v ~ /s$/) print n * 1000000; else print n }'
}
HZ=$(getconf CLK_TCK)
RESULTS="$ROOT/results"
: >"$RESULTS"
run_one() { # scenario side round
    local s=$1 t=$2 r=$3 out="$ROOT/wrk-$1-$2-$3.txt" p0 p1
    p0=$(cpu_ticks "${PID[$t]}")
    # shellcheck disable=SC2046
    timeout $((DURATION + 30)) taskset -c "$WRK_CPU" wrk -t1 $(wrk_args "$s") -d"${DURATION}s" \
        --latency -s "$ROOT/loopback.lua" "$(url "$t")" >"$out"
    p1=$(cpu_ticks "${PID[$t]}")
    local rps p99 reqs errors
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    p99=$(to_us "$(awk '$1 == "99%" { print $2 }' "$out")")
    reqs=$(awk '/requests in/ { print $1 }' "$out")
    errors=$(awk '/Non-2xx|Socket errors/ { printf "%s ", $0 }' "$out")
    if [ -z "$rps" ] || [ -z "$reqs" ]; then die "could not parse wrk output: $(cat "$out")"; fi
    awk -v s="$s" -v t="$t" -v r="$r" -v rps="$rps" -v p99="$p99" -v reqs="$reqs" -v hz="$HZ" \
        -v pt=$((p1 - p0)) -v err="$errors" -v f="$RESULTS" 'BEGIN {
        pus = pt / hz * 1e6 / reqs
        printf "%-10s metrics %-3s round %d: %8.0f req/s  p99 %7.0f us  cpu/req %5.2f us  %s\n",
            s, t, r, rps, p99, pus, err
        printf "%s %s %s %s %s %s\n", s, t, r, rps, p99, pus >> f
    }'
}

echo "warming up ..."
for t in on off; do
    timeout 30 taskset -c "$WRK_CPU" wrk -t1 -c50 -d2s -s "$ROOT/loopback.lua" "$(url $t)" >/dev/null
done
echo "$ROUNDS rounds x ${DURATION}s per scenario and side; wrk on CPU $WRK_CPU, servers on CPU $SERVER_CPU"
for r in $(seq 1 "$ROUNDS"); do
    for s in $SCENARIOS; do
        if [ $((r % 2)) -eq 0 ]; then order="off on"; else order="on off"; fi
        for t in $order; do run_one "$s" "$t" "$r"; done
    done
done
echo "load after the run: $(cut -d' ' -f1-3 /proc/loadavg)"
# What the metrics-on side counted, as a check that it recorded at all.
counted=$(curl -s -m 10 "http://127.0.0.1:$METRICS_ON/metrics" |
    awk -v app="$APP" '$1 ~ "^cygni_proxy_requests_total\\{app=\"" app "\"" { n += $2 } END { print n + 0 }')
echo "the metrics-on daemon counted $counted requests to $APP"

median() { sort -n | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
med() { awk -v s="$1" -v t="$2" -v c="$3" '$1 == s && $2 == t { print $c }' "$RESULTS" | median; }
echo
echo "medians of $ROUNDS rounds (cpu: the daemon process, µs per request; ratio = on / off)"
printf "| %-10s | %9s | %9s | %5s | %8s | %8s | %5s | %7s | %7s | %5s |\n" scenario \
    "on r/s" "off r/s" ratio "on p99" "off p99" ratio "on cpu" "off cpu" ratio
printf "|%s|\n" "------------|-----------|-----------|-------|----------|----------|-------|---------|---------|-------"
for s in $SCENARIOS; do
    awk -v s="$s" -v cr="$(med "$s" on 4)" -v nr="$(med "$s" off 4)" \
        -v cp="$(med "$s" on 5)" -v np="$(med "$s" off 5)" \
        -v cc="$(med "$s" on 6)" -v nc="$(med "$s" off 6)" 'BEGIN {
        printf "| %-10s | %9.0f | %9.0f | %5.2f | %6.0fus | %6.0fus | %5.2f | %7.2f | %7.2f | %5.2f |\n",
            s, cr, nr, cr / nr, cp, np, cp / np, cc, nc, cc / nc }'
done
