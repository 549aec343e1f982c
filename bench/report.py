"""The evidence report: docs/results.md and its plots, from whatever runs are finished.

Scores are D4RL-normalised returns of the deterministic policy (edis_core/data/scores.py), at
the end of the online phase; spreads are standard deviations over seeds, and EDIS's gain
over a baseline is judged by the 95% interval of its per-seed differences. Costs come from each
run's summary (wall clock and CPU time of the online phase, where its wall clock went) and
its refresh records (prior, energy and generation seconds).
"""

from __future__ import annotations

import datetime
import os
import platform
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from scipy import stats

from bench.plan import MODES, RunSpec, short
from bench.runner import read_run
from edis_core.training.config import TrainConfig

matplotlib.use("Agg")
from matplotlib import pyplot as plt

Runs = dict[str, dict[str, Any]]


def load_runs(root: Path, specs: Sequence[RunSpec]) -> Runs:
    """The finished runs of `specs`, by name."""
    return {s.name: run for s in specs if (run := read_run(root / s.name)) is not None}


def final_score(run: dict[str, Any]) -> float:
    return float(run["summary"]["online_final"]["normalized_score"])


def offline_score(run: dict[str, Any]) -> float:
    return float(run["summary"]["offline_final"]["normalized_score"])


def sweep_choice(specs: Sequence[RunSpec], runs: Runs) -> tuple[float, float] | None:
    """The (ρ, scale) with the best mean final score over the tuning seeds, once every sweep
    run is finished; None before."""
    sweep = [s for s in specs if s.group == "sweep"]
    if not sweep or any(s.name not in runs for s in sweep):
        return None
    by_label = _scores_by(sweep, runs, lambda s: s.label)
    best = max(by_label, key=lambda label: np.mean(by_label[label]))
    rho, scale = best.removeprefix("rho").split("-scale")
    return float(rho), float(scale)


def _scores_by(specs: Sequence[RunSpec], runs: Runs, key) -> dict[Any, list[float]]:
    grouped: dict[Any, list[float]] = defaultdict(list)
    for spec in specs:
        if spec.name in runs:
            grouped[key(spec)].append(final_score(runs[spec.name]))
    return grouped


def _mean_std(values: Sequence[float]) -> str:
    if not values:
        return "–"
    return f"{np.mean(values):.1f} ± {np.std(values):.1f} (n={len(values)})"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _cell(table: Sequence[RunSpec], runs: Runs, dataset: str,
          agent: str) -> tuple[dict[str, list[float]], list[float]]:
    """One agent on one dataset: its finished final scores by mode, and its offline starts
    (one per seed, read from the `none` runs, which all start from it)."""
    mine = [s for s in table if (s.dataset, s.agent) == (dataset, agent) and s.name in runs]
    return (_scores_by(mine, runs, lambda s: s.mode),
            [offline_score(runs[s.name]) for s in mine if s.mode == "none"])


def score_table(specs: Sequence[RunSpec], runs: Runs) -> list[str]:
    table = [s for s in specs if s.group == "table"]
    rows = []
    for dataset, agent in sorted({(s.dataset, s.agent) for s in table}):
        final, start = _cell(table, runs, dataset, agent)
        paired = _paired_column(table, runs, dataset, agent)
        rows.append([short(dataset), agent, _mean_std(start),
                     *(_mean_std(final.get(m, [])) for m in MODES), paired])
    return _table(["dataset", "agent", "offline (start)", *MODES,
                   "EDIS − none / EDIS − unguided (paired by seed)"], rows)


def _gains(table: Sequence[RunSpec], runs: Runs, dataset: str,
           agent: str) -> dict[str, list[float]]:
    """Per seed (same offline checkpoint), EDIS minus each baseline's final score."""
    final = {(s.seed, s.mode): final_score(runs[s.name]) for s in table
             if (s.dataset, s.agent) == (dataset, agent) and s.name in runs}
    return {base: [final[seed, "edis"] - final[seed, base]
                   for seed in sorted({k[0] for k in final})
                   if (seed, "edis") in final and (seed, base) in final]
            for base in ("none", "unguided")}


