"""Does guidance do what EDIS claims, on every seed? `edis diagnose` over several trained runs.

Trains the embedded run (profile `demo`: Hopper-v5 random data, IQL + EDIS) once per seed,
or reuses a finished run in the same folder, then diagnoses each run's latest models: state
MMD² to the positive buffer, mean log π(a|s), next-state and reward error against the
simulator, for guided and unguided samples of the same prior, side by side.

    python benchmarks/guidance_seeds.py [--seeds 0 1 2] [--set edis.w_policy=1.0 ...]

About 5 minutes per seed on 2 CPU cores. Writes results/guidance_seeds.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

import torch

from edis_core.config import build
from edis_core.training.checkpoint import checkpoint_path
from edis_core.training.config import TrainConfig
from edis_core.training.diagnose import diagnose_run
from edis_core.training.trainer import CONFIG_FILE, Trainer, read_run_config
from services.cli import DEMO_DATASET, ensure_demo_dataset

METRICS = (  # (column, path into a batch report, better when)
    ("state MMD²", ("state_mmd_to_positive_buffer",), "lower"),
    ("log π(a|s)", ("policy_log_likelihood",), "higher"),
    ("s' norm. MSE", ("dynamics", "next_obs_normalised_mse"), "lower"),
    ("r MSE", ("dynamics", "reward_mse"), "lower"),
    ("r MSE, not terminated", ("dynamics", "reward_mse_not_terminated"), "lower"),
    ("share terminated", ("dynamics", "terminated_fraction"), "closer to the positive buffer"),
)


def train(run_dir: Path, seed: int, profile: str, overrides: list[str]) -> None:
    """Train `run_dir` to completion: reuse it if finished, resume it if interrupted; refuse
    a folder whose run was trained with another configuration."""
    fields = {"dataset": DEMO_DATASET, "seed": seed, "synthetic": "edis"}
    config = build(TrainConfig, profile, fields, overrides)
    if (run_dir / CONFIG_FILE).exists() and read_run_config(run_dir) != config:
        raise SystemExit(f"{run_dir} holds a run with another configuration than --profile "
                         f"{profile} {' '.join(overrides)}: pick another --runs-root")
    summary = run_dir / "summary.json"
    if summary.exists() and json.loads(summary.read_text()).get("status") == "completed":
        print(f"{run_dir}: finished run found, not retrained")
        return
    if checkpoint_path(run_dir).exists():
        trainer = Trainer.load(run_dir)
    else:
        trainer = Trainer.create(config, run_dir)
    if trainer.run()["status"] != "completed":
        raise SystemExit(f"{run_dir}: training was interrupted")


def metric(report: dict[str, Any], path: tuple[str, ...]) -> float | None:
    """The value at `path`, or None where the diagnosis could not compute it."""
    for key in path:
        if not isinstance(report, dict) or key not in report:
            return None
        report = report[key]
    return None if report is None else float(report)


def cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def print_table(rows: list[dict[str, Any]]) -> None:
    header = "| seed | " + " | ".join(f"{name} guided / unguided" for name, _, _ in METRICS)
    print(header + " | verdict |")
    print("|" + "---|" * (len(METRICS) + 2))
    for row in rows:
        cells = [f"{cell(row[name]['guided'])} / {cell(row[name]['unguided'])}"
                 for name, _, _ in METRICS]
        verdict = ", ".join(key for key, value in row["verdict"].items() if value) or "none"
        print(f"| {row['seed']} | " + " | ".join(cells) + f" | {verdict} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every run, e.g. edis.w_policy=1.0")
    parser.add_argument("--runs-root", type=Path, default=Path("runs/guidance"))
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=Path("results/guidance_seeds.json"))
    args = parser.parse_args()

    ensure_demo_dataset()
    rows = []
    for seed in args.seeds:
        run_dir = args.runs_root / f"seed{seed}"
        train(run_dir, seed, args.profile, args.set)
        report = diagnose_run(run_dir, samples=args.samples, seed=seed)
        row: dict[str, Any] = {"seed": seed, "run_dir": str(run_dir),
                               "verdict": report["verdict"]}
        for name, path, _ in METRICS:
            row[name] = {side: metric(report[side], path) for side in ("guided", "unguided")}
        rows.append(row)
    print_table(rows)
    verdicts = [row["verdict"] for row in rows]
    results = {
        "profile": args.profile, "overrides": args.set, "samples": args.samples,
        "better_when": {name: better for name, _, better in METRICS},
        "all_seeds": {key: all(v[key] for v in verdicts) for key in verdicts[0]},
        "runs": rows,
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"all seeds: {results['all_seeds']}\nwritten to {args.out}")


if __name__ == "__main__":
    main()
