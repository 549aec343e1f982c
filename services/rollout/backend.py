"""What the pool asks of a set of rollout actors, whichever runs them."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import ray
import torch

from services.rollout.episodes import EpisodeBlock


class Backend(Protocol):
    pids: list[int]
    """The PID each actor reported at start (the pool updates them from later calls)."""

    @staticmethod
    def payload(weights: dict[str, torch.Tensor]) -> Any:
        """What the one `ray.put` of a policy version holds."""
        ...

    def launch(self, count: int, weights_ref: ray.ObjectRef, version: int) -> int:
        """Start up to `count` sample calls, each carrying the current weights, none past
        the in-flight cap of a healthy actor; returns how many started."""
        ...

    def wait(self, timeout: float) -> tuple[list[tuple[EpisodeBlock, int]], int]:
        """Wait up to `timeout` s for a call to finish; returns the (block, actor PID) of
        every finished call and the number of calls lost with a dead actor."""
        ...

    def in_flight(self) -> int: ...

    def deterministic_actions(self, weights_ref: ray.ObjectRef, version: int,
                              observations: np.ndarray) -> list[tuple[int, np.ndarray, int]]:
        """(actor index, actions, version acted with) of every healthy actor."""
        ...

    def close(self) -> None: ...


def least_loaded(candidates: list[int], in_flight: list[int], cap: int, count: int) -> list[int]:
    """Targets for up to `count` calls among the actors `candidates`: each call to the least
    loaded one, none past `cap` calls in flight."""
    load = {index: in_flight[index] for index in candidates}
    targets: list[int] = []
    while load and len(targets) < count:
        index = min(load, key=load.__getitem__)
        if load[index] >= cap:
            break
        targets.append(index)
        load[index] += 1
    return targets