@dataclass(frozen=True)
class PairedGain:
    """EDIS minus a baseline over seeds that share their offline checkpoint: the mean and
    Student's t 95% interval of the per-seed differences."""
    gains: tuple[float, ...]

    @property
    def mean(self) -> float:
        return float(np.mean(self.gains))

    @property
    def interval(self) -> tuple[float, float] | None:
        """None with fewer than two seeds (no spread to judge by)."""
        n = len(self.gains)
        if n < 2:
            return None
        half = stats.t.ppf(0.975, n - 1) * np.std(self.gains, ddof=1) / np.sqrt(n)
        return self.mean - half, self.mean + half

    def verdict(self, base: str) -> str:
        """'beats' / 'is beaten by' `base` only when the interval excludes 0."""
        if self.interval is None:
            return f"has one seed against {base}, no verdict yet"
        low, high = self.interval
        if low > 0:
            return f"beats {base}"
        if high < 0:
            return f"is beaten by {base}"
        return f"is not distinguishable from {base}"

    def __str__(self) -> str:
        wins = sum(g > 0 for g in self.gains)
        interval = ("" if self.interval is None
                    else ", 95% interval [{:+.1f}, {:+.1f}]".format(*self.interval))
        return f"{self.mean:+.1f}{interval}, ahead on {wins} of {len(self.gains)} seeds"


def paired_gains(table: Sequence[RunSpec], runs: Runs, dataset: str,
                 agent: str) -> dict[str, PairedGain]:
    """Per baseline, EDIS's final score minus the baseline's, seed by seed."""
    return {base: PairedGain(tuple(gains))
            for base, gains in _gains(table, runs, dataset, agent).items() if gains}


def _paired_column(table: Sequence[RunSpec], runs: Runs, dataset: str, agent: str) -> str:
    gains = paired_gains(table, runs, dataset, agent)
    if set(gains) != {"none", "unguided"}:
        return "–"
    return " / ".join(str(gains[base]) for base in ("none", "unguided"))


def verdicts(specs: Sequence[RunSpec], runs: Runs) -> list[str]:
    """One plain sentence per agent, dataset and baseline: does EDIS beat it here, judged by
    the 95% interval of the paired per-seed differences?"""
    table = [s for s in specs if s.group == "table"]
    return [f"- {agent} on {short(dataset)}: EDIS {gain.verdict(base)}: final score "
            f"difference {gain}."
            for dataset, agent in sorted({(s.dataset, s.agent) for s in table})
            for base, gain in paired_gains(table, runs, dataset, agent).items()]


def drops(specs: Sequence[RunSpec], runs: Runs) -> list[str]:
    """A plain line wherever every mode ends below its offline start: there the budget shows
    the early online drop and the recovery from it, not fine-tuning gains."""
    table = [s for s in specs if s.group == "table"]
    lines = []
    for dataset, agent in sorted({(s.dataset, s.agent) for s in table}):
        final, start = _cell(table, runs, dataset, agent)
        if set(final) != set(MODES) or not start:
            continue
        means = [float(np.mean(final[m])) for m in MODES]
        if max(means) < np.mean(start):
            lines.append(f"- {agent} on {short(dataset)}: every mode ends below its offline "
                         f"start ({np.mean(start):.1f} → {min(means):.1f}-{max(means):.1f}); "
                         "at this budget the table measures the early online drop and the "
                         "recovery from it, not fine-tuning gains.")
    return lines


