#!/usr/bin/env bash
# Benchmark the real daemon's proxy against nginx, both in front of the
# same app instance deployed through `git push`.
#
#   wrk (CPU $WRK_CPU) ──► cygni serve --runtime local (HTTP + HTTPS) ─┐
#                     └──► nginx, 1 worker (HTTP + HTTPS)           ──┴──► the app's instance:
#                          (daemon, app and nginx all on CPU $SERVER_CPU)    nginx, 1 worker, fixed 200
#
# The app is a Procfile app whose `web` is nginx listening on $PORT,
# pushed with git over the daemon's SSH server; the nginx proxy points at
# the port that very instance got. Fair set-up per PERFORMANCE.md: upstream
# keepalive 256, proxy_http_version 1.1, Connection "", access logs off on
# both, the same forwarded headers. HTTPS: the same self-signed ECDSA P-256
# certificate for both (stored in the daemon's database as ACME would),
# TLS 1.3, session cache and tickets on both.
#
# Scenarios, each run for both targets, alternating, ROUNDS times in one
# invocation (medians and ratios printed at the end):
#   http-c50 http-c200    keep-alive, 50 and 200 connections
#   https-c50 https-c200  the same over TLS 1.3
#   http-close            a new connection per request (Connection: close), 50 at a time
# Figures per run: req/s, p99, and CPU per request of the proxy process
# (all threads, /proc/PID/stat), plus the app instance's.
#
# Usage: scripts/bench-daemon.sh           (from the repository root)
# Knobs: ROUNDS=3 DURATION=10 WRK_CPU=0 SERVER_CPU=1
#        SCENARIOS="http-c50 http-c200 https-c50 https-c200 http-close"
#        CYGNI_BIN=path (skip the build)  KEEP=1 (keep the work dir)
#        PERF_OUT=dir (also profile one http-c50 run of each with perf)
#
# Installs nginx, wrk, openssl and sqlite3 with apt-get when missing (needs
# root). Everything listens on 127.0.0.1; every wait and every wrk run is
# bounded; all processes it starts are stopped on exit.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WRK_CPU=${WRK_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
SCENARIOS=${SCENARIOS:-"http-c50 http-c200 https-c50 https-c200 http-close"}
APP=bench
TLS_HOST=bench.example.com # a custom domain: local names get no certificate

cd "$(dirname "$0")/.."
[ -f Cargo.toml ] || { echo "run from the Cygni repository" >&2; exit 1; }
# shellcheck source=scripts/lib-bench-daemon.sh disable=SC1091
. scripts/lib-bench-daemon.sh

bench_tools
ncpu=$(nproc)
if [ "$ncpu" -lt 2 ]; then
    echo "warning: only $ncpu CPU; wrk and the servers will share it" >&2
    WRK_CPU=0; SERVER_CPU=0
fi
bench_build

WORK=$(mktemp -d /tmp/cygni-bench-daemon.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ -n "${KEEP:-}" ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bench_daemon_init
echo "load before the run: $(cut -d' ' -f1-3 /proc/loadavg)"

# --- the daemon and the app -----------------------------------------------------
daemon_start
deploy_app "$APP"
cygni_ssh domains:add "$APP" "$TLS_HOST" >/dev/null || die "domains:add failed"
# Certificates are loaded at start-up: store one, restart (the local
# runtime's instances stop with the daemon and reconcile starts them again).
daemon_stop
install_cert "$TLS_HOST" "$APP"
rm -f "$APPS_DIR/$APP.port"
daemon_start
wait_http "$HTTP_PORT" "$APP.localhost"
for _ in $(seq 1 100); do [ -s "$APPS_DIR/$APP.port" ] && break; sleep 0.1; done
# shellcheck disable=SC2004 # APP_PORT is an associative array: $APP is a key
APP_PORT[$APP]=$(cat "$APPS_DIR/$APP.port")
BACKEND_PID=$(pgrep -f -- "-c $APPS_DIR/$APP.${APP_PORT[$APP]}/nginx.conf" | head -1)
[ -n "$BACKEND_PID" ] || die "cannot find the app's nginx"
echo "daemon pid $DAEMON_PID, app instance on 127.0.0.1:${APP_PORT[$APP]} (pid $BACKEND_PID)"

# --- the nginx proxy in front of the same instance ---------------------------------
NGINX_HTTP=$(free_port)
NGINX_HTTPS=$(free_port)
mkdir -p "$WORK/ngx/tmp"
cat >"$WORK/ngx/proxy.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
error_log $WORK/ngx/error.log warn;
pid $WORK/ngx/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/ngx/tmp/body; proxy_temp_path $WORK/ngx/tmp/proxy;
    fastcgi_temp_path $WORK/ngx/tmp/fcgi; uwsgi_temp_path $WORK/ngx/tmp/uwsgi; scgi_temp_path $WORK/ngx/tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream app {
        server 127.0.0.1:${APP_PORT[$APP]};
        keepalive 256;
        keepalive_requests 1000000;
    }
    ssl_protocols TLSv1.3;
    ssl_certificate $WORK/cert.pem;
    ssl_certificate_key $WORK/key.pem;
    ssl_session_cache shared:SSL:10m;
    ssl_session_tickets on;
    server {
        listen 127.0.0.1:$NGINX_HTTP;
        listen 127.0.0.1:$NGINX_HTTPS ssl;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # The same headers Cygni sets.
            proxy_set_header Host \$http_host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$http_host;
            proxy_set_header X-Request-Id \$request_id;
        }
    }
}
EOF
taskset -c "$SERVER_CPU" "$NGINX" -e "$WORK/ngx/error.log" -p "$WORK/ngx" -c "$WORK/ngx/proxy.conf" &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
wait_http "$NGINX_HTTP" "$APP.localhost"

