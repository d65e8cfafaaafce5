#!/usr/bin/env bash
# The container's entrypoint: migrate, then serve with uWSGI (app.ini) behind nginx
# (nginx.conf) on port 80, and stop both gracefully on SIGTERM or SIGINT.
#
#   1. `flask deploy upgrade`: migrations and the first admin. Safe when several containers
#      start at once against one database: the command takes a MySQL named lock (GET_LOCK),
#      the others wait and find nothing left to do. A failure stops the container here.
#   2. uWSGI (background), then nginx (background) once uWSGI's socket is there.
#   3. Wait. On SIGTERM/SIGINT (docker stop, Ctrl-C): nginx stops gracefully first (no new
#      requests, the current ones finish: SIGQUIT, what `nginx -s quit` sends), then `q`
#      goes into uWSGI's master FIFO: a graceful shutdown in which every worker flushes its
#      buffered product views and the notification worker stops. Exit 0.
#      If uWSGI or nginx dies by itself, the other is stopped the same way and the exit
#      status is non-zero, so the orchestrator restarts the container.
#
# Started as root (the image's default): the web socket's directory is made for APP_USER,
# the migration runs as APP_USER, and uWSGI drops to APP_USER itself (app.ini). nginx's
# master stays root to bind port 80 and its workers run as www-data (nginx.conf).
#
# Environment (besides the app's own, see app/config.py, and app.ini's):
#   APP_DIR     /app                    the code (wsgi.py, app/, migrations/, app.ini)
#   APP_VENV    /opt/venv               the virtualenv
#   APP_USER    app (when root)         the user of uWSGI and of the migration
#   WEB_INI     $APP_DIR/app.ini        uWSGI's configuration
#   NGINX_CONF  /etc/nginx/nginx.conf   nginx's configuration
#   WEB_SOCKET, WEB_FIFO                as in app.ini (the socket must match nginx.conf)
#   START_TIMEOUT 120                   seconds uWSGI may take to open its socket
# The docker/ and deploy/ tests run this script outside Docker with these pointed at a
# temporary directory (deploy/smoke.py).

# shellcheck disable=SC2317  # functions called from traps look unreachable to shellcheck
set -Eeuo pipefail

log() { printf '%s entrypoint: %s\n' "$(date -u +'%Y-%m-%dT%H:%M:%SZ')" "$*" >&2; }

# Empty means unset: uWSGI's `if-env` would take an empty value as set.
for name in APP_DIR APP_VENV APP_USER WEB_PROCESSES WEB_THREADS WEB_SOCKET WEB_FIFO; do
    if [[ -z ${!name:-} ]]; then unset "$name"; fi
done

export APP_DIR=${APP_DIR:-/app}
export APP_VENV=${APP_VENV:-/opt/venv}
export WEB_SOCKET=${WEB_SOCKET:-/run/marketplace/uwsgi.sock}
export WEB_FIFO=${WEB_FIFO:-/run/marketplace/uwsgi.fifo}
WEB_INI=${WEB_INI:-$APP_DIR/app.ini}
NGINX_CONF=${NGINX_CONF:-/etc/nginx/nginx.conf}
START_TIMEOUT=${START_TIMEOUT:-120}
if [[ $(id -u) == 0 ]]; then
    export APP_USER=${APP_USER:-app}
fi

uwsgi_pid=""
nginx_pid=""
child_pid="" # a start-up command in progress (the migration)
stopping=""

# shellcheck disable=SC2329  # invoked by the traps below
on_signal() {
    if [[ -n $stopping ]]; then
        # A second signal while stopping: no more grace.
        log "second $1: stopping at once"
        for pid in $uwsgi_pid $nginx_pid $child_pid; do kill -TERM "$pid" 2>/dev/null || true; done
        return
    fi
    stopping=$1
    log "$1 received: stopping"
    if [[ -n $child_pid ]]; then kill -TERM "$child_pid" 2>/dev/null || true; fi
}
trap 'on_signal SIGTERM' TERM
trap 'on_signal SIGINT' INT

alive() { [[ -n $1 ]] && kill -0 "$1" 2>/dev/null; }

# Run a start-up command in the background and wait for it, so that a signal is handled
# at once rather than after the command (a migration may wait minutes for the lock).
# An external command only (no function): $! must be the program itself, which gets the
# SIGTERM.
run() {
    "$@" &
    child_pid=$!
    local status=0
    while true; do
        wait "$child_pid" && status=0 || status=$?
        # A status over 128 with the child still alive: a trapped signal interrupted wait.
        if ! alive "$child_pid"; then break; fi
    done
    child_pid=""
    return "$status"
}

# The command prefix that runs a program as APP_USER (when root), else nothing.
as_app_user=()
if [[ $(id -u) == 0 && -n ${APP_USER:-} ]]; then
    as_app_user=(setpriv --reuid="$APP_USER" --regid="$APP_USER" --init-groups --)
fi

stop_nginx() {
    if alive "$nginx_pid"; then
        log "nginx: graceful stop"
        kill -QUIT "$nginx_pid" 2>/dev/null || true # what `nginx -s quit` sends
    fi
}

