"""Diagnostics: MMD, policy log-likelihood, dynamics fidelity on real MuJoCo data, validity."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import pytest
import torch

from edis_core.diagnostics import (
    compare,
    dynamics_fidelity,
    mmd,
    policy_log_likelihood,
    ratio_interval,
    ratio_text,
    relative_policy_score,
    scale_actions,
    validity,
)
from edis_core.transitions import Transitions

Policy = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def random_policy(low: np.ndarray, high: np.ndarray) -> Policy:
    return lambda obs, rng: rng.uniform(low, high)


def rollout(env_id: str, n: int, policy: Policy | None = None, seed: int = 0) -> Transitions:
    """n real transitions from stepping the env (reset on termination or truncation)."""
    env = gym.make(env_id)
    low, high = env.action_space.low, env.action_space.high
    policy = policy or random_policy(low, high)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    rows: dict[str, list] = {k: [] for k in ("o", "a", "r", "n", "d")}
    while len(rows["o"]) < n:
        action = np.clip(policy(obs, rng), low, high)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        for key, value in zip("oarnd", (obs, action, reward, next_obs, terminated), strict=True):
            rows[key].append(value)
        obs = env.reset()[0] if terminated or truncated else next_obs
    env.close()
    f32 = {k: np.asarray(v, np.float32) for k, v in rows.items()}
    return Transitions(f32["o"], f32["a"], f32["r"], f32["n"], f32["d"],
                       np.zeros(n, np.float32), np.full(n, -np.inf, np.float32))


def perturbed(t: Transitions, noise: float, seed: int = 0) -> Transitions:
    rng = np.random.default_rng(seed)
    out = t.take(slice(None))
    out.next_observations = (t.next_observations + noise * t.next_observations.std(0)
                             * rng.standard_normal(t.next_observations.shape)).astype(np.float32)
    out.rewards = (t.rewards + noise * t.rewards.std() * rng.standard_normal(len(t))).astype(
        np.float32)
    return out


# --- MMD -------------------------------------------------------------------------------------

SCALES = np.array([1.0, 10.0, 100.0, 0.1, 1.0])


@pytest.mark.parametrize("seed", range(4))
def test_mmd_near_zero_for_same_distribution_and_larger_for_shift(seed):
    rng = np.random.default_rng(seed)
    x, y = (rng.standard_normal((400, 5)) * SCALES for _ in range(2))
    shifted = y + SCALES * np.array([1.0, 0, 0, 0, 0])  # one std in one of five dims
    same = mmd(x, y)
    assert abs(same) < 3e-3
    assert mmd(x, shifted) > 0.02 > 5 * abs(same)


def test_mmd_symmetric_and_deterministic():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((300, 4)), rng.standard_normal((200, 4)) + 0.3
    assert mmd(x, y) == pytest.approx(mmd(y, x), rel=1e-9, abs=1e-12)
    assert mmd(x, y, bandwidth=1.5, standardize=False) == pytest.approx(
        mmd(y, x, bandwidth=1.5, standardize=False), rel=1e-9, abs=1e-12)
    big = rng.standard_normal((1000, 4))
    assert mmd(big, y, max_points=100, seed=3) == mmd(big, y, max_points=100, seed=3)
    assert mmd(big, y, max_points=100, seed=3) != mmd(big, y, max_points=100, seed=4)


def test_mmd_z_scoring_weighs_dims_alike():
    rng = np.random.default_rng(1)
    x, y = (rng.standard_normal((400, 5)) * SCALES for _ in range(2))
    shift_small_dim = mmd(x, y + SCALES * np.array([0, 0, 0, 1.0, 0]))  # dim of scale 0.1
    shift_large_dim = mmd(x, y + SCALES * np.array([0, 0, 1.0, 0, 0]))  # dim of scale 100
    assert shift_small_dim > 0.02 and shift_large_dim > 0.02
    assert 0.5 < shift_small_dim / shift_large_dim < 2.0
    # Without z-scoring, a shift of 0.1 units drowns under the dim of scale 100.
    raw = mmd(x, y + SCALES * np.array([0, 0, 0, 1.0, 0]), standardize=False)
    assert raw < 0.1 * shift_small_dim


def test_mmd_with_fixed_reference_ranks_by_distance():
    rng = np.random.default_rng(2)
    target = rng.standard_normal((400, 3))
    near, far = rng.standard_normal((400, 3)) + 0.3, rng.standard_normal((400, 3)) + 1.0
    assert mmd(near, target, reference=target) < mmd(far, target, reference=target)


def test_mmd_rejects_bad_input():
    with pytest.raises(ValueError, match="features"):
        mmd(np.zeros((5, 2)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="bandwidth"):
        mmd(np.zeros((5, 2)), np.ones((5, 2)), bandwidth=0.0)


# --- policy log-likelihood -------------------------------------------------------------------

class StubPolicy:
    """π(a|s) = N(0.5·tanh(s[:act_dim]), std(s)²) per dim in the agent's [-1, 1] space, with
    std(s) = 0.2, or 0.02 + 0.3·sigmoid(2 s₀) (a spread that depends on the state, as
    Cal-QL's does) when `varying`."""

    def __init__(self, act_dim: int, varying: bool = False) -> None:
        self.device = torch.device("cpu")
        self.act_dim, self.varying = act_dim, varying
        self.seen: list[torch.Tensor] = []

    def mean(self, obs: np.ndarray) -> np.ndarray:
        return 0.5 * np.tanh(obs[..., :self.act_dim])

    def _normal(self, observations: torch.Tensor) -> torch.distributions.Normal:
        mean = 0.5 * torch.tanh(observations[:, :self.act_dim])
        std = 0.02 + 0.3 * torch.sigmoid(2 * observations[:, :1]) if self.varying else 0.2
        return torch.distributions.Normal(mean, std * torch.ones_like(mean))

    def log_prob(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        self.seen.append(actions)
        return self._normal(observations).log_prob(actions).sum(-1)

    def sample_actions(self, observations: torch.Tensor) -> torch.Tensor:
        return self._normal(observations).sample()


def test_scale_actions_maps_box_to_unit_interval():
    low, high = np.array([-2.0, 0.0]), np.array([2.0, 4.0])
    scaled = scale_actions(np.array([[0.0, 2.0], [-2.0, 4.0], [5.0, -1.0]]), low, high)
    np.testing.assert_allclose(scaled[0], [0.0, 0.0])
    assert np.all(np.abs(scaled[1:]) < 1.0)
    np.testing.assert_allclose(np.abs(scaled[1:]), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="action_high"):
        scale_actions(scaled, high, low)


def test_policy_log_likelihood_prefers_actions_near_policy_mean():
    rng = np.random.default_rng(0)
    low, high = np.array([-2.0, 0.0]), np.array([2.0, 4.0])
    obs = rng.standard_normal((300, 4)).astype(np.float32)
    agent = StubPolicy(act_dim=2)
    mean = agent.mean(obs)
    to_env = lambda a: low + (a + 1.0) / 2.0 * (high - low)  # noqa: E731
    near = to_env(mean + 0.05 * rng.standard_normal(mean.shape))
    far = to_env(np.clip(-mean + 0.6 * np.sign(-mean), -0.99, 0.99))
    ll_near = policy_log_likelihood(agent, obs, near, low, high)
    ll_far = policy_log_likelihood(agent, obs, far, low, high)
    assert ll_near > ll_far + 5.0
    # Exact value at the mean: Σ_d log N(0; 0, 0.2²) per row.
    ll_mean = policy_log_likelihood(agent, obs, to_env(mean), low, high, batch_size=7)
    assert ll_mean == pytest.approx(2 * (-np.log(0.2) - 0.5 * np.log(2 * np.pi)), abs=1e-4)
    assert len(agent.seen) > 1 and all(a.abs().max() < 1 for a in agent.seen)


def test_relative_policy_score_is_zero_for_the_policys_own_actions_at_any_states():
    """With a state-dependent spread, the mean log π(a|s) of the policy's own actions moves
    by ~5 nats between two sets of states; the relative score stays ~0 on both, and drops
    for actions the policy finds unlikely."""
    agent = StubPolicy(act_dim=2, varying=True)
    rng = np.random.default_rng(0)
    low, high = -np.ones(2), np.ones(2)
    scores, likelihoods = [], []
    for centre in (-2.0, 2.0):  # narrow (std ~0.02) and wide (std ~0.3) policy states
        obs = (centre + 0.3 * rng.standard_normal((2000, 3))).astype(np.float32)
        torch.manual_seed(1)
        own = agent.sample_actions(torch.as_tensor(obs)).numpy()
        scores.append(relative_policy_score(agent, obs, own, low, high, samples=16, seed=2))
        likelihoods.append(policy_log_likelihood(agent, obs, own, low, high))
    assert likelihoods[0] - likelihoods[1] > 4.0
    assert all(abs(score) < 0.1 for score in scores)
    far = np.clip(agent.mean(obs) + 0.5, -0.99, 0.99)
    assert relative_policy_score(agent, obs, far, low, high) < -1.0  # 1.6 std off per dim
    with pytest.raises(ValueError, match="samples"):
        relative_policy_score(agent, obs, far, low, high, samples=0)


# --- dynamics fidelity -----------------------------------------------------------------------

@pytest.mark.parametrize("env_id", ["Hopper-v5", "HalfCheetah-v5", "Ant-v5", "Swimmer-v5"])
def test_dynamics_fidelity_near_zero_on_real_transitions(env_id):
    real = rollout(env_id, 400, seed=1)
    report = dynamics_fidelity(env_id, real, max_samples=400)
    assert report["supported"] and report["n_samples"] == 400
    assert report["next_obs_normalised_mse"] < 1e-8
    assert report["next_obs_mae"] < 1e-4
    # Ant's forward reward lags qpos by one MuJoCo substep (see the docstring).
    assert report["reward_mae"] < (1e-2 if env_id == "Ant-v5" else 1e-5)
    assert report["terminal_agreement"] == 1.0

    noisy = dynamics_fidelity(env_id, perturbed(real, 0.1), max_samples=400)
    assert noisy["next_obs_normalised_mse"] > 1e-3 > 1e5 * report["next_obs_normalised_mse"]
    assert noisy["reward_mae"] > 5 * report["reward_mae"]


def test_dynamics_fidelity_standard_errors_are_those_of_the_per_row_errors():
    real = rollout("Hopper-v5", 400, seed=1)
    noisy = perturbed(real, 0.1)
    report = dynamics_fidelity("Hopper-v5", noisy, max_samples=400)
    # the simulator reproduces `real` (previous test), so its rows are the truth here
    scale = real.next_observations.astype(np.float64).std(0)
    per_row = (((noisy.next_observations - real.next_observations) / scale) ** 2).mean(1)
    assert report["next_obs_normalised_mse"] == pytest.approx(per_row.mean(), rel=1e-5)
    assert report["next_obs_normalised_mse_stderr"] == pytest.approx(
        per_row.std(ddof=1) / np.sqrt(400), rel=1e-5)
    reward_sq = (noisy.rewards.astype(np.float64) - real.rewards) ** 2
    assert report["reward_mse_stderr"] == pytest.approx(
        reward_sq.std(ddof=1) / np.sqrt(400), rel=1e-5)


def test_ratio_interval_closed_form():
    interval = ratio_interval(2.0, 0.1, 1.0, 0.05)
    spread = 1.959964 * np.hypot(0.05, 0.05)
    assert interval == pytest.approx({"ratio": 2.0, "low": 2.0 * np.exp(-spread),
                                      "high": 2.0 * np.exp(spread)})
    assert ratio_interval(0.0, 0.1, 1.0, 0.1) is None and ratio_text(None) == "n/a"
    assert ratio_interval(1.0, 0.1, 0.0, 0.1) is None
    assert ratio_interval(1.0, None, 1.0, 0.1) is None  # from a single row
    assert ratio_text(interval) == "2.000 [1.741, 2.297]"


# Squared errors are heavy-tailed: log-normal per-row errors with a coefficient of variation
# (std / mean) of 1.8 and of 7.3; the demo runs' s' errors have 2.8-5, their r errors 7-12.
@pytest.mark.parametrize(("sigma", "n"), [(1.2, 5_000), (2.0, 20_000)])
def test_ratio_interval_covers_the_true_ratio_on_heavy_tails(sigma, n):
    # true ratio of means 1.1: the interval should cover it about 95% of the time
    rng = np.random.default_rng(0)
    repeats = 400
    covered = 0
    for _ in range(repeats):
        a = 1.1 * rng.lognormal(0.0, sigma, n)
        b = rng.lognormal(0.0, sigma, n)
        r = ratio_interval(a.mean(), a.std(ddof=1) / np.sqrt(n), b.mean(),
                           b.std(ddof=1) / np.sqrt(n))
        covered += r["low"] <= 1.1 <= r["high"]
    assert 0.90 <= covered / repeats <= 0.99


def test_dynamics_fidelity_splits_the_reward_error_at_termination():
    real = rollout("Hopper-v5", 400, seed=2)
    terminal = real.terminals > 0.5
    assert terminal.any() and not terminal.all()
    # a generator that misses the healthy bonus's drop on terminating transitions
    bonus_kept = dataclasses.replace(real, rewards=real.rewards + terminal.astype(np.float32))
    report = dynamics_fidelity("Hopper-v5", bonus_kept, max_samples=400)
    assert report["terminated_fraction"] == pytest.approx(terminal.mean())
    assert report["reward_mse_terminated"] == pytest.approx(1.0, abs=1e-4)
    assert report["reward_mse_not_terminated"] < 1e-8


def test_dynamics_fidelity_walker_exact_where_velocity_not_clipped():
    real = rollout("Walker2d-v5", 1500, seed=0)
    unclipped = np.flatnonzero(np.abs(real.observations[:, 8:]).max(1) < 10 - 1e-4)
    assert len(unclipped) > 100
    report = dynamics_fidelity("Walker2d-v5", real.take(unclipped), max_samples=300)
    assert report["velocity_clipped_fraction"] == 0.0
    assert report["next_obs_normalised_mse"] < 1e-8 and report["reward_mae"] < 1e-5
    clipped = dynamics_fidelity("Walker2d-v5", real, max_samples=300)
    assert clipped["velocity_clipped_fraction"] > 0.0


def test_dynamics_fidelity_wrong_action_breaks_it_and_nan_rows_are_skipped():
    real = rollout("Hopper-v5", 200, seed=2)
    swapped = real.take(slice(None))
    swapped.actions = -real.actions
    assert dynamics_fidelity("Hopper-v5", swapped)["next_obs_normalised_mse"] > 1e-3
    with_nan = real.take(slice(None))
    with_nan.observations[:10] = np.nan
    report = dynamics_fidelity("Hopper-v5", with_nan)
    assert report["n_nonfinite_skipped"] == 10 and report["n_samples"] == 190
    assert report["next_obs_normalised_mse"] < 1e-8


def test_dynamics_fidelity_rejects_unsupported_envs():
    with pytest.raises(ValueError, match="not a MuJoCo env"):
        dynamics_fidelity("CartPole-v1", Transitions.empty(4, 1, 3))
    with pytest.raises(ValueError, match="not supported"):
        dynamics_fidelity("InvertedDoublePendulum-v5", Transitions.empty(9, 1, 3))
    with pytest.raises(ValueError, match="dims"):
        dynamics_fidelity("Hopper-v5", Transitions.empty(5, 3, 3))


# --- validity --------------------------------------------------------------------------------

def small(obs: list, act: list, rew: list, nxt: list) -> Transitions:
    n = len(obs)
    return Transitions(np.array(obs, np.float32), np.array(act, np.float32),
                       np.array(rew, np.float32), np.array(nxt, np.float32),
                       np.zeros(n, np.float32), np.zeros(n, np.float32),
                       np.full(n, -np.inf, np.float32))


def test_validity_counts_nonfinite_and_out_of_range_rows():
    reference = small([[0, 0], [1, 10]], [[-1], [1]], [0, 1], [[0, 0], [1, 10]])
    rows = small(
        obs=[[0.5, 5], [np.nan, 5], [1.5, 5], [0.5, 5], [0.5, 5]],
        act=[[0.0], [0.0], [0.0], [1.05], [0.0]],
        rew=[0.5, 0.5, 0.5, 0.5, np.inf],
        nxt=[[0.5, 5], [0.5, 5], [0.5, 5], [0.5, 5], [0.5, 5]],
    )
    report = validity(rows, reference)
    assert report["finite"] == pytest.approx(3 / 5)
    assert report["in_range_observations"] == pytest.approx(3 / 5)
    assert report["in_range_actions"] == pytest.approx(4 / 5)
    assert report["in_range_rewards"] == pytest.approx(4 / 5)
    assert report["in_range_next_observations"] == 1.0
    assert report["in_range"] == pytest.approx(1 / 5)
    # A 10% margin of the action range (2) admits 1.05 but not 1.5 (obs range 1, margin 0.1).
    loose = validity(rows, reference, margin=0.1)
    assert loose["in_range_actions"] == 1.0 and loose["in_range_observations"] == pytest.approx(
        3 / 5)
    with pytest.raises(ValueError, match="margin"):
        validity(rows, reference, margin=-1.0)


# --- compare ---------------------------------------------------------------------------------

def plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain(v) for k, v in value.items())
    return value is None or type(value) in (bool, int, float, str)


def test_compare_report_and_verdict():
    env = gym.make("Hopper-v5")
    low, high = env.action_space.low, env.action_space.high
    env.close()
    agent = StubPolicy(act_dim=3)
    # Deterministic "current policy" acting at the stub's mean (action space is [-1, 1]).
    on_policy: Policy = lambda obs, rng: agent.mean(obs) + 0.2 * rng.standard_normal(3)  # noqa: E731
    positives = rollout("Hopper-v5", 300, on_policy, seed=0)
    held_out = rollout("Hopper-v5", 300, on_policy, seed=3)
    good = rollout("Hopper-v5", 300, on_policy, seed=1)
    bad = perturbed(rollout("Hopper-v5", 300, seed=2), 0.2)
    reference = Transitions.concatenate([positives, bad])

    report = compare(good, bad, held_out, reference, agent, "Hopper-v5", low, high,
                     max_samples=200, positives=positives, transition_probe=(1.0, good, bad))
    assert set(report) == {"guided", "unguided", "verdict", "settings", "transition_probe",
                           "dynamics_ratio"}
    for side in ("guided", "unguided"):
        assert {"state_mmd_to_held_out", "state_mmd_to_positive_buffer",
                "policy_log_likelihood", "relative_policy_score", "dynamics",
                "validity"} <= set(report[side])
        assert report[side]["dynamics"]["supported"] is True
    assert abs(report["guided"]["relative_policy_score"]) < 0.2  # the policy's own actions
    assert plain(report)
    json.dumps(report, allow_nan=False)
    verdict = report["verdict"]
    assert verdict == {"guided_closer_to_held_out_states": True,
                       "guided_closer_to_policy": True, "dynamics_no_worse": True,
                       "transition_energy_helps": True}
    probe = report["transition_probe"]
    assert probe["w_transition"] == 1.0 and probe["ratio"]["next_obs_normalised_mse"] < 1e-3

    # Against a reference batch (in a diagnosis: the prior's own completion at the policy's
    # states): exact rows are no worse than perturbed ones, perturbed ones worse than exact.
    referenced = compare(good, good, held_out, reference, agent, "Hopper-v5", low, high,
                         max_samples=200, prior_at_policy_states=bad)
    assert referenced["prior_at_policy_states"]["dynamics"]["next_obs_normalised_mse"] > 1e-3
    assert referenced["verdict"]["dynamics_as_prior_at_policy_states"] is True
    worse = compare(bad, bad, held_out, reference, agent, "Hopper-v5", low, high,
                    max_samples=200, prior_at_policy_states=good)
    assert worse["verdict"]["dynamics_as_prior_at_policy_states"] is False

    swapped = compare(bad, good, held_out, reference, agent, "Hopper-v5", low, high,
                      max_samples=200, transition_probe=(1.0, bad, good))
    assert "state_mmd_to_positive_buffer" not in swapped["guided"]
    g, u = swapped["guided"]["dynamics"], swapped["unguided"]["dynamics"]
    for key in ("next_obs_normalised_mse", "reward_mse"):
        assert swapped["dynamics_ratio"][key] == ratio_interval(
            g[key], g[f"{key}_stderr"], u[key], u[f"{key}_stderr"])
    ratio = swapped["dynamics_ratio"]["next_obs_normalised_mse"]
    assert 1e3 < ratio["low"] < ratio["ratio"] < ratio["high"]  # perturbed vs exact rows
    assert swapped["verdict"] == {"guided_closer_to_held_out_states": False,
                                  "guided_closer_to_policy": False, "dynamics_no_worse": False,
                                  "transition_energy_helps": False}

    unsupported = compare(good, bad, held_out, reference, agent, "CartPole-v1", low, high,
                          transition_probe=(1.0, good, bad))
    assert unsupported["guided"]["dynamics"]["supported"] is False
    assert "dims" in unsupported["guided"]["dynamics"]["reason"]
    assert unsupported["verdict"]["dynamics_no_worse"] is None
    assert unsupported["dynamics_ratio"] == {"next_obs_normalised_mse": None, "reward_mse": None}
    assert unsupported["verdict"]["transition_energy_helps"] is None
    json.dumps(unsupported, allow_nan=False)
