#!/bin/sh
# cygni-installer: sets up this Debian or Ubuntu machine as a Cygni host.
#
#   curl -fsSL BASE/install.sh | sudo sh -s -- --release-url BASE [OPTIONS]
#
# BASE is where the files of `scripts/release.sh` (dist/) are served. A
# release built with `--release-url BASE` has BASE as its default, and
# then `curl -fsSL BASE/install.sh | sudo sh` needs no option. From an
# unpacked release or a checkout:  sudo installer/install.sh [OPTIONS]
#
# Options:
#   --release-url URL  download the release from URL (or CYGNI_RELEASE_URL)
#   --binary FILE      install this cygni binary (with the rest from the
#                      release or the checkout); from a checkout without
#                      it, the binary is built with cargo
#   --admin-key FILE   the OpenSSH public key of the first admin (default:
#                      the one key in the invoking user's authorized_keys)
#   --domain DOMAIN    apps are served at APP.DOMAIN (first install only)
#   --uninstall        remove what the installer installed; keep the data
#   --purge            with --uninstall: also remove /etc/cygni,
#                      /var/lib/cygni, the cygni-app user (older
#                      releases made it) and its containers
#   --k3s              also install k3s (the pinned release below, its
#                      sha256 checked) in its own unit, and run apps on it:
#                      runtime = "kube", the registry on :5000
#   --join SERVER --token TOKEN
#                      make this machine a k3s agent of SERVER
#                      (https://HOST:6443) instead; Cygni itself is not
#                      installed (`cluster:join-command` prints the line)
#   --registry HOST:PORT --registry-credential USER:PASSWORD
#                      with --join: pull Cygni's images from its registry
#   --node-ip ADDR, --flannel-iface IFACE
#                      with --k3s or --join: the address and interface the
#                      nodes reach each other on (multi-NIC hosts, Vagrant)
#   --k3s-sha256 HASH  the sha256 of the k3s binary, when this script pins
#                      none for this architecture
#
# Every check runs before anything changes: root, systemd, apt, the
# architecture, ports 80/443/2222 free, disk space, the admin key, and the
# download's sha256. Running it again changes only what differs, and
# restarts cygni.service only if the binary, the unit, the admin key or the
# config changed. /etc/cygni/cygni.toml is written once, never overwritten.
set -eu

# Stamped by `scripts/release.sh --release-url URL`; empty: no default.
DEFAULT_RELEASE_URL=""

BIN=/usr/local/bin/cygni
SHARE=/usr/share/cygni
DOC=/usr/share/doc/cygni
ETC=/etc/cygni
CONFIG=/etc/cygni/cygni.toml
ADMIN_PUB=/etc/cygni/admin.pub
DATA=/var/lib/cygni
UNIT=/etc/systemd/system/cygni.service
# The user older releases ran every app as; --purge removes it if left.
APP_USER=cygni-app
PORTS="80 443 2222"
# What builds and apps need: git for pushes, python3-venv for the Python
# buildpack (and Procfile apps that serve with python3), nodejs and npm for
# the Node.js one, openssh-client for ssh-keygen (fingerprints).
PACKAGES="git ca-certificates openssh-client python3 python3-venv nodejs npm"
# MiB free needed: the data dir (slugs, repos, build caches), the binary.
MIN_FREE_DATA_MB=1024
MIN_FREE_BIN_MB=200
MIN_FREE_TMP_MB=200

# The k3s release --k3s and --join install: pinned, never "latest", with
# the sha256 of its binary from the release's sha256sum-ARCH.txt (the line
# ending in " k3s"). A download that does not match stops the install
# before anything changes. The arm64 hash is not pinned yet: there the
# install stops unless --k3s-sha256 gives it. Moving the pin means
# updating both lines from the new release's sha256sum files.
K3S_VERSION="v1.36.4+k3s1"
K3S_SHA256_x86_64="835873f37245fc615f547a2fe2af9402a347875f13fa64a1f136de644955ea3f"
K3S_SHA256_aarch64=""
K3S_BIN=/usr/local/bin/k3s
K3S_ETC=/etc/rancher/k3s
K3S_UNIT=/etc/systemd/system/k3s.service
K3S_AGENT_UNIT=/etc/systemd/system/k3s-agent.service
K3S_DROPIN=/etc/systemd/system/cygni.service.d/k3s.conf
REGISTRY_PORT=5000

say() { printf '%s\n' "-----> $*"; }
note() { printf '%s\n' "       $*"; }
warn() { printf '%s\n' "install.sh: warning: $*" >&2; }
die() { printf '%s\n' "install.sh: $*" >&2; exit 1; }

