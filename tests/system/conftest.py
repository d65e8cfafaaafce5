"""Fixtures of the system tests: the service as deployed (nginx + uWSGI with the shipped
files), a private MariaDB, a private Redis, moto as SES, a fault proxy, one reaper.

Every test here is marked ``system`` (``make smoke``, ``make reliability``; not ``make
test``). They need root and Debian's nginx, uWSGI (python3 plugin), python3-venv,
mariadb-server and redis-server (.ci/run installs them; see docs/testing.md).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.system import harness as h

HERE = Path(__file__).resolve().parent
ADMINS = [
    ("admin@marketplace.test", "first-admin-password"),
    ("second.admin@marketplace.test", "second-admin-password"),
    ("third.admin@marketplace.test", "third-admin-password"),
]
RESULTS = h.ROOT / "reliability-results.json"


def pytest_addoption(parser) -> None:
    group = parser.getgroup("system", "system tests (tests/system)")
    group.addoption("--load-seconds", type=float, default=60, help="reliability load (60)")
    group.addoption("--clients", type=int, default=50, help="reliability clients (50)")
    group.addoption("--outage-seconds", type=float, default=10, help="MariaDB outage (10)")
    group.addoption("--ses-outage-seconds", type=float, default=60, help="SES outage (60)")
    group.addoption("--source", type=Path, default=h.ROOT, help="tree whose files are run")


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if HERE in Path(item.fspath).resolve().parents:
            item.add_marker(pytest.mark.system)


@pytest.fixture(scope="session")
def opts(request):
    return request.config.option


@pytest.fixture(scope="session")
def reaper():
    """Starts every process of the run; at the end ends what is left, and says what."""
    if os.geteuid() != 0:
        pytest.fail("the system tests run as root (uWSGI drops privileges as in the image)")
    workdir = Path(tempfile.mkdtemp(prefix="marketplace-system-"))
    workdir.chmod(0o755)  # the app user reads the app copy below it
    reaper = h.Reaper(workdir)
    yield reaper
    left = reaper.kill_all()
    if os.environ.get("SYSTEM_TEST_KEEP"):
        print(f"kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    assert not left, f"left running at the end of the run: {left}"


def need(*binaries: str) -> None:
    if missing := h.missing_binaries(*binaries):
        pytest.fail(f"missing {', '.join(missing)}: see docs/testing.md")


@pytest.fixture(scope="session")
def mariadb(reaper) -> h.MariaDB:
    """A private mariadbd for the whole run (never the machine's shared one)."""
    need(h.MARIADBD, h.MARIADB_INSTALL_DB)
    workdir = reaper.workdir / "mariadb"
    workdir.mkdir()
    return h.MariaDB.private(reaper, workdir)


@pytest.fixture
def private_mariadb(reaper, request):
    """A private mariadbd of the test's own, to stop, freeze or restrict:
    ``private_mariadb("--max-connections=10")``."""
    need(h.MARIADBD, h.MARIADB_INSTALL_DB)
    started = []

    def make(*options: str) -> h.MariaDB:
        workdir = Path(tempfile.mkdtemp(prefix="mariadb-", dir=reaper.workdir))
        started.append(h.MariaDB.private(reaper, workdir, *options))
        return started[-1]

    yield make
    for server in started:
        if server.process.poll() is None:
            server.thaw()
            reaper.stop(server.process, timeout=60)


@pytest.fixture(scope="session")
def redis(reaper) -> h.Redis:
    need(h.REDIS_SERVER)
    return h.Redis(reaper, reaper.workdir)


@pytest.fixture(scope="session")
def moto(reaper) -> h.Moto:
    return h.Moto(reaper, str(Path(sys.executable).parent / "moto_server"))


@pytest.fixture
def ses(moto) -> h.Moto:
    """moto with no email sent yet and the sender verified."""
    moto.reset()
    return moto


@pytest.fixture
def fault_proxy():
    proxies = []

    def make(target_port: int) -> h.FaultProxy:
        proxies.append(h.FaultProxy(target_port))
        return proxies[-1]

    yield make
    for proxy in proxies:
        proxy.close()


@pytest.fixture(scope="session")
def deployment(reaper, opts, redis) -> h.Deployment:
    """The app copy and Debian-Python virtualenv every stack of the run serves."""
    need(h.NGINX, h.UWSGI, h.PYTHON_PLUGIN, h.SYSTEM_PYTHON, "setpriv")
    source = opts.source.resolve()
    venv = h.debian_venv(source)
    workdir = reaper.workdir / "deploy"
    workdir.mkdir()
    d = h.Deployment(source, venv, h.stage_app(source, workdir), workdir, reaper, redis)
    probe = subprocess.run(
        [
            "setpriv",
            f"--reuid={h.APP_USER}",
            f"--regid={h.APP_USER}",
            "--init-groups",
            venv / "bin" / "python",
            "-c",
            "import sys, flask, boto3; open(sys.argv[1]).read()",
            d.app_dir / "wsgi.py",
        ],
        capture_output=True,
        text=True,
        cwd=d.app_dir,
        check=False,
    )
    assert probe.returncode == 0, f"{h.APP_USER} cannot read the app or its venv: {probe.stderr}"
    return d


@pytest.fixture
def new_database(mariadb):
    """new_database(server=mariadb) -> (name, url) of a fresh database, dropped after."""
    made = []

    def make(server: h.MariaDB | None = None) -> tuple[str, str]:
        server = server or mariadb
        name = f"marketplace_{secrets.token_hex(4)}"
        made.append((server, name))
        return name, server.create_database(name)

    yield make
    for server, name in made:
        if server.process is None or server.process.poll() is None:
            server.drop_database(name)


@pytest.fixture
def stacks(deployment):
    """stacks(name, env, ...) -> a Stack not yet started; stopped at the end if running."""
    made: list[h.Stack] = []

    def make(name: str, env: dict, **kwargs) -> h.Stack:
        made.append(h.Stack(deployment, name, env, **kwargs))
        return made[-1]

    yield make
    for stack in made:
        if any(
            p.poll() is None for p in [stack.main, stack.nginx, *stack.uwsgi, *stack.workers_] if p
        ):
            stack.stop(timeout=30)


@pytest.fixture(scope="session")
def results():
    """Scenario figures, written to reliability-results.json (the repo root) at the end."""
    entries: list[dict] = []
    yield entries
    if entries:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        report = {"at": datetime.now(UTC).isoformat(timespec="seconds"), "scenarios": entries}
        RESULTS.write_text(json.dumps(report, indent=2, default=str) + "\n")


@pytest.fixture
def create_admins(deployment):
    """create_admins(env, n): the 2nd..nth admins, the operator's way (flask users
    create-admin); the first comes from ADMIN_EMAIL/ADMIN_PASSWORD at the migration."""

    def make(env: dict, count: int = 2) -> None:
        for address, password in ADMINS[1:count]:
            done = deployment.flask(
                env, "users", "create-admin", "--email", address, "--password", password
            )
            assert done.returncode == 0, done.stdout + done.stderr

    return make


@pytest.fixture
def app_env(deployment, moto):
    """app_env(database_url, ses_url=moto's, **overrides): the container's environment
    with the first admin and any override (WEB_PROCESSES, WEB_THREADS, REDIS_URL...)."""

    def make(db_url: str, ses_url: str | None = None, **extra) -> dict:
        email, password = ADMINS[0]
        return deployment.env(
            db_url, ses_url or moto.url, ADMIN_EMAIL=email, ADMIN_PASSWORD=password, **extra
        )

    return make
