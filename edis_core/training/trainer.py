"""The offline-to-online learner loop in one process.

Phases, each resumable from a checkpoint at the step it reached:
  prior    (synthetic != none) train the diffusion prior on the offline dataset (EDIS.md §2)
  offline  pre-train the agent on the offline dataset
  online   act in the environment, fill replay and positive buffers, refresh the
           synthetic buffer on schedule, update the agent on mixed batches (EDIS.md §7)
"""

from __future__ import annotations

import dataclasses
import json
import signal
import time
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
from edis_core.generator import SyntheticGenerator, saved_edis_values
from edis_core.training import checkpoint
from edis_core.training.config import TrainConfig
from edis_core.training.envs import ActionScaler, make_env
from edis_core.training.evaluation import evaluate
from edis_core.training.mixing import BatchMixer
from edis_core.training.run_log import MetricsLog, plot_learning_curve, write_summary
from edis_core.training.synthetic import SyntheticSupply
from edis_core.transitions import Batch, Transitions, discounted_returns_to_go

CONFIG_FILE = "config.yaml"
PHASES = ("prior", "offline", "online", "done")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use device=cpu")
    return torch.device(name)


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
    """Builds every part of a run from its config and drives the phases."""

    def __init__(self, config: TrainConfig, run_dir: Path):
        self.config = config
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
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
        self._stop_signal: int | None = None

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
        if checkpoint.has_checkpoint(run_dir):
            raise ValueError(f"{run_dir} already holds a run; continue it with "
                             f"`edis train --resume {run_dir}` or choose another --run-dir")
        trainer = cls(config, run_dir)
        (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(dataclasses.asdict(config),
                                                          sort_keys=False))
        return trainer

    @classmethod
    def load(cls, run_dir: Path) -> Trainer:
        """Rebuild a run from its directory at its latest checkpoint (nothing is written)."""
        trainer = cls(read_run_config(run_dir), run_dir)
        trainer._restore()
        return trainer

    def run(self) -> dict[str, Any]:
        self.log.truncate_after(self.steps)  # a resumed run rewrites what followed its checkpoint
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:  # handlers stay ours until the final checkpoint is on disk
            if self.phase == "prior":
                self._run_prior()
            if self.phase == "offline" and not self._stopping:
                self._run_offline()
            if self.phase == "online" and not self._stopping:
                self._run_online()
            if not self._stopping:
                self.phase = "done"
            self.save_checkpoint()
            return self._finish(status="interrupted" if self._stopping else "completed")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._stop_signal = signum

    @property
    def _stopping(self) -> bool:
        return self._stop_signal is not None

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
                batch = Batch.from_transitions(self.mixer.sample_offline(self.rng), self.device)
                losses = self.agent.update(batch)
                self.steps["offline"] += 1
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
                    batch = Batch.from_transitions(self.mixer.sample_online(self.rng), self.device)
                    losses = self.agent.update(batch)
                self._after_step("online", losses, self.config.online_eval_every)

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
        }
        return checkpoint.save(self.run_dir, state, progress, buffers)

    def _restore(self) -> None:
        state, progress, directory = checkpoint.load(self.run_dir)
        try:
            self.agent.load_state_dict(state["agent"])
            torch.set_rng_state(state["torch_rng"])
            if self.device.type == "cuda" and "cuda_rng" in state:
                torch.cuda.set_rng_state_all(state["cuda_rng"])
            self.replay = ReplayBuffer.load(directory / "replay.npz")
            self.positive = PositiveBuffer.load(directory / "positive.npz")
            if self.supply is not None:
                self.supply.generator.load_state_dict(state["generator"])
                self.synthetic_buffer = ReplayBuffer.load(directory / "synthetic.npz")
                self.supply.buffer = self.synthetic_buffer
                self.supply.last_refresh = progress["last_refresh"]
            self.rng.bit_generator.state = progress["numpy_rng"]
            self.phase, self.steps = progress["phase"], progress["steps"]
        except (KeyError, ValueError, RuntimeError, OSError, TypeError) as err:
            raise checkpoint.CheckpointError(
                f"checkpoint in {directory} does not match this run's configuration "
                f"({type(err).__name__}: {err})") from err
        self.mixer = BatchMixer(self.offline, self.replay, self.synthetic_buffer,
                                self.config.batch_size, self.config.schedule.ratio,
                                self.config.offline_ratio)
        # An episode in progress at checkpoint time is not resumable (the simulator
        # state is not saved): the online phase restarts with a fresh episode.

    # ----------------------------------------------------------------- results
    def _finish(self, status: str) -> dict[str, Any]:
        records = self.log.records()
        evals = [r for r in records if r.get("kind") == "eval"]
        summary = {
            "status": status,
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
