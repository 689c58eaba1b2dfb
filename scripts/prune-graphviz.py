"""Remove from an image what Graphviz's `dot -Tsvg` never loads, print what went and its size, check dot still works.

Run as root by the Dockerfile's runtime stage, after Graphviz is installed.  The service runs one Graphviz
command, `dot -Tsvg` (service/render_svg.py), which needs the `dot` layout, the `core` plugin (the SVG writer)
and `pango` (text metrics for the labels, through cairo and fontconfig).  What goes:
  - the other plugins: gd (bitmaps through libgd, which drags in libheif/libavif and their AV1/HEVC codecs),
    webp, xlib, visio, neato_layout; the plugin list (config6a) is regenerated with `dot -c`;
  - Graphviz's other programs (gvpr, gvmap, lefty, neato, ...): only `dot` is run;
  - every shared library that only those needed: a library goes only if no remaining ELF file in the image
    (programs, libraries, the venv's torch and numpy, Python's extension modules) lists it in `ldd`.
Then `dot -Tsvg` draws a labelled graph, and `ldd` of dot and the kept plugins must resolve every library.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

KEEP_PLUGINS = ("core", "dot_layout", "pango")
ROOTS = ("/usr", "/opt")  # /lib, /bin, /sbin are links into /usr (merged /usr)
PROBE = 'digraph { node [fontname="monospace"]; a [label="x = 6.7"]; a -> b [label="grad"]; }'


def is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def ldd(path: Path) -> set[Path]:
    """The resolved shared libraries `path` loads, transitively (empty for static or non-loadable files)."""
    out = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=False).stdout
    libs = set()
    for line in out.splitlines():
        parts = line.split("=>")
        if len(parts) == 2 and parts[1].strip().startswith("/"):
            libs.add(Path(parts[1].split()[0]).resolve())
    return libs


def size_mb(paths: list[Path]) -> float:
    return sum(p.lstat().st_size for p in paths if p.exists() or p.is_symlink()) / 1e6


def graphviz_programs() -> list[Path]:
    """Graphviz's programs other than dot (from dpkg's file list when there is one)."""
    listed = subprocess.run(["dpkg", "-L", "graphviz"], capture_output=True, text=True, check=False).stdout
    return [Path(p) for p in listed.splitlines() if p.startswith("/usr/bin/") and p != "/usr/bin/dot"]


def main() -> int:
    dot = Path(subprocess.run(["sh", "-c", "command -v dot"], capture_output=True, text=True).stdout.strip())
    plugin_dir = next(Path("/usr/lib").rglob("libgvplugin_core.so*")).parent
    plugins = list(plugin_dir.glob("libgvplugin_*.so*"))
    drop_plugins = [p for p in plugins if not any(f"libgvplugin_{k}.so" in p.name for k in KEEP_PLUGINS)]
    programs = [p for p in graphviz_programs() if p.exists() or p.is_symlink()]
    dropped = set(drop_plugins) | set(programs)
    # candidates: the libraries the dropped files load, minus those anything else in the image loads
    candidates = set().union(*(ldd(p) for p in dropped if not p.is_symlink()))
    candidates -= {p.resolve() for p in dropped}
    for kept in [dot, *(p for p in plugins if p not in dropped)]:  # dlopen()ed plugins: no one lists them
        candidates -= {kept.resolve(), *ldd(kept)}
    seen = set()
    for root in ROOTS:
        for dirpath, _, files in os.walk(root):
            for name in files:
                path = Path(dirpath, name)
                real = path.resolve()
                if path in dropped or real in candidates or real in seen or path.is_symlink() or not is_elf(path):
                    continue
                seen.add(real)
                candidates -= ldd(path)
    libs = sorted(candidates)
    links = [
        p for d in {lib.parent for lib in libs} for p in d.iterdir() if p.is_symlink() and p.resolve() in candidates
    ]

    print("prune-graphviz: removing what `dot -Tsvg` never loads")
    for label, paths in (
        (f"plugins {' '.join(sorted({p.name.split('.')[0][12:] for p in drop_plugins}))}", drop_plugins),
        (f"{len(programs)} Graphviz programs besides dot", programs),
        (f"{len(libs)} libraries only those load: {' '.join(p.name.split('.so')[0] for p in libs)}", libs + links),
    ):
        print(f"  {size_mb(paths):6.1f} MB  {label}")
        for p in paths:
            p.unlink()
    for config in plugin_dir.glob("config*"):  # rewritten for the plugins that are left
        config.unlink()
    subprocess.run([str(dot), "-c"], check=True)
    for path in [dot, *plugin_dir.glob("libgvplugin_*.so.*")]:
        lines = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=False).stdout.splitlines()
        missing = [line for line in lines if "not found" in line]
        if missing:
            print(f"prune-graphviz: {path} lost {missing}", file=sys.stderr)
            return 1
    svg = subprocess.run([str(dot), "-Tsvg"], input=PROBE, capture_output=True, text=True, check=False)
    if svg.returncode != 0 or "<svg" not in svg.stdout or "x = 6.7" not in svg.stdout or svg.stderr:
        print(f"prune-graphviz: dot -Tsvg broke: {svg.returncode} {svg.stderr[-500:]}", file=sys.stderr)
        return 1
    print("prune-graphviz: dot -Tsvg still draws a labelled graph")
    return 0


if __name__ == "__main__":
    sys.exit(main())
