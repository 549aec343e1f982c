"""Does the distributed runtime learn as well as the one-process loop? The embedded run
(profile `demo`: IQL + EDIS on the Hopper-v5 random dataset) per seed under `edis train` and
under `edis run`, each in its own process (finished runs in the same folder are reused), then
`edis diagnose` of each (kept in the run's folder): final returns and the diagnosis verdicts
side by side.

    python -m research.runtime_seeds [--seeds 0 1 2] [--set key=value ...]

About 10-15 minutes per seed on 2 CPU cores. Writes results/runtime_seeds.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

from benchmarks.demo_runs import online_updates_per_s, run_to_completion, wall_clock
from edis_core.diagnostics import ratio_text
from edis_core.training.diagnose import BENCHMARK_SAMPLES
from research.guidance_seeds import diagnosis
from services.cli import ensure_demo_dataset

COMMANDS = ("train", "run")


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
