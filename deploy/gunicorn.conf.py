"""gunicorn settings for the gradient service; every value can be overridden from the environment.

Run: ``gunicorn -c deploy/gunicorn.conf.py service.wsgi:app``.  gunicorn binds to HOST:PORT here;
TORCH_THREADS, LOG_LEVEL, the limits, API keys etc. are read by the app itself.
"""

import errno
import fcntl
import gc
import json
import logging
import math
import os
import signal
import socket
import sys
import tempfile
import uuid

from gunicorn import glogging, util
from pythonjsonlogger.json import JsonFormatter


def _refuse(message):
    """Stop with one line on stderr and exit code 3, as the app does for a bad setting (service/wsgi.py).  A
    SystemExit passes through gunicorn's config loading (it catches only Exception), so its code is the exit code."""
    print(f"gradsvc: configuration error: {message} (deploy/gunicorn.conf.py)", file=sys.stderr, flush=True)
    raise SystemExit(3)


def _int(name, default, minimum=None, maximum=None, why=""):
    """Integer from the environment, with a clear error instead of a traceback deep in gunicorn (or its own "Value
    must be positive" and exit 1) for one that is not an integer or out of bounds (`why` says what they protect)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        _refuse(f"{name}={raw!r} is not an integer")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        if minimum is not None and maximum is not None:
            bounds = f"between {minimum} and {maximum}"
        else:
            bounds = f"at least {minimum}" if maximum is None else f"at most {maximum}"
        _refuse(f"{name}={value} must be {bounds}{why}")
    return value


def _bool(name, default=False):
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    _refuse(f"{name}={raw!r} is not a boolean (1/0, true/false, yes/no, on/off)")


# --- socket -----------------------------------------------------------------------------------------
# Loopback by default (behind the gateway); the container image sets HOST=0.0.0.0.  gunicorn took PORT=99999 to a
# traceback after preloading the app, PORT=0 to a random port, and an empty HOST to every interface (0.0.0.0), which
# must never be chosen by accident: the app port faces the gateway only (docs/operate.md).
def _bind(port):
    """HOST:PORT for gunicorn; an IPv6 address gets its brackets, and a name that resolves to nothing is refused here
    rather than after five failed binds."""
    raw = os.environ.get("HOST")
    if raw is None:
        return f"127.0.0.1:{port}"
    host = raw.strip()
    if not host:
        _refuse(
            "HOST is set but empty: unset it for the default 127.0.0.1 (loopback, behind the gateway), or name the "
            "address to bind (the container's 0.0.0.0 for every interface)"
        )
    address = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as err:
        _refuse(f"HOST={raw!r} is not an address to bind ({err})")
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


bind = [_bind(_int("PORT", 8000, minimum=1, maximum=65535, why=" (a TCP port; 0 would bind a random one)"))]

# --- forwarded headers ------------------------------------------------------------------------------
# The app trusts a gateway's X-Forwarded-* itself, and only when told to (TRUSTED_PROXY_HOPS: ProxyFix and the
# prefix guard, service/proxy.py). gunicorn's own trust (forwarded_allow_ips, default 127.0.0.1) let any local
# client set SCRIPT_NAME with a header of that name (forwarder_headers): `SCRIPT_NAME: /evil` made every request a
# 500 ("does not start with SCRIPT_NAME"), `SCRIPT_NAME: /v1` made /v1/gradients a 404; and its secure_scheme_headers
# set wsgi.url_scheme from X-Forwarded-Proto (a 400 beside a disagreeing X-Forwarded-Ssl). gunicorn trusts none of
# them now; both lists are emptied too, as a unix socket's peer is trusted whatever the addresses say.
forwarded_allow_ips = ""
forwarder_headers = ""
secure_scheme_headers = {}

# --- workers ----------------------------------------------------------------------------------------
# One sync worker per core: every request is CPU-bound torch work, so threads or async buy nothing and
# torch's own intra-op threads are pinned by the app (TORCH_THREADS, default 1).  In a container
# os.cpu_count() is the *host's* count, so the k8s/compose manifests set WEB_CONCURRENCY explicitly.
# With 0 gunicorn would listen with no worker to answer: every request would hang.  (A negative value never gets here:
# gunicorn reads WEB_CONCURRENCY itself before this file and stops with "Value must be positive" and exit 1.)
workers = _int("WEB_CONCURRENCY", os.cpu_count() or 1, minimum=1, why=" (one worker per core)")
worker_class = "sync"
threads = 1


def _require_temporary_directory():
    """gunicorn keeps each worker's heartbeat in a file of the temporary directory (tempfile's choice: TMPDIR, /tmp,
    /var/tmp, /usr/tmp, the working directory).  With none writable -- a read-only root filesystem without its tmpfs
    or emptyDir on /tmp -- the master died at its first fork ("Unhandled exception in main loop", exit 255)."""
    try:
        fd, path = tempfile.mkstemp(prefix="gradsvc-check-")
    except OSError as err:
        _refuse(
            f"no writable temporary directory ({err}): gunicorn keeps each worker's heartbeat file there; mount a "
            "tmpfs (Kubernetes: an emptyDir) on /tmp, or set TMPDIR to a writable directory"
        )
    os.close(fd)
    os.unlink(path)


_require_temporary_directory()


# A hard kill for a stuck worker, never the way a request ends: the app interrupts every request at
# MAX_WALL_SECONDS (default 10 s, service/deadline.py) and answers a 503 problem.  The sync worker's
# heartbeat stops while it serves a request, so the timeout must cover MAX_WALL_SECONDS plus writing the
# answer: the default is max(60, 3 x MAX_WALL_SECONDS), and a GUNICORN_TIMEOUT that leaves less than
# MAX_WALL_SECONDS + 10 s is refused. Both timeouts are at most a day: MAX_WALL_SECONDS is at most an hour, and at
# ~2e10 s gunicorn's workers crashed in their select() ("timestamp out of range"), forked again without end.
MAX_WALL_SECONDS_CEILING = 3600  # service/engine/limits.py's
MAX_TIMEOUT = 86400
_TIMEOUT_WHY = " (seconds; MAX_WALL_SECONDS is at most an hour)"


def _wall_seconds(default=10.0):
    """MAX_WALL_SECONDS as the app reads it; a malformed or out-of-bounds value falls back here and the app, loading
    next, refuses to start with its own one-line error (service/config.py)."""
    try:
        value = float(os.environ.get("MAX_WALL_SECONDS", "").strip() or default)
    except ValueError:
        return default
    return value if math.isfinite(value) and 0 <= value <= MAX_WALL_SECONDS_CEILING else default


_wall = _wall_seconds()
timeout = _int("GUNICORN_TIMEOUT", max(60, int(3 * _wall)), maximum=MAX_TIMEOUT, why=_TIMEOUT_WHY)
if timeout < _wall + 10:
    _refuse(
        f"GUNICORN_TIMEOUT={timeout} must be at least MAX_WALL_SECONDS + 10 s "
        f"({_wall:g} + 10): gunicorn would kill workers before the app answers 503"
    )
# On a stop signal (SIGTERM, SIGINT, SIGQUIT: post_worker_init) give in-flight requests this long; then the master
# kills the workers.  A request may take MAX_WALL_SECONDS and then write its answer, so, as for the timeout above,
# less than MAX_WALL_SECONDS + 10 s is refused (at 0 a SIGTERM cut off a request under way: an empty reply), and the
# default grows with MAX_WALL_SECONDS.  k8s terminationGracePeriodSeconds and compose's stop_grace_period are larger.
graceful_timeout = _int(
    "GUNICORN_GRACEFUL_TIMEOUT", max(30, math.ceil(_wall + 10)), maximum=MAX_TIMEOUT, why=_TIMEOUT_WHY
)
if graceful_timeout < _wall + 10:
    _refuse(
        f"GUNICORN_GRACEFUL_TIMEOUT={graceful_timeout} must be at least MAX_WALL_SECONDS + 10 s "
        f"({_wall:g} + 10): a stop signal would kill workers before their requests end"
    )
# Only used by gthread/async workers: the sync worker closes every connection after one response
# (which is fine behind nginx, which buffers and keeps its own client connections alive).
keepalive = _int("GUNICORN_KEEPALIVE", 5, minimum=0)

# Recycle workers now and then so slow leaks (allocator fragmentation in torch) cannot grow forever;
# the jitter keeps all workers from restarting at once.  Not too often: at 1000 +- 100 both workers
# restarted every ~2 s under load and throughput fell by a third (docs/performance.md); the 60 s soak at
# 32 connections (13,000 requests, tests/test_soak.py) shows no leak that would need more.
# 0 turns recycling off (gunicorn's meaning); a negative value is refused (gunicorn stopped with exit 1).
max_requests = _int("GUNICORN_MAX_REQUESTS", 20000, minimum=0)
max_requests_jitter = _int("GUNICORN_MAX_REQUESTS_JITTER", 2000, minimum=0)

# Preloading imports the app (and torch) once in the master and shares the pages with the workers.
# Measured here (2 workers, after 200 requests, PSS from /proc/PID/smaps_rollup, two rounds each):
#   preload off: master 13-15 MiB + workers 2 x 202-216 MiB = 417-448 MiB
#   preload on:  master 101-112 MiB + workers 2 x 126-129 MiB = 353-370 MiB  (-15 %), and a respawned
#   worker needs no torch import.  gunicorn#2478 reports a hang in torch kernels after fork when torch
#   ran ops (and started its thread pool) in the master; so the master runs none: it stays at one
#   thread (tests/test_live.py checks), and the warm-up pass runs in each worker.  GUNICORN_PRELOAD=0
#   turns it off.
preload_app = _bool("GUNICORN_PRELOAD", True)
if preload_app:
    # The master imports the app (and torch) but must run no torch op: create_app() skips its warm-up
    # pass and every worker runs it after the fork (post_fork below), so /readyz reports per worker.
    # WARM_UP has no effect here, but junk in it is refused all the same (the app parses it alike).
    _bool("WARM_UP", True)
    os.environ["WARM_UP"] = "0"
    # The import creates ~1M objects that live as long as the process; the cyclic garbage collector walking
    # them again and again during the import was ~0.2 s of the container's start.  So it is off until the
    # first fork (pre_fork).  Only when gunicorn itself loads this file (as module "__config__"): a test that
    # executes the file keeps its collector.
    if __name__ == "__config__":
        gc.disable()


def pre_fork(server, worker):
    """Collector back on before each fork; the objects the master holds (the preloaded app, torch) move to the
    permanent generation first, so the workers' collections neither walk them nor write to their pages (which
    would copy the master's pages into each worker)."""
    gc.freeze()
    gc.enable()


