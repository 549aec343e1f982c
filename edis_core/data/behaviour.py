"""The behaviour policy of the D4RL-style `medium` and `medium-replay` datasets.

D4RL (Fu et al. 2020) trained SAC online and stopped it at about a third of expert return:
`medium` is that policy's rollouts, `medium-replay` the replay buffer it was trained on. Here
SAC is the project's Cal-QL agent with the conservative term off (α_cql = 0, no calibration,
one action per source so that the unused term costs little): exactly SAC's critic, actor and
temperature losses. Training stops at the first deterministic evaluation whose mean return
reaches `target_fraction` of the D4RL expert return of the environment's family.

The actor's weights go to a safetensors file (committed under edis_core/data/policies/, so
`medium` is remade in seconds); the replay episodes are returned for `medium-replay`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from minari.data_collector import EpisodeBuffer
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from edis_core.agents import CalQLAgent, CalQLConfig, make_actor
from edis_core.buffers import ReplayBuffer
from edis_core.data.minari_io import minari_episode
from edis_core.data.scores import env_family, reference_returns
from edis_core.episodes import EnvStepper, Step
from edis_core.training.envs import ActionScaler, make_env
from edis_core.training.evaluation import evaluate
from edis_core.transitions import Batch

POLICIES_DIR = Path(__file__).parent / "policies"
SAC_HIDDEN = (256, 256)


@dataclass
class BehaviourRecipe:
    env_id: str
    target_fraction: float = 1 / 3
    """Stop at the first evaluation whose return reaches this share of the expert return."""
    max_steps: int = 300_000
    random_steps: int = 5_000
    """Uniform random actions before the first update (SAC's warm-up)."""
    eval_every: int = 5_000
    eval_episodes: int = 5
    batch_size: int = 256
    seed: int = 0


@dataclass
class BehaviourPolicy:
    recipe: BehaviourRecipe
    actor: dict[str, torch.Tensor]
    steps: int
    eval_return: float
    replay: list[EpisodeBuffer] = field(repr=False)
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def sac_config() -> CalQLConfig:
    """SAC as the committed behaviour policies were trained (nn.Linear's initialisation)."""
    return CalQLConfig(critic_hidden=SAC_HIDDEN, actor_hidden=SAC_HIDDEN, actor_lr=3e-4,
                       alpha_lr=3e-4, cql_alpha=0.0, cql_alpha_online=0.0, cql_n_actions=1,
                       calibrate_offline=False, calibrate_online=False,
                       orthogonal_init=False, log_std_offset=0.0)


def train_behaviour(recipe: BehaviourRecipe, progress: bool = True) -> BehaviourPolicy:
    """SAC from scratch until the target return (or `max_steps`, which is an error)."""
    ref = reference_returns(recipe.env_id)
    if ref is None:
        raise ValueError(f"no D4RL reference returns for {recipe.env_id}: the medium level is "
                         "defined relative to the expert return (hopper, walker2d, ...)")
    target = ref.random + recipe.target_fraction * (ref.expert - ref.random)
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    env, eval_env = make_env(recipe.env_id, recipe.seed), make_env(recipe.env_id, recipe.seed + 1)
    scaler = ActionScaler.for_space(env.action_space)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    agent = CalQLAgent(sac_config(), obs_dim, act_dim)
    agent.start_online()
    replay = ReplayBuffer(recipe.max_steps, obs_dim, act_dim)
    episodes: list[EpisodeBuffer] = []
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    steps = 0
    with tqdm(total=recipe.max_steps, desc=f"SAC {recipe.env_id} to {target:.0f}",
              unit="step", disable=not progress) as bar:
        while steps < recipe.max_steps:
            episode = _run_episode(env, agent, scaler, rng, steps, recipe, replay, bar)
            episodes.append(dataclasses.replace(episode, id=len(episodes)))
            before, steps = steps, steps + len(episode.rewards)
            if steps // recipe.eval_every == before // recipe.eval_every:
                continue
            result = evaluate(agent, eval_env, scaler, recipe.eval_episodes, seed=recipe.seed)
            history.append({"step": steps, "return": result["return_mean"]})
            tqdm.write(f"[{steps}] return {result['return_mean']:.1f} (target {target:.0f})")
            if result["return_mean"] >= target:
                actor = {k: v.detach().clone() for k, v in agent.actor.state_dict().items()}
                return BehaviourPolicy(recipe, actor, steps, result["return_mean"], episodes,
                                       history, time.perf_counter() - start)
    raise RuntimeError(f"SAC did not reach {target:.0f} in {recipe.max_steps} steps on "
                       f"{recipe.env_id} (last evaluations: {history[-3:]}); raise max_steps "
                       "or change the seed")


def _run_episode(env: gym.Env, agent: CalQLAgent, scaler: ActionScaler,
                 rng: np.random.Generator, steps: int, recipe: BehaviourRecipe,
                 replay: ReplayBuffer, bar: tqdm) -> EpisodeBuffer:
    """One episode, one SAC update per step after the warm-up; the episode as Minari has it
    (actions in the env's units)."""
    taken = steps

    def policy(obs: np.ndarray) -> np.ndarray:
        if taken < recipe.random_steps:
            return rng.uniform(-1.0, 1.0, env.action_space.shape).astype(np.float32)
        return agent.act(obs[None].astype(np.float32))[0]

    def learn(step: Step) -> None:
        nonlocal taken
        replay.add(step.transitions())
        taken += 1
        if taken >= recipe.random_steps:
            agent.update(Batch.from_transitions(replay.sample(recipe.batch_size, rng),
                                                agent.device))
        bar.update()

    episode_seed = int(rng.integers(2**31 - 1))
    episode = EnvStepper(env, scaler.to_env).episode(
        policy, seed=episode_seed, max_steps=recipe.max_steps - steps, on_step=learn)
    return minari_episode(episode, 0, episode_seed, actions=scaler.to_env(episode.actions))


def policy_path(env_id: str, level: str = "medium") -> Path:
    return POLICIES_DIR / f"{env_family(env_id)}-{level}.safetensors"


def save_policy(policy: BehaviourPolicy, path: Path) -> None:
    """The actor's weights with the recipe and the result as safetensors metadata."""
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"recipe": json.dumps(asdict(policy.recipe)), "steps": str(policy.steps),
                "eval_return": f"{policy.eval_return:.3f}", "hidden": json.dumps(SAC_HIDDEN)}
    save_file({k: v.contiguous() for k, v in policy.actor.items()}, str(path), metadata)


def load_policy(path: Path, obs_dim: int, act_dim: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A committed behaviour actor (tanh-Gaussian, raw observations) and its metadata."""
    if not path.is_file():
        raise FileNotFoundError(f"no behaviour policy at {path}; train one with `edis data "
                                "behaviour --env ENV_ID` (it writes that file)")
    with safe_open(str(path), "pt") as f:
        metadata = dict(f.metadata() or {})
    actor = make_actor("calql", obs_dim, act_dim, tuple(json.loads(metadata["hidden"])))
    actor.load_state_dict(load_file(str(path)))
    return actor.eval(), metadata
