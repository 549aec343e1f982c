"""Minari datasets <-> flat transitions: load, check against an env, make locally, summarise.

Everything here reads or writes the local Minari datasets folder only (MINARI_DATASETS_PATH,
default ~/.minari/datasets); nothing downloads. Only flat Box observation and action spaces
are supported, which covers the MuJoCo locomotion tasks EDIS is evaluated on.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import minari
import numpy as np
from minari.data_collector import EpisodeBuffer
from minari.dataset.minari_dataset import parse_dataset_id
from minari.storage.datasets_root_dir import get_dataset_path
from tqdm import tqdm

from edis_core.data.scores import normalized_score
from edis_core.episodes import EnvStepper, Episode, Policy
from edis_core.finite import describe_counts
from edis_core.transitions import Transitions, discounted_returns_to_go

# What a reader of a bad or unreadable dataset folder can run into.
_READ_ERRORS = (OSError, ValueError, KeyError, TypeError, AssertionError)


class DatasetError(Exception):
    """A dataset cannot be found, read, made or used; the message says what to do."""


class DatasetEnvWarning(UserWarning):
    """A dataset used with an environment other than the one it was collected in."""


@dataclass
class OfflineDataset:
    """A Minari dataset flattened to transitions, with what is needed to check it against an env.

    The last row of every episode has `terminals` or `timeouts` set, so episode boundaries
    survive the flattening; `episode_returns` are undiscounted, in dataset order.
    """

    dataset_id: str
    env_id: str | None
    transitions: Transitions
    episodes: int
    episode_returns: np.ndarray
    observation_space: gym.spaces.Box
    action_space: gym.spaces.Box
    nonfinite_values: dict[str, int] = field(default_factory=dict)
    """NaN/inf values per field of the stored episodes; empty for a dataset that trains."""

    @property
    def obs_dim(self) -> int:
        return self.transitions.obs_dim

    @property
    def act_dim(self) -> int:
        return self.transitions.act_dim


def datasets_root() -> Path:
    """The local Minari datasets folder, as minari resolves it at this moment."""
    return get_dataset_path()


def load_dataset(dataset_id: str, gamma: float = 0.99) -> OfflineDataset:
    """Read a local Minari dataset as flat transitions; mc_returns are discounted by `gamma`.

    A dataset with NaN/inf values is refused, naming the first such episode and field."""
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    dataset = _open(dataset_id)
    return _flatten(dataset, gamma)


def check_compatible(dataset: OfflineDataset, env: gym.Env) -> None:
    """Refuse to train or fine-tune on `env` with data whose spaces do not match it; warn
    (DatasetEnvWarning) when the spaces match but the environment ids differ."""
    env_name = env.spec.id if env.spec is not None else type(env).__name__
    obs_space, act_space = env.observation_space, env.action_space
    if not (isinstance(obs_space, gym.spaces.Box) and isinstance(act_space, gym.spaces.Box)):
        raise DatasetError(f"Environment {env_name} has spaces {obs_space} / {act_space}; "
                           "only flat Box observation and action spaces are supported.")
    hint = (f" Use a dataset collected in {env_name} (e.g. `edis data make --env {env_name} "
            "...`) or the environment the dataset was made with"
            + (f" ({dataset.env_id})." if dataset.env_id else "."))
    ds_shapes = (dataset.observation_space.shape, dataset.action_space.shape)
    env_shapes = (obs_space.shape, act_space.shape)
    if ds_shapes != env_shapes:
        raise DatasetError(
            f"Dataset {dataset.dataset_id} has observations of shape {ds_shapes[0]} and actions "
            f"of shape {ds_shapes[1]}, but environment {env_name} has observations of shape "
            f"{env_shapes[0]} and actions of shape {env_shapes[1]}." + hint)
    ds_bounds = (dataset.action_space.low, dataset.action_space.high)
    if not (np.allclose(ds_bounds[0], act_space.low) and np.allclose(ds_bounds[1], act_space.high)):
        raise DatasetError(
            f"Dataset {dataset.dataset_id} has action bounds low={ds_bounds[0].tolist()} "
            f"high={ds_bounds[1].tolist()}, but environment {env_name} has low="
            f"{act_space.low.tolist()} high={act_space.high.tolist()}." + hint)
    if dataset.env_id is not None and dataset.env_id != env_name:
        warnings.warn(f"Dataset {dataset.dataset_id} was collected in {dataset.env_id} but the "
                      f"online phase runs {env_name}: spaces match, dynamics and rewards may "
                      f"not. Set env_id={dataset.env_id} (or use data from {env_name}) unless "
                      "this is intended.", DatasetEnvWarning, stacklevel=2)


def make_dataset(env_id: str, policy: Policy | None, steps: int, dataset_id: str, seed: int = 0,
                 policy_name: str = "random", progress: bool = True,
                 overwrite: bool = False, recipe: dict[str, Any] | None = None) -> dict[str, Any]:
    """Collect `steps` transitions of `policy` in `env_id` and write them as a Minari dataset.

    policy None draws uniform random actions from the action space; otherwise it maps one
    observation (obs_dim,) to one action in the env's units (clipped to the bounds before it
    is executed and stored). Episode k is reset with a seed drawn from `seed` and recorded in
    the episode metadata; the last episode is cut at the step budget and marked truncated.
    `recipe` (how the data was made) is stored in the metadata as JSON under "edis_recipe".
    Returns `dataset_info` plus the collection and write times.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    _writable_path(dataset_id, overwrite)
    try:
        env = gym.make(env_id)
    except gym.error.Error as e:
        raise DatasetError(f"Cannot make environment {env_id!r}: {e}. Use a registered "
                           "Gymnasium id such as Hopper-v5 or Pendulum-v1.") from e
    try:
        _require_box(env.observation_space, env.action_space, f"Environment {env_id}")
        start = time.perf_counter()
        episodes = _collect(env, policy, steps, seed, progress, desc=f"{env_id} {policy_name}")
        collected = time.perf_counter()
        write_episodes(dataset_id, env, episodes, progress,
                       algorithm_name=f"edis data make, policy={policy_name}",
                       description=(f"{steps} transitions of {env_id} collected locally by `edis "
                                    f"data make` with policy={policy_name}, seed={seed}. Each "
                                    "episode is reset with the seed in its metadata; the last "
                                    "episode is cut at the step budget and marked truncated."),
                       recipe=recipe)
        written = time.perf_counter()
    finally:
        env.close()

    info = dataset_info(dataset_id)
    info.update(collect_seconds=collected - start, write_seconds=written - collected,
                transitions_per_s=steps / (written - start))
    return info


