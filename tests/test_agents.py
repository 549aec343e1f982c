"""IQL and Cal-QL: losses, learning on tiny MDPs, calibration, state round trip, interface."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from edis_core.agents import (
    AGENT_CONFIGS,
    CalQLAgent,
    CalQLConfig,
    IQLAgent,
    IQLConfig,
    make_actor,
    make_agent,
)
from edis_core.agents.calql import calibrated_cql_gap
from edis_core.agents.iql import expectile_loss
from edis_core.agents.networks import QEnsemble, TanhGaussianActor, Workspace
from edis_core.transitions import Batch

OBS_DIM, ACT_DIM = 5, 2
SMALL = (32, 32)



def random_batch(n: int = 64, mc_returns: float | None = None, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    mc = (torch.randn(n, generator=g) * 5 if mc_returns is None
          else torch.full((n,), mc_returns))
    return Batch(observations=torch.randn(n, OBS_DIM, generator=g),
                 actions=torch.rand(n, ACT_DIM, generator=g) * 2 - 1,
                 rewards=torch.randn(n, generator=g),
                 next_observations=torch.randn(n, OBS_DIM, generator=g),
                 terminals=(torch.rand(n, generator=g) < 0.2).float(),
                 mc_returns=mc)


def bandit_batch(n: int, g: torch.Generator) -> Batch:
    """A one-step MDP: one state, action +0.5 pays 1 and -0.5 pays 0, half the data each."""
    good = torch.rand(n, generator=g) < 0.5
    actions = torch.where(good, 0.5, -0.5).unsqueeze(1).expand(n, ACT_DIM).clone()
    obs = torch.ones(n, OBS_DIM)
    return Batch(observations=obs, actions=actions, rewards=good.float(), next_observations=obs,
                 terminals=torch.ones(n), mc_returns=good.float())


def make(name: str, **overrides) -> IQLAgent | CalQLAgent:
    if name == "iql":
        config = IQLConfig(hidden=SMALL, **overrides)
    else:
        config = CalQLConfig(critic_hidden=SMALL, actor_hidden=SMALL, **overrides)
    return make_agent(name, config, OBS_DIM, ACT_DIM, "cpu")


def gram(weight: torch.Tensor) -> torch.Tensor:
    """W Wᵀ or Wᵀ W, whichever is the smaller square, of an (out, in) weight."""
    return weight @ weight.T if weight.shape[0] <= weight.shape[1] else weight.T @ weight


def test_calql_starts_as_corl_does_orthogonal_layers_and_log_std_near_minus_one():
    agent = make("calql")
    critics = agent.critic.net
    for weight, bias in zip(critics.weights, critics.biases, strict=True):
        for member in range(critics.members):
            w = weight[member].T.detach()                          # (out, in)
            torch.testing.assert_close(gram(w), 2.0 * torch.eye(min(w.shape)), atol=1e-5,
                                       rtol=0)
        assert not bias.any()
    assert not torch.equal(critics.weights[0][0], critics.weights[0][1])  # members differ
    linears = [m for m in agent.actor.net if isinstance(m, torch.nn.Linear)]
    for layer in linears:
        torch.testing.assert_close(gram(layer.weight.detach()),
                                   2.0 * torch.eye(min(layer.weight.shape)), atol=1e-5, rtol=0)
    head = linears[-1].bias.detach()
    assert torch.equal(head[:ACT_DIM], torch.zeros(ACT_DIM))
    assert torch.equal(head[ACT_DIM:], torch.full((ACT_DIM,), -1.0))
    # SAC's behaviour recipe keeps nn.Linear's uniform initialisation
    plain = make("calql", orthogonal_init=False, log_std_offset=0.0)
    first = plain.critic.net.weights[0][0].T.detach()
    assert not torch.allclose(gram(first), 2.0 * torch.eye(min(first.shape)), atol=0.1)
    assert first.abs().max() <= 1 / math.sqrt(OBS_DIM + ACT_DIM)


# --- IQL's expectile loss -------------------------------------------------------------------

def test_expectile_half_is_half_squared_error():
    u = torch.randn(100)
    torch.testing.assert_close(expectile_loss(u, 0.5), 0.5 * u.square())


def test_expectile_weights_are_asymmetric():
    u = torch.tensor([2.0, -2.0])
    loss = expectile_loss(u, 0.7)
    torch.testing.assert_close(loss, torch.tensor([0.7 * 4.0, 0.3 * 4.0]))
    assert loss[0] > loss[1]  # under-estimates (u > 0) cost more for τ > 0.5


def test_expectile_loss_minimiser_is_the_expectile():
    samples = torch.tensor([0.0, 0.0, 0.0, 1.0])  # Bernoulli(1/4)
    v = torch.zeros((), requires_grad=True)
    opt = torch.optim.SGD([v], lr=0.5)
    for _ in range(500):
        opt.zero_grad()
        expectile_loss(samples - v, 0.9).mean().backward()
        opt.step()
    # τ p (1 − v) = (1 − τ)(1 − p) v  →  v = τp / (τp + (1 − τ)(1 − p))
    expected = 0.9 * 0.25 / (0.9 * 0.25 + 0.1 * 0.75)
    assert abs(v.item() - expected) < 1e-3


# --- learning on tiny problems ---------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
def test_iql_value_tracks_expectile_of_q(seed):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    agent = make("iql", expectile=0.8, critic_lr=3e-3, value_lr=3e-3, actor_lr=3e-3,
                 target_update_rate=0.05)
    for _ in range(800):
        agent.update(bandit_batch(128, g))
    obs = torch.ones(1, OBS_DIM)
    with torch.no_grad():
        q = agent.critic(obs, torch.tensor([[0.5, 0.5], [-0.5, -0.5]])).mean(0)
        v = agent.value(obs).item()
    assert abs(q[0].item() - 1.0) < 0.05 and abs(q[1].item()) < 0.05
    # Q is 1 or 0 with probability 1/2 each: the 0.8-expectile is 0.8, the mean only 0.5.
    assert abs(v - 0.8) < 0.06


def test_iql_actor_prefers_the_better_action():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    agent = make("iql", critic_lr=3e-3, value_lr=3e-3, actor_lr=3e-3, target_update_rate=0.05)
    for _ in range(800):
        agent.update(bandit_batch(128, g))
    action = agent.act(np.ones((1, OBS_DIM), np.float32), deterministic=True)
    assert (action > 0.2).all()  # advantage-weighted: the paying action dominates


@pytest.mark.parametrize("seed", [0, 1])
def test_calql_critic_fits_known_value_without_conservatism(seed):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    agent = make("calql", cql_alpha=0.0, critic_lr=3e-3, actor_lr=1e-3)
    for _ in range(300):
        batch = bandit_batch(128, g)
        batch.rewards = torch.full_like(batch.rewards, 2.0)       # constant r, terminal
        logs = agent.update(batch)
    assert logs["td_loss"] < 0.01
    with torch.no_grad():
        q = agent.critic(batch.observations, batch.actions)
    assert (q - 2.0).abs().max() < 0.1


def test_calql_losses_decrease():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    agent = make("calql", critic_lr=1e-3)
    history = []
    for _ in range(200):
        logs = agent.update(bandit_batch(128, g))
        history.append((logs["critic_loss"], logs["cql_gap"], logs["q_data"] - logs["q_random"]))
    first, last = np.mean(history[:20], axis=0), np.mean(history[-20:], axis=0)
    assert last[0] < first[0] - 4.0
    assert last[1] < first[1] - 0.4
    assert last[2] > 0.3        # conservatism: data actions end up above uniform ones


# --- Cal-QL's calibration ---------------------------------------------------------------------

def gap_inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    e, b, k = 2, 8, 4
    return {"q_data": torch.randn(e, b, generator=g),
            "q_random": torch.randn(e, b, k, generator=g),
            "q_current": torch.randn(e, b, k, generator=g, requires_grad=True),
            "q_next": torch.randn(e, b, k, generator=g, requires_grad=True),
            "logp_current": torch.randn(b, k, generator=g),
            "logp_next": torch.randn(b, k, generator=g)}


def test_calibration_with_unknown_returns_is_plain_cql():
    x = gap_inputs()
    calibrated = calibrated_cql_gap(**x, lower_bound=torch.full((8,), -math.inf), act_dim=3)
    plain = calibrated_cql_gap(**x, lower_bound=None, act_dim=3)
    assert torch.equal(calibrated, plain)
    # The plain term written out: log-sum-exp of importance-weighted Q minus the data's Q.
    log_uniform = -3 * math.log(2.0)
    terms = torch.cat([x["q_random"] - log_uniform, x["q_next"] - x["logp_next"],
                       x["q_current"] - x["logp_current"]], dim=-1)
    torch.testing.assert_close(plain, (torch.logsumexp(terms, -1) - x["q_data"]).mean(-1))


def test_calibration_replaces_policy_q_below_the_return():
    x = gap_inputs()
    mc = torch.full((8,), 50.0)                      # far above every Q-value
    gap = calibrated_cql_gap(**x, lower_bound=mc, act_dim=3)
    log_uniform = -3 * math.log(2.0)
    floored = [(50.0 - x[key]).expand_as(x["q_random"]) for key in ("logp_next", "logp_current")]
    terms = torch.cat([x["q_random"] - log_uniform, *floored], dim=-1)
    torch.testing.assert_close(gap, (torch.logsumexp(terms, -1) - x["q_data"]).mean(-1))
    gap.sum().backward()                             # a floored Q is not pushed down
    assert torch.count_nonzero(x["q_current"].grad) == 0
    assert torch.count_nonzero(x["q_next"].grad) == 0


def test_calibration_acts_row_by_row():
    x = gap_inputs()
    mc = torch.full((8,), -math.inf)
    mc[0] = 50.0
    gap = calibrated_cql_gap(**x, lower_bound=mc, act_dim=3)
    gap.sum().backward()
    assert torch.count_nonzero(x["q_current"].grad[:, 0]) == 0
    assert torch.count_nonzero(x["q_current"].grad[:, 1:]) == x["q_current"].grad[:, 1:].numel()


def test_calql_agent_calibration_is_noop_for_unknown_returns():
    torch.manual_seed(0)
    calibrated = make("calql")
    plain = make("calql", calibrate_offline=False)
    plain.load_state_dict(calibrated.state_dict())
    batch = random_batch(mc_returns=-math.inf)
    for _ in range(2):
        torch.manual_seed(1)
        logs_a = calibrated.update(batch)
        torch.manual_seed(1)
        logs_b = plain.update(batch)
        assert logs_a == logs_b


def test_calql_agent_uses_returns_above_q():
    torch.manual_seed(0)
    agent = make("calql")
    state = agent.state_dict()
    torch.manual_seed(1)
    low = agent.update(random_batch(mc_returns=-math.inf))
    agent.load_state_dict(state)
    torch.manual_seed(1)
    high = agent.update(random_batch(mc_returns=100.0))
    # log Σ exp(100 − log π) dominates the log-sum-exp: the gap is at least 100 − Q(s, a).
    assert high["cql_gap"] > 100.0 - abs(low["q_data"]) - 1.0
    assert low["cql_gap"] < 20.0


def test_calql_updates_agree_on_both_critic_paths():
    torch.manual_seed(0)
    plain, recycled = make("calql"), make("calql")
    recycled.load_state_dict(plain.state_dict())
    recycled.critic.net.recycle_min_elements = 0          # the workspace path, as at full size
    for i in range(3):
        torch.manual_seed(i)
        logs = plain.update(random_batch(seed=i))
        torch.manual_seed(i)
        logs_recycled = recycled.update(random_batch(seed=i))
        np.testing.assert_allclose(list(logs.values()), list(logs_recycled.values()), rtol=1e-4)
    for mine, theirs in zip(plain.critic.parameters(), recycled.critic.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs)


def test_calql_bf16_critics_follow_the_float32_updates():
    torch.manual_seed(0)
    full, low = make("calql"), make("calql", critic_bf16=True)
    low.load_state_dict(full.state_dict())
    for i in range(5):
        torch.manual_seed(i)
        logs = full.update(random_batch(seed=i))
        torch.manual_seed(i)
        logs_bf16 = low.update(random_batch(seed=i))
        np.testing.assert_allclose(list(logs.values()), list(logs_bf16.values()), rtol=2e-2,
                                   atol=2e-3)
    assert all(p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32
               for p in low.critic.parameters())


def test_bf16_critics_keep_large_q_values_exact_to_float32_rounding_of_the_output_layer():
    torch.manual_seed(0)
    full = QEnsemble(OBS_DIM, ACT_DIM, (256, 256), 2)
    low = QEnsemble(OBS_DIM, ACT_DIM, (256, 256), 2, hidden_bf16=True)
    with torch.no_grad():
        full.net.biases[-1].fill_(300.0)        # Q ≈ 300: bfloat16's spacing there is 2
    low.load_state_dict(full.state_dict())
    obs, actions = torch.randn(512, OBS_DIM), torch.rand(512, ACT_DIM) * 2 - 1
    q, q_bf16 = full(obs, actions), low(obs, actions)
    assert q_bf16.dtype == torch.float32
    assert (q_bf16 - q).abs().max() < 0.05       # only the hidden layers are rounded


def test_calql_start_online_switches_hyper_parameters():
    agent = make("calql", cql_alpha=5.0, cql_alpha_online=1.0, calibrate_online=False)
    assert agent.update(random_batch())["cql_weight"] == 5.0 and agent.calibrate
    agent.start_online()
    assert agent.update(random_batch())["cql_weight"] == 1.0 and not agent.calibrate


def test_calql_lagrange_multiplier_moves_against_the_gap():
    torch.manual_seed(0)
    agent = make("calql", cql_lagrange=True, cql_target_action_gap=1e3, alpha_lr=1e-2)
    weights = [agent.update(random_batch())["cql_weight"] for _ in range(20)]
    assert weights[-1] < weights[0]     # gap far below its target: α' shrinks


# --- state round trip ---------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "overrides"), [
    ("iql", {"actor_lr_cosine_steps": 10, "online_actor_lr": 1e-5}),
    ("calql", {}),
    ("calql", {"cql_lagrange": True, "autotune_alpha": False}),
])
def test_state_dict_round_trip_is_bit_identical(name, overrides):
    torch.manual_seed(0)
    agent = make(name, **overrides)
    for i in range(3):
        agent.update(random_batch(seed=i))
    if name == "calql":
        agent.start_online()
    buffer = io.BytesIO()
    torch.save(agent.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(123)                    # a differently initialised twin
    twin = make(name, **overrides)
    twin.load_state_dict(torch.load(buffer, weights_only=True))
    batch = random_batch(seed=7)
    torch.manual_seed(5)
    logs = agent.update(batch)
    torch.manual_seed(5)
    twin_logs = twin.update(batch)
    assert logs == twin_logs
    for key, value in agent.state_dict().items():
        if isinstance(value, dict) and key != "optimizer":
            for param, tensor in value.items():
                assert torch.equal(tensor, twin.state_dict()[key][param]), (key, param)


def test_iql_actor_learning_rate_follows_corls_cosine_and_keeps_stepping_online():
    """CosineAnnealingLR(T_max = T) as CORL steps it: lr·(1 + cos(πk/T))/2, which past T
    rises again; an online actor lr replaces the schedule once the agent is online."""
    agent = make("iql", actor_lr=1e-3, actor_lr_cosine_steps=4)
    lrs = []
    for _ in range(7):
        agent.update(random_batch())
        lrs.append(agent.optimizer.param_groups[2]["lr"])
    np.testing.assert_allclose(lrs, [1e-3 * (1 + math.cos(math.pi * k / 4)) / 2
                                     for k in range(7)], atol=1e-12)
    assert lrs[4] == pytest.approx(0.0, abs=1e-12) and lrs[6] == pytest.approx(5e-4)
    agent.start_online()
    agent.update(random_batch())
    assert agent.optimizer.param_groups[2]["lr"] == pytest.approx(1e-3 * (1 + math.cos(
        math.pi * 7 / 4)) / 2)                      # no online rate: the schedule goes on
    fixed = make("iql", actor_lr=1e-3, actor_lr_cosine_steps=4, online_actor_lr=2e-5)
    fixed.update(random_batch())
    fixed.start_online()
    fixed.update(random_batch())
    assert fixed.optimizer.param_groups[2]["lr"] == 2e-5


# --- acting interface ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["iql", "calql"])
def test_act_sample_and_log_prob_shapes_and_bounds(name):
    torch.manual_seed(0)
    agent = make(name)
    obs = np.random.default_rng(0).normal(size=(7, OBS_DIM)).astype(np.float32)
    for deterministic in (False, True):
        actions = agent.act(obs, deterministic=deterministic)
        assert actions.shape == (7, ACT_DIM) and actions.dtype == np.float32
        assert np.all(np.abs(actions) <= 1.0)
    np.testing.assert_array_equal(agent.act(obs, True), agent.act(obs, True))
    assert not np.array_equal(agent.act(obs), agent.act(obs))
    obs_t = torch.from_numpy(obs)
    sampled = agent.sample_actions(obs_t)
    assert sampled.shape == (7, ACT_DIM) and not sampled.requires_grad
    assert sampled.abs().max() <= 1.0
    edge = torch.tensor([[1.0, -1.0]]).expand(7, ACT_DIM)
    for actions in (sampled, edge):
        log_prob = agent.log_prob(obs_t, actions)
        assert log_prob.shape == (7,) and torch.isfinite(log_prob).all()
        assert not log_prob.requires_grad


@pytest.mark.parametrize("name", ["iql", "calql"])
def test_log_prob_is_a_normalised_density(name):
    torch.manual_seed(0)
    agent = make_agent(name, AGENT_CONFIGS[name](), 3, 1, "cpu")   # 1-D actions: integrate
    edge = 1.0 - 1e-4 if name == "calql" else 8.0     # tanh-squashed: support is (-1, 1)
    grid = torch.linspace(-edge, edge, 40_001)
    obs = torch.randn(1, 3).expand(len(grid), 3)
    density = agent.log_prob(obs, grid.unsqueeze(1)).exp()
    assert abs(torch.trapezoid(density, grid).item() - 1.0) < 0.01


def test_tanh_gaussian_sample_log_prob_matches_log_prob():
    torch.manual_seed(0)
    actor = TanhGaussianActor(OBS_DIM, ACT_DIM, SMALL)
    obs = torch.randn(16, OBS_DIM)
    mean, log_std = actor(obs)
    actions, log_prob = actor.rsample(mean, log_std, samples=5)
    assert actions.shape == (16, 5, ACT_DIM) and log_prob.shape == (16, 5)
    again = actor.log_prob(obs.unsqueeze(1).expand(16, 5, OBS_DIM), actions)
    torch.testing.assert_close(log_prob, again, atol=1e-3, rtol=1e-4)


# --- the batched critic ------------------------------------------------------------------------

def reference_q(weights: list[torch.Tensor], biases: list[torch.Tensor], obs: torch.Tensor,
                actions: torch.Tensor) -> torch.Tensor:
    """The critics member by member with plain autograd ops, on the given parameters."""
    x = torch.cat([obs.expand(*actions.shape[:-1], obs.shape[-1]), actions], -1)
    members = []
    for member in range(weights[0].shape[0]):
        h = x
        for i, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
            h = h @ weight[member] + bias[member]
            h = h.relu() if i < len(weights) - 1 else h
        members.append(h.squeeze(-1))
    return torch.stack(members)


def critic_with(recycle: bool, *args, **kwargs) -> QEnsemble:
    """A critic forced onto the workspace path (recycle) or the plain autograd path."""
    critic = QEnsemble(*args, **kwargs)
    critic.net.recycle_min_elements = 0 if recycle else 2**62
    return critic


@pytest.mark.parametrize("recycle", [True, False])
def test_q_ensemble_matches_member_by_member_mlps(recycle):
    torch.manual_seed(0)
    critic = critic_with(recycle, OBS_DIM, ACT_DIM, SMALL, members=3)
    obs, actions = torch.randn(4, 1, OBS_DIM), torch.randn(4, 6, ACT_DIM)
    reference = reference_q(list(critic.net.weights), list(critic.net.biases), obs, actions)
    for _ in range(2):                               # the second pass reuses buffers
        with torch.no_grad():
            q = critic(obs, actions)
        assert q.shape == (3, 4, 6)
        torch.testing.assert_close(q, reference)


@pytest.mark.parametrize("recycle", [True, False])
def test_q_ensemble_gradients_match_autograd_across_reused_buffers(recycle):
    torch.manual_seed(0)
    critic = critic_with(recycle, OBS_DIM, ACT_DIM, (16, 8, 12), members=2)
    for _ in range(3):                               # later passes run in recycled buffers
        obs = torch.randn(5, 1, OBS_DIM)
        actions = torch.randn(5, 7, ACT_DIM, requires_grad=True)
        critic.zero_grad()
        upstream = torch.randn(2, 5, 7)
        (critic(obs, actions) * upstream).sum().backward()
        weights = [w.detach().clone().requires_grad_() for w in critic.net.weights]
        biases = [b.detach().clone().requires_grad_() for b in critic.net.biases]
        actions_ref = actions.detach().clone().requires_grad_()
        (reference_q(weights, biases, obs, actions_ref) * upstream).sum().backward()
        torch.testing.assert_close(actions.grad, actions_ref.grad)
        mine = [*critic.net.weights, *critic.net.biases]
        for param, ref in zip(mine, [*weights, *biases], strict=True):
            torch.testing.assert_close(param.grad, ref.grad)


def test_q_ensemble_refuses_a_second_backward_through_recycled_buffers():
    critic = critic_with(True, OBS_DIM, ACT_DIM, SMALL)
    q = critic(torch.randn(4, OBS_DIM), torch.randn(4, ACT_DIM)).sum()
    q.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="retain_graph"):
        q.backward()


def test_workspace_recycles_buffers_and_keeps_few_shapes():
    workspace = Workspace()
    like = torch.zeros(1)
    first = workspace.take((3, 4), like)
    workspace.give(first)
    assert workspace.take((3, 4), like) is first                   # reused, not reallocated
    assert workspace.take((3, 4), like) is not first               # never handed out twice
    for n in range(1, 2 * Workspace.max_shapes):
        workspace.give(torch.empty(n, 2))
    assert len(workspace._free) == Workspace.max_shapes


@pytest.mark.parametrize("recycle", [True, False])
def test_frozen_q_passes_gradient_to_actions_only(recycle):
    critic = critic_with(recycle, OBS_DIM, ACT_DIM, SMALL)
    actions = torch.randn(8, ACT_DIM, requires_grad=True)
    critic(torch.randn(8, OBS_DIM), actions, frozen=True).sum().backward()
    assert actions.grad is not None and actions.grad.abs().sum() > 0
    assert all(p.grad is None for p in critic.parameters())


# --- configuration and factory -------------------------------------------------------------------

@pytest.mark.parametrize(("cls", "field", "value"), [
    (IQLConfig, "expectile", 1.0), (IQLConfig, "gamma", 0.0), (IQLConfig, "hidden", ()),
    (IQLConfig, "actor_lr", 0.0), (IQLConfig, "target_update_rate", 1.5),
    (IQLConfig, "actor_lr_cosine_steps", -1), (IQLConfig, "online_actor_lr", 0.0),
    (IQLConfig, "online_batch", "half"), (CalQLConfig, "online_batch", "half"),
    (CalQLConfig, "cql_n_actions", 0), (CalQLConfig, "cql_alpha", -1.0),
    (CalQLConfig, "cql_temperature", 0.0), (CalQLConfig, "actor_hidden", (256, 0)),
    (CalQLConfig, "reward_scale", 0.0), (CalQLConfig, "init_alpha", 0.0),
])
def test_invalid_config_raises(cls, field, value):
    with pytest.raises(ValueError, match=field):
        cls(**{field: value})


def test_make_agent_rejects_unknown_names_and_wrong_configs():
    with pytest.raises(ValueError, match="calql") as error:
        make_agent("sac", IQLConfig(), OBS_DIM, ACT_DIM, "cpu")
    assert "iql" in str(error.value)
    with pytest.raises(ValueError, match="CalQLConfig"):
        make_agent("calql", IQLConfig(), OBS_DIM, ACT_DIM, "cpu")
    assert isinstance(make_agent("iql", IQLConfig(), OBS_DIM, ACT_DIM, "cpu"), IQLAgent)
    assert make_agent("calql", CalQLConfig(), OBS_DIM, ACT_DIM, "cpu").device.type == "cpu"


def test_iql_explores_with_small_fixed_noise_online_when_asked_and_its_copies_do_too():
    torch.manual_seed(0)
    agent = make("iql", exploration_noise=0.03)
    with torch.no_grad():
        agent.actor.log_std.fill_(0.0)                       # learned σ = 1
    obs = np.random.default_rng(0).normal(size=(4000, OBS_DIM)).astype(np.float32)
    mean = agent.act(obs, deterministic=True)
    offline_spread = np.std(agent.act(obs) - mean)
    assert offline_spread > 0.4                              # the learned σ (clipped)
    agent.start_online()
    noise = agent.act(obs) - mean
    assert abs(np.std(noise) - 0.03) < 0.003 and abs(noise.mean()) < 0.003
    copy = make_actor("iql", OBS_DIM, ACT_DIM, SMALL)        # as rollout actors build it
    copy.load_state_dict(agent.actor.state_dict())
    with torch.no_grad():
        copied = copy.sample(torch.from_numpy(obs)).numpy() - mean
    assert abs(np.std(copied) - 0.03) < 0.003
