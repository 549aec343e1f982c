"""The sampler's process: `edis sampler serve` builds the gRPC server (metrics and token
interceptors, health, reflection, TLS), runs SamplerService's generation loop beside it and
stops on SIGTERM or SIGINT, giving open calls `grace_seconds`."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import grpc
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from edis_core.generator import SyntheticGenerator
from protos.edis.sampler.v1 import sampler_pb2_grpc as pb_grpc
from services import logs
from services.metrics.endpoint import serving
from services.metrics.sampler import SamplerMetrics
from services.sampler import weights as w
from services.sampler.options import ServeOptions
from services.sampler.process import die_with_launcher
from services.sampler.server import NOT_SERVING, SamplerService
from services.sampler.wire import CHANNEL_OPTIONS, SERVICE_NAME


def generator_from_run(run_dir: Path, device: torch.device) -> tuple[SyntheticGenerator,
                                                                   dict[str, int]]:
    """The generator of an `edis train` run's latest checkpoint, at version 1 for every model
    it has trained (a publisher continues from version 2)."""
    from edis_core.training import checkpoint

    state, _, _ = checkpoint.load(run_dir)
    if "generator" not in state:
        raise ValueError(f"{run_dir} was trained with synthetic=none: it has no diffusion prior "
                         "to serve")
    generator = SyntheticGenerator.from_state_dict(state["generator"], device=device)
    if not generator.prior.normalizer.fitted:
        raise ValueError(f"{run_dir} has not trained its prior yet; serve it after the prior "
                         "phase, or start without --from-run and publish")
    versions = {name: 1 for name in w.model_names(generator)}
    if not generator.energies_trained:
        versions.update({name: 0 for name in versions if name != w.PRIOR})
    return generator, versions


async def serve(options: ServeOptions) -> int:
    torch.set_num_threads(options.threads)
    metrics = SamplerMetrics()
    # Metrics first, so that calls the token check refuses are counted too.
    server = grpc.aio.server(options=CHANNEL_OPTIONS,
                             interceptors=[metrics.interceptor(),
                                           *options.security.interceptors()])
    health = health_aio.HealthServicer()
    service = SamplerService(options, health, metrics)
    metrics.watch(service.snapshot)
    for name in ("", SERVICE_NAME):
        await health.set(name, NOT_SERVING)
    if options.from_run:
        service.load(*generator_from_run(Path(options.from_run), service.device))
    pb_grpc.add_SamplerServicer_to_server(service, server)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME), server)
    address = f"{options.host}:{options.port}"
    credentials = options.security.credentials()
    try:
        port = (server.add_insecure_port(address) if credentials is None
                else server.add_secure_port(address, credentials))
    except RuntimeError as err:
        raise ValueError(f"cannot listen on {address} ({err}); choose another --port or "
                         "--port 0 for any free one") from err
    with serving(options.metrics, metrics.registry, "sampler"):
        await server.start()
        await _serve_until_stopped(server, service, options, port)
    return 0


async def _serve_until_stopped(server: grpc.aio.Server, service: SamplerService,
                               options: ServeOptions, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    generation = asyncio.create_task(service.generate_forever())
    security = options.security
    transport = ("mutual TLS" if security.client_ca else "TLS" if security.cert
                 else "plaintext") + (", bearer token" if security.token_file else "")
    print(f"edis sampler listening on {options.host}:{port} "
          f"(device {service.device}, {options.threads} torch thread(s), {transport})",
          flush=True)
    await stop_requested.wait()
    logs.event("sampler shutting down")
    await service.shutdown()
    await server.stop(options.grace_seconds)
    generation.cancel()


def run(options: ServeOptions) -> int:
    die_with_launcher()
    return asyncio.run(serve(options))