usage() { sed -n '2,41p' "$SELF" | sed 's/^# \{0,1\}//'; }

# ---------------------------------------------------------------- checks

normalize_arch() {
    case "$1" in
        x86_64|amd64) echo x86_64 ;;
        aarch64|arm64) echo aarch64 ;;
        *) return 1 ;;
    esac
}

# Socket inodes listening on TCP port $1 (IPv4 and IPv6).
listen_inodes() {
    hex=$(printf '%04X' "$1")
    for table in /proc/net/tcp /proc/net/tcp6; do
        [ -r "$table" ] || continue
        awk -v p=":$hex" 'NR > 1 && $4 == "0A" && substr($2, length($2) - 4) == p { print $10 }' "$table"
    done
}

# Pids holding socket inode $1.
socket_pids() {
    find /proc/[0-9]*/fd -lname "socket:\\[$1\\]" 2>/dev/null | cut -d/ -f3 | sort -u
}

in_cygni_unit() {
    grep -q '/cygni\.service$' "/proc/$1/cgroup" 2>/dev/null
}

# Fails with who holds it if TCP port $1 is taken by anything but Cygni.
check_port_free() {
    for inode in $(listen_inodes "$1"); do
        [ "$inode" != 0 ] || continue
        for pid in $(socket_pids "$inode"); do
            in_cygni_unit "$pid" && continue
            comm=$(cat "/proc/$pid/comm" 2>/dev/null || echo '?')
            die "port $1 is in use by $comm (pid $pid): Cygni needs 80, 443 and 2222; stop it first"
        done
    done
}

port_listening_by_cygni() {
    for inode in $(listen_inodes "$1"); do
        for pid in $(socket_pids "$inode"); do
            in_cygni_unit "$pid" && return 0
        done
    done
    return 1
}

# Free MiB on the file system holding $1 (or its nearest existing parent).
free_mb() {
    dir=$1
    while [ ! -d "$dir" ]; do dir=$(dirname "$dir"); done
    df -Pk "$dir" | awk 'NR == 2 { print int($4 / 1024) }'
}

check_disk() {
    have=$(free_mb "$1")
    [ "$have" -ge "$2" ] || die "only ${have} MiB free for $1: need at least $2 MiB"
}

# Public keys in OpenSSH form ("TYPE BASE64 [COMMENT]") from stdin, one a
# line, with authorized_keys options and comments left out.
extract_keys() {
    awk '
        /^[[:space:]]*(#|$)/ { next }
        {
            for (i = 1; i < NF; i++) {
                if ($i ~ /^(ssh-(ed25519|rsa)|ecdsa-sha2-nistp(256|384|521)|sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com)$/ &&
                    $(i + 1) ~ /^[A-Za-z0-9+\/]+=*$/) {
                    line = $i " " $(i + 1)
                    for (j = i + 2; j <= NF; j++) line = line " " $j
                    print line
                    break
                }
            }
        }'
}

describe_key() {
    if command -v ssh-keygen >/dev/null 2>&1; then
        printf '%s\n' "$1" | ssh-keygen -lf - 2>/dev/null && return 0
    fi
    printf '%s\n' "$1" | awk '{ $2 = substr($2, 1, 16) "..."; print }'
}

# Sets admin_key_line (empty: keep the installed one) and admin_key_from.
resolve_admin_key() {
    admin_key_line=""
    admin_key_from=""
    if [ -n "$opt_admin_key" ]; then
        [ -r "$opt_admin_key" ] || die "--admin-key $opt_admin_key is not a readable file"
        keys=$(extract_keys < "$opt_admin_key")
        n=$(printf '%s' "$keys" | grep -c . || true)
        [ "$n" -eq 1 ] || die "--admin-key $opt_admin_key must hold exactly one OpenSSH public key (found $n)"
        admin_key_line=$keys
        admin_key_from="--admin-key $opt_admin_key"
        return 0
    fi
    if [ -s "$ADMIN_PUB" ]; then
        return 0
    fi
    user=${SUDO_USER:-root}
    case "$user" in
        *[!A-Za-z0-9._-]*|'') die "cannot tell the invoking user (SUDO_USER=$user): pass --admin-key FILE" ;;
    esac
    home=$(getent passwd "$user" | cut -d: -f6)
    [ -n "$home" ] || die "no home for user $user: pass --admin-key FILE (an OpenSSH public key)"
    file="$home/.ssh/authorized_keys"
    [ -r "$file" ] || die "no --admin-key and no $file: pass --admin-key FILE (an OpenSSH public key)"
    keys=$(extract_keys < "$file")
    n=$(printf '%s' "$keys" | grep -c . || true)
    case "$n" in
        1) ;;
        0) die "no public key in $file: pass --admin-key FILE" ;;
        *) die "$file holds $n keys: choose the admin's with --admin-key FILE" ;;
    esac
    admin_key_line=$keys
    admin_key_from="$file (the only key there, user $user)"
}

