#!/bin/sh
# install-missing.sh ROLE: makes sure the stack image has what Cygni's
# buildpacks use, installing from the base's apt sources only what the base
# image lacks. A base that has it all (the local base of an offline host)
# is left as it is and nothing is downloaded. ROLE is `build` (compilers,
# venv, npm, git) or `run` (the interpreters a slug runs on).
set -eu

role=$1
missing=""
need() { # need COMMAND-CHECK PACKAGE
    if ! sh -c "$1" >/dev/null 2>&1; then missing="$missing $2"; fi
}
need 'command -v python3' python3
need 'command -v node' nodejs
need 'command -v npm' npm
need 'test -s /etc/ssl/certs/ca-certificates.crt' ca-certificates
if [ "$role" = build ]; then
    need 'python3 -m venv /tmp/cygni-venv-check && rm -rf /tmp/cygni-venv-check' python3-venv
    need 'command -v go' golang-go
    need 'command -v git' git
    need 'command -v bash' bash
fi

if [ -z "$missing" ]; then
    echo "stack $role image: the base image has everything (nothing installed)"
    exit 0
fi
echo "stack $role image: installing$missing"
export DEBIAN_FRONTEND=noninteractive
# shellcheck disable=SC2086 # a list of package names
if apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing; then
    apt-get clean
    rm -rf /var/lib/apt/lists/*
    exit 0
fi
# No mirror: the image is still usable for what the base has; the
# buildpack that needs the rest says so when an app needs it.
echo "stack $role image: could not install$missing (no package mirror reachable); apps needing them will not build or run" >&2
