#!/usr/bin/env bash
# The booted-machine test: installs Cygni on a real Debian 12 with systemd
# as PID 1 the way the README says, and checks it from outside.
#
#   sudo scripts/machine-test.sh [--binary FILE] [--rootfs-only] [--keep]
#
#   --binary FILE   the cygni to package (default: target/debug/cygni,
#                   built with `cargo build --locked` if missing)
#   --rootfs-only   build (or find) the cached rootfs and stop
#   --keep          leave the work dir (logs, the machine's disk) behind
#
# What it does:
#   1. a Debian 12 rootfs from Debian's mirror with debootstrap, cached in
#      $CYGNI_MACHINE_CACHE (default /var/cache/cygni-machine-test), keyed
#      by ROOTFS_KEY below; each run boots a fresh overlay of it;
#   2. two network namespaces of its own joined by a veth pair: the
#      machine's (10.231.77.2) and the client's (10.231.77.1), where an
#      HTTP server serves dist/ (scripts/release.sh) and the git, ssh and
#      curl of the checks run. No traffic leaves these namespaces;
#   3. boots the machine (systemd-nspawn --boot) in its namespace, runs the
#      README's one-line installer in it (curl | sh), and checks: push,
#      HTTP, `systemctl restart cygni` (the app's downtime), a reboot, a
#      second installer run that restarts nothing, the daemon's idle RSS,
#      `--uninstall` and `--uninstall --purge`.
#
# The rootfs comes with the packages the installer installs (the machine
# has no route to Debian's mirror), so the installer finds them present.
# A machine that cannot boot one (not root, no systemd-nspawn, no network
# namespaces, no mirror to debootstrap from) prints `SKIPPED: why` and
# exits 0. Every wait is bounded; everything is torn down on exit.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)

SUITE=bookworm
MIRROR=${CYGNI_MACHINE_MIRROR:-http://deb.debian.org/debian}
# debootstrap lays down systemd as init and what the test drives the
# machine with; apt then adds the installer's PACKAGES (installer/install.sh)
# so that the installer needs no mirror (apt's resolver copes with npm's
# tree, debootstrap's does not).
ROOTFS_PACKAGES=systemd,systemd-sysv,dbus,iproute2,procps,curl,ca-certificates
ROOTFS_APT_PACKAGES="git openssh-client python3 python3-venv nodejs npm"
# Bump the number to rebuild every cached rootfs.
ROOTFS_KEY="$SUITE-1-$(printf '%s %s %s' "$ROOTFS_PACKAGES" "$ROOTFS_APT_PACKAGES" "$MIRROR" | sha256sum | cut -c1-12)"
CACHE=${CYGNI_MACHINE_CACHE:-/var/cache/cygni-machine-test}

NS_M=cygni-mt-machine
NS_C=cygni-mt-client
IF_M=cygmt-m
IF_C=cygmt-c
IP_M=10.231.77.2
IP_C=10.231.77.1
HTTP_PORT=8000
BASE="http://$IP_C:$HTTP_PORT/dist"
# The same release with its tarball tampered with, SHA256SUMS unchanged.
BAD_BASE="http://$IP_C:$HTTP_PORT/tampered"
UPGRADE_BASE="http://$IP_C:$HTTP_PORT/upgrade"
APP=procfile-app
# The README's figure for `systemctl restart cygni` on the local runtime:
# the check fails if the app is down longer than this.
RESTART_DOWN_MAX_S=5

start_ts=$(date +%s.%N)
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
log() { printf '[%6ss] %s\n' "$(elapsed "$start_ts")" "$*"; }
skip() { printf 'SKIPPED: %s\n' "$*"; exit 0; }
die() { printf 'machine-test: %s\n' "$*" >&2; exit 1; }

passed=0
failed=0
ok() { passed=$((passed + 1)); printf 'ok   %s\n' "$*"; }
fail() { failed=$((failed + 1)); printf 'FAIL %s\n' "$*"; }

binary=""
rootfs_only=""
keep=""
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) [ $# -ge 2 ] || die "--binary needs a value"; binary=$2; shift 2 ;;
        --rootfs-only) rootfs_only=yes; shift ;;
        --keep) keep=yes; shift ;;
        -h|--help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1" ;;
    esac
done

# ------------------------------------------------------------ can we boot?

