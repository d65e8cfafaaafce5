"""The edge, through the shipped nginx.conf and docker/entrypoint.sh: nginx's own error
answers in the service's JSON error shape (a dead or silent uWSGI too), the login limits,
the proxies whose X-Forwarded-For is believed (TRUSTED_PROXIES), and the image's layout as
its unprivileged user: a read-only root with a tmpfs on /run and /tmp, port 80.

The entrypoint runs as the app user (setpriv, as the image's USER does), from 127.0.0.1;
other loopback addresses (127.0.0.2, 127.0.0.3) stand for a proxy and for a stranger.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.core.errors import payload_for
from tests.system import harness as h
from tests.system.conftest import ADMINS

PROXY = "127.0.0.2"  # in TRUSTED_PROXIES below
STRANGER = "127.0.0.3"  # not
TRUSTED = f"192.0.2.0/24, {PROXY}"
CLIENT = "93.184.216.34"  # a global address (the app tells), only ever a header value


def start_unprivileged(stack: h.Stack, timeout: float = 120, healthy: bool = True) -> h.Stack:
    """``Stack.start()`` with ``entrypoint=True``, but the entrypoint started as the app
    user, as the image's USER starts it; then wait until it answers (unless not
    ``healthy``)."""
    env = {
        **stack.instance_env(0),
        "WEB_INI": str(stack.d.source / "app.ini"),
        "NGINX_CONF": str(stack.conf),
    }
    # nginx opens /dev/stdout (its access log) again: the app user must be able to.
    stack.log.touch()
    shutil.chown(stack.log, h.APP_USER, h.APP_USER)
    as_app_user = ["setpriv", f"--reuid={h.APP_USER}", f"--regid={h.APP_USER}", "--init-groups"]
    stack.main = stack.d.reaper.start(
        [*as_app_user, stack.d.source / "docker" / "entrypoint.sh"], stack.log.name, env
    )
    if healthy:
        h.wait_until(f"{stack.name}: /healthz through nginx", stack._healthy, timeout)
    return stack


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes


def raw(port: int, data: bytes, source: str = h.HOST, timeout: float = 30) -> Answer:
    """Send ``data`` as it is (malformed or not) from ``source`` and read the answer to the
    connection's end."""
    with socket.create_connection((h.HOST, port), timeout, source_address=(source, 0)) as conn:
        conn.sendall(data)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(lines[0].split()[1]), headers, body)


def request(
    port: int,
    method: str,
    path: str,
    body: object = None,
    source: str = h.HOST,
    headers: dict | None = None,
) -> Answer:
    data = b"" if body is None else json.dumps(body).encode()
    fields = {"Host": "edge", "Connection": "close", **(headers or {})}
    if body is not None:
        fields |= {"Content-Type": "application/json", "Content-Length": str(len(data))}
    head = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
    return raw(port, f"{method} {path} HTTP/1.1\r\n{head}\r\n".encode() + data, source)


def get(port: int, path: str, source: str = h.HOST, **headers: str) -> Answer:
    named = {name.replace("_", "-"): value for name, value in headers.items()}
    return request(port, "GET", path, source=source, headers=named)


# What every answer carries, the app's (app/core/http.py) and nginx's own error pages alike.
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
    "referrer-policy": "no-referrer",
}


def assert_json_error(answer: Answer, code: int) -> dict:
    """The app's error shape: {"code", "status", "message", "request_id"}, the status as the
    app words it, the request id the answer's X-Request-ID (nginx's own pages too), and
    the app's security headers."""
    assert answer.status == code, answer
    assert answer.headers.get("content-type") == "application/json", answer.headers
    for name, value in SECURITY_HEADERS.items():
        assert answer.headers.get(name) == value, (name, answer.headers)
    body = json.loads(answer.body)
    assert set(body) == {"code", "status", "message", "request_id"}, body
    assert body["request_id"] == answer.headers.get("x-request-id"), (body, answer.headers)
    assert body["code"] == code and body["status"] == payload_for(code)["status"], body
    assert body["message"], body
    return body


