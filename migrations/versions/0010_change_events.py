"""change events: every change stored once (events, their chain), emails referencing
their event, every try of an email kept

Existing emails keep their status, attempts, error, message id and dates. Each change
they told of becomes an event (the rows of one change, one per admin, share it), numbered
and chained in the order the changes happened; an import's summary becomes the events of
the products it listed. What was not recorded then (the product's version, its values
after the change) stays empty, and an email that was tried keeps one try (its last).

Revision ID: 0010_change_events
Revises: 0009_one_key_rule
Create Date: 2026-12-06 13:00:00.000000

"""
import hashlib
import json
from datetime import datetime, timezone

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import mysql


UTC_DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), 'mysql', 'mariadb')
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
KEY_64 = sa.String(length=64).with_variant(
    mysql.VARCHAR(charset='utf8mb4', collation='utf8mb4_bin', length=64), 'mariadb'
).with_variant(mysql.VARCHAR(charset='utf8mb4', collation='utf8mb4_bin', length=64), 'mysql')
GENESIS = '0' * 64
TYPES = {'created': 'product.created', 'updated': 'product.updated', 'deleted': 'product.deleted'}

# revision identifiers, used by Alembic.
revision = '0010_change_events'
down_revision = '0009_one_key_rule'
branch_labels = None
depends_on = None


def digest(prev_hash, event):
    """The events' hash as the app computes it (app/events/journal.py), at this version."""
    body = {
        'id': event['id'],
        'type': event['type'],
        'at': event['at'].replace(tzinfo=timezone.utc).isoformat(),
        'actor': None if event['actor_id'] is None
        else {'id': event['actor_id'], 'email': event['actor_email']},
        'sku': event['sku'],
        'changes': event['changes'],
        'version': None,
        'product_id': event['product_id'],
        'snapshot': None,
    }
    text = json.dumps(body, sort_keys=True, separators=(',', ':'), ensure_ascii=False)
    return hashlib.sha256(f'{prev_hash}\n{text}'.encode()).hexdigest()


def loaded(value):
    return json.loads(value) if isinstance(value, str) else value


