"""The evidence benchmark end to end on a tiny budget: plan, dependencies, reuse, report."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bench.plan import Grid, plan
from bench.runner import status
from tests.test_training import TINY, TINY_SYNTHETIC

pytestmark = pytest.mark.slow


def test_the_plan_shares_offline_runs_and_keeps_tuning_seeds_apart():
    specs = plan(Grid(agents=("iql", "calql"), datasets=("edis/hopper-medium-v0",),
                      seeds=(0, 1), tuning_seeds=(100,), rhos=(0.25, 0.5), scales=(1.0,)))
    names = [s.name for s in specs]
    assert len(names) == len(set(names))
    offline = [s for s in specs if s.group == "offline"]
    assert {(s.agent, s.seed) for s in offline} == {("iql", 0), ("iql", 1), ("iql", 100),
                                                     ("calql", 0), ("calql", 1)}
    for spec in specs:
        if spec.group != "offline":
            assert names.index(spec.offline) < names.index(spec.name)  # offline runs first
    assert {s.seed for s in specs if s.group == "sweep"} == {100}
    # a call for one dataset alone still sweeps and ablates on the focus dataset
    assert {s.dataset for s in specs if s.group in ("sweep", "ablation")} == {
        "edis/hopper-medium-replay-v0"}
    assert {s.seed for s in specs if s.group in ("table", "ablation")} == {0, 1}
    assert {s.tuned for s in specs if s.group == "table" and s.mode != "none"} == {True}
    untuned = plan(Grid(agents=("iql",), datasets=("edis/hopper-medium-v0",), seeds=(0,),
                        stages=("table", "ablation")))
    assert not any(s.tuned for s in untuned)    # no sweep: the profile's own ρ and scale


def test_an_agents_overrides_reach_all_its_runs_and_offline_runs_stay_offline():
    budget = ("calql.critic_bf16=true", "online_steps=5000")
    specs = plan(Grid(agents=("iql", "calql"), datasets=("edis/hopper-medium-v0",), seeds=(0,),
                      agent_overrides={"calql": budget}))
    for spec in specs:
        if spec.agent == "iql":
            assert not set(budget) & set(spec.overrides), spec
        elif spec.group == "offline":
            assert spec.overrides == (*budget, "online_steps=0")   # the last one wins
        else:
            assert spec.overrides[:2] == budget, spec


def bench_command(root, out, dataset, *extra) -> list[str]:
    overrides = [arg for o in TINY + TINY_SYNTHETIC for arg in ("--set", o)]
    return [sys.executable, "-m", "bench.evidence", "--agents", "iql", "--datasets", dataset,
            "--focus-dataset", dataset,
            "--seeds", "0", "--tuning-seeds", "100", "--rhos", "0.25", "0.5", "--scales", "1.0",
            "--profile", "smoke", "--runs-root", str(root), "--out", str(out), *overrides,
            *extra]


def bench(root, out, dataset, *extra):
    return subprocess.run(bench_command(root, out, dataset, *extra), capture_output=True,
                          text=True, timeout=900)


def test_the_benchmark_runs_reuses_finished_runs_and_writes_the_report(hopper_dataset,
                                                                       tmp_path):
    root, out = tmp_path / "runs", tmp_path / "docs"
    first = bench(root, out, hopper_dataset)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("bench: start") == 10   # 2 offline, 2 sweep, 3 table, 3 ablation
    report = (out / "results.md").read_text()
    assert "Finished runs: 10 of 10 planned." in report
    chosen = [line for line in report.splitlines() if "chosen: ρ = " in line]
    assert chosen, report
    # The tuned runs carry the sweep's choice; unguided takes ρ but no guidance scale.
    rho = float(chosen[0].split("chosen: ρ = ")[1].split(",")[0])
    stem = f"{root}/hopper-random/iql/seed0"
    edis = yaml.safe_load(Path(f"{stem}/edis/config.yaml").read_text())
    unguided = yaml.safe_load(Path(f"{stem}/unguided/config.yaml").read_text())
    assert edis["schedule"]["ratio"] == unguided["schedule"]["ratio"] == rho
    assert edis["offline_from"] == f"{stem}/offline"
    # An ablation keeps its own change on top of the sweep's choice.
    scale = edis["edis"]["w_state"]
    for leaf, off, kept in (("no-state", "w_state", "w_policy"),
                            ("no-policy", "w_policy", "w_state")):
        ablation = yaml.safe_load(Path(f"{stem}/edis-{leaf}/config.yaml").read_text())
        assert ablation["edis"][off] == 0.0 and ablation["edis"][kept] == scale, leaf
        assert ablation["schedule"]["ratio"] == rho
    assert (out / "results-hopper-random.png").stat().st_size > 5_000
    assert "- iql on hopper-random: EDIS " in report
    for heading in ("| dataset | agent | offline (start) | none | unguided | edis |",
                    "| agent | mode | runs | wall ms / env step |", "| no-state |",
                    "| with-transition |"):
        assert heading in report, heading

    again = bench(root, out, hopper_dataset)
    assert again.returncode == 0 and "bench: start" not in again.stdout
    assert "bench: 10 completed" in again.stdout


def test_a_stopped_benchmark_stops_its_runs_and_resumes_them(hopper_dataset, tmp_path):
    root, out, log = tmp_path / "runs", tmp_path / "docs", tmp_path / "bench.log"
    longer = ["--stages", "table", "--set", "online_steps=3000", "--jobs", "1"]
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
    assert "bench: 4 completed" in again.stdout
    assert "--resume" in (root / "logs" / "hopper-random__iql__seed0__none.log").read_text()
    # Its cost counts only what the resuming process ran and timed.
    summary = json.loads((none_run / "summary.json").read_text())
    assert 0 < summary["online_steps_timed"] < summary["steps"]["online"] == 3000
