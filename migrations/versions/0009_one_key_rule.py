"""one key rule: a product's sku in one case on every row; views keep their own id; an
idempotency key names the request holding it

Revision ID: 0009_one_key_rule
Revises: 0008_accounts_revoked_tokens
Create Date: 2026-12-06 11:15:00.000000

"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import mysql


def key_string(length):
    binary = mysql.VARCHAR(charset='utf8mb4', collation='utf8mb4_bin', length=length)
    return sa.String(length=length).with_variant(binary, 'mariadb').with_variant(binary, 'mysql')


# revision identifiers, used by Alembic.
revision = '0009_one_key_rule'
down_revision = '0008_accounts_revoked_tokens'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('idempotency_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('owner', sa.String(length=32), nullable=True))

    # The stream entry id of the views written so far becomes their view id.
    with op.batch_alter_table('product_views', schema=None) as batch_op:
        batch_op.drop_constraint('uq_product_views_stream_id', type_='unique')
        batch_op.alter_column(
            'stream_id', new_column_name='view_id', existing_type=key_string(32),
            existing_nullable=True,
        )
    with op.batch_alter_table('product_views', schema=None) as batch_op:
        batch_op.create_unique_constraint('uq_product_views_view_id', ['view_id'])

    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sku_lower', key_string(64), nullable=True))
    # Skus are ASCII (letters, digits, . _ -): LOWER() folds them as Python does.
    op.execute("UPDATE products SET sku_lower = LOWER(TRIM(sku))")
    # SQLite rebuilds the table: its case-insensitive name and mark keep their collation.
    nocase = [
        sa.Column('name', sa.String(length=200, collation='NOCASE'), nullable=False),
        sa.Column('mark', sa.String(length=100, collation='NOCASE'), nullable=False),
    ]
    reflect = {'reflect_args': nocase} if op.get_bind().dialect.name == 'sqlite' else {}
    with op.batch_alter_table('products', schema=None, **reflect) as batch_op:
        batch_op.alter_column('sku_lower', existing_type=key_string(64), nullable=False)
        # Compared through sku_lower and sku_key only: no collation of its own any more.
        batch_op.alter_column(
            'sku', type_=sa.String(length=64), existing_type=sa.String(length=64),
            existing_nullable=False,
        )
        batch_op.drop_index('ix_products_sku')
        batch_op.create_index('ix_products_sku_lower', ['sku_lower'], unique=False)


def downgrade():
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.drop_index('ix_products_sku_lower')
        batch_op.create_index('ix_products_sku', ['sku'], unique=False)
        batch_op.drop_column('sku_lower')

    with op.batch_alter_table('product_views', schema=None) as batch_op:
        batch_op.drop_constraint('uq_product_views_view_id', type_='unique')
        batch_op.alter_column(
            'view_id', new_column_name='stream_id', existing_type=key_string(32),
            existing_nullable=True,
        )
    with op.batch_alter_table('product_views', schema=None) as batch_op:
        batch_op.create_unique_constraint('uq_product_views_stream_id', ['stream_id'])

    with op.batch_alter_table('idempotency_keys', schema=None) as batch_op:
        batch_op.drop_column('owner')
