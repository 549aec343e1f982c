"""Energy training (edis_core/energy/training.py): the levels it trains on, symmetric noising
of positives and negatives, and who is contrasted with whom."""

import numpy as np
import pytest
import torch

from edis_core.diffusion.edm import Churn, evaluation_sigmas, heun_sample, karras_sigmas
from edis_core.diffusion.prior import DiffusionConfig
from edis_core.energy.networks import EnergyNet
from edis_core.energy.training import ContrastiveSet, EnergyTraining, contrastive_sets
from edis_core.generator import SyntheticGenerator
from edis_core.generator_config import EDISConfig
from edis_core.transitions import Transitions


@pytest.mark.parametrize("churn", [Churn(), Churn(s_churn=40.0, s_tmin=0.05, s_tmax=10.0)])
def test_evaluation_sigmas_are_the_sigmas_the_sampler_evaluates(churn):
    seen = []

    def denoise(x, sigma):
        seen.append(sigma)
        return x * 0.0

    sigmas = karras_sigmas(8)
    heun_sample(denoise, (4, 2), sigmas, churn=churn, generator=torch.Generator().manual_seed(0))
    assert evaluation_sigmas(sigmas, churn).tolist() == pytest.approx(seen)
    assert len(seen) == 2 * 8 - 1


def test_generator_trains_where_its_guidance_acts():
    config = EDISConfig(diffusion=DiffusionConfig(sampling_steps=8, s_churn=20.0, s_tmax=10.0),
                        guidance_sigma_min=0.1, guidance_sigma_max=20.0)
    levels = SyntheticGenerator(2, 1, config).guidance_levels()
    every = evaluation_sigmas(karras_sigmas(8), config.diffusion.churn).float()
    assert torch.equal(levels, every[(every >= 0.1) & (every <= 20.0)])
    churned = [s * 2**0.5 for s in karras_sigmas(8).float().tolist() if 0.1 <= s <= 10.0]
    assert churned and all(torch.isclose(levels, torch.tensor(s)).any() for s in churned)


class Recorder(torch.nn.Module):
    """An energy that records its inputs (and is 0 with a gradient)."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.calls = []

    def forward(self, rows, sigma):
        self.calls.append((rows.detach().clone(), sigma.detach().clone()))
        return self.weight * rows.sum(1)


def training(net, **options):
    settings = dict(lr=1e-3, groups=64, negatives=32, levels_per_step=4,
                    generator=torch.Generator().manual_seed(0))
    return EnergyTraining({"e": net}, {"e": slice(0, 2)}, **{**settings, **options})


def test_positives_and_negatives_get_the_same_fresh_noise():
    """Both sides start from clean zeros: each row is then pure noise, and it must have the
    std of its level's σ on both sides, and be drawn anew at every step."""
    net = Recorder()
    data = ContrastiveSet(torch.zeros(500, 2), torch.zeros(500, 2))
    levels = torch.tensor([0.1, 1.0, 10.0])
    training(net).train({"e": data}, levels, steps=40)
    positives, negatives = [], []
    for rows, sigma in net.calls:
        scale = sigma[:, None]
        per_level = rows.reshape(4, -1, 2)
        positives.append((per_level[:, :16] / scale.reshape(4, -1, 1)[:, :16]).reshape(-1))
        negatives.append((per_level[:, 16:] / scale.reshape(4, -1, 1)[:, 16:]).reshape(-1))
    positives, negatives = torch.cat(positives), torch.cat(negatives)
    assert positives.std().item() == pytest.approx(1.0, abs=0.03)
    assert negatives.std().item() == pytest.approx(1.0, abs=0.03)
    assert not torch.equal(net.calls[0][0], net.calls[1][0])


