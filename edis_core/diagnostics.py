"""Diagnostics: does energy guidance move generated transitions where EDIS says it should?

EDIS targets q(s, a, s') = d^π(s) · π(a|s) · T(s'|s, a) (Theorem 3.1), so a batch of guided
samples should, compared with an unguided batch from the same prior,
  - have states closer to d^π, measured against episodes of the current policy that the
    energies never saw (`mmd`; the state energy E_s);
  - have actions more typical of the current policy at their own states:
    `relative_policy_score`, log π(a|s) − E_{a'∼π(·|s)} log π(a'|s), 0 for a ~ π (E_π);
  - keep s' and r as faithful to the true dynamics: `dynamics_fidelity` (E_T);
  - stay finite and inside the data's range: `validity`.
`compare` puts these side by side in a JSON-ready report.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from gymnasium.envs.mujoco.mujoco_env import MujocoEnv

from edis_core.agents.base import Agent
from edis_core.transitions import Transitions

# dynamics_no_worse allows guided error up to 10% above unguided: guidance is there to move
# (s, a) toward the policy's, and the prior may model (r, s') somewhat less well at those
# states than at the data's. Both errors are means of heavy-tailed per-row errors (rows at
# Hopper's termination boundary carry most of the reward error), so their ratio is uncertain:
# on the demo runs its 95% interval is ±0.07-0.14 at 10,000 samples a side and ±0.02-0.04 at
# 100,000. `compare` reports each ratio's interval beside the verdict.
DYNAMICS_TOLERANCE = 1.1
Z_95 = 1.959964  # two-sided 95% quantile of the standard normal

# Leading qpos entries (the root's x, or x and y) that these MuJoCo envs leave out of the
# observation by default (exclude_current_positions_from_observation=True).
_EXCLUDED_ROOT_POSITIONS = {"HopperEnv": 1, "Walker2dEnv": 1, "HalfCheetahEnv": 1, "AntEnv": 2}
# Envs that clip qvel to [-c, c] in the observation, losing the true velocity beyond it.
_OBS_VELOCITY_CLIP = {"HopperEnv": 10.0, "Walker2dEnv": 10.0}

# Keeps log π(a|s) of a tanh-squashed policy finite for actions on (or past) the bounds.
_ACTION_EPS = 1e-6


# --- (a) state alignment ---------------------------------------------------------------------

def _subsample(x: np.ndarray, max_points: int, rng: np.random.Generator) -> np.ndarray:
    if len(x) <= max_points:
        return x
    return x[np.sort(rng.choice(len(x), max_points, replace=False))]


def _squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    d = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
    return np.maximum(d, 0.0)


def median_bandwidth(points: np.ndarray) -> float:
    """Median heuristic: the median pairwise distance between distinct points."""
    d = _squared_distances(points, points)[np.triu_indices(len(points), k=1)]
    median = float(np.sqrt(np.median(d)))
    return median if median > 0 else 1.0


def mmd(x: np.ndarray, y: np.ndarray, bandwidth: float | None = None, max_points: int = 2000,
        seed: int = 0, reference: np.ndarray | None = None, standardize: bool = True) -> float:
    """Unbiased squared MMD between samples x and y with k(u, v) = exp(-|u-v|² / 2h²).

    Features are z-scored with the mean and std of `reference` (default: x and y pooled, which
    keeps MMD symmetric) so that every dimension weighs alike; `standardize=False` passes raw
    features through. `bandwidth` h defaults to the median heuristic on the (z-scored)
    reference. Fixing `reference` makes MMDs of several x against one y use the same kernel,
    hence comparable. Each set is subsampled to `max_points` rows, deterministically by `seed`.
    The unbiased estimate can be slightly negative when x and y share a distribution.
    """
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"mmd: x has {x.shape[1]} features, y has {y.shape[1]}")
    if len(x) < 2 or len(y) < 2:
        raise ValueError("mmd: x and y need at least 2 rows each")
    rng = np.random.default_rng(seed)
    x, y = _subsample(x, max_points, rng), _subsample(y, max_points, rng)
    ref = np.concatenate([x, y]) if reference is None else np.asarray(reference, np.float64)
    ref = _subsample(ref.reshape(len(ref), -1), max_points, rng)
    if standardize:
        mean, std = ref.mean(0), ref.std(0)
        std = np.where(std > 1e-8, std, 1.0)
        x, y, ref = (x - mean) / std, (y - mean) / std, (ref - mean) / std
    h = median_bandwidth(ref) if bandwidth is None else bandwidth
    if h <= 0:
        raise ValueError(f"mmd: bandwidth must be > 0, got {h}")
    k_xx = np.exp(-_squared_distances(x, x) / (2 * h * h))
    k_yy = np.exp(-_squared_distances(y, y) / (2 * h * h))
    k_xy = np.exp(-_squared_distances(x, y) / (2 * h * h))
    m, n = len(x), len(y)
    # MMD²_u = Σ_{i≠j} k(x_i,x_j)/m(m-1) + Σ_{i≠j} k(y_i,y_j)/n(n-1) − 2 Σ k(x_i,y_j)/mn
    xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    yy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(xx + yy - 2.0 * k_xy.mean())


# --- (b) policy alignment --------------------------------------------------------------------

def scale_actions(actions: np.ndarray, action_low: np.ndarray,
                  action_high: np.ndarray) -> np.ndarray:
    """Env units -> the agent's [-1, 1] box, clipped just inside it."""
    low, high = np.asarray(action_low, np.float64), np.asarray(action_high, np.float64)
    if np.any(high <= low):
        raise ValueError("action_high must be > action_low in every dimension")
    scaled = 2.0 * (np.asarray(actions, np.float64) - low) / (high - low) - 1.0
    return np.clip(scaled, -1.0 + _ACTION_EPS, 1.0 - _ACTION_EPS)