# --- logging ----------------------------------------------------------------------------------------
# stdout/stderr only; the container runtime / journald collects them.  The access log is the app's own
# JSON line per request (logger gradsvc.access, with the request id); GUNICORN_ACCESSLOG=- adds gunicorn's
# plain-text line as well (it cost ~6 % of a small request's time).
accesslog = "-" if os.environ.get("GUNICORN_ACCESSLOG", "off").strip().lower() in ("-", "on", "1", "stdout") else None
errorlog = "-"
_level = os.environ.get("GUNICORN_LOG_LEVEL", "").strip()
_level_name = "GUNICORN_LOG_LEVEL" if _level else "LOG_LEVEL"
_level = _level or os.environ.get("LOG_LEVEL", "").strip() or "info"
loglevel = _level.lower()
if loglevel not in glogging.Logger.LOG_LEVELS:  # gunicorn would log at INFO without a word
    _refuse(f"{_level_name}={_level!r} is not one of {', '.join(glogging.Logger.LOG_LEVELS)}")
# Request id from the gateway (X-Request-ID) next to the usual combined-log fields.
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" rid=%({x-request-id}i)s %(M)sms'


# gunicorn's own lines (start-up, worker boot and exit, "Worker failed to boot", the optional access line) in
# the app's JSON format (service/logformat.py; tests/test_edge_config.py checks the two agree).  A logger
# class rather than logconfig_dict: any logconfig_dict turns gunicorn's access line on unconditionally.
_JSON_FORMATTER = {
    "fmt": "%(levelname)s %(name)s %(message)s %(process)d",
    "rename_fields": {"levelname": "level", "name": "logger", "process": "pid"},
    "timestamp": "time",
}


