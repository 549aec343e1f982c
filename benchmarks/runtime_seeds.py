"""Does the distributed runtime learn as well as the one-process loop? The embedded run
(profile `demo`: IQL + EDIS on the Hopper-v5 random dataset) per seed under `edis train` and
under `edis run`, each in its own process (finished runs in the same folder are reused), then
`edis diagnose` of each: final returns and the diagnosis verdicts side by side.

    python benchmarks/runtime_seeds.py [--seeds 0 1 2] [--set key=value ...]

About 10-15 minutes per seed on 2 CPU cores. Writes results/runtime_seeds.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from edis_core.training.diagnose import diagnose_run
from services.cli import DEMO_DATASET, ensure_demo_dataset

COMMANDS = ("train", "run")


def run_to_completion(command: str, run_dir: Path, seed: int, overrides: list[str]) -> dict:
    """`edis train|run` in its own process, resumed if a checkpoint is there; its summary."""
    summary = run_dir / "summary.json"
    if not (summary.exists() and json.loads(summary.read_text())["status"] == "completed"):
        args = [sys.executable, "-m", "services.cli", command]
        if (run_dir / "checkpoint").exists():
            args += ["--resume", str(run_dir)]
        else:
            args += ["--profile", "demo", "--dataset", DEMO_DATASET, "--synthetic", "edis",
                     "--seed", str(seed), "--run-dir", str(run_dir)]
            for override in overrides:
                args += ["--set", override]
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    return json.loads(summary.read_text())


def row(command: str, seed: int, summary: dict, report: dict) -> dict[str, Any]:
    return {
        "command": f"edis {command}", "seed": seed,
        "offline_return": summary["offline_final"]["return_mean"],
        "final_return": summary["online_final"]["return_mean"],
        "final_score": summary["online_final"]["normalized_score"],
        "online_steps": summary["steps"]["online"],
        "wall_s": sum(summary.get("phase_seconds", {}).values()),
        "verdict": report["verdict"],
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    print("| seed | command | offline return | final return (normalised) | online steps | "
          "diagnosis: guided better on | wall clock s |")
    print("|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["seed"], r["command"])):
        better = ", ".join(k for k, v in r["verdict"].items() if v) or "none"
        print(f"| {r['seed']} | {r['command']} | {r['offline_return']:.1f} | "
              f"{r['final_return']:.1f} ({r['final_score']:.1f}) | {r['online_steps']:,} | "
              f"{better} | {r['wall_s']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--runs-root", type=Path, default=Path("runs/runtime-seeds"))
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=Path("results/runtime_seeds.json"))
    args = parser.parse_args()
    ensure_demo_dataset()
    rows = []
    for seed in args.seeds:
        for command in COMMANDS:
            run_dir = args.runs_root / f"{command}-seed{seed}"
            summary = run_to_completion(command, run_dir, seed, args.set)
            report = diagnose_run(run_dir, samples=args.samples, seed=seed)
            rows.append(row(command, seed, summary, report))
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"overrides": args.set, "samples": args.samples,
                                    "runs": rows, "platform": platform.platform()}, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
