"""Does guidance do what EDIS claims, on every seed and for both agents? `edis diagnose` over
several trained runs, and the analytic toy.

Trains the embedded run (profile `demo`: Hopper-v5 random data, EDIS) once per agent and seed,
or reuses a finished run in the same folder, then diagnoses each run's latest models
(edis_core/training/diagnose.py): state MMD² to fresh episodes of the current policy (held
out: collected after the last refresh), the relative policy score log π(a|s) − E_{a'∼π}
log π(a'|s), next-state and reward error against the simulator, for guided and unguided
samples of the same prior, and the transition energy's effect (w_T > 0 against w_T = 0). Per
seed it also reports the realised shift on the toy of Theorem 3.1 (docs/algorithm.md §3) in one
dimension
(p = N(0, 1), q = N(1, 1), the default sampler on p's exact denoiser), guided by the exact
noised energy and by one that the default InfoNCE learned from 10,000 samples a side.

    python -m research.guidance_seeds [--agents iql calql] [--seeds 0 1 2] [--set k=v ...]

About 12 minutes of training per IQL seed and 45 per Cal-QL seed on 2 CPU cores, one thread
each, and 5-7 minutes per diagnosis (100,000 guided and unguided samples, every one checked
against the simulator; the s' and r error ratios come with 95% intervals).
Finished runs and their diagnoses are reused, so the table can be made one core at a time:
e.g. `--agents iql --seeds 0 1 2` beside `--agents calql --seeds 0 1`, then the full command.
Writes results/guidance_seeds.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

import torch

from edis_core.analytic import (
    ExactEnergy,
    GaussianMixture,
    guided_samples,
    learned_energy,
    realised_shift,
)
from edis_core.config import build
from edis_core.diagnostics import ratio_text
from edis_core.diffusion.prior import DiffusionPrior
from edis_core.energy.guidance import EnergyTerm
from edis_core.generator import guidance_hook
from edis_core.generator_config import EDISConfig
from edis_core.training.checkpoint import checkpoint_path
from edis_core.training.config import TrainConfig
from edis_core.training.diagnose import BENCHMARK_SAMPLES, diagnose_run
from edis_core.training.run_dir import CONFIG_FILE, read_run_config
from edis_core.training.trainer import Trainer
from services.cli import DEMO_DATASET, ensure_demo_dataset

METRICS = (  # (column, path into the report, better when)
    ("held-out state MMD²", ("{side}", "state_mmd_to_held_out"), "lower"),
    ("relative policy score", ("{side}", "relative_policy_score"), "closer to 0"),
    ("s' norm. MSE", ("{side}", "dynamics", "next_obs_normalised_mse"), "lower"),
    ("r MSE", ("{side}", "dynamics", "reward_mse"), "lower"),
    ("share terminated", ("{side}", "dynamics", "terminated_fraction"), "closer to d^π's"),
)
DIAGNOSIS_FILE = "diagnosis.json"
RATIOS = (  # guided over unguided error, with the 95% interval of the draw
    ("s' ratio", ("dynamics_ratio", "next_obs_normalised_mse")),
    ("r ratio", ("dynamics_ratio", "reward_mse")),
)
PROBE = (  # the transition energy: errors with w_T > 0 over errors with w_T = 0
    ("E_T s' ratio", ("transition_probe", "ratio", "next_obs_normalised_mse")),
    ("E_T r ratio", ("transition_probe", "ratio", "reward_mse")),
    # the prior's own (r, s', done) at the held-out (s, a): the dynamics reference
    ("prior at d^π: s' norm. MSE", ("prior_at_policy_states", "dynamics",
                                    "next_obs_normalised_mse")),
    ("prior at d^π: r MSE", ("prior_at_policy_states", "dynamics", "reward_mse")),
)
# Bumped when the diagnosis report gains content, so that cached diagnoses are redone.
REPORT_VERSION = 4


def train(run_dir: Path, agent: str, seed: int, profile: str, overrides: list[str]) -> None:
    """Train `run_dir` to completion: reuse it if finished, resume it if interrupted; refuse
    a folder whose run was trained with another configuration."""
    fields = {"dataset": DEMO_DATASET, "seed": seed, "synthetic": "edis", "agent": agent}
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


def diagnosis(run_dir: Path, seed: int, samples: int = BENCHMARK_SAMPLES, held_out: int = 5_000,
              transition_weight: float = 1.0) -> dict[str, Any]:
    """`diagnose_run` of the finished run, kept in the run's folder so that a table split over
    several invocations (e.g. one per core) is assembled without diagnosing again."""
    settings = {"samples": samples, "held_out": held_out,
                "transition_weight": transition_weight, "seed": seed,
                "report_version": REPORT_VERSION}
    cached = run_dir / DIAGNOSIS_FILE
    if cached.exists():
        saved = json.loads(cached.read_text())
        if saved["settings"] == settings:
            return saved["report"]
    report = diagnose_run(run_dir, samples, seed, held_out, transition_weight)
    cached.write_text(json.dumps({"settings": settings, "report": report}, indent=2))
    return report


def toy_shift(seed: int) -> dict[str, float]:
    """Share of the toy's mean shift realised with the exact and with a learned energy."""
    prior = GaussianMixture.gaussian([0.0], [[1.0]])
    target = GaussianMixture.gaussian([1.0], [[1.0]])
    config = EDISConfig()
    sampler = DiffusionPrior(1, config.diffusion)
    learned = learned_energy(
        prior, target, sampler.evaluation_sigmas().float(), rows=10_000,
        steps=config.energy_steps, seed=seed, lr=config.energy_lr, groups=config.energy_groups,
        negatives=config.negatives, levels_per_step=config.energy_levels)
    unguided = guided_samples(prior, None, sampler.sigmas(), 20_000, seed)
    shares = {}
    for name, energy in (("exact", ExactEnergy(prior, target)), ("learned", learned)):
        guidance = guidance_hook(config, [EnergyTerm(energy, slice(0, 1), 1.0)], 1)
        guided = guided_samples(prior, guidance, sampler.sigmas(), 20_000, seed)
        shares[name] = realised_shift(guided, unguided, prior, target).mean
    return shares