def policy_log_likelihood(agent: Agent, observations: np.ndarray, actions: np.ndarray,
                          action_low: np.ndarray, action_high: np.ndarray,
                          batch_size: int = 4096) -> float:
    """Mean log π(a|s) over rows; the E_π target. Actions are in env units.

    Actions outside the box are clipped to it (a tanh policy has no density outside), so
    this measures alignment, not validity: see `validity` for out-of-range rows.
    """
    if len(observations) != len(actions) or len(actions) == 0:
        raise ValueError("policy_log_likelihood: need as many (>0) observations as actions")
    scaled = scale_actions(actions, action_low, action_high)
    device = getattr(agent, "device", "cpu")
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(actions), batch_size):
            obs = torch.as_tensor(observations[start:start + batch_size], dtype=torch.float32,
                                  device=device)
            act = torch.as_tensor(scaled[start:start + batch_size], dtype=torch.float32,
                                  device=device)
            total += float(agent.log_prob(obs, act).double().sum())
    return total / len(actions)


def relative_policy_score(agent: Agent, observations: np.ndarray, actions: np.ndarray,
                          action_low: np.ndarray, action_high: np.ndarray, samples: int = 8,
                          seed: int = 0, batch_size: int = 4096) -> float:
    """Mean over rows of log π(a|s) − E_{a'∼π(·|s)} log π(a'|s); actions in env units.

    The policy's own actions score 0 on average at any state; actions it finds less likely
    than its own score below 0. Unlike the mean log π(a|s), this does not depend on which
    states the rows have: a policy whose spread varies with s (Cal-QL's) would otherwise
    mix the state shift into the action score. The expectation is estimated with `samples`
    actions per state, drawn with torch seeded by `seed`.
    """
    if samples < 1:
        raise ValueError(f"relative_policy_score: samples must be >= 1, got {samples}")
    own = policy_log_likelihood(agent, observations, actions, action_low, action_high,
                                batch_size)
    device = getattr(agent, "device", "cpu")
    limit = 1.0 - _ACTION_EPS
    total = 0.0
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for start in range(0, len(observations), batch_size):
            obs = torch.as_tensor(observations[start:start + batch_size], dtype=torch.float32,
                                  device=device).repeat(samples, 1)
            sampled = agent.sample_actions(obs).clamp(-limit, limit)
            total += float(agent.log_prob(obs, sampled).double().sum()) / samples
    return own - total / len(observations)


# --- (c) dynamics fidelity -------------------------------------------------------------------

