"""The one CSV writer of the service (exports and statistics), whose cells a spreadsheet
opens as text, never as a formula, and back again.

OWASP's CSV injection rule: a cell starting with = + - @ (or a tab or carriage return) is
run as a formula by spreadsheets, so such text gets a leading apostrophe. So does text
starting with a character a spreadsheet may read as one of those: their compatibility
forms (fullwidth U+FF1D, U+FF0B, U+FF0D, U+FF20 and the small forms U+FE66, U+FE62,
U+FE63, U+FE6B, which Unicode's NFKC makes = + - @) and the minus sign U+2212. Text that
itself starts with an apostrophe (or its fullwidth form) gets one too, so
that the quoting can always be undone: ``plain_cell`` removes exactly one leading
apostrophe a ``csv_cell`` added (the catalog import reads the catalog export's own files
back unchanged).
"""

from __future__ import annotations

import csv
import io
import unicodedata
from collections.abc import Iterable, Iterator

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# Read as a minus by spreadsheets, though NFKC keeps it.
MINUS_SIGN = "\u2212"
QUOTE = "'"
ASCII_QUOTED = frozenset((*FORMULA_STARTS, QUOTE))
# Every first character ``quoted_start`` quotes: those, and the characters beyond ASCII
# whose NFKC form starts with one of them (superscript and subscript + and =, the
# fullwidth and small forms, U+2A75 and U+2A76 (== and ===), the Hebrew alternative plus
# sign) and the minus sign. For a database to test them (``dialect.csv_lines``); a test
# checks the list against every character Python's Unicode tables know.
QUOTED_STARTS = (
    *sorted(ASCII_QUOTED),
    *"\u207a\u207c\u208a\u208c\u2212\u2a75\u2a76\ufb29",
    *"\ufe62\ufe63\ufe66\ufe6b\uff07\uff0b\uff0d\uff1d\uff20",
)
# A cell holding one of these is quoted by the CSV writer (QUOTE_MINIMAL: the delimiter,
# the quote character and the line end's characters), its quotes doubled.
NEEDS_QUOTES = (",", '"', "\r", "\n")


def quoted_start(text: str) -> bool:
    """Whether ``text`` starts with what a spreadsheet may run as a formula, or with a
    quote: the texts ``csv_cell`` quotes."""
    first = text[:1]
    if first < "\x80":  # ASCII (or empty): NFKC keeps it as it is
        return first in ASCII_QUOTED
    return first == MINUS_SIGN or unicodedata.normalize("NFKC", first).startswith(
        (*FORMULA_STARTS, QUOTE)
    )


def csv_cell(value):
    """The value, with a ' before text a spreadsheet would run as a formula."""
    if isinstance(value, str) and quoted_start(value):
        return QUOTE + value
    return value


def plain_cell(text: str) -> str:
    """A cell as written before ``csv_cell`` quoted it."""
    if text.startswith(QUOTE) and quoted_start(text[1:]):
        return text[1:]
    return text


def csv_document(header, chunks: Iterable[list[list]], bom: bool) -> Iterator[str]:
    """A CSV file as pieces of text: the header line, then one piece per chunk of rows,
    every cell quoted against formulas; ``bom``: a UTF-8 byte order mark first, so that a
    spreadsheet reads the file as UTF-8 (accents come out right)."""
    out = io.StringIO()
    if bom:
        out.write("\ufeff")
    csv.writer(out).writerow(header)
    yield out.getvalue()
    for rows in chunks:
        out = io.StringIO()
        csv.writer(out).writerows([csv_cell(value) for value in row] for row in rows)
        yield out.getvalue()
