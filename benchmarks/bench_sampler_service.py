"""Synthetic transitions/s received over gRPC from `edis sampler serve` against in-process
generation with the same model, steps and threads, side by side in one run; and the
latency of publishing a demo-size and a paper-size model.

Hopper dimensions (obs 11, act 3), batches of 1000 rows, as in bench_sampling.py. The two
throughputs are measured one after the other (never at once: they would share the cores),
each as transitions delivered over a window after a warm-up batch; the gRPC figure counts
rows as the consumer receives them, ready to insert, so it includes generation in the
server, serialisation, transport and assembly.

    python benchmarks/bench_sampler_service.py [--seconds S] [--threads T] [--paper]

Writes results/bench_sampler_service.json.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable, Iterator

import torch
from bench_results import write_results
from bench_sampling import ACT_DIM, OBS_DIM, SAMPLE_BATCH, random_transitions
from numpy.random import default_rng

from edis_core.diffusion.prior import DiffusionConfig
from edis_core.generator import SyntheticGenerator
from edis_core.generator_config import EDISConfig
from services.sampler.client import SamplerClient
from services.sampler.process import SamplerProcess
from services.sampler.weights import model_names

TARGET_RATIO = 0.9  # docs/speed.md: gRPC ÷ in-process, same model


def make_generator(diffusion: DiffusionConfig) -> SyntheticGenerator:
    """A generator of the given size with a fitted normaliser; the energies are marked
    trained (throughput does not depend on the weights' values)."""
    generator = SyntheticGenerator(OBS_DIM, ACT_DIM, EDISConfig(diffusion=diffusion,
                                                                generate_batch=SAMPLE_BATCH))
    generator.train_prior(random_transitions(4096, default_rng(0)), 1)
    generator.energies_trained = True
    return generator


def rate(batches: Iterator[int], seconds: float) -> float:
    """Rows per second delivered by `batches` (row counts) over a window, after one batch."""
    next(batches)
    rows, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        rows += next(batches)
    return rows / (time.perf_counter() - start)


def in_process(generator: SyntheticGenerator, guided: bool) -> Iterator[int]:
    while True:
        yield len(generator.generate(SAMPLE_BATCH, guided=guided))


def over_grpc(client: SamplerClient, guided: bool) -> Iterator[int]:
    stream = client.stream(SAMPLE_BATCH, guided=guided, consumer="bench")
    try:
        for batch in stream:
            yield len(batch)
    finally:
        stream.close()


def publish_seconds(publish: Callable[[int], object], repeats: int) -> float:
    times = []
    for version in range(repeats):
        start = time.perf_counter()
        publish(version)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_throughput(client: SamplerClient, generator: SyntheticGenerator,
                     seconds: float) -> dict:
    """In-process and gRPC rows/s; the sampler holds `generator`'s weights already."""
    row = {}
    for mode, guided in (("unguided", False), ("guided", True)):
        local = rate(in_process(generator, guided), seconds)
        remote = rate(over_grpc(client, guided), seconds)
        row[mode] = {"in_process_per_s": local, "grpc_per_s": remote, "ratio": remote / local}
    return row


def bench_publish(client: SamplerClient, generator: SyntheticGenerator, repeats: int) -> dict:
    """Median seconds of a publish of the prior alone and of every model, same spec (the
    first publish of a new spec also builds the model: reported apart). Leaves every model
    of `generator` loaded in the sampler."""
    models = model_names(generator)
    start = time.perf_counter()
    client.publish(generator, dict.fromkeys(models, 1))  # a new spec: versions start again
    first = time.perf_counter() - start
    version = 2

    def publish(names: list[str]) -> Callable[[int], object]:
        return lambda i: client.publish(generator, dict.fromkeys(names, version + i))

    prior = publish_seconds(publish(["prior"]), repeats)
    version += repeats
    every = publish_seconds(publish(models), repeats)
    parameters = sum(p.numel() for p in generator.prior.ema.model.parameters())
    return {"prior_parameters": parameters, "first_publish_s": first,
            "prior_publish_s": prior, "all_models_publish_s": every}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="timing window per figure")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads of the in-process generator and of the server")
    parser.add_argument("--paper", action="store_true",
                        help="also the paper-size throughput (slow on a CPU); the paper-size "
                             "publish latency is always measured")
    parser.add_argument("--repeats", type=int, default=5, help="publishes per latency figure")
    parser.add_argument("--out", default="results/bench_sampler_service.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = {"demo": DiffusionConfig(), "paper": DiffusionConfig.paper()}
    results: dict = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch": torch.__version__, "threads": args.threads},
        "batch_rows": SAMPLE_BATCH, "seconds": args.seconds, "sizes": {},
    }
    with SamplerProcess(threads=args.threads) as server, SamplerClient(server.address) as client:
        for name, diffusion in sizes.items():
            generator = make_generator(diffusion)
            row = {"publish": bench_publish(client, generator, args.repeats)}
            if name == "demo" or args.paper:
                row["throughput"] = bench_throughput(client, generator, args.seconds)
            results["sizes"][name] = row
    print_table(results)
    write_results(args.out, results)


def print_table(results: dict) -> None:
    print(f"threads {results['machine']['threads']}, batches of {results['batch_rows']} rows, "
          f"{results['seconds']:.0f} s windows")
    header = f"{'size':6} {'mode':9} {'in-process/s':>13} {'gRPC/s':>9} {'ratio':>6} {'target':>7}"
    print(header)
    print("-" * len(header))
    for name, row in results["sizes"].items():
        for mode, r in row.get("throughput", {}).items():
            print(f"{name:6} {mode:9} {r['in_process_per_s']:13.0f} {r['grpc_per_s']:9.0f} "
                  f"{r['ratio']:6.2f} {TARGET_RATIO:7.2f}")
    print()
    for name, row in results["sizes"].items():
        p = row["publish"]
        print(f"{name:6} publish ({p['prior_parameters'] / 1e6:.2f}M prior parameters): "
              f"prior {p['prior_publish_s'] * 1e3:.0f} ms, every model "
              f"{p['all_models_publish_s'] * 1e3:.0f} ms, first publish of the spec (builds "
              f"the model) {p['first_publish_s'] * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
