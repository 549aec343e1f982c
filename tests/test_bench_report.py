"""The evidence report's verdicts: EDIS 'beats' a baseline only when the 95% interval of the
paired per-seed differences excludes zero."""

from __future__ import annotations

import math

import pytest

from bench.plan import RunSpec
from bench.report import PairedGain, drops, verdicts


def test_the_interval_is_students_t_over_the_paired_differences():
    gain = PairedGain((1.0, 2.0, 3.0))          # mean 2, sample std 1, t_0.975(2) = 4.3027
    low, high = gain.interval
    half = 4.302653 / math.sqrt(3)
    assert low == pytest.approx(2 - half, abs=1e-4)
    assert high == pytest.approx(2 + half, abs=1e-4)
    assert str(gain) == "+2.0, 95% interval [-0.5, +4.5], ahead on 3 of 3 seeds"


@pytest.mark.parametrize(("gains", "verdict"), [
    ((2.0, 2.1, 1.9), "beats none"),
    ((-2.0, -2.1, -1.9), "is beaten by none"),
    ((1.0, 2.0, 3.0), "is not distinguishable from none"),  # ahead on every seed, too spread
    ((0.6, -1.0, 2.2), "is not distinguishable from none"),
    ((5.0,), "has one seed against none, no verdict yet"),
])
def test_verdicts_need_the_interval_to_exclude_zero(gains, verdict):
    assert PairedGain(gains).verdict("none") == verdict


def table(scores: dict[str, tuple[float, ...]], start: float = 0.0):
    """Table specs and finished runs of iql on hopper-medium with these final scores."""
    specs, runs = [], {}
    for mode, per_seed in scores.items():
        for seed, score in enumerate(per_seed):
            name = f"hopper-medium/iql/seed{seed}/{mode}"
            specs.append(RunSpec(name, "table", "iql", "edis/hopper-medium-v0", seed, mode))
            runs[name] = {"summary": {"online_final": {"normalized_score": score},
                                      "offline_final": {"normalized_score": start}},
                          "records": []}
    return specs, runs


def test_verdicts_pair_seeds_and_name_each_baseline():
    specs, runs = table({"none": (10.0, 20.0, 30.0), "unguided": (11.0, 19.0, 31.0),
                         "edis": (13.0, 23.1, 32.9)})
    lines = verdicts(specs, runs)
    # against none the gains are 3.0, 3.1, 2.9 although the scores spread over 20 points
    assert lines[0].startswith("- iql on hopper-medium: EDIS beats none: final score "
                               "difference +3.0, 95% interval [")
    assert lines[1].startswith("- iql on hopper-medium: EDIS is not distinguishable from "
                               "unguided: final score difference +2.7, 95%")


def test_the_report_says_when_every_mode_ends_below_the_offline_start():
    scores = {"none": (14.0, 15.0), "unguided": (17.0, 17.0), "edis": (16.0, 17.0)}
    assert drops(*table(scores, start=68.0)) == [
        "- iql on hopper-medium: every mode ends below its offline start (68.0 → 14.5-17.0); "
        "at this budget the table measures the early online drop and the recovery from it, "
        "not fine-tuning gains."]
    assert drops(*table(scores, start=16.0)) == []      # one mode ends above its start
