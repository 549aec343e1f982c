"""The plain Ray backend: one Ray actor per rollout actor, stepping its env itself."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import ray
import torch

from services.metrics.rollout import ActorMetrics
from services.rollout.backend import least_loaded
from services.rollout.episodes import EpisodeBlock
from services.rollout.local import LocalRollout
from services.rollout.spec import RolloutSpec


class RolloutActor(LocalRollout):
    """A `LocalRollout` in its own process with one torch thread. Every call carries the
    current weights as a reference in a list (so that Ray does not resolve it): the actor
    fetches them only when their version is newer than its own, and a restarted actor, back
    with its constructor weights (version 0), is re-synced by its first call."""

    def __init__(self, spec: RolloutSpec, index: int) -> None:
        torch.set_num_threads(1)
        super().__init__(spec, index)
        self.rollout_metrics = ActorMetrics(index)

    def identity(self) -> tuple[int, int]:
        return self.index, os.getpid()

    def _sync(self, weights: list[ray.ObjectRef], version: int) -> None:
        if version > self.policy_version:
            self.load_policy(ray.get(weights[0]), version)

    def sample_block(self, weights: list[ray.ObjectRef], version: int,
                     min_steps: int) -> tuple[EpisodeBlock, int]:
        self._sync(weights, version)
        block = self.sample(min_steps)
        self.rollout_metrics.record(block)
        return block, os.getpid()

    def policy_actions(self, weights: list[ray.ObjectRef], version: int,
                       observations: np.ndarray) -> tuple[int, np.ndarray, int]:
        self._sync(weights, version)
        return self.index, self.deterministic_actions(observations), self.policy_version


class RayActors:
    """Rollout actors as plain Ray actors (one CPU each); Ray restarts a dead one."""

    def __init__(self, spec: RolloutSpec, num_actors: int, calls_in_flight: int) -> None:
        self.spec, self.calls_in_flight = spec, calls_in_flight
        # OMP_NUM_THREADS=1 comes with Ray's one-CPU workers; the actor sets torch's threads.
        remote = ray.remote(num_cpus=1, max_restarts=-1)(RolloutActor)
        self.actors = [remote.remote(spec, index) for index in range(num_actors)]
        self.pids = [pid for _, pid in ray.get([a.identity.remote() for a in self.actors])]
        self.calls: dict[ray.ObjectRef, int] = {}  # in flight: reference -> actor index

    @staticmethod
    def payload(weights: dict[str, torch.Tensor]) -> Any:
        return weights

    def launch(self, count: int, weights_ref: ray.ObjectRef, version: int) -> int:
        load = [0] * len(self.actors)
        for index in self.calls.values():
            load[index] += 1
        # A restarting actor keeps its place: Ray holds its calls until it is back.
        targets = least_loaded(list(range(len(self.actors))), load, self.calls_in_flight, count)
        for index in targets:
            call = self.actors[index].sample_block.remote([weights_ref], version,
                                                          self.spec.steps_per_call)
            self.calls[call] = index
        return len(targets)

    def wait(self, timeout: float) -> tuple[list[tuple[EpisodeBlock, int]], int]:
        if not self.calls:
            return [], 0
        ray.wait(list(self.calls), num_returns=1, timeout=timeout)
        ready, _ = ray.wait(list(self.calls), num_returns=len(self.calls), timeout=0)
        results, lost = [], 0
        for call in ready:
            del self.calls[call]
            try:
                results.append(ray.get(call))
            except ray.exceptions.RayActorError:
                lost += 1
        return results, lost

    def in_flight(self) -> int:
        return len(self.calls)

    def deterministic_actions(self, weights_ref: ray.ObjectRef, version: int,
                              observations: np.ndarray) -> list[tuple[int, np.ndarray, int]]:
        return ray.get([a.policy_actions.remote([weights_ref], version, observations)
                        for a in self.actors])

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