def upgrade():
    op.create_table('events',
    sa.Column('row_id', BIG_ID, autoincrement=True, nullable=False),
    sa.Column('id', BIG_ID, nullable=True),
    sa.Column('type', sa.String(length=32), nullable=False),
    sa.Column('at', UTC_DATETIME, nullable=False),
    sa.Column('actor_id', sa.Integer(), nullable=True),
    sa.Column('actor_email', sa.String(length=254), nullable=True),
    sa.Column('product_id', sa.Integer(), nullable=True),
    sa.Column('sku', sa.String(length=64), nullable=True),
    sa.Column('sku_key', KEY_64, nullable=True),
    sa.Column('user_id', sa.Integer(), nullable=True),
    sa.Column('changes', sa.JSON(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=True),
    sa.Column('reverted_to', BIG_ID, nullable=True),
    sa.Column('snapshot', sa.JSON(), nullable=True),
    sa.Column('prev_hash', sa.String(length=64), nullable=True),
    sa.Column('hash', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('row_id', name=op.f('pk_events')),
    sa.UniqueConstraint('id', name=op.f('uq_events_id')),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_unicode_ci'
    )
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index('ix_events_product_id', ['product_id', 'id'], unique=False)
        batch_op.create_index('ix_events_sku_key', ['sku_key', 'id'], unique=False)
        batch_op.create_index('ix_events_type_id', ['type', 'id'], unique=False)
        batch_op.create_index('ix_events_user_id', ['user_id', 'id'], unique=False)

    op.create_table('event_chain',
    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('last_id', BIG_ID, nullable=False),
    sa.Column('last_hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_event_chain')),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_unicode_ci'
    )

    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.add_column(sa.Column('event_row_id', BIG_ID, nullable=True))
        batch_op.add_column(sa.Column('event_count', sa.Integer(), server_default='1', nullable=False))
        batch_op.add_column(sa.Column('summary', sa.JSON(), nullable=True))

    tries = move_changes_to_events()

    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_notifications_product_id_products'), type_='foreignkey')
        batch_op.drop_constraint(batch_op.f('fk_notifications_actor_id_users'), type_='foreignkey')
        batch_op.drop_index('ix_notifications_sku_id')
        batch_op.drop_index(batch_op.f('ix_notifications_product_id'))
        for column in ('product_id', 'sku', 'product_name', 'event', 'changes', 'actor_id',
                       'actor_name', 'actor_email', 'occurred_at'):
            batch_op.drop_column(column)
        batch_op.alter_column('event_row_id', existing_type=BIG_ID, nullable=False)
        batch_op.create_index(batch_op.f('ix_notifications_event_row_id'), ['event_row_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_notifications_event_row_id_events'), 'events', ['event_row_id'], ['row_id'])

    # Made after the rebuild of notifications (SQLite copies the table) that it references.
    op.create_table('notification_tries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('notification_id', sa.Integer(), nullable=False),
    sa.Column('at', UTC_DATETIME, nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('error', sa.String(length=1000), nullable=True),
    sa.Column('duration_ms', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['notification_id'], ['notifications.id'], name=op.f('fk_notification_tries_notification_id_notifications')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notification_tries')),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_unicode_ci'
    )
    with op.batch_alter_table('notification_tries', schema=None) as batch_op:
        batch_op.create_index('ix_notification_tries_notification', ['notification_id', 'id'], unique=False)
    if tries:
        op.bulk_insert(sa.table('notification_tries', sa.column('notification_id'),
                                sa.column('at', sa.DateTime()), sa.column('outcome'),
                                sa.column('error')), tries)


def move_changes_to_events():
    conn = op.get_bind()
    rows = conn.execute(sa.text(
        'SELECT id, product_id, sku, event, changes, actor_id, actor_email, occurred_at,'
        ' status, attempts, last_error, sent_at, created_at FROM notifications ORDER BY id'
    )).mappings().all()
    changes, order = {}, []  # one change: the rows (one per admin) that tell of it
    for row in rows:
        key = (row['product_id'], row['event'], str(row['occurred_at']), row['actor_id'],
               json.dumps(loaded(row['changes']), sort_keys=True))
        if key not in changes:
            changes[key] = []
            order.append(key)
        changes[key].append(row)
    order.sort(key=lambda key: (str(changes[key][0]['occurred_at']), changes[key][0]['id']))
    events = sa.table(
        'events', sa.column('at', sa.DateTime()), sa.column('changes', sa.JSON()),
        *(sa.column(name) for name in ('id', 'type', 'actor_id', 'actor_email', 'product_id',
                                       'sku', 'sku_key', 'prev_hash', 'hash')),
    )
    next_id, prev_hash, tries = 1, GENESIS, []
    for key in order:
        first = changes[key][0]
        told = loaded(first['changes'])
        at = first['occurred_at']
        at = datetime.fromisoformat(at) if isinstance(at, str) else at
        if first['event'] == 'imported':
            listed = [
                (TYPES.get(p['event'], 'product.updated'), p['sku'], p['changes'])
                for p in told.get('products', [])
            ]
            summary = {name: told.get(name, 0) for name in ('created', 'updated', 'unchanged')}
        else:
            listed = [(TYPES[first['event']], first['sku'], told)]
            summary = None
        if not listed:
            listed = [('product.updated', None, {})]
        ids = []
        for type_, sku, diff in listed:
            event = {
                'id': next_id, 'type': type_, 'at': at,
                'actor_id': first['actor_id'], 'actor_email': first['actor_email'],
                'product_id': first['product_id'] if summary is None else None,
                'sku': sku, 'sku_key': sku.strip().lower() if sku else None, 'changes': diff,
            }
            if summary is not None and sku:
                event['product_id'] = conn.scalar(sa.text(
                    'SELECT id FROM products WHERE sku_lower = :key ORDER BY id DESC'
                ), {'key': event['sku_key']})
            event['prev_hash'] = prev_hash
            event['hash'] = prev_hash = digest(prev_hash, event)
            conn.execute(sa.insert(events).values(**event))
            ids.append(next_id)
            next_id += 1
        row_id = conn.scalar(sa.text('SELECT row_id FROM events WHERE id = :id'), {'id': ids[0]})
        for row in changes[key]:
            conn.execute(
                sa.text('UPDATE notifications SET event_row_id = :row_id, event_count = :count,'
                        ' summary = :summary WHERE id = :id'),
                {'row_id': row_id, 'count': len(ids), 'id': row['id'],
                 'summary': json.dumps(summary) if summary is not None else None},
            )
            if row['attempts']:
                tried = row['sent_at'] or row['created_at']
                tries.append({
                    'notification_id': row['id'],
                    'at': datetime.fromisoformat(tried) if isinstance(tried, str) else tried,
                    'outcome': {'pending': 'retry'}.get(row['status'], row['status']),
                    'error': row['last_error'],
                })
    conn.execute(sa.text('INSERT INTO event_chain (id, last_id, last_hash) VALUES (1, :last, :hash)'),
                 {'last': next_id - 1, 'hash': prev_hash})
    return tries


def downgrade():
    raise NotImplementedError('change events cannot be folded back into email rows')
