"""Contrastive energy prediction: the InfoNCE loss of EDIS.md §5."""

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
    """InfoNCE of one energy on G groups, every member of group g noised to the same σ_g.

    positives: (G, d); negatives: (G, K, d); σ: (G,). Returns the loss and the fraction of
    groups whose positive has the lowest energy (a diagnostic; 1/(K+1) means no signal).
    """
    groups, k, d = negatives.shape
    rows = torch.cat([positives[:, None], negatives], dim=1).reshape(groups * (k + 1), d)
    energies = energy(rows, sigma.repeat_interleave(k + 1)).reshape(groups, k + 1)
    loss = infonce_loss(energies[:, 0], energies[:, 1:])
    accuracy = (energies.argmin(1) == 0).float().mean()
    return loss, accuracy
