#!/bin/sh
# Builds Cygni's release artifacts into dist/:
#
#   dist/cygni-linux-ARCH.tar.gz   one per architecture, holding
#       cygni-linux-ARCH/bin/cygni          the daemon
#       cygni-linux-ARCH/buildpacks/        the shipped buildpacks
#       cygni-linux-ARCH/systemd/           the unit
#       cygni-linux-ARCH/k3s/               the k3s config files
#       cygni-linux-ARCH/installer/install.sh
#       cygni-linux-ARCH/README.md, VERSION
#   dist/install.sh                the one-line installer
#   dist/SHA256SUMS                sha256 of every other file in dist/
#
# Serve dist/ from any web server and install a machine with
#   curl -fsSL BASE/install.sh | sudo sh -s -- --release-url BASE
#
# Usage: scripts/release.sh [--binary FILE] [--target TRIPLE] [--arch ARCH]
#                           [--release-url URL] [--out DIR]
#   --binary FILE      package this already-built cygni instead of building
#                      (tests and CI use target/debug/cygni: no LTO build)
#   --target TRIPLE    cargo build --release --locked --target TRIPLE
#   --arch ARCH        the tarball's architecture (default: from --target,
#                      else this machine's `uname -m`)
#   --release-url URL  where dist/ will be served: stamped into
#                      dist/install.sh as its default, so
#                      `curl -fsSL URL/install.sh | sudo sh` needs no option
#   --out DIR          write there instead of dist/
#
# Running it again for another architecture adds that tarball and rewrites
# SHA256SUMS over everything in the folder. Tarballs are reproducible for a
# given commit and binary (sorted, owner 0, mtime of the last commit).
set -eu

die() { echo "release.sh: $*" >&2; exit 1; }

usage() { sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; }

normalize_arch() {
    case "$1" in
        x86_64|amd64) echo x86_64 ;;
        aarch64|arm64) echo aarch64 ;;
        *) return 1 ;;
    esac
}

main() {
    here=$(cd "$(dirname "$0")/.." && pwd)
    binary=""
    target=""
    arch=""
    release_url=""
    out="$here/dist"
    while [ $# -gt 0 ]; do
        case "$1" in
            --binary|--target|--arch|--release-url|--out)
                [ $# -ge 2 ] || die "$1 needs a value"
                case "$1" in
                    --binary) binary=$2 ;;
                    --target) target=$2 ;;
                    --arch) arch=$2 ;;
                    --release-url) release_url=$2 ;;
                    --out) out=$2 ;;
                esac
                shift 2 ;;
            -h|--help) usage; exit 0 ;;
            *) die "unknown option $1 (see --help)" ;;
        esac
    done
    if [ -n "$binary" ] && [ -n "$target" ]; then
        die "--binary and --target exclude each other"
    fi
    if [ -n "$release_url" ]; then
        # Stamped into a shell script: only the characters a URL needs, and
        # none that mean something inside double quotes.
        case "$release_url" in
            http://*|https://*) ;;
            *) die "--release-url must start with http:// or https://" ;;
        esac
        case "$release_url" in
            *[!A-Za-z0-9._~:/%+@=,-]*) die "--release-url has characters outside [A-Za-z0-9._~:/%+@=,-]" ;;
        esac
        release_url=${release_url%/}
    fi

    if [ -z "$arch" ]; then
        if [ -n "$target" ]; then
            arch=${target%%-*}
        else
            arch=$(uname -m)
        fi
    fi
    arch=$(normalize_arch "$arch") || die "unsupported architecture $arch (x86_64, aarch64)"

    if [ -z "$binary" ]; then
        cd "$here"
        if [ -n "$target" ]; then
            echo "-----> cargo build --release --locked --target $target"
            cargo build --release --locked --target "$target"
            binary="$here/target/$target/release/cygni"
        else
            echo "-----> cargo build --release --locked"
            cargo build --release --locked
            binary="$here/target/release/cygni"
        fi
    fi
    if [ ! -f "$binary" ] || [ ! -x "$binary" ]; then
        die "$binary is not an executable file"
    fi

    version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$here/Cargo.toml" | head -n 1)
    [ -n "$version" ] || die "no version in Cargo.toml"
    commit=$(git -C "$here" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
    if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
        epoch=$SOURCE_DATE_EPOCH
    else
        epoch=$(git -C "$here" log -1 --format=%ct 2>/dev/null || echo 0)
    fi

    name="cygni-linux-$arch"
    mkdir -p "$out"
    out=$(cd "$out" && pwd)
    stage=$(mktemp -d "${TMPDIR:-/tmp}/cygni-release.XXXXXX")
    trap 'rm -rf "$stage"' EXIT INT TERM
    root="$stage/$name"
    mkdir -p "$root/bin" "$root/installer"
    cp "$binary" "$root/bin/cygni"
    chmod 0755 "$root/bin/cygni"
    cp -R "$here/buildpacks" "$here/systemd" "$here/k3s" "$root/"
    cp "$here/README.md" "$root/README.md"
    stamp_installer "$here/installer/install.sh" "$root/installer/install.sh" "$release_url"
    printf '%s %s\n' "$version" "$commit" > "$root/VERSION"
    chmod -R u+rwX,go+rX,go-w "$root"

    echo "-----> Writing $out/$name.tar.gz"
    tar -C "$stage" --sort=name --owner=0 --group=0 --numeric-owner \
        --mtime="@$epoch" -cf - "$name" | gzip -n > "$out/$name.tar.gz.tmp"
    mv "$out/$name.tar.gz.tmp" "$out/$name.tar.gz"
    cp "$root/installer/install.sh" "$out/install.sh"
    chmod 0644 "$out/install.sh" "$out/$name.tar.gz"

    (
        cd "$out"
        rm -f SHA256SUMS.tmp
        for f in install.sh cygni-linux-*.tar.gz; do
            [ -f "$f" ] && sha256sum "$f" >> SHA256SUMS.tmp
        done
        mv SHA256SUMS.tmp SHA256SUMS
    )
    echo "-----> $out:"
    (cd "$out" && cat SHA256SUMS)
    if [ -n "$release_url" ]; then
        echo "-----> Install with: curl -fsSL $release_url/install.sh | sudo sh"
    else
        echo "-----> Serve $out at BASE, then install with:"
        echo "       curl -fsSL BASE/install.sh | sudo sh -s -- --release-url BASE"
    fi
}

# Copies the installer, replacing its empty default release URL by $3.
stamp_installer() {
    src=$1 dest=$2 url=$3
    grep -q '^DEFAULT_RELEASE_URL=""$' "$src" || die "$src has no DEFAULT_RELEASE_URL=\"\" line"
    if [ -n "$url" ]; then
        sed "s|^DEFAULT_RELEASE_URL=\"\"\$|DEFAULT_RELEASE_URL=\"$url\"|" "$src" > "$dest"
    else
        cp "$src" "$dest"
    fi
    chmod 0755 "$dest"
}

main "$@"