def dataset_info(dataset_id: str) -> dict[str, Any]:
    """Size, dimensions, episode-return statistics and metadata of a local dataset."""
    dataset = _open(dataset_id)
    offline = _flatten(dataset, gamma=1.0, refuse_nonfinite=False)
    t, returns = offline.transitions, offline.episode_returns
    metadata = dataset.storage.metadata
    return {
        "nonfinite_values": offline.nonfinite_values,
        "dataset_id": dataset_id,
        "env_id": offline.env_id,
        "transitions": len(t),
        "episodes": offline.episodes,
        "obs_dim": offline.obs_dim,
        "act_dim": offline.act_dim,
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "return_min": float(returns.min()),
        "return_max": float(returns.max()),
        "normalized_return_mean": (normalized_score(offline.env_id, float(returns.mean()))
                                   if offline.env_id else None),
        "terminals": int(t.terminals.sum()),
        "timeouts": int(t.timeouts.sum()),
        "algorithm_name": metadata.get("algorithm_name"),
        "recipe": json.loads(metadata["edis_recipe"]) if "edis_recipe" in metadata else None,
        "data_format": metadata.get("data_format"),
        "size_mb": metadata.get("dataset_size"),
        "path": str(get_dataset_path(dataset_id)),
    }


def _writable_path(dataset_id: str, overwrite: bool) -> Path:
    """Where a new dataset goes; refuses an existing one unless `overwrite`, and anything that
    is not a Minari dataset."""
    _check_id(dataset_id)
    path = get_dataset_path(dataset_id)
    if path.exists() and not overwrite:
        raise DatasetError(f"Dataset {dataset_id} already exists at {path}. Choose another "
                           "--dataset-id, or pass overwrite=True (--overwrite) to replace it.")
    if path.exists() and not path.joinpath("data").is_dir():
        raise DatasetError(f"{path} exists but is not a Minari dataset (no data/ folder); "
                           "refusing to replace it. Choose another --dataset-id.")
    return path


def _check_id(dataset_id: str) -> None:
    try:
        _, _, version = parse_dataset_id(dataset_id)
    except (ValueError, TypeError):  # minari raises TypeError when the version is missing
        version = None
    if version is None:
        raise DatasetError(
            f"Malformed dataset id {dataset_id!r}: ids look like (namespace/)name-vN with "
            "letters, digits, '-' and '_', e.g. 'mujoco/hopper/medium-v0' or "
            "'edis/hopper-random-v0'.")


