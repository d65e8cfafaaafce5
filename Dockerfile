# The Marketplace service: nginx on port 80 -> uWSGI (unix socket) -> Flask, with the
# notification worker beside it (docker/entrypoint.sh, app.ini, nginx.conf).
#
#   docker build -t marketplace .
#   docker run -it --rm -p 80:80 --stop-timeout 30 \
#       --read-only --tmpfs /run --tmpfs /tmp \
#       -e DATABASE_URL=mysql://user:password@dbhost:3306/db -e SECRET_KEY=... \
#       -e EMAIL_SOURCE=... -e REGION_NAME=us-east-1 -e TRUSTED_PROXIES=10.0.1.0/24 \
#       -e AWS_ACCESS_KEY_ID=... -e AWS_SECRET_ACCESS_KEY=... marketplace
#
# It runs as the unprivileged user app (uid 10001), nginx included: nginx binds port 80
# because Docker >= 20.10 sets net.ipv4.ip_unprivileged_port_start=0 in every container
# (elsewhere: `--sysctl net.ipv4.ip_unprivileged_port_start=0`, or the pod's sysctls).
# --read-only is optional: everything it writes is in /run/marketplace and /tmp.
# The migrations run at start (safe with several containers at once). Give the container
# time for its graceful stop (requests in flight finish, the worker its current email):
# 30 s with --stop-timeout, or the ECS task's stopTimeout; Docker's default is 10 s.
# Set REDIS_URL (ElastiCache) in production: product views then go through its stream.
# No secret is baked in: every one comes from the environment at run time.
#
# The same Debian packages (nginx, uWSGI and its python3 plugin, python3) run the same
# entrypoint, app.ini and nginx.conf in deploy/smoke.py (`make smoke`), without Docker.

# ---------------------------------------------------------------- build: the virtualenv
FROM debian:bookworm-20260824-slim AS build

# Versions come with the dated base image's Debian release (bookworm and its security
# updates); pinning exact Debian versions breaks the build whenever the archive drops a
# superseded one.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

# Built with Debian's python3: the one uWSGI's python3 plugin embeds at run time.
RUN python3 -m venv /opt/venv
# The requirements alone first: this layer is rebuilt only when they change, not with
# the code. Installed as `make` does: Debian's pip installs only the pinned uv
# (requirements-bootstrap.txt) into a venv that stays in this stage, and uv the locked
# tree (every package pinned, each file checked against its hash), wheels only: no
# compiler in this image or the next.
COPY requirements-bootstrap.txt requirements.txt /tmp/
RUN python3 -m venv /opt/bootstrap \
    && /opt/bootstrap/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps \
        --require-hashes --only-binary=:all: -r /tmp/requirements-bootstrap.txt \
    && /opt/bootstrap/bin/uv pip install --no-cache --python /opt/venv/bin/python \
        --require-hashes --only-binary :all: -r /tmp/requirements.txt

# ---------------------------------------------------------------- runtime
FROM debian:bookworm-20260824-slim

# The app user owns nothing but /run/marketplace (uWSGI's socket and master FIFO, nginx's
# rendered configuration and pid file, the metrics); the code and the virtualenv belong
# to root and are read-only to it. A fixed uid: Kubernetes' runAsNonRoot can only verify
# a numeric USER.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates python3 nginx uwsgi-core uwsgi-plugin-python3 tini \
    && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/default \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin app \
    && install -d -m 0750 -o app -g app /run/marketplace

# Who runs what: everything (the entrypoint, the migration, uWSGI and the notification
# worker, nginx's master and workers) runs as app. No process needs root: nginx binds
# port 80 unprivileged (see the top) and reaches the socket as its owner. With a tmpfs
# on /run (--read-only), the entrypoint makes /run/marketplace itself.
# LOG_FORMAT=json: the app's and the worker's log lines as one JSON object each, for
# CloudWatch and the like (docs/observability.md); `-e LOG_FORMAT=text` to read them.
ENV APP_ENV=production \
    LOG_FORMAT=json \
    APP_DIR=/app \
    APP_VENV=/opt/venv \
    FLASK_APP=wsgi \
    PATH=/opt/venv/bin:$PATH \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

COPY --from=build /opt/venv /opt/venv

WORKDIR /app
COPY nginx.conf /etc/nginx/nginx.conf
COPY docker/entrypoint.sh /usr/local/bin/docker-entrypoint
COPY app.ini wsgi.py ./
COPY migrations ./migrations
COPY app ./app
# Byte-code now: the app user cannot write __pycache__ next to the code.
RUN python3 -m compileall -q /app

USER 10001:10001

EXPOSE 80
STOPSIGNAL SIGTERM
# Liveness through nginx and uWSGI (no curl in the slim image: Python's urllib).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1/healthz', timeout=4)"]

# tini as PID 1 reaps orphans and hands SIGTERM to the entrypoint, which stops nginx
# gracefully first, then uWSGI.
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/docker-entrypoint"]
