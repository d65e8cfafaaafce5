"""the views per sku per day (daily_sku_views), indexed by day and count for each audience,
summed from the per-product roll-ups: the most viewed products of a range read the first
entries of each day's index instead of grouping every product of the range; the registered
viewers per day indexed by day (flask stats rollup replaces stretches of days)

Revision ID: 0014_daily_sku_views
Revises: 0013_search_and_catalog_views
Create Date: 2026-12-06 18:10:00.000000

"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import mysql


# revision identifiers, used by Alembic.
revision = "0014_daily_sku_views"
down_revision = "0013_search_and_catalog_views"
branch_labels = None
depends_on = None

KEY = sa.String(64).with_variant(
    mysql.VARCHAR(64, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
)


def upgrade():
    op.create_table(
        "daily_sku_views",
        sa.Column("sku_lower", KEY, nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("anonymous_views", sa.Integer(), nullable=False),
        sa.Column("registered_views", sa.Integer(), nullable=False),
        sa.Column("views", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("sku_lower", "day", name=op.f("pk_daily_sku_views")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_unicode_ci",
    )
    # Filled before the indexes are built: one sort each instead of a row at a time.
    op.execute(
        "INSERT INTO daily_sku_views"
        " (sku_lower, day, anonymous_views, registered_views, views)"
        " SELECT p.sku_lower, d.day, SUM(d.anonymous_views), SUM(d.registered_views),"
        " SUM(d.anonymous_views + d.registered_views)"
        " FROM daily_product_views d JOIN products p ON p.id = d.product_id"
        " GROUP BY p.sku_lower, d.day"
    )
    with op.batch_alter_table("daily_sku_views", schema=None) as batch_op:
        batch_op.create_index("ix_daily_sku_views_day_views", ["day", "views"], unique=False)
        batch_op.create_index(
            "ix_daily_sku_views_day_anonymous", ["day", "anonymous_views"], unique=False
        )
        batch_op.create_index(
            "ix_daily_sku_views_day_registered", ["day", "registered_views"], unique=False
        )

    with op.batch_alter_table("daily_product_viewers", schema=None) as batch_op:
        batch_op.create_index("ix_daily_product_viewers_day", ["day"], unique=False)


def downgrade():
    with op.batch_alter_table("daily_product_viewers", schema=None) as batch_op:
        batch_op.drop_index("ix_daily_product_viewers_day")
    op.drop_table("daily_sku_views")