[ "$(uname -s)" = Linux ] || skip "not Linux"
[ "$(id -u)" = 0 ] || skip "needs root (debootstrap, systemd-nspawn, network namespaces)"
need_pkgs=()
command -v systemd-nspawn >/dev/null || need_pkgs+=(systemd-container)
command -v debootstrap >/dev/null || need_pkgs+=(debootstrap)
command -v ip >/dev/null || need_pkgs+=(iproute2)
command -v nsenter >/dev/null || need_pkgs+=(util-linux)
command -v ssh-keyscan >/dev/null || need_pkgs+=(openssh-client)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null || skip "no apt-get to install ${need_pkgs[*]}"
    log "installing ${need_pkgs[*]}"
    if ! DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends \
        "${need_pkgs[@]}" >/dev/null 2>&1; then
        (timeout 300 apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 600 \
            apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}") >/dev/null 2>&1 ||
            skip "cannot install ${need_pkgs[*]} from the package registry"
    fi
fi
for tool in git curl python3 sha256sum timeout; do
    command -v "$tool" >/dev/null || die "$tool is needed on this machine"
done
[ -d /sys/fs/cgroup ] || skip "no /sys/fs/cgroup: systemd cannot boot in a container here"
probe_ns="cygni-mt-probe-$$"
if ! ip netns add "$probe_ns" 2>/dev/null; then
    skip "cannot create network namespaces (ip netns add)"
fi
ip netns del "$probe_ns"

# ------------------------------------------------------------ the rootfs

rootfs="$CACHE/rootfs-$ROOTFS_KEY"
# One run at a time: the namespaces and addresses are fixed.
mkdir -p "$CACHE"
exec 9> "$CACHE/lock"
flock -w 900 9 || die "another machine test holds $CACHE/lock"
build_rootfs() {
    local tmp="$rootfs.tmp" t0
    t0=$(date +%s.%N)
    mkdir -p "$CACHE"
    rm -rf "$tmp"
    log "building the $SUITE rootfs ($ROOTFS_KEY) with debootstrap from $MIRROR (one-time, a few minutes)"
    if ! timeout 1200 debootstrap --variant=minbase --include="$ROOTFS_PACKAGES" \
        "$SUITE" "$tmp" "$MIRROR" > "$CACHE/debootstrap.log" 2>&1; then
        tail -n 20 "$CACHE/debootstrap.log"
        cp "$tmp/debootstrap/debootstrap.log" "$CACHE/debootstrap-inner.log" 2>/dev/null || true
        rm -rf "$tmp"
        if grep -qiE 'Failed getting release file|Couldn.t download|Temporary failure resolving|Could not resolve' \
            "$CACHE/debootstrap.log"; then
            skip "debootstrap cannot reach $MIRROR"
        fi
        die "debootstrap failed (log above; $CACHE/debootstrap.log, $CACHE/debootstrap-inner.log)"
    fi
    log "debootstrap done in $(elapsed "$t0")s; apt-get install $ROOTFS_APT_PACKAGES"
    # shellcheck disable=SC2086 # a list of package names
    if ! timeout 900 systemd-nspawn --quiet --register=no --keep-unit --link-journal=no \
        --directory="$tmp" --setenv=DEBIAN_FRONTEND=noninteractive /bin/sh -c \
        'apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@"' sh \
        $ROOTFS_APT_PACKAGES > "$CACHE/apt.log" 2>&1 < /dev/null; then
        tail -n 20 "$CACHE/apt.log"
        rm -rf "$tmp"
        die "apt-get install in the rootfs failed (log above, $CACHE/apt.log)"
    fi
    # No network in the machine: nothing should try to reach a mirror.
    chroot "$tmp" apt-get clean
    chroot "$tmp" systemctl mask --quiet apt-daily.timer apt-daily-upgrade.timer \
        e2scrub_all.timer e2scrub_reap.service 2>/dev/null || true
    echo cygni-machine > "$tmp/etc/hostname"
    printf '127.0.0.1 localhost\n127.0.1.1 cygni-machine\n' > "$tmp/etc/hosts"
    : > "$tmp/etc/machine-id"
    touch "$tmp/.cygni-rootfs-complete"
    # Older keys' rootfs are of no further use.
    find "$CACHE" -mindepth 1 -maxdepth 1 -name 'rootfs-*' ! -name "rootfs-$ROOTFS_KEY.tmp" \
        -exec rm -rf {} +
    mv "$tmp" "$rootfs"
    rootfs_build_s=$(elapsed "$t0")
    log "rootfs built in ${rootfs_build_s}s"
}
rootfs_build_s=""
if [ -f "$rootfs/.cygni-rootfs-complete" ]; then
    log "rootfs: cached ($rootfs)"
else
    build_rootfs
fi
[ -z "$rootfs_only" ] || exit 0

# ------------------------------------------------------------ the release

if [ -z "$binary" ]; then
    binary="$here/target/debug/cygni"
    if [ ! -x "$binary" ]; then
        log "building target/debug/cygni (cargo build --locked)"
        (cd "$here" && cargo build --locked --bin cygni)
    fi
fi
[ -x "$binary" ] || die "$binary is not an executable"

