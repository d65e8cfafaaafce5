"""Searching the product names (``?q=``): every word of the query, as a whole word or the
start of one, accents and case aside, from the search's own index (``ProductWord``: one row
per distinct word of each live product's name).

The ranking, best first: the products holding more of the query's words whole (``zapato``
before ``zapatos`` for ``q=zapato``); then the smallest sum, over the query's words, of
the name's other words (a row's ``other_words``); then the oldest. A word's rows are
stored in that order (its key), so a query of one word that starts just one word of the
catalog reads its page and its total from one range of the index, without a sort and
without reading the products.

A search that finds nothing because a word starts no word of the catalog is tried again
with that word corrected (``corrected``): the catalog's closest word, one edit away for
words of 5 to 8 letters, two from 9."""

from __future__ import annotations

from rapidfuzz.distance import DamerauLevenshtein
from rapidfuzz.process import extract
from sqlalchemy import and_, case, false, func, intersect, literal, select, union_all

from app.catalog.models import Product, ProductWord, SearchVocabulary
from app.core.extensions import db

WORDS = ProductWord.__table__
VOCABULARY = SearchVocabulary.__table__
# Above any character a word can hold: the words that start with ``t`` sort from ``t`` up
# to ``t + AFTER_ANY_CHARACTER`` (the key compares code points on both databases).
AFTER_ANY_CHARACTER = "\U0010ffff"


def terms(q: str) -> list[str]:
    """The words of a query as the index holds them."""
    return Product.words_of(q)


def _starting_with(term: str):
    return and_(WORDS.c.word >= term, WORDS.c.word < term + AFTER_ANY_CHARACTER)


def matching(ids, words: list[str]):
    """The WHERE clause keeping the ids (a column of product ids) whose products hold every
    word of ``words`` (``terms``), whole or as the start of one."""
    if not words:
        return false()
    each = [select(WORDS.c.product_id).where(_starting_with(term)) for term in words]
    return ids.in_(each[0] if len(each) == 1 else intersect(*each))


def ranked(words: list[str]):
    """A SELECT of ``(product_id, exact, others)`` for every live product holding every
    word of ``words`` (``terms``): ``exact``, how many of them it holds whole; ``others``,
    how many other words its name has (summed over the query's words). Ordered by
    ``best_first``."""
    if not words:  # a query of no word at all finds nothing
        nothing = literal(0)
        return select(WORDS.c.product_id, nothing.label("exact"), nothing.label("others")).where(
            false()
        )
    if len(words) == 1 and (word := _only_word_starting(words[0])) is not None:
        return select(
            WORDS.c.product_id,
            literal(int(word == words[0])).label("exact"),
            WORDS.c.other_words.label("others"),
        ).where(WORDS.c.word == word)
    each = [
        select(
            WORDS.c.product_id,
            func.max(case((WORDS.c.word == term, 1), else_=0)).label("exact"),
            func.min(WORDS.c.other_words).label("others"),
        )
        .where(_starting_with(term))
        .group_by(WORDS.c.product_id)
        for term in words
    ]
    if len(each) == 1:
        return each[0]
    rows = union_all(*each).subquery()
    return (
        select(
            rows.c.product_id,
            func.sum(rows.c.exact).label("exact"),
            func.sum(rows.c.others).label("others"),
        )
        .group_by(rows.c.product_id)
        .having(func.count() == len(words))
    )


def best_first(ranks) -> tuple:
    """The ORDER BY of ``ranked``'s rows (``ranks``, its subquery): the ranking."""
    return ranks.c.exact.desc(), ranks.c.others, ranks.c.product_id


def _only_word_starting(term: str) -> str | None:
    """The word of the index that starts with ``term`` when there is just one (a query of
    a whole word, mostly): its rows are then in rank order already. Two ends of one range
    of the key."""
    first, last = db.session.execute(
        select(func.min(WORDS.c.word), func.max(WORDS.c.word)).where(_starting_with(term))
    ).one()
    return first if first is not None and first == last else None


# Corrections: words of these many letters or more (and letters alone: a model number is
# not a misspelling) may be one edit away, or two, from what the catalog holds.
ONE_EDIT_FROM = 5
TWO_EDITS_FROM = 9
# How many of a candidate's products count towards choosing it: enough to tell a common
# word from a rare one without counting a million rows.
PRODUCTS_COUNTED = 1000


def corrected(words: list[str]) -> list[str] | None:
    """The words of a search that finds nothing because some of them start no word of the
    catalog, each such word replaced by the catalog's closest (``closest``); None when
    there is nothing to correct, or a word has no close one."""
    fixed = []
    for word in words:
        if _starts_a_word(word):
            fixed.append(word)
        elif (near := closest(word)) is not None:
            fixed.append(near)
        else:
            return None
    return fixed if fixed != words else None


def closest(word: str) -> str | None:
    """The catalog's word nearest to ``word`` (letters alone, 5 or more), within one edit
    (an insertion, deletion, substitution or swap of two neighbours) for 5 to 8 letters,
    two from 9: the fewest edits, then the word more live products hold, then the first
    in order. The first letter is taken as typed: the candidates are the vocabulary's
    words that start with it, of a length within the edits allowed (one range of its key
    for each length)."""
    if len(word) < ONE_EDIT_FROM or not word.isalpha():
        return None
    edits = 2 if len(word) >= TWO_EDITS_FROM else 1
    first, after = word[0], word[0] + AFTER_ANY_CHARACTER
    candidates = db.session.scalars(
        select(VOCABULARY.c.word).where(
            VOCABULARY.c.length.in_(range(len(word) - edits, len(word) + edits + 1)),
            VOCABULARY.c.word >= first,
            VOCABULARY.c.word < after,
        )
    ).all()
    near = extract(
        word, candidates, scorer=DamerauLevenshtein.distance, score_cutoff=edits, limit=None
    )
    by_distance = sorted((distance, candidate) for candidate, distance, _ in near)
    for distance in sorted({distance for distance, _ in by_distance}):
        tied = [candidate for d, candidate in by_distance if d == distance]
        held = {candidate: _products_holding(candidate) for candidate in tied}
        best = max(tied, key=held.__getitem__)  # max keeps the first of equals
        if held[best]:
            return best
    return None


def _products_holding(word: str) -> int:
    held = select(WORDS.c.product_id).where(WORDS.c.word == word).limit(PRODUCTS_COUNTED)
    return db.session.scalar(select(func.count()).select_from(held.subquery()))


def _starts_a_word(term: str) -> bool:
    return db.session.scalar(select(WORDS.c.word).where(_starting_with(term)).limit(1)) is not None
