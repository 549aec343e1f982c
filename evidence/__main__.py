"""`python -m evidence`: can this protocol detect a gain here, and does EDIS give one?
Runs the plan of evidence/plan.py (resumable: finished runs are reused, interrupted ones
resumed), then writes docs/results.md and its plots (evidence/report.py).

    python -m evidence                       # the whole plan, many hours on 2 cores
    python -m evidence --hours 2.5           # what fits in a sitting; the rest waits
    python -m evidence --report-only         # the report from the runs finished so far
    python -m evidence --stages recipe regime   # the searches alone
    python -m evidence --agents calql --seeds 0 1 2 --arms none edis oracle
    python -m evidence --profile paper --device cuda --jobs 1   # paper scale, a GPU
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from edis_core.config import build
from edis_core.data.minari_io import DatasetError, dataset_info
from edis_core.data.recipes import make_recipe_dataset
from edis_core.precision import bf16_pays
from edis_core.training.config import TrainConfig
from evidence.archive import Archive
from evidence.plan import ARMS, RECIPES, Grid, RunSpec, plan
from evidence.quality import Study, study_runs, table_runs, write_results
from evidence.report import (
    choose_recipe,
    choose_regime,
    recipe_overrides,
    write_report,
)
from evidence.runner import Runner, load_runs

ROOT = Path(__file__).resolve().parent.parent
def agent_budgets(profile: str, device: str) -> dict[str, tuple[str, ...]]:
    """Overrides for every run of an agent under `profile`. A Cal-QL update scores 31
    actions per state with each critic, ~10× an IQL update: ~5 updates/s per process in
    float32 with one thread here, so its runs get half IQL's online budget (every arm of an
    agent gets the same budget), and bfloat16 hidden layers (calql.critic_bf16, ~2× on a CPU
    with AMX) where this machine's bfloat16 matmuls pay (edis_core/precision.py: on a CPU
    without bfloat16 units they run tens of times slower). The archive keys on these, so
    its records of either precision are never mixed (a run directory already on the machine
    is reused or resumed as it was launched)."""
    if profile != "evidence":
        return {}
    bf16 = ("calql.critic_bf16=true",) if bf16_pays(device) else ()
    return {"calql": (*bf16, "online_steps=10000")}


def ensure_datasets(datasets: list[str]) -> None:
    """Make each missing `edis/<family>-<recipe>-v0` dataset from its recipe (never fetch)."""
    for dataset_id in datasets:
        try:
            dataset_info(dataset_id)
            continue
        except DatasetError:
            pass
        family, _, recipe = dataset_id.removeprefix("edis/").rsplit("-v", 1)[0].partition("-")
        env_id = {"hopper": "Hopper-v5", "walker2d": "Walker2d-v5"}.get(family)
        if env_id is None:
            raise DatasetError(f"{dataset_id} is missing and is not one the bench can make "
                               "(edis/hopper-... or edis/walker2d-...)")
        print(f"bench: making {dataset_id}", flush=True)
        make_recipe_dataset(env_id, recipe)


def chooser(specs: list[RunSpec], root: Path, archive: Archive,
            extra: list[str]) -> Callable[[RunSpec], tuple[str, ...] | None]:
    """The searches' choices for a tuned spec once they are made: the recipe for every tuned
    run; for the table's runs the regime's UTD too, and its ρ for the synthetic arms (read
    from the search runs until then; None while a choice it needs is not made)."""
    search = [s for s in specs if s.group in ("recipe", "regime")]
    has_regime = any(s.group == "regime" for s in search)
    made: dict[str, tuple[str, ...]] = {}

    def needs(spec: RunSpec) -> tuple[str, ...]:
        regime = has_regime and spec.group == "table"
        return ("recipe", *(("utd",) if regime else ()),
                *(("ratio",) if regime and spec.mode != "none" else ()))

    def choose(spec: RunSpec) -> tuple[str, ...] | None:
        if any(part not in made for part in needs(spec)):
            # The recipe runs as launched with `extra`; the regime runs with any recipe.
            runs = load_runs(root, search, archive,
                             lambda s: None if s.tuned else [*extra, *s.overrides])
            if "recipe" not in made and (name := choose_recipe(search, runs)):
                made["recipe"] = recipe_overrides(name)
            if has_regime and "utd" not in made and (regime := choose_regime(search, runs)):
                made["ratio"] = (f"schedule.ratio={regime[0]:g}",)
                made["utd"] = (f"utd_ratio={regime[1]}",)
        if any(part not in made for part in needs(spec)):
            return None
        return tuple(o for part in needs(spec) for o in made[part])

    return choose


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = Grid()
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", nargs="+", default=list(defaults.agents),
                        choices=["iql", "calql"])
    parser.add_argument("--datasets", nargs="+", default=list(defaults.datasets))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(defaults.seeds))
    parser.add_argument("--tuning-seeds", nargs="+", type=int,
                        default=list(defaults.tuning_seeds))
    parser.add_argument("--arms", nargs="+", default=list(defaults.arms), choices=list(ARMS))
    parser.add_argument("--recipes", nargs="+", default=list(defaults.recipes),
                        choices=list(RECIPES))
    parser.add_argument("--ratios", nargs="+", type=float, default=list(defaults.ratios),
                        help="synthetic shares the regime stage tries")
    parser.add_argument("--utds", nargs="+", type=int, default=list(defaults.utds),
                        help="update-to-data ratios the regime stage tries")
    parser.add_argument("--stages", nargs="+", default=list(defaults.stages),
                        choices=["recipe", "regime", "table"])
    parser.add_argument("--profile", default="evidence")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2)")
    parser.add_argument("--hours", type=float, default=None,
                        help="this call's time budget: no run starts that finished runs of "
                             "its kind say would not end within it (a kind not yet timed "
                             "starts while time is left); the rest waits for the next call. "
                             "The quality study of the edis runs it finished follows "
                             "(minutes each)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for every run")
    parser.add_argument("--runs-root", type=Path, default=ROOT / "runs" / "evidence")
    parser.add_argument("--records", type=Path, default=ROOT / "evidence" / "records",
                        help="the archive of finished runs the report is made from (one "
                             "folder per profile; committed, so that sittings add up)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--quality-rows", type=int, default=Study.rows,
                        help="the quality study's rows per source (evidence/quality.py)")
    parser.add_argument("--quality-steps", type=int, default=Study.steps,
                        help="its fitted-Q-evaluation steps per critic")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    if args.hours is not None and not args.hours > 0:
        parser.error("--hours must be > 0")
    if set(args.seeds) & set(args.tuning_seeds):
        parser.error("--tuning-seeds must not be reported seeds (--seeds)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    grid = Grid(agents=args.agents, datasets=args.datasets, seeds=args.seeds,
                tuning_seeds=args.tuning_seeds, arms=args.arms, recipes=args.recipes,
                ratios=args.ratios, utds=args.utds,
                stages=args.stages, agent_overrides=agent_budgets(args.profile, args.device))
    specs = plan(grid)
    budgets = {agent: build(TrainConfig, args.profile, {"agent": agent},  # validates first
                            [*args.set, *grid.agent_overrides.get(agent, ())])
               for agent in grid.agents}
    archive = Archive(args.records / args.profile, args.set)
    runner = Runner(args.runs_root, args.profile, args.device, args.jobs, args.set,
                    choose=chooser(specs, args.runs_root, archive, args.set), archive=archive,
                    deadline=None if args.hours is None else time.time() + 3600 * args.hours)
    if not args.report_only:
        ensure_datasets(sorted(set(args.datasets)))
        outcome = runner.run(specs)
        print("bench: " + ", ".join(f"{sum(v == s for v in outcome.values())} {s}"
                                    for s in sorted(set(outcome.values()))), flush=True)
    runs = load_runs(args.runs_root, specs, archive, runner.overrides)
    # The edis runs' checkpoints go with their directories: study them while they are here
    # (one process, one thread; not after a stop signal).
    torch.set_num_threads(1)
    study = Study(rows=args.quality_rows, steps=args.quality_steps)
    write_results(study_runs(table_runs(specs), runs, args.runs_root, archive, study,
                             study_new=not (args.report_only or runner.stopped)),
                  study, args.out)
    command = "python -m evidence " + shlex.join(argv if argv is not None
                                                       else sys.argv[1:])
    report = write_report(specs, runs, args.out, command.strip(), args.profile, budgets,
                          args.jobs, runner.overrides)
    print(f"bench: report {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