def cost_rows(specs: Sequence[RunSpec], runs: Runs) -> tuple[list[str], dict[str, float]]:
    """Per agent and mode: seconds per online env step, and where the online time goes; the
    ratios to the base agent are of CPU time."""
    table = [s for s in specs if s.group == "table" and s.name in runs]
    rows, per_step = [], {}
    for agent in sorted({s.agent for s in table}):
        for mode in MODES:
            mine = [runs[s.name] for s in table if (s.agent, s.mode) == (agent, mode)]
            if not mine:
                continue
            cost = _cost(mine)
            per_step[agent, mode] = cost["cpu"]    # the steadier figure on shared cores
            base = per_step.get((agent, "none"))
            rows.append([agent, mode, len(mine), f"{1e3 * cost['wall']:.1f}",
                         f"{1e3 * cost['cpu']:.1f}",
                         f"{cost['cpu'] / base:.2f}" if base else "–",
                         f"{cost['offline_prior']:.0f}",
                         *(f"{100 * cost[k]:.0f}%" for k in _SHARES)])
    header = ["agent", "mode", "runs", "wall ms / env step", "CPU ms / env step",
              "CPU ÷ none", "prior pre-training s", *(f"{k} share" for k in _SHARES)]
    return _table(header, rows), per_step


_SHARES = ("agent_updates", "collect", "prior", "energy", "generation", "other")


