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
    of sampling steps (§8.3). Preconditioned like EDM's denoiser:

        E_φ(x, σ) = σ_d·c_in(σ) · F_φ(c_in(σ)·x, c_noise(σ)),   c_in = 1/√(σ² + σ_d²)

    F sees unit-scale inputs at every level, and the guidance shift σ²∇_x E = σ_d σ²/(σ²+σ_d²)
    ∇F stays O(|∇F|) even at σ = 80, where the true noised log-ratio is O(1/σ): without the
    factor the untrained-for residue of F there would be amplified by σ² (×6400). The output
    layer starts at zero, so an energy guides nothing until it has learned something.
    """

    def __init__(
        self,
        in_dim: int,
        width: int = 128,
        depth: int = 2,
        embed_dim: int = 32,
        sigma_data: float = 1.0,
    ):
        super().__init__()
        if in_dim < 1 or width < 1 or depth < 1:
            raise ValueError(
                f"EnergyNet needs in_dim, width, depth >= 1, got {in_dim}, {width}, {depth}"
            )
        self.sigma_data = sigma_data
        self.embed = NoiseEmbedding(embed_dim)
        self.embed_proj = nn.Linear(embed_dim, width)
        self.input = nn.Linear(in_dim, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth - 1))
        self.output = nn.Linear(width, 1)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """E per row. x: (B, in_dim); σ: a float (one level for the batch) or a (B,) tensor."""
        if isinstance(sigma, torch.Tensor):
            sigma = sigma.reshape(-1, 1)
        _, _, c_in, c_noise = preconditioning(sigma, self.sigma_data)
        if isinstance(c_noise, torch.Tensor):
            c_noise = c_noise.reshape(-1)
        h = F.silu(self.input(x * c_in) + self.embed_proj(self.embed(c_noise)))
        for layer in self.hidden:
            h = F.silu(layer(h))
        scale = self.sigma_data * c_in
        if isinstance(scale, torch.Tensor):
            scale = scale.reshape(-1)
        return scale * self.output(h).squeeze(-1)
