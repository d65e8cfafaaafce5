"""CSV cells that a spreadsheet opens as text, never as a formula, and back again.

OWASP's CSV injection rule: a cell starting with = + - @ (or a tab or carriage return) is
run as a formula by spreadsheets, so such text gets a leading apostrophe. Text that itself
starts with an apostrophe gets one too, so that the quoting can always be undone:
``plain_cell`` removes exactly one leading apostrophe a ``csv_cell`` added (the catalog
import reads the catalog export's own files back unchanged).
"""

from __future__ import annotations

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
QUOTE = "'"


def csv_cell(value):
    """The value, with a ' before text a spreadsheet would run as a formula."""
    if isinstance(value, str) and value.startswith((*FORMULA_STARTS, QUOTE)):
        return QUOTE + value
    return value


def plain_cell(text: str) -> str:
    """A cell as written before ``csv_cell`` quoted it."""
    if text.startswith(QUOTE) and text[1:].startswith((*FORMULA_STARTS, QUOTE)):
        return text[1:]
    return text
