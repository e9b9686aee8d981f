# Shared by bench-daemon.sh and bench-memory.sh: start the real daemon
# (`cygni serve --runtime local`) in a temp data dir on loopback ports, and
# deploy an nginx-served app to it through `git push`, as a user would.
#
# Source it after setting WORK (a fresh temp dir), SERVER_CPU, and the
# PIDS array plus a cleanup trap that kills every pid in it. It defines:
#   bench_tools            install nginx, wrk, curl, openssl, sqlite3 when missing
#   bench_build            build target/release/cygni unless CYGNI_BIN is set
#   daemon_start           start the daemon pinned to SERVER_CPU (DAEMON_PID)
#   daemon_stop            SIGTERM and wait (bounded)
#   deploy_app NAME        git push an nginx app; its instance's port in APP_PORT[NAME]
#   install_cert HOST APP  store a self-signed ECDSA certificate for HOST (daemon stopped)
#   cpu_ticks PID          utime+stime of every thread of PID
#   rss_kb PID             VmRSS of PID in KiB
#   rss_parts PID          VmRSS split into anonymous and file-backed
#
# No traffic leaves loopback: the ACME directory is a refused loopback
# port, and every URL resolves to 127.0.0.1.

die() { echo "$(basename "$0"): $*" >&2; exit 1; }

bench_tools() {
    local missing=()
    command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)
    command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    command -v sqlite3 >/dev/null 2>&1 || missing+=(sqlite3)
    command -v ssh-keygen >/dev/null 2>&1 || missing+=(openssh-client)
    if [ "${#missing[@]}" -gt 0 ]; then
        [ "$(id -u)" = 0 ] || die "missing ${missing[*]}; install them or run as root"
        echo "installing ${missing[*]} ..."
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || {
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
        }
    fi
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)
}

bench_build() {
    BIN=${CYGNI_BIN:-target/release/cygni}
    if [ -z "${CYGNI_BIN:-}" ]; then
        echo "building cygni (release) ..."
        cargo build --release --quiet --bin cygni
    fi
    [ -x "$BIN" ] || die "no $BIN"
    BIN=$(realpath "$BIN")
}

# A free loopback port: try random ones until a connect is refused (bounded).
free_port() {
    local p i
    for i in $(seq 1 50); do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return 0; fi
    done
    die "no free port found"
}

# curl until HOST answers 200 on PORT (bounded: 20 s).
wait_http() { # port host
    local i
    for i in $(seq 1 200); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $2" "http://127.0.0.1:$1/" 2>/dev/null)" = 200 ] && return 0
        sleep 0.1
    done
    die "nothing answers 200 for $2 on 127.0.0.1:$1 after 20 s"
}

bench_daemon_init() {
    chmod 755 "$WORK"
    SSH_PORT=$(free_port)
    HTTP_PORT=$(free_port)
    HTTPS_PORT=$(free_port)
    ssh-keygen -q -t ed25519 -N '' -C bench -f "$WORK/admin" || die "ssh-keygen failed"
    SSH_OPTS=(-o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=no
        -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=10)
    # Apps run as an unprivileged user when we are root: they write their
    # port and nginx's temp files here.
    APPS_DIR="$WORK/apps"
    mkdir -p "$APPS_DIR"
    chmod 1777 "$APPS_DIR"
    declare -gA APP_PORT
}

daemon_start() {
    # RUST_LOG as a user would have it: the daemon's default filter.
    taskset -c "$SERVER_CPU" "$BIN" serve --data-dir "$WORK/data" \
        --ssh-listen "127.0.0.1:$SSH_PORT" --http-listen "127.0.0.1:$HTTP_PORT" \
        --https-listen "127.0.0.1:$HTTPS_PORT" --runtime local --domain localhost \
        --admin-key "$WORK/admin.pub" --acme-directory "https://127.0.0.1:1/directory" \
        >>"$WORK/daemon.out" 2>>"$WORK/daemon.log" &
    DAEMON_PID=$!
    PIDS+=("$DAEMON_PID")
    local i
    for i in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$HTTP_PORT") 2>/dev/null && return 0
        kill -0 "$DAEMON_PID" 2>/dev/null || die "the daemon exited; log: $(tail -5 "$WORK/daemon.log")"
        sleep 0.1
    done
    die "the daemon does not listen on $HTTP_PORT after 10 s"
}

