"""gunicorn servers for the benchmark: the deploy config, a free 127.0.0.1 port, own process group, PSS from /proc."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
APPS = {
    "service": "service.wsgi:app",
    "naive": "bench.baselines.naive:app",
    "bare": "bench.baselines.bare:app",
    "naive_grading": "bench.baselines.naive_grading:app",
    "floor": "bench.baselines.floor:app",
}
# Every app runs under the deploy config unchanged (its post_fork hook warms torch up only in our app).
APP_ENV: dict[str, dict[str, str]] = {}
# Process groups of every gunicorn started here and every nginx bench/gateway.py starts (each leads its own
# group): the test suite checks at the end of the run that none of them is still alive (tests/conftest.py).
STARTED_GROUPS: set[int] = set()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One gunicorn master (deploy/gunicorn.conf.py) serving `target`; stop() kills only its own process group."""

    def __init__(
        self,
        name: str,
        workers: int = 2,
        env: dict | None = None,
        log_dir: Path | None = None,
        deploy_config: bool = True,
    ) -> None:
        self.name = name
        self.deploy_config = deploy_config
        self.target = APPS[name]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "WEB_CONCURRENCY": str(workers),
            **APP_ENV.get(name, {}),
            **(env or {}),
        }
        self.log_path = (log_dir / f"{name}-{self.port}.log") if log_dir else None
        self.command_prefix: list[str] = []  # e.g. a wrapper that runs gunicorn in its own namespaces (tests)
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0

    def spawn(self) -> None:
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self.started_at = time.monotonic()
            # deploy_config=False: as the handler's author would run it, `gunicorn -w 2 app:app` (plus a free
            # loopback port, and no gunicorn 27 control socket, which several gunicorns on one host would share)
            config = (
                ["-c", "deploy/gunicorn.conf.py"]
                if self.deploy_config
                else ["-w", self.env["WEB_CONCURRENCY"], "-b", f"127.0.0.1:{self.port}", "--no-control-socket"]
            )
            self.proc = subprocess.Popen(
                [*self.command_prefix, sys.executable, "-m", "gunicorn", *config, self.target],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            STARTED_GROUPS.add(self.proc.pid)
        finally:
            if self.log_path:
                log.close()

    def wait_ready(self, timeout: float = 60) -> float:
        """Seconds from spawn until /readyz answers 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name}: gunicorn exited with {self.proc.returncode}")
            try:
                if requests.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - self.started_at
            except requests.RequestException:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{self.name}: not ready within {timeout}s")

    def start(self, timeout: float = 60) -> Server:
        """Spawn and wait for /readyz; if that fails (or is interrupted), nothing is left running."""
        try:
            self.spawn()
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def worker_pids(self) -> list[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(p) for p in path.read_text().split()] if path.exists() else []

    def wait_workers(self, n: int, timeout: float = 60) -> None:
        """Until the master has n workers and all of them have stopped booting (CPU time flat for 0.3 s)."""
        deadline = time.monotonic() + timeout
        last: dict[int, int] = {}
        while time.monotonic() < deadline:
            pids = self.worker_pids()
            now = {pid: cpu_ticks(pid) for pid in pids}
            if len(pids) >= n and now == last:
                return
            last = now
            time.sleep(0.3)
        raise RuntimeError(f"{self.name}: {n} idle workers not seen within {timeout}s")

    def pss_mib(self) -> dict:
        """PSS of the master and each worker, in MiB (smaps_rollup; shared pages are split between sharers)."""
        out = {"master": pss_mib(self.proc.pid)}
        for i, pid in enumerate(self.worker_pids()):
            out[f"worker{i + 1}"] = pss_mib(pid)
        out["total"] = sum(out.values())
        return out

    def stop(self) -> None:
        """SIGTERM to the whole process group (master and workers), SIGKILL after 30 s; also after the master died."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        try:  # workers orphaned by a master that died (e.g. kill -9) are still in its group
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0


def proc_mib(pid: int, file: str, key: str) -> float | None:
    """A `key:  N kB` line of /proc/<pid>/<file> in MiB (e.g. smaps_rollup's Pss:, status's VmRSS:); None if gone."""
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return None


def pss_mib(pid: int) -> float:
    return proc_mib(pid, "smaps_rollup", "Pss:") or 0.0
