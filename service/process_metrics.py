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


def resident_bytes() -> int:
    """RSS from /proc/self/statm (second field, in pages); 0 where /proc does not exist."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE_SIZE
    except OSError:
        return 0


def update_process_memory() -> None:
    global _last_update
    now = time.monotonic()
    if now - _last_update >= REFRESH_SECONDS:
        _last_update = now
        RSS.set(resident_bytes())


BUILD_INFO.labels(_version("gradsvc"), _version("torch"), platform.python_version()).set(1)
RSS.set(resident_bytes())  # the master (preloaded) or a worker at import; workers refresh after requests
