"""The offline-to-online learner loop in one process.

Phases, each resumable from a checkpoint at the step it reached:
  prior    (synthetic != none) train the diffusion prior on the offline dataset (EDIS.md §2)
  offline  pre-train the agent on the offline dataset
  online   act in the environment, fill replay and positive buffers, refresh the
           synthetic buffer on schedule, update the agent on mixed batches (EDIS.md §7)

Run safety lives in small pieces the loop only calls: the run directory's lock
(run_dir.RunDirLock), the finite checks on data, weights and losses (edis_core.finite), the
data and environment a checkpoint was made on (provenance) and the stop on signals
(signals.GracefulStop).
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from edis_core.agents import make_agent
from edis_core.buffers import PositiveBuffer, ReplayBuffer
from edis_core.config import from_dict
from edis_core.data.minari_io import OfflineDataset, check_compatible, load_dataset
from edis_core.finite import NonFiniteError, check_losses
from edis_core.generator import SyntheticGenerator, saved_edis_values
from edis_core.training import checkpoint, provenance
from edis_core.training.config import TrainConfig
from edis_core.training.envs import ActionScaler, make_env
from edis_core.training.evaluation import evaluate
from edis_core.training.mixing import BatchMixer
from edis_core.training.run_dir import RunDirLock, check_fresh_start
from edis_core.training.run_log import (
    METRICS_FILE,
    PLOT_FILE,
    SUMMARY_FILE,
    MetricsLog,
    plot_learning_curve,
    write_summary,
)
from edis_core.training.signals import GracefulStop
from edis_core.training.synthetic import SyntheticSupply
from edis_core.transitions import Batch, Transitions, discounted_returns_to_go

CONFIG_FILE = "config.yaml"
PHASES = ("prior", "offline", "online", "done")


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


def read_run_config(run_dir: Path) -> TrainConfig:
    """The configuration a run directory was created with, as its code then meant it."""
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise checkpoint.CheckpointError(
            f"{run_dir} is not a run directory (no {CONFIG_FILE}); "
            "start a run with `edis train --run-dir DIR` first")
    try:
        saved = yaml.safe_load(config_path.read_text())
    except yaml.YAMLError as err:
        raise checkpoint.CheckpointError(f"{config_path} is not valid YAML: {err}") from err
    if isinstance(saved, dict) and isinstance(saved.get("edis"), dict):
        saved["edis"] = saved_edis_values(saved["edis"])
    return from_dict(TrainConfig, saved)


class Trainer:
    """Builds every part of a run from its config and drives the phases.

    Construction writes nothing: `create` and `load` take the run directory's lock and are
    the two ways to get a Trainer that runs; `inspect` reads a run without owning it."""

    def __init__(self, config: TrainConfig, run_dir: Path):
        self.config = config
        self.run_dir = run_dir
        self.lock: RunDirLock | None = None
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.device = resolve_device(config.device)

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
        self.replay = ReplayBuffer(config.replay_capacity, obs_dim, act_dim)
        self.positive = PositiveBuffer(config.positive_capacity)
        self.synthetic_buffer = ReplayBuffer(config.schedule.buffer_size, obs_dim, act_dim)
        self.supply = self._build_supply(obs_dim, act_dim)
        self.mixer = BatchMixer(self.offline, self.replay, self.synthetic_buffer,
                                config.batch_size, config.schedule.ratio, config.offline_ratio)
        self.log = MetricsLog(run_dir)

        self.phase = "prior" if self.supply is not None else "offline"
        self.steps = {"prior": 0, "offline": 0, "online": 0}
        self.episode_rows: list[int] = []
        self.episode: list[Transitions] = []
        self.obs: np.ndarray | None = None
        self.stop = GracefulStop(f"resume with `edis train --resume {run_dir}`")
        self.checkpointed: dict[str, int] | None = None  # steps of the last checkpoint

    @property
    def _gamma(self) -> float:
        return self.config.agent_config.gamma

    def _build_supply(self, obs_dim: int, act_dim: int) -> SyntheticSupply | None:
        mode = self.config.synthetic
        if mode == "none":
            return None
        generator = SyntheticGenerator(obs_dim, act_dim, self.config.edis,
                                       mode=mode, device=self.device, seed=self.config.seed)
        return SyntheticSupply(generator, self.config.schedule, guided=mode == "edis",
                               buffer=self.synthetic_buffer)

    # ----------------------------------------------------------------- running
    @classmethod
    def create(cls, config: TrainConfig, run_dir: Path) -> Trainer:
        """A new run in `run_dir`, created only once the dataset, environment and device
        are known to work; the folder must be missing, empty or a run without checkpoint."""
        check_fresh_start(run_dir)
        trainer = cls(config, run_dir)
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
    def load(cls, run_dir: Path, accept_changed_data: bool = False) -> Trainer:
        """Continue a run from its latest checkpoint; refuses a dataset or environment that
        changed since then unless `accept_changed_data`."""
        config = read_run_config(run_dir)
        lock = RunDirLock(run_dir)
        try:
            trainer = cls(config, run_dir)
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
                    return self._fail(err)
                return self._finish("interrupted" if self._stopping else "completed")
        finally:
            self.lock.release()

    def _require_owner(self) -> None:
        if self.lock is None or not self.lock.held:
            raise RuntimeError("only a Trainer from Trainer.create or Trainer.load, before its "
                               "run() returned, owns the run directory and may write to it")

    def _run_phases(self) -> None:
        if self.phase == "prior":
            self._run_prior()
        if self.phase == "offline" and not self._stopping:
            self._run_offline()
        if self.phase == "online" and not self._stopping:
            self._run_online()
        if not self._stopping:
            self.phase = "done"

    @property
    def _stopping(self) -> bool:
        return self.stop.requested

    # ------------------------------------------------------------------ phases
    def _run_prior(self) -> None:
        assert self.supply is not None
        total = self.config.edis.diffusion.train_steps
        chunk = max(1, min(self.config.log_every, 1_000))
        with self._progress("diffusion prior", "prior", total) as bar:
            while self.steps["prior"] < total and not self._stopping:
                n = min(chunk, total - self.steps["prior"])
                start = time.perf_counter()
                loss = self.supply.generator.train_prior(self.offline, steps=n)
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
        with self._progress("offline pre-training", "offline", total) as bar:
            while self.steps["offline"] < total and not self._stopping:
                self.steps["offline"] += 1
                losses = self._update_agent(self.mixer.sample_offline(self.rng))
                bar.update(1)
                self._after_step("offline", losses, self.config.offline_eval_every)
        if not self._stopping:
            self.agent.start_online()
            self.phase = "online"

    def _run_online(self) -> None:
        total = self.config.online_steps
        if self.obs is None:
            self.obs, _ = self.env.reset(seed=self.config.seed + self.steps["online"])
        with self._progress("online fine-tuning", "online", total) as bar:
            while self.steps["online"] < total and not self._stopping:
                self.steps["online"] += 1  # first, so an episode ending now is logged at it
                self._env_step()
                bar.update(1)
                self._maybe_refresh()
                losses: dict[str, float] = {}
                for _ in range(self.config.utd_ratio):
                    losses = self._update_agent(self.mixer.sample_online(self.rng))
                self._after_step("online", losses, self.config.online_eval_every)

    def _update_agent(self, batch: Transitions) -> dict[str, float]:
        losses = self.agent.update(Batch.from_transitions(batch, self.device))
        check_losses(losses, "agent update")
        return losses

    def _env_step(self) -> None:
        assert self.obs is not None
        action = self.agent.act(self.obs[None].astype(np.float32), deterministic=False)[0]
        next_obs, reward, terminated, truncated, _ = self.env.step(self.scaler.to_env(action))
        row = Transitions(
            observations=self.obs[None].astype(np.float32), actions=action[None],
            rewards=np.array([reward], np.float32),
            next_observations=next_obs[None].astype(np.float32),
            terminals=np.array([float(terminated)], np.float32),
            timeouts=np.array([float(truncated)], np.float32),
            mc_returns=np.array([-np.inf], np.float32))
        self.episode_rows.extend(self.replay.add(row).tolist())
        self.episode.append(row)
        self.obs = next_obs
        if terminated or truncated:
            self._end_episode()

    def _end_episode(self) -> None:
        """Label the episode with its return-to-go (Cal-QL) and push it to the positive buffer."""
        episode = Transitions.concatenate(self.episode)
        episode.mc_returns = discounted_returns_to_go(episode.rewards, self._gamma)
        self.replay.set_mc_returns(np.asarray(self.episode_rows), episode.mc_returns)
        self.positive.add_episode(episode)
        self.log.write({"kind": "episode", "phase": "online", "step": self.steps["online"],
                        "return": float(episode.rewards.sum()), "length": len(episode)})
        self.episode, self.episode_rows = [], []
        self.obs, _ = self.env.reset()

    def _maybe_refresh(self) -> None:
        if self.supply is None or not self.supply.due(self.steps["online"], self.positive):
            return
        stats = self.supply.refresh(self.steps["online"], self.positive, self.replay,
                                    self.offline, self.agent.sample_actions, self.rng)
        self.log.write(stats)

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
        state: dict[str, Any] = {"agent": self.agent.state_dict(),
                                 "torch_rng": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        buffers: dict[str, Any] = {"replay": self.replay, "positive": self.positive}
        if self.supply is not None:
            state["generator"] = self.supply.generator.state_dict()
            buffers["synthetic"] = self.synthetic_buffer
        progress = {
            "phase": self.phase, "steps": self.steps,
            "numpy_rng": self.rng.bit_generator.state,
            "last_refresh": self.supply.last_refresh if self.supply else None,
            "env_id": self.env.spec.id if self.env.spec else None,
            "obs_dim": self.offline.obs_dim, "act_dim": self.offline.act_dim,
            "dataset": self.data_fingerprint, "env": provenance.environment_spec(self.env),
        }
        path = checkpoint.save(self.run_dir, state, progress, buffers)
        self.checkpointed = dict(self.steps)
        return path

    def _restore(self, accept_changed_data: bool) -> None:
        state, progress, directory = checkpoint.load(self.run_dir)
        self._check_provenance(progress, accept_changed_data)
        try:
            self.agent.load_state_dict(state["agent"])
            torch.set_rng_state(state["torch_rng"])
            if self.device.type == "cuda" and "cuda_rng" in state:
                torch.cuda.set_rng_state_all(state["cuda_rng"])
            if self.supply is not None:
                self.supply.generator.load_state_dict(state["generator"])
                self.supply.last_refresh = progress["last_refresh"]
            self.rng.bit_generator.state = progress["numpy_rng"]
            self.phase, self.steps = progress["phase"], progress["steps"]
        except (KeyError, ValueError, RuntimeError, TypeError) as err:
            raise checkpoint.CheckpointError(
                f"checkpoint in {directory} does not match this run's configuration "
                f"({type(err).__name__}: {err})") from err
        self.replay = checkpoint.load_buffer(directory, "replay", ReplayBuffer.load)
        self.positive = checkpoint.load_buffer(directory, "positive", PositiveBuffer.load)
        if self.supply is not None:
            self.synthetic_buffer = checkpoint.load_buffer(directory, "synthetic",
                                                           ReplayBuffer.load)
            self.supply.buffer = self.synthetic_buffer
        self.checkpointed = dict(self.steps)
        self.mixer = BatchMixer(self.offline, self.replay, self.synthetic_buffer,
                                self.config.batch_size, self.config.schedule.ratio,
                                self.config.offline_ratio)
        # An episode in progress at checkpoint time is not resumable (the simulator
        # state is not saved): the online phase restarts with a fresh episode.

    def _check_provenance(self, progress: dict[str, Any], accept: bool) -> None:
        """The dataset and environment must be those the checkpoint was made on."""
        changed = (provenance.changes("dataset", progress.get("dataset"), self.data_fingerprint)
                   + provenance.changes("environment", progress.get("env"),
                                        provenance.environment_spec(self.env)))
        if not changed:
            return
        listing = "; ".join(changed)
        if not accept:
            raise checkpoint.CheckpointError(
                f"the data of {self.run_dir} changed since its checkpoint: {listing}. Restore "
                f"them, or continue on the new ones with `edis train --resume {self.run_dir} "
                "--accept-changed-data`")
        warnings.warn(f"the data of {self.run_dir} changed since its checkpoint ({listing}); "
                      "continuing on the new ones", provenance.ChangedDataWarning, stacklevel=3)

    # ----------------------------------------------------------------- results
    def _fail(self, err: NonFiniteError) -> dict[str, Any]:
        """A non-finite loss or value: the weights in memory may already be NaN, so nothing
        is saved and the last checkpoint stays the run's state."""
        phase = self.phase if self.phase in self.steps else "online"
        kept = (f"the last good checkpoint ({_describe(self.checkpointed)}) is kept"
                if self.checkpointed is not None else "no checkpoint had been written")
        message = (f"{phase} step {self.steps[phase]}: {err}. The run stopped; {kept}. Check "
                   "the dataset and lower the learning rates, then start a new run")
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
        }
        write_summary(self.run_dir, summary)
        plot_learning_curve(self.run_dir, records,
                            f"{self.config.agent} + synthetic={self.config.synthetic} "
                            f"on {self.config.dataset} (seed {self.config.seed})")
        return json.loads(json.dumps(summary))


def _describe(steps: dict[str, int]) -> str:
    """{"prior": 60, "offline": 100, "online": 0} -> "prior step 60, offline step 100"."""
    return ", ".join(f"{phase} step {step}" for phase, step in steps.items() if step) or "step 0"
