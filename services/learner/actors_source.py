"""Online transitions from rollout actors on Ray: the `edis run` side of
edis_core/training/online.py.

Collection follows the learner: sample calls are admitted only while the transitions owed to
updates and those in flight are less than LEAD_CALLS calls' worth, and never beyond the
budget, so the update-to-data ratio stays `utd_ratio` as in `edis train` and the policy that
acts is at most about LEAD_CALLS calls behind the learner's. Before admitting calls the
learner's current policy is published (one `ray.put` per version); every call carries the
version it acts with.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from edis_core.agents import actor_hidden
from edis_core.training.config import RuntimeConfig
from edis_core.training.online import Arrival, Learner
from services.rollout import RolloutPool, RolloutSpec

if TYPE_CHECKING:
    from edis_core.training.trainer import Trainer

WAIT_SECONDS = 0.5  # longest block of the loop while it has nothing to update on
LEAD_CALLS = 2  # calls' worth of transitions kept ahead of the learner
KEPT_VERSIONS = 256  # policy versions whose publication step is remembered for the lag


class RolloutActorsSource:
    def __init__(self, trainer: Trainer, runtime: RuntimeConfig):
        config = trainer.config
        self.runtime = runtime
        self.utd_ratio, self.online_steps = config.utd_ratio, config.online_steps
        self.spec = RolloutSpec(
            env_id=trainer.env.spec.id, agent=config.agent,
            hidden=actor_hidden(config.agent_config), obs_dim=trainer.offline.obs_dim,
            act_dim=trainer.offline.act_dim, seed=config.seed,
            steps_per_call=runtime.steps_per_call)
        self.pool = RolloutPool(self.spec, runtime.actors, runtime.backend,
                                runtime.calls_in_flight)
        self.pushed_at = -1  # learner updates when the current policy version was published
        self.lagged_episodes = 0  # acted with a policy older than the newest at arrival
        self._published_at: OrderedDict[int, int] = OrderedDict()  # version -> learner updates
        # Called with each block's policy lag: learner updates since its policy was published.
        self.lag_observers: list[Callable[[int], None]] = []

    def start(self, learner: Learner) -> None:
        # Offline, the learner had the cores to itself (config.torch_threads); online, the
        # actors and the sampler need theirs.
        torch.set_num_threads(self.runtime.learner_threads)
        learner.write({"kind": "actors", "phase": "online", "step": learner.env_steps,
                       "backend": self.pool.backend_name, "pids": self.pool.actor_pids()})

    def collect(self, learner: Learner, wait: bool) -> list[Arrival]:
        admit = self._calls_to_admit(learner)
        if admit:
            self._publish_policy(learner)
        arrivals = []
        for block in self.pool.collect(admit, WAIT_SECONDS if wait else 0.0):
            if block.policy_version < self.pool.policy_version:
                self.lagged_episodes += len(block.episode_ends)
            self._observe_lag(learner.updates, block.policy_version)
            start = 0
            for end in block.episode_ends:  # blocks hold whole episodes
                arrivals.append(Arrival(block.transitions.take(slice(start, int(end))),
                                        ends_episode=True))
                start = int(end)
        return arrivals

    def _calls_to_admit(self, learner: Learner) -> int:
        per_call, utd = self.spec.steps_per_call, self.utd_ratio
        steps = learner.env_steps
        owed = steps - learner.updates / utd  # env steps' worth of updates still to do
        in_flight = self.pool.stats()["in_flight"] * per_call
        short = LEAD_CALLS * per_call - owed - in_flight
        left = self.online_steps - steps - in_flight
        if short <= 0 or left <= 0:
            return 0
        return min(math.ceil(short / per_call), math.ceil(left / per_call))

    def _publish_policy(self, learner: Learner) -> None:
        if learner.updates == self.pushed_at:
            return
        self.pool.set_policy(learner.policy_weights(), self.pool.policy_version + 1)
        self.pushed_at = learner.updates
        self._published_at[self.pool.policy_version] = learner.updates
        if len(self._published_at) > KEPT_VERSIONS:
            self._published_at.popitem(last=False)

    def _observe_lag(self, updates: int, version: int) -> None:
        published = self._published_at.get(version)
        if published is not None:
            for observe in self.lag_observers:
                observe(updates - published)

    def stats(self) -> dict[str, float]:
        counts = self.pool.stats()
        return {"actor_env_steps": counts["env_steps"], "actor_episodes": counts["episodes"],
                "actor_calls_lost": counts["calls_lost"],
                "actor_restarts": counts["actor_restarts"],
                "policy_version": self.pool.policy_version,
                "lagged_episodes": self.lagged_episodes}

    def close(self) -> None:
        self.pool.close()
