"""users: deleted_at is the one soft-delete mark (drop active)

Revision ID: 0004_users_deleted_at
Revises: 0003_views
Create Date: 2026-12-02 03:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0004_users_deleted_at'
down_revision = '0003_views'
branch_labels = None
depends_on = None


users = sa.table(
    'users',
    sa.column('active', sa.Boolean()),
    sa.column('updated_at', sa.DateTime()),
    sa.column('deleted_at', sa.DateTime()),
)


def upgrade():
    # A row only ever marked inactive is deleted as of its last change.
    op.execute(
        users.update()
        .where(users.c.active.is_(sa.false()), users.c.deleted_at.is_(None))
        .values(deleted_at=users.c.updated_at)
    )
    # Plain ALTERs, no batch copy: on SQLite a copy of users would drop the table the
    # other tables' foreign keys point at.
    op.drop_index('ix_users_active', table_name='users')
    op.drop_column('users', 'active')
    op.create_index(op.f('ix_users_deleted_at'), 'users', ['deleted_at'], unique=False)


def downgrade():
    op.drop_index(op.f('ix_users_deleted_at'), table_name='users')
    op.add_column(
        'users', sa.Column('active', sa.Boolean(), nullable=False, server_default=sa.true())
    )
    op.execute(users.update().where(users.c.deleted_at.is_not(None)).values(active=False))
    if op.get_bind().dialect.name != 'sqlite':  # SQLite cannot drop a default in place
        op.alter_column('users', 'active', server_default=None,
                        existing_type=sa.Boolean(), existing_nullable=False)
    op.create_index('ix_users_active', 'users', ['active'], unique=False)
