"""What the evidence benchmark runs: every run as a `RunSpec`, and the order they depend on.

1. offline  one offline pre-training per (agent, dataset, seed) with online_steps=0, which
            also trains the diffusion prior where a generated arm needs one; every arm of
            that seed starts from it (`offline_from`: the same agent and the same prior), so
            arms differ only online.
2. recipe   the base agent (`none`) under each fine-tuning recipe of RECIPES, on the tuning
            seeds only (never reported): the table's agent runs take the recipe the search
            chooses (evidence/report.py: choose_recipe).
3. regime   the positive control (`oracle`) at each synthetic share ρ of RATIOS and each
            update-to-data ratio of UTDS, with the chosen recipe, on the tuning seeds,
            against `none` at the same UTD: the table takes the (ρ, UTD) at which the
            oracle gains most over `none` (choose_regime), so that the regime is the one in
            which the protocol can best detect a gain, chosen without EDIS. Every arm of the
            table takes the UTD, the synthetic arms the ρ.
4. table    every arm of ARMS for every agent, dataset and reported seed, seed by seed, so
            that a partial table is paired and balanced.

Arms: `none` (the base agent), `none-aa` (the same with another sampling seed: the A/A noise
floor), `unguided` (the prior's samples), `edis` (Theorem 3.1's guidance, w_s = w_π = 1,
E_T not trained), `edis-wT` (E_T trained and applied, w_T = 1) and `oracle` (real on-policy
transitions in the synthetic slot: the positive control).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

ARMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "none": ("none", ()),
    "none-aa": ("none", ()),          # plus sampling_seed (aa_overrides)
    "unguided": ("unguided", ()),
    "edis": ("edis", ()),
    "edis-wT": ("edis", ("edis.w_transition=1.0",)),
    "oracle": ("oracle", ()),
}
GENERATED = ("unguided", "edis")
AA_SEED_OFFSET = 1_000
# IQL's online recipes the search compares (online-only fields: one offline run serves all).
RECIPES: dict[str, tuple[str, ...]] = {
    "uniform-cosine": ("iql.online_batch=uniform",),
    "uniform-cosine-noise0.03": ("iql.online_batch=uniform", "iql.exploration_noise=0.03"),
    "uniform-lr3e-5": ("iql.online_batch=uniform", "iql.online_actor_lr=3e-5"),
    "uniform-lr3e-5-noise0.03": ("iql.online_batch=uniform", "iql.online_actor_lr=3e-5",
                                 "iql.exploration_noise=0.03"),
    "fixed-lr3e-5": ("iql.online_batch=fixed", "iql.online_actor_lr=3e-5"),
}
RECIPE_AGENT = "iql"
RATIOS = (0.25, 0.5, 1.0)
"""Shares of the offline-sourced rows that synthetic rows replace, tried by the regime stage
(1: Theorem 3.1's setting, every offline-sourced row)."""
UTDS = (1, 4)
"""Agent updates per env step the regime stage tries: where real data are scarce for the
updates made on them, what a synthetic source adds can show."""


@dataclass(frozen=True)
class RunSpec:
    name: str
    """Its run directory under the runs root, e.g. hopper-medium-replay/iql/seed0/edis."""
    group: str
    """"offline", "recipe", "regime" or "table"."""
    agent: str
    dataset: str
    seed: int
    mode: str
    arm: str = ""
    """The table's arm (ARMS) or the recipe's name."""
    overrides: tuple[str, ...] = ()
    offline: str | None = None
    """The offline run it starts from."""
    tuned: bool = False
    """Takes the searches' choices when it starts: the recipe; for the table's runs the
    regime's UTD too, and its ρ for the synthetic arms."""


@dataclass(frozen=True)
class Grid:
    agents: Sequence[str] = ("iql",)
    datasets: Sequence[str] = ("edis/hopper-medium-replay-v0", "edis/hopper-medium-v0")
    seeds: Sequence[int] = tuple(range(10))
    tuning_seeds: Sequence[int] = (100, 101, 102)
    arms: Sequence[str] = ("none", "none-aa", "unguided", "edis", "oracle", "edis-wT")
    arm_datasets: Mapping[str, Sequence[str]] = field(
        default_factory=lambda: {"edis-wT": ("edis/hopper-medium-replay-v0",)})
    """Arms that run on some datasets only (the others run on every dataset)."""
    recipes: Sequence[str] = tuple(RECIPES)
    ratios: Sequence[float] = RATIOS
    utds: Sequence[int] = UTDS
    stages: Sequence[str] = ("recipe", "regime", "table")
    agent_overrides: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """Overrides for every run of one agent (its budget, its precision), e.g. {"calql":
    ["online_steps=10000"]}; its offline runs still end with online_steps=0."""


def short(dataset: str) -> str:
    """'edis/hopper-medium-replay-v0' -> 'hopper-medium-replay'."""
    return dataset.rsplit("/", 1)[-1].rsplit("-v", 1)[0]


def offline_spec(agent: str, dataset: str, seed: int, overrides: Sequence[str] = (),
                 with_prior: bool = True) -> RunSpec:
    """`with_prior`: trained as `unguided`, so that its checkpoint holds the prior the
    generated arms of this seed share."""
    return RunSpec(f"{short(dataset)}/{agent}/seed{seed}/offline", "offline", agent, dataset,
                   seed, "unguided" if with_prior else "none", "offline",
                   (*overrides, "online_steps=0"))


def regime_arm(mode: str, utd: int, ratio: float | None = None) -> str:
    """'regime-none-utd4', 'regime-oracle-rho0.5-utd1'."""
    share = "" if ratio is None else f"-rho{ratio:g}"
    return f"regime-{mode}{share}-utd{utd}"


CostKind = tuple[str, bool, str, int]


def cost_kind(spec: RunSpec, overrides: Sequence[str] | None = None) -> CostKind:
    """What a run's cost depends on: its agent, offline or online, its synthetic source
    (offline: with or without the prior) and its agent updates per env step, read from
    `overrides` (what it is launched with; default: its own, in which a tuned run lacks
    the regime stage's UTD, so counts as UTD 1)."""
    values = dict(o.split("=", 1) for o in (spec.overrides if overrides is None else overrides)
                  if "=" in o)
    return (spec.agent, spec.group == "offline", spec.mode, int(values.get("utd_ratio", 1)))


def aa_overrides(seed: int) -> tuple[str, ...]:
    return (f"sampling_seed={seed + AA_SEED_OFFSET}",)


def arm_runs(grid: Grid, dataset: str) -> list[str]:
    return [arm for arm in grid.arms if dataset in grid.arm_datasets.get(arm, (dataset,))]


def plan(grid: Grid) -> list[RunSpec]:
    """Every run of the grid, each once, offline runs before the runs that start from them."""
    specs: list[RunSpec] = []

    def online(group: str, agent: str, dataset: str, seed: int, arm: str, mode: str,
               overrides: tuple[str, ...], tuned: bool, with_prior: bool) -> None:
        agent_overrides = tuple(grid.agent_overrides.get(agent, ()))
        source = offline_spec(agent, dataset, seed, agent_overrides, with_prior)
        if source not in specs:
            specs.append(source)
        specs.append(RunSpec(f"{short(dataset)}/{agent}/seed{seed}/{arm}", group, agent,
                             dataset, seed, mode, arm, (*agent_overrides, *overrides),
                             source.name, tuned))

    searching = "recipe" in grid.stages and RECIPE_AGENT in grid.agents
    if searching:
        for seed, dataset, recipe in itertools.product(grid.tuning_seeds, grid.datasets,
                                                       grid.recipes):
            online("recipe", RECIPE_AGENT, dataset, seed, f"recipe-{recipe}", "none",
                   RECIPES[recipe], False, with_prior=False)
    if "regime" in grid.stages and searching:
        for seed, dataset, utd in itertools.product(grid.tuning_seeds, grid.datasets,
                                                    grid.utds):
            if utd != 1:   # at UTD 1 the recipe search's run of the chosen recipe is `none`
                online("regime", RECIPE_AGENT, dataset, seed, regime_arm("none", utd),
                       "none", (f"utd_ratio={utd}",), True, with_prior=False)
            for ratio in grid.ratios:
                online("regime", RECIPE_AGENT, dataset, seed, regime_arm("oracle", utd, ratio),
                       "oracle", (f"utd_ratio={utd}", f"schedule.ratio={ratio}"), True,
                       with_prior=False)
    if "table" in grid.stages:
        for seed, dataset, agent in itertools.product(grid.seeds, grid.datasets, grid.agents):
            arms = arm_runs(grid, dataset)
            with_prior = any(ARMS[a][0] in GENERATED for a in arms)
            for arm in arms:
                mode, overrides = ARMS[arm]
                if arm == "none-aa":
                    overrides = aa_overrides(seed)
                online("table", agent, dataset, seed, arm, mode, overrides,
                       tuned=searching and agent == RECIPE_AGENT, with_prior=with_prior)
    return specs