preflight_install() {
    [ "$(id -u)" = 0 ] || die "run as root (sudo)"
    [ -d /run/systemd/system ] || die "systemd is not running on this machine: Cygni installs as a systemd service"
    if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-query >/dev/null 2>&1; then
        die "this installer supports Debian and Ubuntu (apt-get, dpkg-query)"
    fi
    arch=$(normalize_arch "$(uname -m)") || die "unsupported architecture $(uname -m): Cygni releases exist for x86_64 and aarch64"
    if [ -n "$opt_domain" ]; then
        case "$opt_domain" in
            *[!A-Za-z0-9.-]*|.*|*.|*..*) die "--domain $opt_domain is not a DNS name" ;;
        esac
        opt_domain=$(printf '%s' "$opt_domain" | tr '[:upper:]' '[:lower:]')
    fi
    if [ -n "$opt_binary" ]; then
        if [ ! -f "$opt_binary" ] || [ ! -x "$opt_binary" ]; then
            die "--binary $opt_binary is not an executable file"
        fi
    fi
    for port in $PORTS; do check_port_free "$port"; done
    check_disk "$DATA" "$MIN_FREE_DATA_MB"
    check_disk "$BIN" "$MIN_FREE_BIN_MB"
    check_disk "${TMPDIR:-/tmp}" "$MIN_FREE_TMP_MB"
    resolve_admin_key
}

# ---------------------------------------------------------------- sources

fetch() {
    if command -v curl >/dev/null 2>&1; then
        curl -fsSL --connect-timeout 15 --max-time 600 --retry 2 -o "$2" "$1"
    elif command -v wget >/dev/null 2>&1; then
        wget -q -T 30 -t 3 -O "$2" "$1"
    else
        die "neither curl nor wget is installed: cannot download $1"
    fi
}

# Downloads and verifies the release for $arch into $work; sets $src.
download_release() {
    base=${1%/}
    case "$base" in
        https://*) ;;
        http://*) warn "downloading over plain HTTP: the sha256 check catches a broken download, not a forged one" ;;
        *) die "release URL $base must start with https:// or http://" ;;
    esac
    name="cygni-linux-$arch"
    say "Downloading $base/$name.tar.gz"
    fetch "$base/SHA256SUMS" "$work/SHA256SUMS" || die "cannot download $base/SHA256SUMS"
    fetch "$base/$name.tar.gz" "$work/$name.tar.gz" || die "cannot download $base/$name.tar.gz"
    want=$(awk -v f="$name.tar.gz" '$2 == f || $2 == "*" f { print $1; exit }' "$work/SHA256SUMS")
    [ "${#want}" -eq 64 ] || die "$base/SHA256SUMS has no sha256 for $name.tar.gz"
    got=$(sha256sum "$work/$name.tar.gz" | cut -d' ' -f1)
    [ "$got" = "$want" ] || die "sha256 mismatch for $name.tar.gz: got $got, SHA256SUMS says $want; nothing was installed"
    note "sha256 $got verified"
    mkdir "$work/release"
    tar -xzf "$work/$name.tar.gz" -C "$work/release" --no-same-owner
    src="$work/release/$name"
    [ -f "$src/bin/cygni" ] || die "$name.tar.gz has no bin/cygni"
}

# Sets $src (a folder laid out like the checkout) and $src_bin.
locate_sources() {
    src=""
    if [ -z "$release_url" ] && [ -n "$script_dir" ]; then
        src=$script_dir
    elif [ -n "$release_url" ]; then
        download_release "$release_url"
    else
        die "no release to install from. Cygni publishes no downloads of its own yet:
  build one with scripts/release.sh, serve its dist/ folder at BASE, and run
    curl -fsSL BASE/install.sh | sudo sh -s -- --release-url BASE
  (or set CYGNI_RELEASE_URL), or run installer/install.sh from a checkout"
    fi
    for f in systemd/cygni.service buildpacks k3s; do
        [ -e "$src/$f" ] || die "$src has no $f: not a Cygni release or checkout"
    done
    if [ -n "$opt_binary" ]; then
        src_bin=$opt_binary
    elif [ -f "$src/bin/cygni" ]; then
        src_bin="$src/bin/cygni"
    elif [ -f "$src/Cargo.toml" ]; then
        command -v cargo >/dev/null 2>&1 || die "no --binary given and no cargo to build this checkout"
        say "Building the checkout (cargo build --release --locked)"
        (cd "$src" && cargo build --release --locked)
        src_bin="$src/target/release/cygni"
    else
        die "$src has no bin/cygni: pass --binary FILE"
    fi
    version=$("$src_bin" version 2>/dev/null) ||
        die "$src_bin does not run on this machine (wrong architecture or libc?)"
}

