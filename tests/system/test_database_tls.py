"""TLS to the database, as terraform deploys it: the server (a private mariadbd) refuses
connections without TLS, and the service verifies the server's certificate and name
against the CA given in DATABASE_CA_PEM (the entrypoint writes it where DATABASE_URL's
ssl_ca names it). The image's migrate role, run as the container runs it."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import pymysql
import pytest

from tests.system import harness as h
from tests.system.conftest import ADMINS, need


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(workdir: Path, name: str) -> Path:
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=workdir,
    )  # fmt: skip
    return workdir / f"{name}.pem"


@pytest.fixture(scope="module")
def tls_server(reaper):
    """A private mariadbd with a certificate for 127.0.0.1 signed by its own CA, requiring
    TLS of every TCP client; and the PEM of another CA."""
    need(h.MARIADBD, h.MARIADB_INSTALL_DB, "openssl")
    workdir = reaper.workdir / "mariadb-tls"
    workdir.mkdir()
    ca = make_ca(workdir, "database-ca")
    other = make_ca(workdir, "other-ca")
    (workdir / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=database",
        "-keyout", "server.key", "-out", "server.csr", cwd=workdir,
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", ca.name, "-CAkey", "database-ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "san.cnf", "-out", "server.pem",
        cwd=workdir,
    )  # fmt: skip
    for path in workdir.iterdir():
        path.chmod(0o644)
    server = h.MariaDB.private(
        reaper,
        workdir,
        f"--ssl-ca={ca}",
        f"--ssl-cert={workdir / 'server.pem'}",
        f"--ssl-key={workdir / 'server.key'}",
    )
    # From now on, TCP without TLS is refused (the unix socket stays for the test).
    server.query(None, "SET GLOBAL require_secure_transport = ON")
    server.socket = workdir / "mysqld.sock"
    return server, ca.read_text(), other.read_text()


def by_socket(server, sql: str) -> list[tuple]:
    conn = pymysql.connect(unix_socket=str(server.socket), user="root", autocommit=True)
    with contextlib.closing(conn), conn.cursor() as cur:
        cur.execute(sql)
        return list(cur.fetchall())


def migrate(deployment, moto, server, ca_pem: str | None, host: str = h.HOST, tls=True):
    """The image's migrate role (docker/entrypoint.sh migrate) against a fresh database."""
    name = f"marketplace_tls_{len(by_socket(server, 'SHOW DATABASES'))}"
    by_socket(server, f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
    run = deployment.runtime_dir(f"run-{name}")
    url = f"mysql://root@{host}:{server.port}/{name}"
    # Without ssl_ca, pymysql would try TLS unverified: ssl_disabled is a client without it.
    url += f"?ssl_ca={run / 'database-ca.pem'}" if tls else "?ssl_disabled=true"
    env = deployment.env(
        url,
        moto.url,
        ADMIN_EMAIL=ADMINS[0][0],
        ADMIN_PASSWORD=ADMINS[0][1],
        WEB_SOCKET=str(run / "uwsgi.sock"),
        **({"DATABASE_CA_PEM": ca_pem} if ca_pem else {}),
    )
    done = h.run([deployment.source / "docker" / "entrypoint.sh", "migrate"], timeout=180, env=env)
    tables = by_socket(server, f"SHOW TABLES FROM {name}")
    return done, tables


def test_the_service_migrates_over_tls_verifying_the_servers_certificate(
    deployment, moto, tls_server
):
    server, ca, _other = tls_server
    done, tables = migrate(deployment, moto, server, ca)
    assert done.returncode == 0, done.stdout + done.stderr
    assert ("users",) in tables


def test_a_server_whose_certificate_another_ca_signed_is_refused(deployment, moto, tls_server):
    server, _ca, other = tls_server
    done, tables = migrate(deployment, moto, server, other)
    assert done.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in done.stderr, done.stderr
    assert tables == []


def test_a_server_answering_for_another_name_is_refused(deployment, moto, tls_server):
    server, ca, _other = tls_server
    done, tables = migrate(deployment, moto, server, ca, host="localhost")
    assert done.returncode != 0 and "match" in done.stderr, done.stderr[-2000:]
    assert tables == []


def test_the_server_refuses_the_service_without_tls(deployment, moto, tls_server):
    server, _ca, _other = tls_server
    done, tables = migrate(deployment, moto, server, None, tls=False)
    refused = ("insecure transport", "Access denied")
    assert done.returncode != 0 and any(r in done.stderr for r in refused), done.stderr[-2000:]
    assert tables == []