stop_uwsgi() {
    if alive "$uwsgi_pid"; then
        log "uWSGI: graceful shutdown (q into $WEB_FIFO)"
        # The master reads the FIFO; if it does not (hung), fall back to SIGTERM.
        # shellcheck disable=SC2016  # $1 is the inner shell's argument
        if ! [[ -p $WEB_FIFO ]] || ! timeout 5 bash -c 'printf q > "$1"' _ "$WEB_FIFO"; then
            log "uWSGI: the master FIFO did not answer, sending SIGTERM"
            kill -TERM "$uwsgi_pid" 2>/dev/null || true
        fi
    fi
}

# Wait for a child to exit; its exit status goes into $reaped (no $(...): a subshell
# cannot wait for this shell's children).
reaped=0
reap() {
    local pid=$1
    reaped=0
    [[ -n $pid ]] || return 0
    while true; do
        wait "$pid" 2>/dev/null && reaped=0 || reaped=$?
        if ! alive "$pid"; then break; fi
    done
}

cd "$APP_DIR"

# `docker run IMAGE <command>` runs that command as the app user instead of serving, for
# one-off tasks: `flask deploy upgrade`, `flask users create-admin --email ...`.
if [[ $# -gt 0 ]]; then
    exec "${as_app_user[@]}" "$@"
fi

# ---------------------------------------------------------------- runtime directories
for dir in "$(dirname "$WEB_SOCKET")" "$(dirname "$WEB_FIFO")"; do
    if [[ $(id -u) == 0 ]]; then
        # The app user creates and removes the socket and the FIFO there; nginx's workers
        # (group www-data) only pass through to the socket.
        install -d -m 0750 -o "$APP_USER" -g www-data "$dir"
    else
        mkdir -p "$dir"
    fi
done

# ---------------------------------------------------------------- migrations
log "flask deploy upgrade"
if ! run "${as_app_user[@]}" "$APP_VENV/bin/flask" --app wsgi deploy upgrade; then
    if [[ -n $stopping ]]; then
        log "stopped during the migration"
        exit 143
    fi
    log "flask deploy upgrade failed"
    exit 1
fi
if [[ -n $stopping ]]; then exit 0; fi

# ---------------------------------------------------------------- uWSGI, then nginx
# What a killed container left (docker restart): nginx must not start on a stale socket.
rm -f "$WEB_SOCKET" "$WEB_FIFO"
log "starting uWSGI ($WEB_INI)"
# setsid: a session of its own, so that a Ctrl-C on the terminal (docker run -it) reaches
# this script only, which stops uWSGI gracefully, instead of uWSGI's brutal SIGINT exit.
setsid uwsgi --ini "$WEB_INI" &
uwsgi_pid=$!

deadline=$((SECONDS + START_TIMEOUT))
until [[ -S $WEB_SOCKET && -p $WEB_FIFO ]]; do
    if ! alive "$uwsgi_pid"; then
        reap "$uwsgi_pid"
        log "uWSGI exited during start-up (status $reaped)"
        exit 1
    fi
    if [[ -n $stopping ]] || ((SECONDS > deadline)); then
        [[ -n $stopping ]] || log "uWSGI did not open $WEB_SOCKET within ${START_TIMEOUT}s"
        if [[ -p $WEB_FIFO ]]; then stop_uwsgi; else kill -TERM "$uwsgi_pid" 2>/dev/null || true; fi
        reap "$uwsgi_pid"
        if [[ -n $stopping ]]; then exit 0; fi
        exit 1
    fi
    sleep 0.2
done

log "starting nginx ($NGINX_CONF)"
setsid nginx -c "$NGINX_CONF" -g 'daemon off;' &
nginx_pid=$!

# ---------------------------------------------------------------- serve until told or until one dies
while [[ -z $stopping ]]; do
    # Returns when uWSGI or nginx exits, or at once (status > 128) when a trapped signal
    # arrives. The 1 s tick bounds the wait should a signal land just before it starts.
    sleep 1 &
    tick=$!
    wait -n "$uwsgi_pid" "$nginx_pid" "$tick" 2>/dev/null || true
    kill "$tick" 2>/dev/null || true
    wait "$tick" 2>/dev/null || true
    if ! alive "$uwsgi_pid" || ! alive "$nginx_pid"; then
        break
    fi
done

if [[ -n $stopping ]]; then
    stop_nginx
    reap "$nginx_pid"
    nginx_status=$reaped
    stop_uwsgi
    reap "$uwsgi_pid"
    uwsgi_status=$reaped
    log "stopped (nginx $nginx_status, uWSGI $uwsgi_status)"
    if [[ $nginx_status == 0 && $uwsgi_status == 0 ]]; then exit 0; fi
    exit 1
fi

# One of them died by itself: stop the other, and fail.
if alive "$uwsgi_pid"; then
    log "nginx exited unexpectedly: stopping uWSGI"
    stop_uwsgi
else
    log "uWSGI exited unexpectedly: stopping nginx"
    stop_nginx
fi
reap "$nginx_pid"
nginx_status=$reaped
reap "$uwsgi_pid"
uwsgi_status=$reaped
log "exiting (nginx $nginx_status, uWSGI $uwsgi_status)"
exit 1