class JsonLogger(glogging.Logger):
    """gunicorn's Logger with every handler it sets up writing JSON lines."""

    def setup(self, cfg):
        super().setup(cfg)
        formatter = JsonFormatter(**_JSON_FORMATTER)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(formatter)


logger_class = JsonLogger


# gunicorn's own error answers -- a request line, method or header it refuses, too many header fields, a crash
# outside the app -- are HTML pages by default.  They become problem+json like the app's (and the gateway's):
# nginx cannot replace them selectively, because proxy_intercept_errors acts on the status alone and the app
# answers 400 and 413 with problems of its own (docs/edge.md).  The request was never parsed, so its id is a
# new one, written to gunicorn's log line beside the status.
def write_problem(sock, status_int, reason, mesg):
    """Drop-in for gunicorn.util.write_error: the same status line, a problem+json body."""
    request_id = uuid.uuid4().hex
    body = json.dumps(
        {
            "type": "about:blank",
            "title": reason,
            "status": status_int,
            "detail": mesg or reason,
            "instance": None,
            "request_id": request_id,
        }
    ).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/problem+json\r\n"
        f"Content-Length: {len(body)}\r\nX-Request-ID: {request_id}\r\n\r\n"
    )
    logging.getLogger("gunicorn.error").info("answered %d %s", status_int, reason, extra={"request_id": request_id})
    util.write_nonblock(sock, head.encode("latin1") + body)


