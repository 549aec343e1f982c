"""Cal-QL (Nakamoto et al., NeurIPS 2023): CQL on SAC with a calibrated conservative term.

Critic loss, per critic Q_i (CQL(H), Kumar et al. 2020):

    α_cql · ( τ log Σ_k exp(Q̃_i(s, a_k) / τ) − Q_i(s, a) )  +  ( Q_i(s, a) − y )²
    y = r + γ (1 − d) min_j Q̄_j(s', a'),   a' ~ π(·|s')

The a_k are K uniform actions, K actions from π(·|s) and K from π(·|s'), all scored at s and
importance-weighted by their proposal density (CQL, appendix F). Cal-QL's only change: on the
policy actions Q̃ = max(Q, V^μ(s)), with V^μ(s) the Monte-Carlo return-to-go of the data, so
Q-values already below the behaviour policy's value are not pushed down further.
Rows with an unknown return carry -inf, for which the max is the identity.

Actor and temperature are SAC's (Haarnoja et al. 2018):

    L_π = E[ α log π(a|s) − min_j Q_j(s, a) ],  a ~ π(·|s)
    L_α = −E[ log α · (log π(a|s) + H̄) ]

All losses are summed and differentiated once: targets, α in L_π and log π in L_α are
detached, and L_π sees the critics through frozen weights, so each parameter receives exactly
the gradient of its own loss, computed from the same pre-update networks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from edis_core.agents.base import ActorPolicy
from edis_core.agents.networks import (
    QEnsemble,
    TanhGaussianActor,
    adam,
    polyak_update,
    set_observation_statistics,
)
from edis_core.transitions import Batch


@dataclass
class CalQLConfig:
    """Defaults are CORL's Cal-QL (algorithms/finetune/cal_ql.py): its learning rates, α = 10
    offline and online, orthogonal init, log σ offset −1, calibration off online, 50/50
    offline/online batches from the first online step."""

    critic_hidden: tuple[int, ...] = (256, 256)
    """Critic widths; CORL's Cal-QL default (q_n_hidden_layers=2)."""
    actor_hidden: tuple[int, ...] = (256, 256, 256)
    """Actor widths; CORL's Cal-QL tanh-Gaussian policy."""
    n_critics: int = 2
    critic_bf16: bool = False
    """bfloat16 matmuls in the critics' hidden layers (networks.StackedMLP): ~2× faster updates
    on CPUs with AMX, far slower on CPUs without bfloat16 units (edis_core/precision.py); its
    logged losses stay within 2% of float32's (tests/test_agents.py)."""
    orthogonal_init: bool = True
    """Every layer of the critics and the actor orthogonal (gain √2), biases 0; False:
    nn.Linear's uniform initialisation."""
    log_std_offset: float = -1.0
    """Where the actor's log σ starts (added to the log-σ head's bias at initialisation)."""
    gamma: float = 0.99
    target_update_rate: float = 0.005
    critic_lr: float = 3e-4
    actor_lr: float = 3e-5
    alpha_lr: float = 3e-5
    """Learning rate of log α (SAC temperature) and of the CQL Lagrange multiplier."""
    autotune_alpha: bool = True
    init_alpha: float = 1.0
    """SAC temperature at the start (kept fixed when autotune_alpha is off)."""
    target_entropy: float | None = None
    """H̄ of the temperature loss; None means −act_dim."""
    cql_n_actions: int = 10
    """K: actions drawn per source (uniform, π(·|s), π(·|s')) for the log-sum-exp."""
    cql_alpha: float = 10.0
    """Weight of the conservative term offline."""
    cql_alpha_online: float = 10.0
    cql_temperature: float = 1.0
    cql_importance_sample: bool = True
    cql_lagrange: bool = False
    """Tune the conservative weight by dual descent so that the gap stays near the target."""
    cql_target_action_gap: float = 5.0
    """Target of the conservative gap when cql_lagrange is on (CQL's τ)."""
    calibrate_offline: bool = True
    calibrate_online: bool = False
    """Keep the Monte-Carlo floor online (rows whose return is not known yet carry -inf);
    CORL switches it off when fine-tuning starts."""
    online_batch: Literal["uniform", "fixed"] = "fixed"
    """How online batches draw on offline and online replay (training/mixing.py): a fixed
    share `offline_ratio` offline, as CORL fine-tunes Cal-QL."""
    reward_scale: float = 1.0
    reward_bias: float = 0.0
    """r ← reward_scale·r + reward_bias inside the update; mc_returns must already be in these
    units (compute them from the transformed rewards)."""

    online_only: ClassVar[tuple[str, ...]] = ("cql_alpha_online", "calibrate_online",
                                              "online_batch")
    """Fields that only act in the online phase: runs that differ in them can share one
    offline pre-training (`offline_from`)."""

    def __post_init__(self) -> None:
        self.critic_hidden, self.actor_hidden = tuple(self.critic_hidden), tuple(self.actor_hidden)
        for name in ("critic_hidden", "actor_hidden"):
            widths = getattr(self, name)
            if not widths or any(w < 1 for w in widths):
                raise ValueError(f"calql.{name} must be a non-empty list of widths >= 1, "
                                 f"got {widths}")
        if self.n_critics < 1:
            raise ValueError(f"calql.n_critics must be >= 1, got {self.n_critics}")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"calql.gamma must be in (0, 1], got {self.gamma}")
        if not 0.0 < self.target_update_rate <= 1.0:
            raise ValueError(f"calql.target_update_rate must be in (0, 1], "
                             f"got {self.target_update_rate}")
        for name in ("critic_lr", "actor_lr", "alpha_lr", "init_alpha", "cql_temperature"):
            if getattr(self, name) <= 0.0:
                raise ValueError(f"calql.{name} must be > 0, got {getattr(self, name)}")
        if self.cql_n_actions < 1:
            raise ValueError(f"calql.cql_n_actions must be >= 1, got {self.cql_n_actions}")
        for name in ("cql_alpha", "cql_alpha_online"):
            if getattr(self, name) < 0.0:
                raise ValueError(f"calql.{name} must be >= 0, got {getattr(self, name)}")
        if self.reward_scale == 0.0:
            raise ValueError("calql.reward_scale must be non-zero")
        if self.online_batch not in ("uniform", "fixed"):
            raise ValueError(f"calql.online_batch must be 'uniform' or 'fixed', "
                             f"got {self.online_batch!r}")


