"""Gradient updates per second of IQL and Cal-QL, side by side with CORL (docs/speed.md).

Random batch-256 tensors with Hopper dimensions (obs 11, act 3), default networks, CPU, at 1
and 2 torch threads: the setting in which the CORL figures were measured on these machines.
`calql-bf16` is Cal-QL with bfloat16 hidden layers in its critics (calql.critic_bf16).
Each row also gives the update's matmul FLOPs, the rate they are done at, and that rate's
share of this machine's float32 matmul rate measured in the same run, at the networks' size
(256^3) and at a large one (2048^3): benchmarks/machine_peak.py.

    python benchmarks/bench_agents.py [--quick] [--threads 1,2] [--agents iql,calql,calql-bf16]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from bench_results import write_results
from machine_peak import bf16_pays, flops, peaks

from edis_core.agents import AGENT_CONFIGS, make_agent
from edis_core.transitions import Batch

OBS_DIM, ACT_DIM = 11, 3
# CORL updates/s measured on this kind of machine (docs/speed.md), keyed by (agent, threads).
REFERENCE = {("iql", 1): 100.0, ("iql", 2): 152.0, ("calql", 1): 9.3, ("calql", 2): 15.4}
TARGET = {("iql", 2): 230.0, ("calql", 2): 46.0, ("calql-bf16", 2): 46.0}
VARIANTS = {"iql": ("iql", {}), "calql": ("calql", {}),
            "calql-bf16": ("calql", {"critic_bf16": True})}


def random_batches(count: int, batch_size: int, device: torch.device) -> list[Batch]:
    def batch() -> Batch:
        return Batch(observations=torch.randn(batch_size, OBS_DIM, device=device),
                     actions=torch.rand(batch_size, ACT_DIM, device=device) * 2 - 1,
                     rewards=torch.randn(batch_size, device=device),
                     next_observations=torch.randn(batch_size, OBS_DIM, device=device),
                     terminals=(torch.rand(batch_size, device=device) < 0.01).float(),
                     mc_returns=torch.randn(batch_size, device=device) * 10)
    return [batch() for _ in range(count)]


def updates_per_second(name: str, threads: int, batch_size: int, warmup: int, seconds: float,
                       repeats: int, device: torch.device) -> tuple[list[float], int]:
    """Rates of `repeats` timed windows of about `seconds` each, after `warmup` updates, and
    the matmul FLOPs of one update."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    agent_name, options = VARIANTS[name]
    agent = make_agent(agent_name, AGENT_CONFIGS[agent_name](**options), OBS_DIM, ACT_DIM,
                       device)
    batches = random_batches(8, batch_size, device)
    for i in range(warmup):
        agent.update(batches[i % len(batches)])
    rates = []
    for _ in range(repeats):
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            agent.update(batches[done % len(batches)])   # returns floats: synchronised
            done += 1
        rates.append(done / (time.perf_counter() - start))
    return rates, flops(lambda: agent.update(batches[0]))


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def tune_malloc() -> None:
    """Keep freed blocks in glibc's heap instead of returning them to the OS.

    Without this, every large activation is a fresh mmap and its pages fault in again on each
    update. Process-wide; an entry point's choice (like LD_PRELOAD=jemalloc), so off by default.
    """
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 * 2**20)    # glibc's maximum
    libc.mallopt(m_trim_threshold, 2**30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short windows, for a smoke run")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--agents", default="iql,calql,calql-bf16",
                        help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tune-malloc", action="store_true",
                        help="keep freed memory in the heap (see tune_malloc)")
    parser.add_argument("--out", type=Path, default=Path("results/bench_agents.json"))
    args = parser.parse_args()
    unknown = set(args.agents.split(",")) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown agents {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    if args.tune_malloc:
        tune_malloc()
    warmup, seconds, repeats = (5, 1.0, 1) if args.quick else (30, 4.0, 3)
    device = torch.device(args.device)
    load_before = os.getloadavg()[0]
    if load_before > 0.5:
        print(f"warning: load average {load_before:.2f}: other processes share the cores, "
              "so these rates are low and noisy")

    rows = []
    header = (f"{'agent':<10} {'threads':>7} {'updates/s':>10} {'CORL':>7} {'target':>7} "
              f"{'ratio vs CORL':>13} {'GFLOP/s':>8} {'÷ 256^3':>8} {'÷ 2048^3':>9}  "
              "meets target")
    print(header)
    print("-" * len(header))
    thread_counts = [int(t) for t in args.threads.split(",")]
    peak = {threads: peaks(threads, seconds / 2) for threads in thread_counts}
    for name in args.agents.split(","):
        for threads in thread_counts:
            if VARIANTS[name][1].get("critic_bf16") and not bf16_pays(peak[threads]):
                print(f"{name:<10} {threads:>7} left out: bfloat16 matmuls ran at "
                      f"{peak[threads]['bfloat16']['256^3']:.1f} GFLOP/s against float32's "
                      f"{peak[threads]['float32']['256^3']:.1f} on this CPU")
                continue
            rates, update_flops = updates_per_second(name, threads, args.batch_size, warmup,
                                                     seconds, repeats, device)
            rate = statistics.median(rates)
            achieved = rate * update_flops / 1e9
            share = {size: achieved / gflops for size, gflops in peak[threads]["float32"].items()}
            corl_name = VARIANTS[name][0]
            reference, target = REFERENCE.get((corl_name, threads)), TARGET.get((name, threads))
            ratio = rate / reference if reference else None
            meets = None if target is None else rate >= target
            rows.append({"agent": name, "threads": threads, "updates_per_s": rate,
                         "windows": rates, "corl_updates_per_s": reference, "target": target,
                         "ratio_vs_corl": ratio, "meets_target": meets,
                         "matmul_flops_per_update": update_flops, "achieved_gflops": achieved,
                         "share_of_float32_matmul": share})
            print(f"{name:<10} {threads:>7} {rate:>10.1f} {_cell(reference, '.1f'):>7} "
                  f"{_cell(target, '.0f'):>7} {_cell(ratio, '.2f'):>13} {achieved:>8.1f} "
                  f"{share['256^3']:>8.2f} {share['2048^3']:>9.2f}  "
                  f"{'-' if meets is None else ('yes' if meets else 'NO')}")

    write_results(args.out, {
        "benchmark": "agent updates/s, random batches, Hopper dims",
        "batch_size": args.batch_size, "obs_dim": OBS_DIM, "act_dim": ACT_DIM,
        "device": str(device), "quick": args.quick, "tune_malloc": args.tune_malloc,
        "load_average_before": load_before, "load_average_after": os.getloadavg()[0],
        "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
        "matmul_gflops_by_threads": peak, "rows": rows})


if __name__ == "__main__":
    main()
