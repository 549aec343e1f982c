"""`edis sampler serve` and `edis sampler status`."""

from __future__ import annotations

import argparse
import json

from services.metrics.endpoint import add_metrics_arguments, metrics_endpoint
from services.sampler.options import ServeOptions
from services.sampler.security import (
    add_client_arguments,
    add_server_arguments,
    client_security,
    server_security,
)


def add_commands(commands: argparse._SubParsersAction) -> None:
    sampler = commands.add_parser(
        "sampler", help="the diffusion-sampler service (gRPC, protos/edis/sampler/v1)"
    ).add_subparsers(dest="sampler_command", required=True)

    serve = sampler.add_parser("serve", help="serve energy-guided synthetic batches over gRPC")
    serve.add_argument("--host", default=ServeOptions.host,
                       help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=ServeOptions.port,
                       help="port (default %(default)s; 0 = any free port, printed at start)")
    serve.add_argument("--device", default=ServeOptions.device, help="cpu, cuda or cuda:N")
    serve.add_argument("--threads", type=int, default=ServeOptions.threads,
                       help="torch threads (default %(default)s)")
    serve.add_argument("--queue-batches", type=int, default=ServeOptions.queue_batches,
                       help="batches generated ahead per stream (default %(default)s)")
    serve.add_argument("--seed", type=int, default=ServeOptions.seed,
                       help="seed of the sampler's RNG, set whenever a model is built")
    serve.add_argument("--from-run", metavar="RUN_DIR",
                       help="start with the generator of an `edis train` run's checkpoint")
    serve.add_argument("--max-consumers", type=int, default=ServeOptions.max_consumers)
    serve.add_argument("--max-batch-rows", type=int, default=ServeOptions.max_batch_rows)
    serve.add_argument("--max-publish-bytes", type=int, default=ServeOptions.max_publish_bytes)
    serve.add_argument("--max-parameters", type=int, default=ServeOptions.max_parameters)
    add_metrics_arguments(serve)
    add_server_arguments(serve)
    serve.set_defaults(func=cmd_serve)

    status = sampler.add_parser("status", help="print a sampler's GetStatus as JSON")
    status.add_argument("address", help="HOST:PORT, e.g. 127.0.0.1:50051")
    status.add_argument("--timeout", type=float, default=5.0,
                        help="seconds to wait for the sampler (default %(default)s)")
    add_client_arguments(status)
    status.set_defaults(func=cmd_status)


def cmd_serve(args: argparse.Namespace) -> int:
    from services.sampler.serve import run

    return run(ServeOptions(
        host=args.host, port=args.port, device=args.device, threads=args.threads,
        queue_batches=args.queue_batches, seed=args.seed, from_run=args.from_run,
        max_consumers=args.max_consumers, max_batch_rows=args.max_batch_rows,
        max_publish_bytes=args.max_publish_bytes, max_parameters=args.max_parameters,
        metrics=metrics_endpoint(args), security=server_security(args)))


def cmd_status(args: argparse.Namespace) -> int:
    from services.sampler.client import SamplerClient

    with SamplerClient(args.address, connect_timeout=args.timeout, call_timeout=args.timeout,
                       security=client_security(args)) as client:
        print(json.dumps(client.status(), indent=2))
    return 0
