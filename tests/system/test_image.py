"""The image itself, in a real container runtime: Debian's podman (rootful) builds the
Dockerfile and runs every `docker run` line the documentation shows (docs/deployment.md,
README.md, the Dockerfile's header), against a private MariaDB, a private Redis and moto.

No image registry is reachable here: the Dockerfile's Debian base is built from Debian's
packages (mmdebstrap into a tarball, `podman import`), cached in /var/cache, and passed as
BASE_IMAGE. Each documented line runs as written but for what a test machine must change:
`docker` is podman, `-p 80:80` publishes on a loopback port, the containers reach this
machine's loopback (slirp4netns: 10.0.2.2 inside is 127.0.0.1 outside), podman needs the
unprivileged-port sysctl Docker sets by itself, each documented value is the test's
(`mysql://...@dbhost...` is the private MariaDB), and moto stands in for SES
(AWS_ENDPOINT_URL, with test keys where a line leaves them to EC2's instance role).
Nothing else is added.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import secrets
import shlex
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.system import harness as h

PODMAN = "/usr/bin/podman"
IMAGE = "localhost/marketplace:system-test"
HOST_LOOPBACK = "10.0.2.2"  # this machine's 127.0.0.1, seen from a container
NETWORK = "slirp4netns:allow_host_loopback=true"
UNPRIVILEGED_PORTS = "net.ipv4.ip_unprivileged_port_start=0"  # what Docker sets itself
DOCUMENTS = ("README.md", "docs/deployment.md", "Dockerfile")
ROLES = ("all", "web", "worker", "migrate")
ADMIN = ("admin@example.com", "first-admin-password")
TIMINGS = h.ROOT / "image-test-times.json"
# The test's value of each variable the documentation sets (and AWS_ENDPOINT_URL, moto).
TEST_VALUES = {
    "DATABASE_URL": "mysql://root@{db}",
    "REDIS_URL": "redis://{redis}",
    "SECRET_KEY": "{key}",
    "EMAIL_SOURCE": h.EMAIL_SOURCE,
    "REGION_NAME": "us-east-1",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_ENDPOINT_URL": "http://{moto}",
    "ADMIN_EMAIL": ADMIN[0],
    "ADMIN_PASSWORD": ADMIN[1],
    "TRUSTED_PROXIES": "10.0.1.0/24,10.0.2.0/24",
}


# runc, not crun: crun refuses this kind of machine's cgroups (v1 with a v2 hierarchy that
# has a controller). Limits the runtime may set without CAP_SYS_RESOURCE, which a
# sandboxed root may lack (podman's defaults raise them past the machine's).
RUNTIME = ["--runtime", "runc"]
ULIMITS = ["--ulimit", "nofile=16384:16384", "--ulimit", "nproc=4096:4096"]


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    done = h.run([PODMAN, *RUNTIME, *args], timeout=timeout)
    if check and done.returncode != 0:
        raise h.HarnessError(f"podman {' '.join(args[:3])}: {done.stdout}{done.stderr}")
    return done


# ---------------------------------------------------------------- what the docs show


def shell_lines(text: str) -> list[str]:
    """Shell lines with their continuations joined (`\\` at the end of a line)."""
    lines, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        lines.append(current + line)
        current = ""
    return lines


def documented_blocks(name: str) -> list[str]:
    """The shell the file shows: fenced sh blocks in Markdown, `#   ` lines in the
    Dockerfile's header."""
    text = (h.ROOT / name).read_text()
    if name == "Dockerfile":
        return ["\n".join(line[4:] for line in text.splitlines() if line.startswith("#   "))]
    return re.findall(r"^```(?:sh|bash|console)\n(.*?)^```", text, re.M | re.S)


def documented_runs() -> list[list[str]]:
    """Every distinct `docker run` line of the documentation, as arguments."""
    runs = []
    for name in DOCUMENTS:
        for block in documented_blocks(name):
            for line in shell_lines(block):
                if line.startswith("docker run "):
                    args = shlex.split(line)[2:]
                    if args not in runs:
                        runs.append(args)
    return runs


def documented_env_files() -> dict[str, dict[str, str]]:
    """`cat > NAME <<'EOF' ... EOF` blocks: NAME -> its variables."""
    files = {}
    for name in DOCUMENTS:
        for block in documented_blocks(name):
            for file, body in re.findall(r"^cat > (\S+) <<'EOF'\n(.*?)^EOF$", block, re.M | re.S):
                files[file] = dict(line.split("=", 1) for line in body.splitlines() if line)
    return files


def image_at(args: list[str]) -> int:
    """Where the image's name (`marketplace`, as the docs build it) is in the arguments."""
    return next(n for n, arg in enumerate(args) if arg == "marketplace" and args[n - 1] != "--name")


