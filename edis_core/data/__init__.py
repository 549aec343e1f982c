"""Offline data: Minari datasets as flat transitions, and D4RL normalised scores."""

from edis_core.data.minari_io import (
    DatasetError,
    OfflineDataset,
    check_compatible,
    dataset_info,
    datasets_root,
    load_dataset,
    make_dataset,
)
from edis_core.data.scores import normalized_score, reference_returns

__all__ = [
    "DatasetError",
    "OfflineDataset",
    "check_compatible",
    "dataset_info",
    "datasets_root",
    "load_dataset",
    "make_dataset",
    "normalized_score",
    "reference_returns",
]