def _make_env(env_id: str, obs_dim: int) -> gym.Env:
    env = gym.make(env_id)
    if env.observation_space.shape == (obs_dim,):
        return env
    unwrapped = env.unwrapped
    model = getattr(unwrapped, "model", None)
    # Ant-v5 appends 78 contact forces by default; datasets may hold only qpos[2:] + qvel.
    if type(unwrapped).__name__ == "AntEnv" and obs_dim == model.nq - 2 + model.nv:
        env.close()
        return gym.make(env_id, include_cfrc_ext_in_observation=False)
    env.close()
    raise ValueError(f"{env_id} observations have {env.observation_space.shape} dims, "
                     f"the transitions have {obs_dim}")


def _excluded_root_positions(env: gym.Env) -> int:
    """How many leading qpos entries the observation leaves out; ValueError if unknown."""
    unwrapped = env.unwrapped
    env_id = env.spec.id if env.spec else type(unwrapped).__name__
    if not isinstance(unwrapped, MujocoEnv):
        raise ValueError(f"{env_id} is not a MuJoCo env: dynamics fidelity is not supported")
    nq, nv = unwrapped.model.nq, unwrapped.model.nv
    obs_dim = env.observation_space.shape[0]
    name = type(unwrapped).__name__
    if name in _EXCLUDED_ROOT_POSITIONS:
        excluded = _EXCLUDED_ROOT_POSITIONS[name]
        if not getattr(unwrapped, "_exclude_current_positions_from_observation", True):
            excluded = 0
        if obs_dim >= nq - excluded + nv:  # any extra dims (Ant's contact forces) are outputs
            return excluded
    for excluded in (1, 2, 0):
        if obs_dim == nq - excluded + nv:
            return excluded
    raise ValueError(f"{env_id} is not supported: its {obs_dim}-dim observation is not "
                     f"qpos[k:] + qvel (nq={nq}, nv={nv}) for k in 0, 1, 2")


def dynamics_fidelity(env_id: str, transitions: Transitions, max_samples: int = 10_000,
                      seed: int = 0, scale: np.ndarray | None = None) -> dict:
    """Error of generated (s', r, done) against the simulator stepped from (s, a).

    For each sampled row the MuJoCo state is set from s with `set_state(qpos, qvel)`, where
    the observation is qpos[k:] + qvel (+ derived outputs such as Ant's contact forces, which
    are not needed to set the state and are compared as part of s'): Hopper, Walker2d,
    HalfCheetah leave out the root x (k=1), Ant the root x and y (k=2); other MuJoCo envs whose
    observation is exactly qpos[k:] + qvel for k in (1, 2, 0) are mapped the same way, the rest
    raise ValueError. The left-out coordinates are set to 0: the dynamics are invariant to
    translating the root, and the forward reward uses only the velocity
    (x_after − x_before)/dt, so neither s' nor r depends on them.
    Hopper and Walker2d clip qvel to [-10, 10] in their observation, so rows whose true
    velocity was clipped cannot be restored exactly and show some error even for real data
    (`velocity_clipped_fraction` says how many rows touch the clip). Ant-v5's forward reward
    uses the torso's xpos, which MuJoCo computes at the start of the last substep, so it lags
    qpos by one substep; a state restored from s cannot reproduce that lag, leaving a small
    reward error (MAE ~3e-3 on random-action data) even for real transitions.
    The unwrapped env is stepped (no time limit), after one reset; its termination flag is
    only compared with the generated done, never acted on.

    Errors are means over samples of per-sample means over dims; `normalised` ones divide
    each dim of s' by `scale` (default: per-dim std of the simulator's next states; pass a
    common scale to compare several batches); `*_stderr` are the standard errors of those
    means over rows. Rows with non-finite values are skipped.
    Hopper and Walker2d pay their healthy reward only while the next state is healthy, so r
    jumps by that bonus at the termination boundary: `reward_mse_terminated` (rows the
    simulator terminates, `terminated_fraction` of them) and `reward_mse_not_terminated`
    show how much of the reward error sits on that boundary (None when there are no rows).
    """
    if max_samples < 1:
        raise ValueError(f"max_samples must be >= 1, got {max_samples}")
    env = _make_env(env_id, transitions.obs_dim)
    try:
        excluded = _excluded_root_positions(env)
        unwrapped = env.unwrapped
        nq, nv = unwrapped.model.nq, unwrapped.model.nv
        finite = np.flatnonzero(_finite_rows(transitions))
        n_nonfinite = len(transitions) - len(finite)
        rng = np.random.default_rng(seed)
        if len(finite) > max_samples:
            finite = np.sort(rng.choice(finite, max_samples, replace=False))
        if len(finite) == 0:
            raise ValueError("dynamics_fidelity: no finite transitions to evaluate")
        rows = transitions.take(finite)
        env.reset(seed=seed)
        true_next = np.zeros(rows.next_observations.shape, np.float64)
        true_reward = np.zeros(len(rows), np.float64)
        true_terminal = np.zeros(len(rows), bool)
        n_pos = nq - excluded
        clip = _OBS_VELOCITY_CLIP.get(type(unwrapped).__name__, np.inf)
        clipped = np.abs(rows.observations[:, n_pos:n_pos + nv]) >= clip - 1e-4
        for i, (obs, action) in enumerate(zip(rows.observations, rows.actions, strict=True)):
            qpos = np.concatenate([np.zeros(excluded), obs[:n_pos]]).astype(np.float64)
            qvel = np.asarray(obs[n_pos:n_pos + nv], np.float64)
            unwrapped.set_state(qpos, qvel)
            next_obs, reward, terminated, _, _ = unwrapped.step(np.asarray(action, np.float64))
            true_next[i], true_reward[i], true_terminal[i] = next_obs, reward, terminated
    finally:
        env.close()
    if scale is None:
        scale = true_next.std(0)
    scale = np.where(np.asarray(scale, np.float64) > 1e-8, scale, 1.0)
    err = rows.next_observations.astype(np.float64) - true_next
    reward_err = rows.rewards.astype(np.float64) - true_reward
    normalised_sq = ((err / scale) ** 2).mean(1)  # per row, over dims
    return {
        "supported": True,
        "n_samples": len(rows),
        "n_nonfinite_skipped": int(n_nonfinite),
        "next_obs_mse": float((err ** 2).mean()),
        "next_obs_mae": float(np.abs(err).mean()),
        "next_obs_normalised_mse": float(normalised_sq.mean()),
        "next_obs_normalised_mse_stderr": _standard_error(normalised_sq),
        "next_obs_normalised_mae": float(np.abs(err / scale).mean()),
        "reward_mse": float((reward_err ** 2).mean()),
        "reward_mse_stderr": _standard_error(reward_err ** 2),
        "reward_mae": float(np.abs(reward_err).mean()),
        "terminated_fraction": float(true_terminal.mean()),
        "reward_mse_terminated": _mean_or_none(reward_err[true_terminal] ** 2),
        "reward_mse_not_terminated": _mean_or_none(reward_err[~true_terminal] ** 2),
        "terminal_agreement": float(((rows.terminals > 0.5) == true_terminal).mean()),
        "velocity_clipped_fraction": float(clipped.any(1).mean()),
    }


