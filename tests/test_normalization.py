"""CORL's input normalisation: inside the networks, identical for every row and every copy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edis_core.agents import CalQLConfig, IQLConfig, make_actor, make_agent
from edis_core.data.minari_io import load_dataset
from edis_core.training.normalization import observation_statistics, reward_scale
from edis_core.training.trainer import Trainer
from edis_core.transitions import Batch
from tests.test_training import tiny_config

OBS_DIM, ACT_DIM = 5, 2
SMALL = (32, 32)

def agent(name: str):
    config = (IQLConfig(hidden=SMALL) if name == "iql"
              else CalQLConfig(critic_hidden=SMALL, actor_hidden=SMALL))
    torch.manual_seed(0)
    return make_agent(name, config, OBS_DIM, ACT_DIM, "cpu")

def batch(scale: float = 1.0) -> Batch:
    g = torch.Generator().manual_seed(1)
    return Batch(observations=torch.randn(64, OBS_DIM, generator=g) * 3 + 2,
                 actions=torch.rand(64, ACT_DIM, generator=g) * 2 - 1,
                 rewards=scale * torch.randn(64, generator=g),
                 next_observations=torch.randn(64, OBS_DIM, generator=g) * 3 + 2,
                 terminals=torch.zeros(64), mc_returns=torch.full((64,), -torch.inf))

@pytest.mark.parametrize("name", ["iql", "calql"])
def test_a_normalised_agent_acts_on_raw_observations_as_the_plain_one_on_standardised(name):
    mean, std = torch.arange(OBS_DIM, dtype=torch.float32), torch.linspace(0.5, 3.0, OBS_DIM)
    plain, normalised = agent(name), agent(name)
    normalised.set_normalization(mean, std, 1.0)
    raw = torch.randn(32, OBS_DIM) * std + mean
    expected = plain.act((raw - mean).div(std).numpy(), deterministic=True)
    np.testing.assert_allclose(normalised.act(raw.numpy(), deterministic=True), expected,
                               rtol=1e-5, atol=1e-6)
    # An actor built alone (a rollout actor) from the agent's actor weights does the same.
    alone = make_actor(name, OBS_DIM, ACT_DIM, SMALL)
    alone.load_state_dict(normalised.actor.state_dict())
    np.testing.assert_allclose(alone.sample(raw, deterministic=True).detach().numpy(), expected,
                               rtol=1e-5, atol=1e-6)
    # and so does an agent restored from the state.
    restored = agent(name)
    restored.load_state_dict(normalised.state_dict())
    np.testing.assert_allclose(restored.act(raw.numpy(), deterministic=True), expected,
                               rtol=1e-5, atol=1e-6)

def test_iql_reward_scale_is_the_same_update_as_scaled_rewards():
    scaled_inside, scaled_outside = agent("iql"), agent("iql")
    mean, std = torch.zeros(OBS_DIM), torch.ones(OBS_DIM)
    scaled_inside.set_normalization(mean, std, 7.5)
    torch.manual_seed(3)
    a = scaled_inside.update(batch())
    torch.manual_seed(3)
    b = scaled_outside.update(batch(scale=7.5))
    assert a == pytest.approx(b, rel=1e-5)
    restored = agent("iql")
    restored.load_state_dict(scaled_inside.state_dict())
    assert restored.reward_scale == 7.5

def test_calql_refuses_a_reward_scale_its_monte_carlo_floor_would_not_follow():
    with pytest.raises(ValueError, match="raw rewards"):
        agent("calql").set_normalization(torch.zeros(OBS_DIM), torch.ones(OBS_DIM), 2.0)

def test_statistics_come_from_the_offline_data_as_corl_computes_them(hopper_dataset):
    dataset = load_dataset(hopper_dataset)
    mean, std = observation_statistics(dataset)
    obs = dataset.transitions.observations
    np.testing.assert_allclose(mean.numpy(), obs.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(std.numpy(), obs.std(0) + 1e-3, rtol=1e-4, atol=1e-5)
    returns = dataset.episode_returns
    assert reward_scale(dataset, "iql") == pytest.approx(1000 / (returns.max() - returns.min()))
    assert reward_scale(dataset, "calql") == 1.0


@pytest.mark.parametrize("mode", ["corl", "none"])
def test_a_run_normalises_its_agent_from_its_offline_data(hopper_dataset, tmp_path, mode):
    trainer = Trainer.create(tiny_config(hopper_dataset, "iql", extra=[f"normalization={mode}"]),
                             tmp_path / "run")
    try:
        mean, std = observation_statistics(trainer.dataset)
        if mode == "none":
            mean, std = torch.zeros_like(mean), torch.ones_like(std)
        for network in (trainer.agent.actor, trainer.agent.critic, trainer.agent.critic_target,
                        trainer.agent.value):
            torch.testing.assert_close(network.obs_scaler.mean, mean)
            torch.testing.assert_close(network.obs_scaler.std, std)
        expected = reward_scale(trainer.dataset, "iql") if mode == "corl" else 1.0
        assert trainer.agent.reward_scale == pytest.approx(expected)
    finally:
        trainer.lock.release()
