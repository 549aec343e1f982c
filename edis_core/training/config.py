"""The one configuration of an offline-to-online run (`edis train` and `edis run`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from edis_core.agents.calql import CalQLConfig
from edis_core.agents.iql import IQLConfig
from edis_core.generator_config import EDISConfig
from edis_core.training.normalization import Normalization
from edis_core.training.synthetic_table import SyntheticRateLimit

SyntheticMode = Literal["none", "unguided", "edis", "oracle"]
"""none: the base agent; unguided: the prior's samples (SynthER-style); edis: energy-guided
samples; oracle: real transitions of the current policy from a second simulator (not counted
as env steps), the ceiling any generator could reach (a benchmark control)."""
GENERATED_MODES = ("unguided", "edis")


@dataclass
class SyntheticSchedule:
    """When and how much synthetic data the online phase gets (docs/algorithm.md §7).

    How long the prior and the energies train is model configuration:
    `edis.diffusion.train_steps` and `edis.energy_steps`."""

    ratio: float = 1.0
    """ρ: share of the offline-sourced rows of every online agent batch that synthetic rows
    replace (training/mixing.py); 1: all of them, so the batch is online replay and
    synthetic rows only."""
    refresh_every: int = 2_000
    """Online env steps between refreshes (energies retrained, new samples generated)."""
    samples_per_refresh: int = 10_000
    """New transitions generated per refresh; they replace the oldest in the buffer."""
    buffer_size: int = 20_000
    """Capacity of the synthetic buffer."""
    min_positive: int = 1_000
    """Refreshes (guided, unguided and oracle alike) wait until the positive buffer holds this
    many online transitions."""
    real_sample: int = 20_000
    """Most recent real transitions used as E_T positives per refresh."""
    prior_steps_per_refresh: int = 0
    """Warm-started prior training before each refresh on all online data and as many
    offline rows, at least `prior_offline_rows` (docs/algorithm.md §2: optional); 0 keeps the
    prior as it left the offline phase."""
    prior_offline_rows: int = 20_000
    """The fewest offline rows online prior training draws (all of them if the dataset is
    smaller), so that the prior does not forget the dataset while online rows are few."""
    prior_recent_share: float = 0.0
    """Share of those prior-training rows drawn (again) from the positive buffer, where
    guidance sends the sampler (training/synthetic.py: prior_rows)."""
    rate_limit: SyntheticRateLimit = field(default_factory=SyntheticRateLimit)
    """How fresh synthetic rows must be and how often each may be drawn."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"schedule.ratio must be in [0, 1], got {self.ratio}")
        for name in ("refresh_every", "samples_per_refresh", "buffer_size", "real_sample"):
            if getattr(self, name) < 1:
                raise ValueError(f"schedule.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("min_positive", "prior_steps_per_refresh", "prior_offline_rows"):
            if getattr(self, name) < 0:
                raise ValueError(f"schedule.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.prior_recent_share < 1.0:
            raise ValueError("schedule.prior_recent_share must be in [0, 1), got "
                             f"{self.prior_recent_share}")
        if self.samples_per_refresh > self.buffer_size:
            raise ValueError("schedule.samples_per_refresh must not exceed schedule.buffer_size "
                             f"({self.samples_per_refresh} > {self.buffer_size})")


@dataclass
class RuntimeConfig:
    """The distributed runtime of `edis run` (services/learner); `edis train` ignores it."""

    actors: int = 2
    """Rollout actors on Ray, one CPU and one torch thread each."""
    backend: Literal["ray", "rllib"] = "ray"
    """Plain Ray actors, or RLlib env runners (benchmarks/bench_runtime.py compares them)."""
    steps_per_call: int = 250
    """Env steps a sample call runs at least; it then finishes its episode."""
    calls_in_flight: int = 2
    """Sample calls in flight per actor."""
    learner_threads: int = 1
    """Torch threads of the learner in the online phase, when actors and the sampler share
    the cores (its background refresh runs beside the updates); the offline phases use
    `torch_threads`."""
    sampler_threads: int = 1
    """Torch threads of a sampler process that `edis run` starts."""
    stream_batch: int = 1_000
    """Rows per batch of the sampler stream."""
    require_sampler: bool = False
    """Stop the run (status "failed", with a checkpoint) when the sampler has not answered
    for `sampler_grace_seconds`; by default the run goes on with real rows meanwhile and
    reconnects when the sampler is back."""
    sampler_grace_seconds: float = 120.0

    def __post_init__(self) -> None:
        for name in ("actors", "steps_per_call", "calls_in_flight", "learner_threads",
                     "sampler_threads", "stream_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"runtime.{name} must be >= 1, got {getattr(self, name)}")
        if not self.sampler_grace_seconds >= 0:
            raise ValueError("runtime.sampler_grace_seconds must be >= 0, got "
                             f"{self.sampler_grace_seconds}")


@dataclass
class TrainConfig:
    """Offline pre-training for `offline_steps` gradient steps, then `online_steps` env steps."""

    agent: Literal["iql", "calql"] = "iql"
    dataset: str = "edis/hopper-random-v0"
    env_id: str | None = None
    """Environment for the online phase and evaluation; default: the dataset's own."""
    synthetic: SyntheticMode = "none"
    seed: int = 0
    sampling_seed: int | None = None
    """Seed of the learner's own random draws (agent batches, exploration noise, its networks'
    sampling); None: `seed`. The environments keep `seed`: two runs that differ only here
    measure the benchmark's noise floor (an A/A comparison)."""
    device: str = "cpu"
    """"cpu", "cuda", "cuda:N" or "auto" (CUDA when available)."""
    torch_threads: int = 0
    """0 keeps torch's default."""
    offline_steps: int = 10_000
    offline_from: str | None = None
    """A run directory whose offline phase is finished (e.g. one run with online_steps=0):
    this run takes its pre-trained agent instead of pre-training, so that several runs share
    one offline checkpoint. Its agent, agent config, dataset, normalisation and offline_steps
    must be this run's."""
    online_steps: int = 10_000
    batch_size: int = 256
    utd_ratio: int = 1
    """Agent updates per online environment step."""
    normalization: Normalization = "corl"
    """"corl": observations standardised with the offline data's statistics for both agents,
    IQL's rewards scaled by 1000 / (episode return range) (training/normalization.py);
    "none": raw inputs."""
    offline_ratio: float = 0.5
    """With an agent whose `online_batch` is "fixed": the offline-sourced share of every
    online batch (offline rows, or the synthetic rows that replace them); the rest is online
    replay in every mode."""
    replay_capacity: int = 1_000_000
    positive_capacity: int = 5_000
    """Positive buffer size in transitions: the most recent whole trajectories."""
    offline_eval_every: int = 5_000
    online_eval_every: int = 5_000
    eval_episodes: int = 5
    log_every: int = 1_000
    checkpoint_every: int = 5_000
    """In gradient steps offline and env steps online."""
    schedule: SyntheticSchedule = field(default_factory=SyntheticSchedule)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    iql: IQLConfig = field(default_factory=IQLConfig)
    calql: CalQLConfig = field(default_factory=CalQLConfig)
    edis: EDISConfig = field(default_factory=EDISConfig)

    def __post_init__(self) -> None:
        if not (self.device in ("cpu", "cuda", "auto") or self.device.startswith("cuda:")):
            raise ValueError(f"device must be cpu, cuda, cuda:N or auto, got {self.device!r}")
        for name in ("seed", "sampling_seed"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 2**31:
                raise ValueError(f"{name} must be an integer in [0, 2**31), got {value}")
        for name in ("offline_steps", "online_steps", "torch_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "utd_ratio", "replay_capacity", "positive_capacity",
                     "offline_eval_every", "online_eval_every", "eval_episodes", "log_every",
                     "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        reward_transform = (self.calql.reward_scale, self.calql.reward_bias)
        if self.agent == "calql" and reward_transform != (1.0, 0.0):
            raise ValueError("calql.reward_scale/reward_bias other than 1/0 are not supported by "
                             "the training loop: its Monte-Carlo returns use raw rewards")
        if not 0.0 <= self.offline_ratio <= 1.0:
            raise ValueError(f"offline_ratio must be in [0, 1], got {self.offline_ratio}")

    @property
    def agent_config(self) -> IQLConfig | CalQLConfig:
        return self.iql if self.agent == "iql" else self.calql

    def bf16_options(self) -> list[str]:
        """The bfloat16 options this run uses (those switched on, for its agent and mode)."""
        used = {"calql.critic_bf16": self.agent == "calql" and self.calql.critic_bf16}
        generated = self.synthetic in ("unguided", "edis")
        diffusion = self.edis.diffusion
        used["edis.diffusion.train_bf16"] = generated and diffusion.train_bf16
        used["edis.diffusion.sample_bf16"] = generated and diffusion.sample_bf16
        return [name for name, on in used.items() if on]