def at(report: dict[str, Any], path: tuple[str, ...], side: str = "") -> Any:
    """The entry at `path`, or None where the diagnosis could not compute it."""
    for key in path:
        key = key.format(side=side)
        if not isinstance(report, dict) or key not in report:
            return None
        report = report[key]
    return report


def metric(report: dict[str, Any], path: tuple[str, ...], side: str = "") -> float | None:
    value = at(report, path, side)
    return None if value is None else float(value)


def cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def print_table(rows: list[dict[str, Any]]) -> None:
    columns = [f"{name} guided / unguided" for name, _, _ in METRICS]
    columns += [f"{name} [95%]" for name, _ in RATIOS] + [name for name, _ in PROBE]
    columns += ["toy shift exact / learned", "verdict"]
    print("| agent | seed | " + " | ".join(columns) + " |")
    print("|" + "---|" * (len(columns) + 2))
    for row in rows:
        cells = [f"{cell(row[name]['guided'])} / {cell(row[name]['unguided'])}"
                 for name, _, _ in METRICS]
        cells += [ratio_text(row[name]) for name, _ in RATIOS]
        cells += [cell(row[name]) for name, _ in PROBE]
        cells.append(f"{row['toy']['exact']:.3f} / {row['toy']['learned']:.3f}")
        cells.append(", ".join(key for key, value in row["verdict"].items() if value) or "none")
        print(f"| {row['agent']} | {row['seed']} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", nargs="+", default=["iql", "calql"],
                        choices=["iql", "calql"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every run, e.g. edis.w_policy=0.2")
    parser.add_argument("--runs-root", type=Path, default=Path("runs/guidance"))
    parser.add_argument("--samples", type=int, default=BENCHMARK_SAMPLES,
                        help="guided and unguided samples per diagnosis (default %(default)s)")
    parser.add_argument("--held-out", type=int, default=5_000,
                        help="transitions of fresh episodes of the current policy")
    parser.add_argument("--transition-weight", type=float, default=1.0,
                        help="w_T of the transition probe when the run's w_T is 0")
    parser.add_argument("--out", type=Path, default=Path("results/guidance_seeds.json"))
    args = parser.parse_args()

    ensure_demo_dataset()
    # The toys run in this process before any run's Trainer would set its threads.
    threads = build(TrainConfig, args.profile, {"dataset": DEMO_DATASET}, args.set).torch_threads
    if threads:
        torch.set_num_threads(threads)
    toys = {seed: toy_shift(seed) for seed in args.seeds}
    rows = []
    for agent in args.agents:
        for seed in args.seeds:
            run_dir = args.runs_root / agent / f"seed{seed}"
            train(run_dir, agent, seed, args.profile, args.set)
            report = diagnosis(run_dir, seed, args.samples, args.held_out,
                               args.transition_weight)
            row: dict[str, Any] = {"agent": agent, "seed": seed, "run_dir": str(run_dir),
                                   "verdict": report["verdict"], "toy": toys[seed]}
            for name, path, _ in METRICS:
                row[name] = {side: metric(report, path, side)
                             for side in ("guided", "unguided")}
            for name, path in RATIOS:
                row[name] = at(report, path)
            for name, path in PROBE:
                row[name] = metric(report, path)
            row["report"] = report
            rows.append(row)
    print_table(rows)
    verdicts = [row["verdict"] for row in rows]
    results = {
        "profile": args.profile, "overrides": args.set, "samples": args.samples,
        "held_out": args.held_out, "transition_weight": args.transition_weight,
        "better_when": {name: better for name, _, better in METRICS},
        "all_runs": {key: all(v.get(key) for v in verdicts) for key in verdicts[0]},
        "runs": rows,
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"all runs: {results['all_runs']}\nwritten to {args.out}")


if __name__ == "__main__":
    main()
