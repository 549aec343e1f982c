"""The diffusion prior p_θ(x) over normalised transitions: normaliser + EDM denoiser + EMA."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from edis_core.diffusion.denoiser import EMA, EDMDenoiser
from edis_core.diffusion.edm import (
    Churn,
    Guidance,
    Inpaint,
    SamplerOutput,
    evaluation_sigmas,
    heun_sample,
    karras_sigmas,
    loss_weight,
    training_sigmas,
)
from edis_core.diffusion.layout import Normalizer


@dataclass
class DiffusionConfig:
    """EDM prior hyper-parameters. Defaults are sized for a 2-core CPU (measured in
    benchmarks/bench_sampling.py); `DiffusionConfig.paper()` gives the reference sizes
    (width 1024, 6 blocks, 128 stochastic Heun steps, 100k training steps)."""

    width: int = 256
    blocks: int = 3
    embed_dim: int = 64
    sampling_steps: int = 32  # Heun steps N: 2N - 1 denoiser evaluations per sample
    s_churn: float = 0.0  # 0: deterministic probability-flow ODE
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    s_noise: float = 1.0
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    sigma_data: float = 1.0  # the data are z-scored
    p_mean: float = -1.2
    p_std: float = 1.2
    batch_size: int = 256
    lr: float = 3e-4
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    # Share of training rows whose condition dims (given to the prior, e.g. (s, a)) are given
    # clean, so that inpainting samples the learned conditional; the replacement method's
    # conditionals are far off when dims are strongly coupled (s' on (s, a)).
    p_conditional: float = 0.25
    train_steps: int = 20_000
    # bfloat16 pays only on GPUs and CPUs with bfloat16 units (edis_core/precision.py).
    train_bf16: bool = False  # bfloat16 autocast for the training forward/backward
    sample_bf16: bool = False  # bfloat16 residual-block matmuls when sampling

    def __post_init__(self) -> None:
        positive_ints = ("width", "blocks", "embed_dim", "batch_size", "train_steps")
        for name in positive_ints:
            if getattr(self, name) < 1:
                raise ValueError(f"DiffusionConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.embed_dim % 2:
            raise ValueError(f"DiffusionConfig.embed_dim must be even, got {self.embed_dim}")
        if self.sampling_steps < 2:
            raise ValueError(
                f"DiffusionConfig.sampling_steps must be >= 2, got {self.sampling_steps}"
            )
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(
                f"DiffusionConfig needs 0 < sigma_min < sigma_max, got "
                f"{self.sigma_min}, {self.sigma_max}"
            )
        for name in ("sigma_data", "rho", "p_std", "lr", "s_noise"):
            if getattr(self, name) <= 0:
                raise ValueError(f"DiffusionConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.s_churn < 0 or self.weight_decay < 0:
            raise ValueError("DiffusionConfig.s_churn and weight_decay must be >= 0")
        if not 0 <= self.p_conditional < 1:
            raise ValueError(
                f"DiffusionConfig.p_conditional must be in [0, 1), got {self.p_conditional}"
            )
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"DiffusionConfig.ema_decay must be in [0, 1), got {self.ema_decay}")

    @classmethod
    def paper(cls, **overrides) -> DiffusionConfig:
        """The reference sizes (SynthER/EDIS code): 1024 × 6, 128 stochastic Heun steps."""
        values = dict(
            width=1024,
            blocks=6,
            sampling_steps=128,
            s_churn=80.0,
            s_tmin=0.05,
            s_tmax=50.0,
            s_noise=1.003,
            train_steps=100_000,
        )
        return cls(**{**values, **overrides})

    @property
    def churn(self) -> Churn:
        return Churn(self.s_churn, self.s_tmin, self.s_tmax, self.s_noise)

    @property
    def evaluations_per_sample(self) -> int:
        return 2 * self.sampling_steps - 1


class DiffusionPrior:
    """p_θ over normalised x; trained offline, optionally continued online (docs/algorithm.md §2).

    `condition_masks` ((D,) bool each) are the sets of dims that inpainting will be given;
    a share p_conditional of training rows is conditioned on one of them.
    """

    def __init__(
        self,
        dim: int,
        config: DiffusionConfig,
        *,
        raw_dims: Sequence[int] = (),
        condition_masks: Sequence[torch.Tensor] = (),
        device: torch.device | str = "cpu",
        seed: int = 0,
    ):
        self.dim, self.config, self.device = dim, config, torch.device(device)
        self.condition_masks = [m.to(self.device, torch.bool) for m in condition_masks]
        self._stacked_masks = torch.stack(self.condition_masks) if self.condition_masks else None
        self.normalizer = Normalizer(dim, raw_dims, device=self.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.denoiser = EDMDenoiser(
                dim, config.width, config.blocks, config.sigma_data, config.embed_dim
            ).to(self.device)
        self.ema = EMA(self.denoiser, config.ema_decay)
        fused = {"fused": True} if self.device.type in ("cpu", "cuda") else {}
        self.optimizer = torch.optim.AdamW(
            self.denoiser.parameters(), lr=config.lr, weight_decay=config.weight_decay, **fused
        )
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self._sampler_net: EDMDenoiser | None = None
        self._sampler_net_version = -1

    @property
    def steps_trained(self) -> int:
        return self.ema.updates

    def fit_normalizer(self, x: np.ndarray | torch.Tensor) -> None:
        self.normalizer.fit(x)

    def train_step(self, x: torch.Tensor) -> float:
        """One EDM step on a batch of normalised x: E_σ,ε[λ(σ) ‖D_θ(x + σε; σ) − x‖²], the
        norm taken over the dims not given as condition."""
        cfg = self.config
        sigma = training_sigmas(
            len(x), cfg.p_mean, cfg.p_std, device=self.device, generator=self.generator
        )
        noise = torch.randn(x.shape, device=self.device, generator=self.generator)
        noisy, known = x + sigma[:, None] * noise, self._training_masks(len(x))
        if known is not None:
            noisy = torch.where(known, x, noisy)
        if cfg.train_bf16:
            with torch.autocast(self.device.type, torch.bfloat16):
                denoised = self.denoiser(noisy, sigma, known)
        else:
            denoised = self.denoiser(noisy, sigma, known)
        error = (denoised.float() - x).square()
        if known is None:
            per_row = error.mean(1)
        else:
            unknown = (~known).float()
            per_row = (error * unknown).sum(1) / unknown.sum(1)
        loss = (loss_weight(sigma, cfg.sigma_data) * per_row).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.ema.update()
        return loss.item()

    def _training_masks(self, n: int) -> torch.Tensor | None:
        """(n, D) bool: a share p_conditional of rows get one of the condition masks."""
        masks = self._stacked_masks
        if masks is None or self.config.p_conditional == 0:
            return None
        which = torch.randint(len(masks), (n,), device=self.device, generator=self.generator)
        conditioned = torch.rand(n, device=self.device, generator=self.generator)
        return masks[which] & (conditioned < self.config.p_conditional)[:, None]

    def sigmas(self, steps: int | None = None) -> torch.Tensor:
        cfg = self.config
        return karras_sigmas(steps or cfg.sampling_steps, cfg.sigma_min, cfg.sigma_max, cfg.rho)

    def evaluation_sigmas(self) -> torch.Tensor:
        """The σ at which `sample` evaluates the denoiser (and guidance): see edm."""
        return evaluation_sigmas(self.sigmas(), self.config.churn)

    def conditions_on(self, mask: torch.Tensor) -> bool:
        """Whether inpainting given `mask` samples a learned conditional (else replacement)."""
        mask = mask.to(self.device)
        return self.config.p_conditional > 0 and any(
            torch.equal(mask, m) for m in self.condition_masks
        )

    def sampler_net(self) -> EDMDenoiser:
        """The EMA denoiser used for sampling (its bfloat16 copy if sample_bf16)."""
        if not self.config.sample_bf16:
            return self.ema.model
        if self._sampler_net is None or self._sampler_net_version != self.ema.updates:
            self._sampler_net = self.ema.model.sampling_copy(torch.bfloat16)
            self._sampler_net_version = self.ema.updates
        return self._sampler_net

    def sample(
        self,
        n: int,
        *,
        guidance: Guidance | None = None,
        inpaint: Inpaint | None = None,
        return_trajectory: bool = False,
        steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> SamplerOutput:
        """n normalised samples (and the reverse trajectory) from the EMA denoiser.

        Inpainting on one of the condition masks samples the learned conditional (known dims
        held clean); any other mask falls back to the replacement method.
        """
        denoise = self.sampler_net()
        if inpaint is not None and self.conditions_on(inpaint.mask):
            denoise = functools.partial(denoise, known=inpaint.mask.to(self.device))
            inpaint = dataclasses.replace(inpaint, renoise=False)
        return heun_sample(
            denoise,
            (n, self.dim),
            self.sigmas(steps),
            churn=self.config.churn,
            guidance=guidance,
            inpaint=inpaint,
            return_trajectory=return_trajectory,
            generator=generator or self.generator,
            device=self.device,
        )

    def sampling_weights(self) -> dict[str, torch.Tensor]:
        """What sampling reads, flat: the EMA denoiser as "denoiser.<name>" and the normaliser
        as "normalizer.mean" / "normalizer.std" (what a learner publishes to a sampler)."""
        weights = {f"denoiser.{k}": v for k, v in self.ema.model.state_dict().items()}
        weights["normalizer.mean"] = self.normalizer.mean
        weights["normalizer.std"] = self.normalizer.std
        return weights

    def load_sampling_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Replace what sampling reads with `sampling_weights()` output of another prior; the
        training state (online network, optimiser, step count) is left as it is."""
        prefix = "denoiser."
        self.ema.model.load_state_dict(
            {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        )
        self.normalizer.load_state_dict(
            {"mean": weights["normalizer.mean"], "std": weights["normalizer.std"], "fitted": True}
        )
        self._sampler_net = None

    def state_dict(self) -> dict:
        return {
            "denoiser": self.denoiser.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "normalizer": self.normalizer.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.denoiser.load_state_dict(state["denoiser"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.normalizer.load_state_dict(state["normalizer"])
        self.generator.set_state(state["generator"])
        self._sampler_net = None