work=$(mktemp -d /var/tmp/cygni-machine-test.XXXXXX)
nspawn_pid=""
http_pid=""
prober_pid=""
upgrade_pid=""
cleanup() {
    local rc=$?
    set +e
    [ -z "$prober_pid" ] || kill "$prober_pid" 2>/dev/null
    [ -z "$upgrade_pid" ] || kill "$upgrade_pid" 2>/dev/null
    stop_machine quietly
    [ -z "$http_pid" ] || { kill "$http_pid" 2>/dev/null; wait "$http_pid" 2>/dev/null; }
    if mountpoint -q "$work/root" 2>/dev/null; then
        umount "$work/root" || umount -l "$work/root"
    fi
    # Whatever still runs in our namespaces is ours (a server, a client).
    for ns in "$NS_C" "$NS_M"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null; done
        ip netns del "$ns" 2>/dev/null
    done
    if [ -n "$keep" ] || [ "$rc" != 0 ]; then
        echo "machine-test: logs in $work (console-*.log, install-*.log, http.log)"
        rm -rf "$work/root" "$work/upper" "$work/ovlwork" "$work/www" "$work/cygni" \
            "$work/cygni-upgrade" "$work/${APP:?}"
        [ -z "$keep" ] || echo "machine-test: --keep: logs kept, the machine's disk and dist/ removed"
    else
        rm -rf "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A debug build carries ~270 MB of debug info: packaging and downloading
# that is most of what the test would wait for, and nothing it checks.
if command -v strip >/dev/null; then
    strip --strip-debug -o "$work/cygni" "$binary"
    binary="$work/cygni"
fi
log "packaging $binary ($(( $(stat -c %s "$binary") / 1048576 )) MiB) with scripts/release.sh"
"$here/scripts/release.sh" --binary "$binary" --out "$work/www/dist" > "$work/release.log" 2>&1 ||
    { cat "$work/release.log"; die "release.sh failed"; }
cp -R "$work/www/dist" "$work/www/tampered"
printf 'x' >> "$work/www/tampered/cygni-linux-x86_64.tar.gz"
# An "upgrade": the same binary with bytes appended (it runs the same, but
# the installer sees a new binary), packaged while the machine boots.
cp "$binary" "$work/cygni-upgrade"
printf 'upgrade' >> "$work/cygni-upgrade"
"$here/scripts/release.sh" --binary "$work/cygni-upgrade" --out "$work/www/upgrade" \
    > "$work/release-upgrade.log" 2>&1 9>&- &
upgrade_pid=$!

# ------------------------------------------------------------ network

for ns in "$NS_M" "$NS_C"; do
    ip netns del "$ns" 2>/dev/null || true
    ip netns add "$ns"
    ip -n "$ns" link set lo up
done
ip link add "$IF_C" netns "$NS_C" type veth peer name "$IF_M" netns "$NS_M"
ip -n "$NS_C" addr add "$IP_C/24" dev "$IF_C"
ip -n "$NS_M" addr add "$IP_M/24" dev "$IF_M"
ip -n "$NS_C" link set "$IF_C" up
ip -n "$NS_M" link set "$IF_M" up
client() { ip netns exec "$NS_C" "$@"; }

# Not through client(): $! must be the server itself (ip netns exec execs
# it), and it must not inherit the lock.
ip netns exec "$NS_C" python3 -m http.server "$HTTP_PORT" --bind "$IP_C" --directory "$work/www" \
    > "$work/http.log" 2>&1 9>&- &
http_pid=$!
for _ in $(seq 1 50); do
    client curl -fsS -o /dev/null --max-time 1 "$BASE/SHA256SUMS" 2>/dev/null && break
    sleep 0.2
done
client curl -fsS -o /dev/null --max-time 2 "$BASE/SHA256SUMS" || die "the HTTP server did not come up"

# ------------------------------------------------------------ the machine

mkdir -p "$work/upper" "$work/ovlwork" "$work/root"
mount -t overlay overlay -o "lowerdir=$rootfs,upperdir=$work/upper,workdir=$work/ovlwork" "$work/root" ||
    die "cannot mount an overlay of the rootfs"

# The admin's key, as a cloud image would have it: the installer takes it.
ssh-keygen -q -t ed25519 -N '' -C machine-test-admin -f "$work/admin_key"
install -d -m 0700 "$work/root/root/.ssh"
install -m 0600 "$work/admin_key.pub" "$work/root/root/.ssh/authorized_keys"

boots=0
machine_init=""
start_machine() {
    boots=$((boots + 1))
    local t0 init="" state=""
    t0=$(date +%s.%N)
    systemd-nspawn --boot --register=no --keep-unit --quiet \
        --directory="$work/root" --machine=cygni-machine \
        --network-namespace-path="/run/netns/$NS_M" \
        --link-journal=no --resolv-conf=off --timezone=off \
        < /dev/null > "$work/console-$boots.log" 2>&1 9>&- &
    nspawn_pid=$!
    # The machine's systemd is nspawn's child (or grandchild).
    for _ in $(seq 1 100); do
        local p
        for p in $(pgrep -P "$nspawn_pid" 2>/dev/null) $(pgrep -P "$(pgrep -P "$nspawn_pid" 2>/dev/null | head -n 1)" 2>/dev/null); do
            if [ "$(cat "/proc/$p/comm" 2>/dev/null)" = systemd ]; then
                init=$p
                break
            fi
        done
        [ -z "$init" ] || break
        kill -0 "$nspawn_pid" 2>/dev/null || break
        sleep 0.1
    done
    [ -n "$init" ] || { tail -n 30 "$work/console-$boots.log"; die "the machine did not start"; }
    machine_init=$init
    # Until its manager's socket exists, systemctl cannot even ask.
    local t_end=$(( $(date +%s) + 90 ))
    while [ "$(date +%s)" -lt "$t_end" ]; do
        state=$(in_machine timeout 90 systemctl is-system-running --wait 2>/dev/null) || true
        case "$state" in running|degraded) break ;; esac
        kill -0 "$nspawn_pid" 2>/dev/null || break
        sleep 0.5
    done
    case "$state" in
        running) ;;
        degraded)
            log "machine degraded; failed units:"
            in_machine systemctl --failed --no-legend --plain || true ;;
        *) tail -n 30 "$work/console-$boots.log"; die "the machine did not boot (state: ${state:-none})" ;;
    esac
    log "machine booted (boot $boots): $state in $(elapsed "$t0")s"
}
in_machine() {
    nsenter --target "$machine_init" --mount --uts --ipc --net --pid --cgroup -- \
        env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 TERM=dumb "$@"
}
stop_machine() {
    [ -n "$nspawn_pid" ] || return 0
    if kill -0 "$nspawn_pid" 2>/dev/null; then
        in_machine systemctl poweroff >/dev/null 2>&1 || kill -TERM "$nspawn_pid" 2>/dev/null
        for _ in $(seq 1 300); do
            kill -0 "$nspawn_pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$nspawn_pid" 2>/dev/null; then
            [ "${1:-}" = quietly ] || log "machine did not power off in 30 s: killing it"
            kill -KILL "$nspawn_pid" 2>/dev/null
        fi
    fi
    wait "$nspawn_pid" 2>/dev/null || true
    nspawn_pid=""
    machine_init=""
}

