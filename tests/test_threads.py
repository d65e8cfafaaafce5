"""Reading ahead (app/core/threads.py): the items in order, an error where they are
read, and a reader that stops ends the reading."""

from __future__ import annotations

import threading
import time

import pytest
from flask import current_app

from app.core.threads import in_parallel, read_ahead


def test_the_items_come_in_order_made_in_another_thread_with_the_app(app):
    made_in = []

    def produce():
        for n in range(5):
            made_in.append((threading.current_thread().name, current_app.name))
            yield n

    with app.app_context():
        assert list(read_ahead(produce)) == [0, 1, 2, 3, 4]
    assert made_in == [("read-ahead", app.name)] * 5


def test_an_error_of_the_reading_is_raised_where_the_items_are_read(app):
    def produce():
        yield 1
        raise LookupError("the database went away")

    with app.app_context():
        items = read_ahead(produce)
        assert next(items) == 1
        with pytest.raises(LookupError, match="went away"):
            next(items)


def test_a_reader_that_stops_ends_the_reading(app):
    ended = threading.Event()
    made = []

    def produce():
        try:
            for n in range(1000):
                made.append(n)
                yield n
        finally:
            ended.set()

    with app.app_context():
        items = read_ahead(produce, ahead=1)
        assert next(items) == 0
        items.close()
    assert ended.is_set()
    assert len(made) <= 3  # the one read, the one waiting, the one being made
    assert not [t for t in threading.enumerate() if t.name == "read-ahead"]


def test_in_parallel_gives_each_result_in_the_items_order(app):
    seen = []

    def work(n: int) -> int:
        seen.append((threading.current_thread().name.startswith("in-parallel"), current_app.name))
        time.sleep(0.01 * (5 - n))  # the first items finish last
        return n * n

    with app.app_context():
        assert list(in_parallel(work, range(5), threads=2)) == [0, 1, 4, 9, 16]
    assert seen and set(seen) == {(True, app.name)}


def test_in_parallel_with_one_thread_works_here_in_turn(app):
    with app.app_context():
        names = list(in_parallel(lambda _n: threading.current_thread().name, range(3), 1))
    assert names == [threading.current_thread().name] * 3


def test_in_parallel_stops_at_an_error_and_begins_no_more(app):
    begun = []

    def work(n: int) -> int:
        begun.append(n)
        if n == 1:
            raise LookupError("day 1 failed")
        time.sleep(0.05)
        return n

    with app.app_context():
        results = in_parallel(work, range(20), threads=2)
        assert next(results) == 0
        with pytest.raises(LookupError, match="day 1"):
            next(results)
        results.close()
    assert sorted(begun) == [0, 1]  # none after the failure, though threads were free
