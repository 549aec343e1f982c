"""The RLlib backend: `SingleAgentEnvRunner`s in an `EnvRunnerGroup` without a local runner,
running `PolicyModule`.

Pitfalls of RLlib 2.60 met here (see the design notes on the stack):
- a plain `AlgorithmConfig` has no default RLModule spec and the runner then silently builds
  no module (random actions): `RolloutConfig` provides one and the runner insists on a module;
- `set_state` loads weights only when WEIGHTS_SEQ_NO is newer than the runner's, and a
  restarted runner comes back with its constructor weights (seq no 0): every sample call
  carries the current state (its module weights as one object-store reference per version),
  so a restarted runner is re-synced before it samples again;
- `sample(num_episodes=...)` re-seeds every reset when `config.seed` is set (each episode
  would start alike): the config has no seed; the runner seeds its env once instead.
"""

from __future__ import annotations

import copy
import os
import time
from typing import Any

import numpy as np
import ray
import torch
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core import COMPONENT_RL_MODULE
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.env.env_runner_group import EnvRunnerGroup
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.utils.metrics import WEIGHTS_SEQ_NO

from edis_core.episodes import Episode
from edis_core.training.envs import ActionScaler
from services.metrics.rollout import ActorMetrics
from services.rollout.backend import least_loaded
from services.rollout.episodes import EpisodeBlock
from services.rollout.module import PolicyModule, agent_spaces, module_state, policy_model_config
from services.rollout.spec import RolloutSpec

SAMPLE = "sample"
# How long one wait on RLlib's requests lasts before the group is asked again: its
# `fetch_ready_async_reqs` waits for all requests or the timeout, not for the first.
WAIT_SLICE_S = 0.01
# While a runner is out of service, each launch waits this long for it to answer a ping.
PROBE_TIMEOUT_S = 0.05


class ActionsToEnvUnits(ConnectorV2):
    """Module-to-env piece: the env gets `ActionScaler.to_env(action)`; the episode keeps the
    module's action, in agent units."""

    def recompute_output_action_space(self, input_observation_space: Any,
                                      input_action_space: Any) -> Any:
        self.scaler = ActionScaler.for_space(input_action_space)
        return input_action_space

    def __call__(self, *, rl_module: Any, batch: dict[str, Any], episodes: list[Any],
                 explore: bool | None = None, shared_data: dict | None = None,
                 **kwargs: Any) -> Any:
        batch[Columns.ACTIONS_FOR_ENV] = copy.deepcopy(batch[Columns.ACTIONS])
        self.foreach_batch_item_change_in_place(
            batch=batch, column=Columns.ACTIONS_FOR_ENV,
            func=lambda action, *_: self.scaler.to_env(action))
        return batch


def actions_to_env_units(env: Any = None, spaces: Any = None) -> ConnectorV2:
    return ActionsToEnvUnits()


class RolloutConfig(AlgorithmConfig):
    """An AlgorithmConfig whose default RLModule is the spec's policy."""

    def __init__(self, spec: RolloutSpec) -> None:
        super().__init__()
        self.rollout_spec = spec

    def get_default_rl_module_spec(self) -> RLModuleSpec:
        spec = self.rollout_spec
        observation_space, action_space = agent_spaces(spec.obs_dim, spec.act_dim)
        return RLModuleSpec(module_class=PolicyModule, observation_space=observation_space,
                            action_space=action_space,
                            model_config=policy_model_config(spec.agent, spec.hidden))


def rollout_config(spec: RolloutSpec, num_runners: int, calls_in_flight: int) -> RolloutConfig:
    return (
        RolloutConfig(spec)
        .framework("torch")
        .environment(spec.env_id, normalize_actions=False, clip_actions=False)
        .env_runners(env_runner_cls=EpisodeRunner, num_env_runners=num_runners,
                     num_envs_per_env_runner=1, num_cpus_per_env_runner=1,
                     max_requests_in_flight_per_env_runner=calls_in_flight,
                     module_to_env_connector=actions_to_env_units, explore=True)
        .fault_tolerance(restart_failed_env_runners=True)
    )


def _episode(episode: SingleAgentEpisode) -> Episode:
    return Episode(np.asarray(episode.get_observations()), np.asarray(episode.get_actions()),
                   np.asarray(episode.get_rewards()), episode.is_terminated,
                   episode.is_truncated)


