"""Does the distributed runtime learn as well as the one-process loop? The embedded run
(profile `demo`: IQL + EDIS on the Hopper-v5 random dataset) per seed under `edis train` and
under `edis run`, each in its own process (finished runs in the same folder are reused), then
`edis diagnose` of each (kept in the run's folder): final returns and the diagnosis verdicts
side by side.

    python benchmarks/runtime_seeds.py [--seeds 0 1 2] [--set key=value ...]

About 10-15 minutes per seed on 2 CPU cores. Writes results/runtime_seeds.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from guidance_seeds import diagnosis

from edis_core.diagnostics import ratio_text
from edis_core.training.diagnose import BENCHMARK_SAMPLES
from services.cli import DEMO_DATASET, ensure_demo_dataset

COMMANDS = ("train", "run")


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
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    updates = max(r.get("updates", 0) for r in records if r["kind"] == "train")
    return updates / summary["phase_seconds"]["online"]


def row(command: str, seed: int, run_dir: Path, summary: dict, report: dict) -> dict[str, Any]:
    return {
        "command": f"edis {command}", "seed": seed,
        "offline_return": summary["offline_final"]["return_mean"],
        "final_return": summary["online_final"]["return_mean"],
        "final_score": summary["online_final"]["normalized_score"],
        "online_steps": summary["steps"]["online"],
        "phase_s": summary["phase_seconds"],
        "wall_s": wall_clock(run_dir),
        "online_updates_per_s": online_updates_per_s(run_dir, summary),
        "verdict": report["verdict"],
        "next_state_ratio": report["dynamics_ratio"]["next_obs_normalised_mse"],
    }


def cell(seconds: float | None) -> str:
    return "not recorded" if seconds is None else f"{seconds:.0f}"


def print_table(rows: list[dict[str, Any]]) -> None:
    print("| seed | command | offline return | final return (normalised) | online steps | "
          "diagnosis: guided better on | s' ratio [95%] | wall clock s | online phase s | "
          "updates/s online |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["seed"], r["command"])):
        better = ", ".join(k for k, v in r["verdict"].items() if v) or "none"
        print(f"| {r['seed']} | {r['command']} | {r['offline_return']:.1f} | "
              f"{r['final_return']:.1f} ({r['final_score']:.1f}) | {r['online_steps']:,} | "
              f"{better} | {ratio_text(r['next_state_ratio'])} | {cell(r['wall_s'])} | "
              f"{r['phase_s']['online']:.0f} | "
              f"{r['online_updates_per_s']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--runs-root", type=Path, default=Path("runs/runtime-seeds"))
    parser.add_argument("--samples", type=int, default=BENCHMARK_SAMPLES,
                        help="guided and unguided samples per diagnosis (default %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("results/runtime_seeds.json"))
    args = parser.parse_args()
    ensure_demo_dataset()
    rows = []
    for seed in args.seeds:
        for command in COMMANDS:
            run_dir = args.runs_root / f"{command}-seed{seed}"
            summary = run_to_completion(command, run_dir, seed, args.set)
            report = diagnosis(run_dir, seed, samples=args.samples)
            rows.append(row(command, seed, run_dir, summary, report))
    print_table(rows)
    for seed in args.seeds:
        train, run = (next(r for r in rows if r["seed"] == seed and r["command"] == f"edis {c}")
                      for c in COMMANDS)
        ratio = (f"{run['wall_s'] / train['wall_s']:.2f}" if run["wall_s"] and train["wall_s"]
                 else "n/a")
        print(f"seed {seed}: edis run ÷ edis train, wall clock {ratio}, online phase "
              f"{run['phase_s']['online'] / train['phase_s']['online']:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"overrides": args.set, "samples": args.samples,
                                    "runs": rows, "platform": platform.platform()}, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
