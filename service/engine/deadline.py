"""One wall-clock deadline per request, enforced by a timer signal that interrupts long torch work.

Checks between steps (limits.Deadline.check) are not enough: one `hessian` runs a hundred double-backward
passes and one formula evaluation hundreds of ops, each of them outside any check.  So request_deadline()
arms ITIMER_REAL; when it fires, the SIGALRM handler raises DeadlineInterrupt at the next Python bytecode
(torch ops return to Python between ops, so the longest delay is one op, which the cost model keeps small).
Every Deadline created during the request ends no later than the request does, so a batch's jobs and a
check's points share one budget.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

# (time.monotonic() at which the current request must end, its budget in seconds)
_REQUEST: ContextVar[tuple[float, float]] = ContextVar("request_deadline", default=(math.inf, math.inf))


class DeadlineInterrupt(BaseException):
    """The request's wall time is spent.

    A BaseException, like KeyboardInterrupt: the per-job `except Exception` of a batch and the per-check
    handlers of a grading request must not swallow it and carry on past the deadline.  The HTTP layer
    (service/deadline.py) turns it into a 503 deadline-exceeded problem.
    """

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the request ran past its wall-time limit of {seconds:g} s")
        self.seconds = seconds


def check_request() -> None:
    """Raise DeadlineInterrupt if the current request's time is spent (the cooperative twin of the timer)."""
    end, seconds = _REQUEST.get()
    if time.monotonic() > end:
        raise DeadlineInterrupt(seconds)


def seconds_left() -> float:
    """What is left of the current request's budget (infinite outside a request); a child process gets no more."""
    end, _ = _REQUEST.get()
    return end - time.monotonic()


def can_interrupt() -> bool:
    """Timer signals reach only the main thread (gunicorn's sync worker; not a threaded dev server)."""
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


def _interrupt(signum, frame):
    """SIGALRM: the running request's time is spent (an alarm outside a request is ignored)."""
    end, seconds = _REQUEST.get()
    if end != math.inf:
        raise DeadlineInterrupt(seconds)


_handler_installed = False


def _install_handler() -> None:
    """The SIGALRM handler, set once per process (a forked worker inherits it): setting and restoring it around
    every request cost ~9 µs of the ~10 µs this context manager took (docs/performance.md, "The floor, lowered").
    Nothing else in the service uses SIGALRM."""
    global _handler_installed
    if not _handler_installed:
        signal.signal(signal.SIGALRM, _interrupt)
        _handler_installed = True


@contextmanager
def request_deadline(seconds: float) -> Iterator[None]:
    """Run the body with a `seconds` budget; past it, DeadlineInterrupt is raised wherever the code is.

    Outside the main thread only the cooperative checks (limits.Deadline) apply.
    """
    token = _REQUEST.set((time.monotonic() + seconds, seconds))
    armed = can_interrupt()
    if armed:
        _install_handler()
        signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        if armed:
            signal.setitimer(signal.ITIMER_REAL, 0)  # first: nothing may fire once the request is over
        _REQUEST.reset(token)
