"""SyntheticGenerator: API contract, state round trip, exactness of switched-off guidance."""

import io

import numpy as np
import pytest
import torch

from edis_core.diffusion.edm import SamplerOutput
from edis_core.diffusion.prior import DiffusionConfig
from edis_core.generator import SyntheticGenerator
from edis_core.generator_config import EDISConfig
from edis_core.transitions import Transitions

SMALL = DiffusionConfig(width=32, blocks=1, sampling_steps=4, batch_size=64)



def dataset(n: int = 512, seed: int = 0) -> Transitions:
    rng = np.random.default_rng(seed)
    obs = rng.normal(100.0, 5.0, (n, 3)).astype(np.float32)  # far from 0: raw units matter
    return Transitions(
        observations=obs,
        actions=rng.uniform(-1, 1, (n, 2)).astype(np.float32),
        rewards=rng.normal(size=n).astype(np.float32),
        next_observations=obs + rng.normal(0, 0.1, (n, 3)).astype(np.float32),
        terminals=(rng.random(n) < 0.2).astype(np.float32),
        timeouts=np.zeros(n, np.float32),
        mc_returns=np.full(n, -np.inf, np.float32),
    )


def generator(seed: int = 0, **overrides) -> SyntheticGenerator:
    config = EDISConfig(
        diffusion=SMALL,
        energy_width=16,
        negative_trajectories=64,
        energy_groups=8,
        generate_batch=50,
        **{"negatives": 3, "energy_levels": 2, **overrides},
    )
    return SyntheticGenerator(3, 2, config, seed=seed)


def policy_recording(seen: list):
    def policy(obs: torch.Tensor) -> torch.Tensor:
        seen.append(obs.clone())
        return torch.tanh(obs[:, :2] - 100.0)

    return policy


def trained(**overrides) -> SyntheticGenerator:
    gen = generator(**overrides)
    gen.train_prior(dataset(), 20)
    gen.train_energies(dataset(seed=1), dataset(seed=2), policy_recording([]), 5)
    return gen


