"""This machine's dense matmul rate, measured in the same run as the workload that is
reported as a share of it, and the matmul FLOPs a workload does (torch's FlopCounterMode:
every aten matmul of the forward and backward passes, the hand-written ones included).

Absolute rates on shared machines drift between runs; a workload's share of the matmul rate
measured minutes apart in one process does not, or much less."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

SIZES = {"256^3": (256, 256, 256), "2048^3": (2048, 2048, 2048)}
"""(n, k, m): the networks' own size (batch 256 × 256 units) and a large one, near peak."""


def matmul_gflops(n: int, k: int, m: int, dtype: torch.dtype, threads: int,
                  seconds: float = 1.0) -> float:
    """GFLOP/s of (n×k)·(k×m) matmuls at `threads` torch threads (the best of 3 windows)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, k, dtype=dtype), torch.randn(k, m, dtype=dtype)
    out = torch.empty(n, m, dtype=dtype)
    torch.mm(a, b, out=out)   # warm-up
    best = 0.0
    for _ in range(3):
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 3:
            torch.mm(a, b, out=out)
            done += 1
        best = max(best, 2 * n * k * m * done / (time.perf_counter() - start) / 1e9)
    return best


def peaks(threads: int, seconds: float = 1.0) -> dict[str, dict[str, float]]:
    """GFLOP/s by dtype and size, e.g. peaks(1)["float32"]["2048^3"]. Where bfloat16 is
    slower than float32 at 256^3 (no bfloat16 units: one 2048^3 matmul would take ~20 s),
    its entry holds 256^3 alone."""
    rates = {str(dtype).removeprefix("torch."): {"256^3": matmul_gflops(*SIZES["256^3"], dtype,
                                                                        threads, seconds)}
             for dtype in (torch.float32, torch.bfloat16)}
    for dtype, rate in rates.items():
        if dtype == "float32" or bf16_pays(rates):
            rate["2048^3"] = matmul_gflops(*SIZES["2048^3"], getattr(torch, dtype), threads,
                                           seconds)
    return rates


def bf16_pays(peak: dict[str, dict[str, float]]) -> bool:
    """`peaks()` measured bfloat16 matmuls at least as fast as float32 ones at the networks'
    size: a CPU without bfloat16 units runs them tens of times slower
    (edis_core/precision.py), so bfloat16 workloads are left out there."""
    return peak["bfloat16"]["256^3"] >= peak["float32"]["256^3"]


def flops(step: Callable[[], object]) -> int:
    """Matmul FLOPs of one call of `step`."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()