# wrk connects to what its URL names; this keeps the URL's host (SNI and
# Host) while every connection goes to 127.0.0.1.
cat >"$WORK/loopback.lua" <<'EOF'
function wrk.resolve(host, service)
    wrk.addrs = wrk.lookup("127.0.0.1", service)
end
EOF

declare -A PID
PID[cygni]=$DAEMON_PID
PID[nginx]=$NGINX_PID
url() { # target scenario
    case "$1:$2" in
    cygni:https*) echo "https://$TLS_HOST:$HTTPS_PORT/" ;;
    cygni:*) echo "http://$APP.localhost:$HTTP_PORT/" ;;
    nginx:https*) echo "https://$TLS_HOST:$NGINX_HTTPS/" ;;
    nginx:*) echo "http://$APP.localhost:$NGINX_HTTP/" ;;
    esac
}
wrk_args() { # scenario
    case $1 in
    *-c50) echo "-c50" ;;
    *-c200) echo "-c200" ;;
    http-close) echo "-c50 -H Connection:close" ;;
    *) die "unknown scenario $1" ;;
    esac
}
for s in $SCENARIOS; do wrk_args "$s" >/dev/null; done
for t in cygni nginx; do
    curl -fsS -o /dev/null --cacert "$WORK/cert.pem" --resolve "$TLS_HOST:${HTTPS_PORT}:127.0.0.1" \
        --resolve "$TLS_HOST:${NGINX_HTTPS}:127.0.0.1" "$(url $t https)" ||
        die "$t does not answer over HTTPS"
done

to_us() { # wrk latency like 1.23ms / 456.00us / 1.02s -> microseconds
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) print n; else if (v ~ /ms$/) print n * 1000;
        else if (v ~ /s$/) print n * 1000000; else print n }'
}
HZ=$(getconf CLK_TCK)
RESULTS="$WORK/results"
: >"$RESULTS"
run_one() { # scenario target round
    local s=$1 t=$2 r=$3 out="$WORK/wrk-$1-$2-$3.txt" p0 p1 b0 b1
    p0=$(cpu_ticks "${PID[$t]}"); b0=$(cpu_ticks "$BACKEND_PID")
    # shellcheck disable=SC2046
    timeout $((DURATION + 30)) taskset -c "$WRK_CPU" wrk -t1 $(wrk_args "$s") -d"${DURATION}s" \
        --latency -s "$WORK/loopback.lua" "$(url "$t" "$s")" >"$out"
    p1=$(cpu_ticks "${PID[$t]}"); b1=$(cpu_ticks "$BACKEND_PID")
    local rps p99 reqs errors
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    p99=$(to_us "$(awk '$1 == "99%" { print $2 }' "$out")")
    reqs=$(awk '/requests in/ { print $1 }' "$out")
    errors=$(awk '/Non-2xx|Socket errors/ { printf "%s ", $0 }' "$out")
    if [ -z "$rps" ] || [ -z "$reqs" ]; then
        die "could not parse wrk output: $(cat "$out")"
    fi
    awk -v s="$s" -v t="$t" -v r="$r" -v rps="$rps" -v p99="$p99" -v reqs="$reqs" -v hz="$HZ" \
        -v pt=$((p1 - p0)) -v bt=$((b1 - b0)) -v err="$errors" -v f="$RESULTS" 'BEGIN {
        pus = pt / hz * 1e6 / reqs; bus = bt / hz * 1e6 / reqs
        printf "%-10s %-5s round %d: %8.0f req/s  p99 %7.0f us  cpu/req: proxy %5.2f us, app %5.2f us  %s\n",
            s, t, r, rps, p99, pus, bus, err
        printf "%s %s %s %s %s %s %s\n", s, t, r, rps, p99, pus, bus >> f
    }'
}

