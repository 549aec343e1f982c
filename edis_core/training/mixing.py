"""The batch mixer: one explicit object for how an agent batch is composed.

Offline phase: the whole batch from the offline dataset. Online phase, each agent's
fine-tuning rule as its reference runs it (`online_batch` in the agent's config):

- "uniform" (CORL's IQL): rows drawn uniformly from offline ∪ online replay, so the number
  of online rows is Binomial(B, n_on / (n_on + n_off)): ~9% of a batch after 10k online
  steps on 100k offline rows;
- "fixed" (CORL's Cal-QL): round((1 − offline_ratio)·B) online rows from the first online
  step.

The rest of the batch is offline-sourced. Synthetic rows replace a share ρ
(`schedule.ratio`) of those offline-sourced rows, as far as the synthetic table holds rows
and its draw credit allows (SyntheticTable), offline rows filling in the remainder. The
online share is therefore the same in every `--synthetic` mode, and ρ = 1 puts generated
data wherever the base agent would replay offline data (docs/algorithm.md §7: generated data stands
in for the stale offline data).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from edis_core.buffers import ReplayBuffer
from edis_core.training.synthetic_table import SyntheticTable
from edis_core.transitions import Transitions

OnlineBatch = Literal["uniform", "fixed"]


@dataclass(frozen=True)
class BatchComposition:
    offline: int
    online: int
    synthetic: int


def online_rows(batch_size: int, rule: OnlineBatch, offline_ratio: float, n_online: int,
                n_offline: int, rng: np.random.Generator) -> int:
    """Rows of the next batch drawn from online replay (none while it is empty)."""
    if n_online == 0:
        return 0
    if rule == "fixed":
        return batch_size - round(offline_ratio * batch_size)
    return int(rng.binomial(batch_size, n_online / (n_online + n_offline)))


def compose(batch_size: int, online: int, synthetic: int) -> BatchComposition:
    """`synthetic` rows (at most the offline-sourced share) replace as many offline rows."""
    offline_sourced = batch_size - online
    if not 0 <= synthetic <= offline_sourced:
        raise ValueError(f"{synthetic} synthetic rows do not fit in an offline-sourced share "
                         f"of {offline_sourced} rows")
    return BatchComposition(offline=offline_sourced - synthetic, online=online,
                            synthetic=synthetic)


class BatchMixer:
    def __init__(self, offline: Transitions, online: ReplayBuffer, synthetic: SyntheticTable,
                 batch_size: int, rule: OnlineBatch, offline_ratio: float,
                 synthetic_ratio: float):
        self.offline = offline
        self.online = online
        self.synthetic = synthetic
        self.batch_size = batch_size
        self.rule = rule
        self.offline_ratio = offline_ratio
        self.synthetic_ratio = synthetic_ratio

    def sample_offline(self, rng: np.random.Generator) -> Transitions:
        return self.offline.take(rng.integers(0, len(self.offline), self.batch_size))

    def composition(self, rng: np.random.Generator) -> BatchComposition:
        """The next online batch's make-up, with as many synthetic rows as the table allows."""
        online = online_rows(self.batch_size, self.rule, self.offline_ratio, len(self.online),
                             len(self.offline), rng)
        wanted = round(self.synthetic_ratio * (self.batch_size - online))
        return compose(self.batch_size, online, self.synthetic.allowance(wanted))

    def sample_online(self, rng: np.random.Generator) -> Transitions:
        mix = self.composition(rng)
        parts = [self.offline.take(rng.integers(0, len(self.offline), mix.offline))]
        if mix.online:
            parts.append(self.online.sample(mix.online, rng))
        if mix.synthetic:
            parts.append(self.synthetic.sample(mix.synthetic, rng))
        return Transitions.concatenate(parts)