util.write_error = write_problem  # the workers call it through the module, so this replaces every use

# --- gunicorn 27 control socket -----------------------------------------------------------------------
# gunicorn >= 25.1 opens ~/.gunicorn/gunicorn.ctl by default: several gunicorns on one host share that
# path, and a container user without a writable home logs "Permission denied".  Nothing here uses it.
control_socket_disable = True


# --- Prometheus multiprocess mode -------------------------------------------------------------------
EMPTIED_BY = "GRADSVC_METRICS_EMPTIED_BY"  # the pid of the master that emptied the directory
MASTER_LOCK = "master.lock"  # flock'ed by the master using the directory, for its whole life
LOCK_FD = "GRADSVC_METRICS_LOCK_FD"  # the master's descriptor of it (kept across SIGHUP, handed on at USR2)
# A process's metric files, one per kind as prometheus_client names them (<kind>_<pid>.db), each 64 KiB at first:
# a worker's are allocated as it starts (post_fork), so that a full volume stops it there with one line, not with a
# SIGBUS later (service/metrics_files.py). tests/test_metrics_volume.py checks a worker writes no other file.
METRIC_FILES = ("counter", "gauge_livesum", "gauge_liveall", "gauge_max", "histogram")
METRIC_FILE_BYTES = 64 * 1024
PROCESS_METRIC_BYTES = len(METRIC_FILES) * METRIC_FILE_BYTES  # 320 KiB
# What the directory holds in a steady state, measured (docs/operate.md, "Metrics volume"; bench/metrics_dir.py) with
# workers that saw every route with every method and error status. The check at start requires it all: it admitted
# (workers + 1) x 320 KiB, and a server on such a volume stopped at its first worker recycle (an audit).
MASTER_METRIC_BYTES = PROCESS_METRIC_BYTES  # measured 256 KiB: four files that never grow (the master serves nothing)
WORKER_GROWN_BYTES = 512 * 1024  # measured 384 KiB (the histogram grown to 128 KiB); room for it to double once more
ARCHIVE_BYTES = 384 * 1024  # the merged counter, max gauge and histogram: at most a grown worker's three (~110 KiB)


def metrics_space_needed(workers: int) -> int:
    """Bytes the metrics directory needs free at start: the master's files, every worker's at their grown size, the
    archives and the new ones compaction builds beside them (sized by the bytes in use, service/metrics_compact.py),
    and one recycle's headroom: a dead worker's files until they are merged, or a replacement's when a scrape made
    the master skip the merge. A volume with this much never stops the server at a recycle."""
    return MASTER_METRIC_BYTES + workers * WORKER_GROWN_BYTES + 2 * ARCHIVE_BYTES + WORKER_GROWN_BYTES