def _cost(runs: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Over the runs' online phases as timed by the process that ran them: a resumed run
    counts only the steps and seconds of its last process."""
    # Summaries written before "online_steps_timed" come from runs timed in one process.
    steps = sum(r["summary"].get("online_steps_timed", r["summary"]["steps"]["online"])
                for r in runs)
    wall = sum(r["summary"]["phase_seconds"].get("online", 0.0) for r in runs)
    cpu = sum(r["summary"]["phase_cpu_seconds"].get("online", 0.0) for r in runs)
    parts = defaultdict(float)
    for r in runs:
        for key, seconds in r["summary"]["online_seconds"].items():
            parts[key] += seconds
        for record in r["records"]:
            if record["kind"] == "synthetic":
                for key in ("prior", "energy", "generation"):
                    parts[key] += record.get(f"{key}_seconds", 0.0)
    # The refresh runs inside the loop's synthetic slot; what is left of it is bookkeeping.
    parts["other"] = wall - parts["collect"] - parts["agent_updates"] - sum(
        parts[k] for k in ("prior", "energy", "generation"))
    shares = {k: parts[k] / wall if wall else 0.0 for k in _SHARES}
    return {"wall": wall / steps, "cpu": cpu / steps, **shares,
            "offline_prior": float(np.mean([r["summary"]["phase_seconds"].get("prior", 0.0)
                                            for r in runs
                                            if "prior" in r["summary"]["phase_seconds"]]
                                           or [0.0]))}


def group_table(specs: Sequence[RunSpec], runs: Runs, group: str,
                reference: Sequence[RunSpec] = ()) -> list[str]:
    mine = [s for s in specs if s.group == group]
    by_label = _scores_by([*reference, *mine], runs, lambda s: s.label)
    return _table(["setting", "final normalised score"],
                  [[label, _mean_std(scores)] for label, scores in by_label.items()])


def plot_curves(specs: Sequence[RunSpec], runs: Runs, out: Path) -> list[Path]:
    """One figure per dataset: a panel per agent, mean ± std of the score per mode."""
    table = [s for s in specs if s.group == "table" and s.name in runs]
    paths = []
    for dataset in sorted({s.dataset for s in table}):
        agents = sorted({s.agent for s in table if s.dataset == dataset})
        fig, axes = plt.subplots(1, len(agents), figsize=(5.5 * len(agents), 4), squeeze=False)
        for ax, agent in zip(axes[0], agents, strict=True):
            for mode in MODES:
                curves = [_curve(runs[s.name]) for s in table
                          if (s.dataset, s.agent, s.mode) == (dataset, agent, mode)]
                if curves:
                    _band(ax, curves, mode)
            ax.set(title=f"{agent} on {short(dataset)}", xlabel="online env steps",
                   ylabel="normalised score")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        path = out / f"results-{short(dataset)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _curve(run: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    points = [(0, offline_score(run))] + [
        (r["step"], r["normalized_score"]) for r in run["records"]
        if r["kind"] == "eval" and r["phase"] == "online"]
    steps, scores = zip(*points, strict=True)
    return np.asarray(steps), np.asarray(scores)


def _band(ax: Any, curves: list[tuple[np.ndarray, np.ndarray]], label: str) -> None:
    steps = curves[0][0]
    scores = np.stack([np.interp(steps, s, v) for s, v in curves])
    mean, std = scores.mean(0), scores.std(0)
    ax.plot(steps, mean, label=f"{label} (n={len(curves)})")
    ax.fill_between(steps, mean - std, mean + std, alpha=0.2)


def write_report(specs: Sequence[RunSpec], runs: Runs, out: Path, command: str,
                 profile: str, budgets: Mapping[str, TrainConfig]) -> Path:
    """`budgets`: each agent's configuration of its online runs."""
    out.mkdir(parents=True, exist_ok=True)
    choice = sweep_choice(specs, runs)
    plots = plot_curves(specs, runs, out)
    costs, per_step = cost_rows(specs, runs)
    done = sum(s.name in runs for s in specs)
    edis_ablation = [s for s in specs if s.group == "table" and s.mode == "edis"
                     and s.agent in {a.agent for a in specs if a.group == "ablation"}
                     and s.dataset in {a.dataset for a in specs if a.group == "ablation"}]
    lines = [
        "# Evidence: EDIS against its base agents, like for like",
        "",
        f"Written by `{command}` on {datetime.date.today().isoformat()}; machine: "
        f"{platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}. "
        f"Finished runs: {done} of {len(specs)} planned"
        + (" (the table below is partial; rerun the command to complete it)."
           if done < len(specs) else "."),
        "",
        "## Protocol",
        "",
        "- The same online share in every mode: half of each online batch is online replay; "
        "the other half is offline rows (`none`) or synthetic rows that replace them "
        "(`unguided`, `edis`: ρ of the batch, offline rows for the rest).",
        "- CORL's normalisation for each agent, inside the networks, so real and generated "
        "rows are treated alike: observations standardised by the offline data; IQL's "
        "rewards × 1000 / (return range of the dataset's episodes); Cal-QL's raw.",
        "- One offline pre-training per (agent, dataset, seed), shared by its three modes.",
        "- ρ and the guidance scale are chosen by a sweep on tuning seeds that are never "
        "reported" + (f"; chosen: ρ = {choice[0]:g}, scale = {choice[1]:g}." if choice
                      else "; the sweep has not finished."),
        f"- Budget (profile `{profile}`), the same for every mode of an agent: "
        + "; ".join(f"{agent}: {c.offline_steps:,} offline updates, {c.online_steps:,} "
                    f"online env steps, evaluation every {c.online_eval_every:,} steps over "
                    f"{c.eval_episodes} episodes" for agent, c in budgets.items()) + ".",
        "",
        "## Final normalised score (mean ± std over seeds)",
        "",
        *score_table(specs, runs),
        "",
        "EDIS − baseline is taken seed by seed (the two runs of a seed share their offline "
        "checkpoint); EDIS 'beats' a baseline only when the Student's t 95% interval of "
        "those differences lies above zero.",
        "",
        *verdicts(specs, runs),
        *drops(specs, runs),
        "",
        *(f"![learning curves]({p.name})" for p in plots),
        "",
        "## Cost per online env step",
        "",
        "Wall clock and CPU time of the online phase divided by its env steps; runs share "
        "the machine (`--jobs` at a time, one torch thread each), so CPU time is the "
        "steadier figure. Shares are of the online wall clock; prior pre-training is the "
        "one-off offline diffusion training.",
        "",
        *costs,
        "",
        *(["EDIS ÷ base agent per env step (CPU time): "
           + ", ".join(f"{a} {per_step[a, 'edis'] / per_step[a, 'none']:.2f}"
                       for a in sorted({k[0] for k in per_step})
                       if (a, "edis") in per_step and (a, "none") in per_step)
           + " (goal ≤ 2)."] if per_step else []),
        "",
        "## Sweep (tuning seeds, not reported above)",
        "",
        *group_table(specs, runs, "sweep"),
        "",
        "## Ablation (each energy changed in turn)",
        "",
        *group_table(specs, runs, "ablation", reference=edis_ablation),
        "",
    ]
    path = out / "results.md"
    path.write_text("\n".join(lines))
    return path