# ---------------------------------------------------------------- changes

restart_needed=""
reload_needed=""

# Installs $1 as $2 with mode $3 unless it is already identical; returns 0
# when it changed something.
install_file() {
    if [ -f "$2" ] && cmp -s "$1" "$2" &&
        [ "$(stat -c %a "$2")" = "$(printf '%s' "$3" | sed 's/^0*//')" ]; then
        return 1
    fi
    # Called as a condition, where set -e does not apply: every step checks.
    mkdir -p "$(dirname "$2")" || die "cannot create $(dirname "$2")"
    install -m "$3" "$1" "$2.cygni-new" || die "cannot write $2"
    mv -f "$2.cygni-new" "$2" || die "cannot write $2"
    return 0
}

# Replaces the folder $2 by a copy of $1 unless they are identical.
install_tree() {
    if [ -d "$2" ] && diff -r -q "$1" "$2" >/dev/null 2>&1; then
        return 1
    fi
    mkdir -p "$(dirname "$2")" || die "cannot create $(dirname "$2")"
    rm -rf "$2.cygni-new" "$2.cygni-old" || die "cannot clear $2.cygni-new"
    cp -R "$1" "$2.cygni-new" || die "cannot copy $1 to $2.cygni-new"
    chmod -R u+rwX,go+rX,go-w "$2.cygni-new" || die "cannot chmod $2.cygni-new"
    if [ -e "$2" ]; then mv "$2" "$2.cygni-old" || die "cannot move $2 aside"; fi
    mv "$2.cygni-new" "$2" || die "cannot install $2"
    rm -rf "$2.cygni-old"
    return 0
}

package_present() {
    case "$1" in
        # A Node.js from elsewhere (nodesource) brings its own npm, and
        # Debian's npm would conflict with it.
        nodejs) command -v node >/dev/null 2>&1 && return 0 ;;
        npm) command -v npm >/dev/null 2>&1 && return 0 ;;
        # Docker's own docker-ce conflicts with Debian's docker.io.
        docker.io) command -v docker >/dev/null 2>&1 && return 0 ;;
    esac
    dpkg-query -W -f '${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