def _open(dataset_id: str) -> minari.MinariDataset:
    """The local dataset, or a DatasetError at once (never a download attempt)."""
    _check_id(dataset_id)
    path = get_dataset_path(dataset_id)
    if not path.joinpath("data").is_dir():
        raise DatasetError(_missing_message(dataset_id))
    try:
        return minari.load_dataset(dataset_id, download=False)
    except _READ_ERRORS as e:
        raise DatasetError(
            f"Cannot read dataset {dataset_id} at {path}: {e}. The folder is incomplete or "
            "was written by an unsupported Minari version; delete it and fetch or make it "
            "again.") from e


def _missing_message(dataset_id: str) -> str:
    root = datasets_root()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # misconfigured neighbours are not this error
        local = sorted(minari.list_local_datasets())
    listing = ", ".join(local[:20]) + (", ..." if len(local) > 20 else "") if local else "none"
    return (
        f"Minari dataset {dataset_id!r} is not in the local datasets folder {root} "
        f"(MINARI_DATASETS_PATH, default ~/.minari/datasets); datasets are never downloaded "
        f"here. Either fetch it on a machine with network (`minari download {dataset_id}`) and "
        f"copy its folder to {root / dataset_id}, or set MINARI_DATASETS_PATH to a folder that "
        "holds it; or make one here: `edis data make --env <ENV_ID> --policy random "
        f"--steps <N> --dataset-id <NEW_ID>`. Local datasets: {listing}.")


def _require_box(obs_space: gym.Space, act_space: gym.Space, owner: str) -> None:
    for kind, space in (("observation", obs_space), ("action", act_space)):
        if not (isinstance(space, gym.spaces.Box) and len(space.shape) == 1):
            raise DatasetError(f"{owner} has {kind} space {space}; only flat Box (1-D vector) "
                               "observation and action spaces are supported.")


def _flatten(dataset: minari.MinariDataset, gamma: float,
             refuse_nonfinite: bool = True) -> OfflineDataset:
    """Episodes of T steps (T+1 observations) -> T rows; next_obs is the true successor.

    refuse_nonfinite=False counts NaN/inf values instead (for `dataset_info`)."""
    dataset_id = dataset.id
    _require_box(dataset.observation_space, dataset.action_space, f"Dataset {dataset_id}")
    parts: list[Transitions] = []
    returns: list[float] = []
    nonfinite: Counter[str] = Counter()
    try:
        for episode in dataset.iterate_episodes():
            counts = _nonfinite_fields(episode)
            if counts and refuse_nonfinite:
                raise DatasetError(
                    f"Episode {episode.id} of dataset {dataset_id} has non-finite values "
                    f"(NaN/inf): {describe_counts(counts)}; training on them would turn every "
                    "loss NaN. Remake the dataset (`edis data make ... --overwrite`) or remove "
                    "that episode.")
            nonfinite.update(counts)
            parts.append(_episode_transitions(episode, gamma, dataset_id))
            returns.append(float(np.sum(episode.rewards)))
    except _READ_ERRORS as e:
        raise DatasetError(f"Cannot read the episodes of dataset {dataset_id}: {e}. Delete it "
                           "and fetch or make it again.") from e
    if not parts:
        raise DatasetError(f"Dataset {dataset_id} has no transitions.")
    return OfflineDataset(
        dataset_id=dataset_id,
        env_id=dataset.env_spec.id if dataset.env_spec is not None else None,
        transitions=Transitions.concatenate(parts),
        episodes=len(parts),
        episode_returns=np.asarray(returns, np.float64),
        observation_space=dataset.observation_space,
        action_space=dataset.action_space,
        nonfinite_values=dict(nonfinite),
    )


def _nonfinite_fields(episode: Any) -> dict[str, int]:
    """NaN/inf values per stored field of one Minari episode."""
    counts = {}
    for name in ("observations", "actions", "rewards"):
        bad = int(np.count_nonzero(~np.isfinite(np.asarray(getattr(episode, name), np.float64))))
        if bad:
            counts[name] = bad
    return counts


