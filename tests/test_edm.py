"""EDM formulas, the Heun sampler (exactness, inpainting, trajectories), denoiser, prior."""

import io
import math

import numpy as np
import pytest
import torch

from edis_core.diffusion.denoiser import EMA, EDMDenoiser
from edis_core.diffusion.edm import (
    Churn,
    Inpaint,
    heun_sample,
    karras_sigmas,
    loss_weight,
    preconditioning,
    training_sigmas,
)
from edis_core.diffusion.layout import Normalizer, TransitionLayout
from edis_core.diffusion.prior import DiffusionConfig, DiffusionPrior
from edis_core.transitions import Transitions


def test_preconditioning_matches_edm_table_1():
    sd = 0.5
    for sigma in (0.002, 0.3, 1.0, 80.0):
        c_skip, c_out, c_in, c_noise = preconditioning(sigma, sd)
        assert c_skip == pytest.approx(sd**2 / (sigma**2 + sd**2))
        assert c_out == pytest.approx(sigma * sd / math.sqrt(sigma**2 + sd**2))
        assert c_in == pytest.approx(1 / math.sqrt(sigma**2 + sd**2))
        assert c_noise == pytest.approx(math.log(sigma) / 4)
        tensor = preconditioning(torch.tensor([sigma], dtype=torch.float64), sd)
        for a, b in zip(tensor, (c_skip, c_out, c_in, c_noise), strict=True):
            assert a.item() == pytest.approx(b)
    # c_skip² σ_d² + c_out² = σ_d² ... the effective target of F has unit variance (EDM eq. 8)
    sigma = torch.logspace(-3, 2, 20, dtype=torch.float64)
    c_skip, c_out, _, _ = preconditioning(sigma, sd)
    target_var = ((1 - c_skip) ** 2 * sd**2 + c_skip**2 * sigma**2) / c_out**2
    assert torch.allclose(target_var, torch.ones_like(target_var))
    # λ(σ) = 1 / c_out²
    assert torch.allclose(loss_weight(sigma, sd), 1 / c_out**2)


def test_training_sigmas_are_lognormal():
    g = torch.Generator().manual_seed(0)
    log_sigma = training_sigmas(200_000, -1.2, 1.2, generator=g).log()
    assert log_sigma.mean().item() == pytest.approx(-1.2, abs=0.02)
    assert log_sigma.std().item() == pytest.approx(1.2, abs=0.02)


def test_karras_schedule_endpoints_and_order():
    sigmas = karras_sigmas(32, 0.002, 80.0, 7.0)
    assert len(sigmas) == 33
    assert sigmas[0].item() == pytest.approx(80.0)
    assert sigmas[-2].item() == pytest.approx(0.002)
    assert sigmas[-1].item() == 0.0
    assert bool((sigmas[1:] < sigmas[:-1]).all())
    # EDM eq. 5 at the midpoint
    mid = (80.0 ** (1 / 7) + 0.5 * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    assert karras_sigmas(3)[1].item() == pytest.approx(mid)
    with pytest.raises(ValueError):
        karras_sigmas(1)


def gaussian_denoiser(mean: torch.Tensor, std: torch.Tensor):
    """The exact D(x; σ) = E[x0 | x] for data N(mean, diag(std²))."""

    def denoise(x, sigma):
        return mean + std**2 / (std**2 + sigma**2) * (x - mean)

    return denoise


@pytest.mark.parametrize(
    ("churn", "steps", "rtol"),
    [
        (Churn(), 32, 0.03),
        (Churn(s_churn=80.0, s_tmin=0.05, s_tmax=50.0), 128, 0.04),  # stochastic: more bias
    ],
)
def test_heun_sampler_recovers_a_gaussian(churn, steps, rtol):
    mean, std = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.5, 1.5, 0.1])
    g = torch.Generator().manual_seed(0)
    out = heun_sample(
        gaussian_denoiser(mean, std), (40_000, 3), karras_sigmas(steps), churn=churn, generator=g
    )
    assert torch.allclose(out.x.mean(0), mean, atol=0.03)
    assert torch.allclose(out.x.std(0), std, rtol=rtol)


def test_zero_guidance_reproduces_the_unguided_sampler_bit_for_bit():
    net = EDMDenoiser(5, 32, 2, 1.0)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.2)
    net.requires_grad_(False)
    calls = []

    def zero_guidance(x, sigma):
        calls.append(sigma)
        return torch.zeros_like(x)

    for churn in (Churn(), Churn(s_churn=20.0)):
        plain = heun_sample(
            net, (64, 5), karras_sigmas(8), churn=churn, generator=torch.Generator().manual_seed(3)
        )
        guided = heun_sample(
            net,
            (64, 5),
            karras_sigmas(8),
            churn=churn,
            guidance=zero_guidance,
            generator=torch.Generator().manual_seed(3),
        )
        assert torch.equal(plain.x, guided.x)
    assert len(calls) == 2 * (2 * 8 - 1)  # guidance is consulted at every evaluation


