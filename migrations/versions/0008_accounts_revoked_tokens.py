"""accounts: revoked tokens (log out)

Revision ID: 0008_accounts_revoked_tokens
Revises: 0007_bulk_import_summaries
Create Date: 2026-12-02 06:30:00.000000

"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import mysql


UTC_DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), 'mysql', 'mariadb')
KEY_36 = sa.String(length=36).with_variant(
    mysql.VARCHAR(charset='utf8mb4', collation='utf8mb4_bin', length=36), 'mariadb'
).with_variant(mysql.VARCHAR(charset='utf8mb4', collation='utf8mb4_bin', length=36), 'mysql')

# revision identifiers, used by Alembic.
revision = '0008_accounts_revoked_tokens'
down_revision = '0007_bulk_import_summaries'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('revoked_tokens',
    sa.Column('jti', KEY_36, nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('expires_at', UTC_DATETIME, nullable=False),
    sa.Column('created_at', UTC_DATETIME, nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_revoked_tokens_user_id_users')),
    sa.PrimaryKeyConstraint('jti', name=op.f('pk_revoked_tokens')),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_unicode_ci'
    )
    with op.batch_alter_table('revoked_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_revoked_tokens_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_revoked_tokens_user_id'), ['user_id'], unique=False)


def downgrade():
    with op.batch_alter_table('revoked_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_revoked_tokens_user_id'))
        batch_op.drop_index(batch_op.f('ix_revoked_tokens_expires_at'))
    op.drop_table('revoked_tokens')
