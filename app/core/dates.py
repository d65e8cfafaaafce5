"""Calendar days (UTC) for the per-day series of the statistics and the delivery log."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta


def days(start: date, end: date) -> Iterator[date]:
    """Every day of [start, end], in order: a series with a value for each, 0 or not."""
    for offset in range((end - start).days + 1):
        yield start + timedelta(days=offset)
