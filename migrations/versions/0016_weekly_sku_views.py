"""the views per sku per ISO week (weekly_sku_views, ``week`` its Monday), indexed by week
and count for each audience and summed from the per-day ones: the most viewed products of
a range read a week's ranking for each week it holds whole instead of seven days' rankings

Views written after this migration by workers of the earlier release reach the days only:
`flask stats rollup` over those days mends their weeks (docs/views.md).

Revision ID: 0016_weekly_sku_views
Revises: 0015_views_by_time_covering
Create Date: 2026-12-07 19:20:00.000000

"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import mysql


# revision identifiers, used by Alembic.
revision = "0016_weekly_sku_views"
down_revision = "0015_views_by_time_covering"
branch_labels = None
depends_on = None

KEY = sa.String(64).with_variant(
    mysql.VARCHAR(64, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
)
# The Monday of a day's week (MariaDB's WEEKDAY and SQLite's %w count from Monday and from
# Sunday).
MONDAY_OF_DAY = {
    "sqlite": "date(day, '-' || ((CAST(strftime('%w', day) AS INTEGER) + 6) % 7) || ' days')",
    "mysql": "DATE_SUB(day, INTERVAL WEEKDAY(day) DAY)",
}


def upgrade():
    op.create_table(
        "weekly_sku_views",
        sa.Column("sku_lower", KEY, nullable=False),
        sa.Column("week", sa.Date(), nullable=False),
        sa.Column("anonymous_views", sa.Integer(), nullable=False),
        sa.Column("registered_views", sa.Integer(), nullable=False),
        sa.Column("views", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("sku_lower", "week", name=op.f("pk_weekly_sku_views")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_unicode_ci",
    )
    # Filled before the indexes are built: one sort each instead of a row at a time.
    dialect = op.get_bind().dialect.name
    monday = MONDAY_OF_DAY["sqlite" if dialect == "sqlite" else "mysql"]
    op.execute(
        "INSERT INTO weekly_sku_views"
        " (sku_lower, week, anonymous_views, registered_views, views)"
        f" SELECT sku_lower, {monday}, SUM(anonymous_views), SUM(registered_views), SUM(views)"
        f" FROM daily_sku_views GROUP BY sku_lower, {monday}"
    )
    with op.batch_alter_table("weekly_sku_views", schema=None) as batch_op:
        batch_op.create_index("ix_weekly_sku_views_week_views", ["week", "views"], unique=False)
        batch_op.create_index(
            "ix_weekly_sku_views_week_anonymous", ["week", "anonymous_views"], unique=False
        )
        batch_op.create_index(
            "ix_weekly_sku_views_week_registered", ["week", "registered_views"], unique=False
        )


def downgrade():
    op.drop_table("weekly_sku_views")