def test_guidance_enters_as_sigma_squared_times_gradient():
    """D̃ = D − σ² g at every evaluation: compare with a hand-rolled Heun integration."""
    c, gvec = torch.tensor([[0.3, -0.7]]), torch.tensor([[0.5, 0.25]])
    sigmas = karras_sigmas(6)

    def denoise(x, sigma):
        return c.expand_as(x)

    out = heun_sample(
        denoise,
        (1, 2),
        sigmas,
        guidance=lambda x, s: gvec.expand_as(x),
        generator=torch.Generator().manual_seed(0),
    )
    x = torch.randn((1, 2), generator=torch.Generator().manual_seed(0)) * sigmas[0].item()
    levels = sigmas.tolist()
    for i in range(6):
        s, s_next = levels[i], levels[i + 1]
        d = (x - (c - s * s * gvec)) / s
        x_next = x + (s_next - s) * d
        if s_next > 0:
            d2 = (x_next - (c - s_next**2 * gvec)) / s_next
            x_next = x + (s_next - s) * 0.5 * (d + d2)
        x = x_next
    assert torch.allclose(out.x, x, atol=1e-6)


@pytest.mark.parametrize("renoise", [True, False])
def test_inpainting_keeps_known_dims_and_records_the_trajectory(renoise):
    net = EDMDenoiser(4, 32, 2, 1.0).requires_grad_(False)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.2)
    values = torch.randn(50, 4)
    mask = torch.tensor([True, False, True, False])
    out = heun_sample(
        net,
        (50, 4),
        karras_sigmas(10),
        inpaint=Inpaint(values, mask, renoise),
        return_trajectory=True,
        generator=torch.Generator().manual_seed(1),
    )
    assert torch.equal(out.x[:, mask], values[:, mask])
    assert not torch.equal(out.x[:, ~mask], values[:, ~mask])
    assert out.trajectory.shape == (10, 50, 4)
    # the first state is noise at σ_max; the known dims carry the given values (noised or not)
    known_first = out.trajectory[0][:, mask]
    if renoise:
        assert (known_first - values[:, mask]).std().item() == pytest.approx(80.0, rel=0.2)
    else:
        assert torch.equal(known_first, values[:, mask])
    assert out.trajectory[0][:, ~mask].std().item() == pytest.approx(80.0, rel=0.2)
    assert out.trajectory[-1][:, ~mask].std().item() < 5.0


def test_denoiser_scalar_and_tensor_sigma_agree_and_bf16_copy_is_close():
    torch.manual_seed(0)
    net = EDMDenoiser(6, 64, 3, 1.0)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(17, 6)
    with torch.no_grad():
        fused = net(x, 0.7)
        general = net(x, torch.full((17,), 0.7))
        low = net.sampling_copy(torch.bfloat16)(x, 0.7)
    assert torch.allclose(fused, general, atol=1e-5)
    assert torch.allclose(low, fused, atol=0.05 * fused.abs().max().item())
    # with grad the same function is computed by the out-of-place path
    assert torch.allclose(net(x, 0.7), fused, atol=1e-5)


def test_conditioned_denoiser_returns_known_dims_unchanged():
    net = EDMDenoiser(5, 32, 2, 1.0)
    x = torch.randn(8, 5)
    known = torch.tensor([True, True, False, False, False])
    out = net(x, torch.full((8,), 2.0), known)
    assert torch.equal(out[:, known], x[:, known])


def test_ema_follows_the_model_with_warmup():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, decay=0.99)
    with torch.no_grad():
        model.weight.add_(1.0)
    before = ema.model.weight.clone()
    ema.update()  # decay_0 = min(0.99, 1/10) = 0.1
    assert torch.allclose(ema.model.weight, 0.1 * before + 0.9 * model.weight)


def test_normalizer_round_trip_and_constant_dims():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (500, 4)).astype(np.float32)
    x[:, 1] = 7.0  # constant
    x[:, 3] = (rng.random(500) < 0.3).astype(np.float32)  # done flag, kept raw
    norm = Normalizer(4, raw_dims=(3,))
    norm.fit(x)
    t = torch.as_tensor(x)
    z = norm.normalize(t)
    assert torch.isfinite(z).all()
    assert torch.allclose(z[:, 1], torch.zeros(500))
    assert torch.equal(z[:, 3], t[:, 3])
    assert z[:, 0].mean().abs().item() < 1e-4 and z[:, 0].std().item() == pytest.approx(1, 1e-3)
    assert torch.allclose(norm.unnormalize(z), t, atol=1e-5)
    other = Normalizer(4, raw_dims=(3,))
    other.load_state_dict(norm.state_dict())
    assert torch.equal(other.normalize(t), z)