install_packages() {
    missing=""
    for p in $PACKAGES; do
        package_present "$p" || missing="$missing $p"
    done
    if [ -z "$missing" ]; then
        say "Packages: all present"
        return 0
    fi
    say "Installing packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086 # $missing is a list of package names
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

write_config() {
    if [ -f "$CONFIG" ]; then
        note "$CONFIG exists: kept as it is"
        if ! grep -q '^admin_key' "$CONFIG"; then
            warn "$CONFIG sets no admin_key: add admin_key = \"$ADMIN_PUB\" for the daemon to adopt that key"
        fi
        if [ -n "$opt_domain" ] && ! grep -q "^domain = \"$opt_domain\"" "$CONFIG"; then
            warn "--domain $opt_domain not applied: $CONFIG is never overwritten; edit its domain and restart cygni"
        fi
        if [ -n "$opt_k3s" ] && ! grep -q '^runtime = "kube"' "$CONFIG"; then
            warn "--k3s: $CONFIG is never overwritten: set runtime = \"kube\" and registry_listen = \"0.0.0.0:$REGISTRY_PORT\" in it and restart cygni"
        fi
        return 0
    fi
    say "Writing $CONFIG"
    {
        echo "# Cygni configuration, written once by the installer and never overwritten."
        echo "# Keys are the \`cygni serve\` flags with _ for - (see the README)."
        echo "data_dir = \"$DATA\""
        echo "buildpacks_dir = \"$SHARE/buildpacks\""
        echo "admin_key = \"$ADMIN_PUB\""
        if [ -n "$opt_domain" ]; then
            echo "domain = \"$opt_domain\""
        else
            echo "# domain = \"apps.example.com\"  # apps at APP.DOMAIN; default localhost"
        fi
        if [ -n "$opt_k3s" ]; then
            echo "# Apps run on k3s (install.sh --k3s), pulling their images from Cygni."
            echo "runtime = \"kube\""
            echo "registry_listen = \"0.0.0.0:$REGISTRY_PORT\""
        fi
    } > "$CONFIG.cygni-new"
    chmod 0644 "$CONFIG.cygni-new"
    mv "$CONFIG.cygni-new" "$CONFIG"
    restart_needed="the config was written"
}

install_admin_key() {
    if [ -z "$admin_key_line" ]; then
        note "admin key: $ADMIN_PUB kept"
        return 0
    fi
    printf '%s\n' "$admin_key_line" > "$work/admin.pub"
    if install_file "$work/admin.pub" "$ADMIN_PUB" 0644; then
        say "Admin key from $admin_key_from:"
        note "$(describe_key "$admin_key_line")"
        restart_needed="the admin key changed"
    else
        note "admin key: unchanged ($admin_key_from)"
    fi
}

do_install() {
    preflight_install
    if [ -n "$opt_k3s" ]; then
        # Before anything changes: a k3s without a checked sha256 stops here.
        check_addr_opts
        resolve_k3s
        # Images are still built by a Docker engine on this node; k3s runs
        # them from Cygni's registry with its own containerd.
        PACKAGES="$PACKAGES docker.io"
    fi
    locate_sources
    say "Installing $version"

    install_packages

    # No user to create: each app runs as a uid/gid of its own that the
    # daemon allocates (no passwd entry; see the README).

    if install_file "$src_bin" "$BIN" 0755; then
        say "Installed $BIN"
        restart_needed="the binary changed"
    fi
    if install_tree "$src/buildpacks" "$SHARE/buildpacks"; then
        say "Installed $SHARE/buildpacks"
    fi
    if install_tree "$src/k3s" "$SHARE/k3s"; then
        say "Installed $SHARE/k3s (k3s config for the kube runtime)"
    fi
    if [ -f "$src/README.md" ] && install_file "$src/README.md" "$DOC/README.md" 0644; then
        say "Installed $DOC/README.md"
    fi
    # Kept so that `sh /usr/share/cygni/install.sh --uninstall` works later.
    if [ -f "$src/installer/install.sh" ] && install_file "$src/installer/install.sh" "$SHARE/install.sh" 0755; then
        say "Installed $SHARE/install.sh"
    fi

    mkdir -p "$ETC"
    install_admin_key
    write_config
    [ -z "$opt_k3s" ] || install_k3s_server

    if install_file "$src/systemd/cygni.service" "$UNIT" 0644; then
        say "Installed $UNIT"
        reload_needed=yes
        restart_needed="the unit changed"
    fi
    [ -z "$reload_needed" ] || systemctl daemon-reload
    if ! systemctl is-enabled --quiet cygni.service 2>/dev/null; then
        systemctl enable --quiet cygni.service
    fi
    if ! systemctl is-active --quiet cygni.service; then
        say "Starting cygni.service"
        systemctl start cygni.service
    elif [ -n "$restart_needed" ]; then
        say "Restarting cygni.service ($restart_needed)"
        systemctl restart cygni.service
    else
        say "Nothing changed: cygni.service keeps running, not restarted"
    fi
    wait_for_daemon
    [ -z "$opt_k3s" ] || configure_registry_mirror
    summary
}

wait_for_daemon() {
    i=0
    while [ "$i" -lt 60 ]; do
        if port_listening_by_cygni 2222; then
            return 0
        fi
        if ! systemctl is-active --quiet cygni.service && [ "$i" -ge 5 ]; then
            break
        fi
        sleep 1
        i=$((i + 1))
    done
    journalctl -u cygni.service -n 30 --no-pager >&2 || true
    die "cygni.service is not accepting SSH on port 2222 (its log is above)"
}

# The name others reach this machine by when it resolves to a non-loopback
# address, else its first address.
public_host() {
    name=$(hostname -f 2>/dev/null || hostname)
    case "$name" in
        *.*)
            if getent ahosts "$name" 2>/dev/null | awk '{ print $1 }' | grep -qv -e '^127\.' -e '^::1$'; then
                printf '%s\n' "$name"
                return 0
            fi ;;
    esac
    addr=$(hostname -I 2>/dev/null | awk '{ print $1 }')
    printf '%s\n' "${addr:-$name}"
}

summary() {
    host=$(public_host)
    fp=$(ssh-keygen -lf "$DATA/ssh_host_ed25519_key" 2>/dev/null | awk '{ print $2 }') || fp=""
    say "Cygni is running (systemctl status cygni; journalctl -u cygni)"
    note "SSH host key: ${fp:-see journalctl -u cygni} (ED25519)"
    note "Push an app:"
    note "  git remote add cygni ssh://cygni@$host:2222/myapp && git push cygni main"
    note "Administer: ssh -p 2222 cygni@$host help"
}

