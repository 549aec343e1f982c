"""EDM (Karras et al. 2022): preconditioning, training noise, step schedule and the Heun sampler.

Everything here works on normalised vectors x of shape (B, D). The sampler takes a plain
callable `denoise(x, σ) -> D(x; σ)` and an optional `guidance(x, σ) -> g` whose result
enters as D̃ = D − σ² g (docs/algorithm.md §6, g = Σ_k w_k ∇_x E_k), so one sampler serves the
unguided prior, energy-guided sampling and inpainting.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

Denoise = Callable[[torch.Tensor, float], torch.Tensor]
Guidance = Callable[[torch.Tensor, float], torch.Tensor]


def preconditioning(sigma: torch.Tensor | float, sigma_data: float) -> tuple:
    """c_skip, c_out, c_in, c_noise of EDM Table 1 (c_noise = ln(σ)/4); floats for a float σ
    (one level for the whole batch: no tensor ops), tensors for a tensor σ."""
    sd2 = sigma_data**2
    if isinstance(sigma, torch.Tensor):
        root = (sigma.square() + sd2).sqrt()
        return sd2 / root.square(), sigma * sigma_data / root, 1 / root, sigma.log() / 4
    root = math.sqrt(sigma * sigma + sd2)
    return sd2 / (root * root), sigma * sigma_data / root, 1 / root, math.log(sigma) / 4


def training_sigmas(
    n: int,
    p_mean: float,
    p_std: float,
    *,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """σ ~ LogNormal(P_mean, P_std): ln σ = P_mean + P_std·n, n ~ N(0, 1)."""
    normal = torch.randn(n, device=device, generator=generator)
    return (p_mean + p_std * normal).exp()


def loss_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """λ(σ) = (σ² + σ_d²) / (σ σ_d)², which makes the effective target of F unit-variance."""
    return (sigma.square() + sigma_data**2) / (sigma * sigma_data).square()


def karras_sigmas(
    steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0
) -> torch.Tensor:
    """σ_0 = σ_max > ... > σ_{N-1} = σ_min (EDM eq. 5), followed by σ_N = 0: N + 1 values."""
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    inv_rho = 1.0 / rho
    sigmas = (sigma_max**inv_rho + ramp * (sigma_min**inv_rho - sigma_max**inv_rho)) ** rho
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


@dataclass(frozen=True)
class Churn:
    """Stochastic sampler settings (EDM Algorithm 2); S_churn = 0 gives the deterministic ODE."""

    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = float("inf")
    s_noise: float = 1.0

    def gamma(self, sigma: float, steps: int) -> float:
        if self.s_churn > 0 and self.s_tmin <= sigma <= self.s_tmax:
            return min(self.s_churn / steps, math.sqrt(2.0) - 1.0)
        return 0.0


def evaluation_sigmas(sigmas: torch.Tensor, churn: Churn = Churn()) -> torch.Tensor:
    """The σ at which `heun_sample` evaluates the denoiser, and with it any guidance: the
    churned σ̂_i = σ_i(1 + γ_i) of every step and Heun's corrector level σ_{i+1} of every step
    but the last, 2N − 1 values in the order they are used."""
    steps = len(sigmas) - 1
    levels = sigmas.tolist()
    evaluated = []
    for i in range(steps):
        evaluated.append(levels[i] * (1.0 + churn.gamma(levels[i], steps)))
        if levels[i + 1] > 0:
            evaluated.append(levels[i + 1])
    return torch.tensor(evaluated, dtype=sigmas.dtype)


@dataclass(frozen=True)
class Inpaint:
    """Known dims (mask (D,) True) fixed to `values` (B, D); other columns are ignored.

    renoise=True is the replacement method for an unconditional denoiser: before every
    denoiser evaluation at level σ the known dims are set to values + σ·ε (ε drawn once per
    sample, so they follow their own forward-noising path). renoise=False holds them at the
    clean values throughout, for a denoiser conditioned on them. Either way they are exactly
    `values` at the end.
    """

    values: torch.Tensor
    mask: torch.Tensor
    renoise: bool = True


@dataclass
class SamplerOutput:
    """x: final samples (B, D); trajectory: x at each σ_i, (N, B, D), if it was asked for."""

    x: torch.Tensor
    sigmas: torch.Tensor
    trajectory: torch.Tensor | None = None


def heun_sample(
    denoise: Denoise,
    shape: tuple[int, int],
    sigmas: torch.Tensor,
    *,
    churn: Churn = Churn(),
    guidance: Guidance | None = None,
    inpaint: Inpaint | None = None,
    return_trajectory: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> SamplerOutput:
    """Heun 2nd-order sampler of EDM Algorithm 2 with an Euler last step (to σ_N = 0).

    N steps cost 2N − 1 denoiser evaluations. Only `guidance` may build an autograd graph
    (it enables grad itself); the rest runs without one.
    """
    steps = len(sigmas) - 1
    levels = sigmas.tolist()
    x = torch.randn(shape, device=device, generator=generator) * levels[0]
    known = None
    if inpaint is not None:
        mask = inpaint.mask.to(device=device, dtype=torch.bool).expand(shape)
        values = inpaint.values.to(device=device, dtype=x.dtype)
        if inpaint.renoise:
            known_noise = torch.randn(shape, device=device, generator=generator)

            def known(z: torch.Tensor, sigma: float) -> torch.Tensor:
                return torch.where(mask, values + sigma * known_noise, z)
        else:

            def known(z: torch.Tensor, sigma: float) -> torch.Tensor:
                return torch.where(mask, values, z)

    trajectory = (
        torch.empty((steps, *shape), device=device, dtype=x.dtype) if return_trajectory else None
    )

    def guided(z: torch.Tensor, sigma: float) -> torch.Tensor:
        d = denoise(z, sigma).float()
        if guidance is not None:
            d = d - (sigma * sigma) * guidance(z, sigma)  # D̃ = D_θ − σ² Σ w_k ∇E_k (§6)
        return d

    with torch.no_grad():
        for i in range(steps):
            sigma, sigma_next = levels[i], levels[i + 1]
            if known is not None:
                x = known(x, sigma)
            if trajectory is not None:
                trajectory[i] = x
            gamma = churn.gamma(sigma, steps)
            sigma_hat = sigma * (1.0 + gamma)
            if gamma > 0:
                noise = torch.randn(shape, device=device, generator=generator)
                x = x + math.sqrt(sigma_hat**2 - sigma**2) * churn.s_noise * noise
                if known is not None:
                    x = known(x, sigma_hat)
            slope = (x - guided(x, sigma_hat)) / sigma_hat
            x_next = x + (sigma_next - sigma_hat) * slope
            if sigma_next > 0:
                if known is not None:
                    x_next = known(x_next, sigma_next)
                slope_next = (x_next - guided(x_next, sigma_next)) / sigma_next
                x_next = x + (sigma_next - sigma_hat) * 0.5 * (slope + slope_next)
            x = x_next
        if inpaint is not None:
            x = torch.where(mask, values, x)
    return SamplerOutput(x=x, sigmas=sigmas, trajectory=trajectory)
