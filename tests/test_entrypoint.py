"""docker/entrypoint.sh on its own (no container): what it refuses before starting
anything, the command it runs for a name that is not a role, and the JSON bodies of
nginx's own error pages against the app's error shape. The image and its roles run in
tests/system (test_image.py with podman; test_container.py and test_edge.py as processes);
hadolint and shellcheck run in `make lint`."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from app.core.errors import payload_for

ROOT = Path(__file__).resolve().parent.parent
NGINX_CONF = ROOT / "nginx.conf"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"


def entrypoint(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """The entrypoint with its runtime directory under ``tmp_path`` and a template that
    does not exist: it stops at the first thing it cannot do."""
    base = {
        "PATH": os.environ["PATH"],
        "APP_DIR": str(tmp_path),
        "WEB_SOCKET": str(tmp_path / "run" / "uwsgi.sock"),
        "NGINX_CONF": str(tmp_path / "no-such-nginx.conf"),
        "APP_USER": "www-data",  # when the tests run as root
    }
    return subprocess.run(
        ["bash", str(ENTRYPOINT), *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    "proxies",
    ["10.0.0.0/8; include /etc/passwd", "0.0.0.0/0", "::/0", "256.1.1.1", "alb.internal",
     "10.0.1.0/33", "10.0.1.0/24,,10.0.2.0/"],
)  # fmt: skip
def test_the_entrypoint_refuses_trusted_proxies_that_are_not_addresses(proxies, tmp_path):
    done = entrypoint(tmp_path, "web", TRUSTED_PROXIES=proxies)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "TRUSTED_PROXIES:" in done.stderr and "not an IP address" in done.stderr
    assert len(done.stderr.splitlines()) == 1 and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "proxies",
    [
        "0.0.0.0/1,128.0.0.0/1",  # everyone, in two halves
        "10.0.0.0/8",
        "::/1,8000::/1",
        ",".join(f"{n}.0.0.0/12" for n in range(1, 9)),  # each narrow enough, 8 together
        ",".join(f"2001:db8:{n:x}::/29" for n in range(0, 16)),
    ],
)
def test_the_entrypoint_refuses_trusted_proxies_too_wide_to_be_proxies(proxies, tmp_path):
    for role in ("web", "all"):
        done = entrypoint(tmp_path, role, TRUSTED_PROXIES=proxies)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "TRUSTED_PROXIES:" in done.stderr and "too" in done.stderr, done.stderr
        assert len(done.stderr.splitlines()) == 1 and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "proxies",
    [
        "10.20.0.0/24,10.20.1.0/24",  # the load balancer's subnets (terraform's default)
        "127.0.0.1, 192.0.2.7",
        "104.16.0.0/13,104.24.0.0/14,172.64.0.0/13,2400:cb00::/32,2a06:98c0::/29",  # a CDN
    ],
)
def test_the_entrypoint_takes_load_balancer_and_cdn_ranges(proxies, tmp_path):
    done = entrypoint(tmp_path, "web", TRUSTED_PROXIES=proxies)
    assert "TRUSTED_PROXIES" not in done.stderr
    assert "no-such-nginx.conf" in done.stderr  # it went on, to render nginx.conf


def test_a_command_that_is_not_a_role_is_run_as_it_is(tmp_path):
    done = entrypoint(tmp_path, "echo", "hello", TRUSTED_PROXIES="0.0.0.0/0")
    assert (done.returncode, done.stdout) == (0, "hello\n"), done.stderr


def test_nginx_answers_its_own_errors_in_the_apps_error_shape():
    """Each status nginx answers itself has a body in nginx.conf's map: the app's
    {"code", "status", "message", "request_id"}, with the app's wording of the status."""
    text = NGINX_CONF.read_text()
    pages = re.findall(r"^\s*error_page ([\d ]+) (?:=\d+ )?/\.error;$", text, re.M)
    caught = {int(code) for line in pages for code in line.split()} - {494}
    assert {400, 408, 413, 414, 429, 502, 504} <= caught
    [template] = re.findall(r"^\s*return 200 '(\{\$error_json, .*\})\\n';$", text, re.M)

    def page(members: str) -> dict:
        rendered = template.replace("$error_json", members)
        return json.loads(rendered.replace("$marketplace_request_id", "0123abcd"))

    bodies = dict(re.findall(r"^\s*(\d{3}) '(\"code\": .*)';$", text, re.M))
    for code in caught:
        body = page(bodies[str(code)])
        assert set(body) == {"code", "status", "message", "request_id"}, body
        assert body["code"] == code and body["status"] == payload_for(code)["status"], body