def _episode_transitions(episode: Any, gamma: float, dataset_id: str) -> Transitions:
    observations = np.asarray(episode.observations, np.float32)
    actions = np.asarray(episode.actions, np.float32)
    rewards = np.asarray(episode.rewards, np.float32).reshape(-1)
    steps = len(rewards)
    if len(observations) != steps + 1 or len(actions) != steps or steps == 0:
        raise DatasetError(
            f"Episode {episode.id} of dataset {dataset_id} has {len(observations)} observations, "
            f"{len(actions)} actions and {steps} rewards; a Minari episode of T >= 1 steps has "
            "T+1 observations and T of everything else.")
    terminals = np.asarray(episode.terminations, np.float32).reshape(-1)
    timeouts = np.asarray(episode.truncations, np.float32).reshape(-1)
    # An episode that stops with neither flag was cut by its collector: a truncation.
    if terminals[-1] == 0.0:
        timeouts[-1] = 1.0
    return Transitions(
        observations=observations[:-1],
        actions=actions,
        rewards=rewards,
        next_observations=observations[1:],
        terminals=terminals,
        timeouts=timeouts,
        mc_returns=discounted_returns_to_go(rewards, gamma),
    )


def _collect(env: gym.Env, policy: Policy | None, steps: int, seed: int, progress: bool,
             desc: str) -> list[EpisodeBuffer]:
    space: gym.spaces.Box = env.action_space
    action_rng = np.random.default_rng([seed, 0])
    reset_rng = np.random.default_rng([seed, 1])
    if policy is None and not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
        raise DatasetError(f"The random policy needs finite action bounds; {desc} has {space}.")

    def act(obs: np.ndarray) -> np.ndarray:
        if policy is None:
            return action_rng.uniform(space.low, space.high).astype(space.dtype)
        action = np.asarray(policy(obs), dtype=space.dtype)
        if action.shape != space.shape:
            raise DatasetError(f"The policy returned an action of shape {action.shape}; the "
                               f"environment expects {space.shape}.")
        return np.clip(action, space.low, space.high)

    stepper = EnvStepper(env)
    episodes: list[EpisodeBuffer] = []
    done = 0
    with tqdm(total=steps, desc=desc, unit="step", disable=not progress) as bar:
        while done < steps:
            episode_seed = int(reset_rng.integers(2**31 - 1))
            episode = stepper.episode(act, seed=episode_seed, max_steps=steps - done,
                                      on_step=lambda _step: bar.update())
            done += len(episode)
            episodes.append(minari_episode(episode, len(episodes), episode_seed))
    return episodes


def minari_episode(episode: Episode, episode_id: int, seed: int,
                   actions: np.ndarray | None = None) -> EpisodeBuffer:
    """`episode` as Minari records it, with `actions` in the env's units when the episode's
    own are not."""
    flags = np.zeros(len(episode), bool)
    terminations, truncations = flags.copy(), flags.copy()
    # A budget cut is a truncation, and an episode ends with exactly one of the two.
    terminations[-1], truncations[-1] = episode.terminated, not episode.terminated
    return EpisodeBuffer(id=episode_id, seed=seed, observations=episode.observations,
                         actions=episode.actions if actions is None else actions,
                         rewards=episode.rewards.tolist(), terminations=terminations.tolist(),
                         truncations=truncations.tolist())


def write_episodes(dataset_id: str, env: gym.Env, episodes: list[EpisodeBuffer],
                   progress: bool, algorithm_name: str, description: str,
                   recipe: dict[str, Any] | None = None, overwrite: bool = True) -> None:
    """A standard arrow-format Minari dataset (no DataCollector: it needs jax), replacing any
    dataset of that id when `overwrite`."""
    path = _writable_path(dataset_id, overwrite)
    if path.exists():
        shutil.rmtree(path)
    try:
        with warnings.catch_warnings():
            # We have no code permalink or e-mail to record; minari warns about each.
            warnings.filterwarnings("ignore", message=r".*(code_permalink|author_email)")
            dataset = minari.create_dataset_from_buffers(
                dataset_id, [], env=env, eval_env=env.spec, algorithm_name=algorithm_name,
                author="EDIS project (edis data make)", description=description,
                data_format="arrow")
        storage = dataset.storage
        # minari 0.5.4 re-measures the whole folder after every episode, O(episodes²): a
        # 100k-step random Hopper dataset (~4.5k episodes) then takes many minutes. Measure
        # once at the end instead.
        storage.get_size = lambda: 0.0
        try:
            storage.update_episodes(tqdm(episodes, desc="writing", unit="episode",
                                         disable=not progress))
        finally:
            del storage.get_size
        storage.update_metadata({"dataset_size": storage.get_size()})
        if recipe is not None:
            storage.update_metadata({"edis_recipe": json.dumps(recipe, sort_keys=True)})
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
