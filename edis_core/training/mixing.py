"""The batch mixer: one explicit object for how an agent batch is composed.

Offline phase: the whole batch from the offline dataset. Online phase, one rule for every
`--synthetic` mode, so that the three modes are compared like for like: a share
`1 − offline_ratio` of each batch comes from online replay, always; the rest is the prior-data
share. Synthetic rows replace offline rows inside that share: a fraction ρ of the batch from
the synthetic table (as far as it holds rows and its draw credit allows: SyntheticTable), and
offline rows for the remainder. With ρ = offline_ratio (the defaults, 0.5 and 0.5) an EDIS
batch is half generated, half online, where the base agent's is half offline, half online
(EDIS.md §7: generated data stands in for the stale offline data).
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


def prior_share(batch_size: int, offline_ratio: float, online_rows: int) -> int:
    """Rows of a batch that do not come from online replay (all of them while it is empty)."""
    return batch_size if online_rows == 0 else round(offline_ratio * batch_size)


def compose(batch_size: int, synthetic: int, offline_ratio: float,
            online_rows: int) -> BatchComposition:
    """`synthetic` rows (at most the prior-data share) replace as many offline rows."""
    prior = prior_share(batch_size, offline_ratio, online_rows)
    if synthetic > prior:
        raise ValueError(f"{synthetic} synthetic rows do not fit in a prior-data share of "
                         f"{prior} rows")
    return BatchComposition(offline=prior - synthetic, online=batch_size - prior,
                            synthetic=synthetic)


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

    def composition(self) -> BatchComposition:
        """The next online batch's make-up, with as many synthetic rows as the table allows now."""
        prior = prior_share(self.batch_size, self.offline_ratio, len(self.online))
        wanted = min(round(self.synthetic_ratio * self.batch_size), prior)
        return compose(self.batch_size, self.synthetic.allowance(wanted), self.offline_ratio,
                       len(self.online))

    def sample_online(self, rng: np.random.Generator) -> Transitions:
        mix = self.composition()
        parts = [self.offline.take(rng.integers(0, len(self.offline), mix.offline))]
        if mix.online:
            parts.append(self.online.sample(mix.online, rng))
        if mix.synthetic:
            parts.append(self.synthetic.sample(mix.synthetic, rng))
        return Transitions.concatenate(parts)
