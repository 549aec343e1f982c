"""The guidance hook of the sampler: g(x, σ) = Σ_k w_k ∇_x E_k(x[:, dims_k], σ)
(docs/algorithm.md §6)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from edis_core.energy.networks import EnergyNet


@dataclass
class EnergyTerm:
    """One energy, the dims of x it reads, and its guidance scale (0 or None: off)."""

    net: EnergyNet
    dims: slice
    weight: float | None


class EnergyGuidance:
    """Computes g so that the sampler uses D̃ = D_θ − σ² g, all in normalised coordinates.

    `max_norm` bounds ‖σ·g‖ per sample: σ·g is what guidance adds to the probability-flow
    velocity dx/dσ = (x − D̃)/σ, whose unguided size is about ‖ε‖ ≈ √D. Clipping guards
    against energy gradients that are large where the energy has seen no data.

    Guidance acts for σ in [sigma_min, sigma_max] only (a guidance interval): below
    sigma_min the prior alone finishes denoising. The test is per denoiser evaluation (Heun's
    corrector at σ_{i+1} and a churned σ̂ included), so guidance fades out over the one step
    that crosses each bound.

    `known` (a (D,) bool mask) is for the conditional sampler, which holds those dims clean:
    the energies were trained on inputs whose known dims are forward-noised to σ, so they
    are read that way here (fresh ε from `generator`), and get no gradient.

    `observer`, when given, is called with the mean per-row ‖σ·g‖ of every evaluation where
    guidance acts (the sampler service's metrics); it costs one host sync per evaluation.
    """

    def __init__(
        self,
        terms: Sequence[EnergyTerm],
        max_norm: float | None = None,
        sigma_max: float = float("inf"),
        known: torch.Tensor | None = None,
        sigma_min: float = 0.0,
        generator: torch.Generator | None = None,
        observer: Callable[[float], None] | None = None,
    ):
        if max_norm is not None and max_norm <= 0:
            raise ValueError(f"max_norm must be > 0 or None, got {max_norm}")
        self.terms = [t for t in terms if t.weight]
        self.max_norm = max_norm
        if not 0 <= sigma_min < sigma_max:
            raise ValueError(f"need 0 <= sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.known = known
        self.generator = generator
        self.observer = observer

    @property
    def active(self) -> bool:
        return bool(self.terms)

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        if not self.terms or not self.sigma_min <= sigma <= self.sigma_max:
            return torch.zeros_like(x)
        if self.known is not None:
            noise = torch.randn(x.shape, device=x.device, generator=self.generator)
            x = torch.where(self.known, x + sigma * noise, x)
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            total = sum(t.weight * t.net(x[:, t.dims], sigma).sum() for t in self.terms)
            (grad,) = torch.autograd.grad(total, x)
        if self.known is not None:
            grad = grad.masked_fill(self.known, 0.0)
        if self.max_norm is not None:
            norm = grad.norm(dim=1, keepdim=True) * sigma
            grad = grad * (self.max_norm / norm.clamp_min(self.max_norm))
        if self.observer is not None:
            self.observer(float((grad.norm(dim=1) * sigma).mean()))
        return grad
