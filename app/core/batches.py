"""Writing the results of a batch of rows (emails sent, webhook attempts) in one statement.

The worker records what came of several rows at once: one ``UPDATE`` whose values differ
from row to row, each column's given by ``per_row``.
"""

from __future__ import annotations

from sqlalchemy import case, literal


def per_row(column, key, setting: dict, rows: int):
    """The new value of ``column`` for each row whose ``key`` is in ``setting`` (key ->
    value), the other rows of the ``rows`` updated keeping theirs, as one expression: the
    value itself when every row gets the same one, else a ``CASE``."""
    values = list(setting.values())
    if len(setting) == rows and len({repr(value) for value in values}) == 1:
        return values[0]
    return case(
        *((key == row_key, literal(value, column.type)) for row_key, value in setting.items()),
        else_=column,
    )
