#!/usr/bin/env bash
# Benchmark Cygni's proxy against nginx, both in front of the same backend.
#
#   wrk (CPU $WRK_CPU) ──► cygni proxy_bench ─┐
#                     └──► nginx, 1 worker  ──┴──► backend: nginx, 1 worker, fixed 200
#                          (proxies and backend all on CPU $SERVER_CPU)
#
# Fair set-up per docs PERFORMANCE.md: upstream keepalive 256,
# proxy_http_version 1.1, Connection "", access logs off, the same
# forwarded headers on both sides. The targets alternate, several rounds in
# one run; medians and the cygni/nginx ratio are printed, with CPU time per
# request on the server core (from /proc/PID/stat).
#
# Usage: scripts/bench-proxy.sh            (from the repository root)
# Knobs: ROUNDS=3 DURATION=10 CONNS=64 WRK_CPU=0 SERVER_CPU=1
#        TARGETS="cygni nginx"  (add cygni-mt: the shared multi-thread runtime;
#                                cygni-alt: ALT_BIN, another proxy_bench build, for A/B)
#        CYGNI_BIN=path         (skip the build and use this proxy_bench)
#
# Installs nginx and wrk with apt-get when missing (needs root). Everything
# listens on 127.0.0.1; every wait is bounded; all processes it starts are
# stopped on exit.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
WRK_CPU=${WRK_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
TARGETS=${TARGETS:-"cygni nginx"}
HOST_HEADER="bench.localhost"

die() { echo "bench-proxy: $*" >&2; exit 1; }

cd "$(dirname "$0")/.."
[ -f Cargo.toml ] || die "run from the Cygni repository"

# --- tools -------------------------------------------------------------------
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if [ "${#missing[@]}" -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing ${missing[*]}; install them or run as root"
    echo "installing ${missing[*]} ..."
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || {
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    }
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
ncpu=$(nproc)
[ "$ncpu" -ge 2 ] || echo "warning: only $ncpu CPU; wrk and the servers will share it" >&2
if [ "$ncpu" -lt 2 ]; then WRK_CPU=0; SERVER_CPU=0; fi

BIN=${CYGNI_BIN:-target/release/examples/proxy_bench}
if [ -z "${CYGNI_BIN:-}" ]; then
    echo "building proxy_bench (release) ..."
    cargo build --release --quiet --example proxy_bench
fi
[ -x "$BIN" ] || die "no $BIN after the build"

# --- processes and clean-up --------------------------------------------------
WORK=$(mktemp -d /tmp/cygni-bench.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A free loopback port: try random ones until a connect is refused (bounded).
free_port() {
    local p i
    for i in $(seq 1 50); do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return 0; fi
    done
    die "no free port found"
}

wait_ready() { # port
    local i
    for i in $(seq 1 100); do
        curl -fsS -o /dev/null -H "Host: $HOST_HEADER" "http://127.0.0.1:$1/" 2>/dev/null && return 0
        sleep 0.1
    done
    die "nothing answers on 127.0.0.1:$1 after 10 s"
}

BACKEND_PORT=$(free_port)
NGINX_PORT=$(free_port)
CYGNI_PORT=$(free_port)
CYGNI_MT_PORT=$(free_port)
CYGNI_ALT_PORT=$(free_port)
mkdir -p "$WORK/tmp"

nginx_common() {
    cat <<EOF
daemon off;
master_process off;
worker_processes 1;
error_log $WORK/$1-error.log warn;
pid $WORK/$1.pid;
events { worker_connections 4096; }
EOF
}

temp_paths="client_body_temp_path $WORK/tmp/body; proxy_temp_path $WORK/tmp/proxy;
    fastcgi_temp_path $WORK/tmp/fcgi; uwsgi_temp_path $WORK/tmp/uwsgi; scgi_temp_path $WORK/tmp/scgi;"

{
    nginx_common backend
    cat <<EOF
http {
    access_log off;
    $temp_paths
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    default_type text/plain;
    server {
        listen 127.0.0.1:$BACKEND_PORT;
        location / { return 200 "hello from the backend\n"; }
    }
}
EOF
} >"$WORK/backend.conf"

{
    nginx_common proxy
    cat <<EOF
http {
    access_log off;
    $temp_paths
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream app {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive 256;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
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
} >"$WORK/proxy.conf"

taskset -c "$SERVER_CPU" "$NGINX" -p "$WORK" -c "$WORK/backend.conf" &
BACKEND_PID=$!; PIDS+=("$BACKEND_PID")
wait_ready "$BACKEND_PORT"

declare -A PORT PID
PORT[nginx]=$NGINX_PORT
PORT[cygni]=$CYGNI_PORT
PORT[cygni-mt]=$CYGNI_MT_PORT
PORT[cygni-alt]=$CYGNI_ALT_PORT
for t in $TARGETS; do
    case $t in
    nginx) taskset -c "$SERVER_CPU" "$NGINX" -p "$WORK" -c "$WORK/proxy.conf" & ;;
    cygni) taskset -c "$SERVER_CPU" "$BIN" --listen "127.0.0.1:$CYGNI_PORT" \
        --backend "127.0.0.1:$BACKEND_PORT" --host "$HOST_HEADER" & ;;
    cygni-mt) taskset -c "$SERVER_CPU" "$BIN" --shared-runtime \
        --listen "127.0.0.1:$CYGNI_MT_PORT" --backend "127.0.0.1:$BACKEND_PORT" --host "$HOST_HEADER" & ;;
    cygni-alt)
        [ -x "${ALT_BIN:-}" ] || die "cygni-alt needs ALT_BIN=path/to/proxy_bench"
        taskset -c "$SERVER_CPU" "$ALT_BIN" --listen "127.0.0.1:$CYGNI_ALT_PORT" \
            --backend "127.0.0.1:$BACKEND_PORT" --host "$HOST_HEADER" & ;;
    *) die "unknown target $t (use cygni, cygni-mt, cygni-alt, nginx)" ;;
    esac
    PID[$t]=$!; PIDS+=("$!")
    wait_ready "${PORT[$t]}"
