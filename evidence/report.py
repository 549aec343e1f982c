"""The evidence report: docs/results.md and its plots, from whatever runs are finished.

Scores are D4RL-normalised returns of the deterministic policy (edis_core/data/scores.py).
Per run: its offline start (the last offline evaluation, shared by every arm of its seed),
the area under its online score curve (AUC: the mean over its online evaluations, the
primary metric) and the mean of its last three evaluations. Arms are compared seed by seed
(the runs of a seed share their offline checkpoint): the mean of the per-seed differences,
its Student's t 95% interval (sample standard deviation, ddof 1) and the smallest
difference the comparison detects with 80% power (MDE). The report reads in order: the
recipe search (tuning seeds), the health gate of the base agent, the noise floor (A/A) and
the positive control (oracle), then EDIS against none and unguided, then cost.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from scipy import stats

from edis_core.training.config import TrainConfig
from evidence.plan import (
    RECIPE_AGENT,
    RECIPES,
    CostKind,
    RunSpec,
    cost_kind,
    regime_arm,
    short,
)

matplotlib.use("Agg")
from matplotlib import pyplot as plt

Runs = dict[str, dict[str, Any]]
Launch = Callable[[RunSpec], list[str] | None]
"""What a run is launched with once the searches have chosen (the runner's `overrides`)."""
GATE_DROP = 10.0
"""The base agent must stay within this many normalised points of its offline start."""
PAPER_GAIN = 0.20
"""The paper's claim: about +20% average normalised return from adding EDIS."""
QUALITY_FILE = "synthetic_quality.json"


# ----- per run --------------------------------------------------------------------------------
def offline_score(run: dict[str, Any]) -> float:
    return float(run["summary"]["offline_final"]["normalized_score"])


def curve(run: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Online evaluation steps and normalised scores."""
    points = [(r["step"], r["normalized_score"]) for r in run["records"]
              if r["kind"] == "eval" and r["phase"] == "online"]
    steps, scores = zip(*points, strict=True) if points else ((), ())
    return np.asarray(steps, float), np.asarray(scores, float)


def auc(run: dict[str, Any]) -> float:
    """Area under the online score curve per step: the mean of the evenly spaced online
    evaluations."""
    return float(curve(run)[1].mean())


def last3(run: dict[str, Any]) -> float:
    return float(curve(run)[1][-3:].mean())


METRICS: dict[str, tuple[str, Callable[[dict[str, Any]], float]]] = {
    "auc": ("AUC", auc), "last3": ("last 3 evaluations", last3)}


# ----- paired comparisons ---------------------------------------------------------------------
@dataclass(frozen=True)
class PairedGain:
    """One arm minus another over seeds that share their offline checkpoint."""
    gains: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.gains)

    @property
    def mean(self) -> float:
        return float(np.mean(self.gains))

    @property
    def sd(self) -> float | None:
        return float(np.std(self.gains, ddof=1)) if self.n > 1 else None

    @property
    def interval(self) -> tuple[float, float] | None:
        """Student's t 95% interval; None with fewer than two seeds (no spread to judge by)."""
        if self.sd is None:
            return None
        half = stats.t.ppf(0.975, self.n - 1) * self.sd / np.sqrt(self.n)
        return self.mean - half, self.mean + half

    @property
    def mde(self) -> float | None:
        """The paired difference a two-sided 5% t-test detects with 80% power at this spread."""
        if self.sd is None:
            return None
        df = self.n - 1
        return float((stats.t.ppf(0.975, df) + stats.t.ppf(0.8, df)) * self.sd / np.sqrt(self.n))

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
        return f"{self.mean:+.1f}{interval}, ahead on {wins} of {self.n} seeds"


def by_seed(specs: Sequence[RunSpec], runs: Runs, group: str, agent: str, dataset: str,
            arm: str, metric: Callable[[dict[str, Any]], float]) -> dict[int, float]:
    return {s.seed: metric(runs[s.name]) for s in specs
            if (s.group, s.agent, s.dataset, s.arm) == (group, agent, dataset, arm)
            and s.name in runs}


def paired(specs: Sequence[RunSpec], runs: Runs, agent: str, dataset: str, arm: str,
           base: str, metric: Callable[[dict[str, Any]], float],
           group: str = "table") -> PairedGain | None:
    ours = by_seed(specs, runs, group, agent, dataset, arm, metric)
    theirs = by_seed(specs, runs, group, agent, dataset, base, metric)
    seeds = sorted(set(ours) & set(theirs))
    return PairedGain(tuple(ours[s] - theirs[s] for s in seeds)) if seeds else None


def starts(specs: Sequence[RunSpec], runs: Runs, group: str, agent: str, dataset: str,
           arm: str) -> dict[int, float]:
    return by_seed(specs, runs, group, agent, dataset, arm, offline_score)


def relative_drops(specs: Sequence[RunSpec], runs: Runs, group: str, agent: str, dataset: str,
                   arm: str) -> tuple[np.ndarray, np.ndarray]:
    """Evaluation steps and, per seed (rows) at each of them, score − offline start."""
    mine = [s for s in specs if (s.group, s.agent, s.dataset, s.arm) == (group, agent, dataset,
                                                                         arm)
            and s.name in runs]
    if not mine:
        return np.zeros(0), np.zeros((0, 0))
    curves = [curve(runs[s.name]) for s in mine]
    length = min(len(c[1]) for c in curves)
    rel = np.stack([c[1][:length] - offline_score(runs[s.name])
                    for s, c in zip(mine, curves, strict=True)])
    return curves[0][0][:length], rel


def _mean_sd(values: Sequence[float]) -> str:
    if not values:
        return "–"
    sd = f" ± {np.std(values, ddof=1):.1f}" if len(values) > 1 else ""
    return f"{np.mean(values):.1f}{sd} (n={len(values)})"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _cells(specs: Sequence[RunSpec], group: str) -> list[tuple[str, str]]:
    return sorted({(s.agent, s.dataset) for s in specs if s.group == group},
                  key=lambda c: (c[0], c[1]))


# ----- 1. the recipe search -------------------------------------------------------------------
def recipe_summary(specs: Sequence[RunSpec], runs: Runs, recipe: str,
                   dataset: str) -> dict[str, Any] | None:
    arm = f"recipe-{recipe}"
    mine = [s for s in specs if s.group == "recipe" and s.arm == arm and s.dataset == dataset]
    done = [s for s in mine if s.name in runs]
    if not done:
        return None
    agent = done[0].agent
    start = starts(specs, runs, "recipe", agent, dataset, arm)
    gain = {m: [by_seed(specs, runs, "recipe", agent, dataset, arm, f)[seed] - start[seed]
                for seed in start] for m, (_, f) in METRICS.items()}
    _, rel = relative_drops(specs, runs, "recipe", agent, dataset, arm)
    return {"n": len(done), "planned": len(mine), "start": list(start.values()),
            "auc_gain": gain["auc"], "last3_gain": gain["last3"],
            "worst_drop": float(rel.mean(0).min()) if rel.size else float("nan"),
            "worst_seed_drop": float(rel.min()) if rel.size else float("nan")}


def choose_recipe(specs: Sequence[RunSpec], runs: Runs) -> str | None:
    """Once every search run is finished: among the recipes whose mean score never falls
    more than GATE_DROP below the offline start on any dataset, the one with the highest
    mean AUC gain over its start; if none stays within it, the one that falls least."""
    search = [s for s in specs if s.group == "recipe"]
    if not search or any(s.name not in runs for s in search):
        return None
    recipes = sorted({s.arm.removeprefix("recipe-") for s in search})
    datasets = sorted({s.dataset for s in search})
    summary = {r: [recipe_summary(specs, runs, r, d) for d in datasets] for r in recipes}
    worst = {r: min(x["worst_drop"] for x in rows) for r, rows in summary.items()}
    gain = {r: float(np.mean([np.mean(x["auc_gain"]) for x in rows]))
            for r, rows in summary.items()}
    stable = [r for r in recipes if worst[r] >= -GATE_DROP]
    return max(stable, key=gain.get) if stable else max(recipes, key=worst.get)


def recipe_overrides(name: str) -> tuple[str, ...]:
    return RECIPES[name]


# ----- 1b. the regime: how much synthetic data ------------------------------------------------
def regime_gains(specs: Sequence[RunSpec],
                 runs: Runs) -> dict[tuple[float, int, str], PairedGain]:
    """Per (ρ, UTD, dataset): the oracle's AUC minus that of `none` at the same UTD (at UTD
    1, the chosen recipe's run), seed by seed."""
    recipe = choose_recipe(specs, runs)
    if recipe is None:
        return {}
    gains = {}
    for spec in specs:
        if spec.group != "regime" or spec.mode != "oracle":
            continue
        ratio, utd = _regime_of(spec)
        key = (ratio, utd, spec.dataset)
        if key in gains:
            continue
        oracle = by_seed(specs, runs, "regime", RECIPE_AGENT, spec.dataset, spec.arm, auc)
        group, base = (("recipe", f"recipe-{recipe}") if utd == 1
                       else ("regime", regime_arm("none", utd)))
        none = by_seed(specs, runs, group, RECIPE_AGENT, spec.dataset, base, auc)
        seeds = sorted(set(oracle) & set(none))
        if seeds:
            gains[key] = PairedGain(tuple(oracle[k] - none[k] for k in seeds))
    return dict(sorted(gains.items()))


def _regime_of(spec: RunSpec) -> tuple[float, int]:
    """ρ and UTD of a regime run, from its overrides."""
    values = dict(o.split("=", 1) for o in spec.overrides)
    return float(values["schedule.ratio"]), int(values["utd_ratio"])


def choose_regime(specs: Sequence[RunSpec], runs: Runs) -> tuple[float, int] | None:
    """Once every regime run is finished: the (ρ, UTD) whose oracle gains most over `none`
    on average over the datasets."""
    regime = [s for s in specs if s.group == "regime"]
    if not regime or any(s.name not in runs for s in regime):
        return None
    gains = regime_gains(specs, runs)
    if not gains:
        return None
    by_regime: dict[tuple[float, int], list[float]] = defaultdict(list)
    for (ratio, utd, _), gain in gains.items():
        by_regime[ratio, utd].append(gain.mean)
    return max(by_regime, key=lambda r: float(np.mean(by_regime[r])))


def regime_section(specs: Sequence[RunSpec], runs: Runs) -> list[str]:
    gains = regime_gains(specs, runs)
    if not any(s.group == "regime" for s in specs):
        return []
    rows = [[f"{ratio:g}", str(utd), short(dataset), _gain_cell(gain, "none")]
            for (ratio, utd, dataset), gain in gains.items()]
    choice = choose_regime(specs, runs)
    return [
        *_regime_header(),
        *_table(["ρ", "UTD", "dataset", "oracle − none (AUC)"], rows),
        "",
        *_regime_choice_lines(gains, choice),
        "",
    ]


def _regime_header() -> list[str]:
    return [
        "## 1b. How much synthetic data: the positive control on tuning seeds",
        "",
        "The oracle arm (real transitions of the current policy in the synthetic slot) with "
        "the chosen recipe, at each share ρ of the offline-sourced rows that synthetic rows "
        "replace and each update-to-data ratio (UTD), against that recipe's `none` at the "
        "same UTD on the same tuning seeds (AUC, paired by seed). The table takes the "
        "(ρ, UTD) at which the oracle gains most on average over the datasets: the regime "
        "most likely to show a gain, chosen without looking at EDIS. Every IQL arm of the "
        "table runs at that UTD.",
        "",
    ]


def _regime_choice_lines(gains: Mapping[tuple[float, int, str], PairedGain],
                         choice: tuple[float, int] | None) -> list[str]:
    """The choice, and per dataset what its oracle showed on the tuning seeds."""
    if choice is None:
        return ["The regime search has not finished: no regime is chosen yet."]
    lines = [f"Chosen for the table: **ρ = {choice[0]:g}, UTD = {choice[1]}**.", ""]
    for dataset in sorted({d for _, _, d in gains}):
        mine = {(r, u): g for (r, u, d), g in gains.items() if d == dataset}
        above = [f"ρ = {r:g}, UTD {u}" for (r, u), g in mine.items()
                 if g.verdict("none") == "beats none"]
        reading = (f"its interval lies above 0 at {'; '.join(above)} (uncorrected for the "
                   f"{len(mine)} regimes tried)" if above else
                   f"at none of the {len(mine)} regimes tried does its interval lie above 0")
        lines.append(f"- {short(dataset)}: at the chosen regime oracle − none = "
                     f"{_gain_cell(mine.get(choice))}; {reading}.")
    lines += ["", "The chosen regime is the one with the highest mean gain on a few tuning "
              "seeds, so its figure here is biased upward: the table's oracle arm measures "
              "the gain again on the reported seeds (section 2)."]
    return lines


def recipe_section(specs: Sequence[RunSpec], runs: Runs) -> list[str]:
    search = [s for s in specs if s.group == "recipe"]
    if not search:
        return []
    rows = []
    for recipe in sorted({s.arm.removeprefix("recipe-") for s in search}):
        for dataset in sorted({s.dataset for s in search}):
            x = recipe_summary(specs, runs, recipe, dataset)
            if x is None:
                continue
            rows.append([recipe, short(dataset), f"{x['n']}/{x['planned']}",
                         _mean_sd(x["start"]), _mean_sd(x["auc_gain"]),
                         _mean_sd(x["last3_gain"]), f"{x['worst_drop']:+.1f}",
                         f"{x['worst_seed_drop']:+.1f}",
                         "collapses" if x["worst_drop"] < -GATE_DROP else
                         ("stalls" if np.mean(x["auc_gain"]) <= 0 else "improves")])
    choice = choose_recipe(specs, runs)
    seeds = sorted({s.seed for s in search})
    return [
        "## 1. The base agent's fine-tuning recipe (tuning seeds, never reported)",
        "",
        f"IQL `none` under each online recipe from one offline checkpoint per seed (seeds "
        f"{', '.join(map(str, seeds))}). AUC gain and last-3 gain are over the offline start; "
        f"worst drop is the lowest mean over seeds of (evaluation − start) at any online "
        f"evaluation, the worst seed's drop the lowest single evaluation − start. A recipe "
        f"collapses when its worst drop is below −{GATE_DROP:g}; it stalls when it does not "
        "gain on average. Offline IQL after 20k updates starts some seeds far lower than "
        "others on hopper-medium (28 against 88), so a seed that starts low and climbs can "
        "offset another's dip in the mean: the worst seed's drop shows those dips.",
        "",
        *_table(["recipe", "dataset", "runs", "offline start", "AUC − start",
                 "last 3 − start", "worst drop", "worst seed's drop", "reading"], rows),
        "",
        "Recipes: " + "; ".join(f"`{k}`: {', '.join(v)}" for k, v in RECIPES.items()) + ".",
        "",
        (f"Chosen for every reported IQL run: **{choice}** (the highest mean AUC gain among "
         f"recipes that never fall more than {GATE_DROP:g} below their start)." if choice
         else "The search has not finished: no recipe is chosen yet."),
        "",
    ]


# ----- 2. health gate, noise floor, positive control -----------------------------------------
def gate(specs: Sequence[RunSpec], runs: Runs, agent: str, dataset: str) -> dict[str, Any]:
    """hopper-medium-style data: `none` stays within GATE_DROP of its start at every online
    evaluation (mean over seeds); medium-replay: its AUC is above its start (interval; None,
    not judged, with one seed)."""
    steps, rel = relative_drops(specs, runs, "table", agent, dataset, "none")
    drop = rel.mean(0) if rel.size else np.zeros(0)
    start = starts(specs, runs, "table", agent, dataset, "none")
    score = by_seed(specs, runs, "table", agent, dataset, "none", auc)
    improvement = PairedGain(tuple(score[s] - start[s] for s in start)) if start else None
    passed: bool | None
    if "medium-replay" in dataset:
        # One seed has no interval: not judged yet rather than failed.
        passed = (None if improvement is None or improvement.interval is None
                  else bool(improvement.interval[0] > 0))
        rule = "AUC above the offline start (95% interval above 0)"
    else:
        passed = bool(len(drop)) and float(drop.min()) >= -GATE_DROP
        rule = f"mean score within {GATE_DROP:g} of the offline start at every evaluation"
    return {"passed": passed, "rule": rule, "improvement": improvement,
            "worst_drop": float(drop.min()) if len(drop) else None,
            "worst_step": int(steps[np.argmin(drop)]) if len(drop) else None,
            "worst_seed_drop": float(rel.min()) if rel.size else None,
            "start": list(start.values())}


def controls_section(specs: Sequence[RunSpec], runs: Runs) -> list[str]:
    rows = []
    for agent, dataset in _cells(specs, "table"):
        g = gate(specs, runs, agent, dataset)
        if not g["start"]:
            continue
        aa = paired(specs, runs, agent, dataset, "none-aa", "none", auc)
        oracle = paired(specs, runs, agent, dataset, "oracle", "none", auc)
        rows.append([
            agent, short(dataset), _mean_sd(g["start"]),
            "–" if g["improvement"] is None else str(g["improvement"]),
            "–" if g["worst_drop"] is None else (f"{g['worst_drop']:+.1f} at "
                                                 f"{g['worst_step']:,} (one seed: "
                                                 f"{g['worst_seed_drop']:+.1f})"),
            f"{_gate_word(g['passed'])} ({g['rule']})",
            _gain_cell(aa), _gain_cell(oracle, "none")])
    if not rows:
        return []
    return [
        "## 2. Can this protocol answer? Health gate, noise floor, positive control",
        "",
        "The base agent (`none`) must fine-tune healthily before any arm is judged; the A/A "
        "arm (`none` again with another sampling seed) shows how far two identical arms "
        "drift apart; the oracle arm (real on-policy transitions of the current policy in "
        "the synthetic slot, from a second simulator, not counted as env steps) is the "
        "ceiling of any generator: where it does not beat `none`, no synthetic source can "
        "show a gain here.",
        "",
        *_table(["agent", "dataset", "offline start", "none: AUC − start",
                 "none: worst mean drop (step)", "health gate", "A/A: none-aa − none (AUC)",
                 "oracle − none (AUC)"], rows),
        "",
    ]


def _gate_word(passed: bool | None) -> str:
    return {True: "passes", False: "FAILS", None: "not judged yet"}[passed]


def _gain_cell(gain: PairedGain | None, base: str | None = None) -> str:
    if gain is None:
        return "–"
    mde = "" if gain.mde is None else f"; MDE {gain.mde:.1f}"
    verdict = "" if base is None else f": {gain.verdict(base)}"
    return f"{gain}{mde}{verdict}"


# ----- 3. EDIS against its baselines ----------------------------------------------------------
COMPARISONS = (("edis", "none"), ("edis", "unguided"), ("unguided", "none"),
               ("edis-wT", "edis"), ("oracle", "none"))


def score_section(specs: Sequence[RunSpec], runs: Runs) -> list[str]:
    rows, lines = [], []
    arms = [a for a in ("none", "none-aa", "unguided", "edis", "edis-wT", "oracle")
            if any(s.arm == a for s in specs if s.group == "table")]
    for agent, dataset in _cells(specs, "table"):
        for key, (label, metric) in METRICS.items():
            row = [agent, short(dataset), label]
            for arm in arms:
                row.append(_mean_sd(list(by_seed(specs, runs, "table", agent, dataset, arm,
                                                 metric).values())))
            rows.append(row)
            if key == "auc":
                lines += _verdict_lines(specs, runs, agent, dataset)
    if not rows:
        return []
    pairs = [[agent, short(dataset), f"{arm} − {base}", label,
              _gain_cell(paired(specs, runs, agent, dataset, arm, base, metric), base)]
             for agent, dataset in _cells(specs, "table")
             for arm, base in COMPARISONS for label, metric in METRICS.values()
             if paired(specs, runs, agent, dataset, arm, base, metric) is not None]
    return [
        "## 3. EDIS against the base agent and unguided generation",
        "",
        "Mean ± sample std over seeds of each arm:",
        "",
        *_table(["agent", "dataset", "metric", *arms], rows),
        "",
        "Paired by seed (the arms of a seed share their offline checkpoint and prior); MDE is "
        "the difference this comparison detects with 80% power:",
        "",
        *_table(["agent", "dataset", "comparison", "metric", "paired difference"], pairs),
        "",
        "Verdicts (primary metric: AUC):",
        "",
        *lines,
        "",
    ]


def _verdict_lines(specs: Sequence[RunSpec], runs: Runs, agent: str,
                   dataset: str) -> list[str]:
    name = f"- {agent} on {short(dataset)}"
    g = gate(specs, runs, agent, dataset)
    oracle = paired(specs, runs, agent, dataset, "oracle", "none", auc)
    none = by_seed(specs, runs, "table", agent, dataset, "none", auc)
    target = PAPER_GAIN * abs(float(np.mean(list(none.values())))) if none else None
    if not none:
        return [f"{name}: the table cannot answer yet: the base agent has no finished runs."]
    if g["passed"] is None:
        return [f"{name}: the table cannot answer yet: its health gate needs a second seed "
                f"({g['rule']})."]
    if not g["passed"]:
        return [f"{name}: the table cannot answer: the base agent fails its health gate "
                f"({g['rule']})."]
    if oracle is None or oracle.interval is None or oracle.interval[0] <= 0:
        return [f"{name}: the table cannot answer: the positive control does not beat none "
                f"(oracle − none: {oracle}), so no synthetic source can show a gain in this "
                "regime; more synthetic share, a higher update-to-data ratio or earlier "
                "refreshes would be the next regime to try."]
    out = []
    for base in ("none", "unguided"):
        gain = paired(specs, runs, agent, dataset, "edis", base, auc)
        if gain is None or gain.interval is None:
            continue
        verdict = gain.verdict(base)
        if verdict.startswith("is not") and gain.mde is not None and target is not None:
            power = (f"the protocol would have detected a difference of {gain.mde:.1f} "
                     f"(a {PAPER_GAIN:.0%} gain over none is {target:.1f})")
            if gain.mde > target:
                power = (f"it cannot rule out a {PAPER_GAIN:.0%} gain ({target:.1f}): its "
                         f"minimum detectable difference is {gain.mde:.1f}")
            verdict += f"; {power}"
        out.append(f"{name}: EDIS {verdict}: AUC difference {gain}.")
    return out


# ----- cost, plots, quality -------------------------------------------------------------------
_SHARES = ("agent_updates", "collect", "prior", "energy", "generation", "other")


def cost_section(specs: Sequence[RunSpec], runs: Runs) -> list[str]:
    table = [s for s in specs if s.group == "table" and s.name in runs]
    rows, per_step = [], {}
    for agent in sorted({s.agent for s in table}):
        for arm in ("none", "unguided", "edis", "edis-wT", "oracle"):
            mine = [runs[s.name] for s in table if (s.agent, s.arm) == (agent, arm)]
            if not mine:
                continue
            cost = _cost(mine)
            per_step[agent, arm] = cost["cpu"]
            base = per_step.get((agent, "none"))
            rows.append([agent, arm, len(mine), f"{1e3 * cost['wall']:.1f}",
                         f"{1e3 * cost['cpu']:.1f}",
                         f"{cost['cpu'] / base:.2f}" if base else "–",
                         *(f"{100 * cost[k]:.0f}%" for k in _SHARES)])
    if not rows:
        return []
    return [
        "## 4. Cost per online env step",
        "",
        "Wall clock and CPU time of the online phase divided by its env steps (runs share the "
        "machine, `--jobs` at a time, one torch thread each, so CPU time is the steadier "
        "figure); shares are of the online wall clock. The prior is trained once per seed in "
        "the offline run and shared by the generated arms.",
        "",
        *_table(["agent", "arm", "runs", "wall ms / env step", "CPU ms / env step",
                 "CPU ÷ none", *(f"{k} share" for k in _SHARES)], rows),
        "",
    ]


def _cpu_seconds(run: dict[str, Any]) -> float:
    """CPU time of a finished run's phases (the report's measure of compute; the runner's
    time budget uses wall clock, runner.wall_seconds)."""
    return float(sum(run["summary"].get("phase_cpu_seconds", {}).values()))


def compute_section(specs: Sequence[RunSpec], runs: Runs, jobs: int,
                    launch: Launch | None = None) -> list[str]:
    """CPU time of the finished runs by stage, and of the runs still to do at the mean of
    finished runs of their kind (as timed by the process that finished each: a resumed run
    counts its last process only, so these are floors). A finished run's kind comes from
    the overrides its record was launched with, else from `launch` (what a run is launched
    with once the searches have chosen, None before), as does a run's still to do; without
    either, a run counts at its own overrides."""
    done = [s for s in specs if s.name in runs]
    if not done:
        return []
    todo = [s for s in specs if s.name not in runs]
    planned = {s.name: launch(s) if launch is not None else None for s in todo}
    spent: dict[str, float] = defaultdict(float)
    of_kind: dict[CostKind, list[float]] = defaultdict(list)
    for spec in done:
        seconds = _cpu_seconds(runs[spec.name])
        spent[spec.group] += seconds
        # A run read from its directory has no overrides of its own: those it was launched
        # with are what it would be launched with now (the archive keeps runs so).
        launched = runs[spec.name].get("overrides") or (launch(spec) if launch else None)
        of_kind[cost_kind(spec, launched)].append(seconds)
    kinds = {s.name: cost_kind(s, planned[s.name]) for s in todo}
    known = [float(np.mean(of_kind[kinds[s.name]])) for s in todo if kinds[s.name] in of_kind]
    # Table runs take the regime's UTD only once it is chosen; until then their own say 1.
    unchosen = sum(s.group == "table" and s.tuned and planned[s.name] is None for s in todo)
    by_stage = ", ".join(f"{group} {seconds / 3600:.1f}" for group, seconds in spent.items())
    lines = [f"Compute: the {len(done)} finished runs took {sum(spent.values()) / 3600:.1f} "
             f"CPU-hours ({by_stage})."]
    if todo:
        unknown = len(todo) - len(known)
        lines.append(
            f"The {len(todo)} runs still to do: about {sum(known) / 3600:.1f} CPU-hours for "
            f"the {len(known)} of a kind already timed (≈ {sum(known) / 3600 / jobs:.1f} h "
            f"at --jobs {jobs})" + (f"; {unknown} of kinds not timed yet" if unknown else "")
            + "." + (f" {unchosen} table runs are costed at UTD 1, their own overrides, until "
                     "the regime stage chooses theirs: its UTD multiplies their agent updates."
                     if unchosen else ""))
    return [" ".join(lines), ""]


def _cost(runs: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Over the runs' online phases as timed by the process that ran them: a resumed run
    counts only the steps and seconds of its last process."""
    steps = sum(r["summary"]["online_steps_timed"] for r in runs)
    wall = sum(r["summary"]["phase_seconds"].get("online", 0.0) for r in runs)
    cpu = sum(r["summary"]["phase_cpu_seconds"].get("online", 0.0) for r in runs)
    parts: dict[str, float] = defaultdict(float)
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
    return {"wall": wall / max(steps, 1), "cpu": cpu / max(steps, 1), **shares}


def plot_curves(specs: Sequence[RunSpec], runs: Runs, out: Path, group: str,
                name: str) -> Path | None:
    """One panel per (agent, dataset): mean ± standard error over seeds of the score
    relative to the offline start, per arm."""
    cells = _cells(specs, group)
    cells = [c for c in cells if any(s.name in runs for s in specs
                                     if s.group == group and (s.agent, s.dataset) == c)]
    if not cells:
        return None
    fig, axes = plt.subplots(1, len(cells), figsize=(5.5 * len(cells), 4), squeeze=False)
    for ax, (agent, dataset) in zip(axes[0], cells, strict=True):
        for arm in sorted({s.arm for s in specs if s.group == group}):
            mine = [s for s in specs if (s.group, s.agent, s.dataset, s.arm) == (
                group, agent, dataset, arm) and s.name in runs]
            if mine:
                _band(ax, [runs[s.name] for s in mine], arm.removeprefix("recipe-"))
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set(title=f"{agent} on {short(dataset)}", xlabel="online env steps",
               ylabel="normalised score − offline start")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _band(ax: Any, runs: list[dict[str, Any]], label: str) -> None:
    curves = [curve(r) for r in runs]
    length = min(len(c[1]) for c in curves)
    steps = np.concatenate([[0.0], curves[0][0][:length]])
    rel = np.stack([np.concatenate([[0.0], c[1][:length] - offline_score(r)])
                    for c, r in zip(curves, runs, strict=True)])
    mean = rel.mean(0)
    sem = rel.std(0, ddof=1) / np.sqrt(len(rel)) if len(rel) > 1 else np.zeros_like(mean)
    ax.plot(steps, mean, label=f"{label} (n={len(rel)})")
    ax.fill_between(steps, mean - sem, mean + sem, alpha=0.2)


def quality_section(out: Path) -> list[str]:
    """The synthetic-data quality study (evidence/quality.py), when it has been run."""
    path = out / QUALITY_FILE
    if not path.is_file():
        return ["## 5. Synthetic data apart from RL noise", "",
                "Not measured yet: `python -m evidence` studies each table `edis` run it "
                f"finishes (evidence/quality.py) and writes docs/{QUALITY_FILE}.", ""]
    data = json.loads(path.read_text())
    return ["## 5. Synthetic data apart from RL noise", "", *data["markdown"], ""]


# ----- the whole report -----------------------------------------------------------------------
def write_report(specs: Sequence[RunSpec], runs: Runs, out: Path, command: str,
                 profile: str, budgets: Mapping[str, TrainConfig], jobs: int = 2,
                 launch: Launch | None = None) -> Path:
    """`budgets`: each agent's configuration of its table runs; `jobs`: runs at a time;
    `launch`: what each run is launched with (compute_section)."""
    out.mkdir(parents=True, exist_ok=True)
    done = sum(s.name in runs for s in specs)
    plots = [p for p in (plot_curves(specs, runs, out, "recipe", "results-recipes.png"),
                         plot_curves(specs, runs, out, "table", "results-table.png")) if p]
    lines = [
        "# Evidence: does EDIS help its base agent here?",
        "",
        f"Written by `{command}` on {datetime.date.today().isoformat()}; machine: "
        f"{platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}. "
        f"Finished runs: {done} of {len(specs)} planned"
        + (" (partial: rerun the command to complete it)." if done < len(specs) else "."),
        "",
        *compute_section(specs, runs, jobs, launch),
        *protocol_section(budgets, profile, any(s.group == "regime" for s in specs)),
        *recipe_section(specs, runs),
        *regime_section(specs, runs),
        *controls_section(specs, runs),
        *score_section(specs, runs),
        *(f"![learning curves]({p.name})" for p in plots),
        "",
        *cost_section(specs, runs),
        *quality_section(out),
    ]
    path = out / "results.md"
    path.write_text("\n".join(lines))
    return path


def protocol_section(budgets: Mapping[str, TrainConfig], profile: str,
                     regime: bool) -> list[str]:
    budget = "; ".join(
        f"{agent}: {c.offline_steps:,} offline updates, {c.online_steps:,} online env steps "
        f"({c.utd_ratio} agent update{'s' if c.utd_ratio > 1 else ''} each), evaluation "
        f"every {c.online_eval_every:,} steps over {c.eval_episodes} deterministic "
        "episodes, refresh every "
        f"{c.schedule.refresh_every:,} steps once {c.schedule.min_positive:,} online rows "
        f"exist, {c.schedule.samples_per_refresh:,} rows per refresh, ρ = "
        f"{c.schedule.ratio:g} of the offline-sourced rows"
        for agent, c in budgets.items())
    searched = ("; for IQL the regime stage's choice of ρ and UTD replaces these"
                if regime else "")
    agents = [] if "calql" in budgets else [
        "- Agents: IQL alone. A Cal-QL update costs about 11× an IQL update at one thread "
        "(docs/speed.md: 13.7 against 158 updates/s); the plan leaves Cal-QL out to give "
        "IQL ten seeds on this machine, and `python -m evidence --agents calql --seeds 0 1 "
        "2` runs it at three."]
    return [
        "## Protocol and departures from the paper",
        "",
        "- Arms: `none` (the base agent), `none-aa` (`none` with another sampling seed), "
        "`unguided` (the prior's samples), `edis` (w_s = w_π = 1, Theorem 3.1's target, E_T "
        "off), `edis-wT` (E_T trained and applied at w_T = 1), `oracle` (real transitions of "
        "the current policy in the synthetic slot). Synthetic rows replace a share ρ of the "
        "offline-sourced rows of the agent's own batch rule, so every arm has the same "
        "online share.",
        "- One offline pre-training per (agent, dataset, seed), with the diffusion prior, "
        "shared by every arm of that seed; observations standardised and IQL's rewards "
        "scaled as CORL does, inside the networks, so real and generated rows are treated "
        "alike.",
        f"- Budget (profile `{profile}`), the same for every arm of an agent: {budget}"
        f"{searched}.",
        "- Departures from the paper (Liu et al. 2024: D4RL, 1M offline and 200k online steps, "
        "~+20% average normalised return from EDIS): the datasets are this project's "
        "Hopper-v5 recipes (edis/hopper-medium-v0, edis/hopper-medium-replay-v0), not D4RL; "
        "the budget is 2% of the paper's offline and 10% of its online steps; the denoiser is "
        "256 × 3 with 32 Heun steps (the paper's: 1024 × 6, 128 steps); the base agents' "
        "recipes are CORL's (the authors tuned theirs per method).",
        *agents,
        "",
    ]