start_machine

# ------------------------------------------------------------ checks

ssh_opts=(-i "$work/admin_key" -o IdentitiesOnly=yes -o BatchMode=yes
    -o StrictHostKeyChecking=no -o "UserKnownHostsFile=$work/known_hosts"
    -o ConnectTimeout=5 -o LogLevel=ERROR -p 2222)
cygni_ssh() { client timeout 30 ssh "${ssh_opts[@]}" "cygni@$IP_M" "$@"; }
APP_DOMAIN=localhost
app_get() { client curl -fsS --max-time "${2:-3}" -H "Host: $APP.$APP_DOMAIN" "http://$IP_M${1:-/}"; }
app_serves() { app_get / 2>/dev/null | grep -q "hello from $APP"; }
# Waits up to $1 s for command "$@" (after $1) to succeed.
wait_for() {
    local limit=$1 t0
    shift
    t0=$(date +%s)
    while ! "$@" >/dev/null 2>&1; do
        [ $(( $(date +%s) - t0 )) -lt "$limit" ] || return 1
        sleep 0.2
    done
}
unit_state() {
    in_machine systemctl show cygni.service -p MainPID -p ActiveEnterTimestamp -p NRestarts --no-pager
}
# The one-line installer, exactly as the README gives it (as root, so
# without sudo). $BASE is passed as an argument, never spliced.
one_liner() { one_liner_from "$BASE" "$@"; }
one_liner_from() {
    # shellcheck disable=SC2016 # expanded by the machine's sh
    in_machine sh -c 'base=$1; shift; curl -fsSL "$base/install.sh" | sh -s -- --release-url "$base" "$@"' \
        sh "$@"
}

# What an installer that stopped before changing anything leaves: nothing.
installed_anything() {
    # shellcheck disable=SC2016 # expanded by the machine's sh
    in_machine sh -c 'for f in /usr/local/bin/cygni /etc/systemd/system/cygni.service /etc/cygni /usr/share/cygni /var/lib/cygni; do [ ! -e "$f" ] || echo "$f"; done; ! id cygni-app >/dev/null 2>&1 || echo "user cygni-app"'
}