def listening(port: int) -> bool:
    try:
        socket.create_connection((h.HOST, port), 1).close()
    except OSError:
        return False
    return True


@dataclass
class BareNginx:
    port: int
    upstream: socket.socket
    socket_path: Path


@pytest.fixture
def bare_nginx(deployment, reaper):
    """nginx.conf (the harness's copy) alone, in front of a socket that accepts connections
    and never answers: no uWSGI behind it."""
    run = deployment.runtime_dir(f"run-edge-bare-{os.urandom(3).hex()}")
    path = run / "uwsgi.sock"
    upstream = socket.socket(socket.AF_UNIX)
    upstream.bind(str(path))
    path.chmod(0o666)  # nginx's workers (www-data) connect to it
    upstream.listen(64)
    port = h.free_port()
    conf = deployment.nginx_conf(f"nginx-{run.name}", port, [path])
    nginx = reaper.start(
        [h.NGINX, "-c", conf, "-e", "stderr", "-g", "daemon off;"],
        f"{run.name}.log",
        {"PATH": h.SYSTEM_PATH},
    )
    try:
        h.wait_until("nginx", lambda: nginx.poll() is not None or listening(port), 30)
        assert nginx.poll() is None, h.tail(reaper.workdir / f"{run.name}.log")
        yield BareNginx(port, upstream, path)
    finally:
        reaper.stop(nginx, signal.SIGQUIT)
        upstream.close()


# ---------------------------------------------------------------- nginx's own errors


def test_nginx_answers_malformed_and_oversized_requests_in_the_json_error_shape(bare_nginx):
    port = bare_nginx.port
    close = b"Connection: close\r\n"
    cases = {
        "no Host header": (b"GET / HTTP/1.1\r\n" + close + b"\r\n", 400),
        "a malformed request line": (b"GARBAGE\r\n\r\n", 400),
        "a header too large": (
            b"GET / HTTP/1.1\r\nHost: edge\r\n" + close + b"Cookie: " + b"c" * 9000 + b"\r\n\r\n",
            400,
        ),
        "a URI too long": (b"GET /" + b"u" * 10_000 + b" HTTP/1.1\r\nHost: edge\r\n\r\n", 414),
        "a body over 1 MiB": (
            b"POST /api/products HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n"
            + close
            + b"Content-Length: 2097152\r\n\r\n",
            413,
        ),
        "an unknown transfer coding": (
            b"POST /api/products HTTP/1.1\r\nHost: edge\r\nTransfer-Encoding: gzip\r\n"
            + close
            + b"\r\n",
            501,
        ),
        "HTTP/2 in plain text": (b"GET / HTTP/2.0\r\nHost: edge\r\n\r\n", 505),
        "the error page itself": (b"GET /.error HTTP/1.1\r\nHost: edge\r\n" + close + b"\r\n", 404),
    }
    for what, (data, code) in cases.items():
        answer = raw(port, data)
        assert answer.status == code, (what, answer)
        assert_json_error(answer, code)


def test_a_silent_upstream_gives_a_json_504_and_a_dead_one_a_json_502(bare_nginx):
    port = bare_nginx.port
    # /healthz gives uWSGI 10 s (uwsgi_read_timeout); the socket accepts and never answers.
    assert_json_error(get(port, "/healthz"), 504)
    bare_nginx.upstream.close()
    bare_nginx.socket_path.unlink()  # uWSGI gone: connect() fails
    dead = get(port, "/api/products")
    assert_json_error(dead, 502)
    assert dead.headers.get("retry-after") == "5"


# ---------------------------------------------------------------- behind a trusted proxy


