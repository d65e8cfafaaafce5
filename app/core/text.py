"""One rule for control characters: which ones a one-line value may not hold, and how text
that holds them is shown (an email's subject and lines, a log line)."""

from __future__ import annotations

import re
import unicodedata

# C0 controls (CR, LF, ESC, NUL...), DEL and C1 controls, the Unicode line and paragraph
# separators, and the bidirectional embeddings, overrides and isolates: none belongs in a
# one-line value, and each can forge a log line, an email header or what a reader sees.
CONTROL_RANGES = r"\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
CONTROL_CHARACTERS = re.compile(f"[{CONTROL_RANGES}]")
_CONTROL_RUNS = re.compile(f"[{CONTROL_RANGES}]+")


_WORDS = re.compile(r"[^\W_]+")


def search_words(text: str) -> list[str]:
    """The words of a text as search compares them: accents removed (NFKD, combining
    marks dropped), case folded, split at every character that is neither a letter nor a
    digit (``Camión-Eléctrico`` is ``camion`` and ``electrico``)."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _WORDS.findall(unicodedata.normalize("NFKC", plain).casefold())


def key(value: str) -> str:
    """The one case rule for lookup keys (skus, emails, usernames): case and surrounding
    spaces never tell two apart."""
    return value.strip().lower()


def one_line(value) -> str:
    """``value`` as one line: each run of control characters becomes a space (rows written
    before the API refused them could hold some)."""
    return _CONTROL_RUNS.sub(" ", str(value)).strip()


def printable(text: str) -> str:
    """``text`` with control and other unprintable characters escaped (``\\x1b``): a log
    line shows what was sent and cannot start a forged line or colour a terminal."""
    if text.isprintable() and not CONTROL_CHARACTERS.search(text):
        return text
    return "".join(
        c if c.isprintable() and not CONTROL_CHARACTERS.match(c) else repr(c)[1:-1] for c in text
    )