# 0. pre-flight: no release URL, a tampered download and a busy port stop it
# before any change
# shellcheck disable=SC2016 # expanded by the machine's sh
if ! in_machine sh -c 'curl -fsSL "$1/install.sh" | sh' sh "$BASE" > "$work/install-nourl.log" 2>&1 &&
    grep -q "no release to install from" "$work/install-nourl.log" && [ -z "$(installed_anything)" ]; then
    ok "pre-flight: with no release URL it says how to get one, and nothing is installed"
else
    fail "pre-flight: no URL: $(tail -n 3 "$work/install-nourl.log") / left: $(installed_anything)"
fi
if ! one_liner_from "$BAD_BASE" > "$work/install-tampered.log" 2>&1 &&
    grep -q "sha256 mismatch" "$work/install-tampered.log" && [ -z "$(installed_anything)" ]; then
    ok "pre-flight: a tampered tarball is refused (sha256 mismatch) and nothing is installed"
else
    fail "pre-flight: tampered tarball: $(tail -n 3 "$work/install-tampered.log") / left: $(installed_anything)"
fi
# Two keys in authorized_keys: which is the admin's? It asks.
cat "$work/admin_key.pub" "$work/admin_key.pub" | sed '2s/machine-test-admin/second-key/' \
    > "$work/root/root/.ssh/authorized_keys"
if ! one_liner > "$work/install-twokeys.log" 2>&1 &&
    grep -q "holds 2 keys: choose the admin's with --admin-key FILE" "$work/install-twokeys.log" &&
    [ -z "$(installed_anything)" ]; then
    ok "pre-flight: two keys in authorized_keys and no --admin-key is refused, and nothing is installed"
else
    fail "pre-flight: two keys: $(tail -n 3 "$work/install-twokeys.log") / left: $(installed_anything)"
fi
install -m 0600 "$work/admin_key.pub" "$work/root/root/.ssh/authorized_keys"
in_machine systemd-run --quiet --unit=porthog python3 -m http.server 443
wait_for 10 in_machine sh -c 'grep -q ":01BB 00000000:0000 0A" /proc/net/tcp /proc/net/tcp6'
if ! one_liner > "$work/install-busy.log" 2>&1 &&
    grep -q "port 443 is in use by python3" "$work/install-busy.log" && [ -z "$(installed_anything)" ]; then
    ok "pre-flight: port 443 in use is refused, naming the program, and nothing is installed"
else
    fail "pre-flight: busy port: $(tail -n 3 "$work/install-busy.log") / left: $(installed_anything)"
fi
in_machine systemctl stop porthog.service

# 1. install
log "running: curl -fsSL $BASE/install.sh | sh -s -- --release-url $BASE"
t_install=$(date +%s.%N)
if one_liner > "$work/install-1.log" 2>&1; then
    installer_s=$(elapsed "$t_install")
    if wait_for 60 cygni_ssh version; then
        install_s=$(elapsed "$t_install")
        ok "install: curl | sh, then a daemon that answers the admin over SSH in ${install_s}s (installer ran ${installer_s}s)"
    else
        fail "install: the daemon does not answer SSH 60 s after the installer"
    fi
else
    fail "install: the installer failed"
fi
sed 's/^/    | /' "$work/install-1.log"
if grep -q "Admin key from /root/.ssh/authorized_keys" "$work/install-1.log"; then
    ok "install: took the admin key from root's authorized_keys and said so"
else
    fail "install: did not say it took the key from authorized_keys"
fi

# The fingerprint it printed is the one the daemon presents.
printed_fp=$(sed -n 's/.*SSH host key: \(SHA256:[A-Za-z0-9+/]*\).*/\1/p' "$work/install-1.log" | head -n 1)
seen_fp=$(client ssh-keyscan -T 5 -p 2222 -t ed25519 "$IP_M" 2>/dev/null | ssh-keygen -lf - | awk '{ print $2 }')
if [ -n "$printed_fp" ] && [ "$printed_fp" = "$seen_fp" ]; then
    ok "install: printed host key fingerprint $printed_fp matches the daemon's"
else
    fail "install: printed fingerprint '${printed_fp}' vs the daemon's '${seen_fp}'"
fi
if grep -q "git remote add cygni ssh://cygni@$IP_M:2222/myapp && git push cygni main" "$work/install-1.log"; then
    ok "install: printed the git remote line for $IP_M"
else
    fail "install: no git remote line for $IP_M"
fi

verify=$(in_machine systemd-analyze verify /etc/systemd/system/cygni.service 2>&1) || true
if [ -z "$verify" ]; then
    ok "unit: systemd-analyze verify is clean"
else
    fail "unit: systemd-analyze verify says: $verify"
fi
exposure=$(in_machine systemd-analyze security cygni.service --no-pager 2>/dev/null | tail -n 1) || true
[ -z "$exposure" ] || log "systemd-analyze security: $exposure"

