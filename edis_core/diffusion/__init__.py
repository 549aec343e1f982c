"""The diffusion prior p_θ(s, a, r, s', done): EDM training and Heun sampling
(docs/algorithm.md §2)."""

from edis_core.diffusion.edm import Churn, Inpaint, SamplerOutput, heun_sample, karras_sigmas
from edis_core.diffusion.layout import Normalizer, TransitionLayout
from edis_core.diffusion.prior import DiffusionConfig, DiffusionPrior

__all__ = [
    "Churn",
    "DiffusionConfig",
    "DiffusionPrior",
    "Inpaint",
    "Normalizer",
    "SamplerOutput",
    "TransitionLayout",
    "heun_sample",
    "karras_sigmas",
]