def _empty_multiproc_dir() -> None:
    """Start every master with an empty PROMETHEUS_MULTIPROC_DIR: stale *.db files from a previous run
    would otherwise be summed into the new counters.  Runs when the master loads this file, before the
    preloaded app creates its metrics there (an on_starting hook would run after that).  Once per master:
    gunicorn loads this file again on every SIGHUP, while the master and the workers still write their files,
    and emptying then dropped every counter to zero (the marker in the environment says this master did it).
    Only the service's own files go (prometheus_client's *.db, the compaction's lock and *.db.new): a directory
    holding anything else is refused, not emptied (pointed at /tmp or a home directory, it deleted everything).
    A directory another live master uses is refused too (_lock_multiproc_dir): emptying it deleted that master's
    files, and both then wrote one set of counters. So is one that cannot be written (a read-only filesystem: it
    was a traceback and exit 1) or has no room for the master's and the workers' files (a small tmpfs: the workers
    died of SIGBUS, one after the other, without end)."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path or os.environ.get(EMPTIED_BY) == str(os.getpid()):
        return
    try:
        os.makedirs(path, exist_ok=True)
        entries = [e for e in os.scandir(path) if e.name != MASTER_LOCK]
        foreign = sorted(e.name for e in entries if not (e.is_file(follow_symlinks=False) and _metrics_file(e.name)))
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            _refuse(
                f"PROMETHEUS_MULTIPROC_DIR={path!r} holds files the service did not write ({shown}); "
                "it is emptied at every start: give the metrics a directory of their own"
            )
        _lock_multiproc_dir(path)
        os.environ[EMPTIED_BY] = str(os.getpid())
        for entry in entries:
            os.unlink(entry.path)
    except OSError as exc:
        _refuse(_metrics_dir_trouble(path, exc, 0))
    needed = metrics_space_needed(workers)
    if _free_bytes(path) < needed:
        _refuse(_metrics_dir_trouble(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), needed))


def _free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _metrics_dir_trouble(path: str, exc: OSError, needed: int) -> str:
    """One line saying what is wrong with the metrics directory and what to do."""
    where = f"PROMETHEUS_MULTIPROC_DIR={path!r}"
    if exc.errno == errno.ENOENT:
        return f"{where} is gone ({exc.strerror}): was it deleted while the server ran? Restart the server"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"{where} has no room for the metric files: {needed // 1024} KiB needed, {_free_bytes(path) // 1024} KiB "
            f"free (each gunicorn process allocates {PROCESS_METRIC_BYTES // 1024} KiB there as it starts, a worker's "
            f"grow to {WORKER_GROWN_BYTES // 1024} KiB, and recycled workers' are merged into archives beside them); "
            'give the metrics a volume of their own (docs/operate.md, "Metrics volume")'
        )
    return f"{where} is not a writable directory ({exc.strerror}: {exc.filename!r}): mount a writable volume there"


def _lock_multiproc_dir(path: str) -> None:
    """An exclusive flock on MASTER_LOCK, never released: the kernel drops it when the master's descriptor is
    closed, i.e. when it has exited, however it ended (its workers close their copies: post_fork).  The
    descriptor is a bare fd, not a file object a reloaded config could garbage-collect.  A master
    started by USR2 inherits its parent's descriptor (pre_exec below): the same open file, so its flock succeeds."""
    lock_path = os.path.join(path, MASTER_LOCK)
    fd = _inherited_lock(lock_path)
    if fd is None:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        _refuse(
            f"PROMETHEUS_MULTIPROC_DIR={path!r} is in use by another running gunicorn master (pid {holder}), which "
            "this start would have emptied: give each server a directory of its own"
        )
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    os.environ[LOCK_FD] = str(fd)


def _inherited_lock(lock_path: str):
    """The lock's descriptor handed on by a USR2 parent, if LOCK_FD names one open on that very file."""
    try:
        fd = int(os.environ.get(LOCK_FD, ""))
        same = os.path.samestat(os.fstat(fd), os.stat(lock_path))
    except (ValueError, OSError):
        return None
    return fd if same else None


def pre_exec(server):
    """USR2: gunicorn forks and execs a new master, which loads this file with the old one still running; it gets
    the lock's descriptor (the environment it execs with is gunicorn's copy from before this file ran)."""
    fd = os.environ.get(LOCK_FD)
    if fd:
        os.set_inheritable(int(fd), True)
        server.cfg.env_orig[LOCK_FD] = fd


def _metrics_file(name: str) -> bool:
    return name.endswith((".db", ".db.new")) or name == "compact.lock"


_empty_multiproc_dir()


