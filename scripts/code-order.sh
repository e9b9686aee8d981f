#!/usr/bin/env bash
# The functions an idle daemon runs, in the order the linker should lay
# them out: writes link/hot-functions.txt.
#
#   cygni serve --runtime local under valgrind's callgrind
#     ─► 3 apps pushed with `git push` ─► HTTP and HTTPS requests, an SSH
#        command ─► SIGTERM (callgrind writes its counts at exit)
#     ─► every function of the executable that ran, most calls first
#
# Why: the kernel maps an executable's code 64 KiB at a time around each
# page fault, so an idle daemon that touches one function per 64 KiB keeps
# most of its code resident. The release build (build.rs) hands this list
# to the linker (lld's --symbol-ordering-file), which puts these functions
# side by side. Rerun it when the daemon's start-up, push or request path
# changes much; a stale list only keeps more code resident.
#
# Usage: scripts/code-order.sh             (from the repository root)
# Knobs: CYGNI_BIN=path (default target/release/cygni, built if missing)
#
# Everything listens on 127.0.0.1; every wait is bounded; all processes it
# starts are stopped on exit.
set -euo pipefail

SERVER_CPU=${SERVER_CPU:-1}
APP=order
TLS_HOST=order.example.com

cd "$(dirname "$0")/.."
[ -f Cargo.toml ] || { echo "run from the Cygni repository" >&2; exit 1; }
# shellcheck source=scripts/lib-bench-daemon.sh disable=SC1091
. scripts/lib-bench-daemon.sh

command -v valgrind >/dev/null || die "needs valgrind"
bench_tools
[ "$(nproc)" -ge 2 ] || SERVER_CPU=0
bench_build

WORK=$(mktemp -d /tmp/cygni-code-order.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ -n "${KEEP:-}" ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bench_daemon_init
# The certificate goes in with the daemon stopped; a plain first start
# makes the database.
daemon_start
deploy_app "$APP"
cygni_ssh domains:add "$APP" "$TLS_HOST" >/dev/null || die "domains:add failed"
daemon_stop
install_cert "$TLS_HOST" "$APP"

REAL_BIN=$BIN
BIN="$WORK/under-callgrind"
cat >"$BIN" <<EOF
#!/bin/sh
exec valgrind -q --tool=callgrind --demangle=no --dump-instr=no --compress-strings=no \
    --compress-pos=no --callgrind-out-file=$WORK/callgrind.out "$REAL_BIN" "\$@"
EOF
chmod +x "$BIN"
# Under valgrind the start takes longer than daemon_start waits: wait here.
daemon_start 2>/dev/null || true
for _ in $(seq 1 600); do
    (exec 3<>"/dev/tcp/127.0.0.1/$HTTP_PORT") 2>/dev/null && break
    kill -0 "$DAEMON_PID" 2>/dev/null || die "the daemon exited under valgrind; log: $(tail -5 "$WORK/daemon.log")"
    sleep 0.2
done
echo "daemon up under callgrind; pushing 2 more apps ..."
deploy_app "${APP}2"
deploy_app "${APP}3"
for _ in $(seq 1 20); do
    curl -s -o /dev/null --max-time 20 -H "Host: $APP.localhost" "http://127.0.0.1:$HTTP_PORT/" || true
    curl -s -o /dev/null --max-time 20 -k --resolve "$TLS_HOST:$HTTPS_PORT:127.0.0.1" "https://$TLS_HOST:$HTTPS_PORT/" || true
done
cygni_ssh apps >/dev/null || true
kill -TERM "$DAEMON_PID"
for _ in $(seq 1 600); do
    kill -0 "$DAEMON_PID" 2>/dev/null || break
    sleep 0.2
done
wait "$DAEMON_PID" 2>/dev/null || true
[ -s "$WORK/callgrind.out" ] || die "callgrind wrote nothing"

# callgrind.out: "ob=" names the object of the "fn=" lines after it; every
# function that ran has a "fn=" block. Keep the executable's, in the order
# callgrind first met them (roughly the order they first ran), without
# the recursion-depth suffix ('2) callgrind gives names.
mkdir -p link
awk -v exe="$REAL_BIN" '
    /^ob=/ { ob = substr($0, 4) }
    /^fn=/ && ob == exe { fn = substr($0, 4); sub(/\047[0-9]+$/, "", fn); if (!(fn in seen)) { seen[fn] = 1; print fn } }
' "$WORK/callgrind.out" >link/hot-functions.txt
echo "wrote link/hot-functions.txt: $(wc -l <link/hot-functions.txt) functions"
