"""The evidence runner's time budget: no run starts that would not end within it."""

from __future__ import annotations

import json
import time

from evidence.plan import RunSpec, cost_kind
from evidence.runner import Runner


def spec(name: str, utd: int = 1, mode: str = "none", offline: str | None = None,
         agent: str = "iql") -> RunSpec:
    return RunSpec(name, "table", agent, "edis/hopper-medium-v0", 0, mode,
                   overrides=(f"utd_ratio={utd}",), offline=offline)


def finished(root, name: str, seconds: float) -> None:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps(
        {"status": "completed", "phase_seconds": {"offline": 0.0, "online": seconds}}))
    (run_dir / "metrics.jsonl").write_text("")


def test_a_run_is_late_when_runs_of_its_kind_took_longer_than_the_time_left(tmp_path):
    runner = Runner(tmp_path, "smoke", deadline=time.time() + 600)
    runner._durations = {cost_kind(spec("a", utd=4)): [1200.0, 1400.0]}
    assert runner._late(spec("b", utd=4))          # ~1300 s expected, 600 left
    assert not runner._late(spec("c", utd=1))      # a kind never timed starts while time is left
    assert not runner._late(spec("d", utd=4, agent="calql"))   # another agent, another kind
    assert not Runner(tmp_path, "smoke")._late(spec("b", utd=4))    # no budget
    runner.deadline = time.time() - 1
    assert runner._late(spec("c", utd=1))          # past the deadline nothing starts


def test_a_call_whose_budget_is_spent_leaves_its_runs_for_the_next(tmp_path, capsys):
    finished(tmp_path, "done", 1500.0)
    runner = Runner(tmp_path, "smoke", deadline=time.time() + 60)
    outcome = runner.run([spec("done", utd=4), spec("next", utd=4)])
    assert outcome == {"done": "completed", "next": "new"}   # not started, not "blocked"
    assert "1 runs left for a later call" in capsys.readouterr().out
    assert runner._durations == {cost_kind(spec("done", utd=4)): [1500.0]}
    assert not (tmp_path / "next").exists() and not (tmp_path / "logs").exists()


def test_only_runs_that_can_never_start_are_blocked_when_the_budget_is_spent(tmp_path, capsys):
    finished(tmp_path, "done", 1500.0)
    runner = Runner(tmp_path, "smoke", deadline=time.time() + 60,
                    choose=lambda s: None)        # a search that will never choose
    tuned = RunSpec("tuned", "table", "iql", "edis/hopper-medium-v0", 0, "none", tuned=True)
    outcome = runner.run([spec("done", utd=4), spec("late", utd=4),
                          spec("after-late", offline="late"), tuned])
    assert outcome["late"] == outcome["after-late"] == "new"   # held back by the budget
    assert outcome["tuned"] == "blocked"                     # no search left to choose
    assert "2 runs left for a later call" in capsys.readouterr().out
