"""Per-worker memory and a build-info metric, both correct in prometheus_client's multiprocess mode.

The default process collector reads only the process that answers the scrape; with several gunicorn workers
each worker writes its own resident set size (a `liveall` gauge: one series per live pid, dropped by the
child_exit hook when the worker goes), refreshed at most once a second after a request.
"""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata

from prometheus_client import Gauge

from . import metrics_files

metrics_files.install()  # before the first metric: its files' space allocated, never sparse
RSS = Gauge(
    "gradsvc_process_resident_memory_bytes", "Resident memory of this gunicorn worker", multiprocess_mode="liveall"
)
BUILD_INFO = Gauge(
    "gradsvc_build_info",
    "Always 1; the labels say what is running",
    ["version", "torch", "python"],
    multiprocess_mode="max",
)
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
REFRESH_SECONDS = 1.0
_last_update = 0.0


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


class _Statm:
    """/proc/self/statm kept open and read with pread: ~2 µs a read instead of ~14 µs for open, read, close
    (the memory guard reads it after every request).  A forked child opens its own: the master's descriptor
    names the master's /proc entry."""

    def __init__(self) -> None:
        self.fd: int | None = None
        os.register_at_fork(after_in_child=self.forget)

    def forget(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
        self.fd = None

    def resident_bytes(self) -> int:
        """RSS from /proc/self/statm (second field, in pages); 0 where /proc does not exist."""
        try:
            if self.fd is None:
                self.fd = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
            return int(os.pread(self.fd, 256, 0).split()[1]) * PAGE_SIZE
        except OSError:
            return 0


resident_bytes = _Statm().resident_bytes


def update_process_memory(force: bool = False) -> None:
    global _last_update
    now = time.monotonic()
    if force or now - _last_update >= REFRESH_SECONDS:
        _last_update = now
        RSS.set(resident_bytes())


BUILD_INFO.labels(_version("gradsvc"), _version("torch"), platform.python_version()).set(1)
RSS.set(resident_bytes())  # the master (preloaded) or a worker at import; workers refresh after requests
