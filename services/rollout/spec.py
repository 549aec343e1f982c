"""What a rollout actor needs to know to act: the env, the policy network's shape, the seed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from edis_core.agents import make_actor

AGENT_KINDS = ("iql", "calql")


@dataclass(frozen=True)
class RolloutSpec:
    env_id: str
    agent: str
    """"iql" | "calql": which actor network (the agent's `actor`)."""
    hidden: tuple[int, ...]
    """The actor's hidden widths (`edis_core.agents.actor_hidden(config)`)."""
    obs_dim: int
    act_dim: int
    seed: int
    """Actor i seeds its env and its exploration noise with `actor_seed(i)`."""
    steps_per_call: int = 1000
    """A sample call runs at least this many env steps, then finishes its current episode:
    it returns whole episodes only."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(w) for w in self.hidden))
        if self.agent not in AGENT_KINDS:
            raise ValueError(f"unknown agent {self.agent!r}; valid names: {list(AGENT_KINDS)}")
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden must be a non-empty list of widths >= 1, got {self.hidden}")
        for name in ("obs_dim", "act_dim", "steps_per_call"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def actor_seed(self, index: int) -> int:
        """A seed of its own for actor `index`, independent of the others'."""
        return int(np.random.SeedSequence([self.seed, index]).generate_state(1)[0])

    def make_actor(self) -> nn.Module:
        """The policy network, frozen: actors only act."""
        return make_actor(self.agent, self.obs_dim, self.act_dim, self.hidden).requires_grad_(False)
