"""Networks shared by the base agents, and the two update helpers they share.

The critics are a `StackedMLP`: E ReLU MLPs whose weights are stacked so that all members run
in the same batched matmuls (never a loop over members), with a hand-written backward that
recycles its activation buffers. Value nets and actors are plain MLPs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

LOG_STD_MIN = -5.0
LOG_STD_MAX = 2.0
# A tanh-squashed policy has no density at |a| = 1; actions are pulled this far inside.
ACTION_EPS = 1e-6
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def orthogonal_init_(network: nn.Module, gain: float = math.sqrt(2.0)) -> None:
    """Every nn.Linear of `network` orthogonal with `gain`, biases 0 (CORL's `orthogonal_init`,
    which treats the output layer like the others)."""
    for module in network.modules():
        if isinstance(module, nn.Linear):
            nn.init.orthogonal_(module.weight, gain)
            nn.init.zeros_(module.bias)


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int) -> nn.Sequential:
    """Linear-ReLU layers of the given widths, then a linear output layer."""
    layers: list[nn.Module] = []
    for width in hidden:
        # In place: a Linear's backward does not need its output, ReLU's needs only its own.
        layers += [nn.Linear(in_dim, width), nn.ReLU(inplace=True)]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class Workspace:
    """Reusable activation buffers, so that large activations are not fresh memory every update.

    On CPU a fresh multi-megabyte tensor is a new mapping whose pages all fault in again; the
    critic's Cal-QL forward (31 actions × batch rows × 256 units × 2 critics) otherwise spends
    a large share of its time there. Buffers go back to the pool as soon as they are consumed;
    the pool keeps only the most recently used shapes.
    """

    max_shapes = 8

    def __init__(self) -> None:
        self._free: dict[tuple[Any, ...], list[torch.Tensor]] = {}

    def take(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        stack = self._free.get((shape, like.dtype, like.device))
        return stack.pop() if stack else like.new_empty(shape)

    def give(self, *tensors: torch.Tensor) -> None:
        for t in tensors:
            key = (tuple(t.shape), t.dtype, t.device)
            self._free[key] = [*self._free.pop(key, []), t]      # most recent shape last
            if len(self._free) > self.max_shapes:
                del self._free[next(iter(self._free))]


class _StackedMLPFunction(torch.autograd.Function):
    """Forward and backward of E stacked ReLU MLPs, (E, N, in) -> (E, N, out), by hand.

    The same arithmetic as autograd through baddbmm and ReLU, but in workspace buffers: the
    ReLU mask is applied in place to the incoming gradient and every activation buffer is
    recycled once its last use is done.
    """

    @staticmethod
    def forward(ctx: Any, workspace: Workspace, x: torch.Tensor,
                *params: torch.Tensor) -> torch.Tensor:
        weights, biases = params[0::2], params[1::2]
        activations, h = [], x
        for weight, bias in zip(weights[:-1], biases[:-1], strict=True):
            h = torch.baddbmm(bias, h, weight,
                              out=workspace.take((x.shape[0], x.shape[1], weight.shape[2]), x))
            activations.append(h.relu_())
        ctx.workspace, ctx.released = workspace, False
        ctx.save_for_backward(x, *activations, *weights)
        return torch.baddbmm(biases[-1], h, weights[-1])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if ctx.released:
            raise RuntimeError("StackedMLP buffers were recycled by an earlier backward: "
                               "retain_graph=True is not supported")
        ctx.released = True
        x, *rest = ctx.saved_tensors
        n_layers = len(rest) // 2 + 1
        activations, weights = rest[:n_layers - 1], rest[n_layers - 1:]
        inputs = [x, *activations]
        needs = ctx.needs_input_grad[2:]
        grads: list[torch.Tensor | None] = [None] * (2 * n_layers)
        grad = grad.contiguous()
        recycle: torch.Tensor | None = None
        for i in reversed(range(n_layers)):
            if needs[2 * i]:
                grads[2 * i] = torch.bmm(inputs[i].transpose(1, 2), grad)
            if needs[2 * i + 1]:
                grads[2 * i + 1] = grad.sum(1, keepdim=True)
            if i == 0:
                break
            below = torch.bmm(grad, weights[i].transpose(1, 2),
                              out=ctx.workspace.take(tuple(inputs[i].shape), grad))
            # dReLU in place: the activation is zero exactly where the unit was off.
            torch.ops.aten.threshold_backward.grad_input(below, inputs[i], 0.0,
                                                         grad_input=below)
            ctx.workspace.give(inputs[i])
            if recycle is not None:
                ctx.workspace.give(recycle)
            grad = recycle = below
        grad_x = torch.bmm(grad, weights[0].transpose(1, 2)) if ctx.needs_input_grad[1] else None
        if recycle is not None:
            ctx.workspace.give(recycle)
        return (None, grad_x, *grads)


class StackedMLP(nn.Module):
    """E independent ReLU MLPs with stacked weights: (*lead, in) -> (E, *lead, out).

    All members read the same input rows. Each layer is initialised like nn.Linear, member by
    member: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases (`orthogonal_` re-draws
    them as CORL's Cal-QL does). Activations of at least
    `recycle_min_elements` go through the hand-written backward and its buffer workspace.

    `hidden_bf16`: the hidden layers multiply in bfloat16 (autograd through casts of the
    float32 weights, so parameters, their gradients, the output layer and the result stay
    float32): about 2× faster Cal-QL updates on CPUs with AMX (benchmarks/bench_agents.py).
    """

    recycle_min_elements = 1 << 20

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, members: int,
                 hidden_bf16: bool = False) -> None:
        super().__init__()
        self.members, self.in_dim, self.out_dim = members, in_dim, out_dim
        self.hidden_bf16 = hidden_bf16
        self.width = max(hidden, default=out_dim)
        self.weights, self.biases = nn.ParameterList(), nn.ParameterList()
        for fan_in, fan_out in itertools.pairwise([in_dim, *hidden, out_dim]):
            bound = 1.0 / math.sqrt(fan_in)
            self.weights.append(torch.empty(members, fan_in, fan_out).uniform_(-bound, bound))
            self.biases.append(torch.empty(members, 1, fan_out).uniform_(-bound, bound))
        self.workspace = Workspace()

    @torch.no_grad()
    def orthogonal_(self, gain: float = math.sqrt(2.0)) -> StackedMLP:
        """Every member's layers orthogonal with `gain`, biases 0 (CORL's `orthogonal_init`)."""
        for weight, bias in zip(self.weights, self.biases, strict=True):
            for member in range(self.members):
                # nn.Linear keeps (out, in); the stacked layout is (in, out).
                weight[member] = nn.init.orthogonal_(torch.empty(weight.shape[2],
                                                                 weight.shape[1]), gain).T
            bias.zero_()
        return self

    def forward(self, x: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        """`frozen=True` lets gradients reach `x` but not the weights."""
        lead = x.shape[:-1]
        x = x.reshape(1, -1, self.in_dim).expand(self.members, -1, -1)
        params = [p for pair in zip(self.weights, self.biases, strict=True) for p in pair]
        if frozen:
            params = [p.detach() for p in params]
        if self.hidden_bf16:
            out = self._chain_bf16(x, params)
        elif x.shape[1] * self.members * self.width < self.recycle_min_elements:
            out = self._chain(x, params)
        elif torch.is_grad_enabled() and (x.requires_grad
                                          or any(p.requires_grad for p in params)):
            out = _StackedMLPFunction.apply(self.workspace, x, *params)
        else:
            out = self._evaluate(x, params)
        return out.view(self.members, *lead, self.out_dim)

    @staticmethod
    def _chain(x: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        """Plain autograd ops: cheaper bookkeeping than the workspace for small activations."""
        h = x
        for i in range(0, len(params) - 2, 2):
            # In place: baddbmm's backward does not need its output, ReLU's needs only its own.
            h = torch.baddbmm(params[i + 1], h, params[i]).relu_()
        return torch.baddbmm(params[-1], h, params[-2])

    @staticmethod
    def _chain_bf16(x: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        """`_chain` with bfloat16 hidden layers. The output layer stays float32: rounding Q
        itself to bfloat16 (8 bits of mantissa) would be ±1 at Q ≈ 300, coarser than the TD
        errors it is trained on."""
        h = x.to(torch.bfloat16)
        for i in range(0, len(params) - 2, 2):
            h = torch.baddbmm(params[i + 1].to(torch.bfloat16), h,
                              params[i].to(torch.bfloat16)).relu_()
        return torch.baddbmm(params[-1], h.float(), params[-2])

    def _evaluate(self, x: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        """Forward without a graph, ping-ponging between workspace buffers."""
        h = x
        for weight, bias in zip(params[0:-2:2], params[1:-2:2], strict=True):
            out = self.workspace.take((x.shape[0], x.shape[1], weight.shape[2]), x)
            torch.baddbmm(bias, h, weight, out=out).relu_()
            if h is not x:
                self.workspace.give(h)
            h = out
        result = torch.baddbmm(params[-1], h, params[-2])
        if h is not x:
            self.workspace.give(h)
        return result


class ObservationScaler(nn.Module):
    """s ↦ (s − μ) / σ with the offline dataset's statistics, kept as buffers so that every
    copy of a network (targets, checkpoints, rollout actors) normalises the same way; the
    identity until `set` is called."""

    def __init__(self, obs_dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(obs_dim))
        self.register_buffer("std", torch.ones(obs_dim))

    def set(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        with torch.no_grad():
            self.mean.copy_(mean)
            self.std.copy_(std)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return (observations - self.mean) / self.std


def set_observation_statistics(networks: Sequence[nn.Module], mean: torch.Tensor,
                               std: torch.Tensor) -> None:
    """Give every ObservationScaler inside `networks` the same statistics."""
    for network in networks:
        for module in network.modules():
            if isinstance(module, ObservationScaler):
                module.set(mean, std)


class QEnsemble(nn.Module):
    """E critics Q_1..Q_E(s, a), evaluated together: returns (E, *leading dims of the actions)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int], members: int = 2,
                 hidden_bf16: bool = False) -> None:
        super().__init__()
        self.obs_scaler = ObservationScaler(obs_dim)
        self.net = StackedMLP(obs_dim + act_dim, hidden, 1, members, hidden_bf16)

    def forward(self, observations: torch.Tensor, actions: torch.Tensor,
                frozen: bool = False) -> torch.Tensor:
        """Q-values of every (s, a) row; `observations` broadcasts against `actions`.

        `frozen=True` lets gradients reach the inputs but not the critics' weights (the
        actor's loss differentiates Q(s, π(s)) with respect to the action only).
        """
        observations = self.obs_scaler(observations)
        observations = observations.expand(*actions.shape[:-1], observations.shape[-1])
        return self.net(torch.cat([observations, actions], dim=-1), frozen).squeeze(-1)


