"""Prometheus multiprocess files with their space allocated, so that a full volume is an OSError, never a SIGBUS.

prometheus_client keeps each process's metrics in files it maps into memory (MmapedDict) and sizes with truncate():
sparse files, whose pages the filesystem backs only when they are first written through the mapping. On a full
volume (a tmpfs too small, or shared with other temporary files) that write cannot be backed and the kernel kills
the process with SIGBUS: gunicorn's workers died as they started, were forked again and died again, without end
(an audit: 14,000 log lines a minute, every request timed out). Here a file is allocated (posix_fallocate) before
it is mapped and before it grows, so a full volume raises OSError where the caller can decide:

- each worker's files are allocated as it starts (deploy/gunicorn.conf.py, post_fork): one that finds no room logs
  one line and exits as a worker that failed to boot, and the master stops instead of forking more;
- a file that must grow later (a new label combination) and cannot costs that metric update, never the request
  (service/observability.py: logged, counted in gradsvc_metrics_write_errors_total).

The library has no hook for this: its values module looks MmapedDict up by name whenever it opens a file, and
install() puts the subclass there, before the first metric is created.
"""

from __future__ import annotations

import os

from prometheus_client import values
from prometheus_client.mmap_dict import MmapedDict

FILE_BYTES = 1 << 16  # a new file's size in prometheus_client (mmap_dict._INITIAL_MMAP_SIZE)


class MetricFileError(OSError):
    """A metric file found no room (or no directory) in PROMETHEUS_MULTIPROC_DIR; the message names both."""


def allocate(path: str, size: int) -> None:
    """Create `path` if needed and back its first `size` bytes (at least its current size) with real space."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.posix_fallocate(fd, 0, max(size, os.fstat(fd).st_size))
    finally:
        os.close(fd)


def entry_bytes(key: str) -> int:
    """Bytes the library's MmapedDict takes for one key: its length, the key padded to 8 bytes, value, timestamp."""
    encoded = len(key.encode("utf-8"))
    return 4 + encoded + (8 - (encoded + 4) % 8) + 16


def failed(path: str, needed: int, exc: OSError) -> MetricFileError:
    """The error for a file that could not get `needed` more bytes."""
    return MetricFileError(
        exc.errno,
        f"metric file {os.path.basename(path)} could not get {needed // 1024} KiB in "
        f"PROMETHEUS_MULTIPROC_DIR={os.path.dirname(path)!r}: {exc.strerror}",
    )


class AllocatedMmapedDict(MmapedDict):
    """The library's MmapedDict, its file's space allocated before the library maps or grows it."""

    def __init__(self, filename: str, read_mode: bool = False) -> None:
        if not read_mode:
            try:
                allocate(filename, FILE_BYTES)
            except OSError as exc:
                raise failed(filename, FILE_BYTES, exc) from exc
        super().__init__(filename, read_mode)

    def _init_value(self, key: str) -> None:
        """A new key: the library doubles the file (truncate) until the entry fits and maps the new part; allocate
        that part first."""
        entry = entry_bytes(key)
        capacity = self._capacity
        while self._used + entry > capacity:
            capacity *= 2
        if capacity > self._capacity:
            try:
                os.posix_fallocate(self._f.fileno(), 0, capacity)
            except OSError as exc:
                raise failed(self._fname, capacity - self._capacity, exc) from exc
        super()._init_value(key)


def install() -> None:
    """Make prometheus_client open every multiprocess file as an AllocatedMmapedDict (before any metric exists)."""
    values.MmapedDict = AllocatedMmapedDict
