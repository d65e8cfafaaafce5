"""The committed migrations build exactly the schema the models describe, on both databases."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from app.extensions import db


def test_migrations_match_the_models(app):
    with app.app_context(), db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
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
