"""bulk: a notification may summarise a catalog import (no single product)

Revision ID: 0007_bulk_import_summaries
Revises: 0006_canonical_emails
Create Date: 2026-12-02 06:30:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0007_bulk_import_summaries'
down_revision = '0006_canonical_emails'
branch_labels = None
depends_on = None

SKU = sa.String(length=64).with_variant(sa.String(length=64, collation='NOCASE'), 'sqlite')


def upgrade():
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.alter_column('product_id', existing_type=sa.Integer(), nullable=True)
        # type_ again: SQLite's copy of the table would otherwise lose the NOCASE collation.
        batch_op.alter_column('sku', existing_type=SKU, type_=SKU, nullable=True)
        batch_op.alter_column('product_name', existing_type=sa.String(length=200), nullable=True)


def downgrade():
    # Import summaries name no product: they cannot stay in the older table.
    op.execute("DELETE FROM notifications WHERE product_id IS NULL")
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.alter_column('product_name', existing_type=sa.String(length=200), nullable=False)
        batch_op.alter_column('sku', existing_type=SKU, type_=SKU, nullable=False)
        batch_op.alter_column('product_id', existing_type=sa.Integer(), nullable=False)