class ValueNet(nn.Module):
    """State value V(s)."""

    def __init__(self, obs_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.obs_scaler = ObservationScaler(obs_dim)
        self.net = mlp(obs_dim, hidden, 1)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.net(self.obs_scaler(observations)).squeeze(-1)


def gaussian_log_prob(noise: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(mean + std·noise; mean, std), summed over the action dimensions."""
    return (-0.5 * noise.square() - log_std - _HALF_LOG_2PI).sum(-1)


class GaussianActor(nn.Module):
    """IQL's policy: N(tanh(f(s)), diag σ²) with a state-independent log σ, not squashed.

    It acts (`sample`) from that density, or, once `exploration_std` is set to a value ≥ 0,
    from N(tanh(f(s)), exploration_std²): the mean with small fixed noise, as CORL's
    deterministic IQL explores. The density it is trained on (`log_prob`) stays the learned
    one. `exploration_std` is a buffer, so every copy of the policy (rollout actors,
    checkpoints) acts alike."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.obs_scaler = ObservationScaler(obs_dim)
        self.net = mlp(obs_dim, hidden, act_dim)
        self.log_std = nn.Parameter(torch.zeros(act_dim))
        self.register_buffer("exploration_std", torch.tensor(-1.0))   # < 0: the learned σ

    def forward(self, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (B, A) and log σ (A,)."""
        mean = torch.tanh(self.net(self.obs_scaler(observations)))
        return mean, self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def log_prob(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        mean, log_std = self(observations)
        return gaussian_log_prob((actions - mean) * torch.exp(-log_std), log_std)

    def sample(self, observations: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """An action clipped to [-1, 1] (the mean when deterministic)."""
        mean, log_std = self(observations)
        if deterministic:
            return mean
        std = self.exploration_std if self.exploration_std >= 0 else log_std.exp()
        return (mean + std * torch.randn_like(mean)).clamp_(-1.0, 1.0)


def squash_log_det(pre_tanh: torch.Tensor) -> torch.Tensor:
    """Σ log(1 - tanh(u)²), written as 2(log 2 - u - softplus(-2u)) to stay finite for large |u|."""
    return (2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))).sum(-1)


class TanhGaussianActor(nn.Module):
    """SAC's policy: a = tanh(u), u ~ N(μ(s), σ(s)²) (Haarnoja et al. 2018, appendix C).

    `orthogonal` and `log_std_offset` only change the initialisation (CORL's Cal-QL: every
    layer orthogonal, log σ = raw − 1). CORL adds the offset as a learned scalar after the
    output layer; the log-σ half of that layer's bias is the same degree of freedom, so here
    the bias starts at the offset and the network keeps its parameters (and checkpoints)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int],
                 orthogonal: bool = False, log_std_offset: float = 0.0) -> None:
        super().__init__()
        self.obs_scaler = ObservationScaler(obs_dim)
        self.net = mlp(obs_dim, hidden, 2 * act_dim)
        if orthogonal:
            orthogonal_init_(self.net)
        with torch.no_grad():
            self.net[-1].bias[act_dim:] += log_std_offset

    def forward(self, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """μ and log σ, each (B, A)."""
        mean, log_std = self.net(self.obs_scaler(observations)).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    @staticmethod
    def rsample(mean: torch.Tensor, log_std: torch.Tensor,
                samples: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised a ~ π(·|s) and log π(a|s).

        With `samples=K` the K draws share one evaluation of μ, log σ: shapes (B, K, A), (B, K).
        """
        if samples is not None:
            mean, log_std = mean.unsqueeze(1), log_std.unsqueeze(1)
            noise = torch.randn(mean.shape[0], samples, mean.shape[2], device=mean.device,
                                dtype=mean.dtype)
        else:
            noise = torch.randn_like(mean)
        pre_tanh = mean + log_std.exp() * noise
        return torch.tanh(pre_tanh), gaussian_log_prob(noise, log_std) - squash_log_det(pre_tanh)

    def log_prob(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        mean, log_std = self(observations)
        pre_tanh = torch.atanh(actions.clamp(-1.0 + ACTION_EPS, 1.0 - ACTION_EPS))
        noise = (pre_tanh - mean) * torch.exp(-log_std)
        return gaussian_log_prob(noise, log_std) - squash_log_det(pre_tanh)

    def sample(self, observations: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        mean, log_std = self(observations)
        if deterministic:
            return torch.tanh(mean)
        return self.rsample(mean, log_std)[0]


def adam(groups: list[dict[str, Any]], device: torch.device) -> torch.optim.Adam:
    """One Adam over every network, as a single fused kernel where torch has one for the device."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.Adam(groups, fused=fused, foreach=None if fused else True)


def polyak_update(target: torch.nn.Module, online: torch.nn.Module, rate: float) -> None:
    """θ̄ ← (1 − rate) θ̄ + rate θ, for all tensors in one foreach call."""
    with torch.no_grad():
        torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), rate)
