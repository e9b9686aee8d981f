#!/bin/sh
# Cygni installer: sets up this (Debian or Ubuntu) machine as a Cygni host.
#
#   curl -fsSL https://HOST/install.sh | sudo sh -s -- --admin-key ~/.ssh/id_ed25519.pub
#
# or, from a checkout:  sudo installer/install.sh --admin-key ~/.ssh/id_ed25519.pub
#
# What it does, idempotently:
#   1. installs what builds and apps need (git, python3-venv, nodejs/npm);
#   2. installs the cygni binary: --binary FILE, or builds the checkout it
#      runs from with cargo;
#   3. installs the buildpacks to /usr/share/cygni/buildpacks;
#   4. creates the unprivileged user apps and builds run as (cygni-app);
#   5. writes /etc/cygni/cygni.toml (kept if it exists);
#   6. installs and starts the systemd unit.
set -eu

admin_key=""
binary=""
domain=""
while [ $# -gt 0 ]; do
    case "$1" in
        --admin-key) admin_key="$2"; shift 2 ;;
        --binary) binary="$2"; shift 2 ;;
        --domain) domain="$2"; shift 2 ;;
        -h|--help)
            sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $1" >&2; exit 64 ;;
    esac
done

die() { echo "install.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (sudo)"
command -v apt-get >/dev/null || die "this installer supports Debian and Ubuntu (apt-get)"
if [ -n "$admin_key" ] && [ ! -r "$admin_key" ]; then
    die "--admin-key $admin_key is not readable"
fi

here=$(cd "$(dirname "$0")/.." && pwd)

echo "-----> Installing packages"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    git openssh-client ca-certificates python3 python3-venv nodejs npm >/dev/null

echo "-----> Installing the cygni binary"
if [ -n "$binary" ]; then
    install -m 0755 "$binary" /usr/local/bin/cygni
elif [ -f "$here/Cargo.toml" ]; then
    command -v cargo >/dev/null || die "no --binary given and no cargo to build one"
    (cd "$here" && cargo build --release --locked)
    install -m 0755 "$here/target/release/cygni" /usr/local/bin/cygni
else
    die "pass --binary FILE (a built cygni), or run this from a checkout"
fi

echo "-----> Installing buildpacks"
mkdir -p /usr/share/cygni
rm -rf /usr/share/cygni/buildpacks.new
cp -R "$here/buildpacks" /usr/share/cygni/buildpacks.new
chmod -R a+rX /usr/share/cygni/buildpacks.new
rm -rf /usr/share/cygni/buildpacks
mv /usr/share/cygni/buildpacks.new /usr/share/cygni/buildpacks

echo "-----> Creating the app user"
if ! id cygni-app >/dev/null 2>&1; then
    useradd --system --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin cygni-app
fi

echo "-----> Writing /etc/cygni/cygni.toml"
mkdir -p /etc/cygni /var/lib/cygni
if [ ! -f /etc/cygni/cygni.toml ]; then
    {
        echo "# Cygni configuration: keys are the serve flags with _ for -."
        echo "data_dir = \"/var/lib/cygni\""
        [ -n "$domain" ] && echo "domain = \"$domain\""
        [ -n "$admin_key" ] && echo "admin_key = \"/etc/cygni/admin.pub\""
    } > /etc/cygni/cygni.toml
fi
if [ -n "$admin_key" ]; then
    install -m 0644 "$admin_key" /etc/cygni/admin.pub
fi

echo "-----> Starting cygni.service"
install -m 0644 "$here/systemd/cygni.service" /etc/systemd/system/cygni.service
systemctl daemon-reload
systemctl enable --now cygni.service
systemctl restart cygni.service

echo "-----> Done. Push an app with:"
echo "       git remote add cygni ssh://cygni@$(hostname -f 2>/dev/null || hostname):2222/myapp"
echo "       git push cygni main"