# Local apps' cgroups: the unit delegates its subtree (Delegate=yes).
cg=$(in_machine journalctl -u cygni.service --no-pager -o cat 2>/dev/null | grep -E 'cgroup of its own|without cgroups' | tail -n 1) || true
if printf '%s' "$cg" | grep -q 'cgroup of its own'; then
    ok "unit: local app processes get a cgroup each ($(printf '%s' "$cg" | sed 's/.*cgroups=//'))"
else
    log "unit: local apps run without cgroups here: ${cg:-nothing in the journal}"
fi

# 2. push and serve
repo="$work/$APP"
cp -R "$here/tests/fixtures/$APP" "$repo"
git -C "$repo" init -q -b main
git -C "$repo" -c user.name=test -c user.email=test@example.invalid add .
git -C "$repo" -c user.name=test -c user.email=test@example.invalid commit -q -m first
t_push=$(date +%s.%N)
if client env GIT_SSH_COMMAND="ssh $(printf '%q ' "${ssh_opts[@]}")" timeout 180 \
    git -C "$repo" push "ssh://cygni@$IP_M:2222/$APP" main > "$work/push.log" 2>&1; then
    ok "push: $APP deployed in $(elapsed "$t_push")s"
else
    fail "push: git push failed"
fi
sed 's/^/    | /' "$work/push.log"
if wait_for 10 app_serves; then
    ok "http: curl http://$IP_M/ (Host: $APP.localhost) serves the app"
else
    fail "http: the app does not serve"
fi
# A user per app: the app's process runs as its own uid, from Cygni's
# block (0x70000000 on), not as root; its slug is that uid's, 0700.
app_pid=$(in_machine pgrep -f http.server | head -n 1) || true
# shellcheck disable=SC2016 # awk's $2, not the shell's
app_uid=$(in_machine awk '/^Uid:/ { print $2 }' "/proc/${app_pid:-0}/status" 2>/dev/null) || true
slug_stat=$(in_machine sh -c "stat -c '%u %a' /var/lib/cygni/slugs/$APP/v*" 2>/dev/null | tail -n 1) || true
if [ -n "$app_uid" ] && [ "$app_uid" -ge 1879048192 ] && [ "$app_uid" -le 1879113727 ] &&
    [ "$slug_stat" = "$app_uid 700" ]; then
    ok "isolation: the app runs as its own uid $app_uid; its slug is that uid's, mode 700"
else
    fail "isolation: app uid '${app_uid:-none}', slug owner and mode '${slug_stat:-none}'"
fi

# 3. systemctl restart cygni, with a client requesting every 50 ms
RESTARTS=3
# Sets total bad down_s proxy_s codes back_s from one measured restart.
measure_restart() {
    local probe_log="$work/probe-$1.log" t_restart before after
    : > "$probe_log"
    rm -f "$work/probe.stop"
    (
        end=$(( $(date +%s) + 90 ))
        while [ "$(date +%s)" -lt "$end" ] && [ ! -e "$work/probe.stop" ]; do
            code=$(client curl -s -o /dev/null -w '%{http_code}' --max-time 1 \
                -H "Host: $APP.localhost" "http://$IP_M/" 2>/dev/null) || true
            echo "$(date +%s.%N) ${code:-000}" >> "$probe_log"
            sleep 0.05
        done
    ) 9>&- &
    prober_pid=$!
    sleep 2
    before=$(unit_state)
    app_pid_before=$(in_machine pgrep -f http.server | head -n 1) || true
    t_restart=$(date +%s.%N)
    in_machine systemctl restart cygni.service
    restart_cmd_s=$(elapsed "$t_restart")
    back_s=""
    if wait_for 60 app_serves; then
        back_s=$(elapsed "$t_restart")
    fi
    sleep 2
    touch "$work/probe.stop"
    wait "$prober_pid" 2>/dev/null || true
    prober_pid=""
    after=$(unit_state)
    app_pid_after=$(in_machine pgrep -f http.server | head -n 1) || true
    restarted=yes
    [ "$before" != "$after" ] || restarted=""
    # Down: from the first failed request to the last. Of that, the proxy
    # itself was gone (connection refused: 000) for proxy_s; the rest is
    # the new daemon up but the app not yet started, checked and routed.
    read -r total bad down_s proxy_s codes <<< "$(awk '
        { n++ }
        $2 != "200" { b++; if (!first) first = $1; last = $1; seen[$2]++ }
        $2 == "000" { if (!pf) pf = $1; pl = $1 }
        END {
            c = ""; for (k in seen) c = c k "x" seen[k] ","
            printf "%d %d %.1f %.1f %s\n", n, b, (b ? last - first + 0.05 : 0), (pf ? pl - pf + 0.05 : 0), (c == "" ? "-" : c)
        }' "$probe_log")"
    log "restart $1: systemctl restart returned in ${restart_cmd_s}s; $bad of $total requests failed (HTTP code x count: ${codes%,}); app down ${down_s}s, of which nothing listened on :80 for ${proxy_s}s; serving again ${back_s:-never}s after the restart began; app pid ${app_pid_before:-?} -> ${app_pid_after:-?}"
}
worst_down=0
restart_ok=yes
for n in $(seq 1 "$RESTARTS"); do
    measure_restart "$n"
    if [ -z "$restarted" ]; then
        fail "restart $n: the unit did not restart"; restart_ok=""
    elif [ -z "$back_s" ]; then
        fail "restart $n: the app did not serve again within 60 s"; restart_ok=""
    fi
    worst_down=$(awk -v a="$worst_down" -v b="$down_s" 'BEGIN { print (b > a ? b : a) }')