@pytest.fixture(scope="module")
def edge(deployment, mariadb, moto, reaper):
    """One instance through the entrypoint, as the app user, with TRUSTED_PROXIES."""
    name = "marketplace_edge"
    url = mariadb.create_database(name)
    email, password = ADMINS[0]
    env = deployment.env(
        url,
        moto.url,
        ADMIN_EMAIL=email,
        ADMIN_PASSWORD=password,
        TRUSTED_PROXIES=TRUSTED,
        # nginx's limits are the subject here: a slot per request thread, so that a 503
        # from the app's own slot count (1 by default, tests/test_password_guard.py) is
        # not taken for nginx's cap.
        LOGIN_CONCURRENCY="2",
    )
    stack = h.Stack(deployment, "edge", env, entrypoint=True)
    try:
        start_unprivileged(stack)
        token = stack.http.login(email, password)
        product = {"sku": "edge-1", "name": "edge", "price": 1, "mark": "m", "quantity": 1}
        assert stack.http.request("POST", "/api/products", product, token=token).status == 201
        yield stack
    finally:
        if stack.main is not None and stack.main.poll() is None:
            assert stack.stop(timeout=60) == {"entrypoint": 0}, h.tail(stack.log)
        mariadb.drop_database(name)


def log_lines(stack: h.Stack, marker: str) -> list[str]:
    time.sleep(0.3)  # the access log line follows the answer
    return [line for line in stack.log.read_text(errors="replace").splitlines() if marker in line]


def test_the_entrypoint_writes_trusted_proxies_into_nginx_conf(edge):
    rendered = (edge.runs[0] / "nginx.conf").read_text()
    trusted = re.findall(r"^\s*set_real_ip_from (\S+);$", rendered, re.M)
    assert trusted == ["192.0.2.0/24", PROXY]
    assert "believed from: 192.0.2.0/24 127.0.0.2" in edge.log.read_text()


def test_the_catalog_import_alone_takes_files_larger_than_nginxs_1_mib(edge):
    token = edge.http.login(*ADMINS[0])
    rows = "".join(f"bulk-{n:05},{'n' * 100},{n}.5,acme,{n}\n" for n in range(10_000))
    text = ("sku,name,price,mark,quantity\n" + rows).encode()
    assert len(text) > 1024 * 1024
    csv_file = {"Content-Type": "text/csv"}
    answer = edge.http.request(
        "POST", "/api/catalog/import", token=token, headers=csv_file, body=text, timeout=60
    )
    assert answer.status == 200, answer.json
    assert answer.json["created"]["count"] == 10_000
    exported = edge.http.get(
        "/api/catalog/export?mark=acme", headers={"Authorization": f"Bearer {token}"}
    )
    assert exported.status == 200
    assert len(exported.body.decode().splitlines()) == 10_001  # the header and every product
    # Past IMPORT_MAX_BODY_BYTES (10 MiB) the app answers; far past it, nginx does.
    too_big = edge.http.request(
        "POST",
        "/api/catalog/import",
        token=token,
        headers=csv_file,
        body=b"x" * (11 * 1024 * 1024),
        timeout=60,
    )
    assert too_big.status == 413 and too_big.json["code"] == 413, too_big
    assert edge.http.declared_body("/api/catalog/import", 13 * 1024 * 1024) == 413
    assert edge.http.declared_body("/api/products", 2 * 1024 * 1024) == 413


def test_x_forwarded_for_is_believed_from_trusted_proxies_only(edge):
    """/metrics answers loopback and private addresses only: it shows whom the app sees."""
    port = edge.port
    cases = [
        # (connection from, X-Forwarded-For, the client nginx and the app see)
        (PROXY, CLIENT, CLIENT),
        (PROXY, f"{CLIENT}, 192.0.2.10", CLIENT),  # through two trusted proxies
        (PROXY, f"{CLIENT}, {STRANGER}", STRANGER),  # a stranger's forged left part
        (STRANGER, CLIENT, STRANGER),
        (h.HOST, CLIENT, h.HOST),
    ]
    for n, (source, forwarded, seen) in enumerate(cases):
        answer = get(port, f"/metrics?case={n}", source, X_Forwarded_For=forwarded)
        if seen == CLIENT:
            assert answer.status == 404, (n, answer)
            assert_json_error(answer, 404)
        else:
            assert answer.status == 200, (n, answer)
        [line] = log_lines(edge, f"/metrics?case={n} ")
        assert line.startswith(f"{seen} "), (n, line)


def login_from(port: int, client: str):
    email, password = ADMINS[0]
    body = {"email": email, "password": password}
    headers = {"X-Forwarded-For": client}
    return lambda: request(port, "POST", "/users/login", body, PROXY, headers)


