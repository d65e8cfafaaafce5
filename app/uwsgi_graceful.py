"""A graceful stop of a uWSGI worker that can neither hang it nor drop a connection.

app.ini imports this module (``import = app.uwsgi_graceful``); outside uWSGI (the
``flask`` command, the tests) it does nothing.

uWSGI (Debian's 2.0.21) stops a worker gracefully, on a reload (``w``) as on a shutdown
(SIGTERM, ``q``), by sending it SIGHUP. The handler (``gracefully_kill``) runs on the
worker's main thread, which is itself one of the request threads, and waits right there
(``pthread_join``) for the other request threads to finish their requests. If the signal
lands while the main thread is inside a request - holding Python's GIL, waiting for it,
or holding any lock the others need - they never finish: the worker hangs until
``worker-reload-mercy`` and is then killed with every request it was serving (nginx
answers 502). uWSGI's development branch has since stopped waiting in the handler.

A worker of one thread has a narrower flaw: its handler exits at once when the worker is
not in a request, and it is not yet in one between taking a connection and reading it:
a SIGHUP landing there closes that connection unanswered (nginx answers 502).

So, in each worker, SIGHUP is blocked on the main thread (the request threads block every
signal themselves) and taken by a thread of its own (``sigwait``), which:

1. stops the worker accepting connections: the listening socket leaves every thread's
   event queue (the other workers go on accepting them);
2. waits until no thread of the worker is in a request: every request it had started is
   answered, and none can start any more;
3. sends the main thread RELAY, whose handler is uWSGI's own ``gracefully_kill``: it now
   finds the main thread idle, the other threads idle, and exits the worker at once as
   uWSGI means it to (the master starts a new one on a reload).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import socket
import threading
import time

try:
    import uwsgi  # only inside uWSGI
except ImportError:
    uwsgi = None

RELAY = signal.SIGRTMIN + 1  # unused by uWSGI and by Python
EPOLL_CTL_DEL = 2
WATCHED = re.compile(r"^tfd:\s*(\d+)", re.MULTILINE)
# How often the draining worker looks whether it is still in a request; "not in a
# request" must be seen twice in a row, once any thread that had already been woken by a
# connection before the socket left its queue has had time to start that request.
POLL_SECONDS = 0.05


def _listening(fd: int) -> bool:
    try:
        probe = socket.socket(fileno=os.dup(fd))
    except OSError:
        return False
    try:
        return bool(probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError:
        return False
    finally:
        probe.close()  # the duplicate only


def event_queues() -> set[int]:
    """The epoll descriptors open in this process."""
    queues = set()
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{name}") == "anon_inode:[eventpoll]":
                queues.add(int(name))
    return queues


def stop_accepting(libc: ctypes.CDLL, queues: set[int]) -> int:
    """Take the listening sockets out of these event queues; how many were taken out."""
    removed = 0
    for queue in queues:
        try:
            with open(f"/proc/self/fdinfo/{queue}") as info:
                watched = [int(n) for n in WATCHED.findall(info.read())]
        except OSError:
            continue
        for target in watched:
            if _listening(target) and libc.epoll_ctl(queue, EPOLL_CTL_DEL, target, None) == 0:
                removed += 1
    return removed


def _relay(main_thread: int, libc: ctypes.CDLL, inherited: set[int]) -> None:
    signal.sigwait({signal.SIGHUP})
    # The request threads' queues, not one shared with the master (opened before the fork).
    stop_accepting(libc, event_queues() - inherited)
    worker, idle = uwsgi.worker_id(), 0
    while idle < 2:
        time.sleep(POLL_SECONDS)
        idle = 0 if libc.uwsgi_worker_is_busy(worker) else idle + 1
    signal.pthread_kill(main_thread, RELAY)


def _after_fork() -> None:
    """In each new worker, on its main thread, before its request threads start."""
    libc = ctypes.CDLL(None)  # uWSGI's own functions and libc's
    if not all(hasattr(libc, f) for f in ("gracefully_kill", "uwsgi_worker_is_busy")):
        print("uwsgi_graceful: not Debian's uWSGI 2.0: its own graceful stop is left as is")
        return
    libc.signal.restype = ctypes.c_void_p
    libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.epoll_ctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    libc.uwsgi_worker_is_busy.argtypes = [ctypes.c_int]
    libc.signal(RELAY, ctypes.cast(libc.gracefully_kill, ctypes.c_void_p))
    # Threads started from now on (this one's and uWSGI's) inherit the blocked SIGHUP.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    threading.Thread(
        target=_relay,
        args=(threading.get_ident(), libc, event_queues()),
        name="graceful-stop",
        daemon=True,
    ).start()


if uwsgi is not None:
    uwsgi.post_fork_hook = _after_fork