echo "warming up ..."
for t in cygni nginx; do
    timeout 30 taskset -c "$WRK_CPU" wrk -t1 -c50 -d2s -s "$WORK/loopback.lua" "$(url $t http)" >/dev/null
    timeout 30 taskset -c "$WRK_CPU" wrk -t1 -c50 -d2s -s "$WORK/loopback.lua" "$(url $t https)" >/dev/null
done
echo "rss of the daemon after warm-up: $(rss_kb "$DAEMON_PID") KiB"

echo "$ROUNDS rounds x ${DURATION}s per scenario and target; wrk on CPU $WRK_CPU, servers on CPU $SERVER_CPU"
for r in $(seq 1 "$ROUNDS"); do
    for s in $SCENARIOS; do
        # Alternate the order so drift does not favour one side.
        if [ $((r % 2)) -eq 0 ]; then order="nginx cygni"; else order="cygni nginx"; fi
        for t in $order; do run_one "$s" "$t" "$r"; done
    done
done
echo "load after the run: $(cut -d' ' -f1-3 /proc/loadavg)"

# PERF_OUT=DIR: one more HTTP keep-alive c=50 run per target under
# `perf record` (cpu-clock, call graphs), reports left in DIR.
if [ -n "${PERF_OUT:-}" ]; then
    command -v perf >/dev/null || die "PERF_OUT needs perf (apt-get install linux-perf)"
    mkdir -p "$PERF_OUT"
    for t in cygni nginx; do
        timeout $((DURATION + 30)) perf record -q -e cpu-clock -g -p "${PID[$t]}" \
            -o "$PERF_OUT/$t.data" -- sleep "$DURATION" 2>/dev/null &
        perf_pid=$!
        timeout $((DURATION + 30)) taskset -c "$WRK_CPU" wrk -t1 -c50 -d"${DURATION}s" \
            -s "$WORK/loopback.lua" "$(url "$t" http)" >"$PERF_OUT/$t.wrk.txt"
        wait "$perf_pid" || true
        perf report -q -i "$PERF_OUT/$t.data" --no-children --sort dso,symbol 2>/dev/null |
            head -n 60 >"$PERF_OUT/$t.top.txt" || true
        echo "perf profile of $t: $PERF_OUT/$t.top.txt"
        if command -v strace >/dev/null; then
            # Syscalls per request, all threads (strace slows the server;
            # the counts per request are what matter).
            timeout $((DURATION + 30)) strace -c -f -q -p "${PID[$t]}" -o "$PERF_OUT/$t.strace.txt" &
            strace_pid=$!
            sleep 1
            timeout $((DURATION + 30)) taskset -c "$WRK_CPU" wrk -t1 -c50 -d"${DURATION}s" \
                -s "$WORK/loopback.lua" "$(url "$t" http)" >"$PERF_OUT/$t.strace-wrk.txt"
            kill -INT "$strace_pid" 2>/dev/null || true
            wait "$strace_pid" || true
            reqs=$(awk '/requests in/ { print $1 }' "$PERF_OUT/$t.strace-wrk.txt")
            awk -v reqs="$reqs" -v t="$t" '$NF ~ /^[a-z_0-9]+$/ && $4 ~ /^[0-9]+$/ && $NF != "total" {
                printf "%s: %-14s %6.2f per request\n", t, $NF, $4 / reqs }' "$PERF_OUT/$t.strace.txt" |
                sort -k3 -nr | head -n 8
        fi
    done
fi

median() { sort -n | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
med() { # scenario target column
    awk -v s="$1" -v t="$2" -v c="$3" '$1 == s && $2 == t { print $c }' "$RESULTS" | median
}
echo
echo "medians of $ROUNDS rounds (cpu: the proxy process, µs per request)"
printf "| %-10s | %9s | %9s | %5s | %9s | %9s | %5s | %9s | %9s | %5s |\n" scenario \
    "cygni r/s" "nginx r/s" ratio "cygni p99" "nginx p99" ratio "cygni cpu" "nginx cpu" ratio
printf "|%s|\n" "------------|-----------|-----------|-------|-----------|-----------|-------|-----------|-----------|-------"
for s in $SCENARIOS; do
    awk -v s="$s" -v cr="$(med "$s" cygni 4)" -v nr="$(med "$s" nginx 4)" \
        -v cp="$(med "$s" cygni 5)" -v np="$(med "$s" nginx 5)" \
        -v cc="$(med "$s" cygni 6)" -v nc="$(med "$s" nginx 6)" 'BEGIN {
        printf "| %-10s | %9.0f | %9.0f | %5.2f | %7.0fus | %7.0fus | %5.2f | %9.2f | %9.2f | %5.2f |\n",
            s, cr, nr, cr / nr, cp, np, cp / np, cc, nc, cc / nc }'
done
