#!/bin/sh
# Prepares the local images the Docker tests use, without downloading
# anything (idempotent: an image that exists is left alone):
#
#   cygni-base:test  a busybox rootfs (from busybox-static), via `docker import`.
#                    The Dockerfile fixtures start `FROM cygni-base:test`.
#   cygni-run:test   the same plus the host's /usr/bin/python3 and its
#                    stdlib: the run image buildpack slugs are put on in the
#                    tests (the procfile-app fixture runs `python3 -m http.server`).
#   cygni-stack-base:test
#                    Debian 12 with python3, python3-venv, nodejs, npm, git:
#                    the booted-machine test's debootstrap rootfs (cached by
#                    scripts/machine-test.sh, built with --rootfs-only if
#                    missing: Debian packages from Debian's mirror, once per
#                    machine), via `docker import`. The stack tests build
#                    Cygni's stack images from it (`stack_base_image`).
#                    Without root or a mirror it is not made, and those
#                    tests say SKIPPED (and fail under CI=true).
#
# With --start-dockerd it first starts dockerd in the background (as root)
# when no engine answers, and waits (bounded) for its socket. Exit 3: no
# engine.
set -eu

if [ "${1:-}" = "--start-dockerd" ]; then
    if ! docker info >/dev/null 2>&1; then
        dockerd >/tmp/dockerd.log 2>&1 &
        i=0
        until docker info >/dev/null 2>&1; do
            i=$((i + 1))
            if [ "$i" -gt 60 ]; then
                echo "dockerd did not answer within 30s; see /tmp/dockerd.log" >&2
                exit 3
            fi
            sleep 0.5
        done
    fi
fi

if ! docker info >/dev/null 2>&1; then
    echo "docker engine not available" >&2
    exit 3
fi

BUSYBOX=/bin/busybox
if [ ! -x "$BUSYBOX" ]; then
    echo "$BUSYBOX missing: apt-get install busybox-static" >&2
    exit 4
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# A busybox rootfs in $1.
busybox_rootfs() {
    mkdir -p "$1/bin" "$1/usr/bin" "$1/tmp" "$1/etc" "$1/www" "$1/app"
    chmod 1777 "$1/tmp"
    cp "$BUSYBOX" "$1/bin/busybox"
    for applet in $("$BUSYBOX" --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$1/bin/$applet"
    done
    echo 'root:x:0:0:root:/root:/bin/sh' >"$1/etc/passwd"
    echo 'root:x:0:' >"$1/etc/group"
}

if ! docker image inspect cygni-base:test >/dev/null 2>&1; then
    busybox_rootfs "$tmp/base"
    tar -C "$tmp/base" -c . |
        docker import -c 'ENV PATH=/usr/local/bin:/usr/bin:/bin' -c 'CMD ["/bin/sh"]' - cygni-base:test >/dev/null
    echo "built cygni-base:test"
fi

if ! docker image inspect cygni-run:test >/dev/null 2>&1; then
    busybox_rootfs "$tmp/run"
    if [ -x /usr/bin/python3 ]; then
        py=$(readlink -f /usr/bin/python3)
        stdlib=$(/usr/bin/python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
        cp "$py" "$tmp/run/usr/bin/python3"
        # The interpreter's shared libraries, at the same paths.
        for lib in $(ldd "$py" | grep -o '/[^ ]*'); do
            mkdir -p "$tmp/run$(dirname "$lib")"
            cp -L "$lib" "$tmp/run$lib"
        done
        mkdir -p "$tmp/run$(dirname "$stdlib")"
        tar -C / --exclude='*/test' --exclude='*/__pycache__' --exclude='*/site-packages' \
            --exclude='*/dist-packages' -cf - "${stdlib#/}" | tar -C "$tmp/run" -xf -
    else
        echo "no /usr/bin/python3: cygni-run:test has busybox only" >&2
    fi
    tar -C "$tmp/run" -c . |
        docker import -c 'ENV PATH=/usr/local/bin:/usr/bin:/bin' -c 'CMD ["/bin/sh"]' - cygni-run:test >/dev/null
    echo "built cygni-run:test"
fi

if ! docker image inspect cygni-stack-base:test >/dev/null 2>&1; then
    cache=${CYGNI_MACHINE_CACHE:-/var/cache/cygni-machine-test}
    find_rootfs() {
        for marker in "$cache"/rootfs-*/.cygni-rootfs-complete; do
            if [ -f "$marker" ]; then dirname "$marker"; return 0; fi
        done
        return 0
    }
    rootfs=$(find_rootfs)
    if [ -z "$rootfs" ] && [ "$(id -u)" = 0 ]; then
        here=$(cd "$(dirname "$0")" && pwd)
        echo "building the Debian 12 rootfs for cygni-stack-base:test (scripts/machine-test.sh --rootfs-only)" >&2
        "$here/machine-test.sh" --rootfs-only >&2 || true
        rootfs=$(find_rootfs)
    fi
    if [ -n "$rootfs" ]; then
        tar -C "$rootfs" --exclude=./usr/share/doc --exclude=./usr/share/man \
            --exclude=./usr/share/locale --exclude=./var/cache/apt -c . |
            docker import -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
                -c 'CMD ["/bin/bash"]' - cygni-stack-base:test >/dev/null
        echo "built cygni-stack-base:test from $rootfs"
    else
        echo "no Debian 12 rootfs: cygni-stack-base:test not built (the stack tests will skip)" >&2
    fi
fi
