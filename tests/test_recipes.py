"""D4RL-style datasets: the behaviour policy, its committed weights and the three recipes."""

from __future__ import annotations

import numpy as np
import pytest

from edis_core.data import behaviour
from edis_core.data.behaviour import BehaviourRecipe, load_policy, policy_path, train_behaviour
from edis_core.data.minari_io import DatasetError, dataset_info, load_dataset
from edis_core.data.recipes import make_recipe_dataset, recipe_dataset_id, train_and_save_behaviour
from edis_core.data.scores import reference_returns

TINY = {"target_fraction": 0.0, "max_steps": 900, "random_steps": 200, "eval_every": 300,
        "eval_episodes": 1}


@pytest.mark.slow
def test_behaviour_training_stops_at_the_first_evaluation_that_reaches_the_target():
    policy = train_behaviour(BehaviourRecipe("Hopper-v5", **TINY), progress=False)
    target = reference_returns("Hopper-v5").random             # target_fraction 0
    assert policy.eval_return >= target
    assert policy.steps == sum(len(e.rewards) for e in policy.replay) >= 300
    assert [h["step"] for h in policy.history][-1] == policy.steps
    assert len(policy.history) == 1                            # it stopped at the first one
    with pytest.raises(RuntimeError, match="did not reach"):
        train_behaviour(BehaviourRecipe("Hopper-v5", **{**TINY, "target_fraction": 2.0}),
                        progress=False)


def test_the_three_recipes_write_their_datasets_with_the_recipe_in_the_metadata(
        minari_root, tmp_path, monkeypatch):
    monkeypatch.setattr(behaviour, "POLICIES_DIR", tmp_path / "policies")
    with pytest.raises(DatasetError, match="edis data behaviour --env Hopper-v5"):
        make_recipe_dataset("Hopper-v5", "medium", steps=500, progress=False)

    result = train_and_save_behaviour("Hopper-v5", progress=False, **TINY)
    assert policy_path("Hopper-v5").is_file()
    replay_id = recipe_dataset_id("Hopper-v5", "medium-replay")
    replay = load_dataset(replay_id)
    assert len(replay.transitions) == result["steps"]
    assert dataset_info(replay_id)["recipe"]["behaviour"]["target_fraction"] == 0.0

    medium = make_recipe_dataset("Hopper-v5", "medium", steps=500, progress=False)
    assert medium["dataset_id"] == "edis/hopper-medium-v0" and medium["transitions"] == 500
    assert medium["recipe"]["policy_eval_return"] == pytest.approx(result["eval_return"],
                                                                   abs=1e-3)
    # The dataset's actions are the committed actor's: its log-density of them is finite
    # and higher than of uniform random actions.
    actor, _ = load_policy(policy_path("Hopper-v5"), 11, 3)
    data = load_dataset("edis/hopper-medium-v0").transitions
    import torch

    obs = torch.as_tensor(data.observations)
    own = actor.log_prob(obs, torch.as_tensor(data.actions)).mean().item()
    uniform = actor.log_prob(obs, torch.rand_like(torch.as_tensor(data.actions)) * 2 - 1)
    assert np.isfinite(own) and own > uniform.mean().item()

    random = make_recipe_dataset("Hopper-v5", "random", steps=400, progress=False)
    assert random["recipe"] == {"recipe": "random", "env_id": "Hopper-v5", "seed": 0,
                                "steps": 400}
    with pytest.raises(DatasetError, match="already exists"):
        make_recipe_dataset("Hopper-v5", "random", steps=400, progress=False)
