"""`python -m evidence.quality`: the synthetic sources judged apart from RL noise.

On the frozen final checkpoints of the table's `edis` runs (the run's policy π, its online
replay, its prior and its energies), each source of the synthetic slot, 20,000 rows of:
offline rows, unguided samples, guided (EDIS) samples and the oracle's real transitions of
π, feeds a fresh critic that evaluates π by fitted Q evaluation,

    Q(s, a) ← r + γ (1 − d) Q̄(s', a'),   a' ~ π(·|s'),

on batches half online replay and half that source, as the agent's batches would be ("online
only": all online replay, the reference). Each critic is then judged on fresh held-out
episodes of π, which no model saw: its squared error against their discounted Monte-Carlo
returns, as a share of the returns' variance (rows whose return is cut by the time limit are
left out), its mean error (bias), and its TD error on their rows.

A checkpoint lives only as long as its run directory, while the table is measured over
sittings, so each run's result is kept beside the evidence archive's records (its
`quality/` folder, committed) with the study's settings and its run's identity (a digest
of the run's summary, so a run made again is studied again); a run studied once is read
from there. `python -m evidence` studies the `edis` runs it finished before it writes the
report. Results go to docs/synthetic_quality.json, which the evidence report
(evidence/report.py) includes.

    python -m evidence.quality                  # the table's edis runs (seeds 0-9)
    python -m evidence.quality --seeds 0 1 --steps 2000
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edis_core.agents.networks import QEnsemble, adam, polyak_update
from edis_core.training.rollouts import collect_episodes
from edis_core.training.synthetic import ORACLE_SEED, clip_actions
from edis_core.training.trainer import Trainer
from edis_core.transitions import Batch, Transitions, discounted_returns_to_go
from evidence.archive import Archive
from evidence.plan import Grid, RunSpec, plan, short
from evidence.report import QUALITY_FILE, PairedGain
from evidence.runner import load_runs, status

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("online only", "offline", "unguided", "edis", "oracle")
HELD_OUT_SEED = 50_000      # env seeds of the held-out episodes: seed + this, unlike any run's
Results = dict[str, dict[str, dict[str, dict[str, dict[str, float]]]]]
"""Per agent, dataset and seed (a string), per source, the study's measures."""
QUALITY_FOLDER = "quality"  # under the archive's root: one result per run
FULL_HORIZON = 460          # γ^460 < 1%: a return cut this far from its start is near complete


@dataclasses.dataclass(frozen=True)
class Study:
    rows: int = 20_000
    """Rows per source, and held-out transitions."""
    steps: int = 10_000
    """Fitted-Q-evaluation steps per critic."""
    batch_size: int = 256
    hidden: tuple[int, ...] = (256, 256)
    lr: float = 3e-4
    target_update_rate: float = 0.05
    """Polyak rate of the target critic. Each backup reaches about 1/rate steps later, so
    `steps` give ~steps·rate backups, and the critic carries γ^(steps·rate) of its zero
    start: at 0.005 (the agents' rate) 10k steps leave γ^50 ≈ 0.6 of it, and every source
    read as a ~45% underestimate (measured on hopper-medium seed 0: bias −136 to −140 for
    every source); at 0.05, γ^500 < 0.01."""


def source_rows(trainer: Trainer, source: str, n: int, seed: int) -> Transitions | None:
    """n rows of `source` in the agents' action units (None for "online only")."""
    generator = trainer.generator
    if source == "online only":
        return None
    if source == "offline":
        return trainer.offline.take(np.random.default_rng(seed).integers(0, len(trainer.offline),
                                                                         n))
    if source == "oracle":
        return collect_episodes(trainer.agent, trainer.env.spec.id, trainer.scaler, n,
                                seed=seed + ORACLE_SEED).take(slice(0, n))
    generator.seed_sampling(seed)
    return clip_actions(generator.generate(n, guided=source == "edis"))