def test_config_validation():
    for bad in (
        {"w_state": -1.0},
        {"negatives": 0},
        {"guidance_clip": 0.0},
        {"energy_embed_dim": 3},
        {"energy_lr": 0.0},
        {"negative_trajectories": 0},
        {"guidance_sigma_min": 5.0, "guidance_sigma_max": 5.0},
        {"guidance_sigma_min": -1.0},
        {"guidance_sigma_max": 0.0},
        {"energy_levels": 0},
        {"energy_input": "state"},
        {"energy_input_map": "c_in"},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            EDISConfig(**bad)
    with pytest.raises(ValueError, match="mode"):
        SyntheticGenerator(3, 2, mode="guided")
    with pytest.raises(ValueError, match="guidance interval"):
        generator(guidance_sigma_min=2.0, guidance_sigma_max=5.0)  # levels 80, 9.7, 0.47, 0
    assert EDISConfig(diffusion={"width": 8}).diffusion.width == 8


def test_generate_needs_training_in_order():
    gen = generator()
    with pytest.raises(RuntimeError, match="train_prior"):
        gen.generate(10)
    gen.train_prior(dataset(), 2)
    assert len(gen.generate(10, guided=False)) == 10
    with pytest.raises(RuntimeError, match="train_energies"):
        gen.generate(10)  # mode "edis" defaults to guided


def test_train_prior_reports_progress_and_keeps_its_normalizer():
    gen = generator()
    calls = []
    loss = gen.train_prior(dataset(), 7, progress=lambda step, value: calls.append((step, value)))
    assert [c[0] for c in calls] == list(range(7)) and np.isfinite(loss)
    mean = gen.prior.normalizer.mean.clone()
    gen.train_prior(dataset(seed=5, n=64), 3)  # warm-started continued training
    assert torch.equal(gen.prior.normalizer.mean, mean)
    assert gen.prior.steps_trained == 10


def test_train_energies_metrics_cost_and_raw_policy_inputs():
    gen = generator()
    gen.train_prior(dataset(), 5)
    seen = []
    metrics = gen.train_energies(dataset(seed=1), dataset(seed=2), policy_recording(seen), 4)
    for name in ("state", "policy", "transition"):
        assert np.isfinite(metrics[f"{name}_loss"])
        assert 0.0 <= metrics[f"{name}_accuracy"] <= 1.0
    # one unconditional pass (x_p) and three given (s, a) (x_π, x_s, E_T's), 64 rows each
    assert metrics["denoiser_evaluations"] == gen.refresh_evaluations() == 4 * 64 * 7
    # the policy sees raw observations (~100), never normalised ones (~0)
    assert seen and all(abs(obs.mean().item() - 100.0) < 20.0 for obs in seen)
    assert generator(w_state=None, w_policy=None).refresh_evaluations() == 64 * 7
    assert generator(w_state=None, w_transition=None).refresh_evaluations() == 2 * 64 * 7
    with pytest.raises(ValueError, match="positives"):
        gen.train_energies(Transitions.empty(3, 2), dataset(seed=2), policy_recording([]), 1)


def test_refresh_cost_at_paper_size_is_under_a_twentieth_of_the_reference():
    gen = SyntheticGenerator(11, 3, EDISConfig(diffusion=DiffusionConfig.paper()))
    assert gen.refresh_evaluations() <= 92e6 / 20


def test_generated_transitions_are_raw_finite_and_thresholded():
    gen = trained()
    for guided in (False, True):
        out = gen.generate(120, guided=guided)
        assert len(out) == 120
        assert set(np.unique(out.terminals)) <= {0.0, 1.0}
        assert (out.timeouts == 0).all() and np.isneginf(out.mc_returns).all()
        assert abs(out.observations.mean() - 100.0) < 20.0
        assert np.isfinite(out.observations).all()


def test_complete_keeps_the_given_state_and_action_and_samples_the_rest():
    gen = trained()
    given = dataset(64, seed=5)
    completed = gen.complete(given)
    assert len(completed) == 64
    np.testing.assert_allclose(completed.observations, given.observations, rtol=1e-5)
    np.testing.assert_allclose(completed.actions, given.actions, rtol=1e-5, atol=1e-5)
    assert np.isfinite(completed.next_observations).all()
    # the prior's s' (it learned s' ≈ s), not the given one
    assert not np.allclose(completed.next_observations, given.next_observations)
    assert np.abs(completed.next_observations - given.observations).mean() < 5.0


def test_nonfinite_rows_are_dropped_and_counted(monkeypatch):
    gen = trained()
    sample = gen.prior.sample

    def corrupted(n, **kwargs):
        out = sample(n, **kwargs)
        x = out.x.clone()
        x[::10, 0] = float("nan")
        x[1, 2] = float("inf")
        return SamplerOutput(x, out.sigmas, out.trajectory)

    monkeypatch.setattr(gen.prior, "sample", corrupted)
    out = gen.generate(100)
    assert len(out) == 100 - 10 - 2 and gen.dropped_rows == 12
    assert np.isfinite(out.observations).all() and np.isfinite(out.next_observations).all()


def test_zero_weights_reproduce_unguided_sampling_exactly():
    gen = trained(w_state=0.0, w_policy=0.0, w_transition=0.0)
    assert gen.guidance() is None
    state = gen.prior.generator.get_state()
    unguided = gen.generate(60, guided=False)
    gen.prior.generator.set_state(state)
    guided = gen.generate(60, guided=True)
    np.testing.assert_array_equal(unguided.observations, guided.observations)
    np.testing.assert_array_equal(unguided.next_observations, guided.next_observations)
    # and a non-zero weight does change the samples
    gen.config.w_state = 1.0
    gen.prior.generator.set_state(state)
    assert not np.array_equal(gen.generate(60, guided=True).observations, unguided.observations)


@pytest.mark.parametrize("overrides", [{}, {"factorized_guidance": True, "w_transition": 1.0}])
def test_seed_sampling_repeats_a_draw_and_other_seeds_draw_anew(overrides):
    # factorised guidance also draws from the guidance stream, joint guidance only the prior's
    gen = trained(**overrides)
    gen.seed_sampling(3)
    first = gen.generate(40, guided=True)
    state = gen.sampling_state()
    second = gen.generate(40, guided=True)  # the streams advance
    gen.seed_sampling(3)
    again = gen.generate(40, guided=True)
    gen.restore_sampling(state)
    second_again = gen.generate(40, guided=True)
    for a, b in ((first, again), (second, second_again)):
        np.testing.assert_array_equal(a.observations, b.observations)
        np.testing.assert_array_equal(a.rewards, b.rewards)
    assert not np.array_equal(second.observations, first.observations)
    gen.seed_sampling(4)
    assert not np.array_equal(gen.generate(40, guided=True).observations, first.observations)


def test_state_dict_round_trip_through_weights_only_load():
    gen = trained()
    buffer = io.BytesIO()
    torch.save(gen.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    twin = SyntheticGenerator.from_state_dict(state)
    assert twin.config == gen.config and twin.mode == gen.mode
    a, b = gen.generate(40), twin.generate(40)
    np.testing.assert_array_equal(a.observations, b.observations)
    np.testing.assert_array_equal(a.rewards, b.rewards)

    other = generator(seed=7)
    other.load_state_dict(state)
    for name, net in gen.energies.items():
        for p, q in zip(net.parameters(), other.energies[name].parameters(), strict=True):
            assert torch.equal(p, q)
    with pytest.raises(ValueError, match="obs/act"):
        SyntheticGenerator(4, 2).load_state_dict(state)
    with pytest.raises(ValueError, match="energies"):
        generator(w_policy=None).load_energy_state_dict(state["energies"])
    with pytest.raises(ValueError, match="next_state_delta=true"):
        SyntheticGenerator(3, 2, EDISConfig(next_state_delta=False)).load_state_dict(state)


