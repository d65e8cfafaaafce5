"""app/uwsgi_graceful.py outside uWSGI: it changes nothing on import, and taking the
listening sockets out of event queues leaves every other descriptor watched. (Inside
uWSGI: tests/system/test_graceful_stop.py.)"""

from __future__ import annotations

import ctypes
import select
import signal
import socket

from app import uwsgi_graceful


def test_outside_uwsgi_importing_it_leaves_the_signals_alone():
    assert uwsgi_graceful.uwsgi is None
    assert signal.SIGHUP not in signal.pthread_sigmask(signal.SIG_BLOCK, set())


def test_stop_accepting_takes_only_the_listening_socket_out_of_a_queue():
    listener = socket.create_server(("127.0.0.1", 0))
    awake, waker = socket.socketpair()
    queue = select.epoll()
    try:
        queue.register(listener.fileno(), select.EPOLLIN)
        queue.register(awake.fileno(), select.EPOLLIN)
        assert queue.fileno() in uwsgi_graceful.event_queues()

        removed = uwsgi_graceful.stop_accepting(ctypes.CDLL(None), {queue.fileno()})

        assert removed == 1
        client = socket.create_connection(listener.getsockname())
        waker.send(b"x")
        assert [fd for fd, _ in queue.poll(1)] == [awake.fileno()]  # no connection seen
        client.close()
    finally:
        for item in (queue, listener, awake, waker):
            item.close()
