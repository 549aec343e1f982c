"""Whether bfloat16 matmuls pay on this machine.

A CPU with AMX or AVX-512 BF16 multiplies bfloat16 several times faster than float32 (the
bfloat16 options gave Cal-QL updates 1.9× and diffusion training 1.9× on one), but on a CPU
with AVX2 alone torch takes a slow path: 0.7-2 against 42-84 GFLOP/s from 64³ to 512³ with
one thread, on an AVX2 EPYC here (`python -m edis_core.precision` prints this machine's
ratio at 128³: 0.035-0.05 there). There a bfloat16 option makes a run tens of times slower,
so the options say so when they start. The benchmarks decide from their own, longer
measurement at the networks' size (benchmarks/machine_peak.py: `bf16_pays`).
"""

from __future__ import annotations

import functools
import time
import warnings

import torch

PROBE_SIZE = 128
"""n of the n×n·n×n matmuls timed: large enough to reach the fast kernels, small enough that
the slow bfloat16 path costs a few milliseconds."""


def _seconds_per_matmul(dtype: torch.dtype, repeats: int = 5) -> float:
    a = torch.randn(PROBE_SIZE, PROBE_SIZE).to(dtype)
    b = torch.randn(PROBE_SIZE, PROBE_SIZE).to(dtype)
    out = torch.mm(a, b)   # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return best


@functools.cache
def cpu_bf16_speedup() -> float:
    """float32 time ÷ bfloat16 time of one CPU matmul (> 1: bfloat16 is faster), with one
    thread: whether the CPU has bfloat16 units, not how busy the cores are (a matmul split
    over threads waits for a descheduled one on a loaded machine). Measured once per
    process, in a few milliseconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _seconds_per_matmul(torch.float32) / _seconds_per_matmul(torch.bfloat16)
    finally:
        torch.set_num_threads(threads)


def bf16_pays(device: str | torch.device = "cpu") -> bool:
    """bfloat16 matmuls are at least as fast as float32 ones on `device` (GPUs: assumed;
    "auto": CUDA when available, as the trainer resolves it)."""
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device).type != "cpu" or cpu_bf16_speedup() >= 1.0


def warn_if_slow(options: list[str], device: str | torch.device) -> None:
    """Warn when bfloat16 `options` (their config names, those switched on) would run slower
    than float32 on `device`; a valid choice, so a warning and not an error."""
    if options and not bf16_pays(device):
        warnings.warn(
            f"{', '.join(options)}: bfloat16 matmuls run at {cpu_bf16_speedup():.2g}× the "
            f"speed of float32 on this CPU ({torch.backends.cpu.get_cpu_capability()}, no "
            "bfloat16 units), so this run is much slower than in float32; switch them off "
            "here (=false)", stacklevel=2)


if __name__ == "__main__":
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, one thread: "
          f"bfloat16 matmul {cpu_bf16_speedup():.3g}× "
          f"float32 at {PROBE_SIZE}³ ({'pays' if bf16_pays() else 'does not pay'})")
