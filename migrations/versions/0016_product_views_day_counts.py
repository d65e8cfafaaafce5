"""the per-product roll-ups' day index also holds the counts: `flask stats rollup` reads a
day's rows from the index alone, instead of looking up each row (a day's rows are spread
over the table, whose key starts with the product)

Revision ID: 0016_product_views_day_counts
Revises: 0015_views_by_time_covering
Create Date: 2026-12-07 05:20:00.000000

"""

from alembic import op


# revision identifiers, used by Alembic.
revision = "0016_product_views_day_counts"
down_revision = "0015_views_by_time_covering"
branch_labels = None
depends_on = None


def upgrade():
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
