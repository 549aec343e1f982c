"""The generator's hyper-parameters (EDISConfig) and how a saved config is read back.

Which energies exist, how they are trained and where guidance acts: the choices of docs/algorithm.md
§4-§6 that edis_core/generator.py composes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from edis_core.diffusion.prior import DiffusionConfig

ENERGIES = ("state", "policy", "transition")


@dataclass
class EDISConfig:
    """EDIS hyper-parameters. A guidance scale of None switches that energy off entirely (not
    trained, not used); 0 trains it but does not apply it.

    What the guided sampler draws from (see SyntheticGenerator._sample_guided): with the
    default guidance at every σ and w_s = w_π = 1, w_T = 0, and energies at their InfoNCE
    optimum, exactly μ = d^π(s)·π(a|s)·p_θ(r, s', done | s, a): states of the positive
    buffer, actions of the current policy, the prior's own (r, s', done) given (s, a). Other
    scales tilt each noise level by w_k·E_k,σ, which for w ∉ {0, 1} is not the noising of
    any product p_θ·e^{−Σ w_k E_k}: an interpolation, not Theorem 3.1.
    """

    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    w_state: float | None = 1.0
    w_policy: float | None = 1.0
    # E_T is trained (so `edis diagnose` can measure it) but not applied: on the Hopper demo
    # w_T > 0 did not lower the next-state or reward error (docs/diagnostics.md).
    w_transition: float | None = 0.0
    # Guidance acts for σ in [guidance_sigma_min, guidance_sigma_max] (normalised units) and
    # the energies are trained on the sampler's levels inside it. The default, every σ, is
    # what Theorem 3.1 needs: for data of unit scale, guidance above σ decides a share
    # 1/√(1+σ²) of a mean shift (0.2 above σ = 5), guidance below σ the rest (0.55 below σ =
    # 2: the interval [2, 5] realised 0.25 of the shift with exact energies).
    guidance_sigma_max: float = math.inf
    guidance_sigma_min: float = 0.0
    # Per-sample bound on ‖σ·Σ w∇E‖, the guidance's share of the ODE velocity dx/dσ, in
    # units of √D (the unguided velocity's typical norm); None: no clipping. Off by default:
    # a bound of 1 cuts the tails of exact Gaussian guidance, which lowered the realised
    # covariance change by 2% (tests/test_guidance_analytic.py, 128 steps: 0.99 against
    # 1.01), and on the Hopper demo it changed no verdict.
    guidance_clip: float | None = None
    energy_width: int = 128
    energy_depth: int = 2
    energy_embed_dim: int = 32
    # What the energies read: "x", the whole noised transition; "own", the dims of the §5
    # table (s; (s, a); all of x), whose noised ratios then ignore what the other dims of x_σ
    # say about s or a. And how EnergyNet maps its input (see EnergyNet): "tilt" or "edm".
    energy_input: Literal["x", "own"] = "x"
    energy_input_map: Literal["tilt", "edm"] = "tilt"
    energy_lr: float = 3e-3  # peak; decays to 0 over each refresh's steps
    energy_groups: int = 512  # InfoNCE groups (one positive each) per gradient step
    # Noise levels per step (at most energy_groups), the groups split evenly over them
    # (rounded down); None: one level per group.
    energy_levels: int | None = 16
    negatives: int = 64  # K negatives per group, shared by the groups of a level
    energy_steps: int = 2000  # suggested gradient steps per refresh (the caller passes steps)
    # Rows of every contrastive set (samples per sampling pass). Small sets overfit: on the
    # Hopper demo, 1,024 rows and 2,000 steps doubled the guided next-state error (4,096: 1.1x).
    negative_trajectories: int = 4096
    generate_batch: int = 1000  # rows per sampler call in generate()
    # Guided sampling in two passes, (s, a) then (r, s', done) given (s, a): see
    # SyntheticGenerator._sample_guided. False: one joint pass with all energies (§6).
    factorized_guidance: bool = False
    # Model s' − s in the next-state slot of x (see TransitionLayout); False: s' itself.
    next_state_delta: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.diffusion, dict):
            self.diffusion = DiffusionConfig(**self.diffusion)
        for name in (
            "energy_width",
            "energy_depth",
            "energy_groups",
            "negatives",
            "energy_steps",
            "negative_trajectories",
            "generate_batch",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"EDISConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.energy_levels is not None and self.energy_levels < 1:
            raise ValueError(
                f"EDISConfig.energy_levels must be >= 1 or None, got {self.energy_levels}"
            )
        if self.energy_embed_dim < 2 or self.energy_embed_dim % 2:
            raise ValueError(
                f"EDISConfig.energy_embed_dim must be even and >= 2, got {self.energy_embed_dim}"
            )
        if self.energy_lr <= 0:
            raise ValueError(f"EDISConfig.energy_lr must be > 0, got {self.energy_lr}")
        for name in ("w_state", "w_policy", "w_transition"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"EDISConfig.{name} must be >= 0 or None, got {value}")
        if not 0 <= self.guidance_sigma_min < self.guidance_sigma_max:
            raise ValueError(
                "EDISConfig needs 0 <= guidance_sigma_min < guidance_sigma_max, got "
                f"{self.guidance_sigma_min}, {self.guidance_sigma_max}"
            )
        if self.guidance_clip is not None and self.guidance_clip <= 0:
            raise ValueError(
                f"EDISConfig.guidance_clip must be > 0 or None, got {self.guidance_clip}"
            )
        for name, allowed in (("energy_input", ("x", "own")),
                              ("energy_input_map", ("tilt", "edm"))):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"EDISConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}"
                )

    @property
    def weights(self) -> dict[str, float | None]:
        return dict(zip(ENERGIES, (self.w_state, self.w_policy, self.w_transition), strict=True))
