"""The synthetic-transition generator that the training loop calls: prior, energies, guided
sampler (docs/algorithm.md §2-§6).

Offline: `train_prior` fits p_θ on the dataset. Online, each refresh: `train_energies` learns
E_s, E_π, E_T by InfoNCE (edis_core/energy/training.py), then `generate` draws transitions
by energy-guided sampling, D̃ = D_θ − σ² Σ w_k ∇E_k (§6).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from edis_core.diffusion.edm import Inpaint
from edis_core.diffusion.layout import TransitionLayout
from edis_core.diffusion.prior import DiffusionPrior
from edis_core.energy.guidance import EnergyGuidance, EnergyTerm
from edis_core.energy.networks import EnergyNet
from edis_core.energy.training import EnergyTraining, conditional_passes, contrastive_sets
from edis_core.generator_config import ENERGIES, EDISConfig
from edis_core.transitions import Transitions

MODES = ("unguided", "edis")
Policy = Callable[[torch.Tensor], torch.Tensor]


def guidance_hook(
    config: EDISConfig,
    terms: list[EnergyTerm],
    dim: int,
    known: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    observer: Callable[[float], None] | None = None,
) -> EnergyGuidance | None:
    """The sampler's guidance by `terms` on D = `dim` dims with `config`'s interval and
    clip; None when every scale is 0 or None, so that sampling is then exactly the unguided
    sampler (see EnergyGuidance for `known`, `generator` and `observer`)."""
    clip = config.guidance_clip
    guidance = EnergyGuidance(
        terms,
        None if clip is None else clip * dim**0.5,
        config.guidance_sigma_max,
        known=known,
        generator=generator,
        sigma_min=config.guidance_sigma_min,
        observer=observer,
    )
    return guidance if guidance.active else None


class SyntheticGenerator:
    """Generates transitions from the prior, unguided or EDIS-guided, in raw units."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        config: EDISConfig | None = None,
        mode: str = "edis",
        device: torch.device | str = "cpu",
        seed: int = 0,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.config, self.mode = config or EDISConfig(), mode
        cfg = self.config
        delta = cfg.next_state_delta
        self.layout = layout = TransitionLayout(obs_dim, act_dim, next_state_delta=delta)
        self.device = torch.device(device)
        self.prior = DiffusionPrior(
            layout.dim,
            cfg.diffusion,
            raw_dims=(layout.done.start,),
            condition_masks=[layout.mask("state_action")],
            device=self.device,
            seed=seed,
        )
        # The dims each energy reads: all of x, or those of the §5 table.
        everything = slice(0, layout.dim)
        own = {"state": layout.state, "policy": layout.state_action, "transition": everything}
        self.energy_dims = {
            name: everything if cfg.energy_input == "x" else own[name] for name in ENERGIES
        }
        self.energies: dict[str, EnergyNet] = {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            for name, weight in cfg.weights.items():
                if weight is not None:
                    dims = self.energy_dims[name]
                    self.energies[name] = EnergyNet(
                        dims.stop - dims.start,
                        cfg.energy_width,
                        cfg.energy_depth,
                        cfg.energy_embed_dim,
                        cfg.diffusion.sigma_data,
                        cfg.energy_input_map,
                    ).to(self.device)
        if self.energies:
            self._check_guidance_interval()
        self.rng = torch.Generator(self.device)
        self.seed_sampling(seed)
        self.energy_training = EnergyTraining(
            self.energies,
            self.energy_dims,
            lr=cfg.energy_lr,
            groups=cfg.energy_groups,
            negatives=cfg.negatives,
            levels_per_step=cfg.energy_levels,
            generator=self.rng,
        )
        self.energies_trained = False
        self.dropped_rows = 0  # generated rows with NaN/inf, never returned
        # Told the mean ‖σ·g‖ of every guided denoiser evaluation (EnergyGuidance's observer).
        self.guidance_observer: Callable[[float], None] | None = None
        self.denoiser_evaluations = 0  # spent on contrastive sets, all refreshes together

    # ----- offline phase: the prior ---------------------------------------------------------
    def train_prior(
        self, data: Transitions, steps: int, progress: Callable[[int, float], None] | None = None
    ) -> float:
        """`steps` EDM steps on `data`; returns the mean loss of the last 100 steps.

        The first call fits the normaliser; later calls (warm-started online training on
        offline + online data) keep it, since the network was trained in its coordinates.
        """
        raw = self.layout.to_array(data)
        if not self.prior.normalizer.fitted:
            self.prior.fit_normalizer(raw)
        x = self._normalize(raw)
        losses = []
        for step in range(steps):
            rows = torch.randint(
                len(x), (self.config.diffusion.batch_size,), device=self.device, generator=self.rng
            )
            loss = self.prior.train_step(x[rows])
            losses.append(loss)
            if progress is not None:
                progress(step, loss)
        return float(np.mean(losses[-100:])) if losses else math.nan

    # ----- online phase: the energies -------------------------------------------------------
    def train_energies(
        self, positives: Transitions, real: Transitions, policy: Policy, steps: int,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, float]:
        """`steps` InfoNCE steps for every enabled energy (docs/algorithm.md §5, who is
        contrasted with whom: energy.training.contrastive_sets); returns the mean loss and
        accuracy of the last 50 steps per energy and this refresh's denoiser evaluations.

        positives: the positive buffer (recent trajectories, ≈ d^π); real: replay data (true
        dynamics); policy: raw observations (B, obs_dim) -> raw actions a ~ π(·|s);
        progress(step): called before each InfoNCE step (it may raise to stop).
        """
        self._require_prior()
        for name, data in (("positives", positives), ("real", real)):
            if len(data) == 0:
                raise ValueError(f"train_energies needs {name} transitions, got none")
        sets = contrastive_sets(
            self.prior,
            self.layout,
            self.energies,
            self._normalize(self.layout.to_array(positives)),
            self._normalize(self.layout.to_array(real)),
            policy,
            self.config.negative_trajectories,
            self.rng,
        )
        evaluations = self.refresh_evaluations()
        self.denoiser_evaluations += evaluations
        metrics = self.energy_training.train(sets, self.guidance_levels(), steps, progress)
        self.energies_trained = True
        return {"denoiser_evaluations": float(evaluations), **metrics}

    def refresh_evaluations(self) -> int:
        """Denoiser sample-evaluations that one train_energies call spends on its sets."""
        unconditional, conditional = conditional_passes(self.energies)
        return (
            (unconditional + conditional)
            * self.config.negative_trajectories
            * self.config.diffusion.evaluations_per_sample
        )

    def guidance_levels(self) -> torch.Tensor:
        """The σ at which the sampler evaluates guidance (σ̂ of churned steps and Heun's
        corrector levels included), with repetition: where the energies act and are trained."""
        cfg = self.config
        sigmas = self.prior.evaluation_sigmas().to(self.device, torch.float32)
        inside = (sigmas >= cfg.guidance_sigma_min) & (sigmas <= cfg.guidance_sigma_max)
        return sigmas[inside]

    def guidance(
        self, names: tuple[str, ...] = ENERGIES, known: torch.Tensor | None = None
    ) -> EnergyGuidance | None:
        """The guidance hook of the energies `names` at the current weights (see
        guidance_hook). `known`: the dims the conditional sampler holds clean."""
        terms = [
            EnergyTerm(net, self.energy_dims[name], self.config.weights[name])
            for name, net in self.energies.items()
            if name in names
        ]
        return guidance_hook(self.config, terms, self.layout.dim, known, self.rng,
                             self.guidance_observer)

    # ----- sampling ------------------------------------------------------------------------
    def seed_sampling(self, seed: int) -> None:
        """Restart the random streams of sampling (the prior's and the guidance's) from
        `seed`, so that a loaded generator can draw independent batches on request. Training
        draws from the same streams, so a run that goes on training is no longer the one its
        seed made."""
        self.prior.generator.manual_seed(seed)
        self.rng.manual_seed(seed + 2)

    def sampling_state(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Where the random streams of sampling are: `restore_sampling` repeats a draw."""
        return self.prior.generator.get_state(), self.rng.get_state()

    def restore_sampling(self, state: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.prior.generator.set_state(state[0])
        self.rng.set_state(state[1])

    def generate(self, n: int, guided: bool | None = None) -> Transitions:
        """Up to n transitions in raw units (rows with NaN/inf are dropped and counted in
        `dropped_rows`); guided defaults to mode == "edis"."""
        self._require_prior()
        guided = self.mode == "edis" if guided is None else guided
        if guided and not self.energies_trained:
            raise RuntimeError("guided generation needs train_energies() first")
        parts = []
        for start in range(0, n, self.config.generate_batch):
            m = min(self.config.generate_batch, n - start)
            x = self._sample_guided(m) if guided else self.prior.sample(m).x
            raw = self.prior.normalizer.unnormalize(x)
            finite = torch.isfinite(raw).all(dim=1)
            self.dropped_rows += int((~finite).sum())
            parts.append(raw[finite].cpu().numpy())
        array = np.concatenate(parts) if parts else np.zeros((0, self.layout.dim), np.float32)
        return self.layout.to_transitions(array)

    def complete(self, given: Transitions) -> Transitions:
        """(r, s', done) from the prior's learned conditional at the rows' own (s, a), in raw
        units (given actions in the agents' [-1, 1]): what any sampler with this prior makes
        at those (s, a). Theorem 3.1's target keeps exactly this conditional, so it is the
        reference of the dynamics diagnostic."""
        self._require_prior()
        x = self.prior.normalizer.normalize(
            torch.as_tensor(self.layout.to_array(given), device=self.device))
        mask = self.layout.mask("state_action", device=self.device)
        parts = [self.prior.normalizer.unnormalize(
                     self.prior.sample(len(chunk), inpaint=Inpaint(chunk, mask)).x).cpu().numpy()
                 for chunk in x.split(self.config.generate_batch)]
        return self.layout.to_transitions(np.concatenate(parts))

    def _sample_guided(self, m: int) -> torch.Tensor:
        """Normalised samples of the guided sampler: D̃ = D_θ − σ² Σ_k w_k ∇E_k,σ at every
        level inside the guidance interval. With energies at their optimum, w_s = w_π = 1
        and guidance at every σ this samples μ = d^π(s)·π(a|s)·p_θ(r, s', done | s, a)
        exactly (E_s,σ + E_π,σ = −log μ_σ/p_σ, see energy.training.contrastive_sets); w_T =
        1 adds E_T, which moves (r, s', done) toward the real dynamics T(·|s, a).

        Joint (default): one pass with every energy's gradient (docs/algorithm.md §6). Factorised:
        (s, a) from a pass guided by E_s and E_π, then (r, s', done) inpainted from the
        prior's learned conditional under E_T alone, at twice the sampling cost; E_T then
        acts on a conditional sampler whose (s, a) are held clean.
        """
        joint = self.guidance()
        if not self.config.factorized_guidance or joint is None:
            return self.prior.sample(m, guidance=joint).x
        state_action = self.prior.sample(m, guidance=self.guidance(("state", "policy"))).x
        mask = self.layout.mask("state_action", device=self.device)
        known = Inpaint(state_action, mask)
        guidance = self.guidance(("transition",), known=mask)
        return self.prior.sample(m, guidance=guidance, inpaint=known).x

    # ----- state ---------------------------------------------------------------------------
    def energy_state_dict(self) -> dict[str, Any]:
        return {
            "nets": {name: net.state_dict() for name, net in self.energies.items()},
            "optimizers": self.energy_training.state_dict(),
            "trained": self.energies_trained,
        }

    def load_energy_state_dict(self, state: dict[str, Any]) -> None:
        if set(state["nets"]) != set(self.energies):
            raise ValueError(
                f"energies in state {sorted(state['nets'])} differ from this "
                f"generator's {sorted(self.energies)}"
            )
        for name, net in self.energies.items():
            net.load_state_dict(state["nets"][name])
        self.energy_training.load_state_dict(state["optimizers"])
        self.energies_trained = bool(state["trained"])

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values only (torch.load(weights_only=True) reads it)."""
        return {
            "config": asdict(self.config),
            "obs_dim": self.layout.obs_dim,
            "act_dim": self.layout.act_dim,
            "mode": self.mode,
            "prior": self.prior.state_dict(),
            "energies": self.energy_state_dict(),
            "rng": self.rng.get_state(),
            "dropped_rows": self.dropped_rows,
            "denoiser_evaluations": self.denoiser_evaluations,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state["obs_dim"], state["act_dim"]) != (self.layout.obs_dim, self.layout.act_dim):
            raise ValueError(
                f"state is for obs/act dims {state['obs_dim']}/{state['act_dim']}, "
                f"this generator has {self.layout.obs_dim}/{self.layout.act_dim}"
            )
        saved_delta = state["config"]["next_state_delta"]
        if saved_delta != self.config.next_state_delta:
            raise ValueError(
                f"the saved prior models {'s′ − s' if saved_delta else 's′'} in the next-state "
                f"slot, this generator {'s′ − s' if self.config.next_state_delta else 's′'}: "
                f"set edis.next_state_delta={str(saved_delta).lower()} to load it"
            )
        self.prior.load_state_dict(state["prior"])
        self.load_energy_state_dict(state["energies"])
        self.rng.set_state(state["rng"])
        self.dropped_rows = int(state["dropped_rows"])
        self.denoiser_evaluations = int(state["denoiser_evaluations"])

    @classmethod
    def from_state_dict(
        cls, state: dict[str, Any], device: torch.device | str = "cpu", mode: str | None = None
    ) -> SyntheticGenerator:
        """Rebuilds a generator (config, layout, weights) from `state_dict()` output."""
        generator = cls(
            state["obs_dim"],
            state["act_dim"],
            EDISConfig(**state["config"]),
            mode or state["mode"],
            device,
        )
        generator.load_state_dict(state)
        return generator

    # ----- helpers -------------------------------------------------------------------------
    def _normalize(self, raw: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(raw, dtype=torch.float32, device=self.device)
        return self.prior.normalizer.normalize(x)

    def _check_guidance_interval(self) -> None:
        """Guidance only acts at the σ the sampler evaluates: a coarse schedule can skip the
        whole interval, and guided sampling would then silently be unguided."""
        cfg = self.config
        sigmas = self.prior.sigmas()[:-1]
        if len(self.guidance_levels()) == 0:
            raise ValueError(
                f"no level of the {cfg.diffusion.sampling_steps}-step sampler lies in the "
                f"guidance interval [{cfg.guidance_sigma_min}, {cfg.guidance_sigma_max}] "
                f"(levels {[round(float(x), 3) for x in sigmas]}): raise "
                "edis.diffusion.sampling_steps or widen edis.guidance_sigma_min/max"
            )

    def _require_prior(self) -> None:
        if not self.prior.normalizer.fitted:
            raise RuntimeError("the prior is untrained: call train_prior() first")
