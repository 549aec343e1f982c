"""Finite checks where numbers enter a run: data, weights and losses.

One NaN or inf in a buffer or a network spreads silently: losses turn NaN, every generated
row is dropped, the simulator is driven with NaN controls, and the run still "completes".
These checks stop it where it enters, naming the place and how many values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from edis_core.transitions import Transitions


class NonFiniteError(ValueError):
    """NaN or inf where only finite numbers may be; the message says where and how many."""


def nonfinite_counts(t: Transitions) -> dict[str, int]:
    """Non-finite values per field. `mc_returns` may be −inf: it marks an unknown return."""
    counts = {}
    for name, value in t.as_dict().items():
        bad = ~np.isfinite(value)
        if name == "mc_returns":
            bad &= ~np.isneginf(value)
        if bad.any():
            counts[name] = int(bad.sum())
    return counts


def describe_counts(counts: Mapping[str, int]) -> str:
    """{"rewards": 2} -> "2 in rewards" (the wording of every message here)."""
    return ", ".join(f"{n} in {name}" for name, n in counts.items())


def require_finite(t: Transitions, source: str) -> None:
    """Refuse transitions with NaN/inf (−inf allowed in mc_returns)."""
    counts = nonfinite_counts(t)
    if counts:
        raise NonFiniteError(f"{source}: non-finite values (NaN/inf): {describe_counts(counts)}")


def nonfinite_tensors(state: Any, prefix: str = "") -> dict[str, int]:
    """Non-finite entries per floating-point tensor of a nested state dict, by dotted name."""
    if isinstance(state, torch.Tensor):
        if not state.is_floating_point():
            return {}
        bad = int((~torch.isfinite(state)).sum())
        return {prefix: bad} if bad else {}
    if isinstance(state, Mapping):
        items = state.items()
    elif isinstance(state, list | tuple):
        items = enumerate(state)
    else:
        return {}
    counts: dict[str, int] = {}
    for key, value in items:
        counts.update(nonfinite_tensors(value, f"{prefix}.{key}" if prefix else str(key)))
    return counts


def require_finite_weights(state: Any, source: str) -> None:
    """Refuse a state dict with NaN/inf weights, naming the first tensors that hold them."""
    counts = nonfinite_tensors(state)
    if counts:
        shown = dict(list(counts.items())[:3])
        more = f" and {len(counts) - 3} more tensors" if len(counts) > 3 else ""
        raise NonFiniteError(f"{source} holds non-finite weights: {describe_counts(shown)}{more}")


def check_losses(losses: Mapping[str, Any], where: str) -> None:
    """The loss guard: every float a training step reports must be finite.

    A NaN loss means the step has already written NaN into the weights, so the caller must
    stop without saving them."""
    bad = {name: value for name, value in losses.items()
           if isinstance(value, float) and not math.isfinite(value)}
    if bad:
        listed = ", ".join(f"{name} = {value}" for name, value in bad.items())
        raise NonFiniteError(f"{where}: non-finite loss ({listed})")
