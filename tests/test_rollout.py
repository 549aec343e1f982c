"""Rollout actors on a local Ray (2 CPUs): whole episodes with the one-process loop's row
format, weights by version, recovery from a killed actor, and the policy as an RLModule."""

from __future__ import annotations

import math
import os
import signal
import time

import gymnasium as gym
import numpy as np
import pytest
import ray
import torch
from ray.rllib.core import COMPONENT_RL_MODULE
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModule
from ray.rllib.utils.metrics import WEIGHTS_SEQ_NO

from edis_core.agents import AGENT_CONFIGS, actor_hidden, make_agent
from edis_core.training.envs import ActionScaler
from services.rollout import EpisodeBlock, RolloutPool, RolloutSpec, save_policy_module
from services.rollout.local import LocalRollout
from services.rollout.module import PolicyModule, module_state
from services.rollout.runners import EpisodeRunner, rollout_config

pytestmark = pytest.mark.services

HOPPER = ("Hopper-v5", 11, 3)
# Each backend runs the other agent's actor, so that both networks run in both kinds of
# actor across the suite.
POOLS = [("ray", "iql"), ("rllib", "calql")]


def agent_for(kind: str, obs_dim: int, act_dim: int, seed: int):
    torch.manual_seed(seed)
    return make_agent(kind, AGENT_CONFIGS[kind](), obs_dim, act_dim)


def spec_for(kind: str, env: tuple[str, int, int] = HOPPER, steps: int = 200) -> RolloutSpec:
    env_id, obs_dim, act_dim = env
    return RolloutSpec(env_id, kind, actor_hidden(AGENT_CONFIGS[kind]()), obs_dim, act_dim,
                       seed=7, steps_per_call=steps)


def ray_psutil():
    """Ray's own copy of psutil (on the path once ray is imported)."""
    import psutil

    return psutil


def running(pid: int) -> bool:
    ps = ray_psutil()
    try:
        return ps.Process(pid).status() != ps.STATUS_ZOMBIE
    except ps.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="warning")
    started = [p for p in ray_psutil().Process().children(recursive=True)
               if p.name() in ("raylet", "gcs_server")]
    assert sorted(p.name() for p in started) == ["gcs_server", "raylet"]
    yield
    ray.shutdown()
    _, alive = ray_psutil().wait_procs(started, timeout=30)
    assert not [p for p in alive if running(p.pid)], "Ray processes left running"


class Learner:
    """The learner's side of a pool: its agent and the versions it published."""

    def __init__(self, pool: RolloutPool, kind: str) -> None:
        self.pool, self.kind = pool, kind
        self.agent = agent_for(kind, HOPPER[1], HOPPER[2], seed=1)

    def publish_new_policy(self) -> int:
        """Perturb the agent's actor (as an update would) and publish it as a new version."""
        with torch.no_grad():
            for parameter in self.agent.actor.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))
        version = self.pool.policy_version + 1
        self.pool.set_policy(self.agent.actor.state_dict(), version)
        return version

    def drain(self, timeout: float = 60.0) -> list[EpisodeBlock]:
        """Blocks of every call in flight, admitting no new ones."""
        blocks, deadline = [], time.monotonic() + timeout
        while self.pool.stats()["in_flight"] and time.monotonic() < deadline:
            blocks += self.pool.collect(admit_calls=0, timeout=1.0)
        assert self.pool.stats()["in_flight"] == 0
        return blocks

    def collect_until(self, done, timeout: float = 90.0) -> list[EpisodeBlock]:
        blocks, deadline = [], time.monotonic() + timeout
        while not done(blocks):
            assert time.monotonic() < deadline, f"timed out; stats {self.pool.stats()}"
            blocks += self.pool.collect(admit_calls=4, timeout=1.0)
        return blocks


@pytest.fixture(scope="module", params=POOLS, ids=[f"{b}-{k}" for b, k in POOLS])
def learner(request, ray_cluster):
    backend, kind = request.param
    pool = RolloutPool(spec_for(kind), num_actors=2, backend=backend)
    learner = Learner(pool, kind)
    learner.publish_new_policy()
    yield learner
    pool.close()


