"""Memory handed back after every request, and a worker replaced when its RSS stays over a ceiling.

torch frees a request's tensors into glibc malloc, which keeps the pages: after one 4 GB request a worker
stayed 4 GB big.  So (measured in docs/performance.md, "Bounded cost"):
- after a request that left the worker more than TRIM_ABOVE_MIB over its settled size (its RSS after the last
  trim: what it holds on purpose, such as the grading caches), malloc_trim(0) returns the free heap pages and,
  if that was not enough, a full GC collects any reference cycle still holding tensors (fixed mmap/trim
  thresholds via mallopt did not help: most tensors are below any sensible mmap threshold);
- if the worker is still over MAX_WORKER_RSS_MB after that, it finishes the request and exits, and gunicorn
  starts a fresh one (uWSGI's reload-on-rss), logged and counted in gradsvc_worker_recycles_total.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
from functools import partial

from werkzeug.wsgi import ClosingIterator

from .observability import ENVIRON_REQUEST_ID, WORKER_RECYCLES, metric_lost
from .process_metrics import resident_bytes, update_process_memory

log = logging.getLogger(__name__)

# A request that leaves the worker this far over its settled RSS triggers malloc_trim (0.1 ms), and a GC if the
# trim was not enough.  It was 64 over the idle RSS: a worker could keep 63 MiB after a 1M-sample request, and
# master + 2 workers then measured 365 MiB PSS instead of ~302 (docs/performance.md, "Memory, measured without
# the benchmark's torch").
TRIM_ABOVE_MIB = 16


def _libc():
    """glibc, or None (musl, macOS): then only the RSS ceiling applies."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 - a glibc-only symbol: AttributeError elsewhere
    except (OSError, AttributeError):
        return None
    return libc


LIBC = _libc()


def rss_mib() -> float:
    """Resident set size of this process in MiB (0 where there is no /proc)."""
    return resident_bytes() / (1 << 20)


def trim() -> None:
    """Hand free malloc pages (anywhere in the heap, not only at its top) back to the OS."""
    if LIBC is not None:
        LIBC.malloc_trim(0)


def freeze_startup_objects() -> None:
    """Move everything alive now (torch, the app, the warm-up's caches) out of the GC's reach: a later full
    collection then walks only a request's own objects (~1 ms instead of ~100 ms), and the collector never
    writes to pages a preloading master shares with its workers (Python's gc.freeze() docs)."""
    gc.collect()
    gc.freeze()


class MemoryGuard:
    """After each request: give memory back when the worker grew, ask for a replacement when it stays too big."""

    def __init__(self, ceiling_mib: float) -> None:
        self.ceiling_mib = ceiling_mib
        self.idle_mib = self.settled_mib = rss_mib()
        self.worker = None  # the gunicorn worker, once watch_worker() attached it

    def watch_worker(self, worker) -> None:
        """Called by gunicorn's post_worker_init hook: this process is a worker that may be recycled."""
        self.worker = worker
        freeze_startup_objects()  # again: the worker's warm-up ran after the master froze its objects
        self.idle_mib = self.settled_mib = rss_mib()
        update_process_memory(force=True)  # the worker's RSS gauge, before its first request (it read 0 until then)
        if self.idle_mib > self.ceiling_mib:
            log.error(
                "idle worker RSS %.0f MiB is over MAX_WORKER_RSS_MB=%.0f: every request will recycle it",
                self.idle_mib,
                self.ceiling_mib,
            )

    def after_request(self, environ: dict | None = None) -> None:
        rss = rss_mib()
        if rss <= self.settled_mib + TRIM_ABOVE_MIB and rss <= self.ceiling_mib:
            return
        trim()
        rss = rss_mib()
        if rss > self.settled_mib + TRIM_ABOVE_MIB:  # tensors still held: by a reference cycle, if by anything
            gc.collect()
            trim()
            rss = rss_mib()
        self.settled_mib = max(self.idle_mib, rss)  # what is left is held on purpose: the next trim starts from it
        if rss > self.ceiling_mib and self.worker is not None and self.worker.alive:
            log.warning(
                "worker RSS %.0f MiB stays over MAX_WORKER_RSS_MB=%.0f after a request: exiting for a fresh one",
                rss,
                self.ceiling_mib,
                extra={
                    "rss_mib": round(rss),
                    "pid": os.getpid(),
                    "request_id": (environ or {}).get(ENVIRON_REQUEST_ID, "-"),  # the request that left it so big
                },
            )
            try:
                WORKER_RECYCLES.labels("rss").inc()
            except OSError as exc:  # its first recycle, on a full metrics volume
                metric_lost(exc)
            self.worker.alive = False  # the sync worker finishes this response, then leaves its loop


class MemoryMiddleware:
    """WSGI middleware running the guard once the server has sent (and dropped) the response."""

    def __init__(self, app, guard: MemoryGuard) -> None:
        self.app = app
        self.guard = guard

    def __call__(self, environ, start_response):
        return ClosingIterator(self.app(environ, start_response), partial(self.guard.after_request, environ))


GUARD: MemoryGuard | None = None


def init_memory(app) -> None:
    """Guard every request; call after init_deadline so the guard runs outside the deadline."""
    global GUARD
    GUARD = MemoryGuard(app.config["MAX_WORKER_RSS_MB"])
    app.wsgi_app = MemoryMiddleware(app.wsgi_app, GUARD)
    freeze_startup_objects()


def watch_worker(worker) -> None:
    """gunicorn post_worker_init: see MemoryGuard.watch_worker."""
    if GUARD is not None:
        GUARD.watch_worker(worker)