def calibrated_cql_gap(q_data: torch.Tensor, q_random: torch.Tensor, q_current: torch.Tensor,
                       q_next: torch.Tensor, logp_current: torch.Tensor,
                       logp_next: torch.Tensor, lower_bound: torch.Tensor | None, act_dim: int,
                       temperature: float = 1.0,
                       importance_sample: bool = True) -> torch.Tensor:
    """τ·logsumexp(Q̃/τ) − Q(s, a), averaged over the batch: one value per critic, shape (E,).

    q_data: (E, B) at the data actions; q_random, q_current, q_next: (E, B, K) at uniform
    actions and at actions from π(·|s) and π(·|s'); logp_*: (B, K) their log-densities under
    the policy that drew them; lower_bound: (B,) Monte-Carlo returns (-inf where unknown), or
    None to leave the policy actions' Q-values uncalibrated.
    """
    if lower_bound is not None:                                   # Cal-QL: max(Q, V^μ(s))
        floor = lower_bound.view(1, -1, 1)
        q_current, q_next = torch.maximum(q_current, floor), torch.maximum(q_next, floor)
    if importance_sample:
        log_uniform = -act_dim * math.log(2.0)                    # U([-1, 1]^A)
        candidates = [q_random - log_uniform, q_next - logp_next, q_current - logp_current]
    else:
        candidates = [q_random, q_data.unsqueeze(-1), q_next, q_current]
    soft_max = torch.logsumexp(torch.cat(candidates, dim=-1) / temperature, dim=-1) * temperature
    return (soft_max - q_data).mean(-1)


