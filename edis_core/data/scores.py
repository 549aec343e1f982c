"""D4RL normalised score: 100 · (R − R_random) / (R_expert − R_random).

The reference returns are the D4RL v2 figures (Fu et al. 2020, `d4rl/infos.py`), keyed by
environment family so that every version of an environment (Hopper-v2 ... Hopper-v5) maps to
the same pair. They were measured on the v2 MuJoCo environments; later versions are close
but not identical, so scores on v5 are comparable with the literature only approximately.
"""

from __future__ import annotations

from typing import NamedTuple


class ReferenceReturns(NamedTuple):
    random: float
    expert: float


REFERENCE_RETURNS: dict[str, ReferenceReturns] = {
    "hopper": ReferenceReturns(random=-20.272305, expert=3234.3),
    "halfcheetah": ReferenceReturns(random=-280.178953, expert=12135.0),
    "walker2d": ReferenceReturns(random=1.629008, expert=4592.3),
    "ant": ReferenceReturns(random=-325.6, expert=3879.7),
}


def env_family(env_id: str) -> str:
    """'Hopper-v5' -> 'hopper', 'gymnasium/HalfCheetah-v4' -> 'halfcheetah'."""
    name = env_id.rsplit("/", 1)[-1]
    return name.split("-v", 1)[0].lower()


def reference_returns(env_id: str) -> ReferenceReturns | None:
    return REFERENCE_RETURNS.get(env_family(env_id))


def normalized_score(env_id: str, mean_return: float) -> float | None:
    """D4RL normalised score of an undiscounted mean return; None for an unknown family."""
    ref = reference_returns(env_id)
    if ref is None:
        return None
    return 100.0 * (float(mean_return) - ref.random) / (ref.expert - ref.random)
