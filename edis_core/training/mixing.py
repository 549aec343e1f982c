"""The batch mixer: one explicit object for how an agent batch is composed.

Offline phase: the whole batch from the offline dataset. Online phase (EDIS.md §7):
a fraction ρ from the synthetic table (as far as it holds rows and its draw credit allows:
SyntheticTable), and of the real rest a fraction `offline_ratio` from the offline dataset
and the remainder from online replay.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edis_core.buffers import ReplayBuffer
from edis_core.training.synthetic_table import SyntheticTable
from edis_core.transitions import Transitions


@dataclass(frozen=True)
class BatchComposition:
    offline: int
    online: int
    synthetic: int


def compose(batch_size: int, synthetic: int, offline_ratio: float,
            online_rows: int) -> BatchComposition:
    """`synthetic` rows from the table, the rest real: offline and online by offline_ratio."""
    real = batch_size - synthetic
    offline = real if online_rows == 0 else round(offline_ratio * real)
    return BatchComposition(offline=offline, online=real - offline, synthetic=synthetic)


class BatchMixer:
    def __init__(self, offline: Transitions, online: ReplayBuffer, synthetic: SyntheticTable,
                 batch_size: int, synthetic_ratio: float, offline_ratio: float):
        self.offline = offline
        self.online = online
        self.synthetic = synthetic
        self.batch_size = batch_size
        self.synthetic_ratio = synthetic_ratio
        self.offline_ratio = offline_ratio

    def sample_offline(self, rng: np.random.Generator) -> Transitions:
        return self.offline.take(rng.integers(0, len(self.offline), self.batch_size))

    def sample_online(self, rng: np.random.Generator) -> Transitions:
        wanted = round(self.synthetic_ratio * self.batch_size)
        mix = compose(self.batch_size, self.synthetic.allowance(wanted), self.offline_ratio,
                      len(self.online))
        parts = [self.offline.take(rng.integers(0, len(self.offline), mix.offline))]
        if mix.online:
            parts.append(self.online.sample(mix.online, rng))
        if mix.synthetic:
            parts.append(self.synthetic.sample(mix.synthetic, rng))
        return Transitions.concatenate(parts)
