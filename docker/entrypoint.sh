#!/usr/bin/env bash
# The container's entrypoint (under tini, the image's PID 1): migrate, then serve with
# uWSGI (app.ini) behind nginx (nginx.conf) on port 80.
#
#   1. `flask deploy upgrade`: migrations and the first admin. Safe when several containers
#      start at once against one database (a MySQL named lock). A failure stops here.
#   2. uWSGI, then nginx once uWSGI's socket is there.
#   3. On SIGTERM or SIGINT: nginx stops gracefully first (no new requests; the current
#      ones finish), then uWSGI gets SIGTERM, which app.ini makes a graceful shutdown
#      (workers finish their requests, the worker daemon its current email). Exit 0.
#      If uWSGI or nginx dies by itself, the other is stopped the same way and the exit
#      status is non-zero, so the orchestrator restarts the container.
#
# Runs as the image's unprivileged user (USER app): everything it and its children write
# is under the runtime directory (/run/marketplace: uWSGI's socket and FIFO, the metrics,
# nginx's rendered configuration and pid file) and /tmp (nginx's temporary files), so the
# root filesystem may be read-only with a tmpfs on /run and /tmp. nginx binds port 80
# unprivileged where net.ipv4.ip_unprivileged_port_start is 0 (Docker >= 20.10 sets it in
# every container). Started as root instead (`docker run --user 0`), the runtime
# directory is made for APP_USER, the migration runs as APP_USER, uWSGI drops to APP_USER
# itself (app.ini) and nginx's workers run as www-data. `docker run IMAGE <command>` runs
# that command (as APP_USER when started as root).
#
# nginx.conf is rendered at each start into the runtime directory: one set_real_ip_from
# per entry of TRUSTED_PROXIES (comma-separated addresses or CIDR blocks: the load
# balancer's subnets) at the marker line; unset or empty, no proxy is trusted and
# X-Forwarded-For is only logged. Also: the pid file beside the socket, and no `user`
# line when not root.
#
# Environment (besides the app's own, see app/config.py, and app.ini's):
#   APP_DIR /app, APP_VENV /opt/venv, APP_USER app (when root), WEB_INI $APP_DIR/app.ini,
#   NGINX_CONF /etc/nginx/nginx.conf (the template), TRUSTED_PROXIES (none),
#   WEB_SOCKET and WEB_FIFO as in app.ini (the runtime directory is the socket's),
#   START_TIMEOUT 120 (seconds uWSGI may take to open its socket),
#   PROMETHEUS_MULTIPROC_DIR (next to the socket: every process's metrics, emptied here).
set -Eeuo pipefail