def _mean_or_none(values: np.ndarray) -> float | None:
    return float(values.mean()) if len(values) else None


def _standard_error(values: np.ndarray) -> float | None:
    """Standard error of the mean of `values`; None for a single value (unknown)."""
    return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else None


def ratio_interval(mean_a: float, stderr_a: float | None, mean_b: float,
                   stderr_b: float | None) -> dict[str, float] | None:
    """mean_a / mean_b with a 95% interval, for means of two independent samples.

    The delta method on log(mean_a / mean_b): its variance is the sum of the squared relative
    standard errors, and the interval is the ratio times exp(± 1.96 · that standard deviation).
    None when a mean is not positive (no ratio to take logs of) or a standard error unknown."""
    if mean_a <= 0 or mean_b <= 0 or stderr_a is None or stderr_b is None:
        return None
    ratio = mean_a / mean_b
    spread = Z_95 * float(np.hypot(stderr_a / mean_a, stderr_b / mean_b))
    return {"ratio": ratio, "low": ratio * float(np.exp(-spread)),
            "high": ratio * float(np.exp(spread))}


def ratio_text(interval: dict[str, float] | None) -> str:
    """A `ratio_interval` for a table: '1.083 [1.052, 1.115]', or 'n/a'."""
    if interval is None:
        return "n/a"
    return f"{interval['ratio']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]"


# --- (d) validity ----------------------------------------------------------------------------

_CHECKED = ("observations", "actions", "rewards", "next_observations")


def _finite_rows(t: Transitions) -> np.ndarray:
    ok = np.ones(len(t), bool)
    for name in (*_CHECKED, "terminals"):
        ok &= np.isfinite(getattr(t, name).reshape(len(t), -1)).all(1)
    return ok