def fit_critic(online: Transitions, source: Transitions | None, trainer: Trainer, study: Study,
               seed: int) -> QEnsemble:
    """A fresh critic of π trained by fitted Q evaluation on online replay and `source`."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    obs_dim, act_dim = online.obs_dim, online.act_dim
    critic = QEnsemble(obs_dim, act_dim, study.hidden, members=1)
    mean, std = trainer.offline.observations.mean(0), trainer.offline.observations.std(0) + 1e-3
    critic.obs_scaler.set(torch.as_tensor(mean), torch.as_tensor(std))
    target = QEnsemble(obs_dim, act_dim, study.hidden, members=1)
    target.load_state_dict(critic.state_dict())
    target.requires_grad_(False)
    optimizer = adam([{"params": critic.parameters(), "lr": study.lr}], torch.device("cpu"))
    half = study.batch_size // 2 if source is not None else study.batch_size
    gamma = trainer.config.agent_config.gamma
    for _ in range(study.steps):
        parts = [online.take(rng.integers(0, len(online), half))]
        if source is not None:
            parts.append(source.take(rng.integers(0, len(source), study.batch_size - half)))
        batch = Batch.from_transitions(Transitions.concatenate(parts), "cpu")
        with torch.no_grad():
            next_actions = trainer.agent.sample_actions(batch.next_observations)
            y = batch.rewards + gamma * (1.0 - batch.terminals) * target(
                batch.next_observations, next_actions)[0]
        loss = (critic(batch.observations, batch.actions)[0] - y).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        polyak_update(target, critic, study.target_update_rate)
    return critic


def held_out(trainer: Trainer, n: int, seed: int) -> tuple[Transitions, np.ndarray]:
    """Fresh episodes of π and, per row, its discounted Monte-Carlo return (NaN where the
    time limit cut it short of FULL_HORIZON steps)."""
    rows = collect_episodes(trainer.agent, trainer.env.spec.id, trainer.scaler, n,
                            seed=seed + HELD_OUT_SEED)
    gamma = trainer.config.agent_config.gamma
    ends = np.flatnonzero((rows.terminals > 0.5) | (rows.timeouts > 0.5)) + 1
    returns = np.full(len(rows), np.nan)
    for start, end in zip(np.concatenate([[0], ends[:-1]]), ends, strict=True):
        g = discounted_returns_to_go(rows.rewards[start:end], gamma)
        remaining = end - np.arange(start, end)
        complete = (rows.terminals[end - 1] > 0.5) | (remaining >= FULL_HORIZON)
        returns[start:end] = np.where(complete, g, np.nan)
    return rows, returns


@torch.no_grad()
def judge(critic: QEnsemble, rows: Transitions, returns: np.ndarray,
          trainer: Trainer) -> dict[str, float]:
    batch = Batch.from_transitions(rows, "cpu")
    q = critic(batch.observations, batch.actions)[0].numpy()
    next_q = critic(batch.next_observations,
                    trainer.agent.sample_actions(batch.next_observations))[0].numpy()
    gamma = trainer.config.agent_config.gamma
    td = q - (rows.rewards + gamma * (1.0 - rows.terminals) * next_q)
    known = ~np.isnan(returns)
    err = q[known] - returns[known]
    return {"mc_error_share": float((err ** 2).mean() / returns[known].var()),
            "mc_bias": float(err.mean()), "td_mse": float((td ** 2).mean()),
            "held_out_rows": int(known.sum())}


def study_run(run_dir: Path, study: Study) -> dict[str, dict[str, float]]:
    trainer = Trainer.inspect(run_dir)
    seed = trainer.config.seed
    torch.manual_seed(seed)
    online = trainer.replay.contents()
    rows, returns = held_out(trainer, study.rows, seed)
    results = {}
    for source in SOURCES:
        critic = fit_critic(online, source_rows(trainer, source, study.rows, seed), trainer,
                            study, seed)
        results[source] = judge(critic, rows, returns, trainer)
        print(f"quality: {run_dir} {source}: {results[source]}", flush=True)
    return results


def markdown(results: Results) -> list[str]:
    lines = [
        "Fitted Q evaluation of each run's final policy on half online replay, half the "
        "source (evidence/quality.py); errors on fresh held-out episodes of that policy. "
        "MC error: mean squared error against Monte-Carlo returns as a share of their "
        "variance (lower is better); paired differences are against offline rows, per run.",
        "",
        "| agent | dataset | source | runs | MC error share | bias | TD error | "
        "MC error − offline |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for agent, per_dataset in results.items():
        for dataset, per_run in per_dataset.items():
            lines += [f"| {agent} | {dataset} | {_row(source, list(per_run.values()))} |"
                      for source in SOURCES]
    return lines


def _row(source: str, runs: list[dict[str, dict[str, float]]]) -> str:
    values = [r[source] for r in runs]
    share = [v["mc_error_share"] for v in values]
    diff = PairedGain(tuple(r[source]["mc_error_share"] - r["offline"]["mc_error_share"]
                            for r in runs))
    paired = "–" if source == "offline" else (
        f"{diff.mean:+.3f}" + ("" if diff.interval is None else
                               " [{:+.3f}, {:+.3f}]".format(*diff.interval)))
    return (f"{source} | {len(values)} | {np.mean(share):.3f} ± "
            f"{np.std(share, ddof=1) if len(share) > 1 else 0:.3f} | "
            f"{np.mean([v['mc_bias'] for v in values]):+.1f} | "
            f"{np.mean([v['td_mse'] for v in values]):.2f} | {paired}")


def table_runs(specs: Sequence[RunSpec], seeds: Sequence[int] | None = None) -> list[RunSpec]:
    """The table's `edis` runs (of `seeds`, default all): what the study judges."""
    return [s for s in specs if s.group == "table" and s.arm == "edis"
            and (seeds is None or s.seed in seeds)]