# Its own lines as the app's: one JSON object each with LOG_FORMAT=json (the image's).
log() {
    local now message
    now=$(date -u +'%Y-%m-%dT%H:%M:%SZ')
    if [[ ${LOG_FORMAT:-text} == json ]]; then
        message=${*//\\/\\\\}
        message=${message//\"/\\\"}
        printf '{"time": "%s", "level": "%s", "logger": "entrypoint", "message": "%s"}\n' \
            "$now" "${level:-INFO}" "$message" >&2
    else
        printf '%s entrypoint: %s\n' "$now" "$*" >&2
    fi
}
fail() {
    level=ERROR log "$*"
    exit 1
}

# Empty means unset: uWSGI's `if-env` would take an empty value as set.
for name in APP_DIR APP_VENV APP_USER WEB_PROCESSES WEB_THREADS WEB_SOCKET WEB_FIFO; do
    if [[ -z ${!name:-} ]]; then unset "$name"; fi
done
export APP_DIR=${APP_DIR:-/app} APP_VENV=${APP_VENV:-/opt/venv}
export WEB_SOCKET=${WEB_SOCKET:-/run/marketplace/uwsgi.sock}
export WEB_FIFO=${WEB_FIFO:-/run/marketplace/uwsgi.fifo}
WEB_INI=${WEB_INI:-$APP_DIR/app.ini}
NGINX_CONF=${NGINX_CONF:-/etc/nginx/nginx.conf}
START_TIMEOUT=${START_TIMEOUT:-120}

RUN_DIR=$(dirname "$WEB_SOCKET")

as_app_user=()
if [[ $(id -u) == 0 ]]; then
    export APP_USER=${APP_USER:-app}
    as_app_user=(setpriv --reuid="$APP_USER" --regid="$APP_USER" --init-groups --)
else
    unset APP_USER # already unprivileged: nothing to drop to (app.ini's uid/gid stay off)
fi

# An address or CIDR block (IPv4 or IPv6), not /0: nothing else reaches nginx.conf.
valid_proxy() {
    local address=${1%/*} prefix="" max octet
    if [[ $1 == */* ]]; then prefix=${1#*/}; fi
    if [[ $address =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$ ]]; then
        max=32
        for octet in "${BASH_REMATCH[@]:1}"; do
            ((10#$octet <= 255)) || return 1
        done
    elif [[ $address =~ ^[0-9A-Fa-f:]+$ && $address == *:* ]]; then
        max=128
    else
        return 1
    fi
    if [[ $1 != */* ]]; then return 0; fi
    [[ $prefix =~ ^[0-9]{1,3}$ ]] && ((10#$prefix >= 1 && 10#$prefix <= max))
}

trusted=()
IFS=',' read -ra proxies <<<"${TRUSTED_PROXIES:-}"
for proxy in "${proxies[@]}"; do
    proxy=${proxy//[[:space:]]/}
    if [[ -z $proxy ]]; then continue; fi
    if ! valid_proxy "$proxy"; then
        fail "TRUSTED_PROXIES: '$proxy' is not an IP address or a CIDR block (e.g. 10.0.1.0/24,10.0.2.0/24; /0 would believe anyone)"
    fi
    trusted+=("$proxy")
done

# uWSGI refuses a listen queue (app.ini: 1024) longer than the kernel allows.
uwsgi_options=()
somaxconn=$(cat /proc/sys/net/core/somaxconn 2>/dev/null || echo 0)
if ((somaxconn > 0 && somaxconn < 1024)); then
    log "net.core.somaxconn is $somaxconn: uWSGI's listen queue shortened to it"
    uwsgi_options=(--listen "$somaxconn")
fi

cd "$APP_DIR"
if [[ $# -gt 0 ]]; then
    exec "${as_app_user[@]}" "$@"
fi

alive() { [[ -n $1 ]] && kill -0 "$1" 2>/dev/null; }

child="" uwsgi_pid="" nginx_pid="" stopping=""
# shellcheck disable=SC2329  # invoked by the traps
on_signal() {
    stopping=$1
    log "$1 received: stopping"
    if alive "$child"; then kill -TERM "$child"; fi
}
trap 'on_signal SIGTERM' TERM
trap 'on_signal SIGINT' INT

# Wait for a child until it has really exited (a trapped signal interrupts `wait`).
status=0
reap() {
    status=0
    while alive "$1"; do wait "$1" 2>/dev/null && status=0 || status=$?; done
}

# Every process's metrics (app/metrics.py), started afresh with each start.
export PROMETHEUS_MULTIPROC_DIR=${PROMETHEUS_MULTIPROC_DIR:-$RUN_DIR/metrics}
rm -rf "$PROMETHEUS_MULTIPROC_DIR"
for dir in "$RUN_DIR" "$(dirname "$WEB_FIFO")" "$PROMETHEUS_MULTIPROC_DIR"; do
    if [[ $(id -u) == 0 ]]; then
        install -d -m 0750 -o "$APP_USER" -g www-data "$dir"
    else
        mkdir -p "$dir"
    fi
done

# nginx.conf for this start (see the top): the trusted proxies after their marker line.
TRUSTED_MARKER="# TRUSTED_PROXIES: docker/entrypoint.sh adds set_real_ip_from lines here"
render_nginx_conf() {
    local line trimmed indent found=""
    while IFS= read -r line || [[ -n $line ]]; do
        indent=${line%%[![:space:]]*}
        trimmed=${line#"$indent"}
        case $trimmed in
        "$TRUSTED_MARKER")
            found=1
            printf '%s\n' "$line"
            for proxy in "${trusted[@]}"; do
                printf '%sset_real_ip_from %s;\n' "$indent" "$proxy"
            done
            ;;
        "pid "*) printf '%spid %s;\n' "$indent" "$RUN_DIR/nginx.pid" ;;
        "user "*) if [[ $(id -u) == 0 ]]; then printf '%s\n' "$line"; fi ;;
        *) printf '%s\n' "$line" ;;
        esac
    done <"$NGINX_CONF"
    if [[ -z $found ]]; then fail "$NGINX_CONF has no line '$TRUSTED_MARKER'"; fi
}
nginx_conf=$RUN_DIR/nginx.conf
render_nginx_conf >"$nginx_conf"
log "X-Forwarded-For believed from: ${trusted[*]:-no proxy (TRUSTED_PROXIES is empty)}"

log "flask deploy upgrade"
"${as_app_user[@]}" "$APP_VENV/bin/flask" --app wsgi deploy upgrade &
child=$!
reap "$child"
if [[ -n $stopping ]]; then
    log "stopped during the migration"
    exit 143
fi
if [[ $status != 0 ]]; then
    log "flask deploy upgrade failed"
    exit 1
fi

# A killed container may leave a stale socket: nginx must not start on it.
rm -f "$WEB_SOCKET" "$WEB_FIFO"
log "starting uWSGI ($WEB_INI)"
# setsid: sessions of their own, so a Ctrl-C on a terminal (docker run -it) reaches only
# this script, which stops them gracefully, not uWSGI's brutal SIGINT exit.
setsid uwsgi --ini "$WEB_INI" "${uwsgi_options[@]}" &
uwsgi_pid=$!
deadline=$((SECONDS + START_TIMEOUT))
until [[ -S $WEB_SOCKET ]] || [[ -n $stopping ]]; do
    if ! alive "$uwsgi_pid" || ((SECONDS > deadline)); then
        log "uWSGI did not open $WEB_SOCKET"
        kill -TERM "$uwsgi_pid" 2>/dev/null || true
        reap "$uwsgi_pid"
        exit 1
    fi
    sleep 0.2
done

if [[ -z $stopping ]]; then
    log "starting nginx ($nginx_conf, from $NGINX_CONF)"
    # -e: errors to stderr from the start, not to /var/log/nginx (not writable here).
    setsid nginx -c "$nginx_conf" -e stderr -g 'daemon off;' &
    nginx_pid=$!
    # Returns when either exits, or when a trapped signal arrives.
    wait -n "$uwsgi_pid" "$nginx_pid" || true
fi

if alive "$nginx_pid"; then
    log "nginx: graceful stop"
    kill -QUIT "$nginx_pid" # what `nginx -s quit` sends
fi
reap "$nginx_pid"
nginx_status=$status
if alive "$uwsgi_pid"; then
    log "uWSGI: graceful shutdown"
    kill -TERM "$uwsgi_pid"
fi
reap "$uwsgi_pid"
uwsgi_status=$status
log "stopped (nginx $nginx_status, uWSGI $uwsgi_status)"
if [[ -n $stopping && $nginx_status == 0 && $uwsgi_status == 0 ]]; then exit 0; fi
exit 1