def assert_nginx_429(answer: Answer) -> None:
    assert_json_error(answer, 429)
    assert answer.headers.get("retry-after") == "2"


def test_a_burst_of_logins_from_one_client_gets_json_429s_while_reads_answer(edge):
    port, client = edge.port, "198.51.100.20"
    reader = h.Load(port, ["edge-1"], []).start([h.Role(put=0, list=0)])
    try:
        logins = h.at_once([login_from(port, client)] * 30)
    finally:
        reader.stop()
    statuses = Counter(a.status for a in logins)
    assert set(statuses) == {200, 429}, statuses
    # 1 + a burst of 10 at most, whatever the timing: the rest are refused.
    assert statuses[429] >= 30 - 11, statuses
    for answer in logins:
        if answer.status == 429:
            assert_nginx_429(answer)
    assert reader.reads() and set(reader.statuses()) == {200}, reader.statuses()
    refused = [line for line in log_lines(edge, f'xff="{client}"') if '" 429 ' in line]
    assert len(refused) == statuses[429]
    assert all("upstream=- " in line for line in refused), "nginx answered them itself"
    # Another client behind the same proxy is not held back.
    assert login_from(port, "198.51.100.21")().status == 200


SLOW_BODY = 100  # the Content-Length a trickling client announces


def trickle(
    port: int,
    source: str,
    path: str = "/users/login",
    method: str = "POST",
    forwarded: str | None = None,
) -> socket.socket:
    """A request whose body comes one byte at a time: the headers and the first byte now."""
    conn = socket.create_connection((h.HOST, port), 30, source_address=(source, 0))
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {SLOW_BODY}\r\n"
    )
    if forwarded:
        head += f"X-Forwarded-For: {forwarded}\r\n"
    conn.sendall(head.encode() + b"\r\n{")
    return conn


def answer_of(conn: socket.socket) -> int | None:
    """The status nginx answers on a trickling connection (None: closed without one)."""
    received = b""
    with contextlib.suppress(OSError):
        while b"\r\n" not in received and (chunk := conn.recv(65536)):
            received += chunk
    conn.close()
    return int(received.split()[1]) if received.startswith(b"HTTP/") else None


@pytest.mark.parametrize("behind_proxy", [False, True], ids=["direct", "behind-the-proxy"])
def test_two_slow_login_bodies_from_one_address_leave_other_logins_alone(edge, behind_proxy):
    """Two sockets trickling a login body from one address fill that address's cap only:
    another address logs in, a third slow body from the first is refused at once, and
    nginx closes the slow ones after client_body_timeout (5 s without a byte)."""
    port, email, password = edge.port, *ADMINS[0]
    body = {"email": email, "password": password}
    if behind_proxy:  # one address as the app sees it: the client the proxy names
        slow = {"source": PROXY, "forwarded": "198.51.100.60"}
        other = lambda: request(  # noqa: E731
            port, "POST", "/users/login", body, PROXY, {"X-Forwarded-For": "198.51.100.61"}
        )
    else:  # other loopback addresses are other clients to nginx
        slow = {"source": "127.0.0.4"}
        other = lambda: request(port, "POST", "/users/login", body, "127.0.0.5")  # noqa: E731
    started = time.monotonic()
    tricklers = [trickle(port, **slow), trickle(port, path="/users/login/", **slow)]
    try:
        time.sleep(1)
        third = trickle(port, **slow)
        assert answer_of(third) == 429, "the address's third password check at once"
        for _ in range(3):
            answer = other()
            assert answer.status == 200, answer
            time.sleep(0.5)
        assert time.monotonic() - started < 5, "the slow bodies were still open"
        closed = [answer_of(conn) for conn in tricklers]
        took = time.monotonic() - started
    finally:
        for conn in tricklers:
            conn.close()
    # Closed by nginx (client_body_timeout: no answer, the connection ends).
    assert closed == [None, None] and took < 9, (closed, took)