done
if [ -n "$restart_ok" ]; then
    if awk -v d="$worst_down" -v m="$RESTART_DOWN_MAX_S" 'BEGIN { exit !(d <= m) }'; then
        ok "restart: as the README says, a local app is down across systemctl restart, then serves with no push: at most ${worst_down}s over $RESTARTS restarts (README: under ${RESTART_DOWN_MAX_S}s)"
    else
        fail "restart: the app was down ${worst_down}s, more than the README's ${RESTART_DOWN_MAX_S}s"
    fi
fi

# 4. reboot
stop_machine
start_machine
t_boot=$(date +%s.%N)
if wait_for 90 app_serves; then
    ok "reboot: the app serves again $(elapsed "$t_boot")s after the machine reached multi-user, with no push"
else
    fail "reboot: the app does not serve after a reboot"
    in_machine journalctl -u cygni.service -n 30 --no-pager || true
fi

# 5. a second installer run changes nothing and restarts nothing
sleep 3
before=$(unit_state)
sums_before=$(in_machine sh -c 'sha256sum /usr/local/bin/cygni /etc/systemd/system/cygni.service /etc/cygni/cygni.toml /etc/cygni/admin.pub; stat -c "%n %Y" /usr/local/bin/cygni /etc/systemd/system/cygni.service /etc/cygni/cygni.toml /usr/share/cygni/buildpacks')
if one_liner > "$work/install-2.log" 2>&1; then
    after=$(unit_state)
    sums_after=$(in_machine sh -c 'sha256sum /usr/local/bin/cygni /etc/systemd/system/cygni.service /etc/cygni/cygni.toml /etc/cygni/admin.pub; stat -c "%n %Y" /usr/local/bin/cygni /etc/systemd/system/cygni.service /etc/cygni/cygni.toml /usr/share/cygni/buildpacks')
    if [ "$before" = "$after" ] && [ "$sums_before" = "$sums_after" ] &&
        grep -q "Nothing changed" "$work/install-2.log"; then
        ok "rerun: second install is a no-op: same MainPID and ActiveEnterTimestamp ($(echo "$after" | tr '\n' ' ')), files untouched"
    else
        fail "rerun: something changed: before [$before] after [$after]"
    fi
else
    fail "rerun: the installer failed"
fi
sed 's/^/    | /' "$work/install-2.log"
if app_serves; then ok "rerun: the app still serves"; else fail "rerun: the app stopped serving"; fi

# 5b. so is a run from an unpacked release (installer/install.sh)
before=$(unit_state)
# shellcheck disable=SC2016 # expanded by the machine's sh
if in_machine sh -c 'set -e; d=$(mktemp -d); cd "$d"; curl -fsSL -o r.tar.gz "$1/cygni-linux-x86_64.tar.gz"
        tar -xzf r.tar.gz; sh cygni-linux-x86_64/installer/install.sh; rm -rf "$d"' sh "$BASE" \
        > "$work/install-unpacked.log" 2>&1 &&
    [ "$before" = "$(unit_state)" ] && grep -q "Nothing changed" "$work/install-unpacked.log"; then
    ok "rerun: from an unpacked release (installer/install.sh), also a no-op"
else
    fail "rerun: from an unpacked release: $(tail -n 3 "$work/install-unpacked.log")"
fi

# 5c. an upgrade (a new binary) restarts the service, and the app comes back
if wait "$upgrade_pid"; then
    before=$(unit_state)
    if one_liner_from "$UPGRADE_BASE" > "$work/install-upgrade.log" 2>&1 &&
        grep -q "Restarting cygni.service (the binary changed)" "$work/install-upgrade.log" &&
        [ "$before" != "$(unit_state)" ] && wait_for 30 app_serves; then
        ok "upgrade: a new binary is installed, cygni.service restarted, the app serves again"
    else
        fail "upgrade: $(tail -n 5 "$work/install-upgrade.log")"
    fi
