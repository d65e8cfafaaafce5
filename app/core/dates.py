"""Calendar days (UTC) for the per-day series of the statistics and the delivery log."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta


def days(start: date, end: date) -> Iterator[date]:
    """Every day of [start, end], in order: a series with a value for each, 0 or not."""
    for offset in range((end - start).days + 1):
        yield start + timedelta(days=offset)


def week_of(day: date) -> date:
    """The Monday of the ISO week holding ``day``."""
    return day - timedelta(days=day.weekday())


def whole_weeks(start: date, end: date) -> tuple[list[date], list[date]]:
    """[start, end] as the Mondays of the weeks it holds whole, and the days left over at
    either end."""
    mondays = [d for d in days(start, end) if d.weekday() == 0 and d + timedelta(days=6) <= end]
    in_weeks = {d for monday in mondays for d in days(monday, monday + timedelta(days=6))}
    return mondays, [d for d in days(start, end) if d not in in_weeks]
