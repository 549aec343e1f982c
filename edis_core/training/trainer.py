"""The offline-to-online learner loop: one loop for `edis train` and `edis run`.

Phases, each resumable from a checkpoint at the step it reached:
  prior    (unguided, edis) train the diffusion prior on the offline dataset
           (docs/algorithm.md §2)
  offline  pre-train the agent on the offline dataset
  online   collect online transitions into the replay and positive buffers, keep the
           synthetic table supplied, update the agent on mixed batches (docs/algorithm.md §7)

A `Runtime` decides where online transitions and synthetic rows come from: `InProcess`
(here: one environment stepped in this process, a generator refreshed in this thread) or
services/learner's distributed runtime (rollout actors, the sampler service). The loop,
buffers, agent updates, energy training, evaluation and checkpoints are the same code.

What a checkpoint holds and how a run is put back to it is run_state.py; a run that starts
from another's offline phase (`offline_from`) is checked by offline_from.py. Run safety
lives in small pieces the loop only calls: the run directory's lock (run_dir.RunDirLock),
the finite checks on data, weights and losses (edis_core.finite), the data and environment
a checkpoint was made on (provenance) and the stop on signals (signals.GracefulStop).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import yaml
from tqdm import tqdm

from edis_core import precision
from edis_core.agents import make_agent
from edis_core.buffers import PositiveBuffer, ReplayBuffer
from edis_core.data.minari_io import OfflineDataset, check_compatible, load_dataset
from edis_core.finite import NonFiniteError, check_losses
from edis_core.generator import SyntheticGenerator
from edis_core.training import offline_from, provenance, run_state
from edis_core.training.config import TrainConfig
from edis_core.training.envs import ActionScaler, make_env
from edis_core.training.evaluation import evaluate
from edis_core.training.mixing import BatchMixer
from edis_core.training.normalization import normalize_agent
from edis_core.training.online import Arrival, LocalEnvSource, OnlineSource
from edis_core.training.run_dir import (
    CONFIG_FILE,
    RunDirLock,
    check_fresh_start,
    read_run_config,
)
from edis_core.training.run_log import (
    METRICS_FILE,
    PLOT_FILE,
    SUMMARY_FILE,
    MetricsLog,
    RunFailure,
    failure_message,
    plot_learning_curve,
    write_summary,
)
from edis_core.training.signals import GracefulStop
from edis_core.training.synthetic import InProcessSupply, OracleSupply, SyntheticSupply
from edis_core.training.synthetic_table import SyntheticTable
from edis_core.transitions import Batch, Transitions, discounted_returns_to_go

PHASES = ("prior", "offline", "online", "done")
# Agent updates per pass of the online loop at most, so that a large block of transitions
# (rollout actors) does not keep the loop from its other duties for long.
MAX_UPDATES_PER_PASS = 64


class Runtime(Protocol):
    """Where a run's online transitions and synthetic rows come from."""

    def online_source(self, trainer: Trainer) -> OnlineSource: ...

    def synthetic_supply(self, trainer: Trainer,
                         generator: SyntheticGenerator) -> SyntheticSupply: ...


class InProcess:
    """`edis train`: everything in this process and thread."""

    def online_source(self, trainer: Trainer) -> OnlineSource:
        return LocalEnvSource(trainer.env, trainer.scaler, trainer.config.seed)

    def synthetic_supply(self, trainer: Trainer,
                         generator: SyntheticGenerator) -> SyntheticSupply:
        return InProcessSupply(generator, trainer.config.schedule,
                               guided=trainer.config.synthetic == "edis",
                               table=trainer.synthetic)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use device=cpu")
    device = torch.device(name)
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} requested but there are only "
                         f"{torch.cuda.device_count()} CUDA devices; use cuda:0 or cpu")
    return device


def scale_dataset_actions(data: Transitions, scaler: ActionScaler) -> Transitions:
    """Buffers, agents and the diffusion prior all work in the agents' [-1, 1] action units."""
    return dataclasses.replace(data, actions=scaler.to_agent(data.actions))


