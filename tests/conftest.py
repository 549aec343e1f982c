"""Shared fixtures: a private Minari datasets folder with one small Hopper dataset."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

HOPPER_DATASET = "test/hopper-random-v0"


@pytest.fixture(scope="session")
def minari_root(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("minari")
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    yield str(root)
    if previous is None:
        os.environ.pop("MINARI_DATASETS_PATH", None)
    else:
        os.environ["MINARI_DATASETS_PATH"] = previous


@pytest.fixture(scope="session")
def hopper_dataset(minari_root) -> str:
    from edis_core.data.minari_io import make_dataset

    make_dataset("Hopper-v5", None, steps=3_000, dataset_id=HOPPER_DATASET, seed=0,
                 progress=False)
    return HOPPER_DATASET


@pytest.fixture(autouse=True)
def one_thread():
    """Small networks run fastest on one thread, and one thread is immune to oversubscription
    when other processes share the two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