def check_block(block: EpisodeBlock) -> None:
    """Whole episodes in the one-process loop's row format."""
    t = block.transitions
    ends = block.episode_ends
    assert ends[-1] == len(t) and np.all(np.diff(ends) > 0) and ends[0] > 0
    assert np.all(np.isfinite(t.observations)) and np.all(np.isfinite(t.next_observations))
    assert t.observations.dtype == np.float32 and t.actions.dtype == np.float32
    assert np.all(np.abs(t.actions) <= 1.0)  # agent units
    assert np.all(t.mc_returns == -np.inf)
    starts = np.concatenate([[0], ends[:-1]])
    for start, end, ret in zip(starts, ends, block.returns, strict=True):
        episode = t.take(slice(start, end))
        np.testing.assert_array_equal(episode.observations[1:], episode.next_observations[:-1])
        done = (episode.terminals > 0) | (episode.timeouts > 0)
        assert done[-1] and not done[:-1].any()
        assert math.isclose(ret, float(episode.rewards.sum()), rel_tol=1e-6)


def test_blocks_hold_whole_episodes_with_correct_boundaries(learner):
    blocks = learner.collect_until(
        lambda got: len(got) >= 4 and {b.actor_index for b in got} == {0, 1})
    for block in blocks:
        check_block(block)
        assert block.env_steps >= learner.pool.spec.steps_per_call
        assert block.sample_seconds > 0
    # Hopper falls under an untrained policy: episodes end by termination here.
    assert any(b.transitions.terminals.any() for b in blocks)
    # Every episode starts from a reset of its own (no actor re-seeds its env per episode,
    # and the two actors have different seeds).
    first_obs = np.concatenate([b.transitions.observations[[0, *b.episode_ends[:-1]]]
                                for b in blocks])
    assert len(np.unique(first_obs, axis=0)) == len(first_obs)
    # The actors explore: recorded actions are draws, not the policy's deterministic action.
    t = blocks[0].transitions
    assert not np.allclose(t.actions, learner.agent.act(t.observations, deterministic=True),
                           atol=1e-3)
    stats = learner.pool.stats()
    assert stats["calls_finished"] >= len(blocks) and stats["calls_lost"] == 0
    assert stats["env_steps"] >= sum(b.env_steps for b in blocks)


def test_after_a_weight_push_actors_act_with_the_learners_policy(learner):
    learner.drain()
    version = learner.publish_new_policy()
    blocks = learner.collect_until(lambda got: {b.actor_index for b in got} == {0, 1})
    assert {b.policy_version for b in blocks} == {version}
    observations = np.concatenate([b.transitions.observations[:64] for b in blocks])
    expected = learner.agent.act(observations, deterministic=True)
    actor_actions = learner.pool.deterministic_actions(observations)
    assert len(actor_actions) == 2
    for actions in actor_actions:
        np.testing.assert_allclose(actions, expected, rtol=0, atol=1e-6)


def test_a_killed_actor_is_restarted_resynced_and_its_calls_counted_lost(learner):
    pool = learner.pool
    learner.drain()
    pool.collect(admit_calls=4, timeout=0.0)
    assert pool.stats()["in_flight"] == 4
    victim = pool.actor_pids()[0]
    os.kill(victim, signal.SIGKILL)
    # A newer policy published after the kill: the restarted actor must act with it.
    version = learner.publish_new_policy()

    def recovered(blocks: list[EpisodeBlock]) -> bool:
        return pool.stats()["actor_restarts"] >= 1 and any(
            b.actor_index == 0 and b.policy_version == version for b in blocks)

    blocks = learner.collect_until(recovered)
    stats = pool.stats()
    assert stats["calls_lost"] >= 1 and stats["actor_restarts"] == 1
    assert pool.actor_pids()[0] != victim and not running(victim)
    assert {b.actor_index for b in blocks} == {0, 1}  # the other actor kept collecting
    for block in blocks:
        check_block(block)
    # Only calls admitted before the kill (with the older policy) can carry an older version.
    assert {b.policy_version for b in blocks} <= {version - 1, version}
    assert all(b.policy_version == version for b in blocks if b.actor_index == 0)
    # The restarted actor acts with the current policy, not its constructor weights.
    observations = blocks[-1].transitions.observations[:32]
    for actions in pool.deterministic_actions(observations):
        np.testing.assert_allclose(actions, learner.agent.act(observations, deterministic=True),
                                   rtol=0, atol=1e-6)


def test_weights_that_do_not_fit_and_stale_versions_are_refused(learner):
    pool = learner.pool
    with pytest.raises(ValueError, match="versions must increase"):
        pool.set_policy(learner.agent.actor.state_dict(), pool.policy_version)
    with pytest.raises(ValueError, match="do not fit"):
        pool.set_policy({"net.0.weight": torch.zeros(3, 3)}, pool.policy_version + 1)


