"""Work that waits for the database, overlapped in threads, each thread with an app
context (so a session and a connection) of its own.

- ``read_ahead``: a streamed download alternates waiting for the database's next chunk
  and turning the last chunk into text; the reading runs in a thread, one chunk ahead of
  the writing, so the wait overlaps the writing instead of adding to it (the thread holds
  Python's lock only while it parses what came back).
- ``in_parallel``: independent transactions (the days of a roll-up rebuild) run on
  several connections at once, so that the database works on more than one core.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from flask import current_app

T = TypeVar("T")
R = TypeVar("R")
# How long the reading thread waits for room before looking whether the writer stopped.
POLL_SECONDS = 0.1


@dataclass(frozen=True)
class _Failed:
    error: BaseException


_DONE = object()


def read_ahead(produce: Callable[[], Iterator[T]], ahead: int = 1) -> Iterator[T]:
    """The items of ``produce()``, made in a thread with an app context of this app, at most
    ``ahead`` of them waiting besides the one being made. An error of ``produce`` is
    raised here, where the caller reads; a caller that stops reading (a client that went
    away) stops the thread at its next item, and the thread's app context ends its
    session (its transaction rolled back, its connection back in the pool)."""
    app = current_app._get_current_object()
    made: queue.Queue = queue.Queue(maxsize=ahead)
    stopped = threading.Event()

    def hand_over(item) -> bool:
        while not stopped.is_set():
            try:
                made.put(item, timeout=POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            with app.app_context():
                for item in produce():
                    if not hand_over(item):
                        return
        except BaseException as error:
            hand_over(_Failed(error))
            return
        hand_over(_DONE)

    thread = threading.Thread(target=run, name="read-ahead", daemon=True)
    thread.start()
    try:
        while (item := made.get()) is not _DONE:
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stopped.set()
        thread.join()


def in_parallel(work: Callable[[T], R], items: Iterable[T], threads: int) -> Iterator[R]:
    """``work(item)`` of each item, in the items' order, up to ``threads`` at once, each in
    a thread with an app context of this app (its own session: ``work`` commits what it
    keeps). One thread: each in turn, here, in the caller's context.

    Once a ``work`` has failed, or the caller has stopped reading (an error, an
    interrupt), no item is begun, and those under way finish."""
    if threads <= 1:
        yield from map(work, items)
        return
    app = current_app._get_current_object()
    stopped = threading.Event()

    def in_context(item: T) -> R:
        if stopped.is_set():
            raise _NotBegun
        try:
            with app.app_context():
                return work(item)
        except BaseException:
            stopped.set()
            raise

    pool = ThreadPoolExecutor(threads, thread_name_prefix="in-parallel")
    try:
        for future in [pool.submit(in_context, item) for item in items]:
            yield future.result()
    finally:
        stopped.set()
        pool.shutdown(wait=True, cancel_futures=True)


class _NotBegun(Exception):
    """An item ``in_parallel`` did not begin: an earlier one failed (and is raised first)."""
