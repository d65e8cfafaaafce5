"""The CSV rules (app/core/spreadsheets.py) that a database applies as well."""

from __future__ import annotations

import sys

from app.core.spreadsheets import QUOTED_STARTS, quoted_start


def test_the_quoted_starts_are_every_first_character_the_rule_quotes():
    """MariaDB writes the export's cells itself (``dialect.csv_lines``), testing a cell's
    first character against QUOTED_STARTS: the same characters as ``quoted_start``, over
    every character Python's Unicode tables know."""
    every = (chr(n) for n in range(sys.maxunicode + 1) if not 0xD800 <= n <= 0xDFFF)
    assert {c for c in every if quoted_start(c)} == set(QUOTED_STARTS)
    assert len(QUOTED_STARTS) == len(set(QUOTED_STARTS))
