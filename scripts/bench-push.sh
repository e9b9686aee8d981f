#!/usr/bin/env bash
# Push-to-live time of a trivial app, for one or more cygni binaries, in
# one run, side by side.
#
#   scripts/bench-push.sh [BIN ...]     (default: target/debug/cygni)
#   ROUNDS=5 scripts/bench-push.sh old/cygni target/debug/cygni
#
# For each binary: `cygni serve --runtime local` on loopback ports in a temp
# data dir, a first push of tests/fixtures/procfile-app, then ROUNDS times a
# one-line change: a bare push of it to a branch that does not deploy, and
# a deploy push to main. Prints medians: the bare push, the deploy push,
# the deploy push minus the bare push, and when the new content was first
# served (polled with curl from the start of the push), and how many of the
# requests two clients sent throughout failed. Every wait is bounded;
# everything started is stopped on exit.
set -euo pipefail

ROUNDS=${ROUNDS:-5}
# Seconds between rounds, so one round's old instances have drained (2 s)
# before the next push: a push that follows at once waits for that drain,
# by design.
SETTLE=${SETTLE:-3}
cd "$(dirname "$0")/.."
[ "$#" -gt 0 ] || set -- target/debug/cygni

work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

ssh-keygen -q -t ed25519 -N '' -f "$work/key" -C bench
export GIT_SSH_COMMAND="ssh -i $work/key -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@localhost
export GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@localhost

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

run_one() {
    local bin=$1 label=$2 tag=$3
    local data="$work/$tag/data" log="$work/$tag/daemon.log"
    mkdir -p "$work/$tag"
    "$bin" serve --data-dir "$data" --runtime local \
        --ssh-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --https-listen 127.0.0.1:0 \
        --admin-key "$work/key.pub" >"$work/$tag/out" 2>"$log" &
    pids+=("$!")
    local ssh_port="" http_port="" i
    for i in $(seq 1 100); do
        ssh_port=$(sed -n 's/^ *ssh: *[^ ]*:\([0-9]*\).*/\1/p' "$work/$tag/out" | head -1)
        http_port=$(sed -n 's/^ *http: *[^ ]*:\([0-9]*\).*/\1/p' "$work/$tag/out" | head -1)
        [ -n "$ssh_port" ] && [ -n "$http_port" ] && break
        sleep 0.1
    done
    [ -n "$ssh_port" ] || { echo "bench-push: $bin did not start" >&2; cat "$log" >&2; exit 1; }
    local repo="$work/$tag/repo"
    cp -r tests/fixtures/procfile-app "$repo"
    git -C "$repo" init -q -b main
    git -C "$repo" add -A
    git -C "$repo" commit -q -m v1
    local remote="ssh://cygni@127.0.0.1:$ssh_port/bench"
    git -C "$repo" push -q "$remote" main 2>/dev/null
    local bare=() deploy=() served=()
    # Load during every round: two clients, counting answers that are not
    # 200. Bounded by the stop file and by a count.
    : >"$work/$tag/failed"
    : >"$work/$tag/ok"
    local loaders=() c
    for c in 1 2; do
        (
            for _ in $(seq 1 200000); do
                [ -f "$work/$tag/stop" ] && exit 0
                code=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: bench.localhost" "http://127.0.0.1:$http_port/")
                if [ "$code" = 200 ]; then echo >>"$work/$tag/ok"; else echo "$code" >>"$work/$tag/failed"; fi
            done
        ) &
        loaders+=("$!")
    done
    for i in $(seq 1 "$ROUNDS"); do
        sleep "$SETTLE"
        echo "round $i $tag" >"$repo/index.html"
        git -C "$repo" commit -q -am "round $i"
        local t0 t1
        t0=$(now)
        git -C "$repo" push -q "$remote" "HEAD:refs/heads/bare-$i" 2>/dev/null
        t1=$(now)
        bare+=("$(echo "$t1 - $t0" | bc)")
        t0=$(now)
        (
            for _ in $(seq 1 600); do
                if curl -s -H "Host: bench.localhost" "http://127.0.0.1:$http_port/" | grep -q "round $i $tag"; then
                    now >"$work/$tag/served-$i"
                    exit 0
                fi
                sleep 0.02
            done
        ) &
        local poller=$!
        git -C "$repo" push -q "$remote" main 2>/dev/null
        t1=$(now)
        wait "$poller" || true
        deploy+=("$(echo "$t1 - $t0" | bc)")
        if [ -f "$work/$tag/served-$i" ]; then
            served+=("$(echo "$(cat "$work/$tag/served-$i") - $t0" | bc)")
        fi
    done
    touch "$work/$tag/stop"
    for c in "${loaders[@]}"; do wait "$c" || true; done
    local ok failed
    ok=$(wc -l <"$work/$tag/ok")
    failed=$(wc -l <"$work/$tag/failed")
    local b d s
    b=$(printf '%s\n' "${bare[@]}" | median)
    d=$(printf '%s\n' "${deploy[@]}" | median)
    s=$(printf '%s\n' "${served[@]:-0}" | median)
    printf '| %s | %.2f s | %.2f s | %.2f s | %.2f s | %s of %s |\n' "$label" "$b" "$d" "$(echo "$d - $b" | bc)" "$s" "$failed" "$((ok + failed))"
}

echo "medians over $ROUNDS rounds, trivial app (procfile-app), --runtime local"
echo
echo "| binary | bare push | deploy push | deploy − bare | new version first served | failed requests under load |"
echo "|---|---|---|---|---|---|"
n=0
for bin in "$@"; do
    n=$((n + 1))
    [ -x "$bin" ] || { echo "bench-push: $bin is not executable" >&2; exit 1; }
    run_one "$bin" "$bin" "$n"
done
