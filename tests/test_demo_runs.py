"""How benchmarks/demo_runs.py reads a finished run's clocks (bench_runtime's learner rows)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.demo_runs import learner_time, online_updates_per_s


def test_the_learner_rate_splits_into_its_updating_share_and_its_rate_while_updating(
        tmp_path: Path):
    records = [{"kind": "train", "updates": 1_000}, {"kind": "eval"},
               {"kind": "train", "updates": 3_000}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = {"phase_seconds": {"online": 100.0},
               "phase_cpu_seconds": {"online": 150.0},
               "online_seconds": {"collect": 40.0, "synthetic": 10.0, "agent_updates": 50.0}}
    time = learner_time(tmp_path, summary)
    assert time["shares"] == {"collect": 0.4, "synthetic": 0.1, "agent_updates": 0.5}
    assert time["updates_per_updating_s"] == pytest.approx(60.0)
    assert time["cpu_per_wall"] == pytest.approx(1.5)
    # The phase's rate is the updating share times the rate while updating.
    assert online_updates_per_s(tmp_path, summary) == pytest.approx(
        time["shares"]["agent_updates"] * time["updates_per_updating_s"])
