"""Contrastive energy prediction: the InfoNCE loss of docs/algorithm.md §5."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from edis_core.energy.networks import EnergyNet


def infonce_loss(positive_energy: torch.Tensor, negative_energy: torch.Tensor) -> torch.Tensor:
    """Mean over G groups of −log( e^{−E⁺} / (e^{−E⁺} + Σ_k e^{−E⁻_k}) ).

    positive_energy: (G,); negative_energy: (G, K), row g holding the K negatives of group g.
    Cross-entropy over the logits −E with the positive at index 0. Its minimiser is
    E = −log μ/ν + C, the density ratio of positives μ to negatives ν.
    """
    if negative_energy.ndim != 2 or negative_energy.shape[0] != positive_energy.shape[0]:
        raise ValueError(
            f"expected (G,) and (G, K) energies, got {tuple(positive_energy.shape)}"
            f" and {tuple(negative_energy.shape)}"
        )
    logits = -torch.cat([positive_energy[:, None], negative_energy], dim=1)
    target = torch.zeros(len(logits), dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target)


def contrastive_loss(
    energy: EnergyNet, positives: torch.Tensor, negatives: torch.Tensor, sigma: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE of one energy over L noise levels, every row of level l noised to σ_l.

    positives: (L, P, d); negatives: (L, K, d); σ: (L,). Each positive forms a group with
    the K negatives of its level, which the level's P groups share: P·K comparisons for P + K
    evaluations of the net, and each group is still one positive against K independent
    negatives, so the minimiser is the density ratio of §5. Returns the loss and the
    fraction of groups whose positive has the lowest energy (1/(K+1): no signal).
    """
    levels, p, d = positives.shape
    if negatives.ndim != 3 or negatives.shape[0] != levels or negatives.shape[2] != d:
        raise ValueError(
            f"expected (L, P, d) positives and (L, K, d) negatives, got "
            f"{tuple(positives.shape)} and {tuple(negatives.shape)}"
        )
    k = negatives.shape[1]
    rows = torch.cat([positives, negatives], dim=1).reshape(levels * (p + k), d)
    energies = energy(rows, sigma.repeat_interleave(p + k)).reshape(levels, p + k)
    positive = energies[:, :p].reshape(levels * p)
    negative = energies[:, None, p:].expand(levels, p, k).reshape(levels * p, k)
    loss = infonce_loss(positive, negative)
    accuracy = (positive < negative.min(dim=1).values).float().mean()
    return loss, accuracy
