#!/usr/bin/env bash
# The container's entrypoint (under tini, the image's PID 1). One image, one role per
# process, chosen by the first argument:
#
#   web      nginx (port 80) in front of uWSGI (app.ini): the API
#   worker   `flask worker`: the emails, the views stream, the SES events
#   migrate  `flask deploy upgrade`: the migrations and the first admin, then exit
#   all      (the default) migrate, then web and worker in one container: one host
#   <other>  that command, e.g. `flask users create-admin ...`
#
# web and all supervise their servers: if one of them exits by itself, the others are
# stopped and the container exits non-zero within seconds (nginx failing to bind its port
# included), so the orchestrator restarts it. SIGTERM or SIGINT stops them in order:
# nginx first (no new requests; the current ones finish), then uWSGI (its graceful
# shutdown, app.ini), then the worker (its current email and batch of views); exit 0 when
# each stopped cleanly. worker and migrate exec their command: tini hands it the signal.
#
# Runs as the image's unprivileged user (USER app); everything it and its children write
# is under the runtime directory (/run/marketplace: uWSGI's socket and FIFO, the metrics,
# nginx's rendered configuration and pid file) and /tmp (nginx's temporary files), so the
# root filesystem may be read-only with a tmpfs on /run and /tmp. nginx binds port 80
# unprivileged where net.ipv4.ip_unprivileged_port_start is 0 (Docker >= 20.10 sets it in
# every container; podman: --sysctl). Started as root instead (`--user 0`), the runtime
# directory is made for APP_USER, the commands run as APP_USER, uWSGI drops to APP_USER
# itself (app.ini) and nginx's workers run as www-data.
#
# nginx.conf is a template rendered at each start into the runtime directory: one
# set_real_ip_from per entry of TRUSTED_PROXIES (comma-separated addresses or CIDR blocks:
# the load balancer's subnets) at the marker line; unset or empty, no proxy is trusted.
# Also: paths under /run/marketplace moved to the runtime directory, and no `user` line
# when not root.
#
# Environment (besides the app's own, see app/core/config.py, and app.ini's):
#   APP_DIR /app, APP_VENV /opt/venv, APP_USER app (when root), WEB_INI $APP_DIR/app.ini,
#   NGINX_CONF /etc/nginx/nginx.conf (the template), TRUSTED_PROXIES (none),
#   WEB_SOCKET and WEB_FIFO as in app.ini (the runtime directory is the socket's),
#   START_TIMEOUT 120 (seconds uWSGI may take to open its socket), STOP_TIMEOUT 25 (seconds
#   each server may take to stop before it is killed: under a 30 s stop timeout),
#   DATABASE_CA_PEM (below),
#   PROMETHEUS_MULTIPROC_DIR (in the runtime directory: every process's metrics).
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

role=${1:-all}
if [[ $# -gt 0 ]]; then shift; fi

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
STOP_TIMEOUT=${STOP_TIMEOUT:-25}
RUN_DIR=$(dirname "$WEB_SOCKET")
FLASK=("$APP_VENV/bin/flask" --app wsgi)

as_app_user=()
if [[ $(id -u) == 0 ]]; then
    export APP_USER=${APP_USER:-app}
    as_app_user=(setpriv --reuid="$APP_USER" --regid="$APP_USER" --init-groups --)
else
    unset APP_USER # already unprivileged: nothing to drop to (app.ini's uid/gid stay off)
fi

# The HEALTHCHECK: the API through nginx where this container serves it; a worker's or
# a migration's container is healthy while its process runs.
if [[ $role == healthcheck ]]; then
    if [[ -e $RUN_DIR/nginx.conf ]]; then
        exec python3 -c 'import urllib.request as u; u.urlopen("http://127.0.0.1/healthz", timeout=4)'
    fi
    exit 0
fi

# DATABASE_CA_PEM: the certificate(s) of the CA that signs the database server's (for
# RDS, its region's bundle), written where DATABASE_URL's ssl_ca names them:
# mysql://...?ssl_ca=/run/marketplace/database-ca.pem. The server's certificate and name
# are then verified on every connection (pymysql: CERT_REQUIRED, check_hostname).
if [[ -n ${DATABASE_CA_PEM:-} ]]; then
    mkdir -p "$RUN_DIR"
    printf '%s\n' "$DATABASE_CA_PEM" >"$RUN_DIR/database-ca.pem"
fi

cd "$APP_DIR"
case $role in
web | all) ;;
worker) exec "${as_app_user[@]}" "${FLASK[@]}" worker "$@" ;;
migrate) exec "${as_app_user[@]}" "${FLASK[@]}" deploy upgrade "$@" ;;
*) exec "${as_app_user[@]}" "$role" "$@" ;;
esac

