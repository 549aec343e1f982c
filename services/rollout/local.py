"""An env and the policy network in one process, running whole episodes: the work of one
plain rollout actor, and the bare loop the rollout benchmark compares against."""

from __future__ import annotations

import time

import numpy as np
import torch

from edis_core.episodes import EnvStepper, Episode
from edis_core.training.envs import ActionScaler, make_env
from services.rollout.episodes import EpisodeBlock
from services.rollout.spec import RolloutSpec


class LocalRollout:
    """Actor `index` of a rollout: its own env and seed, the spec's policy network."""

    def __init__(self, spec: RolloutSpec, index: int) -> None:
        self.spec, self.index = spec, index
        seed = spec.actor_seed(index)
        torch.manual_seed(seed)  # exploration noise
        self.env = make_env(spec.env_id, seed)
        self.scaler = ActionScaler.for_space(self.env.action_space)
        self.stepper = EnvStepper(self.env, self.scaler.to_env)
        self.actor = spec.make_actor()
        self.policy_version = 0  # constructor weights: never used to collect

    def load_policy(self, weights: dict[str, torch.Tensor], version: int) -> None:
        self.actor.load_state_dict(weights)
        self.policy_version = version

    @torch.inference_mode()
    def act(self, observation: np.ndarray) -> np.ndarray:
        """a ~ π(·|s) in agent units, as `Agent.act` computes it for one observation."""
        obs = torch.as_tensor(observation[None], dtype=torch.float32)
        return self.actor.sample(obs).numpy()[0]

    @torch.inference_mode()
    def deterministic_actions(self, observations: np.ndarray) -> np.ndarray:
        obs = torch.tensor(observations, dtype=torch.float32)  # a copy: Ray's arrays are read-only
        return self.actor.sample(obs, deterministic=True).numpy()

    def episode(self) -> Episode:
        """One episode from a fresh reset; the env gets the actions in its own units."""
        return self.stepper.episode(self.act)

    def sample(self, min_steps: int) -> EpisodeBlock:
        """Whole episodes, at least `min_steps` env steps in all."""
        if self.policy_version == 0:
            raise RuntimeError("no policy loaded: call load_policy before sampling")
        start, episodes, steps = time.perf_counter(), [], 0
        while steps < min_steps:
            episodes.append(self.episode())
            steps += len(episodes[-1])
        return EpisodeBlock.from_episodes(episodes, self.policy_version, self.index,
                                          time.perf_counter() - start)
