"""What a run leaves in its directory: metrics.jsonl, summary.json and learning_curve.png."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
PLOT_FILE = "learning_curve.png"


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null so every line parses."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


class MetricsLog:
    """Append-only JSON lines; on resume, lines written after the checkpoint are dropped."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / METRICS_FILE

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(_clean(record)) + "\n")

    def records(self) -> list[dict[str, Any]]:
        """Every complete record; a line torn by a hard kill is skipped."""
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def truncate_after(self, phase_steps: dict[str, int]) -> None:
        """Keep only records at or before the checkpoint's step in each phase."""
        kept = [r for r in self.records()
                if r.get("step", 0) <= phase_steps.get(r.get("phase", ""), math.inf)]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)


def write_summary(run_dir: Path, summary: dict[str, Any]) -> Path:
    path = run_dir / SUMMARY_FILE
    path.write_text(json.dumps(_clean(summary), indent=2) + "\n")
    return path


def plot_learning_curve(run_dir: Path, records: list[dict[str, Any]], title: str) -> Path:
    """Evaluation return against gradient steps (offline) and env steps (online)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [r for r in records if r.get("kind") == "eval"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, phase, xlabel in ((axes[0], "offline", "gradient steps"),
                              (axes[1], "online", "environment steps")):
        points = [(r["step"], r["return_mean"]) for r in evals if r["phase"] == phase]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o")
        ax.set_title(f"{phase} phase")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("evaluation return (mean)")
    fig.suptitle(title)
    fig.tight_layout()
    path = run_dir / PLOT_FILE
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
