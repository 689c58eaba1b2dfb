"""docs/operate.md's "Every variable, in one table" against the code, both ways: every environment variable the
code reads is in the table, and every name in the table is read somewhere (the table once listed two variables
nothing read, and missed six that were)."""

from __future__ import annotations

import re
from dataclasses import fields

from conftest import ROOT
from service.engine.limits import Limits

# os.environ.get("X"), os.environ["X"], os.getenv("X"), env.get("X") and the config helpers as_int("X", ...),
# as_float, as_bool, as_log_level, _int, _bool (service/config.py, deploy/gunicorn.conf.py)
PYTHON_READ = re.compile(
    r"(?:environ\.get|environ\[|getenv|env\.get|as_int|as_float|as_bool|as_log_level|_int|_bool)\(?\s*"
    r"[\"']([A-Z][A-Z0-9_]+)[\"']"
)
SHELL_READ = re.compile(r"\$\{+([A-Z][A-Z0-9_]+)[:}]")  # ${X:-default}, $${X:-default} in a Makefile
# the interpreter's and the shell's own (the Dockerfile sets them, the examples extend PYTHONPATH)
STANDARD = {"PATH", "LANG", "PYTHONPATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}
# what a WSGI environ carries, not the process environment
WSGI = {"CONTENT_LENGTH", "PATH_INFO", "REMOTE_ADDR", "REQUEST_METHOD", "SCRIPT_NAME"}


def table_names() -> set[str]:
    text = (ROOT / "docs" / "operate.md").read_text()
    table = text[text.index("## Environment variables") :]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert len(rows) > 40
    return {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split("|")[1])}


def python_reads(paths) -> set[str]:
    names = {m for path in paths for m in PYTHON_READ.findall(path.read_text())}
    return {n for n in names if not n.startswith("HTTP_")} - WSGI


def code_names() -> set[str]:
    service = python_reads([*(ROOT / "service").rglob("*.py"), ROOT / "deploy" / "gunicorn.conf.py"])
    service |= {f.name.upper() for f in fields(Limits)}  # service/config.py: every Limits field by its name
    client = python_reads((ROOT / "gradsvc").glob("*.py"))
    render = set(re.findall(r"GATEWAY_[A-Z_]+[A-Z]", (ROOT / "deploy" / "nginx" / "render.py").read_text()))
    examples = python_reads((ROOT / "examples").rglob("*.py")) | {
        m
        for path in (ROOT / "examples").rglob("*")
        if path.is_file() and path.suffix not in (".json", ".yaml", ".md", ".py")
        for m in SHELL_READ.findall(path.read_text())
    }
    dockerfile = set(re.findall(r"^\s+([A-Z][A-Z0-9_]+)=", (ROOT / "Dockerfile").read_text(), re.M))
    tests = {n for n in python_reads(ROOT.joinpath("tests").glob("*.py")) if n.startswith("GRADSVC_")}
    assert {"MAX_BODY_BYTES", "WEB_CONCURRENCY", "GRADSVC_URL", "GATEWAY_LARGE_BODIES", "GRADE_ROOT"} <= (
        service | client | render | examples
    )
    assert "OMP_NUM_THREADS" in dockerfile and "GRADSVC_LIVE_URL" in tests
    return service | client | render | ((examples | dockerfile) - STANDARD) | tests


def test_every_variable_the_code_reads_is_in_the_table():
    missing = code_names() - table_names()
    assert not missing, f"read by the code, missing from docs/operate.md's table: {sorted(missing)}"


def test_every_variable_in_the_table_is_read_somewhere():
    stale = table_names() - code_names()
    assert not stale, f"in docs/operate.md's table, read nowhere: {sorted(stale)}"
