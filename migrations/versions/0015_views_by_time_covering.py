"""indexes that `flask stats rollup` reads alone: the raw views' time index also holds the
product and the user (a day's views without a lookup of each view's row), and the
per-product roll-ups' day index also holds the counts (a day's rows without a lookup of
each: the table's key starts with the product, so a day's rows are spread over it)

Revision ID: 0015_views_by_time_covering
Revises: 0014_daily_sku_views
Create Date: 2026-12-07 04:20:00.000000

"""

from alembic import op


# revision identifiers, used by Alembic.
revision = "0015_views_by_time_covering"
down_revision = "0014_daily_sku_views"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("product_views", schema=None) as batch_op:
        batch_op.create_index(
            "ix_product_views_viewed_product_user",
            ["viewed_at", "product_id", "user_id"],
            unique=False,
        )
        batch_op.drop_index("ix_product_views_viewed_at")
    with op.batch_alter_table("daily_product_views", schema=None) as batch_op:
        batch_op.create_index(
            "ix_daily_product_views_day_counts",
            ["day", "product_id", "anonymous_views", "registered_views"],
            unique=False,
        )
        batch_op.drop_index("ix_daily_product_views_day")


def downgrade():
    with op.batch_alter_table("daily_product_views", schema=None) as batch_op:
        batch_op.create_index("ix_daily_product_views_day", ["day", "product_id"], unique=False)
        batch_op.drop_index("ix_daily_product_views_day_counts")
    with op.batch_alter_table("product_views", schema=None) as batch_op:
        batch_op.create_index("ix_product_views_viewed_at", ["viewed_at"], unique=False)
        batch_op.drop_index("ix_product_views_viewed_product_user")
