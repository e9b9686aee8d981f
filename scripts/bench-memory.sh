#!/usr/bin/env bash
# Memory of the real daemon under and after load: does RSS come back?
#
#   cygni serve --runtime local, 1 app deployed with `git push` (nginx as its web)
#     idle RSS ─► 9 more apps pushed (10 routed) ─► RSS
#     ─► 30 s of load: 10 s HTTP keep-alive c=200, 10 s HTTPS c=200,
#        10 s HTTP with a new connection per request c=50
#     ─► RSS right after, then every 10 s for 60 s
#
# RSS is the daemon process's VmRSS (its apps are other processes). The
# figures to compare: idle with 10 apps, and 60 s after the load.
#
# Usage: scripts/bench-memory.sh           (from the repository root)
# Knobs: WRK_CPU=0 SERVER_CPU=1 CYGNI_BIN=path (skip the build) APPS=10 LOAD=10 (s per phase)
#
# Everything listens on 127.0.0.1; every wait and load is bounded; all
# processes it starts are stopped on exit.
set -euo pipefail

WRK_CPU=${WRK_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
APPS=${APPS:-10}
LOAD=${LOAD:-10}
APP=bench
TLS_HOST=bench.example.com

cd "$(dirname "$0")/.."
[ -f Cargo.toml ] || { echo "run from the Cygni repository" >&2; exit 1; }
# shellcheck source=scripts/lib-bench-daemon.sh disable=SC1091
. scripts/lib-bench-daemon.sh

bench_tools
[ "$(nproc)" -ge 2 ] || { WRK_CPU=0; SERVER_CPU=0; }
bench_build

WORK=$(mktemp -d /tmp/cygni-bench-memory.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ -n "${KEEP:-}" ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bench_daemon_init
daemon_start
deploy_app "$APP"
cygni_ssh domains:add "$APP" "$TLS_HOST" >/dev/null || die "domains:add failed"
daemon_stop
install_cert "$TLS_HOST" "$APP"
daemon_start
wait_http "$HTTP_PORT" "$APP.localhost"
sleep 5
mb() { awk -v k="$1" 'BEGIN { printf "%.1f MB", k / 1024 }'; }
IDLE1=$(rss_kb "$DAEMON_PID")
echo "idle, 1 app:            $(mb "$IDLE1")  ($(rss_parts "$DAEMON_PID"))"
python3 scripts/resident-code.py "$DAEMON_PID" 12 | sed 's/^/    /'

for i in $(seq 2 "$APPS"); do deploy_app "app$i"; done
sleep 5
IDLE=$(rss_kb "$DAEMON_PID")
echo "idle, $APPS apps routed:    $(mb "$IDLE")  ($(rss_parts "$DAEMON_PID"))"
# Where the file-backed part lies: the executable's resident pages by
# section and by crate (readelf and nm, from binutils).
python3 scripts/resident-code.py "$DAEMON_PID" 12 | sed 's/^/    /'

cat >"$WORK/loopback.lua" <<'EOF'
function wrk.resolve(host, service)
    wrk.addrs = wrk.lookup("127.0.0.1", service)
end
EOF
load() { # args...
    timeout $((LOAD + 30)) taskset -c "$WRK_CPU" wrk -t1 -d"${LOAD}s" -s "$WORK/loopback.lua" "$@" |
        awk '/^Requests\/sec:/ { printf "%.0f req/s", $2 }'
}
echo "load: $(load -c200 "http://$APP.localhost:$HTTP_PORT/") (HTTP c=200), peak so far $(mb "$(awk '/^VmHWM:/ { print $2 }' "/proc/$DAEMON_PID/status")")"
echo "load: $(load -c200 "https://$TLS_HOST:$HTTPS_PORT/") (HTTPS c=200)"
echo "load: $(load -c50 -H Connection:close "http://$APP.localhost:$HTTP_PORT/") (HTTP, a connection per request, c=50)"
AFTER=$(rss_kb "$DAEMON_PID")
echo "right after the load:   $(mb "$AFTER")  (peak $(mb "$(awk '/^VmHWM:/ { print $2 }' "/proc/$DAEMON_PID/status")"))"
for t in 10 20 30 40 50 60; do
    sleep 10
    LATE=$(rss_kb "$DAEMON_PID")
    echo "  ${t} s after:           $(mb "$LATE")  ($(rss_parts "$DAEMON_PID"))"
done
awk -v i="$IDLE" -v l="$LATE" 'BEGIN { printf "60 s after the load minus idle (%d apps): %+.1f MB\n", '"$APPS"', (l - i) / 1024 }'