# ---------------------------------------------------------------- web and all

# TRUSTED_PROXIES: addresses or CIDR blocks (IPv4 or IPv6), none wider than a /12 (IPv4)
# or a /29 (IPv6), together at most 2^22 IPv4 addresses and 64 IPv6 /32s: load balancer
# subnets and CDN ranges, never "anyone" split into pieces (0.0.0.0/1,128.0.0.0/1).
MIN_PREFIX_V4=12 MIN_PREFIX_V6=29 MAX_TOTAL_V4=$((1 << 22)) MAX_TOTAL_V6=64
total_v4=0 total_v6=0
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
    if [[ $1 == */* ]]; then
        [[ $prefix =~ ^[0-9]{1,3}$ ]] || return 1
    else
        prefix=$max
    fi
    prefix=$((10#$prefix))
    ((prefix >= 1 && prefix <= max)) || return 1
    if ((max == 32)); then
        ((prefix >= MIN_PREFIX_V4)) || return 2
        total_v4=$((total_v4 + (1 << (32 - prefix))))
    else
        ((prefix >= MIN_PREFIX_V6)) || return 2
        if ((prefix < 32)); then
            total_v6=$((total_v6 + (1 << (32 - prefix))))
        else
            total_v6=$((total_v6 + 1))
        fi
    fi
}

trusted=()
IFS=',' read -ra proxies <<<"${TRUSTED_PROXIES:-}"
for proxy in "${proxies[@]}"; do
    proxy=${proxy//[[:space:]]/}
    if [[ -z $proxy ]]; then continue; fi
    why=0
    valid_proxy "$proxy" || why=$?
    if ((why == 1)); then
        fail "TRUSTED_PROXIES: '$proxy' is not an IP address or a CIDR block (e.g. 10.0.1.0/24,10.0.2.0/24; /0 would believe anyone)"
    elif ((why == 2)); then
        fail "TRUSTED_PROXIES: '$proxy' is too wide to be a proxy's range (at most /$MIN_PREFIX_V4 for IPv4, /$MIN_PREFIX_V6 for IPv6): list the load balancer's subnets"
    fi
    trusted+=("$proxy")
done
if ((total_v4 > MAX_TOTAL_V4 || total_v6 > MAX_TOTAL_V6)); then
    fail "TRUSTED_PROXIES: the blocks together cover too many addresses to be proxies (at most $MAX_TOTAL_V4 IPv4 addresses, $MAX_TOTAL_V6 IPv6 /32s): list the load balancer's subnets"
fi

alive() { [[ -n $1 ]] && kill -0 "$1" 2>/dev/null; }

stopping=""
# shellcheck disable=SC2329  # invoked by the traps
on_signal() {
    if [[ -z $stopping ]]; then log "$1 received: stopping"; fi
    stopping=$1
    if alive "${migration:-}"; then kill -TERM "$migration"; fi
}
trap 'on_signal SIGTERM' TERM
trap 'on_signal SIGINT' INT

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
        *) printf '%s\n' "${line//\/run\/marketplace\//$RUN_DIR/}" ;;
        esac
    done <"$NGINX_CONF"
    if [[ -z $found ]]; then fail "$NGINX_CONF has no line '$TRUSTED_MARKER'"; fi
}
nginx_conf=$RUN_DIR/nginx.conf
render_nginx_conf >"$nginx_conf.new"
mv "$nginx_conf.new" "$nginx_conf"
log "X-Forwarded-For believed from: ${trusted[*]:-no proxy (TRUSTED_PROXIES is empty)}"

if [[ $role == all ]]; then
    log "flask deploy upgrade"
    status=0
    "${as_app_user[@]}" "${FLASK[@]}" deploy upgrade &
    migration=$!
    # A trapped signal interrupts `wait`: wait again until the migration has exited.
    while alive "$migration"; do wait "$migration" && status=0 || status=$?; done
    if [[ -n $stopping ]]; then
        log "stopped during the migration"
        exit 143
    fi
    if ((status != 0)); then fail "flask deploy upgrade failed ($status)"; fi
fi

# uWSGI refuses a listen queue (app.ini: 1024) longer than the kernel allows.
uwsgi_options=()
somaxconn=$(cat /proc/sys/net/core/somaxconn 2>/dev/null || echo 0)
if ((somaxconn > 0 && somaxconn < 1024)); then
    log "net.core.somaxconn is $somaxconn: uWSGI's listen queue shortened to it"
    uwsgi_options=(--listen "$somaxconn")
fi

# The servers, each in a session of its own (setsid), so that a Ctrl-C on a terminal
# (docker run -it) reaches only this script, which stops them in order.
declare -A name_of=() status_of=() sent=()
started=()
start() {
    local name=$1
    shift
    setsid "$@" &
    name_of[$!]=$name
    started+=("$!")
    log "started $name ($!)"
}
pid_of() {
    local pid
    for pid in "${started[@]}"; do
        if [[ ${name_of[$pid]} == "$1" ]]; then
            echo "$pid"
            return
        fi
    done
}

# The servers are watched by polling, not with a blocking `wait`: bash 5.2's `wait PID`
# can miss an exit that lands while it starts another child, and then sleep until some
# other child changes; `wait -n PIDS` loses a server that exited before it was called. A
# foreground `sleep` lets bash reap its exited children, so `alive` turns false; the status
# is then read from bash's table of finished jobs, without blocking.
status() {
    local code=0
    if [[ -n ${status_of[$1]:-} ]]; then return; fi
    wait "$1" 2>/dev/null || code=$?
    status_of[$1]=$code
}

# A killed container may leave a stale socket: nginx must not start on it.
rm -f "$WEB_SOCKET" "$WEB_FIFO"
start uwsgi uwsgi --ini "$WEB_INI" "${uwsgi_options[@]}"
uwsgi_pid=$(pid_of uwsgi)
deadline=$((SECONDS + START_TIMEOUT))
# The master FIFO appears once uWSGI's master runs its loop, its SIGTERM handler in place
# (a SIGTERM before that would be lost); the socket, once it can take connections.
until [[ -S $WEB_SOCKET && -p $WEB_FIFO ]] || [[ -n $stopping ]]; do
    if ! alive "$uwsgi_pid" || ((SECONDS > deadline)); then
        level=ERROR log "uWSGI did not open $WEB_SOCKET"
        break
    fi
    sleep 0.2 || true
done
if [[ -S $WEB_SOCKET && -p $WEB_FIFO && -z $stopping ]]; then
    # -e: errors to stderr from the start, not to /var/log/nginx (not writable here).
    start nginx nginx -c "$nginx_conf" -e stderr -g 'daemon off;'
    if [[ $role == all ]]; then
        start worker "${as_app_user[@]}" "${FLASK[@]}" worker
    fi
    # Until one of them exits, or a signal arrives (its trap runs when the sleep ends).
    while [[ -z $stopping ]]; do
        for pid in "${started[@]}"; do
            if ! alive "$pid"; then
                status "$pid"
                level=ERROR log "${name_of[$pid]} exited (${status_of[$pid]}): stopping the others"
                break 2
            fi
        done
        sleep 0.2 || true # a Ctrl-C on a terminal ends it too: the trap then runs
    done
fi

# In order: nginx lets its requests finish, then uWSGI, then the worker. One that has not
# stopped after STOP_TIMEOUT seconds is killed with whatever it started (its session).
stop() {
    local pid deadline
    pid=$(pid_of "$1")
    if [[ -z $pid ]]; then return; fi
    if alive "$pid"; then
        log "$1: graceful stop"
        kill "-$2" "$pid" 2>/dev/null || true
        sent[$pid]=$2
        deadline=$((SECONDS + STOP_TIMEOUT))
        while alive "$pid"; do
            if ((SECONDS >= deadline)); then
                level=ERROR log "$1: still running after ${STOP_TIMEOUT} s: killed"
                kill -KILL -- "-$pid" 2>/dev/null || true
                deadline=$((SECONDS + STOP_TIMEOUT))
            fi
            sleep 0.1 || true
        done
    fi
    status "$pid"
}
stop nginx QUIT # what `nginx -s quit` sends
stop uwsgi TERM # a graceful shutdown (app.ini)
stop worker TERM
# The worker handles SIGTERM from before it connects to anything (app/cli.py): ended by
# this TERM itself (128 + 15) means it was still starting and had taken no work.
worker_pid=$(pid_of worker)
if [[ -n $worker_pid && ${sent[$worker_pid]:-} == TERM && ${status_of[$worker_pid]} == 143 ]]; then
    log "worker: stopped while it was still starting (before it took any work)"
    status_of[$worker_pid]=0
fi

summary="" clean=1
for pid in "${started[@]}"; do
    summary+=" ${name_of[$pid]} ${status_of[$pid]}"
    if [[ ${status_of[$pid]} != 0 ]]; then clean=""; fi
done
log "stopped:${summary}"
if [[ -n $stopping && -n $clean ]]; then exit 0; fi
exit 1
