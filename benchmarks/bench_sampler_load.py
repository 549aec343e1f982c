"""Load and soak of one sampler: 8 concurrent stream consumers of demo-size guided batches
(Hopper dimensions, 256 × 3 denoiser, 1000 rows a batch) for 5 minutes, the energies
published anew every 5 seconds. Reports each consumer's share of the batches (fair: within
±25% of the mean), the largest queue depth GetStatus showed against the queue bound, and
the sampler's resident memory over the run (flat: its last minute against its second).

    python benchmarks/bench_sampler_load.py [--seconds 300] [--consumers 8]

Writes results/bench_sampler_load.json.
"""

from __future__ import annotations

import argparse

from bench_results import RESULTS, write_results
from bench_sampler_service import make_generator

from edis_core.diffusion.prior import DiffusionConfig
from services.sampler.client import SamplerClient
from services.sampler.load import run_load
from services.sampler.process import SamplerProcess
from services.sampler.weights import PRIOR, model_names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--consumers", type=int, default=8)
    parser.add_argument("--publish-every", type=float, default=5.0)
    parser.add_argument("--queue-batches", type=int, default=4)
    args = parser.parse_args()
    generator = make_generator(DiffusionConfig())
    models = model_names(generator)
    energies = [m for m in models if m != PRIOR]
    with SamplerProcess("--queue-batches", str(args.queue_batches)) as sampler, \
            SamplerClient(sampler.address) as client:
        client.publish(generator, dict.fromkeys(models, 1))
        result = run_load(sampler.address, sampler.pid, consumers=args.consumers,
                          seconds=args.seconds, batch_size=1000, guided=True,
                          publish=lambda v: client.publish(generator,
                                                           dict.fromkeys(energies, v)),
                          publish_every=args.publish_every)
    window = min(60.0, args.seconds / 5)
    report = {**result.as_dict(), "rss_growth_bytes": result.rss_growth(window),
              "window_seconds": window}
    write_results(RESULTS / "bench_sampler_load.json", report)
    shares = ", ".join(f"{s:.2f}" for s in result.shares)
    rss = [r for _, r in result.rss_bytes]
    print(f"{args.consumers} consumers, {args.seconds:.0f} s, {result.publishes} publishes: "
          f"batches {result.batches} (shares {shares}; fair within ±25%: "
          f"{all(0.75 <= s <= 1.25 for s in result.shares)}); largest queue depth "
          f"{max(result.queue_depths, default=0)} of {result.queue_capacity}; RSS "
          f"{rss[0] / 2**20:.0f} → {rss[-1] / 2**20:.0f} MiB (last {window:.0f} s − early "
          f"{window:.0f} s: {report['rss_growth_bytes'] / 2**20:+.1f} MiB)")


if __name__ == "__main__":
    main()