def study_runs(specs: Sequence[RunSpec], runs: Mapping[str, dict[str, Any]], runs_root: Path,
               archive: Archive, study: Study, study_new: bool = True) -> Results:
    """Per agent, dataset and seed, the result of each run of `specs` that `runs` holds
    (the finished runs the report reads, `load_runs`): the one kept in the archive's
    quality folder for this study and this very run (its summary's digest), else, with
    `study_new`, measured now if its completed directory is here, and kept. A study that
    fails is reported and left out: the benchmark's report is still written."""
    settings = json.loads(json.dumps(dataclasses.asdict(study)))
    results: Results = {}
    for spec in (s for s in specs if s.name in runs):
        run = hashlib.sha256(json.dumps(runs[spec.name]["summary"], sort_keys=True)
                             .encode()).hexdigest()
        path = archive.root / QUALITY_FOLDER / f"{spec.name}.json"
        kept = json.loads(path.read_text()) if path.is_file() else {}
        if kept.get("study") == settings and kept.get("run") == run:
            result = kept["results"]
        elif study_new and status(runs_root / spec.name) == "completed":
            try:
                result = study_run(runs_root / spec.name, study)
            except Exception as err:  # one run's study must not lose the report
                print(f"quality: {spec.name} not studied: {type(err).__name__}: {err}",
                      file=sys.stderr)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"study": settings, "run": run, "results": result},
                                       indent=1, sort_keys=True) + "\n")
        else:
            continue
        results.setdefault(spec.agent, {}).setdefault(short(spec.dataset), {})[
            str(spec.seed)] = result
    return results


def write_results(results: Results, study: Study, out: Path) -> Path:
    """docs/synthetic_quality.json: the study's settings, every run's result and the table
    (removed when no run has a result, so that the report never shows an older study's)."""
    path = out / QUALITY_FILE
    if not results:
        path.unlink(missing_ok=True)
        return path
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"study": dataclasses.asdict(study), "results": results,
                                "markdown": markdown(results)}, indent=1))
    return path


def main(argv: list[str] | None = None) -> int:
    defaults = Grid()
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-root", type=Path, default=ROOT / "runs" / "evidence")
    parser.add_argument("--records", type=Path, default=ROOT / "evidence" / "records",
                        help="the evidence archive (python -m evidence --records)")
    parser.add_argument("--profile", default="evidence")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="the benchmark's --set overrides (their records' folder)")
    parser.add_argument("--agents", nargs="+", default=list(defaults.agents))
    parser.add_argument("--datasets", nargs="+", default=list(defaults.datasets))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(defaults.seeds))
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--steps", type=int, default=Study.steps)
    parser.add_argument("--rows", type=int, default=Study.rows)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    study = Study(rows=args.rows, steps=args.steps)
    specs = table_runs(plan(Grid(agents=args.agents, datasets=args.datasets,
                                 stages=("table",))), args.seeds)
    archive = Archive(args.records / args.profile, args.set)
    results = study_runs(specs, load_runs(args.runs_root, specs, archive), args.runs_root,
                         archive, study)
    if not results:
        print(f"quality: no completed edis run of seeds {args.seeds} under {args.runs_root} "
              f"nor a result of this study kept in {archive.root}", file=sys.stderr)
        return 1
    print(f"quality: {write_results(results, study, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