class EpisodeRunner(SingleAgentEnvRunner):
    """A runner that samples whole episodes and flattens them to numpy itself."""

    def __init__(self, *, config: RolloutConfig, **kwargs: Any) -> None:
        torch.set_num_threads(1)
        super().__init__(config=config, **kwargs)
        if self.module is None:
            raise RuntimeError("the env runner built no RLModule: its config must provide "
                               "get_default_rl_module_spec")
        spec = config.rollout_spec
        self.actor_index = self.worker_index - 1
        seed = spec.actor_seed(self.actor_index)
        torch.manual_seed(seed)  # exploration noise
        self.env.reset(seed=seed)  # later resets continue this env's random stream
        self.rollout_metrics = ActorMetrics(self.actor_index)  # RLlib's own: self.metrics

    def identity(self) -> tuple[int, int]:
        return self.actor_index, os.getpid()

    @property
    def policy_version(self) -> int:
        return self._weights_seq_no

    def sample_block(self, state: dict[str, Any], min_steps: int) -> tuple[EpisodeBlock, int]:
        """Whole episodes, at least `min_steps` env steps in all, acting with the weights in
        `state` (loaded only if newer than ours); returns them with this process's PID."""
        self.set_state(state)
        if self.policy_version == 0:
            raise RuntimeError("no policy loaded: sample calls must carry weights")
        start, episodes, steps = time.perf_counter(), [], 0
        while steps < min_steps:
            for episode in self.sample(num_episodes=1, explore=True):
                episodes.append(_episode(episode))
                steps += len(episodes[-1])
        self.get_metrics()  # RLlib keeps every returned episode until its metrics are read
        block = EpisodeBlock.from_episodes(episodes, self.policy_version, self.actor_index,
                                           time.perf_counter() - start)
        self.rollout_metrics.record(block)
        return block, os.getpid()

    def deterministic_actions(self, state: dict[str, Any],
                              observations: np.ndarray) -> tuple[int, np.ndarray, int]:
        """The module's inference actions, after loading `state` if newer."""
        self.set_state(state)
        # A copy: arrays from Ray are read-only.
        batch = {Columns.OBS: torch.tensor(observations, dtype=torch.float32)}
        actions = self.module.forward_inference(batch)[Columns.ACTIONS]
        return self.actor_index, actions.numpy(), self.policy_version


class RLlibRunners:
    """Rollout actors as RLlib env runners; Ray restarts a dead one and a ping brings it back
    into service. RLlib's fault tolerance treats a call that raises like a dead runner's: it
    is counted lost and the runner probed back, where the plain backend raises the error."""

    def __init__(self, spec: RolloutSpec, num_actors: int, calls_in_flight: int) -> None:
        self.spec, self.calls_in_flight = spec, calls_in_flight
        self.group = EnvRunnerGroup(config=rollout_config(spec, num_actors, calls_in_flight),
                                    local_env_runner=False)
        identities = self.group.foreach_env_runner("identity", local_env_runner=False)
        if len(identities) != num_actors:
            self.close()
            raise RuntimeError(f"only {len(identities)} of {num_actors} RLlib env runners "
                               "started: see the Ray worker logs")
        self.pids = [pid for _, pid in sorted(identities)]
        self.calls = [0] * num_actors  # in flight, per actor
        self.lost = 0  # calls lost since the last wait

    @staticmethod
    def payload(weights: dict[str, torch.Tensor]) -> Any:
        return module_state(weights)

    @staticmethod
    def _state(weights_ref: ray.ObjectRef, version: int) -> dict[str, Any]:
        # A reference inside a dict is not resolved by Ray: the runner's set_state fetches it
        # only when the version is newer than its own.
        return {COMPONENT_RL_MODULE: weights_ref, WEIGHTS_SEQ_NO: version}

    def launch(self, count: int, weights_ref: ray.ObjectRef, version: int) -> int:
        self._drop_unhealthy()
        if self.group.num_healthy_remote_workers() < len(self.pids):
            # Back in service once a restarted runner answers a ping.
            self.group.probe_unhealthy_env_runners(timeout_seconds=PROBE_TIMEOUT_S)
        healthy = [runner_id - 1 for runner_id in self.group.healthy_env_runner_ids()]
        targets = least_loaded(healthy, self.calls, self.calls_in_flight, count)
        if not targets:
            return 0
        made = self.group.foreach_env_runner_async(
            "sample_block", tag=SAMPLE, remote_worker_ids=[i + 1 for i in targets],
            kwargs={"state": self._state(weights_ref, version),
                    "min_steps": self.spec.steps_per_call})
        if made != len(targets):
            raise RuntimeError(f"RLlib refused {len(targets) - made} sample calls the pool "
                               "counted as free")
        for index in targets:
            self.calls[index] += 1
        return made

    def wait(self, timeout: float) -> tuple[list[tuple[EpisodeBlock, int]], int]:
        """Finished calls' results, and the number of calls lost with a dead runner."""
        deadline = time.monotonic() + timeout
        while True:
            results = self.group.fetch_ready_async_reqs(
                tags=SAMPLE, timeout_seconds=max(0.0, min(WAIT_SLICE_S,
                                                          deadline - time.monotonic())))
            for runner_id, _ in results:
                self.calls[runner_id - 1] -= 1
            self._drop_unhealthy()
            if (results or self.lost or time.monotonic() >= deadline
                    or not self.in_flight()):
                lost, self.lost = self.lost, 0
                return [result for _, result in results], lost

    def _drop_unhealthy(self) -> None:
        """A runner that failed a call (of any kind) is out of service and RLlib forgets
        its requests: count them lost before a probe can bring the runner back."""
        healthy = {runner_id - 1 for runner_id in self.group.healthy_env_runner_ids()}
        for index, calls in enumerate(self.calls):
            if index not in healthy:
                self.lost += calls
                self.calls[index] = 0

    def in_flight(self) -> int:
        return sum(self.calls)

    def deterministic_actions(self, weights_ref: ray.ObjectRef, version: int,
                              observations: np.ndarray) -> list[tuple[int, np.ndarray, int]]:
        return self.group.foreach_env_runner(
            "deterministic_actions", local_env_runner=False,
            kwargs={"state": self._state(weights_ref, version), "observations": observations})

    def close(self) -> None:
        self.group.stop()