# ---------------------------------------------------------------- k3s

# The k3s download for this machine: sets k3s_url and k3s_sha256.
resolve_k3s() {
    arch=$(normalize_arch "$(uname -m)") || die "unsupported architecture $(uname -m)"
    tag=$(printf '%s' "$K3S_VERSION" | sed 's/+/%2B/')
    case "$arch" in
        x86_64) k3s_url="https://github.com/k3s-io/k3s/releases/download/$tag/k3s"
            k3s_sha256=$K3S_SHA256_x86_64 ;;
        aarch64) k3s_url="https://github.com/k3s-io/k3s/releases/download/$tag/k3s-arm64"
            k3s_sha256=$K3S_SHA256_aarch64 ;;
    esac
    [ -z "$opt_k3s_sha256" ] || k3s_sha256=$opt_k3s_sha256
    case "$k3s_sha256" in
        '') die "no sha256 is pinned for k3s $K3S_VERSION on $arch: pass --k3s-sha256 HASH (from sha256sum-*.txt of that release)" ;;
        *[!0-9a-f]*) die "--k3s-sha256 $k3s_sha256 is not a lowercase hex sha256" ;;
    esac
    [ "${#k3s_sha256}" -eq 64 ] || die "--k3s-sha256 $k3s_sha256 is not 64 hex digits"
}

# Download, check and install the pinned k3s binary (unless it is there).
install_k3s_binary() {
    resolve_k3s
    if [ -x "$K3S_BIN" ] && [ "$(sha256sum "$K3S_BIN" | awk '{ print $1 }')" = "$k3s_sha256" ]; then
        note "k3s $K3S_VERSION: already installed"
        return 0
    fi
    command -v curl >/dev/null 2>&1 || die "curl is needed to download k3s"
    say "Downloading k3s $K3S_VERSION"
    fetch "$k3s_url" "$work/k3s"
    got=$(sha256sum "$work/k3s" | awk '{ print $1 }')
    [ "$got" = "$k3s_sha256" ] || die "k3s download has sha256 $got, expected $k3s_sha256: not installed"
    install -m 0755 "$work/k3s" "$K3S_BIN"
    for tool in kubectl crictl ctr; do
        [ -e "/usr/local/bin/$tool" ] || ln -s k3s "/usr/local/bin/$tool"
    done
    say "Installed $K3S_BIN ($K3S_VERSION, sha256 checked)"
}

check_addr_opts() {
    case "$opt_node_ip" in
        *[!0-9A-Fa-f.:]*) die "--node-ip $opt_node_ip is not an IP address" ;;
    esac
    case "$opt_flannel_iface" in
        *[!A-Za-z0-9._-]*) die "--flannel-iface $opt_flannel_iface is not an interface name" ;;
    esac
}

# k3s's config.yaml from ours, with node-ip / flannel-iface and, for an
# agent, the server and token. Mode 0600: an agent's holds the token.
write_k3s_config() {
    mkdir -p "$K3S_ETC"
    {
        cat "$src/k3s/config.yaml"
        [ -z "$opt_node_ip" ] || echo "node-ip: \"$opt_node_ip\""
        [ -z "$opt_flannel_iface" ] || echo "flannel-iface: \"$opt_flannel_iface\""
        if [ -n "$opt_join" ]; then
            echo "server: \"$opt_join\""
            echo "token: \"$opt_token\""
        fi
    } > "$work/k3s-config.yaml"
    if install_file "$work/k3s-config.yaml" "$K3S_ETC/config.yaml" 0600; then
        say "Installed $K3S_ETC/config.yaml"
        k3s_restart=yes
    fi
}

# registries.yaml from our template: $1 HOST:PORT, $2 USER:PASSWORD.
write_registries() {
    case "$1" in
        *[!A-Za-z0-9.:\[\]-]*|'') die "--registry $1 is not HOST:PORT" ;;
    esac
    user=${2%%:*}
    password=${2#*:}
    case "$user$password" in
        *[!A-Za-z0-9._~-]*) die "the registry credential has characters this installer does not write into YAML" ;;
    esac
    if [ -z "$user" ] || [ -z "$password" ] || [ "$user" = "$2" ]; then
        die "the registry credential must be USER:PASSWORD"
    fi
    sed -e "s|@CYGNI_REGISTRY_USER@|$user|g" -e "s|@CYGNI_REGISTRY_PASSWORD@|$password|g" \
        -e "s|@CYGNI_REGISTRY@|$1|g" "$src/k3s/registries.yaml" > "$work/registries.yaml"
    mkdir -p "$K3S_ETC"
    if install_file "$work/registries.yaml" "$K3S_ETC/registries.yaml" 0600; then
        say "Installed $K3S_ETC/registries.yaml (mirror of $1)"
        k3s_restart=yes
    fi
}