class Trainer:
    """Builds every part of a run from its config and drives the phases.

    Construction writes nothing: `create` and `load` take the run directory's lock and are
    the two ways to get a Trainer that runs; `inspect` reads a run without owning it."""

    def __init__(self, config: TrainConfig, run_dir: Path, runtime: Runtime | None = None):
        self.config = config
        self.run_dir = run_dir
        self.runtime = runtime or InProcess()
        self.lock: RunDirLock | None = None
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        sampling_seed = config.seed if config.sampling_seed is None else config.sampling_seed
        torch.manual_seed(sampling_seed)
        self.rng = np.random.default_rng(sampling_seed)
        self.device = resolve_device(config.device)
        precision.warn_if_slow(config.bf16_options(), self.device)

        self.dataset: OfflineDataset = load_dataset(config.dataset, gamma=self._gamma)
        env_id = config.env_id or self.dataset.env_id
        self.env = make_env(env_id, config.seed)
        self.eval_env = make_env(env_id, config.seed + 10_000)
        check_compatible(self.dataset, self.env)
        self.data_fingerprint = provenance.dataset_fingerprint(self.dataset)
        self.scaler = ActionScaler.for_space(self.env.action_space)
        self.offline = scale_dataset_actions(self.dataset.transitions, self.scaler)
        obs_dim, act_dim = self.offline.obs_dim, self.offline.act_dim

        self.agent = make_agent(config.agent, config.agent_config, obs_dim, act_dim, self.device)
        normalize_agent(self.agent, self.dataset, config.agent, config.normalization)
        self.replay = ReplayBuffer(config.replay_capacity, obs_dim, act_dim)
        self.positive = PositiveBuffer(config.positive_capacity)
        self.synthetic = SyntheticTable(config.schedule.buffer_size, obs_dim, act_dim,
                                        config.schedule.rate_limit)
        self.supply = self._build_supply(obs_dim, act_dim)
        self.mixer = self._build_mixer()
        self.online: OnlineSource = self.runtime.online_source(self)
        self.log = MetricsLog(run_dir)

        self.phase = "prior" if self.generator is not None else "offline"
        self.steps = {"prior": 0, "offline": 0, "online": 0}
        self.updates = 0  # agent updates of the online phase: utd_ratio per env step
        self._rate_clock: tuple[float, int] | None = None
        self.phase_seconds: dict[str, float] = {}  # wall clock of each phase, this process
        self.phase_cpu_seconds: dict[str, float] = {}  # CPU time of this process per phase
        # Where the online phase's wall clock goes (this process): the cost per env step.
        self.online_seconds = dict.fromkeys(("collect", "synthetic", "agent_updates"), 0.0)
        self.online_steps_timed = 0  # online env steps this process ran (the seconds' steps)
        self.last_losses: dict[str, float] = {}
        # The episode in progress: its rows so far and where replay holds them.
        self._episode: list[Transitions] = []
        self._episode_rows: list[int] = []
        self.stop = GracefulStop(f"resume with `edis train --resume {run_dir}`")
        self.checkpointed: dict[str, int] | None = None  # steps of the last checkpoint

    @property
    def _gamma(self) -> float:
        return self.config.agent_config.gamma

    @property
    def generator(self) -> SyntheticGenerator | None:
        """The diffusion prior and energies (unguided and edis modes)."""
        return None if self.supply is None else self.supply.generator

    def _build_supply(self, obs_dim: int, act_dim: int) -> SyntheticSupply | None:
        mode = self.config.synthetic
        if mode == "none":
            return None
        if mode == "oracle":  # the same in both runtimes: a simulator in this process
            return OracleSupply(self.config.schedule, self.synthetic, self.agent,
                                self.env.spec.id, self.scaler, self.config.seed)
        generator = SyntheticGenerator(obs_dim, act_dim, self.config.edis,
                                       mode=mode, device=self.device, seed=self.config.seed)
        return self.runtime.synthetic_supply(self, generator)

    def _build_mixer(self) -> BatchMixer:
        config = self.config
        return BatchMixer(self.offline, self.replay, self.synthetic, config.batch_size,
                          config.agent_config.online_batch, config.offline_ratio,
                          config.schedule.ratio)

    # ----------------------------------------------------------------- running
    @classmethod
    def create(cls, config: TrainConfig, run_dir: Path, runtime: Runtime | None = None) -> Trainer:
        """A new run in `run_dir`, created only once the dataset, environment and device
        are known to work; the folder must be missing, empty or a run without checkpoint."""
        check_fresh_start(run_dir)
        trainer = cls(config, run_dir, runtime)
        if config.offline_from is not None:
            offline_from.source_state(Path(config.offline_from), config)  # fail before any work
        trainer.lock = RunDirLock.for_fresh_run(
            run_dir, replaced=(CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, PLOT_FILE))
        try:
            (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(dataclasses.asdict(config),
                                                              sort_keys=False))
        except BaseException:
            trainer.lock.release()
            raise
        return trainer

    @classmethod
    def load(cls, run_dir: Path, accept_changed_data: bool = False,
             runtime: Runtime | None = None) -> Trainer:
        """Continue a run from its latest checkpoint; refuses a dataset or environment that
        changed since then unless `accept_changed_data`."""
        config = read_run_config(run_dir)
        lock = RunDirLock(run_dir)
        try:
            trainer = cls(config, run_dir, runtime)
            trainer._restore(accept_changed_data)
        except BaseException:
            lock.release()
            raise
        trainer.lock = lock
        return trainer

    @classmethod
    def inspect(cls, run_dir: Path) -> Trainer:
        """A run at its latest checkpoint, read only (diagnostics): no lock, nothing written."""
        trainer = cls(read_run_config(run_dir), run_dir)
        trainer._restore(accept_changed_data=True)
        return trainer

    def run(self) -> dict[str, Any]:
        """Run the phases to the end or to a stop signal ("completed" / "interrupted"); a
        non-finite loss or value ends it "failed" without saving, keeping the last checkpoint.
        The run directory's lock is released on return."""
        self._require_owner()
        try:
            self.log.truncate_after(self.steps)  # a resume rewrites what followed its checkpoint
            with self.stop:  # handlers stay ours until the final checkpoint is on disk
                try:
                    self._run_phases()
                    self.save_checkpoint()
                except NonFiniteError as err:
                    return self._fail(err, saved=False)
                except RunFailure as err:
                    self.save_checkpoint()
                    return self._fail(err, saved=True)
                except Exception as err:
                    self._fail(err, saved=False)
                    raise
                return self._finish("interrupted" if self._stopping else "completed")
        finally:
            self.online.close()
            if self.supply is not None:
                self.supply.close()
            self.lock.release()

    def _require_owner(self) -> None:
        if self.lock is None or not self.lock.held:
            raise RuntimeError("only a Trainer from Trainer.create or Trainer.load, before its "
                               "run() returned, owns the run directory and may write to it")

    def _run_phases(self) -> None:
        for phase, run in (("prior", self._run_prior), ("offline", self._run_offline),
                           ("online", self._run_online)):
            if self.phase == phase and not self._stopping:
                start, cpu_start = time.perf_counter(), time.process_time()
                run()
                self.phase_seconds[phase] = time.perf_counter() - start
                self.phase_cpu_seconds[phase] = time.process_time() - cpu_start
        if not self._stopping:
            self.phase = "done"

    @property
    def _stopping(self) -> bool:
        return self.stop.requested

    # ------------------------------------------------------------------ phases
    def _run_prior(self) -> None:
        assert self.generator is not None
        total = self.config.edis.diffusion.train_steps
        if self.config.offline_from is not None and self.steps["prior"] < total:
            self._take_offline_prior(Path(self.config.offline_from))
        chunk = max(1, min(self.config.log_every, 1_000))
        with self._progress("diffusion prior", "prior", total) as bar:
            while self.steps["prior"] < total and not self._stopping:
                n = min(chunk, total - self.steps["prior"])
                start = time.perf_counter()
                loss = self.generator.train_prior(self.offline, steps=n)
                self.steps["prior"] += n
                check_losses({"diffusion_loss": loss}, "diffusion prior")
                bar.update(n)
                self.log.write({"kind": "train", "phase": "prior", "step": self.steps["prior"],
                                "diffusion_loss": loss,
                                "steps_per_s": n / (time.perf_counter() - start)})
                self._maybe_checkpoint("prior", n)
        if not self._stopping:
            self.phase = "offline"

    def _run_offline(self) -> None:
        total = self.config.offline_steps
        if self.config.offline_from is not None and self.steps["offline"] < total:
            self._take_offline_agent(Path(self.config.offline_from))
        with self._progress("offline pre-training", "offline", total) as bar:
            while self.steps["offline"] < total and not self._stopping:
                self.steps["offline"] += 1
                losses = self._update_agent(self.mixer.sample_offline(self.rng))
                bar.update(1)
                self._after_step("offline", losses, self.config.offline_eval_every)
        if not self._stopping:
            self.agent.start_online()
            self.phase = "online"

    def _take_offline_agent(self, source: Path) -> None:
        """The agent of `source`'s finished offline phase, and its last offline evaluation."""
        state = offline_from.source_state(source, self.config)
        self.agent.load_state_dict(state["agent"])
        self.steps["offline"] = self.config.offline_steps
        records = MetricsLog(source).records()
        last = next((r for r in reversed(records)
                     if r["kind"] == "eval" and r["phase"] == "offline"), None)
        if last is not None:
            self.log.write({**last, "offline_from": str(source)})

    def _take_offline_prior(self, source: Path) -> None:
        """`source`'s diffusion prior, when it trained one with this run's prior settings, so
        that every mode of a comparison samples from the same prior; otherwise this run trains
        its own."""
        if offline_from.shares_prior(source, self.config):
            state = offline_from.source_state(source, self.config)
            self.generator.prior.load_state_dict(state["generator"]["prior"])
            self.steps["prior"] = self.config.edis.diffusion.train_steps

    def _run_online(self) -> None:
        """Collect, keep the synthetic table supplied, then do the agent updates the new
        transitions allow (`utd_ratio` per env step, docs/algorithm.md §7). With the in-process
        runtime each pass is one env step, a refresh when due, and `utd_ratio` updates."""
        total, utd = self.config.online_steps, self.config.utd_ratio
        self.online.start(self)
        if self.supply is not None:
            self.supply.start()
        self._rate_clock = (time.perf_counter(), self.updates)
        with self._progress("online fine-tuning", "online", total) as bar:
            while self.steps["online"] < total and not self._stopping:
                before = self.steps["online"]
                clock = time.perf_counter()
                self._store(self.online.collect(self, wait=before * utd <= self.updates))
                bar.update(self.steps["online"] - before)
                clock = self._charge("collect", clock)
                self._maintain_synthetic()
                clock = self._charge("synthetic", clock)
                owed = self.steps["online"] * utd - self.updates
                for _ in range(min(owed, MAX_UPDATES_PER_PASS)):
                    self.last_losses = self._update_agent(self.mixer.sample_online(self.rng))
                    self.updates += 1
                self._charge("agent_updates", clock)
                self.online_steps_timed += self.steps["online"] - before
                self._after_online_pass(before)
        if self.supply is not None and not self._stopping:
            for record in self.supply.settle(self.steps["online"]):
                self.log.write(record)

    def _charge(self, part: str, since: float) -> float:
        now = time.perf_counter()
        self.online_seconds[part] += now - since
        return now

    # ----- what an online source reads (edis_core/training/online.py's Learner) ---------------
    @property
    def env_steps(self) -> int:
        return self.steps["online"]

    def act(self, observations: np.ndarray) -> np.ndarray:
        return self.agent.act(observations, deterministic=False)

    def policy_weights(self) -> dict[str, torch.Tensor]:
        return self.agent.policy_weights()

    def write(self, record: dict[str, Any]) -> None:
        self.log.write(record)

    def _store(self, arrivals: list[Arrival]) -> None:
        """New transitions into replay, counted as env steps; each finished episode labelled
        with its return-to-go (Cal-QL's reference), in replay and in the positive buffer, and
        logged at the env step it ended on."""
        for arrival in arrivals:
            rows = arrival.transitions
            self.steps["online"] += len(rows)
            self._episode_rows.extend(self.replay.add(rows).tolist())
            self._episode.append(rows)
            if arrival.ends_episode:
                self._record_episode(Transitions.concatenate(self._episode),
                                     np.asarray(self._episode_rows))
                self._episode, self._episode_rows = [], []

    def _record_episode(self, episode: Transitions, replay_rows: np.ndarray) -> None:
        episode.mc_returns = discounted_returns_to_go(episode.rewards, self._gamma)
        self.replay.set_mc_returns(replay_rows, episode.mc_returns)
        self.positive.add_episode(episode)
        self.log.write({"kind": "episode", "phase": "online", "step": self.steps["online"],
                        "return": float(episode.rewards.sum()), "length": len(episode)})

    def _update_agent(self, batch: Transitions) -> dict[str, float]:
        losses = self.agent.update(Batch.from_transitions(batch, self.device))
        check_losses(losses, "agent update")
        return losses

    def _maintain_synthetic(self) -> None:
        if self.supply is None:
            return
        for record in self.supply.maintain(self.steps["online"], self.positive, self.replay,
                                           self.offline, self.agent.sample_actions, self.rng):
            self.log.write(record)

    def _after_online_pass(self, before: int) -> None:
        """Logging, evaluation and checkpoints at every boundary the pass crossed."""
        after, total = self.steps["online"], self.config.online_steps

        def crossed(every: int) -> bool:
            return before // every != after // every

        if crossed(self.config.log_every):
            self.log.write({"kind": "train", "phase": "online", "step": after,
                            **self.last_losses, **self._update_rate(), **self._source_stats()})
        if crossed(self.config.online_eval_every) or after >= total > before:
            self._evaluate("online")
        self._maybe_checkpoint("online", after - before)

    def _update_rate(self) -> dict[str, float]:
        """Agent updates so far and per second of wall clock since the last train record."""
        now, previous = time.perf_counter(), self._rate_clock
        self._rate_clock = (now, self.updates)
        if previous is None or now == previous[0]:
            return {"updates": self.updates}
        return {"updates": self.updates,
                "updates_per_s": (self.updates - previous[1]) / (now - previous[0])}

    def _source_stats(self) -> dict[str, float]:
        stats = dict(self.online.stats())
        if self.supply is not None:
            table = self.synthetic
            stats.update(synthetic_rows=len(table), synthetic_version=table.version,
                         synthetic_credit=table.credit, **self.supply.stats())
        return stats

    def _after_step(self, phase: str, losses: dict[str, float], eval_every: int) -> None:
        step = self.steps[phase]
        if step % self.config.log_every == 0:
            self.log.write({"kind": "train", "phase": phase, "step": step, **losses})
        if step % eval_every == 0 or step == self._phase_total(phase):
            self._evaluate(phase)
        self._maybe_checkpoint(phase, 1)

    def _phase_total(self, phase: str) -> int:
        return {"prior": self.config.edis.diffusion.train_steps,
                "offline": self.config.offline_steps, "online": self.config.online_steps}[phase]

    def _evaluate(self, phase: str) -> None:
        result = evaluate(self.agent, self.eval_env, self.scaler, self.config.eval_episodes,
                          seed=self.config.seed + 20_000)
        record = {"kind": "eval", "phase": phase, "step": self.steps[phase], **result}
        self.log.write(record)
        tqdm.write(f"[{phase} {self.steps[phase]}] return {result['return_mean']:.1f}"
                   + (f" (normalised {result['normalized_score']:.1f})"
                      if result["normalized_score"] is not None else ""))

    def _maybe_checkpoint(self, phase: str, advanced: int) -> None:
        every = self.config.checkpoint_every
        if self.steps[phase] // every != (self.steps[phase] - advanced) // every:
            self.save_checkpoint()

    def _progress(self, description: str, phase: str, total: int) -> tqdm:
        return tqdm(total=total, initial=self.steps[phase], desc=description, unit="step",
                    dynamic_ncols=True, mininterval=1.0)

    # ------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> Path:
        self._require_owner()
        path = run_state.save(self)
        self.checkpointed = dict(self.steps)
        return path

    def _restore(self, accept_changed_data: bool) -> None:
        run_state.restore(self, accept_changed_data)
        self.checkpointed = dict(self.steps)
        self.mixer = self._build_mixer()

    # ----------------------------------------------------------------- results
    def _fail(self, err: Exception, saved: bool) -> dict[str, Any]:
        """The run stops "failed", with the reason and what to do (run_log.failure_message)."""
        phase = self.phase if self.phase in self.steps else "online"
        message = failure_message(err, f"{phase} step {self.steps[phase]}", saved,
                                  self.checkpointed, self.run_dir)
        self.log.write({"kind": "failure", "phase": phase, "step": self.steps[phase],
                        "error": message})
        return self._finish("failed", error=message)

    def _finish(self, status: str, error: str | None = None) -> dict[str, Any]:
        records = self.log.records()
        evals = [r for r in records if r.get("kind") == "eval"]
        summary = {
            "status": status,
            **({"error": error} if error else {}),
            **({"stopped_by": self.stop.signal_name} if self.stop.requested else {}),
            "phase": self.phase,
            "steps": self.steps,
            "agent": self.config.agent,
            "synthetic": self.config.synthetic,
            "dataset": self.config.dataset,
            "env_id": self.env.spec.id if self.env.spec else None,
            "seed": self.config.seed,
            "offline_final": next((r for r in reversed(evals) if r["phase"] == "offline"), None),
            "online_final": next((r for r in reversed(evals) if r["phase"] == "online"), None),
            "run_dir": str(self.run_dir),
            "phase_seconds": self.phase_seconds,
            "phase_cpu_seconds": self.phase_cpu_seconds,
            "online_seconds": self.online_seconds,
            "online_steps_timed": self.online_steps_timed,
        }
        write_summary(self.run_dir, summary)
        plot_learning_curve(self.run_dir, records,
                            f"{self.config.agent} + synthetic={self.config.synthetic} "
                            f"on {self.config.dataset} (seed {self.config.seed})")
        return json.loads(json.dumps(summary))
