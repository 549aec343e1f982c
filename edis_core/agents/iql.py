"""Implicit Q-Learning (Kostrikov, Nachum & Levine, ICLR 2022), offline and online alike.

    L_V(ψ) = E[ L₂^τ( min_i Q̄_i(s, a) − V_ψ(s) ) ],   L₂^τ(u) = |τ − 1(u < 0)| u²       (eq. 5)
    L_Q(θ) = E[ ( r + γ (1 − d) V_ψ(s') − Q_θ(s, a) )² ]                                  (eq. 6)
    L_π(φ) = −E[ exp(β (min_i Q̄_i(s, a) − V_ψ(s))) log π_φ(a|s) ]                        (eq. 7)

Q̄ is the Polyak-averaged target critic. The three losses touch disjoint parameters (every
target is detached), so one backward of their sum and one Adam step over three parameter groups
give exactly the gradients of three separate updates made from the same pre-update networks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from edis_core.agents.base import ActorPolicy
from edis_core.agents.networks import (
    GaussianActor,
    QEnsemble,
    ValueNet,
    adam,
    polyak_update,
    set_observation_statistics,
)
from edis_core.transitions import Batch


@dataclass
class IQLConfig:
    hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of the critics, the value net and the actor."""
    n_critics: int = 2
    gamma: float = 0.99
    expectile: float = 0.7
    """τ of the expectile value loss (eq. 5)."""
    beta: float = 3.0
    """Inverse temperature of the advantage weights (eq. 7)."""
    exp_adv_max: float = 100.0
    """Clip of exp(β·A), for numerical stability."""
    target_update_rate: float = 0.005
    """Polyak rate of the target critics."""
    critic_lr: float = 3e-4
    value_lr: float = 3e-4
    actor_lr: float = 3e-4
    actor_lr_cosine_steps: int = 0
    """T of the actor's cosine schedule as CORL steps it (CosineAnnealingLR, T_max = its
    offline updates): actor_lr·(1 + cos(πk/T))/2 at update k, offline and online alike, so
    past T it rises again. 0: the constant actor_lr."""
    online_actor_lr: float | None = None
    """A constant actor learning rate for the online phase instead; None: the offline rule
    goes on."""
    online_batch: Literal["uniform", "fixed"] = "uniform"
    """How online batches draw on offline and online replay (training/mixing.py): uniformly
    from their union, as CORL fine-tunes IQL."""
    exploration_noise: float | None = None
    """Online, act with the policy's mean plus N(0, this²) noise (CORL's deterministic IQL
    explores with 0.03) instead of sampling the learned σ; None: sample it, as CORL's
    default IQL does."""

    online_only: ClassVar[tuple[str, ...]] = ("online_actor_lr", "online_batch",
                                              "exploration_noise")
    """Fields that only act in the online phase: runs that differ in them can share one
    offline pre-training (`offline_from`)."""

    def __post_init__(self) -> None:
        self.hidden = tuple(self.hidden)
        if not self.hidden or any(w < 1 for w in self.hidden):
            raise ValueError(f"iql.hidden must be a non-empty list of widths >= 1, "
                             f"got {self.hidden}")
        if self.n_critics < 1:
            raise ValueError(f"iql.n_critics must be >= 1, got {self.n_critics}")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"iql.gamma must be in (0, 1], got {self.gamma}")
        if not 0.0 < self.expectile < 1.0:
            raise ValueError(f"iql.expectile must be in (0, 1), got {self.expectile}")
        if self.beta < 0.0:
            raise ValueError(f"iql.beta must be >= 0, got {self.beta}")
        if self.exp_adv_max <= 0.0:
            raise ValueError(f"iql.exp_adv_max must be > 0, got {self.exp_adv_max}")
        if not 0.0 < self.target_update_rate <= 1.0:
            raise ValueError(f"iql.target_update_rate must be in (0, 1], "
                             f"got {self.target_update_rate}")
        for name in ("critic_lr", "value_lr", "actor_lr"):
            if getattr(self, name) <= 0.0:
                raise ValueError(f"iql.{name} must be > 0, got {getattr(self, name)}")
        if self.actor_lr_cosine_steps < 0:
            raise ValueError(f"iql.actor_lr_cosine_steps must be >= 0, "
                             f"got {self.actor_lr_cosine_steps}")
        if self.online_actor_lr is not None and not self.online_actor_lr > 0.0:
            raise ValueError(f"iql.online_actor_lr must be > 0 or null, "
                             f"got {self.online_actor_lr}")
        if self.online_batch not in ("uniform", "fixed"):
            raise ValueError(f"iql.online_batch must be 'uniform' or 'fixed', "
                             f"got {self.online_batch!r}")
        if self.exploration_noise is not None and not self.exploration_noise >= 0.0:
            raise ValueError(f"iql.exploration_noise must be >= 0 or null, "
                             f"got {self.exploration_noise}")


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """L₂^τ(u) = |τ − 1(u < 0)| u², elementwise (IQL eq. 5); τ = 0.5 gives u²/2."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return weight * diff.square()


class IQLAgent(ActorPolicy):
    """IQL with twin target critics, an expectile value net and an advantage-weighted actor."""

    def __init__(self, config: IQLConfig, obs_dim: int, act_dim: int,
                 device: str | torch.device = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        self.critic = QEnsemble(obs_dim, act_dim, config.hidden, config.n_critics).to(self.device)
        self.critic_target = QEnsemble(obs_dim, act_dim, config.hidden, config.n_critics)
        self.critic_target.to(self.device).load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self.value = ValueNet(obs_dim, config.hidden).to(self.device)
        self.actor = GaussianActor(obs_dim, act_dim, config.hidden).to(self.device)
        self.optimizer = adam([
            {"params": self.critic.parameters(), "lr": config.critic_lr},
            {"params": self.value.parameters(), "lr": config.value_lr},
            {"params": self.actor.parameters(), "lr": config.actor_lr},
        ], self.device)
        self.steps = 0
        self.reward_scale = 1.0
        self.online = False

    def _actor_lr(self) -> float:
        cfg = self.config
        if self.online and cfg.online_actor_lr is not None:
            return cfg.online_actor_lr
        if cfg.actor_lr_cosine_steps == 0:
            return cfg.actor_lr
        return cfg.actor_lr * 0.5 * (1.0 + math.cos(math.pi * self.steps
                                                     / cfg.actor_lr_cosine_steps))

    def update(self, batch: Batch) -> dict[str, float]:
        cfg = self.config
        obs, actions = batch.observations, batch.actions
        with torch.no_grad():
            target_q = self.critic_target(obs, actions).min(0).values
            next_v = self.value(batch.next_observations)
            rewards = self.reward_scale * batch.rewards
            td_target = rewards + cfg.gamma * (1.0 - batch.terminals) * next_v

        v = self.value(obs)
        advantage = target_q - v
        value_loss = expectile_loss(advantage, cfg.expectile).mean()                  # eq. 5

        q = self.critic(obs, actions)
        critic_loss = (q - td_target).square().mean()                               # eq. 6

        weights = torch.exp(cfg.beta * advantage.detach()).clamp(max=cfg.exp_adv_max)
        actor_loss = -(weights * self.actor.log_prob(obs, actions)).mean()           # eq. 7

        self.optimizer.param_groups[2]["lr"] = self._actor_lr()
        self.optimizer.zero_grad()
        (value_loss + critic_loss + actor_loss).backward()
        self.optimizer.step()
        polyak_update(self.critic_target, self.critic, cfg.target_update_rate)
        self.steps += 1

        # One host transfer for every logged scalar.
        logs = torch.stack([value_loss, critic_loss, actor_loss, q.mean(), v.mean(),
                            advantage.mean(), weights.mean()]).tolist()
        return dict(zip(("value_loss", "critic_loss", "actor_loss", "q_mean", "v_mean",
                         "advantage_mean", "weight_mean"), logs, strict=True))

    def start_online(self) -> None:
        """IQL fine-tunes online with its offline objective unchanged; only the actor's
        learning rate and the way it explores may follow their own online rules."""
        self.online = True
        if self.config.exploration_noise is not None:
            self.actor.exploration_std.fill_(self.config.exploration_noise)

    def set_normalization(self, obs_mean: torch.Tensor, obs_std: torch.Tensor,
                          reward_scale: float) -> None:
        set_observation_statistics([self.critic, self.critic_target, self.value, self.actor],
                                   obs_mean, obs_std)
        self.reward_scale = float(reward_scale)

    def state_dict(self) -> dict[str, Any]:
        return {"critic": self.critic.state_dict(),
                "critic_target": self.critic_target.state_dict(),
                "value": self.value.state_dict(),
                "actor": self.actor.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "steps": self.steps,
                "online": self.online,
                "reward_scale": self.reward_scale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        self.value.load_state_dict(state["value"])
        self.actor.load_state_dict(state["actor"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = int(state["steps"])
        self.online = bool(state["online"])
        self.reward_scale = float(state["reward_scale"])