# Start (or restart, when its files changed) a k3s unit: $1 the unit name.
start_k3s_unit() {
    systemctl daemon-reload
    systemctl is-enabled --quiet "$1" 2>/dev/null || systemctl enable --quiet "$1"
    if ! systemctl is-active --quiet "$1"; then
        say "Starting $1"
        systemctl start "$1"
    elif [ -n "$k3s_restart" ]; then
        # KillMode=process: the pods keep running through this.
        say "Restarting $1 (its configuration changed)"
        systemctl restart "$1"
    fi
    k3s_restart=""
}

wait_for_k3s() {
    i=0
    while [ "$i" -lt 120 ]; do
        if [ -f "$K3S_ETC/k3s.yaml" ] && "$K3S_BIN" kubectl get --raw /readyz >/dev/null 2>&1; then
            return 0
        fi
        sleep 1
        i=$((i + 1))
    done
    journalctl -u k3s.service -n 30 --no-pager >&2 || true
    die "k3s did not become ready within 120s (its log is above)"
}

# --k3s, before Cygni: k3s up, cygni.service ordered after it.
install_k3s_server() {
    check_addr_opts
    install_k3s_binary
    write_k3s_config
    if install_file "$src/systemd/k3s.service" "$K3S_UNIT" 0644; then
        say "Installed $K3S_UNIT"
    fi
    start_k3s_unit k3s.service
    wait_for_k3s
    printf '[Unit]\nAfter=k3s.service\nWants=k3s.service\n' > "$work/k3s.conf"
    mkdir -p "$(dirname "$K3S_DROPIN")"
    if install_file "$work/k3s.conf" "$K3S_DROPIN" 0644; then
        reload_needed=yes
        restart_needed="it now starts after k3s"
    fi
}

# --k3s, after Cygni is up: every pull of its images goes to its registry.
configure_registry_mirror() {
    cred_file="$DATA/registry-credential"
    i=0
    while [ ! -s "$cred_file" ] && [ "$i" -lt 30 ]; do sleep 1; i=$((i + 1)); done
    [ -s "$cred_file" ] || die "Cygni wrote no $cred_file: is registry_listen set in $CONFIG?"
    registry="${opt_node_ip:-$(hostname -I | awk '{ print $1 }')}:$REGISTRY_PORT"
    write_registries "$registry" "$(head -n 1 "$cred_file")"
    start_k3s_unit k3s.service
}

do_join() {
    [ "$(id -u)" -eq 0 ] || die "run as root (sudo)"
    command -v systemctl >/dev/null 2>&1 || die "systemd is needed"
    case "$opt_join" in
        https://*) ;;
        *) die "--join $opt_join must be the server's URL, https://HOST:6443" ;;
    esac
    case "$opt_join$opt_token" in
        *[!A-Za-z0-9.:/_\[\]-]*) die "--join and --token take URL and token characters only" ;;
    esac
    [ -n "$opt_token" ] || die "--join needs --token TOKEN (cluster:join-command prints both)"
    check_addr_opts
    if [ -n "$script_dir" ]; then src=$script_dir; else die "--join runs from a Cygni release or checkout (it needs k3s/ and systemd/)"; fi
    install_k3s_binary
    write_k3s_config
    if [ -n "$opt_registry" ]; then
        write_registries "$opt_registry" "$opt_registry_credential"
    fi
    if install_file "$src/systemd/k3s-agent.service" "$K3S_AGENT_UNIT" 0644; then
        say "Installed $K3S_AGENT_UNIT"
    fi
    start_k3s_unit k3s-agent.service
    say "This machine joins $opt_join as a k3s agent: see it with cluster:nodes"
}

# ---------------------------------------------------------------- uninstall

