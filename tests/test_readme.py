"""The README's curl examples, run for real against gunicorn: their output must be exactly what is shown."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"```console\n(.*?)```", re.S)


def examples() -> list[tuple[str, str]]:
    found = []
    for block in BLOCK.findall(README.read_text()):
        command, _, output = block.partition("\n")
        assert command.startswith("$ curl "), command
        found.append((command[2:], output.strip()))
    return found


def test_readme_has_examples():
    assert len(examples()) >= 8


@pytest.mark.live
@pytest.mark.parametrize(("command", "expected"), examples(), ids=lambda v: v[:70] if v.startswith("curl") else "")
def test_readme_example(live_server, command, expected):
    argv = [arg.replace("localhost:8000", live_server.url.removeprefix("http://")) for arg in shlex.split(command)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout
    assert json.loads(out) == json.loads(expected)
