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


@contextmanager
def request_deadline(seconds: float) -> Iterator[None]:
    """Run the body with a `seconds` budget; past it, DeadlineInterrupt is raised wherever the code is.

    Outside the main thread only the cooperative checks (limits.Deadline) apply.
    """
    token = _REQUEST.set((time.monotonic() + seconds, seconds))
    previous = None
    if can_interrupt():

        def interrupt(signum, frame):
            raise DeadlineInterrupt(seconds)

        previous = signal.signal(signal.SIGALRM, interrupt)
        signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        if previous is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)  # first: nothing may fire once the request is over
            signal.signal(signal.SIGALRM, previous)
        _REQUEST.reset(token)
