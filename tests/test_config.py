from dataclasses import dataclass, field
from typing import Literal

import pytest

from edis_core.config import ConfigError, build, from_dict, parse_override
from edis_core.training.config import SyntheticSchedule, TrainConfig


@dataclass
class Inner:
    width: int = 8
    scales: tuple[float, ...] = (1.0, 2.0)


@dataclass
class Outer:
    name: Literal["a", "b"] = "a"
    rate: float = 0.1
    inner: Inner = field(default_factory=Inner)
    optional: int | None = None


def test_from_dict_builds_nested_and_coerces_ints_to_floats():
    cfg = from_dict(Outer, {"name": "b", "rate": 1, "inner": {"width": 3, "scales": [1, 2, 3]}})
    assert cfg.name == "b" and cfg.rate == 1.0 and isinstance(cfg.rate, float)
    assert cfg.inner.width == 3 and cfg.inner.scales == (1.0, 2.0, 3.0)


@pytest.mark.parametrize("data, fragment", [
    ({"nmae": "a"}, "unknown field(s) ['nmae']"),
    ({"name": "c"}, "name: 'c' is not one of"),
    ({"inner": {"width": "wide"}}, "inner.width: expected an integer"),
    ({"inner": {"width": True}}, "inner.width: expected an integer"),
    ({"rate": "fast"}, "rate: expected a number"),
    ({"inner": 3}, "inner: expected a mapping"),
])
def test_from_dict_names_the_wrong_field(data, fragment):
    with pytest.raises(ConfigError, match=None) as info:
        from_dict(Outer, data)
    assert fragment in str(info.value)


def test_optional_field_accepts_none_and_value():
    assert from_dict(Outer, {"optional": None}).optional is None
    assert from_dict(Outer, {"optional": 4}).optional == 4


def test_parse_override_reads_yaml_values():
    assert parse_override("iql.expectile=0.8") == (["iql", "expectile"], 0.8)
    assert parse_override("synthetic=edis") == (["synthetic"], "edis")
    with pytest.raises(ConfigError):
        parse_override("no-equals-sign")


def test_build_applies_profile_then_fields_then_overrides():
    cfg = build(TrainConfig, "smoke", {"agent": "calql", "seed": 7},
                ["schedule.ratio=0.25", "seed=9"])
    assert cfg.agent == "calql"
    assert cfg.seed == 9
    assert cfg.schedule.ratio == 0.25


def test_unknown_profile_lists_available():
    with pytest.raises(ConfigError, match="available profiles"):
        build(TrainConfig, "does-not-exist", {}, [])


@pytest.mark.parametrize("override", ["offline_ratio=1.5", "batch_size=0", "device=tpu",
                                      "schedule.ratio=1.5", "schedule.prior_recent_share=1.0",
                                      "sampling_seed=-1", "schedule.prior_offline_rows=-1",
                                      "schedule.prior_recent_share=-0.1"])
def test_train_config_validation(override):
    with pytest.raises(ConfigError):
        build(TrainConfig, None, {}, [override])


def test_synthetic_schedule_rejects_refresh_larger_than_buffer():
    with pytest.raises(ValueError, match="samples_per_refresh"):
        SyntheticSchedule(samples_per_refresh=10, buffer_size=5)


def test_numbers_yaml_reads_as_strings_are_accepted_and_words_are_not():
    """YAML 1.1 reads `1e-4` (an exponent without a dot) as a string; float() reads it."""
    cfg = build(TrainConfig, None, {}, ["iql.actor_lr=1e-4", "iql.online_actor_lr=3E-5"])
    assert (cfg.iql.actor_lr, cfg.iql.online_actor_lr) == (1e-4, 3e-5)
    for bad in ("iql.actor_lr=fast", "iql.actor_lr=nan"):
        with pytest.raises(ConfigError, match=r"iql\.actor_lr"):
            build(TrainConfig, None, {}, [bad])


@pytest.mark.parametrize("profile", ["default", "smoke", "demo", "paper", "evidence"])
def test_every_shipped_profile_is_valid(profile):
    assert isinstance(build(TrainConfig, profile, {}, []), TrainConfig)
