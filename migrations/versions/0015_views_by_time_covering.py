"""the raw views' time index also holds the product and the user: `flask stats rollup`
reads a day's views from the index alone (no lookup of each view's row), for the
per-product counts and the registered viewers alike

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


def downgrade():
    with op.batch_alter_table("product_views", schema=None) as batch_op:
        batch_op.create_index("ix_product_views_viewed_at", ["viewed_at"], unique=False)
        batch_op.drop_index("ix_product_views_viewed_product_user")
