"""What the evidence benchmark runs: every run as a `RunSpec`, and the order they depend on.

1. offline   one offline pre-training per (agent, dataset, seed) with online_steps=0; every
             mode of that seed starts from it (`offline_from`), so modes differ only online.
2. sweep     EDIS with ρ × guidance scale (w_state = w_policy = scale) on the tuning seeds,
             which are never reported, for one agent and dataset.
3. table     none / unguided / edis for every agent, dataset and reported seed; the synthetic
             modes take the sweep's ρ, EDIS its scale too (`tuned`).
4. ablation  EDIS with one energy changed at a time for one agent and dataset: the state
             energy off, the policy energy off, and the transition energy on (it is off by
             default, README "Diagnostics").
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

MODES = ("none", "unguided", "edis")
ABLATIONS = {"no-state": ("edis.w_state=0.0",), "no-policy": ("edis.w_policy=0.0",),
             "with-transition": ("edis.w_transition=1.0",)}


@dataclass(frozen=True)
class RunSpec:
    name: str
    """Its run directory under the runs root, e.g. hopper-medium-replay/iql/seed0/edis."""
    group: str
    agent: str
    dataset: str
    seed: int
    mode: str
    overrides: tuple[str, ...] = ()
    offline: str | None = None
    """The offline run it starts from."""
    tuned: bool = False
    """Takes the sweep's choice of ρ (and the guidance scale, for EDIS) when it starts."""
    label: str = ""
    """What distinguishes it inside its group (the sweep's setting, the ablation)."""


@dataclass(frozen=True)
class Grid:
    agents: Sequence[str] = ("iql", "calql")
    datasets: Sequence[str] = ("edis/hopper-medium-replay-v0", "edis/hopper-medium-v0")
    seeds: Sequence[int] = (0, 1, 2)
    tuning_seeds: Sequence[int] = (100,)
    rhos: Sequence[float] = (0.25, 0.5)
    scales: Sequence[float] = (0.5, 1.0, 2.0)
    sweep_agent: str = "iql"
    ablation_agent: str = "iql"
    focus_dataset: str = "edis/hopper-medium-replay-v0"
    """The dataset of the sweep and the ablation, whatever `datasets` a call runs: a call for
    another dataset alone must not sweep (and tune its runs) on that one."""
    stages: Sequence[str] = field(default=("sweep", "table", "ablation"))
    agent_overrides: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """Overrides for every run of one agent (its budget, its precision), e.g. {"calql":
    ["online_steps=5000"]}; its offline runs still end with online_steps=0."""


def short(dataset: str) -> str:
    """'edis/hopper-medium-replay-v0' -> 'hopper-medium-replay'."""
    return dataset.rsplit("/", 1)[-1].rsplit("-v", 1)[0]


def offline_spec(agent: str, dataset: str, seed: int, overrides: Sequence[str] = ()) -> RunSpec:
    return RunSpec(f"{short(dataset)}/{agent}/seed{seed}/offline", "offline", agent, dataset,
                   seed, "none", (*overrides, "online_steps=0"))


def plan(grid: Grid) -> list[RunSpec]:
    """Every run of the grid, offline runs first, each once."""
    specs: list[RunSpec] = []

    def online(group: str, agent: str, dataset: str, seed: int, mode: str, leaf: str,
               overrides: tuple[str, ...] = (), tuned: bool = False, label: str = "") -> None:
        agent_overrides = tuple(grid.agent_overrides.get(agent, ()))
        source = offline_spec(agent, dataset, seed, agent_overrides)
        if source not in specs:
            specs.append(source)
        overrides = (*agent_overrides, *overrides)
        specs.append(RunSpec(f"{short(dataset)}/{agent}/seed{seed}/{leaf}", group, agent,
                             dataset, seed, mode, overrides, source.name, tuned, label))

    tuned = "sweep" in grid.stages    # without a sweep: the profile's ρ and scale
    if tuned:
        for seed, rho, scale in itertools.product(grid.tuning_seeds, grid.rhos, grid.scales):
            setting = f"rho{rho:g}-scale{scale:g}"
            online("sweep", grid.sweep_agent, grid.focus_dataset, seed, "edis",
                   f"sweep-{setting}", sweep_overrides(rho, scale), label=setting)
    if "table" in grid.stages:
        for dataset, agent, seed, mode in itertools.product(grid.datasets, grid.agents,
                                                            grid.seeds, MODES):
            online("table", agent, dataset, seed, mode, mode, tuned=tuned and mode != "none",
                   label=mode)
    if "ablation" in grid.stages:
        for seed, (name, overrides) in itertools.product(grid.seeds, ABLATIONS.items()):
            online("ablation", grid.ablation_agent, grid.focus_dataset, seed, "edis",
                   f"edis-{name}", overrides, tuned=tuned, label=name)
    return specs


def sweep_overrides(rho: float, scale: float, mode: str = "edis") -> tuple[str, ...]:
    """ρ for every synthetic mode; the guidance scale only where there is guidance."""
    ratio = (f"schedule.ratio={rho}",)
    return ratio + ((f"edis.w_state={scale}", f"edis.w_policy={scale}")
                    if mode == "edis" else ())