@pytest.mark.parametrize("kind", ["iql", "calql"])
def test_saved_policy_module_loads_with_rllib_and_acts(kind, tmp_path):
    obs_dim, act_dim = HOPPER[1], HOPPER[2]
    agent = agent_for(kind, obs_dim, act_dim, seed=3)
    path = save_policy_module(kind, actor_hidden(agent.config), obs_dim, act_dim,
                              agent.actor.state_dict(), tmp_path / "policy")
    module = RLModule.from_checkpoint(path)
    assert isinstance(module, PolicyModule)
    observations = np.random.default_rng(0).normal(size=(16, obs_dim)).astype(np.float32)
    batch = {Columns.OBS: torch.from_numpy(observations)}
    actions = module.forward_inference(batch)[Columns.ACTIONS].numpy()
    np.testing.assert_allclose(actions, agent.act(observations, deterministic=True),
                               rtol=0, atol=1e-6)
    explored = module.forward_exploration(batch)[Columns.ACTIONS].numpy()
    assert np.all(np.abs(explored) <= 1.0) and not np.allclose(explored, actions, atol=1e-3)


def test_saving_weights_of_another_shape_is_one_clear_error(tmp_path):
    agent = agent_for("iql", 11, 3, seed=0)
    with pytest.raises(ValueError, match="do not fit a iql actor"):
        save_policy_module("iql", (32,), 11, 3, agent.actor.state_dict(), tmp_path / "p")


def sample_pendulum(backend: str, spec: RolloutSpec, weights: dict[str, torch.Tensor]):
    """One block sampled in this process by the code each backend's actors run."""
    if backend == "ray":
        rollout = LocalRollout(spec, index=0)
        rollout.load_policy(weights, version=1)
        return rollout.sample(spec.steps_per_call)
    runner = EpisodeRunner(config=rollout_config(spec, 1, 1), worker_index=1)
    try:
        state = {COMPONENT_RL_MODULE: module_state(weights), WEIGHTS_SEQ_NO: 1}
        return runner.sample_block(state, spec.steps_per_call)[0]
    finally:
        runner.stop()


@pytest.mark.parametrize("backend", ["ray", "rllib"])
def test_the_env_gets_env_units_and_rows_keep_agent_units(backend, ray_cluster):
    """Pendulum's torque bound is 2: replaying each row's state with to_env(action) must
    give its reward and next observation (a raw agent-unit action would not)."""
    spec = spec_for("calql", ("Pendulum-v1", 3, 1), steps=200)
    agent = agent_for("calql", 3, 1, seed=5)
    block = sample_pendulum(backend, spec, agent.actor.state_dict())
    check_block(block)
    t = block.transitions
    assert t.timeouts[-1] == 1 and not t.terminals.any()  # Pendulum only truncates
    env = gym.make("Pendulum-v1").unwrapped
    env.reset(seed=0)
    scaler = ActionScaler.for_space(env.action_space)
    assert np.any(np.abs(scaler.to_env(t.actions)) > 1.0)  # env units differ from agent units
    for row in range(0, len(t), 17):
        cos, sin, speed = t.observations[row].astype(np.float64)
        env.state = np.array([math.atan2(sin, cos), speed])
        next_obs, reward, *_ = env.step(scaler.to_env(t.actions[row]))
        np.testing.assert_allclose(next_obs, t.next_observations[row], atol=1e-4)
        assert math.isclose(reward, t.rewards[row], rel_tol=1e-4, abs_tol=1e-4)


def test_a_pool_refuses_bad_arguments(ray_cluster):
    with pytest.raises(ValueError, match="unknown rollout backend"):
        RolloutPool(spec_for("iql"), 1, backend="threads")
    with pytest.raises(ValueError, match="num_actors"):
        RolloutPool(spec_for("iql"), 0)
    with pytest.raises(ValueError, match="3 rollout actors need 3 CPUs and the Ray cluster has 2"):
        RolloutPool(spec_for("iql"), 3)
    with pytest.raises(ValueError, match=r"the spec says obs_dim 11, act_dim 3"):
        RolloutPool(spec_for("iql", ("Walker2d-v5", 11, 3)), 1)
    with pytest.raises(ValueError, match="cannot create environment 'NoSuchEnv-v0'"):
        RolloutPool(spec_for("iql", ("NoSuchEnv-v0", 11, 3)), 1)
    with pytest.raises(ValueError, match="unknown agent"):
        RolloutSpec("Hopper-v5", "sac", (8,), 11, 3, seed=0)
