"""σ-conditioned energy networks E_φ(x_σ, σ) (docs/algorithm.md §4)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from edis_core.diffusion.denoiser import NoiseEmbedding
from edis_core.diffusion.edm import preconditioning

INPUT_MAPS = ("tilt", "edm")


class EnergyNet(nn.Module):
    """E_φ(x_σ, σ) -> one scalar per row, for x_σ a noised (part of a) normalised transition.

    Conditioned on c_noise = ln(σ)/4 like the denoiser, so it does not depend on the number
    of sampling steps (§8.3). Two input maps (`input_map`):

    "tilt" (default): E_φ(x, σ) = F_φ(t, c_noise(σ)),  t = σ_d·x / (σ² + σ_d²).
        The exact noised energy of §4 is a difference of log-moment-generating functions,
        E_σ(x) = −log E_q[e^{t'·x₀ − |x₀|²/2σ²}] + log E_p[same] with t' = x/σ², so at large σ
        it depends on x through t alone and not on σ: its slope in t is minus the mean shift
        from p to q, its curvature minus the covariance change. With t as input, F is nearly
        σ-independent where InfoNCE has almost no signal (noised log-ratios are O(1/σ) at
        large σ), so what the net learns at moderate σ carries over. The guidance shift
        σ²∇_x E = σ_d σ²/(σ² + σ_d²) ∇_t F stays O(|∇F|) at every σ.
    "edm" (energies saved before `input_map` existed): E_φ(x, σ) = σ_d·c_in(σ)·F_φ(c_in(σ)·x,
        c_noise(σ)), c_in = 1/√(σ² + σ_d²), EDM's input scaling. A mean shift is represented
        exactly, but a covariance change must fade like 1/σ through c_noise alone: on the
        correlated 2-D Gaussian of tests/test_guidance_analytic.py its learned gradients at
        σ = 5 and 20 were 18-78% off and guided samples overshot the covariance change
        1.05-1.28x over seeds 0-2 ("tilt": 4-26% off, 0.95-1.09x).

    The output layer starts at zero, so an energy guides nothing until it has learned
    something.
    """

    def __init__(
        self,
        in_dim: int,
        width: int = 128,
        depth: int = 2,
        embed_dim: int = 32,
        sigma_data: float = 1.0,
        input_map: str = "tilt",
    ):
        super().__init__()
        if in_dim < 1 or width < 1 or depth < 1:
            raise ValueError(
                f"EnergyNet needs in_dim, width, depth >= 1, got {in_dim}, {width}, {depth}"
            )
        if input_map not in INPUT_MAPS:
            raise ValueError(f"EnergyNet input_map must be one of {INPUT_MAPS}, got {input_map!r}")
        self.sigma_data, self.input_map = sigma_data, input_map
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
        if self.input_map == "tilt":
            inputs, scale = x * (self.sigma_data * c_in * c_in), 1.0
        else:
            inputs, scale = x * c_in, self.sigma_data * c_in
            if isinstance(scale, torch.Tensor):
                scale = scale.reshape(-1)
        h = F.silu(self.input(inputs) + self.embed_proj(self.embed(c_noise)))
        for layer in self.hidden:
            h = F.silu(layer(h))
        return scale * self.output(h).squeeze(-1)
