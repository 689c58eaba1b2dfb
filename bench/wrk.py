"""Run wrk (Debian's wrk 4.1) with a generated Lua script that POSTs JSON bodies and prints a JSON summary."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

LUA = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local bodies = {
%(bodies)s
}
local i = 0
request = function()
  i = i %% #bodies + 1
  return wrk.format(nil, %(path)s, nil, bodies[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'JSON:{"requests":%%d,"duration_us":%%d,"connect":%%d,"read":%%d,"write":%%d,"status":%%d,"timeout":%%d,' ..
    '"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,"mean_us":%%f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
"""


def lua_script(bodies: list[bytes], path: str) -> str:
    items = []
    for body in bodies:
        text = body.decode()
        if "]==]" in text:
            raise ValueError("body contains the Lua long-bracket terminator")
        items.append("[==[" + text + "]==]")
    return LUA % {"bodies": ",\n".join(items), "path": json.dumps(path)}


def run(url: str, path: str, bodies: list[bytes], connections: int, seconds: float, timeout: float = 10) -> dict:
    """One bounded wrk run; returns requests/s, latency percentiles (ms) and error counts."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(lua_script(bodies, path))
        script = f.name
    try:
        threads = min(2, connections)
        duration = f"-d{max(1, round(seconds))}s"
        cmd = ["wrk", f"-t{threads}", f"-c{connections}", duration, f"--timeout={timeout}s", "-s", script, url]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + timeout + 30)
    finally:
        Path(script).unlink(missing_ok=True)
    line = next((out for out in proc.stdout.splitlines() if out.startswith("JSON:")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no summary (rc {proc.returncode}): {proc.stdout[-500:]} {proc.stderr[-500:]}")
    raw = json.loads(line[5:])
    secs = raw["duration_us"] / 1e6
    errors = raw["connect"] + raw["read"] + raw["write"] + raw["timeout"]
    return {
        "rps": raw["requests"] / secs,
        "requests": raw["requests"],
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "mean_ms": raw["mean_us"] / 1000,
        "socket_errors": errors,
        "non_2xx": raw["status"],
    }
