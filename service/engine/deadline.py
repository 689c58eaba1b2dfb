"""One wall-clock deadline per request, enforced by a timer signal that interrupts long torch work.

Checks between steps (limits.Deadline.check) are not enough: one `hessian` runs a hundred double-backward
passes and one formula evaluation hundreds of ops, each of them outside any check.  So request_deadline()
arms ITIMER_REAL; when it fires, the SIGALRM handler raises DeadlineInterrupt at the next Python bytecode
(torch ops return to Python between ops, so the longest delay is one op, which the cost model keeps small).
Every Deadline created during the request ends no later than the request does, so a batch's jobs and a
check's points share one budget.

An exception raised at an arbitrary bytecode is safe only in code written for it.  So the HTTP layer opens the
deadline for the request's dispatch alone (`request_deadline(..., anywhere=False)` and `interruptible()`): an alarm
while Flask pushes the request's context is held and raised as the dispatch begins, and one after the answer is
built (start_response, the context's pop) is ignored; that fixed work is what the MAX_WALL_SECONDS floor covers.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar


class _Budget:
    """The current request's deadline: when it ends, and whether the timer may interrupt the code now.

    `open` is False only for a `request_deadline(..., anywhere=False)` until `interruptible()` opens it: the HTTP
    layer (service/deadline.py) keeps the timer off Flask's own bookkeeping that way.
    """

    __slots__ = ("end", "seconds", "open", "fired", "over")

    def __init__(self, seconds: float, anywhere: bool) -> None:
        self.end = time.monotonic() + seconds
        self.seconds = seconds
        self.open = anywhere  # the timer's interrupt is raised where the code is
        self.fired = False  # the timer fired while it could not be raised: raised when the stretch opens
        self.over = False  # the stretch that may be interrupted has ended: the answer is built, nothing is raised


_REQUEST: ContextVar[_Budget | None] = ContextVar("request_deadline", default=None)


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
    budget = _REQUEST.get()
    if budget is not None and not budget.over and time.monotonic() > budget.end:
        raise DeadlineInterrupt(budget.seconds)


def seconds_left() -> float:
    """What is left of the current request's budget (infinite outside a request); a child process gets no more."""
    budget = _REQUEST.get()
    return math.inf if budget is None else budget.end - time.monotonic()


def can_interrupt() -> bool:
    """Timer signals reach only the main thread (gunicorn's sync worker; not a threaded dev server)."""
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


def _interrupt(signum, frame):
    """SIGALRM: the running request's time is spent (an alarm outside a request, or after its answer was built, is
    ignored; one that comes before the request may be interrupted is raised as soon as it may)."""
    budget = _REQUEST.get()
    if budget is None or budget.over:
        return
    if budget.open:
        raise DeadlineInterrupt(budget.seconds)
    budget.fired = True


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
def request_deadline(seconds: float, *, anywhere: bool = True) -> Iterator[None]:
    """Run the body with a `seconds` budget; past it, DeadlineInterrupt is raised wherever the code is, or, with
    anywhere=False, only inside its `interruptible()` stretch (a deadline passed before it is raised as it begins).

    Outside the main thread only the cooperative checks (limits.Deadline) apply.
    """
    token = _REQUEST.set(_Budget(seconds, anywhere))
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


@contextmanager
def interruptible() -> Iterator[None]:
    """The stretch of a `request_deadline(..., anywhere=False)` the timer may interrupt; once it is over, the deadline
    no longer ends the request (its answer is built: the little left to do is done and the answer sent).

    An exception in the code the timer would cut short leaves state half changed. Inside this stretch that is the
    service's own code, written for it (BaseException passes its handlers); outside it is Flask's context push and pop
    and gunicorn's start_response: a deadline there answered 500s (LookupError from a half-pushed context) or sent
    a 503 after a 200's headers had been given to gunicorn (two Content-Lengths on the wire).
    """
    budget = _REQUEST.get()
    if budget is None or budget.open:  # no deadline, or one that interrupts anywhere
        yield
        return
    try:
        budget.open = True
        if budget.fired or time.monotonic() > budget.end:
            raise DeadlineInterrupt(budget.seconds)
        yield
    finally:
        budget.open = False
        budget.over = True
