"""The evidence benchmark end to end on a tiny budget: plan, dependencies, reuse, report."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from evidence.plan import Grid, offline_spec, plan
from evidence.report import QUALITY_FILE
from evidence.runner import status
from tests.test_training import TINY, TINY_SYNTHETIC

pytestmark = pytest.mark.slow


def test_the_plan_shares_offline_runs_keeps_tuning_seeds_apart_and_goes_seed_by_seed():
    specs = plan(Grid(agents=("iql", "calql"), datasets=("edis/hopper-medium-v0",),
                      seeds=(0, 1), tuning_seeds=(100,),
                      recipes=("uniform-cosine", "fixed-lr3e-5")))
    names = [s.name for s in specs]
    assert len(names) == len(set(names))
    offline = [s for s in specs if s.group == "offline"]
    assert {(s.agent, s.seed) for s in offline} == {("iql", 0), ("iql", 1), ("iql", 100),
                                                     ("calql", 0), ("calql", 1)}
    for spec in specs:
        if spec.group != "offline":
            assert names.index(spec.offline) < names.index(spec.name)  # offline runs first
    # the search runs the base agent on the tuning seeds only, from a prior-free offline run
    search = [s for s in specs if s.group == "recipe"]
    assert {(s.seed, s.mode, s.agent) for s in search} == {(100, "none", "iql")}
    assert next(s for s in offline if s.seed == 100).mode == "none"
    assert all(s.mode == "unguided" for s in offline if s.seed != 100)   # trains the prior
    table = [s for s in specs if s.group == "table"]
    assert {s.seed for s in table} == {0, 1}
    assert [s.seed for s in table] == sorted(s.seed for s in table)     # seed by seed
    assert {s.tuned for s in table if s.agent == "iql"} == {True}       # the search's choice
    assert {s.tuned for s in table if s.agent == "calql"} == {False}    # CORL's recipe as is
    regime = [s for s in specs if s.group == "regime"]
    assert {(s.seed, s.mode, s.agent) for s in regime} == {(100, "oracle", "iql"),
                                                           (100, "none", "iql")}
    # the oracle at every (ρ, UTD); `none` at each UTD but 1 (there it is the recipe run)
    assert {s.overrides for s in regime if s.mode == "oracle"} == {
        (f"utd_ratio={utd}", f"schedule.ratio={ratio}") for utd in (1, 4)
        for ratio in (0.25, 0.5, 1.0)}
    assert [s.overrides for s in regime if s.mode == "none"] == [("utd_ratio=4",)]
    assert all(s.tuned and s.offline == offline_spec("iql", s.dataset, 100,
                                                     with_prior=False).name for s in regime)
    aa = [s for s in table if s.arm == "none-aa"]
    assert {s.overrides[-1] for s in aa} == {"sampling_seed=1000", "sampling_seed=1001"}
    assert not [s for s in table if s.arm == "edis-wT"]   # only on medium-replay by default
    untuned = plan(Grid(agents=("iql",), datasets=("edis/hopper-medium-v0",), seeds=(0,),
                        stages=("table",)))
    assert not any(s.tuned for s in untuned)    # no search: the profile's own recipe


def test_an_agents_overrides_reach_all_its_runs_and_offline_runs_stay_offline():
    budget = ("calql.critic_bf16=true", "online_steps=5000")
    specs = plan(Grid(agents=("iql", "calql"), datasets=("edis/hopper-medium-v0",), seeds=(0,),
                      stages=("table",), agent_overrides={"calql": budget}))
    for spec in specs:
        if spec.agent == "iql":
            assert not set(budget) & set(spec.overrides), spec
        elif spec.group == "offline":
            assert spec.overrides == (*budget, "online_steps=0")   # the last one wins
        else:
            assert spec.overrides[:2] == budget, spec


def bench_command(root, out, dataset, *extra) -> list[str]:
    overrides = [arg for o in TINY + TINY_SYNTHETIC for arg in ("--set", o)]
    return [sys.executable, "-m", "evidence", "--agents", "iql", "--datasets", dataset,
            "--seeds", "0", "--tuning-seeds", "100",
            "--recipes", "uniform-cosine", "fixed-lr3e-5", "--ratios", "1.0", "--utds", "1", "2",
            "--arms", "none", "none-aa", "unguided", "edis", "oracle",
            "--profile", "smoke", "--runs-root", str(root), "--records",
            str(root.parent / "records"), "--out", str(out), "--quality-rows", "200",
            "--quality-steps", "20", *overrides, *extra]


def bench(root, out, dataset, *extra):
    return subprocess.run(bench_command(root, out, dataset, *extra), capture_output=True,
                          text=True, timeout=900)


def test_the_benchmark_runs_reuses_finished_runs_and_writes_the_report(hopper_dataset,
                                                                       tmp_path):
    root, out = tmp_path / "runs", tmp_path / "docs"
    first = bench(root, out, hopper_dataset)
    assert first.returncode == 0, first.stderr[-3000:]
    # 2 offline, 2 recipes, 3 regime runs (the oracle at UTD 1 and 2, none at 2), 5 arms
    assert first.stdout.count("bench: start") == 12
    report = (out / "results.md").read_text()
    assert "Finished runs: 12 of 12 planned." in report
    chosen = re.search(r"Chosen for every reported IQL run: \*\*(\S+)\*\*", report)
    assert chosen, report
    # The tuned runs carry the search's choice; the arms share the offline agent and prior.
    stem = f"{root}/hopper-random/iql/seed0"
    rule = {"uniform-cosine": "uniform", "fixed-lr3e-5": "fixed"}[chosen.group(1)]
    for arm in ("none", "none-aa", "unguided", "edis", "oracle"):
        config = yaml.safe_load(Path(f"{stem}/{arm}/config.yaml").read_text())
        assert config["iql"]["online_batch"] == rule, arm
        assert config["offline_from"] == f"{stem}/offline"
    assert yaml.safe_load(Path(f"{stem}/none-aa/config.yaml").read_text())[
        "sampling_seed"] == 1000
    # the synthetic arms take the regime's ρ, chosen by the oracle on the tuning seed
    regime = re.search(r"Chosen for the table: \*\*ρ = (\S+), UTD = (\d+)\*\*", report)
    ratio, utd = float(regime.group(1)), int(regime.group(2))
    for arm in ("unguided", "edis", "oracle"):
        config = yaml.safe_load(Path(f"{stem}/{arm}/config.yaml").read_text())
        assert config["schedule"]["ratio"] == ratio, arm
    for arm in ("none", "none-aa", "unguided", "edis", "oracle"):   # every arm at its UTD
        config = yaml.safe_load(Path(f"{stem}/{arm}/config.yaml").read_text())
        assert config["utd_ratio"] == utd, arm
    edis = json.loads(Path(f"{stem}/edis/summary.json").read_text())
    records = [json.loads(line) for line in Path(f"{stem}/edis/metrics.jsonl").read_text()
               .splitlines()]
    assert edis["steps"]["prior"] == 60                                 # the offline run's
    assert not [r for r in records if r["kind"] == "train" and r["phase"] == "prior"]
    for name in ("results-recipes.png", "results-table.png"):
        assert (out / name).stat().st_size > 5_000
    for heading in ("## 1. The base agent's fine-tuning recipe", "## 1b. How much synthetic",
                    "## 2. Can this protocol "
                    "answer?", "## 3. EDIS against the base agent", "| iql | oracle |",
                    "- iql on hopper-random:", "| iql | hopper-random | edis | 1 |"):
        assert heading in report, heading

    again = bench(root, out, hopper_dataset)
    assert again.returncode == 0 and "bench: start" not in again.stdout
    assert "bench: 12 completed" in again.stdout

    # Another machine: the run directories are gone, the committed archive is not.
    # The tiny budget's --set overrides: records of their own, beside the profile's.
    (records,) = (tmp_path / "records" / "smoke").glob("set-*")
    assert len(list(records.rglob("*.json"))) == 12 + 1     # and the edis run's quality
    assert (records / "quality/hopper-random/iql/seed0/edis.json").is_file()
    shutil.rmtree(root)
    (out / QUALITY_FILE).unlink()                           # made again from the archive
    elsewhere = bench(root, out, hopper_dataset)
    assert elsewhere.returncode == 0 and "bench: start" not in elsewhere.stdout
    assert "bench: 12 archived" in elsewhere.stdout
    assert (out / "results.md").read_text() == report      # the same report from the archive
    # A run still to make needs its offline checkpoint: that offline run is made again, and
    # ends where the archived one did (no warning), so the seed's arms stay paired.
    (records / "hopper-random/iql/seed0/edis.json").unlink()
    remade = bench(root, out, hopper_dataset)
    assert remade.returncode == 0, remade.stderr[-3000:]
    assert re.findall(r"bench: start (\S+)", remade.stdout) == [
        "hopper-random/iql/seed0/offline", "hopper-random/iql/seed0/edis"]
    assert "warning" not in remade.stderr, remade.stderr[-3000:]
    assert "bench: 10 archived, 2 completed" in remade.stdout


def test_a_stopped_benchmark_stops_its_runs_and_resumes_them(hopper_dataset, tmp_path):
    root, out, log = tmp_path / "runs", tmp_path / "docs", tmp_path / "bench.log"
    longer = ["--stages", "table", "--arms", "none", "--set", "online_steps=3000", "--jobs", "1"]
    with log.open("w") as stdout:
        bench_process = subprocess.Popen(
            bench_command(root, out, hopper_dataset, *longer), stdout=stdout,
            stderr=subprocess.STDOUT, text=True)
    none_run = root / "hopper-random" / "iql" / "seed0" / "none"
    deadline = time.monotonic() + 300
    while not (none_run / "checkpoint").is_dir() and time.monotonic() < deadline:
        assert bench_process.poll() is None, log.read_text()[-3000:]
        time.sleep(0.5)
    pids = [int(m) for m in re.findall(r"\(pid (\d+)\)", log.read_text())]
    bench_process.send_signal(signal.SIGTERM)
    assert bench_process.wait(timeout=120) == 0, log.read_text()[-3000:]
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"run process {pid} left behind"
    assert status(none_run) == "resumable"

    again = subprocess.run(bench_command(root, out, hopper_dataset, *longer),
                           capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "bench: 2 completed" in again.stdout  # the shared offline run and `none`
    assert "--resume" in (root / "logs" / "hopper-random__iql__seed0__none.log").read_text()
    # Its cost counts only what the resuming process ran and timed.
    summary = json.loads((none_run / "summary.json").read_text())
    assert 0 < summary["online_steps_timed"] < summary["steps"]["online"] == 3000


def test_the_quality_study_fits_a_critic_per_source_and_scores_it_on_held_out_returns(
        hopper_dataset, tmp_path):
    from edis_core.training.trainer import Trainer
    from edis_core.transitions import discounted_returns_to_go
    from evidence.quality import SOURCES, Study, held_out, study_run
    from tests.test_training import tiny_config

    run_dir = tmp_path / "edis"
    Trainer.create(tiny_config(hopper_dataset, "iql", "edis"), run_dir).run()
    trainer = Trainer.inspect(run_dir)
    rows, returns = held_out(trainer, 300, seed=0)
    # Hopper's random-ish policy falls within its time limit: every return is complete, and
    # each episode's first row carries its whole discounted return.
    first_end = int(np.flatnonzero(rows.terminals > 0.5)[0]) + 1
    assert returns[0] == pytest.approx(
        discounted_returns_to_go(rows.rewards[:first_end], 0.99)[0], rel=1e-5)
    results = study_run(run_dir, Study(rows=300, steps=30, batch_size=32))
    assert set(results) == set(SOURCES)
    for source, result in results.items():
        assert result["held_out_rows"] > 0, source
        assert all(np.isfinite(v) for v in result.values()), source
