"""users: existing emails in the canonical form new accounts get

Revision ID: 0006_canonical_emails
Revises: 0005_worker
Create Date: 2026-12-02 07:00:00.000000

Accounts created before emails were canonicalised may hold a fullwidth or otherwise
non-canonical spelling. Each live account's email is rewritten into its canonical form
(``app.emails.canonical_email``) unless another live account already holds that form: such
a pair is left as it is and listed in the migration's output, for an operator to resolve
(delete or rename one). An address with no canonical form (an IP-literal domain, mixed
scripts) is kept and listed too: its owner can still log in with it.
"""
from alembic import op
import sqlalchemy as sa

from app.core.addresses import BadEmail, canonical_email


# revision identifiers, used by Alembic.
revision = '0006_canonical_emails'
down_revision = '0005_worker'
branch_labels = None
depends_on = None


users = sa.table(
    'users',
    sa.column('id', sa.Integer()),
    sa.column('email', sa.String()),
    sa.column('email_key', sa.String()),
    sa.column('deleted_at', sa.DateTime()),
)


def upgrade():
    conn = op.get_bind()
    live = conn.execute(
        sa.select(users.c.id, users.c.email, users.c.email_key)
        .where(users.c.deleted_at.is_(None))
        .order_by(users.c.id)
    ).all()
    taken = {key: id_ for id_, _email, key in live if key is not None}
    for id_, email, key in live:
        try:
            canonical = canonical_email(email)
        except BadEmail as exc:
            print(f"users: account {id_} keeps {email!r}, which has no canonical form: {exc}")
            continue
        if canonical == email and canonical == key:
            continue
        holder = taken.get(canonical)
        if holder is not None and holder != id_:
            print(
                f"users: account {id_} keeps {email!r}: its canonical form {canonical!r} "
                f"is account {holder}'s; delete or rename one of the two"
            )
            continue
        conn.execute(
            users.update()
            .where(users.c.id == id_)
            .values(email=canonical, email_key=canonical)
        )
        taken.pop(key, None)
        taken[canonical] = id_


def downgrade():
    # The earlier spellings are not kept; the canonical ones work as well before this step.
    pass