def child_exit(server, worker):
    """Tell prometheus_client a worker is gone, so its live gauges stop being reported, and merge the counter,
    histogram and max-gauge files of every dead worker into archive files (service/metrics_compact.py): they
    piled up at ~20 KiB a recycled worker, and every scrape read all of them.

    gunicorn 27's Arbiter.reap_workers pops the worker from server.WORKERS after waitpid() has reaped it, then
    calls this hook; it runs in the master's main loop (Arbiter.run -> handle_chld; the signal handlers only
    queue), and the replacement is forked later in that loop (manage_workers -> spawn_worker). So no process
    forked by this master can have a dead worker's pid while its files are merged. "Dead" is every pid in the
    directory but the master's and the live workers' (a compaction that was skipped is caught up), which no
    process is running (one that gunicorn did not fork, e.g. after USR2, keeps its files)."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        return
    from prometheus_client import multiprocess  # imported lazily: only needed in multiprocess mode

    multiprocess.mark_process_dead(worker.pid)
    try:
        from service import metrics_compact

        others = ("reexec_pid", "master_pid", "dirty_arbiter_pid")  # a USR2 child or parent, gunicorn 27's arbiter
        keep = {os.getpid(), *server.WORKERS, *(getattr(server, name, 0) for name in others)}
        metrics_compact.compact(path, keep, server.log)
    except OSError as exc:  # a full or vanished volume: one line, not a traceback at every worker exit
        server.log.warning("metrics compaction failed (%s); the files stay until the next worker exit", exc)
    except Exception:  # never take the master down (an exception here ends its main loop): the files just stay
        server.log.exception("metrics compaction failed; the files stay until the next worker exit")


# A leaving worker (recycled by max_requests or the memory guard, or stopped by SIGTERM) skips Python's
# finalization. The master starts the replacement only once the old worker is gone. Freeing everything torch
# imported took ~0.2 s, and the slot stood empty all that time. GUNICORN_FAST_EXIT=0 keeps the full exit, for
# tools that write their results at interpreter exit (coverage, profilers).
if _bool("GUNICORN_FAST_EXIT", True):

    def worker_exit(server, worker):
        """gunicorn calls this last, in the worker, while its SystemExit propagates: leave now, with the same exit
        status (3 and 4 make the master halt) and the logs flushed."""
        leaving = sys.exc_info()[1]
        if not isinstance(leaving, SystemExit) or not isinstance(leaving.code, (int, type(None))):
            return  # anything else: Python's own exit
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(leaving.code or 0)


def post_worker_init(worker):
    """The app is loaded in this worker: let its memory guard recycle the worker (service/memory.py).

    SIGINT and SIGQUIT stop the worker as SIGTERM does, after the request under way.  gunicorn's own handler for them
    exits at once (sys.exit inside the request): the client got a 500 whose request id was not its own, and a
    SystemExit traceback was logged.  The master sends SIGQUIT to its workers on SIGINT or SIGQUIT (`docker run`
    forwards Ctrl-C as SIGINT), so every stop signal now lets requests finish, within graceful_timeout."""
    for stop in (signal.SIGINT, signal.SIGQUIT):
        signal.signal(stop, worker.handle_exit)
        signal.siginterrupt(stop, False)  # as gunicorn does for SIGTERM: no system call of a request is interrupted
    memory = sys.modules.get("service.memory")  # only our app
    if memory is not None:
        memory.watch_worker(worker)


def _close_lock_in_worker() -> None:
    """Only the master holds MASTER_LOCK: a worker closes its inherited copy of the descriptor (the flock lives on
    in the master's). Workers orphaned by a SIGKILLed master held the lock until they noticed, up to 30 s, and a
    restart on the directory was refused, naming the dead master."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    fd = _inherited_lock(os.path.join(path, MASTER_LOCK)) if path else None
    if fd is not None:
        os.close(fd)


def _reserve_metric_files(worker) -> None:
    """This worker's metric files created with their space allocated, before anything writes a metric (with
    preload_app, the warm-up; without it, the app's import). A worker that finds no room (or no directory) logs one
    line and exits 3, gunicorn's "worker failed to boot": the master stops, where workers died of SIGBUS and were
    forked again without end (a full tmpfs), or answered 500s (a deleted directory)."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        return
    try:
        for kind in METRIC_FILES:
            fd = os.open(os.path.join(path, f"{kind}_{worker.pid}.db"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                os.posix_fallocate(fd, 0, METRIC_FILE_BYTES)
            finally:
                os.close(fd)
    except OSError as exc:
        worker.log.error("worker failed to boot: %s", _metrics_dir_trouble(path, exc, PROCESS_METRIC_BYTES))
        sys.exit(3)


def post_fork(server, worker):
    """The lock's descriptor closed in the worker and its metric files allocated; with preload_app, torch warmed up
    in each worker, never in the master (gunicorn#2478)."""
    _close_lock_in_worker()
    _reserve_metric_files(worker)
    warmup = sys.modules.get("service.warmup")  # only our app (the bench's baselines use this file too)
    if preload_app and warmup is not None:
        # gunicorn installs the worker's signal handlers after this hook; until then the master's copies would
        # swallow a stop signal, and the worker would warm up, serve, and be killed only at graceful_timeout
        # (a container stopped while starting took 30 s). Remembered instead: the worker leaves once warm.
        for stop in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(stop, lambda *_: setattr(worker, "alive", False))
        warmup.warm_up(_int("TORCH_THREADS", 1))