done

# --- measuring ---------------------------------------------------------------
HZ=$(getconf CLK_TCK)
cpu_ticks() { # pid -> utime+stime of all its threads
    sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}
to_us() { # wrk latency like 1.23ms / 456.00us / 1.02s -> microseconds
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) print n; else if (v ~ /ms$/) print n * 1000;
        else if (v ~ /s$/) print n * 1000000; else print n }'
}

RESULTS="$WORK/results"
: >"$RESULTS"
run_one() { # target round
    local t=$1 r=$2 out="$WORK/wrk-$1-$2.txt" p0 p1 b0 b1
    p0=$(cpu_ticks "${PID[$t]}"); b0=$(cpu_ticks "$BACKEND_PID")
    timeout $((DURATION + 30)) taskset -c "$WRK_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency \
        -H "Host: $HOST_HEADER" "http://127.0.0.1:${PORT[$t]}/" >"$out"
    p1=$(cpu_ticks "${PID[$t]}"); b1=$(cpu_ticks "$BACKEND_PID")
    local rps p99 reqs errors
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    p99=$(to_us "$(awk '$1 == "99%" { print $2 }' "$out")")
    reqs=$(awk '/requests in/ { print $1 }' "$out")
    errors=$(awk '/Non-2xx/ { print $NF }' "$out")
    if [ -z "$rps" ] || [ -z "$reqs" ]; then
        die "could not parse wrk output: $(cat "$out")"
    fi
    awk -v t="$t" -v r="$r" -v rps="$rps" -v p99="$p99" -v reqs="$reqs" -v hz="$HZ" \
        -v pt=$((p1 - p0)) -v bt=$((b1 - b0)) -v err="${errors:-0}" -v f="$RESULTS" 'BEGIN {
        pus = pt / hz * 1e6 / reqs; bus = bt / hz * 1e6 / reqs
        printf "%-9s round %d: %9.0f req/s  p99 %8.0f us  cpu/req: proxy %5.2f us + backend %5.2f us = %5.2f us  non-2xx %s\n",
            t, r, rps, p99, pus, bus, pus + bus, err
        printf "%s %s %s %s %s %s\n", t, r, rps, p99, pus, pus + bus >> f
    }'
}

echo "warming up ..."
for t in $TARGETS; do
    timeout 30 taskset -c "$WRK_CPU" wrk -t1 -c"$CONNS" -d2s -H "Host: $HOST_HEADER" \
        "http://127.0.0.1:${PORT[$t]}/" >/dev/null
done

echo "$ROUNDS rounds x ${DURATION}s per target, $CONNS connections, wrk on CPU $WRK_CPU, servers on CPU $SERVER_CPU"
read -r -a order <<<"$TARGETS"
for r in $(seq 1 "$ROUNDS"); do
    # Alternate the order so drift does not favour one side.
    if [ $((r % 2)) -eq 0 ]; then
        for ((i = ${#order[@]} - 1; i >= 0; i--)); do run_one "${order[$i]}" "$r"; done
    else
        for t in "${order[@]}"; do run_one "$t" "$r"; done
    fi
done

median() { sort -n | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
echo
printf "%-9s %12s %12s %18s %18s\n" target "req/s" "p99 (us)" "proxy cpu us/req" "total cpu us/req"
declare -A MED
for t in $TARGETS; do
    rps=$(awk -v t="$t" '$1 == t { print $3 }' "$RESULTS" | median)
    p99=$(awk -v t="$t" '$1 == t { print $4 }' "$RESULTS" | median)
    pcpu=$(awk -v t="$t" '$1 == t { print $5 }' "$RESULTS" | median)
    tcpu=$(awk -v t="$t" '$1 == t { print $6 }' "$RESULTS" | median)
    MED[$t]=$rps
    printf "%-9s %12.0f %12.0f %18.2f %18.2f   (medians)\n" "$t" "$rps" "$p99" "$pcpu" "$tcpu"
done
if [ -n "${MED[cygni]:-}" ] && [ -n "${MED[nginx]:-}" ]; then
    awk -v c="${MED[cygni]}" -v n="${MED[nginx]}" 'BEGIN { printf "ratio cygni/nginx (req/s): %.2f\n", c / n }'
fi