def role_of(args: list[str]) -> str:
    """The role a `docker run` line asks for (after the image's name; none: all)."""
    image = image_at(args)
    return args[image + 1] if len(args) > image + 1 else "all"


# ---------------------------------------------------------------- the image


def dockerfile_base() -> str:
    [base] = re.findall(r"^ARG BASE_IMAGE=(\S+)$", (h.ROOT / "Dockerfile").read_text(), re.M)
    return base


# This machine's own additions to its CA store: where its traffic to the package
# registries passes a proxy of its own, the base trusts that proxy as the machine does.
LOCAL_CAS = Path("/usr/local/share/ca-certificates")


def base_image(timings: dict) -> str:
    """The Dockerfile's base, built from Debian's packages (the suite its tag names) and
    kept in /var/cache between runs; imported into podman once."""
    cas = sorted(LOCAL_CAS.glob("*.crt"))
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in cas)).hexdigest()[:12]
    tag = dockerfile_base().split(":", 1)[1]  # bookworm-20260824-slim
    local = f"localhost/marketplace-base:{tag}-{digest}"
    if podman("image", "exists", local, check=False).returncode == 0:
        return local
    sources = next(
        p
        for p in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
        if p.exists()
    )
    h.VENV_CACHE.mkdir(parents=True, exist_ok=True)
    tarball = h.VENV_CACHE / f"base-{tag}-{digest}.tar"
    with open(h.VENV_CACHE / "base.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not tarball.exists():
            started = time.monotonic()
            partial = tarball.with_suffix(".partial.tar")
            done = h.run(
                [
                    "mmdebstrap", "--variant=minbase", "--quiet",
                    "--dpkgopt=path-exclude=/usr/share/man/*",
                    "--dpkgopt=path-exclude=/usr/share/doc/*",
                    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
                    f"--customize-hook=mkdir -p $1{LOCAL_CAS}",
                    *(f"--customize-hook=copy-in {ca} {LOCAL_CAS}" for ca in cas),
                    tag.split("-")[0], partial, sources,
                ],
                timeout=1800,
            )  # fmt: skip
            if done.returncode != 0:
                raise h.HarnessError(f"mmdebstrap: {done.stdout}{done.stderr[-3000:]}")
            partial.rename(tarball)
            timings["base_tarball_seconds"] = round(time.monotonic() - started, 1)
        podman("import", "--change", 'CMD ["/bin/bash"]', tarball, local, timeout=600)
    return local


@pytest.fixture(scope="module")
def timings():
    found: dict = {}
    yield found
    TIMINGS.write_text(json.dumps(found, indent=2) + "\n")


@pytest.fixture(scope="module")
def image(timings):
    if podman("info", check=False).returncode != 0:
        pytest.skip("podman cannot run on this machine")
    started = time.monotonic()
    base = base_image(timings)
    timings["base_image_seconds"] = round(time.monotonic() - started, 1)
    started = time.monotonic()
    podman(
        "build", "--format", "docker", "--network", "host", *ULIMITS,
        "--build-arg", f"BASE_IMAGE={base}",
        "--tag", IMAGE, h.ROOT, timeout=1800,
    )  # fmt: skip
    timings["image_build_seconds"] = round(time.monotonic() - started, 1)
    return IMAGE


# ---------------------------------------------------------------- running the lines


class Containers:
    """The containers a test runs, removed at its end."""

    def __init__(self, workdir: Path, values: dict[str, str]) -> None:
        self.workdir, self.values, self.names = workdir, values, []

    def run(self, args: list[str], sysctl: bool = True) -> tuple[str, int | None, str]:
        """A documented `docker run` line under podman: (name, loopback port or None,
        podman's output: the container id, or everything a --rm container printed)."""
        args = list(args)
        name = f"marketplace-test-{secrets.token_hex(3)}"
        if "--name" in args:
            args[args.index("--name") + 1] = name
        else:
            args[:0] = ["--name", name]
        port = None
        for n, arg in enumerate(args):
            if arg == "-p" and args[n + 1] == "80:80":
                port = h.free_port()
                args[n + 1] = f"127.0.0.1:{port}:80"
            elif arg == "-e" and "=" in args[n + 1]:
                variable = args[n + 1].split("=", 1)[0]
                args[n + 1] = f"{variable}={self.values[variable]}"
            elif arg == "--env-file":
                args[n + 1] = str(self.env_file(args[n + 1]))
            elif arg == "--restart":
                args[n + 1] = "no"  # the test restarts nothing
        image = image_at(args)
        args[image] = IMAGE
        extra = [
            *ULIMITS,
            "--network",
            NETWORK,
            "-e",
            f"AWS_ENDPOINT_URL={self.values['AWS_ENDPOINT_URL']}",
        ]
        if not any(a.startswith("AWS_ACCESS_KEY_ID=") for a in args):
            # What EC2's instance role gives a line that sets no keys.
            for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                extra += ["-e", f"{variable}={self.values[variable]}"]
        if sysctl:
            extra += ["--sysctl", UNPRIVILEGED_PORTS]
        self.names.append(name)
        done = podman("run", *extra, *args, timeout=300, check="--rm" not in args)
        if "--rm" in args and done.returncode != 0:
            raise h.HarnessError(f"{args[image:]} exited {done.returncode}:\n{done.stderr}")
        return name, port, done.stdout + done.stderr

    def env_file(self, documented: str) -> Path:
        variables = documented_env_files()[documented]
        path = self.workdir / documented
        path.write_text("".join(f"{name}={self.values[name]}\n" for name in variables))
        return path

    def state(self, name: str) -> dict:
        return json.loads(podman("inspect", "--format", "{{json .State}}", name).stdout)

    def logs(self, name: str) -> str:
        done = podman("logs", name, check=False)
        return done.stdout + done.stderr

    def wait_healthy(self, name: str, port: int, timeout: float = 180) -> h.Http:
        http = h.Http(port)

        def up() -> bool:
            if not self.state(name)["Running"]:
                raise h.HarnessError(f"{name} exited:\n{self.logs(name)[-4000:]}")
            return http.status("/healthz") == 200

        h.wait_until(f"{name}: /healthz", up, timeout, every=0.5)
        return http

    def stop(self, name: str, timeout: int = 30) -> tuple[int, float]:
        """`podman stop` (SIGTERM, SIGKILL after ``timeout``): exit code and seconds."""
        started = time.monotonic()
        podman("stop", "--time", str(timeout), name, timeout=timeout + 60)
        return self.state(name)["ExitCode"], time.monotonic() - started

    def remove_all(self) -> None:
        for name in self.names:
            podman("rm", "--force", "--time", "0", name, check=False)


@pytest.fixture
def containers(tmp_path, mariadb, redis, moto):
    """Containers of the test's own; ``values`` maps each documented variable to the
    test's value (the private MariaDB database, Redis database and moto)."""
    moto.reset()
    name = f"marketplace_image_{secrets.token_hex(3)}"
    mariadb.create_database(name)
    port_of = lambda url: url.rsplit(":", 1)[1]  # noqa: E731
    values = {
        variable: value.format(
            db=f"{HOST_LOOPBACK}:{mariadb.port}/{name}",
            redis=f"{HOST_LOOPBACK}:{port_of(redis.new_database())}",
            moto=f"{HOST_LOOPBACK}:{moto.port}",
            key=secrets.token_urlsafe(48),
        )
        for variable, value in TEST_VALUES.items()
    }
    made = Containers(tmp_path, values)
    made.database = name
    yield made
    made.remove_all()
    mariadb.drop_database(name)


def runs_of(role: str) -> list[list[str]]:
    return [args for args in documented_runs() if role_of(args) == role]


def use_the_catalog(http: h.Http, reads: int) -> None:
    """The seed's requests: log in, create a product, read it, change its price."""
    token = http.login(*ADMIN)
    product = {"sku": "image-1", "name": "zapatos", "price": 300, "mark": "acme", "quantity": 5}
    created = http.request("POST", "/api/products", product, token=token)
    assert created.status == 201, created.json
    assert [http.get("/api/products/image-1").status for _ in range(reads)] == [200] * reads
    changed = http.request("PUT", "/api/products/image-1", {"price": 500}, token=token)
    assert changed.status == 200, changed.json


def assert_nothing_lost(mariadb: h.MariaDB, database: str, moto: h.Moto, reads: int) -> None:
    """One view row per 200 read, and both emails (created, repriced) sent once."""
    assert h.view_counts(mariadb, database) == {"image-1": reads}
    assert h.notification_statuses(mariadb, database) == {"sent": 2}
    subjects = sorted(m.subject for m in moto.emails())
    assert len(subjects) == 2 and "price: 300 -> 500" in subjects[-1], subjects


# ---------------------------------------------------------------- the tests


def test_every_documented_line_is_run_here_and_sets_only_what_the_service_reads():
    """Each role has its documented line (each run by a test below), and every variable
    a line or env file sets is one the app's configuration, the entrypoint or boto3 reads."""
    runs = documented_runs()
    assert sorted(role_of(args) for args in runs) == sorted(ROLES), runs
    named = {
        args[n + 1].split("=", 1)[0] for args in runs for n, arg in enumerate(args) if arg == "-e"
    }
    for variables in documented_env_files().values():
        named |= set(variables)
    read = (h.ROOT / "app" / "core" / "config.py").read_text() + (
        h.ROOT / "docker" / "entrypoint.sh"
    ).read_text()
    for variable in named:
        assert variable in TEST_VALUES, f"{variable}: documented, but the test sets no value"
        assert variable.startswith("AWS_") or re.search(rf"\b{variable}\b", read), variable


def test_the_single_host_line_serves_the_seeds_flow_and_stops_losing_nothing(
    image, containers, mariadb, moto, timings
):
    started = time.monotonic()
    [single_host] = runs_of("all")  # the Dockerfile's header and docs/deployment.md
    name, port, _ = containers.run(single_host)
    http = containers.wait_healthy(name, port)
    assert podman("healthcheck", "run", name, check=False).returncode == 0  # the HEALTHCHECK
    use_the_catalog(http, reads=5)
    h.wait_until("the two emails", lambda: len(moto.emails()) >= 2, 60)
    code, took = containers.stop(name)
    assert (code, took < 30) == (0, True), (code, took, containers.logs(name)[-3000:])
    assert_nothing_lost(mariadb, containers.database, moto, reads=5)
    output = containers.logs(name)
    assert "stopped: uwsgi 0 nginx 0 worker 0" in output, output[-3000:]
    timings["single_host_seconds"] = round(time.monotonic() - started, 1)


def test_the_three_roles_as_three_containers_share_mariadb_and_redis(
    image, containers, mariadb, moto, timings
):
    started = time.monotonic()
    [migrate] = runs_of("migrate")
    [worker] = runs_of("worker")
    [web] = runs_of("web")
    _, _, output = containers.run(migrate)
    assert "Created the first admin: admin@example.com" in output, output[-3000:]
    worker_name, _, _ = containers.run(worker)
    web_name, port, _ = containers.run(web)
    http = containers.wait_healthy(web_name, port)
    for name in (web_name, worker_name):
        assert podman("healthcheck", "run", name, check=False).returncode == 0, name
        users = podman("top", name, "user").stdout.split()[1:]
        assert users and set(users) == {"app"}, (name, users)  # nginx's workers too
    use_the_catalog(http, reads=7)
    h.wait_until("the two emails", lambda: len(moto.emails()) >= 2, 60)
    h.wait_until(
        "the views through the stream",
        lambda: h.view_counts(mariadb, containers.database) == {"image-1": 7},
        60,
    )
    for name in (web_name, worker_name):
        code, took = containers.stop(name)
        assert (code, took < 30) == (0, True), (name, code, took, containers.logs(name)[-3000:])
    assert_nothing_lost(mariadb, containers.database, moto, reads=7)
    web_output = containers.logs(web_name)
    assert "flask deploy upgrade" not in web_output and "worker exited" not in web_output
    timings["three_roles_seconds"] = round(time.monotonic() - started, 1)


def test_a_container_whose_nginx_cannot_bind_exits_non_zero_within_10_s(image, containers, timings):
    """Without the unprivileged-port sysctl the app user cannot bind port 80."""
    [migrate] = runs_of("migrate")
    [web] = runs_of("web")
    containers.run(migrate)
    name, _, _ = containers.run(web, sysctl=False)
    h.wait_until(f"{name} to exit", lambda: not containers.state(name)["Running"], 60)
    state, output = containers.state(name), containers.logs(name)
    assert state["ExitCode"] != 0, output[-3000:]
    assert "bind() to 0.0.0.0:80 failed" in output, output[-3000:]
    [nginx_started] = re.findall(r'"time": "([^"]+)"[^\n]*started nginx', output)
    began = datetime.fromisoformat(nginx_started.replace("Z", "+00:00"))
    ended = datetime.fromisoformat(re.sub(r"(\.\d{6})\d*", r"\1", state["FinishedAt"]))
    assert (ended - began).total_seconds() < 10, (began, ended)


def test_the_image_runs_as_its_unprivileged_user_and_holds_no_secret_nor_stray_file(image):
    [config] = json.loads(podman("image", "inspect", image).stdout)
    assert config["Config"]["User"] == "10001:10001"  # numeric: runAsNonRoot can check it
    names = [item.split("=", 1)[0] for item in config["Config"]["Env"]]
    assert not [n for n in names if re.search(r"SECRET|PASSWORD|TOKEN|KEY|CREDENTIAL", n)]
    assert "APP_ENV=production" in config["Config"]["Env"]
    listing = podman("run", "--rm", *ULIMITS, image, "ls", "-A", "/app").stdout.split()
    assert sorted(listing) == ["__pycache__", "app", "app.ini", "migrations", "wsgi.py"], listing
