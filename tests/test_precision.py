"""The bfloat16 probe: options that would run slower than float32 on this CPU say so."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import evidence.__main__ as evidence_main
from edis_core import precision
from edis_core.agents.calql import CalQLConfig
from edis_core.diffusion.prior import DiffusionConfig
from edis_core.generator_config import EDISConfig
from edis_core.training.config import TrainConfig


def test_the_probe_measures_a_positive_ratio_and_leaves_the_thread_count():
    threads = torch.get_num_threads()
    precision.cpu_bf16_speedup.cache_clear()
    torch.set_num_threads(2)
    try:
        speedup = precision.cpu_bf16_speedup()
        assert math.isfinite(speedup) and speedup > 0
        assert torch.get_num_threads() == 2
        assert precision.bf16_pays("auto") == (torch.cuda.is_available() or speedup >= 1.0)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(("speedup", "warns"), [(0.03, True), (1.8, False)])
def test_slow_bf16_options_warn_with_their_names(monkeypatch, speedup, warns):
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: speedup)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        precision.warn_if_slow(["calql.critic_bf16", "edis.diffusion.sample_bf16"], "cpu")
        precision.warn_if_slow([], "cpu")
    assert len(caught) == int(warns)
    if warns:
        message = str(caught[0].message)
        assert "calql.critic_bf16, edis.diffusion.sample_bf16" in message and "0.03×" in message


def test_gpus_are_not_probed(monkeypatch):
    def probe() -> float:
        raise AssertionError("a GPU's bfloat16 is not measured on the CPU")
    monkeypatch.setattr(precision, "cpu_bf16_speedup", probe)
    assert precision.bf16_pays("cuda")


def test_a_run_names_only_the_bf16_options_it_uses():
    calql = CalQLConfig(critic_bf16=True)
    edis = EDISConfig(diffusion=DiffusionConfig(sample_bf16=True, train_bf16=True))
    config = TrainConfig(agent="iql", synthetic="none", calql=calql, edis=edis)
    assert config.bf16_options() == []   # IQL, no prior: neither is used
    edis = EDISConfig(diffusion=DiffusionConfig(sample_bf16=True))
    config = TrainConfig(agent="calql", synthetic="edis", calql=calql, edis=edis)
    assert config.bf16_options() == ["calql.critic_bf16", "edis.diffusion.sample_bf16"]


@pytest.mark.parametrize("pays", [True, False])
def test_the_evidence_budget_takes_bf16_critics_only_where_they_pay(monkeypatch, pays):
    monkeypatch.setattr(evidence_main, "bf16_pays", lambda device: pays)
    budget = evidence_main.agent_budgets("evidence", "cpu")
    assert ("calql.critic_bf16=true" in budget["calql"]) is pays
    assert "online_steps=10000" in budget["calql"] and "iql" not in budget
    assert evidence_main.agent_budgets("smoke", "cpu") == {}
