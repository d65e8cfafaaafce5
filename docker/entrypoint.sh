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
# Started as root (the image's default): the runtime directory is made for APP_USER, the
# migration runs as APP_USER, uWSGI drops to APP_USER itself (app.ini), nginx's workers
# run as www-data. `docker run IMAGE <command>` runs that command as APP_USER instead.
#
# Environment (besides the app's own, see app/config.py, and app.ini's):
#   APP_DIR /app, APP_VENV /opt/venv, APP_USER app (when root), WEB_INI $APP_DIR/app.ini,
#   NGINX_CONF /etc/nginx/nginx.conf, WEB_SOCKET and WEB_FIFO as in app.ini,
#   START_TIMEOUT 120 (seconds uWSGI may take to open its socket),
#   PROMETHEUS_MULTIPROC_DIR (next to the socket: every process's metrics, emptied here).
set -Eeuo pipefail

log() { printf '%s entrypoint: %s\n' "$(date -u +'%Y-%m-%dT%H:%M:%SZ')" "$*" >&2; }

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

as_app_user=()
if [[ $(id -u) == 0 ]]; then
    export APP_USER=${APP_USER:-app}
    as_app_user=(setpriv --reuid="$APP_USER" --regid="$APP_USER" --init-groups --)
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
export PROMETHEUS_MULTIPROC_DIR=${PROMETHEUS_MULTIPROC_DIR:-$(dirname "$WEB_SOCKET")/metrics}
rm -rf "$PROMETHEUS_MULTIPROC_DIR"
for dir in "$(dirname "$WEB_SOCKET")" "$(dirname "$WEB_FIFO")" "$PROMETHEUS_MULTIPROC_DIR"; do
    if [[ $(id -u) == 0 ]]; then
        install -d -m 0750 -o "$APP_USER" -g www-data "$dir"
    else
        mkdir -p "$dir"
    fi
done

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
setsid uwsgi --ini "$WEB_INI" &
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
    log "starting nginx ($NGINX_CONF)"
    setsid nginx -c "$NGINX_CONF" -g 'daemon off;' &
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
