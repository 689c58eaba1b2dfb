"""The two plots of docs/performance.md, drawn from a bench/results.json (python -m bench.plots [results.json])."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .servers import ROOT  # noqa: E402

COLORS = {"service": "tab:green", "naive": "tab:orange", "bare": "tab:gray"}


def _finish(fig, ax, title: str, note: str, path: Path) -> str:
    """Title, legend, the machine note at the bottom; save as PNG and close."""
    ax.set_title(title, fontsize=11)
    ax.legend(fontsize=8)
    fig.text(0.01, 0.01, note, fontsize=7, color="dimgray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return str(path)


def _runs_at(runs_by_conns: dict, conns: int) -> list[dict]:
    """The runs at one connection count; results read back from JSON have str keys, fresh ones int keys."""
    return runs_by_conns.get(conns) or runs_by_conns[str(conns)]


def draw(results: dict, out_dir: Path) -> list[str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    machine = results.get("machine", {})
    note = f"{machine.get('cores', '?')} cores, {machine.get('cpu', '')}; gunicorn 2 sync workers; medians"
    if "throughput" in results:
        rows = results["throughput"]["summary"]
        runs = results["throughput"]["runs"]
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        conns = [r["c"] for r in rows]
        for target in ("service", "naive", "bare"):
            med = [r[f"{target}_rps"] for r in rows]
            lo = [min(x["rps"] for x in _runs_at(runs[target], c)) for c in conns]
            hi = [max(x["rps"] for x in _runs_at(runs[target], c)) for c in conns]
            ax.plot(
                conns,
                med,
                marker="o",
                color=COLORS[target],
                label={
                    "service": "service (neuron, graph included)",
                    "naive": "naive Flask+torch handler",
                    "bare": "bare Flask, constant JSON",
                }[target],
            )
            ax.fill_between(conns, lo, hi, color=COLORS[target], alpha=0.15)
        ax.set_xscale("log", base=2)
        ax.set_xticks(conns, [str(c) for c in conns])
        ax.set_xlabel("wrk connections")
        ax.set_ylabel("requests/s (band: min-max over rounds)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        written.append(
            _finish(fig, ax, "Single neuron request: throughput against concurrency", note, out_dir / "throughput.png")
        )
    if "samples" in results:
        rows = results["samples"]["summary"]
        labels = [k for k in rows[0] if k != "n"]
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        styles = {0: ("tab:green", "-"), 1: ("tab:green", "--"), 2: ("tab:orange", "-")}
        for i, label in enumerate(labels):
            color, line = styles.get(i, ("tab:blue", ":"))
            ax.plot(
                [r["n"] for r in rows],
                [r[label]["us_per_sample"] for r in rows],
                marker="o",
                color=color,
                linestyle=line,
                label=label,
            )
        if "throughput" in results:  # one-sample requests at full concurrency, for scale
            best = max(r["service_rps"] for r in results["throughput"]["summary"])
            ax.axhline(
                1e6 / best,
                color="tab:green",
                alpha=0.4,
                linestyle=":",
                label=f"single requests, best concurrency ({best:.0f}/s)",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("samples in one request")
        ax.set_ylabel("microseconds per sample (end to end)")
        ax.grid(alpha=0.3, which="both")
        written.append(
            _finish(
                fig,
                ax,
                "Cost per sample against batch size (one request at a time)",
                note,
                out_dir / "cost_per_sample.png",
            )
        )
    return written


if __name__ == "__main__":
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "bench" / "results.json"
    print("\n".join(draw(json.loads(source.read_text()), ROOT / "docs")))
