"""Which energy settings help? Retrain the energies of finished runs under variants and diagnose.

For each run directory (e.g. the runs of research/guidance_seeds.py) and each variant (a set
of `edis.` overrides of the run's own settings), a generator with the run's prior and fresh
energies is trained on the run's own buffers and policy, as one refresh would, then
diagnosed like `edis diagnose` (held-out state MMD², relative policy score, dynamics against
the simulator, the transition probe). The agent and prior are the run's: only the energies
differ, so variants compare like for like: about a minute of energy training each, then a
diagnosis of 5-7 minutes at the default 100,000 samples a side (the s' ratio's 95% interval
is printed beside it).

    python -m research.energy_variants runs/guidance/iql/seed0 ... \\
        --variant run= --variant own=energy_input=own --variant edm=energy_input_map=edm

Writes results/energy_variants.json (or --out).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from edis_core.config import from_dict, merge, nest, parse_override
from edis_core.diagnostics import ratio_text
from edis_core.generator import SyntheticGenerator
from edis_core.generator_config import EDISConfig
from edis_core.training.diagnose import BENCHMARK_SAMPLES, diagnose_generator
from edis_core.training.synthetic import prior_rows
from edis_core.training.trainer import Trainer
from research.guidance_seeds import cell, metric

COLUMNS = (
    ("MMD² held out", ("{side}", "state_mmd_to_held_out")),
    ("policy score", ("{side}", "relative_policy_score")),
    ("s' MSE", ("{side}", "dynamics", "next_obs_normalised_mse")),
    ("r MSE", ("{side}", "dynamics", "reward_mse")),
    ("terminated", ("{side}", "dynamics", "terminated_fraction")),
)


def variant_config(run_config: EDISConfig, overrides: list[str]) -> EDISConfig:
    """The run's own EDIS settings, then the variant's overrides (keys relative to `edis.`)."""
    values = dataclasses.asdict(run_config)
    for text in overrides:
        keys, value = parse_override(text)
        values = merge(values, nest(keys, value))
    return from_dict(EDISConfig, values, "edis")


def evaluate(run_dir: Path, overrides: list[str], samples: int, held_out: int,
             prior_steps: int = 0, recent_share: float | None = None,
             energy_seed: int | None = None) -> dict:
    """One variant on one run; `energy_seed` (default: the run's seed) seeds the new
    energies (initialisation, contrastive sets), while the diagnosis keeps the run's seed and
    so its held-out episodes and the prior's random numbers."""
    trainer = Trainer.inspect(run_dir)
    if trainer.supply is None or len(trainer.positive) == 0:
        raise SystemExit(f"{run_dir}: needs a run with a prior and online episodes")
    seed, prior = trainer.config.seed, trainer.supply.generator.prior
    energy_seed = seed if energy_seed is None else energy_seed
    config = variant_config(trainer.supply.generator.config, overrides)
    generator = SyntheticGenerator(trainer.offline.obs_dim, trainer.offline.act_dim, config,
                                   seed=energy_seed)
    generator.prior.load_state_dict(prior.state_dict())
    torch.manual_seed(energy_seed)
    online, positives = trainer.replay.contents(), trainer.positive.contents()
    if prior_steps:
        # As a refresh with prior_steps_per_refresh = prior_steps would: warm-started, on the
        # rows of the run's schedule (all online rows, as many offline, its recent share).
        if recent_share is None:
            recent_share = trainer.config.schedule.prior_recent_share
        rows = prior_rows(trainer.offline, online, positives, recent_share,
                          trainer.config.schedule.prior_offline_rows,
                          np.random.default_rng(seed))
        generator.train_prior(rows, prior_steps)
    real = online.take(slice(max(0, len(online) - trainer.config.schedule.real_sample), None))
    training = generator.train_energies(positives, real,
                                        trainer.agent.sample_actions, config.energy_steps)
    report = diagnose_generator(trainer, generator, samples, seed, held_out, 1.0)
    report["training"] = training
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=K=V,K=V",
                        help="a named set of edis overrides, comma-separated (empty: the run's)")
    parser.add_argument("--prior-steps", type=int, default=0,
                        help="continue the run's prior this many steps on its online rows, "
                             "as many offline rows and the recent share (as a refresh would) "
                             "before the energies are trained")
    parser.add_argument("--prior-recent-share", type=float, default=None,
                        help="share of those prior rows from the positive buffer (default: "
                             "the run's schedule.prior_recent_share)")
    parser.add_argument("--energy-seed", type=int, default=None,
                        help="seed of the retrained energies (default: the run's seed); "
                             "other values show how much one refresh's energies vary")
    parser.add_argument("--samples", type=int, default=BENCHMARK_SAMPLES,
                        help="guided and unguided samples each (default %(default)s)")
    parser.add_argument("--held-out", type=int, default=5_000)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("results/energy_variants.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)
    variants = {}
    for text in args.variant or ["run="]:
        name, _, overrides = text.partition("=")
        variants[name] = [item for item in overrides.split(",") if item]
    rows = []
    print("| run | variant | " + " | ".join(f"{c} guided / unguided" for c, _ in COLUMNS)
          + " | s' ratio [95%] | E_T s' / r ratio |")
    print("|" + "---|" * (len(COLUMNS) + 4))
    for run_dir in args.runs:
        for name, overrides in variants.items():
            report = evaluate(run_dir, overrides, args.samples, args.held_out,
                              args.prior_steps, args.prior_recent_share, args.energy_seed)
            rows.append({"run": str(run_dir), "variant": name, "overrides": overrides,
                         "energy_seed": args.energy_seed,
                         "prior_steps": args.prior_steps,
                         "prior_recent_share": args.prior_recent_share, "report": report})
            cells = [" / ".join(cell(metric(report, path, side))
                                for side in ("guided", "unguided")) for _, path in COLUMNS]
            cells.append(ratio_text(report["dynamics_ratio"]["next_obs_normalised_mse"]))
            ratio = (report.get("transition_probe") or {}).get("ratio") or {}
            cells.append(" / ".join(f"{ratio[k]:.3g}" if ratio.get(k) is not None else "n/a"
                                    for k in ("next_obs_normalised_mse", "reward_mse")))
            print(f"| {run_dir} | {name} | " + " | ".join(cells) + " |", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"variants": variants, "rows": rows}, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
