"""Gaussian mixtures with exact EDM denoisers and exact noised energies: an analytic reference
for guided sampling (tests/test_guidance_analytic.py, benchmarks/guidance_seeds.py).

For a prior p and a target q, both Gaussian mixtures, everything §4 and §6 need is exact:
p_σ = p * N(0, σ²I) is again a mixture, D(x; σ) = E_p[x₀ | x_σ = x] is closed-form, and the
noised energy E_σ = −log q_σ/p_σ + C. Guided sampling with these, or with energies learned by
the project's InfoNCE from samples of p and q, must move p's mean and covariance to q's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from edis_core.diffusion.edm import Guidance, heun_sample
from edis_core.energy.networks import EnergyNet
from edis_core.energy.training import ContrastiveSet, EnergyTraining


class GaussianMixture:
    """Σ_k w_k N(μ_k, Σ_k) in D dims; computations in float64, results in float32."""

    def __init__(self, means: list, covariances: list, weights: list | None = None):
        self.means = torch.as_tensor(means, dtype=torch.float64).reshape(len(means), -1)
        k, d = self.means.shape
        self.covariances = torch.as_tensor(covariances, dtype=torch.float64).expand(k, d, d)
        w = torch.ones(k, dtype=torch.float64) if weights is None else torch.as_tensor(
            weights, dtype=torch.float64)
        self.weights = w / w.sum()

    @classmethod
    def gaussian(cls, mean: list, covariance: list) -> GaussianMixture:
        return cls([mean], [covariance])

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def mean(self) -> torch.Tensor:
        return self.weights @ self.means

    @property
    def covariance(self) -> torch.Tensor:
        centred = self.means - self.mean
        spread = torch.einsum("k,ki,kj->ij", self.weights, centred, centred)
        return torch.einsum("k,kij->ij", self.weights, self.covariances) + spread

    def _noised(self, sigma: float) -> torch.Tensor:
        return self.covariances + sigma**2 * torch.eye(self.dim, dtype=torch.float64)

    def _component_log_densities(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """(B, K): log w_k + log N(x; μ_k, Σ_k + σ²I)."""
        normal = torch.distributions.MultivariateNormal(self.means, self._noised(sigma))
        return normal.log_prob(x.double()[:, None, :]) + self.weights.log()

    def log_density(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """log p_σ(x), p_σ = p * N(0, σ²I); differentiable in x."""
        return torch.logsumexp(self._component_log_densities(x, sigma), dim=1)

    def denoise(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """The ideal denoiser E[x₀ | x_σ = x] = Σ_k r_k(x)·(μ_k + Σ_k(Σ_k + σ²I)⁻¹(x − μ_k))."""
        x64 = x.double()
        responsibilities = torch.softmax(self._component_log_densities(x64, sigma), dim=1)
        gain = torch.linalg.solve(self._noised(sigma), self.covariances)  # (Σ+σ²I)⁻¹Σ
        posterior = self.means + torch.einsum(
            "kji,bkj->bki", gain, x64[:, None, :] - self.means)
        return torch.einsum("bk,bki->bi", responsibilities, posterior).to(x.dtype)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        component = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        chol = torch.linalg.cholesky(self.covariances)[component]
        noise = torch.randn(n, self.dim, 1, dtype=torch.float64, generator=generator)
        return (self.means[component] + (chol @ noise).squeeze(-1)).float()


class ExactEnergy(nn.Module):
    """E_σ(x) = log p_σ(x) − log q_σ(x): the noised energy of §4 whose tilt turns p into q."""

    def __init__(self, prior: GaussianMixture, target: GaussianMixture):
        super().__init__()
        self.prior, self.target = prior, target

    def forward(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return (self.prior.log_density(x, sigma) - self.target.log_density(x, sigma)).float()


@dataclass
class Shift:
    """How much of the analytic shift from p to q guidance realises, as fractions (1: all of
    it): the change of the sample mean and covariance from unguided to guided samples (same
    sampler, same random numbers), each projected on the change from p to q."""

    mean: float
    covariance: float


def realised_shift(guided: torch.Tensor, unguided: torch.Tensor, prior: GaussianMixture,
                   target: GaussianMixture) -> Shift:
    """Measured against the unguided samples rather than p itself, so that the sampler's own
    discretisation error (which guidance inherits) is not counted as guidance's."""
    g, u = guided.double(), unguided.double()
    mean_change, cov_change = target.mean - prior.mean, target.covariance - prior.covariance
    mean = (g.mean(0) - u.mean(0)) @ mean_change / mean_change.square().sum()
    moved = (_covariance(g) - _covariance(u)) * cov_change
    return Shift(float(mean), float(moved.sum() / cov_change.square().sum()))


def _covariance(x: torch.Tensor) -> torch.Tensor:
    return torch.cov(x.T).reshape(x.shape[1], x.shape[1])


def guided_samples(prior: GaussianMixture, guidance: Guidance | None, sigmas: torch.Tensor,
                   n: int, seed: int, **sampler) -> torch.Tensor:
    """n samples of the Heun sampler on p's exact denoiser with `guidance`."""
    generator = torch.Generator().manual_seed(seed)
    return heun_sample(prior.denoise, (n, prior.dim), sigmas, guidance=guidance,
                       generator=generator, **sampler).x


def learned_energy(prior: GaussianMixture, target: GaussianMixture, levels: torch.Tensor,
                   rows: int, steps: int, seed: int, input_map: str = "tilt",
                   **training) -> EnergyNet:
    """An EnergyNet trained by the project's InfoNCE (EnergyTraining) on `rows` samples of q
    (positives) and of p (negatives), at the noise levels `levels`."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = EnergyNet(prior.dim, input_map=input_map)
    data = ContrastiveSet(target.sample(rows, generator), prior.sample(rows, generator))
    dims = slice(0, prior.dim)
    EnergyTraining({"energy": net}, {"energy": dims}, generator=generator, **training).train(
        {"energy": data}, levels, steps)
    return net


def interval_share(sigma_min: float, sigma_max: float) -> float:
    """Share of a mean shift that guidance on [σ_min, σ_max] alone realises, for p = N(0, 1)
    and q = N(μ, 1) with exact energies and the probability-flow ODE: along the flow the mean
    obeys dm/dσ = σ(m − μ)/(1 + σ²) where guided and σm/(1 + σ²) elsewhere, which gives
    1/√(1 + σ_min²) − 1/√(1 + σ_max²)."""
    return 1 / math.sqrt(1 + sigma_min**2) - 1 / math.sqrt(1 + sigma_max**2)