@pytest.mark.parametrize("delta", [False, True])
def test_layout_round_trip_thresholds_done(delta):
    layout = TransitionLayout(3, 2, next_state_delta=delta)
    assert layout.dim == 3 + 2 + 1 + 3 + 1
    assert layout.index("next_state").tolist() == [6, 7, 8]
    assert layout.mask("state", "action").tolist() == [True] * 5 + [False] * 5
    rng = np.random.default_rng(0)
    n = 20
    t = Transitions(
        observations=rng.normal(size=(n, 3)).astype(np.float32),
        actions=rng.normal(size=(n, 2)).astype(np.float32),
        rewards=rng.normal(size=n).astype(np.float32),
        next_observations=rng.normal(size=(n, 3)).astype(np.float32),
        terminals=(rng.random(n) < 0.5).astype(np.float32),
        timeouts=np.ones(n, np.float32),
        mc_returns=np.zeros(n, np.float32),
    )
    x = layout.to_array(t)
    assert x.shape == (n, 10)
    expected_slot = t.next_observations - t.observations if delta else t.next_observations
    np.testing.assert_array_equal(x[:, layout.next_state], expected_slot)
    back = layout.to_transitions(x)
    for name in ("observations", "actions", "rewards", "terminals"):
        np.testing.assert_array_equal(getattr(back, name), getattr(t, name))
    np.testing.assert_allclose(back.next_observations, t.next_observations, atol=1e-6)
    assert (back.timeouts == 0).all() and np.isneginf(back.mc_returns).all()
    x[:, layout.done.start] = [0.49, 0.51, -3.0, 2.0] * 5
    assert back.terminals.dtype == np.float32
    np.testing.assert_array_equal(layout.to_transitions(x).terminals, [0, 1, 0, 1] * 5)


@pytest.mark.parametrize("train_bf16", [False, True])
def test_prior_learns_a_bimodal_distribution_and_round_trips_its_state(train_bf16):
    cfg = DiffusionConfig(
        width=64, blocks=2, sampling_steps=12, lr=2e-3, train_steps=1, train_bf16=train_bf16
    )
    prior = DiffusionPrior(2, cfg, seed=0)
    g = torch.Generator().manual_seed(0)
    modes = torch.randint(2, (4096,), generator=g) * 4.0 - 2.0  # ±2
    data = torch.stack(
        [modes + 0.3 * torch.randn(4096, generator=g), 0.5 * torch.randn(4096, generator=g) - 1.0],
        dim=1,
    )
    prior.fit_normalizer(data)
    x = prior.normalizer.normalize(data)
    losses = [prior.train_step(x[torch.randint(4096, (256,), generator=g)]) for _ in range(400)]
    assert np.mean(losses[-50:]) < 0.9 * np.mean(losses[:10])
    for bf16 in (False, True):  # the bfloat16 sampling copy must sample the same distribution
        prior.config.sample_bf16 = bf16
        samples = prior.normalizer.unnormalize(prior.sample(4000).x)
        near_a_mode = ((samples[:, 0].abs() - 2.0).abs() < 0.9).float().mean().item()
        assert near_a_mode > 0.9
        assert 0.35 < (samples[:, 0] > 0).float().mean().item() < 0.65
        assert samples[:, 1].mean().item() == pytest.approx(-1.0, abs=0.15)
    prior.config.sample_bf16 = False

    buffer = io.BytesIO()
    torch.save(prior.state_dict(), buffer)
    buffer.seek(0)
    twin = DiffusionPrior(2, cfg, seed=123)
    twin.load_state_dict(torch.load(buffer, weights_only=True))
    a = prior.sample(64, generator=torch.Generator().manual_seed(5)).x
    b = twin.sample(64, generator=torch.Generator().manual_seed(5)).x
    assert torch.equal(a, b)
    assert twin.steps_trained == 400


def test_diffusion_config_validation():
    with pytest.raises(ValueError, match="width"):
        DiffusionConfig(width=0)
    with pytest.raises(ValueError, match="sampling_steps"):
        DiffusionConfig(sampling_steps=1)
    with pytest.raises(ValueError, match="sigma_min"):
        DiffusionConfig(sigma_min=100.0)
    with pytest.raises(ValueError, match="p_conditional"):
        DiffusionConfig(p_conditional=1.0)
    paper = DiffusionConfig.paper()
    assert (paper.width, paper.blocks, paper.sampling_steps) == (1024, 6, 128)
    assert paper.evaluations_per_sample == 255
