"""The committed migrations build exactly the schema the models describe, on both databases."""

import os

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade
from sqlalchemy import create_engine, inspect, make_url, text

from app import create_app
from app.core import config
from app.core.dialect import in_models
from app.core.extensions import db
from tests.conftest import BACKENDS


def test_migrations_match_the_models(app):
    with app.app_context(), db.engine.connect() as conn:
        opts = {"compare_type": True, "include_object": in_models}
        context = MigrationContext.configure(conn, opts=opts)
        assert compare_metadata(context, db.metadata) == []


def test_lookup_keys_are_unique_and_the_list_is_indexed(app):
    with app.app_context():
        inspector = inspect(db.engine)
        uniques = {tuple(c["column_names"]) for c in inspector.get_unique_constraints("products")}
        uniques |= {
            tuple(i["column_names"]) for i in inspector.get_indexes("products") if i["unique"]
        }
        assert ("sku_key",) in uniques
        indexed = {tuple(i["column_names"]) for i in inspector.get_indexes("products")}
        for sort in ("price", "name", "created_at"):
            assert ("deleted_at", sort) in indexed
            assert ("mark", "deleted_at", sort) in indexed


@pytest.fixture(params=BACKENDS)
def empty_database(request, tmp_path):
    """A database of its own, empty, for a migration run step by step."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'upgrade.db'}"
        return
    server = make_url(config.database_url(os.environ["TEST_DATABASE_URL"]))
    name = f"{server.database}_upgrade"
    engine = create_engine(server.set(database=None))
    with engine.begin() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        conn.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    yield server.set(database=name).render_as_string(hide_password=False)
    with engine.begin() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
    engine.dispose()


def test_existing_emails_are_rewritten_in_the_canonical_form(empty_database, capsys):
    app = create_app(config.TestConfig(empty_database))
    accounts = {
        1: ("\uff4a\uff4f@example.com", None),  # fullwidth: becomes jo@example.com
        2: ("ana@bücher.example", None),  # stored before IDNA: the ASCII form
        3: ("\uff21\uff24\uff2d\uff29\uff2e@example.com", None),  # admin@example.com is account 4's
        4: ("admin@example.com", None),
        5: ("ops@[127.0.0.1]", None),  # no canonical form: kept
        6: ("\uff4a\uff4f@example.com", "2026-01-01 00:00:00"),  # deleted: left alone
    }
    with app.app_context():
        upgrade(revision="0005_worker")
        with db.engine.begin() as conn:
            for id_, (email, deleted_at) in accounts.items():
                conn.execute(
                    text(
                        "INSERT INTO users (id, fullname, username, email, username_key,"
                        " email_key, password_hash, rol, token_version, created_at,"
                        " updated_at, deleted_at) VALUES (:id, 'Someone', :u, :e, :u,"
                        " :k, 'x', 2, 1, '2026-01-01', '2026-01-01', :d)"
                    ),
                    {
                        "id": id_,
                        "u": f"user{id_}",
                        "e": email,
                        "k": None if deleted_at else email.lower(),
                        "d": deleted_at,
                    },
                )
        upgrade()
        with db.engine.connect() as conn:
            stored = dict(conn.execute(text("SELECT id, email_key FROM users")).all())
        db.engine.dispose()
    assert stored == {
        1: "jo@example.com",
        2: "ana@xn--bcher-kva.example",
        3: "\uff41\uff44\uff4d\uff49\uff4e@example.com",
        4: "admin@example.com",
        5: "ops@[127.0.0.1]",
        6: None,
    }
    said = capsys.readouterr().out
    assert "account 3 keeps" in said and "account 4's" in said
    assert "account 5 keeps 'ops@[127.0.0.1]'" in said


def test_products_written_before_the_search_index_are_found(empty_database):
    app = create_app(config.TestConfig(empty_database))
    with app.app_context():
        upgrade(revision="0012_deliverability")
        with db.engine.begin() as conn:
            for id_, name, deleted in (
                (1, "Camión eléctrico", None),
                (2, "Camión viejo", "2026-01-02"),
            ):
                conn.execute(
                    text(
                        "INSERT INTO products (id, sku, sku_lower, sku_key, name, price, mark,"
                        " quantity, version, created_at, updated_at, deleted_at) VALUES (:id,"
                        " :sku, :sku, :key, :name, 1, 'm', 0, 1, '2026-01-01', '2026-01-01', :d)"
                    ),
                    {
                        "id": id_,
                        "sku": f"s{id_}",
                        "key": None if deleted else f"s{id_}",
                        "name": name,
                        "d": deleted,
                    },
                )
        upgrade()
        db.engine.dispose()
    listed = app.test_client().get("/api/products?q=CAMION")
    assert [p["sku"] for p in listed.json] == ["s1"]
    with app.app_context():
        db.engine.dispose()


def test_the_catalogs_views_per_day_are_summed_from_the_product_roll_ups(empty_database):
    app = create_app(config.TestConfig(empty_database))
    with app.app_context():
        upgrade(revision="0012_deliverability")
        with db.engine.begin() as conn:
            for product, day, anonymous, registered in (
                (1, "2026-03-01", 2, 1),
                (2, "2026-03-01", 3, 0),
                (1, "2026-03-02", 0, 4),
            ):
                conn.execute(
                    text(
                        "INSERT INTO daily_product_views (product_id, day, anonymous_views,"
                        " registered_views) VALUES (:p, :d, :a, :r)"
                    ),
                    {"p": product, "d": day, "a": anonymous, "r": registered},
                )
        upgrade()
        with db.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT day, anonymous_views, registered_views FROM daily_catalog_views")
            ).all()
        db.engine.dispose()
    assert sorted((str(day), a, r) for day, a, r in rows) == [
        ("2026-03-01", 5, 1),
        ("2026-03-02", 0, 4),
    ]


def test_each_skus_views_per_day_are_summed_from_the_product_roll_ups(empty_database):
    app = create_app(config.TestConfig(empty_database))
    with app.app_context():
        upgrade(revision="0013_search_and_catalog_views")
        with db.engine.begin() as conn:
            for id_, sku, deleted in (
                (1, "shoe", "2026-03-01"),
                (2, "SHOE", None),
                (3, "hat", None),
            ):
                conn.execute(
                    text(
                        "INSERT INTO products (id, sku, sku_lower, sku_key, name, search, price,"
                        " mark, quantity, version, created_at, updated_at, deleted_at)"
                        " VALUES (:id, :sku, :key, :live, 'n', 'wwn', 1, 'm', 1, 1,"
                        " '2026-01-01', '2026-01-01', :deleted)"
                    ),
                    {
                        "id": id_,
                        "sku": sku,
                        "key": sku.lower(),
                        "live": None if deleted else sku.lower(),
                        "deleted": deleted,
                    },
                )
            for product, day, anonymous, registered in (
                (1, "2026-03-01", 2, 1),
                (2, "2026-03-01", 3, 0),
                (3, "2026-03-01", 1, 1),
                (2, "2026-03-02", 0, 4),
            ):
                conn.execute(
                    text(
                        "INSERT INTO daily_product_views (product_id, day, anonymous_views,"
                        " registered_views) VALUES (:p, :d, :a, :r)"
                    ),
                    {"p": product, "d": day, "a": anonymous, "r": registered},
                )
        upgrade()
        with db.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT sku_lower, day, anonymous_views, registered_views, views"
                    " FROM daily_sku_views"
                )
            ).all()
        db.engine.dispose()
    assert sorted((sku, str(day), a, r, v) for sku, day, a, r, v in rows) == [
        ("hat", "2026-03-01", 1, 1, 2),
        ("shoe", "2026-03-01", 5, 1, 6),
        ("shoe", "2026-03-02", 0, 4, 4),
    ]


def test_each_skus_views_per_week_are_summed_from_its_days(empty_database):
    app = create_app(config.TestConfig(empty_database))
    with app.app_context():
        upgrade(revision="0015_views_by_time_covering")
        with db.engine.begin() as conn:
            for sku, day, anonymous, registered in (
                ("shoe", "2026-03-01", 2, 1),  # a Sunday: the week of Monday 2026-02-23
                ("shoe", "2026-03-02", 3, 0),  # Monday
                ("shoe", "2026-03-08", 1, 4),  # Sunday, the same week
                ("hat", "2026-03-04", 0, 2),
            ):
                conn.execute(
                    text(
                        "INSERT INTO daily_sku_views (sku_lower, day, anonymous_views,"
                        " registered_views, views) VALUES (:s, :d, :a, :r, :a + :r)"
                    ),
                    {"s": sku, "d": day, "a": anonymous, "r": registered},
                )
        upgrade()
        with db.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT sku_lower, week, anonymous_views, registered_views, views"
                    " FROM weekly_sku_views"
                )
            ).all()
        db.engine.dispose()
    assert sorted((sku, str(week), a, r, v) for sku, week, a, r, v in rows) == [
        ("hat", "2026-03-02", 0, 2, 2),
        ("shoe", "2026-02-23", 2, 1, 3),
        ("shoe", "2026-03-02", 4, 4, 8),
    ]


def test_the_search_index_is_filled_from_the_live_products_and_survives_a_downgrade(
    empty_database,
):
    app = create_app(config.TestConfig(empty_database))
    with app.app_context():
        upgrade(revision="0016_weekly_sku_views")
        with db.engine.begin() as conn:
            # Ids on both sides of the fill's ranges of 10,000, and far beyond.
            for id_, search, deleted in (
                (1, "wwbota wwroja wwbota", None),
                (9_999, "wwbota wwazul", "2026-01-02"),
                (10_000, "", None),  # a name without a word
                (10_001, "wwcapa", None),
                (25_000, "wwcapa wwroja", None),
                (900_000, "wwgorro", None),
            ):
                conn.execute(
                    text(
                        "INSERT INTO products (id, sku, sku_lower, sku_key, name, search, price,"
                        " mark, quantity, version, created_at, updated_at, deleted_at) VALUES"
                        " (:id, :sku, :sku, :key, 'n', :search, 1, 'm', 0, 1, '2026-01-01',"
                        " '2026-01-01', :d)"
                    ),
                    {
                        "id": id_,
                        "sku": f"s{id_}",
                        "key": None if deleted else f"s{id_}",
                        "search": search,
                        "d": deleted,
                    },
                )
        upgrade()
        query = text(
            "SELECT word, other_words, product_id FROM product_words"
            " ORDER BY word, other_words, product_id"
        )
        with db.engine.connect() as conn:
            filled = conn.execute(query).all()
            vocabulary = conn.execute(text("SELECT length, word FROM search_vocabulary")).all()
        downgrade(revision="0016_weekly_sku_views")
        upgrade()
        with db.engine.connect() as conn:
            again = conn.execute(query).all()
        db.engine.dispose()
    # bota twice in a name of three words: one row, one other word.
    assert [tuple(row) for row in filled] == [
        ("bota", 1, 1),
        ("capa", 0, 10_001),
        ("capa", 1, 25_000),
        ("gorro", 0, 900_000),
        ("roja", 1, 25_000),
        ("roja", 2, 1),
    ]
    assert sorted(tuple(row) for row in vocabulary) == [
        (4, "bota"),
        (4, "capa"),
        (4, "roja"),
        (5, "gorro"),
    ]
    assert again == filled
