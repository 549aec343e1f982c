"""Residual MLP denoiser D_θ(x; σ) with EDM preconditioning, a noise-level embedding and EMA."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn import functional as F

from edis_core.diffusion.edm import preconditioning


class NoiseEmbedding(nn.Module):
    """Sinusoidal features of c_noise = ln(σ)/4 (shared by the denoiser and the energies).

    Conditioning on c_noise rather than on a step index keeps the networks independent of the
    number of sampling steps (docs/algorithm.md §4, §8). A float σ (one level for the whole
    batch, as in sampling) gives a single row that the caller broadcasts.
    """

    def __init__(self, dim: int, min_freq: float = 0.5, max_freq: float = 32.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"noise embedding dim must be even, got {dim}")
        # c_noise spans about [-1.55, 1.10] for σ in [0.002, 80]: the slowest frequency varies
        # smoothly over that range, the fastest still separates neighbouring sampler levels
        # (Δc ≈ 0.09 at 32 steps) without aliasing them.
        freqs = torch.exp(torch.linspace(math.log(min_freq), math.log(max_freq), dim // 2))
        # [cos(f c), sin(f c)] as one sin: cos(θ) = sin(θ + π/2)
        self.register_buffer("freqs", freqs.repeat(2), persistent=False)
        phase = torch.cat([torch.full((dim // 2,), math.pi / 2), torch.zeros(dim // 2)])
        self.register_buffer("phase", phase, persistent=False)

    def forward(self, c_noise: torch.Tensor | float) -> torch.Tensor:
        c = torch.as_tensor(c_noise, dtype=self.freqs.dtype, device=self.freqs.device)
        return torch.addcmul(self.phase, c.reshape(-1, 1), self.freqs).sin_()


class ResidualBlock(nn.Module):
    """h + W·SiLU(LN(h) + c): pre-norm residual with an additive noise-level shift c.

    The linear layer has no bias (the next block's shift plays that role). Without autograd
    (sampling) the residual add is an in-place addmm and a one-row shift (one σ for the
    whole batch) is folded into the LayerNorm bias: fewer passes over memory and fewer
    fresh allocations, the same function.
    """

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.linear = nn.Linear(width, width, bias=False)

    def forward(self, h: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        norm, weight = self.norm, self.linear.weight.t()
        if h.requires_grad or shift.requires_grad:
            return h + F.silu(norm(h) + shift) @ weight
        if shift.shape[0] == 1:
            a = F.layer_norm(h, norm.normalized_shape, norm.weight, norm.bias + shift[0], norm.eps)
        else:
            a = norm(h).add_(shift)
        a = F.silu(a, inplace=True)
        if weight.dtype != h.dtype:  # low-precision sampling copy: bf16 matmul, fp32 stream
            return h.add_(a.to(weight.dtype) @ weight)
        return h.addmm_(a, weight)


class ResidualMLP(nn.Module):
    """F_θ(c_in·x, c_noise, m): the raw network inside the preconditioned denoiser; m is the
    optional mask of dims given clean (conditional sampling)."""

    def __init__(self, dim: int, width: int, blocks: int, embed_dim: int = 64):
        super().__init__()
        self.blocks_count = blocks
        self.embed = NoiseEmbedding(embed_dim)
        # σ is one number: a narrow embedding MLP suffices, and keeps the per-row (training)
        # cost of the projection below small next to the blocks.
        self.embed_mlp = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.SiLU())
        self.input = nn.Linear(dim, width)
        self.condition = nn.Linear(dim, width, bias=False)  # reads the mask m; m = 0 adds 0
        # One projection gives the input bias and every block's shift from the embedding.
        self.shifts = nn.Linear(embed_dim, width * (blocks + 1))
        self.blocks = nn.ModuleList(ResidualBlock(width) for _ in range(blocks))
        self.out_norm = nn.LayerNorm(width)
        self.output = nn.Linear(width, dim)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(
        self, x_in: torch.Tensor, c_noise: torch.Tensor | float, known: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x_in: (B, dim); c_noise: a float or (B,); known: None, (dim,) or (B, dim) bool.
        One-row embeddings and masks are broadcast over the batch."""
        emb = self.embed_mlp(self.embed(c_noise))
        shifts = self.shifts(emb).chunk(self.blocks_count + 1, 1)
        bias = shifts[0] + self.input.bias
        if known is not None:
            bias = bias + self.condition(known.to(x_in.dtype).reshape(-1, x_in.shape[1]))
        h = torch.addmm(bias, x_in, self.input.weight.t())
        for block, shift in zip(self.blocks, shifts[1:], strict=True):
            h = block(h, shift)
        return self.output(F.silu(self.out_norm(h), inplace=not h.requires_grad))


class EDMDenoiser(nn.Module):
    """D_θ(x; σ) = c_skip(σ)·x + c_out(σ)·F_θ(c_in(σ)·x, c_noise(σ))  (EDM eq. 7).

    With a mask `known`, the known dims of x are clean values that condition the rest: they
    enter F unscaled, flagged by the mask, and come out unchanged. Trained on a share of rows
    with such masks, one network is both the joint prior and its conditionals p(·|s, a).
    """

    def __init__(self, dim: int, width: int, blocks: int, sigma_data: float, embed_dim: int = 64):
        super().__init__()
        self.sigma_data = sigma_data
        self.net = ResidualMLP(dim, width, blocks, embed_dim)

    def forward(
        self, x: torch.Tensor, sigma: torch.Tensor | float, known: torch.Tensor | None = None
    ) -> torch.Tensor:
        """σ: a float (one level for the batch) or a (B,) tensor; known: None or a bool
        mask, (D,) or (B, D)."""
        if isinstance(sigma, torch.Tensor):
            sigma = sigma.reshape(-1, 1)
        c_skip, c_out, c_in, c_noise = preconditioning(sigma, self.sigma_data)
        if isinstance(c_noise, torch.Tensor):
            c_noise = c_noise.reshape(-1)
        if known is None:
            return c_skip * x + c_out * self.net(x * c_in, c_noise)
        raw = self.net(torch.where(known, x, x * c_in), c_noise, known)
        return torch.where(known, x, c_skip * x + c_out * raw)

    def sampling_copy(self, dtype: torch.dtype) -> EDMDenoiser:
        """A frozen copy whose residual-block matmuls run in `dtype` (e.g. bfloat16, which
        AMX/avx512_bf16 CPUs and GPUs multiply several times faster); LayerNorm, the residual
        stream and the preconditioning stay float32."""
        twin = copy.deepcopy(self).requires_grad_(False).eval()
        for block in twin.net.blocks:
            block.linear.to(dtype)
        return twin


class EMA:
    """Exponential moving average of a model's parameters, with the usual early warm-up.

    decay_t = min(decay, (1 + t) / (10 + t)) so that a briefly trained model is not stuck
    at its initialisation.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).requires_grad_(False)
        self._source = list(model.parameters())
        self._target = list(self.model.parameters())

    @torch.no_grad()
    def update(self) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self._target, self._source, 1.0 - decay)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])