daemon_stop() {
    kill -TERM "$DAEMON_PID" 2>/dev/null || return 0
    local i
    for i in $(seq 1 200); do
        kill -0 "$DAEMON_PID" 2>/dev/null || { wait "$DAEMON_PID" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    kill -KILL "$DAEMON_PID" 2>/dev/null || true
    wait "$DAEMON_PID" 2>/dev/null || true
}

cygni_ssh() { # command...
    timeout 60 ssh -p "$SSH_PORT" -i "$WORK/admin" "${SSH_OPTS[@]}" cygni@127.0.0.1 "$@"
}

# An app whose web process is nginx (1 worker, no access log, a fixed
# 200), as small and fast a backend as there is. It writes the port it
# got to $APPS_DIR/NAME.port so the nginx proxy can use the same instance.
deploy_app() { # name
    local name=$1 repo="$WORK/repo-$1"
    mkdir -p "$repo"
    cat >"$repo/Procfile" <<'EOF'
web: sh ./start.sh
EOF
    cat >"$repo/start.sh" <<EOF
set -e
d=$APPS_DIR/$name.\$PORT
mkdir -p "\$d/tmp"
sed -e "s|@PORT@|\$PORT|g" -e "s|@DIR@|\$d|g" nginx.conf.in >"\$d/nginx.conf"
echo "\$PORT" >$APPS_DIR/$name.port
exec $NGINX -e stderr -p "\$d" -c "\$d/nginx.conf"
EOF
    cat >"$repo/nginx.conf.in" <<'EOF'
daemon off;
master_process off;
worker_processes 1;
error_log stderr warn;
pid @DIR@/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path @DIR@/tmp/body; proxy_temp_path @DIR@/tmp/proxy;
    fastcgi_temp_path @DIR@/tmp/fcgi; uwsgi_temp_path @DIR@/tmp/uwsgi; scgi_temp_path @DIR@/tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    default_type text/plain;
    server {
        listen 127.0.0.1:@PORT@;
        location / { return 200 "hello from the backend\n"; }
    }
}
EOF
    (
        cd "$repo"
        export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
        export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.com
        export GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example.com
        git init -q -b main . && git add . && git commit -q -m bench
        GIT_SSH_COMMAND="ssh -i $WORK/admin ${SSH_OPTS[*]}" timeout 120 \
            git push -q "ssh://cygni@127.0.0.1:$SSH_PORT/$name" main >"$WORK/push-$name.log" 2>&1
    ) || die "push of $name failed: $(tail -5 "$WORK/push-$name.log")"
    wait_http "$HTTP_PORT" "$name.localhost"
    APP_PORT[$name]=$(cat "$APPS_DIR/$name.port")
}

# A self-signed ECDSA P-256 certificate for HOST, stored as if ACME had
# issued it (the daemon serves stored certificates from its next start).
install_cert() { # host app
    local host=$1 app=$2 now
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/CN=$host" -addext "subjectAltName=DNS:$host" \
        -keyout "$WORK/key.pem" -out "$WORK/cert.pem" >/dev/null 2>&1 || die "openssl req failed"
    now=$(date +%s)
    sqlite3 "$WORK/data/cygni.db" <<EOF || die "cannot store the certificate"
INSERT OR REPLACE INTO certificates
    (host, app_id, chain_pem, key_pem, serial, issuer, not_before, not_after, challenge, renew_at, updated_at)
VALUES ('$host', (SELECT id FROM apps WHERE name = '$app'),
    CAST(readfile('$WORK/cert.pem') AS TEXT), CAST(readfile('$WORK/key.pem') AS TEXT), '01', 'bench', $((now - 60)),
    $((now + 86400)), 'http-01', $((now + 80000)), $now);
EOF
}

cpu_ticks() { # pid -> utime+stime of all its threads
    sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}

rss_kb() {
    awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"
}

# What VmRSS is made of: the process's own (anonymous) memory, and the
# pages of files it maps (its executable's code, shared and clean).
rss_parts() {
    awk '/^RssAnon:/ { a = $2 } /^RssFile:/ { f = $2 }
        END { printf "anonymous %.1f MB + file-backed %.1f MB", a / 1024, f / 1024 }' "/proc/$1/status"
}
