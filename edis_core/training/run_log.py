"""What a run leaves in its directory: metrics.jsonl, summary.json and learning_curve.png."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edis_core.finite import NonFiniteError

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
PLOT_FILE = "learning_curve.png"


class RunFailure(RuntimeError):
    """A fault the run cannot go on past (a required service gone for good, say): the run
    stops with status "failed", a checkpoint of its (sound) state and this one-line reason,
    and `--resume` continues it once the fault is mended."""


def failure_message(err: Exception, where: str, saved: bool,
                    checkpointed: dict[str, int] | None, run_dir: Path) -> str:
    """summary.json's one-line reason for a run stopped at `where` by `err`, and what to do.
    A non-finite loss or value, or an unexpected error: the weights in memory may be unsound,
    so nothing was saved and the last checkpoint (its steps: `checkpointed`) stays the run's
    state. A RunFailure: its state is sound and was just saved (`saved`)."""
    kept = (f"the last good checkpoint ({_describe(checkpointed)}) is kept"
            if checkpointed is not None else "no checkpoint had been written")
    if saved:
        advice = f"a checkpoint was written; mend that, then `--resume {run_dir}`"
    elif isinstance(err, NonFiniteError):
        advice = f"{kept}. Check the dataset and lower the learning rates, then start a new run"
    else:
        advice = f"{kept}; run it again as `edis --debug ...` for the traceback, and report it"
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    if not isinstance(err, NonFiniteError | RunFailure):
        reason = f"unexpected {type(err).__name__}: {reason}"
    return f"{where}: {reason}. The run stopped; {advice}"


def _describe(steps: dict[str, int]) -> str:
    """{"prior": 60, "offline": 100, "online": 0} -> "prior step 60, offline step 100"."""
    return ", ".join(f"{phase} step {step}" for phase, step in steps.items() if step) or "step 0"


def json_safe(value: Any) -> tuple[Any, int]:
    """JSON has no NaN/inf: the value with them as null, and how many were replaced."""
    if isinstance(value, float):
        return (value, 0) if math.isfinite(value) else (None, 1)
    if isinstance(value, dict):
        pairs = {k: json_safe(v) for k, v in value.items()}
        return {k: v for k, (v, _) in pairs.items()}, sum(n for _, n in pairs.values())
    if isinstance(value, list | tuple):
        items = [json_safe(v) for v in value]
        return [v for v, _ in items], sum(n for _, n in items)
    return value, 0


def to_json(record: dict[str, Any], **dumps_args: Any) -> str:
    """Valid JSON always: NaN/inf become null and `nonfinite_as_null` counts them."""
    clean, replaced = json_safe(record)
    if replaced:
        clean["nonfinite_as_null"] = replaced
    return json.dumps(clean, allow_nan=False, **dumps_args)


class MetricsLog:
    """Append-only JSON lines; on resume, lines written after the checkpoint are dropped.

    `observers` are called with every record once it is written (the runtime's Prometheus
    exporter is one), in the writer's thread."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / METRICS_FILE
        self.observers: list[Callable[[dict[str, Any]], None]] = []

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(to_json(record) + "\n")
        for observe in self.observers:
            observe(record)

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
        tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)


def write_summary(run_dir: Path, summary: dict[str, Any]) -> Path:
    path = run_dir / SUMMARY_FILE
    path.write_text(to_json(summary, indent=2) + "\n")
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
