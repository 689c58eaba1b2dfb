"""Compaction of the multiprocess metric files that dead gunicorn workers leave in PROMETHEUS_MULTIPROC_DIR.

prometheus_client keeps every dead process's counter, histogram and non-live gauge files, because their values
must stay in the sums, and it refuses to compact them itself (client_python#204, #275, #518): it has no lock
between writers and readers, and a pid may be reused. Here both sides are ours, so both are solved:

- the gunicorn master, the only process that forks workers, compacts in its child_exit hook
  (deploy/gunicorn.conf.py); it forks the next worker only after that hook returns, so no new process can take a
  dead worker's pid (and its files) while they are merged;
- the /metrics view collects under a shared flock on LOCK_NAME; the master builds the new archive files beside the
  old ones (names a scrape's ``*.db`` glob skips), then, under the exclusive lock, renames them over the archives
  and unlinks the merged files: a scrape sees every count exactly once, before or after.

One archive per file kind, named like a process's file whose pid is ``archive`` (the library's glob and its
``gauge_<mode>_<pid>.db`` parsing accept it). Merged with the library's own merge (accumulate=False, documented
for writing merged data back) and written with its MmapedDict.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector

from service import metrics_files

LOCK_NAME = "compact.lock"
ARCHIVE = "archive"
# The kinds whose dead files are merged: counters, summaries and histograms add up, min/max/sum gauges keep their
# min, max or sum. Not `all` gauges (a series per pid by design) nor `mostrecent` (the merge drops timestamps):
# the app has neither, and their files stay as the library leaves them. Live gauges: mark_process_dead removes them.
_DEAD_FILE = re.compile(r"^(?P<kind>counter|summary|histogram|gauge_(?:min|max|sum))_(?P<pid>\d+)\.db$")


@contextmanager
def shared_lock(path: str) -> Iterator[None]:
    """Held by a scrape while it reads the files: the master swaps archives only when no scrape holds it."""
    fd = os.open(os.path.join(path, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


def process_running(pid: int) -> bool:
    """True unless no process has this pid (one we may not signal is running too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dead_files(path: str, keep: Iterable[int], running: Callable[[int], bool] = process_running) -> dict[str, list]:
    """kind -> files of processes that are neither kept (the master, the live workers) nor still running (a
    process forked by someone else, e.g. a re-executed master after USR2, keeps its files)."""
    keep = set(keep)
    found: dict[str, list[str]] = defaultdict(list)
    for entry in os.scandir(path):
        match = _DEAD_FILE.match(entry.name)
        if match and int(match["pid"]) not in keep and not running(int(match["pid"])):
            found[match["kind"]].append(entry.path)
    return dict(found)


def write_merged(files: list[str], target: str) -> None:
    """One file with the values of `files` combined as a scrape combines them (sums; min/max for such gauges;
    histogram buckets per bucket, not cumulated). Counts are whole numbers and add up exactly; float sums (a
    histogram's _sum) are added in another order than a scrape would, which can move their last bit. The target
    is allocated first, exactly the bytes it will hold (the library's 8-byte header and its entries), so writing
    through the mmap cannot fault (SIGBUS, which would kill the master) on a full tmpfs: a full volume raises
    OSError here instead. Sized from the sources' allocated files (64-256 KiB each for a few KiB in use), it needed
    more room than the volume had left, and a server stopped at its first worker recycle (an audit)."""
    entries = {}
    for metric in MultiProcessCollector.merge(files, accumulate=False):
        for sample in metric.samples:
            labels = sample.labels  # no pid: the merge drops it for min/max/sum gauges, the others never have one
            key = mmap_key(metric.name, sample.name, list(labels), list(labels.values()), metric.documentation)
            entries[key] = sample.value
    size = 8 + sum(metrics_files.entry_bytes(key) for key in entries)
    fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)
    out = MmapedDict(target)  # sized by the file, which holds every entry: it never grows
    try:
        for key, value in entries.items():
            out.write_value(key, value, 0.0)
    finally:
        out.close()


def compact(path: str, keep: Iterable[int], log, attempts: int = 5, pause: float = 0.01) -> int | None:
    """Merge the files of dead processes into the archives; the number of files removed, None if skipped.

    The exclusive lock is tried `attempts` times `pause` s apart, never waited for: the master must go on
    reaping and forking. A skipped compaction leaves everything as it was; the next one picks the files up."""
    groups = dead_files(path, keep)
    if not groups:
        return 0
    built = []  # (new archive, archive, merged files)
    try:
        for kind, files in sorted(groups.items()):
            archive = os.path.join(path, f"{kind}_{ARCHIVE}.db")
            sources = [archive, *files] if os.path.exists(archive) else files
            fresh = archive + ".new"  # not *.db: no scrape reads it
            built.append((fresh, archive, files))
            write_merged(sources, fresh)
        fd = os.open(os.path.join(path, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            for attempt in range(attempts):
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if attempt + 1 < attempts:
                        time.sleep(pause)
            else:
                log.warning("metrics compaction skipped: a scrape held the lock; the next worker exit catches up")
                return None
            for fresh, archive, files in built:
                os.replace(fresh, archive)
                for f in files:
                    os.unlink(f)
        finally:
            os.close(fd)
    finally:
        for fresh, _, _ in built:
            if os.path.exists(fresh):  # skipped, or failed part-way
                os.unlink(fresh)
    return sum(len(files) for files in groups.values())