do_uninstall() {
    [ "$(id -u)" = 0 ] || die "run as root (sudo)"
    [ -d /run/systemd/system ] || die "systemd is not running on this machine"
    if [ -f "$UNIT" ] || systemctl cat cygni.service >/dev/null 2>&1; then
        say "Stopping and disabling cygni.service (its local-runtime apps stop with it)"
        systemctl disable --now --quiet cygni.service 2>/dev/null || true
    fi
    rm -f "$UNIT"
    systemctl daemon-reload
    systemctl reset-failed cygni.service 2>/dev/null || true
    say "Removing $BIN, $SHARE, $DOC"
    rm -rf "$BIN" "$SHARE" "$DOC"
    if [ -n "$opt_purge" ]; then
        if command -v docker >/dev/null 2>&1; then
            ids=$(docker ps -aq --filter "label=cygni.data-dir=$DATA" 2>/dev/null || true)
            if [ -n "$ids" ]; then
                say "Removing Cygni's containers"
                # shellcheck disable=SC2086 # a list of container ids
                docker rm -f $ids >/dev/null || warn "could not remove every container"
            fi
        fi
        say "Purging $ETC, $DATA and the $APP_USER user"
        rm -rf "$ETC" "$DATA"
        if id "$APP_USER" >/dev/null 2>&1; then
            userdel "$APP_USER" 2>/dev/null || warn "could not remove the user $APP_USER"
        fi
    else
        note "kept $ETC and $DATA (apps, releases, keys): --uninstall --purge removes them"
    fi
    note "packages (git, python3, nodejs, ...) were left installed"
    say "Uninstalled"
}

# ---------------------------------------------------------------- main

main() {
    # When piped (curl | sh) the rest of stdin is this script's tail: no
    # child gets to read it.
    exec </dev/null
    # The folder this script sits in when it runs from a file (a checkout or
    # an unpacked release), not when it is piped.
    SELF=""
    script_dir=""
    if [ -f "$0" ] && grep -q '^# cygni-installer:' "$0" 2>/dev/null; then
        SELF=$0
        script_dir=$(cd "$(dirname "$0")/.." && pwd)
    fi
    opt_admin_key=""
    opt_binary=""
    opt_domain=""
    opt_release_url=""
    opt_uninstall=""
    opt_purge=""
    opt_k3s=""
    opt_join=""
    opt_token=""
    opt_registry=""
    opt_registry_credential=""
    opt_node_ip=""
    opt_flannel_iface=""
    opt_k3s_sha256=""
    k3s_restart=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --admin-key|--binary|--domain|--release-url|--join|--token|--registry|\
            --registry-credential|--node-ip|--flannel-iface|--k3s-sha256)
                [ $# -ge 2 ] || die "$1 needs a value"
                case "$1" in
                    --admin-key) opt_admin_key=$2 ;;
                    --binary) opt_binary=$2 ;;
                    --domain) opt_domain=$2 ;;
                    --release-url) opt_release_url=$2 ;;
                    --join) opt_join=$2 ;;
                    --token) opt_token=$2 ;;
                    --registry) opt_registry=$2 ;;
                    --registry-credential) opt_registry_credential=$2 ;;
                    --node-ip) opt_node_ip=$2 ;;
                    --flannel-iface) opt_flannel_iface=$2 ;;
                    --k3s-sha256) opt_k3s_sha256=$2 ;;
                esac
                shift 2 ;;
            --k3s) opt_k3s=yes; shift ;;
            --uninstall) opt_uninstall=yes; shift ;;
            --purge) opt_purge=yes; shift ;;
            -h|--help)
                if [ -n "$SELF" ]; then usage; else echo "see the comment at the top of install.sh"; fi
                exit 0 ;;
            *) die "unknown option $1 (see --help)" ;;
        esac
    done
    if [ -n "$opt_purge" ] && [ -z "$opt_uninstall" ]; then
        die "--purge goes with --uninstall"
    fi
    if [ -n "$opt_join" ] && { [ -n "$opt_k3s" ] || [ -n "$opt_uninstall" ]; }; then
        die "--join makes an agent: it goes with neither --k3s nor --uninstall"
    fi
    if [ -n "$opt_token" ] && [ -z "$opt_join" ]; then
        die "--token goes with --join SERVER"
    fi
    if [ -n "$opt_registry" ] && [ -z "$opt_registry_credential" ]; then
        die "--registry needs --registry-credential USER:PASSWORD"
    fi
    # --release-url, then CYGNI_RELEASE_URL; else a file next to a release
    # or checkout installs that; piped, the stamped default.
    release_url=${opt_release_url:-${CYGNI_RELEASE_URL:-}}
    if [ -z "$release_url" ] && [ -z "$script_dir" ]; then
        release_url=$DEFAULT_RELEASE_URL
    fi
    work=$(mktemp -d "${TMPDIR:-/tmp}/cygni-install.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    trap 'exit 130' INT TERM
    if [ -n "$opt_uninstall" ]; then
        do_uninstall
    elif [ -n "$opt_join" ]; then
        do_join
    else
        do_install
    fi
}

main "$@"
