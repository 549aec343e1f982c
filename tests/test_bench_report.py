"""The evidence report's statistics and verdicts, on hand-made runs with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from edis_core.config import build
from edis_core.training.config import TrainConfig
from evidence.plan import RunSpec
from evidence.report import (
    PairedGain,
    auc,
    choose_recipe,
    compute_section,
    gate,
    last3,
    protocol_section,
    score_section,
)


def test_the_interval_is_students_t_over_the_paired_differences():
    gain = PairedGain((1.0, 2.0, 3.0))          # mean 2, sample std 1, t_0.975(2) = 4.3027
    low, high = gain.interval
    half = 4.302653 / math.sqrt(3)
    assert low == pytest.approx(2 - half, abs=1e-4)
    assert high == pytest.approx(2 + half, abs=1e-4)
    assert str(gain) == "+2.0, 95% interval [-0.5, +4.5], ahead on 3 of 3 seeds"


def test_the_minimum_detectable_difference_has_the_power_it_claims():
    """A true paired effect of exactly the MDE is detected in ~80% of repeated experiments."""
    rng = np.random.default_rng(0)
    n, sd = 10, 3.0
    gains = rng.normal(0, sd, n)
    assert PairedGain(tuple(gains)).mde == pytest.approx(
        (stats.t.ppf(0.975, 9) + stats.t.ppf(0.8, 9)) * np.std(gains, ddof=1) / np.sqrt(n))
    exact = (stats.t.ppf(0.975, 9) + stats.t.ppf(0.8, 9)) * sd / np.sqrt(n)
    detected = [PairedGain(tuple(rng.normal(exact, sd, n))).interval[0] > 0
                for _ in range(2000)]
    assert 0.74 < np.mean(detected) < 0.86


@pytest.mark.parametrize(("gains", "verdict"), [
    ((2.0, 2.1, 1.9), "beats none"),
    ((-2.0, -2.1, -1.9), "is beaten by none"),
    ((1.0, 2.0, 3.0), "is not distinguishable from none"),  # ahead on every seed, too spread
    ((0.6, -1.0, 2.2), "is not distinguishable from none"),
    ((5.0,), "has one seed against none, no verdict yet"),
])
def test_verdicts_need_the_interval_to_exclude_zero(gains, verdict):
    assert PairedGain(gains).verdict("none") == verdict


def fake_run(start: float, scores: list[float]) -> dict:
    records = [{"kind": "eval", "phase": "online", "step": 1000 * (i + 1),
                "normalized_score": s} for i, s in enumerate(scores)]
    return {"summary": {"offline_final": {"normalized_score": start}}, "records": records}


def test_auc_is_the_mean_online_score_and_last3_the_end():
    run = fake_run(50.0, [10.0, 20.0, 30.0, 40.0])
    assert auc(run) == 25.0 and last3(run) == 30.0


def cell(arms: dict[str, list[tuple[float, list[float]]]], dataset: str = "edis/hopper-medium-v0",
         group: str = "table", mode: str = "none",
         overrides: tuple[str, ...] = ()) -> tuple[list[RunSpec], dict]:
    """Specs and finished runs of iql on `dataset`: per arm, per seed (start, scores)."""
    specs, runs = [], {}
    for arm, per_seed in arms.items():
        for seed, (start, scores) in enumerate(per_seed):
            name = f"{dataset}/{group}/seed{seed}/{arm}"
            specs.append(RunSpec(name, group, "iql", dataset, seed, mode, arm, overrides))
            runs[name] = fake_run(start, scores)
    return specs, runs


def test_the_health_gate_on_medium_fails_a_drop_and_passes_a_steady_agent():
    steady = [(60.0, [58.0, 55.0, 61.0]), (70.0, [66.0, 64.0, 72.0]), (65.0, [64.0, 62.0, 60.0])]
    assert gate(*cell({"none": steady}), "iql", "edis/hopper-medium-v0")["passed"]
    falling = [(60.0, [58.0, 40.0, 61.0]), (70.0, [66.0, 54.0, 72.0]), (65.0, [64.0, 60.0, 60.0])]
    result = gate(*cell({"none": falling}), "iql", "edis/hopper-medium-v0")
    assert not result["passed"]
    assert result["worst_step"] == 2000 and result["worst_drop"] == pytest.approx(-41 / 3)


def test_the_health_gate_on_medium_replay_needs_a_gain_over_the_start():
    data = "edis/hopper-medium-replay-v0"
    rising = [(20.0, [25.0, 30.0]), (18.0, [22.0, 29.0]), (25.0, [29.0, 33.0])]
    assert gate(*cell({"none": rising}, data), "iql", data)["passed"]
    flat = [(20.0, [25.0, 15.0]), (18.0, [12.0, 22.0]), (25.0, [29.0, 23.0])]
    assert gate(*cell({"none": flat}, data), "iql", data)["passed"] is False
    assert gate(*cell({"none": rising[:1]}, data), "iql", data)["passed"] is None  # one seed


def test_the_recipe_search_prefers_a_stable_recipe_over_a_higher_one_that_collapses():
    specs, runs = [], {}
    for arm, per_seed in {
        "recipe-uniform-cosine": [(60.0, [61.0, 62.0]), (62.0, [63.0, 66.0])],
        "recipe-fixed-lr3e-5": [(60.0, [30.0, 95.0]), (62.0, [40.0, 99.0])],    # higher AUC
    }.items():
        s, r = cell({arm: per_seed}, group="recipe")
        specs += s
        runs.update(r)
    assert choose_recipe(specs, runs) == "uniform-cosine"
    del runs[specs[0].name]
    assert choose_recipe(specs, runs) is None          # not before every search run finished


def test_no_verdict_on_edis_when_the_positive_control_does_not_beat_none():
    base = [(60.0, [60.0, 61.0]), (62.0, [62.0, 60.0]), (61.0, [61.0, 63.0])]
    higher = [(60.0, [70.0, 71.0]), (62.0, [72.0, 70.0]), (61.0, [71.0, 73.0])]
    no_control = "\n".join(score_section(*cell({"none": base, "oracle": base,
                                                "edis": higher})))
    assert "the table cannot answer: the positive control does not beat none" in no_control
    answered = "\n".join(score_section(*cell({"none": base, "oracle": higher,
                                              "edis": higher, "unguided": base})))
    assert "- iql on hopper-medium: EDIS beats none: AUC difference +10.0" in answered
    assert "EDIS beats unguided" in answered


def test_the_regime_takes_the_share_and_utd_at_which_the_oracle_gains_most_over_none():
    from evidence.report import choose_regime, regime_gains

    specs, runs = [], {}
    for arm, mode, overrides, per_seed in [
        ("recipe-uniform-cosine", "none", (), [(20.0, [21.0, 22.0]), (22.0, [23.0, 24.0])]),
        ("regime-oracle-rho0.5-utd1", "oracle", ("utd_ratio=1", "schedule.ratio=0.5"),
         [(20.0, [30.0, 31.0]), (22.0, [33.0, 32.0])]),                        # +9
        ("regime-oracle-rho1-utd1", "oracle", ("utd_ratio=1", "schedule.ratio=1.0"),
         [(20.0, [20.0, 21.0]), (22.0, [22.0, 21.0])]),                        # -1.5
        # At UTD 4 `none` itself falls; the oracle is paired with it, not with UTD 1's none.
        ("regime-none-utd4", "none", ("utd_ratio=4",), [(20.0, [5.0, 6.0]), (22.0, [7.0, 8.0])]),
        ("regime-oracle-rho1-utd4", "oracle", ("utd_ratio=4", "schedule.ratio=1.0"),
         [(20.0, [19.0, 20.0]), (22.0, [21.0, 22.0])]),                        # +14 over it
    ]:
        s, r = cell({arm: per_seed}, group="regime" if "regime" in arm else "recipe",
                    mode=mode, overrides=overrides)
        specs += s
        runs.update(r)
    gains = regime_gains(specs, runs)
    assert sorted(gains) == [(0.5, 1, "edis/hopper-medium-v0"), (1.0, 1, "edis/hopper-medium-v0"),
                             (1.0, 4, "edis/hopper-medium-v0")]
    assert gains[1.0, 4, "edis/hopper-medium-v0"].mean == pytest.approx(14.0)
    assert choose_regime(specs, runs) == (1.0, 4)
    del runs[specs[-1].name]
    assert choose_regime(specs, runs) is None      # not before every regime run is done


def test_the_regime_section_says_per_dataset_where_the_oracles_interval_lies_above_zero():
    from evidence.report import _regime_choice_lines

    replay, medium = "edis/hopper-medium-replay-v0", "edis/hopper-medium-v0"
    walker = "edis/walker2d-medium-v0"
    gains = {(0.5, 4, replay): PairedGain((-1.0, 0.5, 0.2)),
             (1.0, 4, replay): PairedGain((-2.0, -2.1, -1.9)),    # below 0: not "above"
             (0.5, 4, medium): PairedGain((7.0, 7.5, 6.8)),
             (1.0, 4, medium): PairedGain((9.0, -2.0, 5.0)),
             (1.0, 4, walker): PairedGain((1.0, 2.0, 3.0))}       # the choice not tried
    lines = _regime_choice_lines(gains, (0.5, 4))
    assert lines[0] == "Chosen for the table: **ρ = 0.5, UTD = 4**."
    replay_line, medium_line, walker_line = lines[2:5]
    assert replay_line.startswith("- hopper-medium-replay: at the chosen regime oracle − none "
                                  "= -0.1, 95% interval")
    assert "MDE" in replay_line
    assert replay_line.endswith("at none of the 2 regimes tried does its interval lie above 0.")
    assert medium_line.endswith("its interval lies above 0 at ρ = 0.5, UTD 4 (uncorrected for "
                                "the 2 regimes tried).")
    assert walker_line.startswith("- walker2d-medium: at the chosen regime oracle − none = –;")
    assert "biased upward" in lines[-1]
    assert _regime_choice_lines(gains, None) == [
        "The regime search has not finished: no regime is chosen yet."]


def test_the_archive_keeps_other_overrides_apart_and_reuses_a_run_only_as_launched(tmp_path):
    from evidence.archive import Archive

    run = {"summary": {"status": "completed"},
           "records": [{"kind": "eval", "step": 1}, {"kind": "train", "step": 1}]}
    real, quick = Archive(tmp_path, ()), Archive(tmp_path, ("online_steps=10",))
    real.put("d/iql/seed0/none", run, ["iql.online_batch=uniform"])
    quick.put("d/iql/seed0/none", run, ["online_steps=10"])
    assert real.path("d/iql/seed0/none") != quick.path("d/iql/seed0/none")
    held = real.get("d/iql/seed0/none", ["iql.online_batch=uniform"])
    assert held["records"] == [{"kind": "eval", "step": 1}]        # only what the report reads
    assert real.get("d/iql/seed0/none", ["iql.online_batch=fixed"]) is None   # chosen otherwise
    assert quick.get("d/iql/seed0/none", ["online_steps=10"]) is not None


def test_the_compute_left_is_estimated_from_finished_runs_of_the_same_kind():
    def spec(name: str, group: str, mode: str, utd: int) -> RunSpec:
        return RunSpec(name, group, "iql", "edis/hopper-medium-v0", 0, mode,
                       overrides=(f"utd_ratio={utd}",))

    def timed(hours: float) -> dict:
        return {"summary": {"phase_cpu_seconds": {"offline": 0.0, "online": 3600 * hours}}}

    specs = [spec("a", "recipe", "none", 1), spec("b", "regime", "none", 4),
             spec("c", "table", "none", 1), spec("d", "table", "edis", 1),
             spec("e", "regime", "none", 4)]
    runs = {"a": timed(0.5), "b": timed(2.0)}
    (line, _) = compute_section(specs, runs, jobs=2)
    assert "took 2.5 CPU-hours (recipe 0.5, regime 2.0)" in line
    # c is timed by a (none at UTD 1, any stage), e by b; d's kind has no finished run.
    assert "about 2.5 CPU-hours for the 2 of a kind already timed (≈ 1.2 h at --jobs 2)" in line
    assert "1 of kinds not timed yet" in line
    assert compute_section(specs, {}, jobs=2) == []


def test_runs_waiting_on_the_regime_are_costed_at_its_utd_once_it_is_chosen():
    def timed(hours: float, overrides: tuple[str, ...] = ()) -> dict:
        return {"summary": {"phase_cpu_seconds": {"offline": 0.0, "online": 3600 * hours}},
                "overrides": list(overrides)}

    def spec(name: str, group: str, overrides: tuple[str, ...], tuned: bool) -> RunSpec:
        return RunSpec(name, group, "iql", "edis/hopper-medium-v0", 0, "none",
                       overrides=overrides, tuned=tuned)

    specs = [spec("r1", "recipe", (), False), spec("r4", "regime", ("utd_ratio=4",), True),
             spec("t0", "table", (), True), spec("t", "table", (), True)]
    # t0, a table run finished at UTD 4, is timed by what its record was launched with.
    runs = {"r1": timed(0.5), "r4": timed(2.0, ("utd_ratio=4",)),
            "t0": timed(4.0, ("utd_ratio=4",))}

    def chosen(s: RunSpec) -> list[str]:
        return [*(("utd_ratio=4",) if s.tuned else ()), *s.overrides]

    (before, _) = compute_section(specs, runs, jobs=1, launch=lambda s: None)
    assert "about 0.5 CPU-hours" in before
    assert "1 table runs are costed at UTD 1" in before
    (after, _) = compute_section(specs, runs, jobs=1, launch=chosen)
    assert "about 3.0 CPU-hours" in after          # t at the mean of r4 and t0
    # Read from its run directory, t0 has no overrides: it counts as launched now.
    del runs["t0"]["overrides"]
    (after, _) = compute_section(specs, runs, jobs=1, launch=chosen)
    assert "about 3.0 CPU-hours" in after
    runs["t0"]["overrides"] = ["utd_ratio=4"]
    assert "costed at UTD 1" not in after
    # A regime run still to do carries its own UTD: not one of those costed at UTD 1.
    del runs["r4"]
    (early, _) = compute_section(specs, runs, jobs=1)
    assert "1 table runs are costed at UTD 1" in early
    assert "about 4.5 CPU-hours for the 2 of a kind" in early


def test_the_protocol_says_when_cal_ql_is_left_out_of_the_plan():
    iql = build(TrainConfig, "evidence", {"agent": "iql"}, [])
    calql = build(TrainConfig, "evidence", {"agent": "calql"}, [])
    assert any(line.startswith("- Agents: IQL alone")
               for line in protocol_section({"iql": iql}, "evidence", True))
    assert not any(line.startswith("- Agents:")
                   for line in protocol_section({"iql": iql, "calql": calql}, "evidence", True))