else
    cat "$work/release-upgrade.log"
    fail "upgrade: release.sh failed"
fi

# 6. idle RSS of the daemon
sleep 5
main_pid=$(in_machine systemctl show cygni.service -p MainPID --value)
# shellcheck disable=SC2016 # an awk program
rss_kb=$(in_machine awk '/^VmRSS:/ { print $2 }' "/proc/$main_pid/status")
log "idle RSS of cygni (pid $main_pid in the machine, one app deployed): $((rss_kb / 1024)) MiB (${rss_kb} kB)"

# 7. uninstall keeps the data; purge removes it
if in_machine sh /usr/share/cygni/install.sh --uninstall > "$work/uninstall.log" 2>&1; then
    # shellcheck disable=SC2016 # expanded by the machine's sh
    left=$(in_machine sh -c 'for f in /etc/systemd/system/cygni.service /usr/local/bin/cygni /usr/share/cygni; do [ ! -e "$f" ] || echo "$f"; done; systemctl cat cygni.service >/dev/null 2>&1 && echo "unit still loaded"; true')
    if [ -z "$left" ] && ! cygni_ssh version >/dev/null 2>&1 && in_machine test -f /var/lib/cygni/cygni.db &&
        in_machine test -f /etc/cygni/cygni.toml; then
        ok "uninstall: no unit, no binary, nothing on :2222; /var/lib/cygni and /etc/cygni kept"
    else
        fail "uninstall: left behind: $left"
    fi
else
    fail "uninstall: failed"
fi
sed 's/^/    | /' "$work/uninstall.log"
if one_liner --uninstall --purge > "$work/purge.log" 2>&1 &&
    ! in_machine test -e /var/lib/cygni && ! in_machine test -e /etc/cygni && ! in_machine id cygni-app >/dev/null 2>&1; then
    ok "purge: /var/lib/cygni, /etc/cygni and the cygni-app user removed"
else
    fail "purge: something is left"
    cat "$work/purge.log"
fi

# 8. from a checkout, with --binary, --admin-key and --domain, after the purge
co="$work/root/root/checkout"
mkdir -p "$co"
cp -R "$here/installer" "$here/systemd" "$here/buildpacks" "$here/k3s" \
    "$here/README.md" "$here/Cargo.toml" "$co/"
cp "$binary" "$work/root/root/cygni"
cp "$work/admin_key.pub" "$work/root/root/admin.pub"
rm -f "$work/root/root/.ssh/authorized_keys"
rm -f "$work/known_hosts"
if in_machine sh /root/checkout/installer/install.sh --binary /root/cygni \
        --admin-key /root/admin.pub --domain apps.test > "$work/install-checkout.log" 2>&1 &&
    grep -q "Admin key from --admin-key /root/admin.pub" "$work/install-checkout.log" &&
    in_machine grep -q '^domain = "apps.test"$' /etc/cygni/cygni.toml &&
    wait_for 30 cygni_ssh version; then
    ok "checkout: installer/install.sh --binary --admin-key --domain installs after a purge"
else
    fail "checkout: $(tail -n 5 "$work/install-checkout.log")"
fi
sed 's/^/    | /' "$work/install-checkout.log"
APP_DOMAIN=apps.test
# A new data dir, a new host key.
rm -f "$work/known_hosts"
if client env GIT_SSH_COMMAND="ssh $(printf '%q ' "${ssh_opts[@]}")" timeout 180 \
        git -C "$repo" push "ssh://cygni@$IP_M:2222/$APP" main > "$work/push-2.log" 2>&1 &&
    wait_for 10 app_serves; then
    ok "checkout: push to the fresh install, served at $APP.apps.test"
else
    fail "checkout: push or serve at $APP.apps.test failed: $(tail -n 3 "$work/push-2.log")"
fi
if in_machine sh /usr/share/cygni/install.sh --uninstall --purge > "$work/purge-2.log" 2>&1 &&
    [ -z "$(installed_anything)" ]; then
    ok "purge: the machine is back to nothing"
else
    fail "purge: left: $(installed_anything)"
fi

# ------------------------------------------------------------ summary

echo
echo "machine-test summary:"
if [ -n "$rootfs_build_s" ]; then
    echo "  rootfs:        built in ${rootfs_build_s}s (once per machine)"
else
    echo "  rootfs:        cached ($rootfs)"
fi
echo "  install time:  ${install_s:-n/a}s (curl | sh to a daemon answering SSH; goal < 60 s)"
echo "  restart:       local app down at most ${worst_down:-n/a}s across $RESTARTS x systemctl restart"
echo "  idle RSS:      $((rss_kb / 1024)) MiB"
echo "  whole test:    $(elapsed "$start_ts")s"
echo "machine-test: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
