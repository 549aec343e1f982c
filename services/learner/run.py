"""`edis run`: the learner of edis_core/training with rollout actors on Ray and the sampler
service, and everything it starts stopped again on the way out.

    edis run --profile demo --dataset edis/hopper-random-v0 --synthetic edis --run-dir runs/x
    edis run --resume runs/x
    edis run ... --ray-address HOST:6379 --sampler-address HOST:50051   # join running ones
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from edis_core.agents import actor_hidden
from edis_core.generator import SyntheticGenerator
from edis_core.training.config import GENERATED_MODES, RuntimeConfig, TrainConfig
from edis_core.training.online import OnlineSource
from edis_core.training.run_dir import read_run_config
from edis_core.training.synthetic import SyntheticSupply
from edis_core.training.trainer import Trainer, resolve_device
from services.learner import processes
from services.learner.actors_source import RolloutActorsSource
from services.learner.sampler_supply import SamplerSupply
from services.metrics.endpoint import MetricsEndpoint, serving
from services.metrics.learner import LearnerMetrics
from services.rollout import save_policy_module
from services.sampler.security import ClientSecurity

POLICY_MODULE_DIR = "rlmodule"


class Distributed:
    """The runtime of `edis run`: rollout actors and the sampler service."""

    def __init__(self, runtime: RuntimeConfig, sampler_address: str,
                 sampler_security: ClientSecurity | None = None):
        self.runtime = runtime
        self.sampler_address = sampler_address
        self.sampler_security = sampler_security

    def online_source(self, trainer: Trainer) -> OnlineSource:
        return RolloutActorsSource(trainer, self.runtime)

    def synthetic_supply(self, trainer: Trainer,
                         generator: SyntheticGenerator) -> SyntheticSupply:
        return SamplerSupply(generator, trainer.config.schedule,
                             guided=trainer.config.synthetic == "edis", table=trainer.synthetic,
                             agent=trainer.agent, address=self.sampler_address,
                             runtime=self.runtime, security=self.sampler_security)


def save_policy(trainer: Trainer) -> Path:
    """The run's policy as an RLlib RLModule checkpoint, `RLModule.from_checkpoint` loads it
    (RUN_DIR/rlmodule; it acts in the agents' [-1, 1] action units)."""
    config = trainer.config
    return save_policy_module(config.agent, actor_hidden(config.agent_config),
                              trainer.offline.obs_dim, trainer.offline.act_dim,
                              trainer.policy_weights(),
                              trainer.run_dir / POLICY_MODULE_DIR)


@contextlib.contextmanager
def distributed_trainer(run_dir: Path, config: TrainConfig | None, *,
                        accept_changed_data: bool = False, ray_address: str | None = None,
                        sampler_address: str | None = None,
                        sampler_security: ClientSecurity | None = None,
                        metrics: MetricsEndpoint | None = None,
                        ray_node: bool = False) -> Iterator[Trainer]:
    """A Trainer on the distributed runtime: a new run of `config`, or (config None) the
    resumed run in `run_dir`. Ray and the sampler run for the length of the block, and the
    learner's Prometheus metrics are served at `metrics` (None: not served). `ray_node`:
    start a Ray node without CPUs on this host joining `ray_address` first.
    `sampler_security`: TLS and token for a sampler at `sampler_address` (one this call
    starts listens on 127.0.0.1 in plaintext)."""
    saved = config or read_run_config(run_dir)
    device = resolve_device(saved.device)
    learner_metrics = LearnerMetrics()
    with serving(metrics, learner_metrics.registry, "learner"), processes.started(
            actors=saved.runtime.actors, ray_address=ray_address,
            sampler_address=sampler_address,
            needs_sampler=saved.synthetic in GENERATED_MODES,
            sampler_threads=saved.runtime.sampler_threads,
            sampler_device=str(device) if device.type == "cuda" else "cpu",
            ray_node=ray_node) as services:
        own = services.sampler_pid is not None
        runtime = Distributed(saved.runtime, services.sampler_address or "",
                              None if own else sampler_security)
        if config is None:
            trainer = Trainer.load(run_dir, accept_changed_data, runtime)
        else:
            trainer = Trainer.create(config, run_dir, runtime)
        learner_metrics.attach(trainer)
        yield trainer
