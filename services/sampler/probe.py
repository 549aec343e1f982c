"""`python -m services.sampler.probe HOST:PORT`: exit 0 when the sampler's standard health
service answers SERVING (with `--answering`: answers at all, NOT_SERVING included, which is
what a sampler still waiting for its first prior says), 1 otherwise. A container health
check: it loads gRPC and the health stubs only (no torch, no project CLI) and needs no
token, as health stays open.

    python -m services.sampler.probe localhost:50051 [--answering] [--timeout 5] [--ca CA.pem]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def probe(address: str, timeout: float, ca: Path | None = None) -> str:
    channel = (grpc.insecure_channel(address) if ca is None else
               grpc.secure_channel(address, grpc.ssl_channel_credentials(ca.read_bytes())))
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout, wait_for_ready=True)
        except grpc.RpcError as err:
            return err.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address")
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--ca", type=Path, help="the CA of a TLS sampler's certificate")
    parser.add_argument("--answering", action="store_true",
                        help="healthy when the health service answers, serving or not")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    status = probe(args.address, args.timeout, args.ca)
    print(status)
    healthy = ("SERVING", "NOT_SERVING") if args.answering else ("SERVING",)
    return 0 if status in healthy else 1


if __name__ == "__main__":
    sys.exit(main())