def test_password_changes_are_capped_with_logins_but_reading_your_account_is_not(edge):
    """PATCH /users/me (it verifies current_password) shares the address's cap with the
    logins, by prefix (/users/me/ too); GET /users/me is not counted."""
    port, source = edge.port, "127.0.0.6"
    token = edge.http.login(*ADMINS[0])
    auth = {"Authorization": f"Bearer {token}"}
    held = [
        trickle(port, source, "/users/me", "PATCH"),
        trickle(port, source, "/users/me/", "PATCH"),
    ]
    try:
        time.sleep(1)
        assert_nginx_429(request(port, "POST", "/users/login", {"email": "a@b.cd"}, source))
        refused = request(port, "PATCH", "/users/me/", {"fullname": "x"}, source, auth)
        assert_nginx_429(refused)
        assert [request(port, "GET", path, None, source, auth).status
                for path in ("/users/me", "/users/me/")] == [200, 200]  # fmt: skip
    finally:
        for conn in held:
            conn.close()


def test_logins_from_many_clients_at_once_are_capped_per_instance(edge):
    answers = h.at_once([login_from(edge.port, f"198.51.100.{100 + n}") for n in range(16)])
    statuses = Counter(a.status for a in answers)
    # One login each, from fresh addresses: the 429s can only be the instance's cap (how
    # many get in depends on how many finish before the last arrive).
    assert set(statuses) == {200, 429}, statuses
    for answer in answers:
        if answer.status == 429:
            assert_nginx_429(answer)


# ---------------------------------------------------------------- the image's layout

# In a mount and network namespace of their own, as `docker run --read-only --tmpfs /run
# --tmpfs /tmp -p 80:80` gives them: this machine's root filesystem read-only, fresh
# tmpfs on /run and /tmp, a loopback of its own where unprivileged users may bind port 80
# (the sysctl Docker >= 20.10 sets), then the entrypoint as the app user. The run's work
# directory (the app's copy, MariaDB's socket) and the source tree are bound read-only at
# their own paths (either may be under /tmp).
CONTAINER = r"""
root=$1 shared=$2 image_run=$3 source=$4 entrypoint=$5
ip link set lo up
sysctl -q -w net.ipv4.ip_unprivileged_port_start=0
mount --bind / "$root"
mount -o remount,bind,ro "$root"
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
if [ "$image_run" = yes ]; then
    # No tmpfs on /run: the image's own, root's, with /run/marketplace made for the app.
    mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$root/run"
    install -d -m 0750 -o www-data -g www-data "$root/run/marketplace"
else
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/run"
fi
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/tmp"
for dir in "$shared" "$source"; do
    mkdir -p "$root$dir"
    mount --bind -o ro "$dir" "$root$dir"
done
exec chroot "$root" setpriv --reuid=www-data --regid=www-data --init-groups "$entrypoint"
"""

# HTTP to port 80 inside the namespace: [[method, path, body, token], ...] on stdin ->
# [[status, body], ...].
PROBE = r"""
import http.client, json, sys
answers = []
for method, path, body, token in json.load(sys.stdin):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = "Bearer " + token
    conn = http.client.HTTPConnection("127.0.0.1", 80, timeout=20)
    try:
        conn.request(method, path, body=body, headers=headers)
        answer = conn.getresponse()
        answers.append([answer.status, answer.read().decode(errors="replace")])
    except OSError as exc:
        answers.append([None, repr(exc)])
    finally:
        conn.close()
print(json.dumps(answers))
"""