class CalQLAgent(ActorPolicy):
    """SAC actor and temperature, twin critics with the calibrated CQL regulariser."""

    def __init__(self, config: CalQLConfig, obs_dim: int, act_dim: int,
                 device: str | torch.device = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        self.act_dim = act_dim
        self.target_entropy = (-float(act_dim) if config.target_entropy is None
                               else config.target_entropy)
        self.critic = QEnsemble(obs_dim, act_dim, config.critic_hidden, config.n_critics,
                                config.critic_bf16).to(self.device)
        if config.orthogonal_init:
            self.critic.net.orthogonal_()
        self.critic_target = QEnsemble(obs_dim, act_dim, config.critic_hidden, config.n_critics,
                                       config.critic_bf16)
        self.critic_target.to(self.device).load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self.actor = TanhGaussianActor(obs_dim, act_dim, config.actor_hidden,
                                       config.orthogonal_init,
                                       config.log_std_offset).to(self.device)
        self.log_alpha = torch.nn.Parameter(
            torch.tensor(math.log(config.init_alpha), device=self.device),
            requires_grad=config.autotune_alpha)
        self.log_cql_alpha_prime = torch.nn.Parameter(torch.zeros((), device=self.device),
                                                      requires_grad=config.cql_lagrange)
        groups = [{"params": self.critic.parameters(), "lr": config.critic_lr},
                  {"params": self.actor.parameters(), "lr": config.actor_lr}]
        groups += [{"params": [p], "lr": config.alpha_lr}
                   for p in (self.log_alpha, self.log_cql_alpha_prime) if p.requires_grad]
        self.optimizer = adam(groups, self.device)
        self.steps = 0
        self.online = False

    @property
    def cql_alpha(self) -> float:
        return self.config.cql_alpha_online if self.online else self.config.cql_alpha

    @property
    def calibrate(self) -> bool:
        return self.config.calibrate_online if self.online else self.config.calibrate_offline

    def update(self, batch: Batch) -> dict[str, float]:
        cfg = self.config
        obs, actions, next_obs = batch.observations, batch.actions, batch.next_observations
        k = cfg.cql_n_actions
        rewards = cfg.reward_scale * batch.rewards + cfg.reward_bias

        mean, log_std = self.actor(obs)
        pi_action, pi_logp = self.actor.rsample(mean, log_std)
        with torch.no_grad():
            next_mean, next_log_std = self.actor(next_obs)
            next_action, _ = self.actor.rsample(next_mean, next_log_std)
            target_q = self.critic_target(next_obs, next_action).min(0).values
            td_target = rewards + cfg.gamma * (1.0 - batch.terminals) * target_q
            # K draws per state share the one actor evaluation above.
            current_actions, logp_current = self.actor.rsample(mean.detach(), log_std.detach(), k)
            next_actions, logp_next = self.actor.rsample(next_mean, next_log_std, k)
            random_actions = torch.empty_like(current_actions).uniform_(-1.0, 1.0)

        # The data action and all 3K conservative-term actions, scored at s in one forward.
        scored = torch.cat([actions.unsqueeze(1), random_actions, current_actions, next_actions],
                           dim=1)
        q = self.critic(obs.unsqueeze(1), scored)                              # (E, B, 1 + 3K)
        q_data, q_random, q_current, q_next = q.split([1, k, k, k], dim=2)
        q_data = q_data.squeeze(2)
        td_loss = (q_data - td_target).square().mean(1)                        # (E,)
        lower_bound = batch.mc_returns if self.calibrate else None
        gap = calibrated_cql_gap(q_data, q_random, q_current, q_next, logp_current, logp_next,
                                 lower_bound, self.act_dim, cfg.cql_temperature,
                                 cfg.cql_importance_sample)
        if cfg.cql_lagrange:
            # Dual ascent on α' ≥ 0: it grows while the gap exceeds its target (CQL-Lagrange).
            alpha_prime = self.log_cql_alpha_prime.exp().clamp(max=1e6)
            excess = gap - cfg.cql_target_action_gap
            cql_loss = alpha_prime.detach() * self.cql_alpha * excess
            alpha_prime_loss = -(alpha_prime * self.cql_alpha * excess.detach()).mean()
            cql_weight = alpha_prime.detach() * self.cql_alpha
        else:
            cql_loss = self.cql_alpha * gap
            cql_weight = torch.full((), self.cql_alpha, device=self.device)
            alpha_prime_loss = torch.zeros((), device=self.device)
        critic_loss = (td_loss + cql_loss).sum()

        alpha = self.log_alpha.exp()
        q_pi = self.critic(obs, pi_action, frozen=True).min(0).values
        actor_loss = (alpha.detach() * pi_logp - q_pi).mean()
        alpha_loss = -(self.log_alpha * (pi_logp.detach() + self.target_entropy)).mean()

        self.optimizer.zero_grad()
        (critic_loss + actor_loss + alpha_loss + alpha_prime_loss).backward()
        self.optimizer.step()
        polyak_update(self.critic_target, self.critic, cfg.target_update_rate)
        self.steps += 1

        logs = torch.stack([td_loss.mean(), gap.mean(), critic_loss, actor_loss, alpha,
                            alpha_loss, cql_weight, q_data.mean(), q_random.mean(),
                            q_current.mean(), target_q.mean(), -pi_logp.mean()]).tolist()
        return dict(zip(("td_loss", "cql_gap", "critic_loss", "actor_loss", "alpha",
                         "alpha_loss", "cql_weight", "q_data", "q_random", "q_policy",
                         "q_target", "entropy"), logs, strict=True))

    def start_online(self) -> None:
        """Switch to the online conservative weight and calibration setting."""
        self.online = True

    def set_normalization(self, obs_mean: torch.Tensor, obs_std: torch.Tensor,
                          reward_scale: float) -> None:
        if reward_scale != 1.0:
            raise ValueError("Cal-QL keeps raw rewards: its Monte-Carlo floor V^μ is computed "
                             f"from the data's raw rewards (got reward_scale={reward_scale})")
        set_observation_statistics([self.critic, self.critic_target, self.actor],
                                   obs_mean, obs_std)

    def state_dict(self) -> dict[str, Any]:
        return {"critic": self.critic.state_dict(),
                "critic_target": self.critic_target.state_dict(),
                "actor": self.actor.state_dict(),
                "log_alpha": self.log_alpha.detach().clone(),
                "log_cql_alpha_prime": self.log_cql_alpha_prime.detach().clone(),
                "optimizer": self.optimizer.state_dict(),
                "steps": self.steps,
                "online": self.online}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        self.actor.load_state_dict(state["actor"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
            self.log_cql_alpha_prime.copy_(state["log_cql_alpha_prime"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = int(state["steps"])
        self.online = bool(state["online"])
