"""product search: the name's words (accents and case folded) in products.search, under a
full-text index: MariaDB FULLTEXT ft_products_search, SQLite FTS5 products_fts kept by
triggers; existing products are filled in. The catalog's views per day
(daily_catalog_views), summed from the per-product roll-ups

Each word is stored as "ww" + the word (cut at 80 characters), so that MariaDB's index,
with the server's defaults (innodb_ft_min_token_size 3, its stopwords), keeps every word.
The rule is app/core/text.py search_words and Product.search_of (app/catalog/), copied
here as they are now: a migration does not change when the app does.

On SQLite, a later migration that rebuilds the products table (batch_alter_table) drops
the triggers with the old table: it must create them again (TRIGGERS below).

Revision ID: 0013_search_and_catalog_views
Revises: 0012_deliverability
Create Date: 2026-12-06 14:50:00.000000

"""
import re
import unicodedata

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0013_search_and_catalog_views'
down_revision = '0012_deliverability'
branch_labels = None
depends_on = None

WORDS = re.compile(r"[^\W_]+")
CHUNK = 1000

TRIGGERS = {
    'products_fts_insert': """
        CREATE TRIGGER products_fts_insert AFTER INSERT ON products BEGIN
          INSERT INTO products_fts (rowid, search) VALUES (new.id, new.search);
        END""",
    'products_fts_delete': """
        CREATE TRIGGER products_fts_delete AFTER DELETE ON products BEGIN
          INSERT INTO products_fts (products_fts, rowid, search)
            VALUES ('delete', old.id, old.search);
        END""",
    'products_fts_update': """
        CREATE TRIGGER products_fts_update AFTER UPDATE OF search ON products BEGIN
          INSERT INTO products_fts (products_fts, rowid, search)
            VALUES ('delete', old.id, old.search);
          INSERT INTO products_fts (rowid, search) VALUES (new.id, new.search);
        END""",
}


def search_of(name):
    decomposed = unicodedata.normalize('NFKD', name)
    plain = ''.join(c for c in decomposed if not unicodedata.combining(c))
    words = WORDS.findall(unicodedata.normalize('NFKC', plain).casefold())
    return ' '.join('ww' + word[:80] for word in words)


def upgrade():
    op.create_table('daily_catalog_views',
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('anonymous_views', sa.BigInteger(), nullable=False),
    sa.Column('registered_views', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('day', name=op.f('pk_daily_catalog_views')),
    mysql_charset='utf8mb4',
    mysql_collate='utf8mb4_unicode_ci'
    )
    op.execute(
        "INSERT INTO daily_catalog_views (day, anonymous_views, registered_views)"
        " SELECT day, SUM(anonymous_views), SUM(registered_views)"
        " FROM daily_product_views GROUP BY day"
    )

    op.add_column(
        'products', sa.Column('search', sa.Text(), server_default='', nullable=False)
    )
    bind = op.get_bind()
    products = sa.table(
        'products', sa.column('id', sa.Integer), sa.column('name'), sa.column('search')
    )
    last = 0
    while True:
        rows = bind.execute(
            sa.select(products.c.id, products.c.name)
            .where(products.c.id > last)
            .order_by(products.c.id)
            .limit(CHUNK)
        ).all()
        if not rows:
            break
        bind.execute(
            sa.update(products)
            .where(products.c.id == sa.bindparam('b_id'))
            .values(search=sa.bindparam('b_search')),
            [{'b_id': id_, 'b_search': search_of(name)} for id_, name in rows],
        )
        last = rows[-1].id
    if bind.dialect.name == 'sqlite':
        op.execute(
            "CREATE VIRTUAL TABLE products_fts USING fts5("
            "search, content='products', content_rowid='id')"
        )
        for trigger in TRIGGERS.values():
            op.execute(trigger)
        op.execute("INSERT INTO products_fts (products_fts) VALUES ('rebuild')")
    else:
        op.create_index('ft_products_search', 'products', ['search'], mysql_prefix='FULLTEXT')


def downgrade():
    if op.get_bind().dialect.name == 'sqlite':
        for name in TRIGGERS:
            op.execute(f"DROP TRIGGER {name}")
        op.execute("DROP TABLE products_fts")
        # SQLite 3.35+ drops a column in place (no rebuild: name and mark keep NOCASE).
        op.execute("ALTER TABLE products DROP COLUMN search")
    else:
        op.drop_index('ft_products_search', table_name='products')
        op.drop_column('products', 'search')
    op.drop_table('daily_catalog_views')