def inside(pid: int, *requests: tuple) -> list:
    done = h.run(
        ["nsenter", f"--net=/proc/{pid}/ns/net", "--", h.SYSTEM_PYTHON, "-c", PROBE],
        timeout=120,
        input=json.dumps([list(r) + [None] * (4 - len(r)) for r in requests]),
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def written(top: Path) -> set[str]:
    """Every path under ``top`` (a directory as the namespace sees it), relative."""
    return {str(path.relative_to(top)) for path in top.rglob("*")}


@pytest.mark.parametrize("image_run", [False, True], ids=["tmpfs-run", "image-run"])
def test_the_image_runs_unprivileged_on_a_read_only_root_and_port_80(
    image_run, deployment, mariadb, moto, reaper
):
    name = f"marketplace_edge_ro_{int(image_run)}"
    mariadb.create_database(name)
    mysql_socket = reaper.workdir / "mariadb" / "mysqld.sock"
    email, password = ADMINS[0]
    env = deployment.env(
        f"mysql://root@localhost/{name}?unix_socket={mysql_socket}",
        moto.url,
        REDIS_URL="",
        ADMIN_EMAIL=email,
        ADMIN_PASSWORD=password,
        HOME=str(deployment.app_dir),  # the image's: /app, read-only
        WEB_INI=str(deployment.source / "app.ini"),
        NGINX_CONF=str(deployment.source / "nginx.conf"),  # as shipped: port 80, /run
    )
    del env["APP_USER"]  # the image sets none
    root = reaper.workdir / f"rootfs-{int(image_run)}"
    root.mkdir()
    log = reaper.workdir / f"rootfs-{int(image_run)}.log"
    log.touch()
    shutil.chown(log, h.APP_USER, h.APP_USER)  # stdout, as Docker hands it to USER
    entrypoint = deployment.source / "docker" / "entrypoint.sh"
    args = [root, reaper.workdir, "yes" if image_run else "no", deployment.source, entrypoint]
    unshare = ["unshare", "--mount", "--net", "--propagation", "private"]
    main = reaper.start([*unshare, "sh", "-ec", CONTAINER, "sh", *args], log.name, env)
    try:

        def healthy() -> bool:
            if main.poll() is not None:
                raise h.HarnessError(f"the entrypoint exited ({main.returncode}):\n{h.tail(log)}")
            return inside(main.pid, ("GET", "/healthz"))[0][0] == 200

        h.wait_until("/healthz on port 80 in the namespace", healthy, 120, every=1)
        [[status, body]] = inside(
            main.pid, ("POST", "/users/login", json.dumps({"email": email, "password": password}))
        )
        assert status == 200, body
        token = json.loads(body)["access_token"]
        big = json.dumps({"name": "x" * 200_000})  # nginx and uWSGI buffer it to /tmp
        answers = inside(
            main.pid,
            ("GET", "/readyz"),
            ("GET", "/api/products"),
            ("POST", "/api/products", big, token),
        )
        assert [a[0] for a in answers] == [200, 200, 413], answers
        assert json.loads(answers[2][1])["code"] == 413  # the app's MAX_BODY_BYTES

        processes = [main.pid, *reaper.descendants(main.pid)]
        names = {h.describe(p) for p in processes}
        assert any("nginx: master" in n for n in names) and any("uWSGI master" in n for n in names)
        www_data = {h.uid_of(p) for p in processes}
        assert www_data == {33}, names
        mounts = Path(f"/proc/{main.pid}/mountinfo").read_text().splitlines()
        [root_mount] = [m for m in mounts if m.split()[4] == "/"]
        assert "ro" in root_mount.split()[5].split(","), root_mount

        view = Path(f"/proc/{main.pid}/root")
        run = written(view / "run")
        assert {"marketplace/uwsgi.sock", "marketplace/uwsgi.fifo", "marketplace/nginx.conf",
                "marketplace/nginx.pid"} <= run, run  # fmt: skip
        assert {p.split("/")[0] for p in run} == {"marketplace"}, run
        tmp = {p.split("/")[0] for p in written(view / "tmp")}
        bound = {
            d.relative_to("/tmp").parts[0]
            for d in (reaper.workdir, deployment.source)
            if d.is_relative_to("/tmp")
        }
        assert tmp - bound <= {f"nginx-{kind}" for kind in
               ("client-body", "uwsgi", "proxy", "fastcgi", "scgi")}, tmp  # fmt: skip
        output = log.read_text(errors="replace")
        for trouble in ("Read-only file system", "Permission denied", "[emerg]", "[alert]"):
            assert trouble not in output, output[-3000:]
        assert "believed from: no proxy" in output
    finally:
        status = reaper.stop(main, signal.SIGTERM, timeout=60)
        mariadb.drop_database(name)
    assert status == 0, h.tail(log)
    assert not reaper.descendants(main.pid)