def test_equal_distributions_teach_no_ratio():
    """Positives and negatives i.i.d. from one distribution: with symmetric noising there is
    nothing to learn beyond the two finite sets' differences, and the trained energy stays
    flat: its guidance shift σ²|∇E| was at most 0.05 over seeds 0-4. Negatives noised
    unlike the positives (σ√2 instead of σ) make the same data learnable (0.9-1.25): the
    test tells a symmetric pipeline from an asymmetric one."""
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(8000, 2, generator=generator)
    data = ContrastiveSet(sample[:4000], sample[4000:])
    levels = torch.tensor([0.05, 0.3, 1.0, 3.0])
    probe = torch.randn(500, 2, generator=generator)

    def guidance_shift(net):
        shifts = []
        for sigma in levels.tolist():
            x = (probe * (1 + sigma**2) ** 0.5).requires_grad_(True)
            (grad,) = torch.autograd.grad(net(x, sigma).sum(), x)
            shifts.append((sigma**2 * grad).norm(dim=1).mean().item())
        return max(shifts)

    torch.manual_seed(0)
    symmetric = EnergyNet(2)
    metrics = training(symmetric, lr=3e-3, groups=256, negatives=32, levels_per_step=4).train(
        {"e": data}, levels, steps=300)
    assert metrics["e_accuracy"] < 2.0 / 33
    assert guidance_shift(symmetric) < 0.1

    torch.manual_seed(0)
    asymmetric = EnergyNet(2)
    lopsided = training(asymmetric, lr=3e-3, groups=256, negatives=32, levels_per_step=4)
    noised = lopsided._noised

    def unequal(clean, shape, sigma):  # 64 positives, 32 negatives a level
        return noised(clean, shape, sigma if shape[1] == 64 else sigma * 2**0.5)

    lopsided._noised = unequal
    lopsided.train({"e": data}, levels, steps=300)
    assert guidance_shift(asymmetric) > 0.5


def tiny_data(n: int, seed: int) -> Transitions:
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(n, 2)).astype(np.float32)
    a = rng.uniform(-1, 1, (n, 1)).astype(np.float32)
    return Transitions(s, a, s[:, 0].copy(), s + 0.1 * a, np.zeros(n, np.float32),
                       np.zeros(n, np.float32), np.full(n, -np.inf, np.float32))


def test_contrastive_sets_share_what_each_ratio_must_not_see():
    """E_π: x_π = (s_p, π(s_p), rest | s, a) against prior samples x_p (same s); E_s: x_s =
    (buffer s, π(s), rest | s, a) against x_π; E_T: real rows against the same (s, a) with
    the prior's (r, s', done)."""
    config = EDISConfig(diffusion=DiffusionConfig(width=32, blocks=1, sampling_steps=4),
                        negative_trajectories=50)
    gen = SyntheticGenerator(2, 1, config)
    gen.train_prior(tiny_data(500, 0), 20)
    layout, norm = gen.layout, gen.prior.normalizer

    def policy(obs):
        return torch.tanh(obs[:, :1])

    buffer = gen._normalize(layout.to_array(tiny_data(300, 1)))
    real = gen._normalize(layout.to_array(tiny_data(300, 2)))
    sets = contrastive_sets(gen.prior, layout, gen.energies, buffer, real, policy, 50, gen.rng)
    s, a, sa = layout.state, layout.action, layout.state_action
    policy_set, state_set, transition_set = sets["policy"], sets["state"], sets["transition"]
    assert torch.equal(policy_set.positives[:, s], policy_set.negatives[:, s])
    assert torch.equal(state_set.negatives, policy_set.positives)
    assert all((row == buffer[:, s]).all(1).any() for row in state_set.positives[:, s])
    for x in (policy_set.positives, state_set.positives):  # actions are the policy's
        raw_s = x[:, s] * norm.std[s] + norm.mean[s]
        assert torch.allclose(x[:, a] * norm.std[a] + norm.mean[a], policy(raw_s), atol=1e-5)
    assert torch.equal(transition_set.positives[:, sa], transition_set.negatives[:, sa])
    assert all((row == real).all(1).any() for row in transition_set.positives)
    assert not torch.equal(transition_set.positives, transition_set.negatives)
    assert set(contrastive_sets(gen.prior, layout, ["transition"], buffer, real, policy, 50,
                                gen.rng)) == {"transition"}


def test_every_refresh_trains_fresh_energies():
    """Training on A, then on B, gives the energy that training on B alone gives."""
    generator = torch.Generator().manual_seed(0)
    first, second = (ContrastiveSet(torch.randn(200, 2, generator=generator) + shift,
                                    torch.randn(200, 2, generator=generator))
                     for shift in (1.0, -1.0))
    levels = torch.tensor([0.1, 1.0])
    torch.manual_seed(0)
    twice, once = EnergyNet(2, width=16), EnergyNet(2, width=16)
    once.load_state_dict(twice.state_dict())
    both = training(twice, groups=8, negatives=4, levels_per_step=2)
    both.train({"e": first}, levels, steps=20)
    alone = training(once, groups=8, negatives=4, levels_per_step=2)
    alone.generator.set_state(both.generator.get_state())
    both.train({"e": second}, levels, steps=20)
    alone.train({"e": second}, levels, steps=20)
    for p, q in zip(twice.parameters(), once.parameters(), strict=True):
        assert torch.equal(p, q)
