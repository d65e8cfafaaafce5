"""The harness's own fault tools do what the fault scenarios rely on."""

from __future__ import annotations

import time

import pymysql
import pytest

from tests.system import harness as h


def connect(port: int, timeout: float = 2) -> pymysql.Connection:
    return pymysql.connect(
        host=h.HOST, port=port, user="root", read_timeout=timeout, connect_timeout=5
    )


def test_the_fault_proxy_passes_drops_delays_freezes_and_cuts(mariadb, fault_proxy):
    proxy = fault_proxy(mariadb.port)
    conn = connect(proxy.port)
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
        with proxy.fault("pass", delay=0.5):
            began = time.monotonic()
            cur.execute("SELECT 2")
            assert cur.fetchone() == (2,) and time.monotonic() - began >= 0.5
        with proxy.fault("drop_down"), pytest.raises(pymysql.err.OperationalError):
            cur.execute("SELECT 3")  # the query runs; its answer never comes back
    frozen = connect(proxy.port, timeout=1)
    with proxy.fault("freeze"), pytest.raises(pymysql.err.OperationalError):
        frozen.cursor().execute("SELECT 4")
    cut = connect(proxy.port)
    proxy.cut()
    with pytest.raises(pymysql.err.OperationalError):
        cut.cursor().execute("SELECT 5")


def test_a_private_mariadb_freezes_thaws_and_restarts_on_its_port(private_mariadb):
    db = private_mariadb("--max-connections=12")
    assert db.query(None, "SELECT @@max_connections") == [(12,)]
    db.freeze()
    with pytest.raises(pymysql.err.OperationalError):
        connect(db.port, timeout=1).cursor().execute("SELECT 1")
    db.thaw()
    db.stop()
    assert not db.alive()
    db.start()
    assert db.query(None, "SELECT 1") == [(1,)]


def test_a_private_redis_answers(redis):
    assert redis.alive() and redis.port != 6379
