"""Diffusion sampling and training throughput, unguided vs EDIS-guided, side by side.

Measured like docs/speed.md: Hopper dimensions (obs 11, act 3), random data, batch 1000 for
sampling and 256 for training, torch's default threads. Reports synthetic transitions/s
(unguided, guided with the default energies and guidance at every σ, their ratio) for
float32 and bfloat16 sampling, diffusion training steps/s, the energy-training cost of one
refresh in denoiser sample-evaluations, and each workload's matmul FLOPs and their rate's
share of this machine's matmul rate of the same dtype, measured in the same run
(benchmarks/machine_peak.py).

    python benchmarks/bench_sampling.py [--quick] [--paper]

Writes results/bench_sampling.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import time

import numpy as np
import torch
from bench_results import write_results
from machine_peak import bf16_pays, flops, peaks

from edis_core.diffusion.prior import DiffusionConfig
from edis_core.generator import SyntheticGenerator
from edis_core.generator_config import EDISConfig
from edis_core.transitions import Transitions

OBS_DIM, ACT_DIM = 11, 3
SAMPLE_BATCH, TRAIN_BATCH = 1000, 256
# docs/speed.md: the EDIS reference spends ~92M denoiser sample-evaluations per refresh.
REFERENCE_REFRESH_EVALUATIONS = 92e6
TARGETS = {
    "small": {"unguided_per_s": 9700, "guided_ratio": 0.5, "train_steps_per_s": 320},
    "paper": {"unguided_per_s": 90, "guided_ratio": 0.5, "train_steps_per_s": 18},
}


def random_transitions(n: int, rng: np.random.Generator) -> Transitions:
    obs = rng.standard_normal((n, OBS_DIM)).astype(np.float32)
    return Transitions(
        observations=obs,
        actions=rng.uniform(-1, 1, (n, ACT_DIM)).astype(np.float32),
        rewards=rng.standard_normal(n).astype(np.float32),
        next_observations=obs + 0.1 * rng.standard_normal((n, OBS_DIM)).astype(np.float32),
        terminals=(rng.random(n) < 0.05).astype(np.float32),
        timeouts=np.zeros(n, np.float32),
        mc_returns=np.full(n, -np.inf, np.float32),
    )


def timed(fn, seconds: float, min_reps: int = 1) -> float:
    """Calls per second of fn, best of repeated timing windows (the machine is shared)."""
    fn()  # warm-up
    best, reps, start = 0.0, 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        best = max(best, 1.0 / (time.perf_counter() - t0))
        reps += 1
    return best


def random_policy(observations: torch.Tensor) -> torch.Tensor:
    return torch.tanh(observations[:, :ACT_DIM])


def machine_share(rates: dict[str, float], work: dict[str, int],
                  peak: dict[str, float]) -> dict[str, dict[str, float]]:
    """Per workload: the GFLOP/s its calls per second do, and their share of each matmul rate
    of `peak` (this dtype's, measured in this run)."""
    out = {}
    for key, rate in rates.items():
        achieved = rate * work[key] / 1e9
        out[key] = {"gflops": achieved, "matmul_flops_per_call": work[key],
                    **{f"share_of_{size}": achieved / gflops for size, gflops in peak.items()}}
    return out


def precisions(peak: dict[str, dict[str, float]]) -> tuple[str, ...]:
    """bfloat16 only where it pays on this machine: its rows would take hours otherwise."""
    return ("float32", "bfloat16") if bf16_pays(peak) else ("float32",)


def bench_size(name: str, diffusion: DiffusionConfig, seconds: float,
               peak: dict[str, dict[str, float]]) -> dict:
    rng = np.random.default_rng(0)
    data = random_transitions(20_000, rng)
    row: dict = {
        "config": {
            k: v
            for k, v in dataclasses.asdict(diffusion).items()
            if k in ("width", "blocks", "sampling_steps", "s_churn")
        },
        "evaluations_per_sample": diffusion.evaluations_per_sample,
    }
    for precision in precisions(peak):
        config = EDISConfig(
            diffusion=dataclasses.replace(
                diffusion, sample_bf16=precision == "bfloat16", train_bf16=precision == "bfloat16"
            ),
            generate_batch=SAMPLE_BATCH,
        )
        gen = SyntheticGenerator(OBS_DIM, ACT_DIM, config, seed=0)
        gen.train_prior(data, 1)
        x = gen.prior.normalizer.normalize(
            torch.as_tensor(gen.layout.to_array(data.take(slice(0, 4096))))
        )

        def train_step(gen=gen, x=x) -> None:
            gen.prior.train_step(x[torch.randint(len(x), (TRAIN_BATCH,))])

        refresh_s = None
        if name == "small":  # a real refresh; at paper size only its cost is counted
            t0 = time.perf_counter()
            gen.train_energies(data, data, random_policy, steps=config.energy_steps)
            refresh_s = time.perf_counter() - t0
        gen.energies_trained = True  # the guided timing does not depend on the weights
        calls = {
            "train_step": train_step,
            "unguided": lambda gen=gen: gen.generate(SAMPLE_BATCH, guided=False),
            "guided": lambda gen=gen: gen.generate(SAMPLE_BATCH, guided=True),
        }
        rates = {"unguided": timed(calls["unguided"], seconds),
                 "guided": timed(calls["guided"], seconds),
                 "train_step": timed(train_step, seconds, min_reps=5)}
        row[precision] = {
            "unguided_per_s": rates["unguided"] * SAMPLE_BATCH,
            "guided_per_s": rates["guided"] * SAMPLE_BATCH,
            "guided_ratio": rates["guided"] / rates["unguided"],
            "train_steps_per_s": rates["train_step"],
            "energy_refresh_s": refresh_s,
            "machine_share": machine_share(rates, {k: flops(f) for k, f in calls.items()},
                                           peak[precision]),
        }
        row["refresh_denoiser_evaluations"] = gen.refresh_evaluations()
    row["refresh_vs_reference"] = (
        row["refresh_denoiser_evaluations"] / REFERENCE_REFRESH_EVALUATIONS
    )
    row["targets"] = TARGETS[name]
    return row


def print_table(results: dict) -> None:
    header = (
        f"{'size':6} {'precision':9} {'unguided/s':>11} {'guided/s':>10} {'ratio':>6} "
        f"{'train/s':>8}  ÷ 2048^3 matmul rate: {'unguided':>8} {'guided':>6} {'train':>5}"
    )
    print(header)
    print("-" * len(header))
    for name, row in results["sizes"].items():
        for precision in ("float32", "bfloat16"):
            if precision not in row:
                continue
            r = row[precision]
            share = {k: v["share_of_2048^3"] for k, v in r["machine_share"].items()}
            print(
                f"{name:6} {precision:9} {r['unguided_per_s']:11.0f} {r['guided_per_s']:10.0f} "
                f"{r['guided_ratio']:6.2f} {r['train_steps_per_s']:8.1f}   "
                f"{'':>21}{share['unguided']:>8.2f} {share['guided']:>6.2f} "
                f"{share['train_step']:>5.2f}"
            )
        t = row["targets"]
        print(
            f"{name:6} {'target':9} {t['unguided_per_s']:11.0f} {'':>10} "
            f"{t['guided_ratio']:6.2f} {t['train_steps_per_s']:8.1f}"
        )
        print(
            f"{name:6} energy refresh: {row['refresh_denoiser_evaluations']:.3g} denoiser "
            f"evaluations = {row['refresh_vs_reference']:.4f} x reference (target <= 0.05)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short timing windows")
    parser.add_argument("--paper", action="store_true", help="also the reference size")
    parser.add_argument("--out", default="results/bench_sampling.json")
    args = parser.parse_args()
    seconds = 1.0 if args.quick else 5.0
    sizes = {"small": DiffusionConfig()}
    if args.paper:
        sizes["paper"] = DiffusionConfig.paper()
    peak = peaks(torch.get_num_threads(), seconds / 2)
    if "bfloat16" not in precisions(peak):
        print(f"bfloat16 rows left out: its matmuls ran at {peak['bfloat16']['256^3']:.1f} "
              f"GFLOP/s against float32's {peak['float32']['256^3']:.1f} on this CPU")
    results = {
        "matmul_gflops": peak,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "sizes": {name: bench_size(name, cfg, seconds, peak) for name, cfg in sizes.items()},
    }
    print_table(results)
    write_results(args.out, results)


if __name__ == "__main__":
    main()
