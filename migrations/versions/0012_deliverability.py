"""deliverability: the suppression list; emails found by SES's message id and by when
they were sent (SES's events, the bounce and complaint rates)

Revision ID: 0012_deliverability
Revises: 0011_webhooks
Create Date: 2026-12-06 14:50:00.000000

"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import mysql


UTC_DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), 'mysql', 'mariadb')
KEY_254 = sa.String(length=254).with_variant(mysql.VARCHAR(charset='utf8mb4', collation='utf8mb4_bin', length=254), 'mariadb').with_variant(mysql.VARCHAR(charset='utf8mb4', collation='utf8mb4_bin', length=254), 'mysql')


# revision identifiers, used by Alembic.
revision = '0012_deliverability'
down_revision = '0011_webhooks'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('suppressions',
    sa.Column('email', KEY_254, nullable=False),
    sa.Column('reason', sa.String(length=16), nullable=False),
    sa.Column('since', UTC_DATETIME, nullable=False),
    sa.Column('notification_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['notification_id'], ['notifications.id'], name=op.f('fk_suppressions_notification_id_notifications')),
    sa.PrimaryKeyConstraint('email', name=op.f('pk_suppressions')),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_unicode_ci'
    )
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.create_index('ix_notifications_message_id', ['message_id'], unique=False)
        batch_op.create_index('ix_notifications_sent_at', ['sent_at'], unique=False)


def downgrade():
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.drop_index('ix_notifications_sent_at')
        batch_op.drop_index('ix_notifications_message_id')

    op.drop_table('suppressions')
