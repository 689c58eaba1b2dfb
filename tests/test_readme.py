"""The curl examples of README.md and docs/*.md, run for real against gunicorn: the output must be what is shown.

Also: no document links outside the repository (a clone has nothing beside it).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from conftest import require_binary

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```console\n(.*?)```", re.S)
LINK = re.compile(r"\]\(([^)#]+)")


def examples() -> list[tuple[str, str]]:
    found = []
    for block in (block for doc in DOCS for block in BLOCK.findall(doc.read_text())):
        command, _, output = block.partition("\n")
        assert command.startswith("$ curl "), command
        found.append((command[2:], output.strip()))
    return found


def test_docs_have_examples():
    assert len(examples()) >= 9


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_links_stay_inside_the_repository(doc):
    text = doc.read_text()
    assert "../shared" not in text and "/work/" not in text
    for target in LINK.findall(text):
        if "://" not in target:
            path = (doc.parent / target).resolve()
            assert path.is_relative_to(ROOT) and path.exists(), f"{doc.name}: broken link {target}"


@pytest.mark.live
@pytest.mark.parametrize(("command", "expected"), examples(), ids=lambda v: v[:70] if v.startswith("curl") else "")
def test_readme_example(live_server, command, expected):
    require_binary("curl", package="curl")
    argv = [arg.replace("localhost:8000", live_server.url.removeprefix("http://")) for arg in shlex.split(command)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout
    assert json.loads(out) == json.loads(expected)
