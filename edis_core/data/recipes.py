"""D4RL-style datasets made here (`edis data make --recipe`): random, medium, medium-replay.

- random: D4RL's 1M steps of a uniform random policy; here `steps` (default 100k) of it.
- medium: D4RL's 1M steps of a SAC policy stopped at about a third of expert return; here
  `steps` (default 100k) of the committed behaviour actor (edis_core/data/policies/), its
  actions sampled.
- medium-replay: D4RL's replay buffer of that SAC run; here the replay of a behaviour training
  with the committed recipe (data/behaviour.py).

Every dataset records its recipe in the Minari metadata ("edis_recipe"), and ids follow one
pattern, `edis/<family>-<recipe>-v0` (e.g. edis/hopper-medium-replay-v0). Nothing is
downloaded: the committed weights make `medium` in seconds, `medium-replay` repeats the
behaviour training (minutes to tens of minutes on one core).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edis_core.data.behaviour import (
    BehaviourRecipe,
    load_policy,
    policy_path,
    save_policy,
    train_behaviour,
)
from edis_core.data.minari_io import DatasetError, make_dataset, write_episodes
from edis_core.data.scores import env_family
from edis_core.training.envs import ActionScaler, make_env

RECIPES = ("random", "medium", "medium-replay")
DEFAULT_STEPS = 100_000


def recipe_dataset_id(env_id: str, recipe: str) -> str:
    return f"edis/{env_family(env_id)}-{recipe}-v0"


def make_recipe_dataset(env_id: str, recipe: str, steps: int = DEFAULT_STEPS, seed: int = 0,
                        overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Write `recipe_dataset_id(env_id, recipe)` and return its `dataset_info`."""
    if recipe not in RECIPES:
        raise DatasetError(f"unknown recipe {recipe!r}; recipes: {', '.join(RECIPES)}")
    dataset_id = recipe_dataset_id(env_id, recipe)
    record: dict[str, Any] = {"recipe": recipe, "env_id": env_id, "seed": seed}
    if recipe == "random":
        return make_dataset(env_id, None, steps, dataset_id, seed=seed, progress=progress,
                            overwrite=overwrite, recipe={**record, "steps": steps})
    if recipe == "medium":
        policy, metadata = _medium_policy(env_id, seed)
        record.update(steps=steps, policy=str(policy_path(env_id).name),
                      policy_recipe=json.loads(metadata["recipe"]),
                      policy_eval_return=float(metadata["eval_return"]))
        return make_dataset(env_id, policy, steps, dataset_id, seed=seed,
                            policy_name="medium (SAC)", progress=progress,
                            overwrite=overwrite, recipe=record)
    return make_medium_replay(env_id, overwrite=overwrite, progress=progress)


def train_and_save_behaviour(env_id: str, seed: int = 0, progress: bool = True,
                             **recipe: Any) -> dict[str, Any]:
    """`edis data behaviour`: train the medium policy, save its weights (to commit) and write
    the medium-replay dataset from the same training run."""
    behaviour = train_behaviour(BehaviourRecipe(env_id, seed=seed, **recipe), progress)
    save_policy(behaviour, policy_path(env_id))
    info = _write_replay(env_id, behaviour, overwrite=True, progress=progress)
    return {"policy": str(policy_path(env_id)), "steps": behaviour.steps,
            "eval_return": behaviour.eval_return, "seconds": behaviour.seconds,
            "history": behaviour.history, "medium_replay": info}


def make_medium_replay(env_id: str, overwrite: bool = False,
                       progress: bool = True) -> dict[str, Any]:
    """Repeat the committed policy's behaviour training and write its replay."""
    _, metadata = load_policy(_committed_policy(env_id), *_dims(env_id))
    behaviour = train_behaviour(BehaviourRecipe(**json.loads(metadata["recipe"])), progress)
    return _write_replay(env_id, behaviour, overwrite, progress)


def _write_replay(env_id: str, behaviour: Any, overwrite: bool, progress: bool) -> dict[str, Any]:
    from edis_core.data.minari_io import dataset_info

    dataset_id = recipe_dataset_id(env_id, "medium-replay")
    env = make_env(env_id, behaviour.recipe.seed)
    try:
        write_episodes(dataset_id, env, behaviour.replay, progress,
                       algorithm_name="edis data behaviour (SAC replay)",
                       description=(f"The replay of SAC on {env_id} trained until its "
                                    f"deterministic return reached {behaviour.eval_return:.0f} "
                                    f"({behaviour.steps} steps), the D4RL medium-replay recipe."),
                       recipe={"recipe": "medium-replay", "env_id": env_id,
                               "behaviour": asdict(behaviour.recipe),
                               "steps": behaviour.steps,
                               "eval_return": behaviour.eval_return},
                       overwrite=overwrite)
    finally:
        env.close()
    return dataset_info(dataset_id)


def _committed_policy(env_id: str) -> Path:
    path = policy_path(env_id)
    if not path.is_file():
        raise DatasetError(f"no behaviour policy for {env_id} at {path}: run `edis data "
                           f"behaviour --env {env_id}` (it writes the policy and medium-replay)")
    return path


def _dims(env_id: str) -> tuple[int, int]:
    env = make_env(env_id, 0)
    try:
        return env.observation_space.shape[0], env.action_space.shape[0]
    finally:
        env.close()


def _medium_policy(env_id: str, seed: int):
    """The committed actor as a dataset policy: one raw observation -> one env action."""
    path = _committed_policy(env_id)
    env = make_env(env_id, seed)
    try:
        dims = env.observation_space.shape[0], env.action_space.shape[0]
        scaler = ActionScaler.for_space(env.action_space)
    finally:
        env.close()
    actor, metadata = load_policy(path, *dims)
    torch.manual_seed(seed)

    @torch.no_grad()
    def policy(obs: np.ndarray) -> np.ndarray:
        action = actor.sample(torch.as_tensor(obs, dtype=torch.float32)[None])[0]
        return scaler.to_env(action.numpy())

    return policy, metadata
