"""The learner's handle on its rollout actors: publish a policy, collect whole episodes."""

from __future__ import annotations

from types import TracebackType

import numpy as np
import ray
import torch

from edis_core.training.envs import ActionScaler, make_env
from services.rollout.actors import RayActors
from services.rollout.backend import Backend
from services.rollout.episodes import EpisodeBlock
from services.rollout.runners import RLlibRunners
from services.rollout.spec import RolloutSpec

BACKENDS: dict[str, type[Backend]] = {"ray": RayActors, "rllib": RLlibRunners}
# The faster of the two in benchmarks/bench_runtime.py (section "rollouts").
DEFAULT_BACKEND = "ray"


def check_env(spec: RolloutSpec) -> None:
    """Refuse, before any actor starts, an env that cannot be made or does not fit the spec."""
    env = make_env(spec.env_id, spec.seed)
    try:
        ActionScaler.for_space(env.action_space)
        shapes = env.observation_space.shape, env.action_space.shape
    finally:
        env.close()
    if shapes != ((spec.obs_dim,), (spec.act_dim,)):
        raise ValueError(f"{spec.env_id} has observation and action shapes {shapes[0]} and "
                         f"{shapes[1]}; the spec says obs_dim {spec.obs_dim}, "
                         f"act_dim {spec.act_dim}")


class RolloutPool:
    """`num_actors` rollout actors on Ray, one CPU and one torch thread each.

    `backend="ray"`: plain Ray actors stepping their env themselves; `"rllib"`: RLlib
    `SingleAgentEnvRunner`s in an `EnvRunnerGroup`. Both act with the agent's actor network
    and return the same `EpisodeBlock`s. Policy weights go out through Ray's object store,
    one `ray.put` per version; each sample call carries the current version, so an actor
    (a restarted one included) always samples with the newest weights published before the
    call was admitted. A dead actor's in-flight calls are counted lost; Ray restarts it.

    The caller starts Ray (`ray.init`) before and shuts it down after.
    """

    def __init__(self, spec: RolloutSpec, num_actors: int, backend: str = DEFAULT_BACKEND,
                 calls_in_flight: int = 2) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown rollout backend {backend!r}; valid: {sorted(BACKENDS)}")
        if num_actors < 1 or calls_in_flight < 1:
            raise ValueError(f"num_actors and calls_in_flight must be >= 1, got {num_actors} "
                             f"and {calls_in_flight}")
        if not ray.is_initialized():
            raise RuntimeError("Ray is not running: call ray.init(...) before making a pool")
        cpus = ray.cluster_resources().get("CPU", 0)
        if cpus < num_actors:
            raise ValueError(f"{num_actors} rollout actors need {num_actors} CPUs and the Ray "
                             f"cluster has {cpus:g}: start Ray with more CPUs or fewer actors")
        check_env(spec)
        self.spec, self.backend_name = spec, backend
        self._reference = spec.make_actor()  # checks weights before they are published
        self._backend = BACKENDS[backend](spec, num_actors, calls_in_flight)
        self._pids = list(self._backend.pids)
        self._weights_ref: ray.ObjectRef | None = None
        self._version = 0
        self._counts = {"env_steps": 0, "episodes": 0, "calls_finished": 0, "calls_lost": 0,
                        "actor_restarts": 0}
        self._closed = False

    @property
    def policy_version(self) -> int:
        return self._version

    def set_policy(self, weights: dict[str, torch.Tensor], version: int) -> None:
        """Publish the agent's actor state_dict as `version` (greater than the last)."""
        if version <= self._version:
            raise ValueError(f"policy versions must increase: got {version} after "
                             f"{self._version}")
        try:
            self._reference.load_state_dict(weights)
        except RuntimeError as err:
            raise ValueError(f"weights do not fit the spec's {self.spec.agent} actor "
                             f"(hidden {self.spec.hidden}): {str(err).splitlines()[0]}") from err
        cpu = {name: value.detach().cpu() for name, value in weights.items()}
        self._weights_ref = ray.put(self._backend.payload(cpu))
        self._version = version

    def collect(self, admit_calls: int, timeout: float) -> list[EpisodeBlock]:
        """Launch up to `admit_calls` new sample calls (at most `calls_in_flight` per healthy
        actor), then wait up to `timeout` s; returns the blocks of the calls that finished
        (possibly none, at once if none is in flight)."""
        if admit_calls > 0 and self._weights_ref is None:
            raise RuntimeError("no policy published: call set_policy before collect")
        if admit_calls < 0 or timeout < 0:
            raise ValueError(f"admit_calls and timeout must be >= 0, got {admit_calls} "
                             f"and {timeout}")
        self._backend.launch(admit_calls, self._weights_ref, self._version)
        results, lost = self._backend.wait(timeout)
        self._counts["calls_lost"] += lost
        blocks = []
        for block, pid in results:
            if pid != self._pids[block.actor_index]:  # a new process: Ray restarted it
                self._pids[block.actor_index] = pid
                self._counts["actor_restarts"] += 1
            self._counts["env_steps"] += block.env_steps
            self._counts["episodes"] += len(block.episode_ends)
            self._counts["calls_finished"] += 1
            blocks.append(block)
        return blocks

    def stats(self) -> dict[str, int]:
        return {**self._counts, "in_flight": self._backend.in_flight()}

    def actor_pids(self) -> list[int]:
        """Each actor's PID, as it last reported it (at start or with its last block)."""
        return list(self._pids)

    def deterministic_actions(self, observations: np.ndarray) -> list[np.ndarray]:
        """Each healthy actor's deterministic actions for `observations`, in actor order,
        computed inside the actor with the current policy (waits behind its calls in
        flight)."""
        if self._weights_ref is None:
            raise RuntimeError("no policy published: call set_policy first")
        answers = self._backend.deterministic_actions(self._weights_ref, self._version,
                                                      np.asarray(observations, np.float32))
        stale = [index for index, _, version in answers if version != self._version]
        if stale:
            raise RuntimeError(f"actors {stale} did not load policy version {self._version}")
        return [actions for _, actions, _ in sorted(answers, key=lambda answer: answer[0])]

    def close(self) -> None:
        """Stop the actors this pool started."""
        if not self._closed:
            self._closed = True
            self._backend.close()

    def __enter__(self) -> RolloutPool:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()
