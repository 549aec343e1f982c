"""Training the energies (docs/algorithm.md §5): who the positives and negatives are, at
which σ they are compared, and the InfoNCE loop.

Every refresh, `contrastive_sets` draws clean positives and negatives of each energy from the
prior, the policy and the learner's data, and `EnergyTraining.train` runs InfoNCE on them.
At every step a few noise levels are drawn from the σ at which the guided sampler evaluates
guidance, and positives and negatives alike are noised to them with fresh ε. Both sides are
then draws from μ_σ and ν_σ, the Gaussian noisings of §4, so the minimiser at every level is
the noised log-ratio −log μ_σ/ν_σ + C that the guided score needs.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from edis_core.diffusion.edm import Inpaint
from edis_core.diffusion.layout import TransitionLayout
from edis_core.diffusion.prior import DiffusionPrior
from edis_core.energy.infonce import contrastive_loss
from edis_core.energy.networks import EnergyNet

Policy = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class ContrastiveSet:
    """One energy's clean training rows, normalised x: positives (R, D) ~ μ, negatives
    (M, D) ~ ν. They are noised afresh at every draw."""

    positives: torch.Tensor
    negatives: torch.Tensor


def conditional_passes(names: Iterable[str]) -> tuple[int, int]:
    """Sampling passes of `contrastive_sets` for these energies: (unconditional, given (s, a))."""
    names = set(names)
    unconditional = int(bool(names & {"state", "policy"}))
    return unconditional, unconditional + int("state" in names) + int("transition" in names)


def contrastive_sets(
    prior: DiffusionPrior,
    layout: TransitionLayout,
    names: Iterable[str],
    positives: torch.Tensor,
    real: torch.Tensor,
    policy: Policy,
    rows: int,
    generator: torch.Generator,
) -> dict[str, ContrastiveSet]:
    """Positives and negatives of the energies `names` (§5 table), `rows` of each.

    positives: the positive buffer (≈ d^π), real: replay rows (true dynamics), both
    normalised x; policy: raw observations -> raw actions a ~ π(·|s). With

        x_p ~ p_θ                                         (prior samples)
        x_π = (s_p, a ~ π(·|s_p), (r, s', done) ~ p_θ(·|s_p, a))
        x_s = (s ~ positive buffer, a ~ π(·|s), (r, s', done) ~ p_θ(·|s, a))

    E_π contrasts x_π with x_p and E_s contrasts x_s with x_π: each pair differs in one
    factor only (π(a|s) for p_θ(a|s); d^π(s) for p_θ(s)), so the clean ratios are those of
    Theorem 3.1, and the noised energies telescope: E_π,σ + E_s,σ = −log μ_σ/p_σ for
    μ = d^π(s)·π(a|s)·p_θ(r, s', done | s, a), the exact noised energy of that product.
    E_T contrasts real rows with the same (s, a) and (r, s', done) ~ p_θ(·|s, a): clean
    ratio T/p_θ(r, s', done | s, a); its noised form is that of the tilt on the replay's
    (s, a), not on μ's, so E_T's guidance is approximate (it is off by default).
    (r, s', done) ~ p_θ(·|s, a) is the prior's learned conditional, all in one pass.
    """
    names = set(names)
    if not names:
        return {}
    device = positives.device
    state_action = layout.mask("state_action", device=device)
    given: list[torch.Tensor] = []
    if names & {"state", "policy"}:
        prior_rows = prior.sample(rows).x
        given.append(_with_policy_actions(prior_rows, layout, prior, policy))
        if "state" in names:
            buffer_rows = positives[_pick(len(positives), rows, generator)]
            given.append(_with_policy_actions(buffer_rows, layout, prior, policy))
    if "transition" in names:
        real_rows = real[_pick(len(real), rows, generator)]
        given.append(real_rows)
    completed = prior.sample(
        rows * len(given), inpaint=Inpaint(torch.cat(given), state_action)
    ).x.split(rows)
    sets = {}
    if "policy" in names:
        sets["policy"] = ContrastiveSet(completed[0], prior_rows)
    if "state" in names:
        sets["state"] = ContrastiveSet(completed[1], completed[0])
    if "transition" in names:
        sets["transition"] = ContrastiveSet(real_rows, completed[-1])
    return sets


def _pick(available: int, rows: int, generator: torch.Generator) -> torch.Tensor:
    """`rows` distinct indices when there are enough, else with repetition."""
    if available >= rows:
        return torch.randperm(available, generator=generator, device=generator.device)[:rows]
    return torch.randint(available, (rows,), generator=generator, device=generator.device)


@torch.no_grad()
def _with_policy_actions(
    x: torch.Tensor, layout: TransitionLayout, prior: DiffusionPrior, policy: Policy
) -> torch.Tensor:
    """x with a ~ π(·|s) in the action slot (the policy works in raw units)."""
    norm = prior.normalizer
    s, a = layout.state, layout.action
    raw_states = x[:, s] * norm.std[s] + norm.mean[s]
    actions = policy(raw_states).to(x.device, torch.float32)
    out = x.clone()
    out[:, a] = (actions - norm.mean[a]) / norm.std[a]
    return out


class EnergyTraining:
    """InfoNCE for a set of energies, each with its Adam optimiser.

    A step draws L = min(levels_per_step, groups) levels from `levels` (the σ at which the
    sampler evaluates guidance, with their multiplicity: every evaluation weighs alike); at
    each, groups // L positives share `negatives` negatives (see contrastive_loss).
    levels_per_step None: every group at its own level with its own negatives (energies
    saved before the option existed).

    Every `train` call (one refresh) starts the nets and optimisers afresh, so the energies
    are those of this refresh's data (the current policy, the current buffer) and nothing
    else: warm-started over the 8 refreshes of the Hopper demo they kept sharpening, and the
    guided next-state error rose to 1.05-1.53x the unguided one (fresh: 0.92-1.20x,
    docs/diagnostics.md). The learning rate decays from `lr` to 0 over the call (cosine), so each
    refresh ends on a settled iterate.
    """

    def __init__(
        self,
        nets: dict[str, EnergyNet],
        dims: dict[str, slice],
        *,
        lr: float,
        groups: int,
        negatives: int,
        levels_per_step: int | None,
        generator: torch.Generator,
    ):
        self.nets, self.dims = nets, dims
        self.lr, self.groups, self.negatives = lr, groups, negatives
        self.levels_per_step = min(levels_per_step or groups, groups)
        self.generator = generator
        self.initial = {name: copy.deepcopy(net.state_dict()) for name, net in nets.items()}
        self.optimizers = self._fresh_optimizers()

    def _fresh_optimizers(self) -> dict[str, torch.optim.Adam]:
        return {name: torch.optim.Adam(net.parameters(), lr=self.lr)
                for name, net in self.nets.items()}

    def train(
        self, sets: dict[str, ContrastiveSet], levels: torch.Tensor, steps: int,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, float]:
        """`steps` InfoNCE steps per energy from fresh nets; mean loss and accuracy of the
        last 50 steps. `progress(step)` is called before each step (it may raise to stop)."""
        for name, net in self.nets.items():
            net.load_state_dict(self.initial[name])
        self.optimizers = self._fresh_optimizers()
        history: dict[str, list[tuple[float, float]]] = {name: [] for name in self.nets}
        for step in range(steps):
            if progress is not None:
                progress(step)
            lr = 0.5 * self.lr * (1.0 + math.cos(math.pi * step / steps))
            for name, net in self.nets.items():
                loss, accuracy = self.loss(net, sets[name], self.dims[name], levels)
                optimizer = self.optimizers[name]
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                history[name].append((loss.item(), accuracy.item()))
        metrics: dict[str, float] = {}
        for name, values in history.items():
            tail = np.array(values[-50:]) if values else np.full((1, 2), np.nan)
            metrics[f"{name}_loss"], metrics[f"{name}_accuracy"] = tail.mean(0).tolist()
        return metrics

    def loss(
        self, net: EnergyNet, data: ContrastiveSet, dims: slice, levels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """InfoNCE on one draw: L levels, and at each P positives and K negatives noised to
        it with fresh ε, the same for both sides."""
        n_levels, k = self.levels_per_step, self.negatives
        per_level = self.groups // n_levels
        sigma = levels[self._draw(len(levels), (n_levels,))]
        positives = self._noised(data.positives, (n_levels, per_level), sigma)
        negatives = self._noised(data.negatives, (n_levels, k), sigma)
        return contrastive_loss(net, positives[..., dims], negatives[..., dims], sigma)

    def _noised(self, clean: torch.Tensor, shape: tuple[int, int], sigma: torch.Tensor):
        rows = clean[self._draw(len(clean), shape)]
        noise = torch.randn(rows.shape, device=rows.device, generator=self.generator)
        return rows + sigma[:, None, None] * noise

    def _draw(self, high: int, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randint(high, shape, device=self.generator.device, generator=self.generator)

    def state_dict(self) -> dict[str, dict]:
        return {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()}

    def load_state_dict(self, state: dict[str, dict]) -> None:
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state[name])
