"""the search's own index: product_words, one row per distinct word of each live product's
name (the word, how many other words the name has, the product), and search_vocabulary,
every word a live product's name has held (by length), both kept by triggers on products

A full-text index reads every matching row to rank or count a search: a word in a tenth
of a million names took over a second. product_words answers from its own key.

The triggers read products.search as migration 0013 writes it ("ww" + each word), so every
writer keeps the index: the app's ORM and bulk statements, and SQL run by hand. Creating a
trigger on a MariaDB server with binary logging on (Amazon RDS with backups) needs the
SUPER privilege or log_bin_trust_function_creators = 1 (terraform/database.tf sets it).

Migration 0013's full-text indexes (MariaDB FULLTEXT ft_products_search, SQLite FTS5
products_fts and its triggers) stay: the release before this one searches through them
while this one is rolled out (docs/deployment.md, expand then contract). A later release's
migration drops them.

On SQLite, a later migration that rebuilds the products table (batch_alter_table) drops
the triggers with the old table: it must create them again (TRIGGERS below).

Revision ID: 0017_product_words
Revises: 0016_weekly_sku_views
Create Date: 2026-12-07 23:20:00.000000

"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import mysql


# revision identifiers, used by Alembic.
revision = "0017_product_words"
down_revision = "0016_weekly_sku_views"
branch_labels = None
depends_on = None

WORD = sa.String(80).with_variant(
    mysql.VARCHAR(80, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
)

# The rows of one product ({row}: NEW, or products itself for the fill, {chunk} its range
# of ids): each distinct word of search without its "ww" mark, and how many of the name's
# words are not that word.
WORDS_OF = {
    "mysql": """
        SELECT SUBSTRING(w.word, 3) AS word,
               MAX(LENGTH({row}.search) - LENGTH(REPLACE({row}.search, ' ', ''))) + 1
                 - COUNT(*) AS other_words,
               {row}.id AS product_id
        FROM {source}JSON_TABLE(CONCAT('["', REPLACE({row}.search, ' ', '","'), '"]'),
                        '$[*]' COLUMNS (word VARCHAR(82) CHARACTER SET utf8mb4
                                        COLLATE utf8mb4_bin PATH '$')) AS w
        WHERE {row}.deleted_at IS NULL AND w.word <> ''{chunk}
        GROUP BY {row}.id, w.word""",
    "sqlite": """
        SELECT substr(w.value, 3) AS word,
               max(length({row}.search) - length(replace({row}.search, ' ', ''))) + 1
                 - count(*) AS other_words,
               {row}.id AS product_id
        FROM {source}json_each('["' || replace({row}.search, ' ', '","') || '"]') AS w
        WHERE {row}.deleted_at IS NULL AND w.value <> ''{chunk}
        GROUP BY {row}.id, w.value""",
}
INSERT = "INSERT INTO product_words (word, other_words, product_id)"
FORGET = "DELETE FROM product_words WHERE product_id = OLD.id"
# Byte for byte: the table's collation would take some different words for equal ones.
CHANGED = "NOT (BINARY OLD.search <=> BINARY NEW.search AND OLD.deleted_at <=> NEW.deleted_at)"
# The product's words into the vocabulary, those it holds already left as they are.
LEARN = {
    "mysql": "INSERT IGNORE INTO search_vocabulary (length, word)"
    " SELECT CHAR_LENGTH(word), word FROM product_words WHERE product_id = NEW.id",
    "sqlite": "INSERT OR IGNORE INTO search_vocabulary (length, word)"
    " SELECT length(word), word FROM product_words WHERE product_id = NEW.id",
}

# In this order: each trigger is in place before a row it could leave behind is written
# (a product inserted once the insert trigger exists is already kept by the other two).
TRIGGERS = {
    "mysql": {
        "product_words_delete": f"""
            CREATE TRIGGER IF NOT EXISTS product_words_delete AFTER DELETE ON products
            FOR EACH ROW {FORGET}""",
        "product_words_update": f"""
            CREATE TRIGGER IF NOT EXISTS product_words_update AFTER UPDATE ON products
            FOR EACH ROW BEGIN
              IF {CHANGED} THEN
                {FORGET};
                {INSERT} {WORDS_OF['mysql'].format(row='NEW', source='', chunk='')};
                {LEARN['mysql']};
              END IF;
            END""",
        "product_words_insert": f"""
            CREATE TRIGGER IF NOT EXISTS product_words_insert AFTER INSERT ON products
            FOR EACH ROW BEGIN
              {INSERT} {WORDS_OF['mysql'].format(row='NEW', source='', chunk='')};
              {LEARN['mysql']};
            END""",
    },
    "sqlite": {
        "product_words_delete": f"""
            CREATE TRIGGER IF NOT EXISTS product_words_delete AFTER DELETE ON products BEGIN
              {FORGET};
            END""",
        "product_words_update": f"""
            CREATE TRIGGER IF NOT EXISTS product_words_update
            AFTER UPDATE OF search, deleted_at ON products
            WHEN OLD.search IS NOT NEW.search OR OLD.deleted_at IS NOT NEW.deleted_at BEGIN
              {FORGET};
              {INSERT} {WORDS_OF['sqlite'].format(row='NEW', source='', chunk='')};
              {LEARN['sqlite']};
            END""",
        "product_words_insert": f"""
            CREATE TRIGGER IF NOT EXISTS product_words_insert AFTER INSERT ON products BEGIN
              {INSERT} {WORDS_OF['sqlite'].format(row='NEW', source='', chunk='')};
              {LEARN['sqlite']};
            END""",
    },
}

# The fill: products by ranges of ids, each range one transaction (a short one: the
# products it reads are locked while it runs, see upgrade).
CHUNK = 10_000


def dialect():
    return "sqlite" if op.get_bind().dialect.name == "sqlite" else "mysql"


def upgrade():
    op.create_table(
        "product_words",
        sa.Column("word", WORD, nullable=False),
        sa.Column("other_words", sa.SmallInteger(), nullable=False),
        sa.Column("product_id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint(
            "word", "other_words", "product_id", name=op.f("pk_product_words")
        ),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_unicode_ci",
        if_not_exists=True,
    )
    op.create_index(
        "ix_product_words_product_id", "product_words", ["product_id"], if_not_exists=True
    )
    op.create_table(
        "search_vocabulary",
        sa.Column("length", sa.SmallInteger(), nullable=False),
        sa.Column("word", WORD, nullable=False),
        sa.PrimaryKeyConstraint("length", "word", name=op.f("pk_search_vocabulary")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_unicode_ci",
        if_not_exists=True,
    )
    # The triggers first, then the existing products: a product written meanwhile is
    # indexed by its trigger (its rows, also read by the fill, are skipped: IGNORE), and
    # one the fill has read waits for its range's end to change (on MariaDB, an INSERT ...
    # SELECT locks the rows it reads in REPEATABLE READ, not in the READ COMMITTED of
    # migrations/env.py), so none is missed or left with old words. Each range commits at
    # once: a write waits well under the service's lock wait (DB_LOCK_WAIT_SECONDS).
    for trigger in TRIGGERS[dialect()].values():
        op.execute(trigger)
    bind = op.get_bind()
    ignore = "OR IGNORE" if dialect() == "sqlite" else "IGNORE"
    # From the first product, a range of ids at a time (the next range starts at the next
    # product: gaps cost nothing); read once the triggers are in place, so a product
    # created after the last one read has its trigger.
    first = "SELECT MIN(id) FROM products WHERE id >= :low"
    low = bind.execute(sa.text(first), {"low": -(2**63)}).scalar()
    while low is not None:
        chunk = f" AND products.id >= {int(low)} AND products.id < {int(low) + CHUNK}"
        rows = WORDS_OF[dialect()].format(row="products", source="products, ", chunk=chunk)
        if dialect() == "mysql":
            op.execute("COMMIT AND NO CHAIN")  # then the next transaction's isolation is set
            op.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        op.execute(
            f"{INSERT.replace('INSERT', f'INSERT {ignore}', 1)}"
            f" SELECT * FROM ({rows}) AS rows_ ORDER BY 1, 2, 3"
        )
        low = bind.execute(sa.text(first), {"low": int(low) + CHUNK}).scalar()
    if dialect() == "mysql":
        op.execute("COMMIT AND NO CHAIN")
    length = "length" if dialect() == "sqlite" else "CHAR_LENGTH"
    op.execute(
        f"INSERT {ignore} INTO search_vocabulary (length, word) SELECT {length}(word), word"
        " FROM (SELECT DISTINCT word FROM product_words) AS words_ ORDER BY 1, 2"
    )


def downgrade():
    for name in TRIGGERS[dialect()]:
        op.execute(f"DROP TRIGGER {name}")
    op.drop_table("search_vocabulary")
    op.drop_table("product_words")