def validity(transitions: Transitions, reference: Transitions, margin: float = 0.0) -> dict:
    """Fractions of rows that are finite and inside the reference data's per-dim range.

    The range of each dim is [min − margin·(max − min), max + margin·(max − min)] over the
    reference (margin is relative, so it means the same in every dim). A row is in range for a
    field when all its dims are; `in_range` needs all four fields. Non-finite rows are out.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if len(transitions) == 0 or len(reference) == 0:
        raise ValueError("validity: transitions and reference must be non-empty")
    report = {"finite": float(_finite_rows(transitions).mean())}
    overall = np.ones(len(transitions), bool)
    for name in _CHECKED:
        values = getattr(transitions, name).reshape(len(transitions), -1)
        ref = getattr(reference, name).reshape(len(reference), -1)
        low, high = ref.min(0), ref.max(0)
        pad = margin * (high - low)
        inside = ((values >= low - pad) & (values <= high + pad)).all(1)
        report[f"in_range_{name}"] = float(inside.mean())
        overall &= inside
    report["in_range"] = float(overall.mean())
    return report


# --- (e) guided vs unguided ------------------------------------------------------------------

def _batch_report(batch: Transitions, held_out: Transitions, positives: Transitions | None,
                  reference: Transitions, agent: Agent, env_id: str | None,
                  action_low: np.ndarray, action_high: np.ndarray,
                  dynamics_scale: np.ndarray, max_samples: int, seed: int) -> dict:
    finite = batch.take(np.flatnonzero(_finite_rows(batch)))
    report: dict = {"n": len(batch), "n_finite": len(finite)}
    enough = len(finite) >= 2
    report["state_mmd_to_held_out"] = mmd(
        finite.observations, held_out.observations, seed=seed,
        reference=held_out.observations) if enough else None
    if positives is not None:
        report["state_mmd_to_positive_buffer"] = mmd(
            finite.observations, positives.observations, seed=seed,
            reference=positives.observations) if enough else None
    report["policy_log_likelihood"] = policy_log_likelihood(
        agent, finite.observations, finite.actions, action_low, action_high) if enough else None
    report["relative_policy_score"] = relative_policy_score(
        agent, finite.observations, finite.actions, action_low, action_high,
        seed=seed) if enough else None
    report["dynamics"] = _dynamics(env_id, batch, max_samples, seed, dynamics_scale)
    report["validity"] = validity(batch, reference)
    return report


def _dynamics(env_id: str | None, batch: Transitions, max_samples: int, seed: int,
              scale: np.ndarray) -> dict:
    if env_id is None:
        return {"supported": False, "reason": "no env id given"}
    try:
        return dynamics_fidelity(env_id, batch, max_samples, seed, scale=scale)
    except (ValueError, gym.error.Error) as e:
        return {"supported": False, "reason": str(e)}


def _less(a: float | None, b: float | None) -> bool | None:
    return None if a is None or b is None else bool(a < b)


TRANSITION_GAIN = 0.9  # transition_energy_helps: w_T > 0 removes at least 10% of an error
_DYNAMICS_KEYS = ("next_obs_normalised_mse", "reward_mse")


def _transition_probe(weight: float, with_energy: Transitions, without: Transitions, *,
                      env_id: str | None, max_samples: int, seed: int,
                      scale: np.ndarray) -> dict:
    on = _dynamics(env_id, with_energy, max_samples, seed, scale)
    off = _dynamics(env_id, without, max_samples, seed, scale)
    probe: dict = {"w_transition": weight, "with": on, "without": off, "ratio": None,
                   "helps": None}
    if on["supported"] and off["supported"]:
        ratio = {key: on[key] / off[key] if off[key] > 0 else None for key in _DYNAMICS_KEYS}
        probe["ratio"] = ratio
        if None not in ratio.values():
            probe["helps"] = bool(min(ratio.values()) <= TRANSITION_GAIN
                                  and max(ratio.values()) <= DYNAMICS_TOLERANCE)
    return probe


def compare(guided: Transitions, unguided: Transitions, held_out: Transitions,
            reference: Transitions, agent: Agent, env_id: str | None,
            action_low: np.ndarray, action_high: np.ndarray, max_samples: int = 10_000,
            seed: int = 0, positives: Transitions | None = None,
            transition_probe: tuple[float, Transitions, Transitions] | None = None,
            prior_at_policy_states: Transitions | None = None) -> dict:
    """JSON-ready report on a guided and an unguided batch, with a verdict.

    `held_out`: episodes of the current policy that the energies never saw (≈ d^π); both
    MMDs use its z-scoring and bandwidth, so they are comparable. `positives` (optional):
    the positive buffer the energies were trained on, reported beside it as an in-sample
    figure. `reference`: the offline dataset (range for validity, common scale for the
    normalised dynamics error). `transition_probe` (optional): (w_T, with, without), two
    guided batches that differ only in the transition energy's scale, w_T > 0 and 0
    (random numbers included); their dynamics errors are compared. Verdict entries are
    None when a metric could not be computed:
      guided_closer_to_held_out_states: lower MMD² to `held_out`;
      guided_closer_to_policy: relative policy score nearer 0 (the policy's own actions);
      dynamics_no_worse: guided normalised next-state MSE and reward MSE each at most
        DYNAMICS_TOLERANCE (1.1) times the unguided ones (`dynamics_ratio` gives each ratio
        with its 95% interval, None where dynamics are unsupported: the noise of this
        draw, not the spread between retrainings of the energies);
      transition_energy_helps: w_T > 0 gives at least 10% lower next-state or reward MSE
        than w_T = 0, and neither more than DYNAMICS_TOLERANCE times higher;
      dynamics_as_prior_at_policy_states: guided next-state and reward MSE each at most
        DYNAMICS_TOLERANCE times those of `prior_at_policy_states` (optional: the prior's
        own (r, s', done) completed at the held-out (s, a)). Unguided samples sit at the
        offline data's states, where dynamics may be easier to model; this compares guided
        samples with what the prior does at the policy's states, i.e. whether guidance itself
        costs dynamics accuracy.
    """
    scale = reference.next_observations.astype(np.float64).std(0)

    def report_on(batch: Transitions) -> dict:
        return _batch_report(batch, held_out, positives, reference, agent, env_id,
                             action_low, action_high, scale, max_samples, seed)

    report: dict = {"guided": report_on(guided), "unguided": report_on(unguided)}
    g, u = report["guided"], report["unguided"]
    dynamics_no_worse = None
    if g["dynamics"]["supported"] and u["dynamics"]["supported"]:
        dynamics_no_worse = all(
            g["dynamics"][key] <= DYNAMICS_TOLERANCE * u["dynamics"][key]
            for key in _DYNAMICS_KEYS)
        report["dynamics_ratio"] = {
            key: ratio_interval(g["dynamics"][key], g["dynamics"][f"{key}_stderr"],
                                u["dynamics"][key], u["dynamics"][f"{key}_stderr"])
            for key in _DYNAMICS_KEYS}
    else:
        report["dynamics_ratio"] = dict.fromkeys(_DYNAMICS_KEYS)
    closer_to_policy = None
    if g["relative_policy_score"] is not None and u["relative_policy_score"] is not None:
        closer_to_policy = abs(g["relative_policy_score"]) < abs(u["relative_policy_score"])
    report["verdict"] = {
        "guided_closer_to_held_out_states": _less(g["state_mmd_to_held_out"],
                                                  u["state_mmd_to_held_out"]),
        "guided_closer_to_policy": closer_to_policy,
        "dynamics_no_worse": dynamics_no_worse,
        "transition_energy_helps": None,
    }
    if prior_at_policy_states is not None:
        reference_dynamics = _dynamics(env_id, prior_at_policy_states, max_samples, seed, scale)
        report["prior_at_policy_states"] = {"dynamics": reference_dynamics}
        if g["dynamics"]["supported"] and reference_dynamics["supported"]:
            report["verdict"]["dynamics_as_prior_at_policy_states"] = all(
                g["dynamics"][key] <= DYNAMICS_TOLERANCE * reference_dynamics[key]
                for key in _DYNAMICS_KEYS)
    if transition_probe is not None:
        report["transition_probe"] = _transition_probe(
            *transition_probe, env_id=env_id, max_samples=max_samples, seed=seed, scale=scale)
        report["verdict"]["transition_energy_helps"] = report["transition_probe"]["helps"]
    report["settings"] = {"dynamics_tolerance": DYNAMICS_TOLERANCE, "max_samples": max_samples,
                          "seed": seed, "env_id": env_id}
    return report
