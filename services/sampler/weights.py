"""A generator's models as flat float32 tensors: what PublishWeights carries and checks.

Models (protos/edis/sampler/v1/sampler.proto, ModelBlob): "prior" (the EMA denoiser and the
normaliser, `DiffusionPrior.sampling_weights`) and one "energy/<name>" per enabled energy.
Each travels as one safetensors blob; a received blob is checked tensor by tensor against
the model it is meant for before anything is loaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from edis_core.config import ConfigError, from_dict
from edis_core.generator import SyntheticGenerator
from edis_core.generator_config import EDISConfig

PRIOR = "prior"
ENERGY_PREFIX = "energy/"


class WeightsError(ValueError):
    """Weights that cannot be loaded into a model; the message names the model and tensor."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What a sampler builds its generator from (proto ModelSpec)."""

    obs_dim: int
    act_dim: int
    config: EDISConfig

    @classmethod
    def of(cls, generator: SyntheticGenerator) -> ModelSpec:
        return cls(generator.layout.obs_dim, generator.layout.act_dim, generator.config)

    @classmethod
    def parse(cls, obs_dim: int, act_dim: int, config_json: str) -> ModelSpec:
        """Raises WeightsError naming the bad field."""
        if obs_dim < 1 or act_dim < 1:
            raise WeightsError(f"spec.obs_dim and spec.act_dim must be >= 1, got "
                               f"{obs_dim}, {act_dim}")
        try:
            values = json.loads(config_json)
        except json.JSONDecodeError as err:
            raise WeightsError(f"spec.edis_config_json is not JSON: {err}") from err
        try:
            config = from_dict(EDISConfig, values, "spec.edis_config_json")
        except ConfigError as err:
            raise WeightsError(str(err)) from err
        return cls(obs_dim, act_dim, config)

    def config_json(self) -> str:
        return json.dumps(dataclasses.asdict(self.config))

    def approximate_parameters(self) -> int:
        """Parameters of the denoiser and energies, to the leading terms (a guard against a
        spec that would exhaust memory, checked before anything is built)."""
        cfg, dim = self.config, 2 * self.obs_dim + self.act_dim + 2
        width, energy_width = cfg.diffusion.width, cfg.energy_width
        denoiser = cfg.diffusion.blocks * width**2 + width * (
            3 * dim + cfg.diffusion.embed_dim * (cfg.diffusion.blocks + 2))
        energy = cfg.energy_depth * energy_width**2 + energy_width * (dim + cfg.energy_embed_dim)
        return denoiser + 3 * energy


def build_generator(spec: ModelSpec, device: torch.device | str, seed: int) -> SyntheticGenerator:
    """An untrained generator of the spec's architecture, ready to receive weights."""
    try:
        return SyntheticGenerator(spec.obs_dim, spec.act_dim, spec.config, mode="edis",
                                  device=device, seed=seed)
    except ValueError as err:
        raise WeightsError(f"spec: {err}") from err


def model_names(generator: SyntheticGenerator) -> list[str]:
    return [PRIOR] + [ENERGY_PREFIX + name for name in generator.energies]


def model_tensors(generator: SyntheticGenerator, model: str) -> dict[str, torch.Tensor]:
    """The tensors of `model` as the generator holds them now."""
    if model == PRIOR:
        return generator.prior.sampling_weights()
    return dict(generator.energies[_energy_name(generator, model)].state_dict())


def load_model_tensors(generator: SyntheticGenerator, model: str,
                       tensors: Mapping[str, torch.Tensor]) -> None:
    """Load tensors that `check_tensors` accepted for `model`."""
    if model == PRIOR:
        generator.prior.load_sampling_weights(dict(tensors))
    else:
        generator.energies[_energy_name(generator, model)].load_state_dict(dict(tensors))


def encode(tensors: Mapping[str, torch.Tensor]) -> bytes:
    """One safetensors blob (no pickle) of CPU copies of the tensors."""
    return save_safetensors({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()})


def digest(blob: bytes) -> bytes:
    return hashlib.sha256(blob).digest()


def decode(model: str, blob: bytes) -> dict[str, torch.Tensor]:
    try:
        return load_safetensors(blob)
    except SafetensorError as err:
        raise WeightsError(f"model {model!r}: not a safetensors blob ({err})") from err


def check_tensors(model: str, expected: Mapping[str, torch.Tensor],
                  received: Mapping[str, torch.Tensor]) -> None:
    """Names, dtypes, shapes and finiteness of `received` against `expected`; raises
    WeightsError naming the first tensor that does not fit."""
    missing = sorted(set(expected) - set(received))
    unexpected = sorted(set(received) - set(expected))
    if missing or unexpected:
        raise WeightsError(f"model {model!r}: tensors do not match the model: missing {missing}, "
                           f"unexpected {unexpected}")
    for name, want in expected.items():
        got = received[name]
        if got.dtype != want.dtype:
            raise WeightsError(f"model {model!r}: tensor {name!r} has dtype "
                               f"{str(got.dtype).removeprefix('torch.')}, the model needs "
                               f"{str(want.dtype).removeprefix('torch.')}")
        if got.shape != want.shape:
            raise WeightsError(f"model {model!r}: tensor {name!r} has shape {list(got.shape)}, "
                               f"the model needs {list(want.shape)}")
        if got.is_floating_point():
            bad = int((~torch.isfinite(got)).sum())
            if bad:
                raise WeightsError(f"model {model!r}: tensor {name!r} has {bad} non-finite "
                                   f"value(s) of {got.numel()}")


def check_generator(generator: SyntheticGenerator) -> None:
    """Every model of a generator loaded from disk passes the same checks as a publish."""
    for model in model_names(generator):
        tensors = model_tensors(generator, model)
        check_tensors(model, tensors, tensors)


def _energy_name(generator: SyntheticGenerator, model: str) -> str:
    name = model.removeprefix(ENERGY_PREFIX)
    if not model.startswith(ENERGY_PREFIX) or name not in generator.energies:
        raise WeightsError(f"unknown model {model!r}; this model has {model_names(generator)}")
    return name
