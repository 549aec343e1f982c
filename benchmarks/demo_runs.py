"""The embedded demo run (profile `demo`: IQL + EDIS on the Hopper-v5 random dataset) under
`edis train` or `edis run`, each in its own process, and what its wall clock and update rate
were. Used by bench_runtime.py (learner rate inside `edis run`) and research/runtime_seeds.py
(returns and diagnoses of both runtimes)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from services.cli import DEMO_DATASET

WALL_CLOCK_FILE = "wall_clock.json"  # the process's wall clock, when it ran start to finish


def run_to_completion(command: str, run_dir: Path, seed: int, overrides: list[str]) -> dict:
    """`edis train|run` in its own process, resumed if a checkpoint is there; its summary.
    A run made in one go records its wall clock (Ray's and the sampler's start-up included)."""
    summary = run_dir / "summary.json"
    if not (summary.exists() and json.loads(summary.read_text())["status"] == "completed"):
        args = [sys.executable, "-m", "services.cli", command]
        fresh = not (run_dir / "checkpoint").exists()
        if fresh:
            args += ["--profile", "demo", "--dataset", DEMO_DATASET, "--synthetic", "edis",
                     "--seed", str(seed), "--run-dir", str(run_dir)]
            for override in overrides:
                args += ["--set", override]
        else:
            args += ["--resume", str(run_dir)]
        start = time.perf_counter()
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
        if fresh:
            wall = {"wall_s": time.perf_counter() - start}
            (run_dir / WALL_CLOCK_FILE).write_text(json.dumps(wall))
    return json.loads(summary.read_text())


def wall_clock(run_dir: Path) -> float | None:
    """The recorded wall clock of a run made in one go, else None."""
    path = run_dir / WALL_CLOCK_FILE
    return json.loads(path.read_text())["wall_s"] if path.exists() else None


def online_updates_per_s(run_dir: Path, summary: dict) -> float:
    """Agent updates in the online phase ÷ the phase's wall clock (waits for data included)."""
    return online_updates(run_dir) / summary["phase_seconds"]["online"]


def online_updates(run_dir: Path) -> int:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return max(r.get("updates", 0) for r in records if r["kind"] == "train")


def learner_time(run_dir: Path, summary: dict) -> dict:
    """Where the learner's online phase went, from the trainer's own clocks: the share of
    its wall clock in each part of the loop (collect: waiting for and storing transitions;
    synthetic: keeping the synthetic table supplied; agent_updates), agent updates per
    second of updating alone, and the process's CPU-seconds per wall second (its threads
    together, the background refresh included). The rate in edis run ÷ the bare benchmark
    is the updating share × (the rate while updating ÷ the bare rate)."""
    wall = summary["phase_seconds"]["online"]
    parts = summary["online_seconds"]
    return {"shares": {part: seconds / wall for part, seconds in parts.items()},
            "updates_per_updating_s": online_updates(run_dir) / parts["agent_updates"],
            "cpu_per_wall": summary["phase_cpu_seconds"]["online"] / wall}
