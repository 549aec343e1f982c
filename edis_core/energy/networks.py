"""σ-conditioned energy networks E_φ(x_σ, σ) (EDIS.md §4)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from edis_core.diffusion.denoiser import NoiseEmbedding
from edis_core.diffusion.edm import preconditioning


class EnergyNet(nn.Module):
    """E_φ(x_σ, σ) -> one scalar per row, for x_σ a noised (part of a) normalised transition.

    Conditioned on c_noise = ln(σ)/4 like the denoiser, so it does not depend on the number
    of sampling steps (§8.3), and fed c_in(σ)·x_σ so that its input stays unit-scale at every
    noise level: the σ-dependence of the scale is in the preconditioning, not in the weights.
    """

    def __init__(self, in_dim: int, width: int = 128, depth: int = 2, embed_dim: int = 32,
                 sigma_data: float = 1.0):
        super().__init__()
        if in_dim < 1 or width < 1 or depth < 1:
            raise ValueError(f"EnergyNet needs in_dim, width, depth >= 1, got "
                             f"{in_dim}, {width}, {depth}")
        self.sigma_data = sigma_data
        self.embed = NoiseEmbedding(embed_dim)
        self.embed_proj = nn.Linear(embed_dim, width)
        self.input = nn.Linear(in_dim, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth - 1))
        self.output = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """x: (B, in_dim); σ: a float (one level for the batch) or a (B,) tensor."""
        if isinstance(sigma, torch.Tensor):
            sigma = sigma.reshape(-1, 1)
        _, _, c_in, c_noise = preconditioning(sigma, self.sigma_data)
        if isinstance(c_noise, torch.Tensor):
            c_noise = c_noise.reshape(-1)
        h = F.silu(self.input(x * c_in) + self.embed_proj(self.embed(c_noise)))
        for layer in self.hidden:
            h = F.silu(layer(h))
        return self.output(h).squeeze(-1)
