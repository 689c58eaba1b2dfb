"""The container image: its size, and cold start (`podman run` until /readyz answers 200) over several rounds.

Needs podman and an image built by `make image-test` (IMAGE, default localhost/gradsvc:test); without them
the section reports why it was skipped. Containers run with the host network on a free 127.0.0.1 port,
read-only root and a tmpfs /tmp, as scripts/image-test.sh runs them; each is removed after its round.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time

import requests

from .servers import ROOT, free_port

IMAGE = os.environ.get("IMAGE", "localhost/gradsvc:test")


def podman(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(ROOT / "deploy" / "containers.conf"))}
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, env=env)


def measure(rounds: int, image: str = IMAGE, timeout: float = 60) -> dict:
    if shutil.which("podman") is None:
        return {"skipped": "podman is not installed (Debian package podman)"}
    inspect = podman("image", "inspect", "--format", "{{.Size}}", image)
    if inspect.returncode != 0:
        return {"skipped": f"no image {image}: run `make image-test` first"}
    starts = []
    for r in range(rounds):
        port, name = free_port(), f"gradsvc-bench-{os.getpid()}-{r}"
        url = f"http://127.0.0.1:{port}/readyz"
        start = time.monotonic()
        try:
            run = podman(
                "run",
                "-d",
                "--name",
                name,
                "--network",
                "host",
                "--read-only",
                "--tmpfs",
                "/tmp:rw,size=64m,mode=1777",
                "-e",
                "HOST=127.0.0.1",
                "-e",
                f"PORT={port}",
                image,
            )
            if run.returncode != 0:
                raise RuntimeError(f"podman run failed: {run.stderr[-500:]}")
            while True:
                try:
                    if requests.get(url, timeout=1).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() - start > timeout:
                    raise RuntimeError(f"{image} not ready within {timeout} s")
                time.sleep(0.02)
            starts.append(time.monotonic() - start)
        finally:
            podman("rm", "-f", "--time", "5", name)
        print(f"  image round {r + 1}: start to ready {starts[-1]:.2f} s", file=sys.stderr, flush=True)
    return {
        "image": image,
        "size_mb": int(inspect.stdout.strip()) / 1e6,
        "start_to_ready_s": starts,
        "start_to_ready_median_s": statistics.median(starts),
    }


def report(result: dict) -> str:
    if "skipped" in result:
        return f"\n### Image\n\nskipped: {result['skipped']}"
    times = ", ".join(f"{t:.2f}" for t in result["start_to_ready_s"])
    return (
        f"\n### Image\n\n{result['image']}: {result['size_mb']:.0f} MB; "
        f"container start (podman run) to /readyz 200: median {result['start_to_ready_median_s']:.2f} s ({times})"
    )
