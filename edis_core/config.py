"""Typed configuration: nested dataclasses, YAML profiles and `key.sub=value` overrides.

Every component owns one dataclass with its defaults and validates itself in
`__post_init__`; this module only builds them from plain dictionaries, rejecting
unknown keys, values of the wrong type and NaN/inf numbers (inf only where the default is
inf) with a message that names the field.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the field and the fix."""


def from_dict(cls: type[T], data: dict[str, Any], path: str = "") -> T:
    """Build dataclass `cls` from `data`, recursing into nested dataclasses."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path or 'config'}: unknown field(s) {unknown}; valid: {sorted(known)}")
    unbounded = {f.name for f in dataclasses.fields(cls) if _infinite_default(f)}
    kwargs = {name: _coerce(hints[name], value, _join(path, name), name in unbounded)
              for name, value in data.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{path or 'config'}: {err}") from err


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _infinite_default(f: dataclasses.Field) -> bool:
    """A float field whose default is ±inf ("no bound") may be set to inf; others may not."""
    return isinstance(f.default, float) and math.isinf(f.default)


def _coerce(hint: Any, value: Any, path: str, allow_inf: bool = False) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, path)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, path, allow_inf)
            except ConfigError as err:
                errors.append(str(err))
        if len(errors) == 1:  # X | None: the one type's own message says more
            raise ConfigError(errors[0])
        raise ConfigError(f"{path}: {value!r} matches none of {hint}")
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{path}: {value!r} is not one of {list(allowed)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)[:1] or (Any,)
        items = [_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):
            value = _number(value, path)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        if math.isnan(value) or (math.isinf(value) and not allow_inf):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def _number(text: str, path: str) -> float:
    """A number YAML 1.1 left as a string: `1e-4` (an exponent without a dot) is one."""
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{path}: expected a number, got {text!r}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=3` -> (["a", "b"], 3); the value is read as YAML so numbers and lists work."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        return key.strip().split("."), yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({err})") from err


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dictionary merge: `update` wins, nested mappings merge."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def nest(keys: list[str], value: Any) -> dict[str, Any]:
    for key in reversed(keys):
        value = {key: value}
    return value


def load_profile(name: str) -> dict[str, Any]:
    """Read edis_core/profiles/<name>.yaml (or a path to a YAML file) as a plain mapping."""
    path = Path(name)
    if not path.suffix:
        path = PROFILE_DIR / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
        raise ConfigError(f"profile {name!r} not found; available profiles: {available}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"profile {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"profile {path} must be a mapping at the top level")
    return data


def build(cls: type[T], profile: str | None, fields: dict[str, Any], overrides: list[str]) -> T:
    """Profile, then explicit fields (CLI flags), then `--set` overrides, validated as `cls`."""
    data = load_profile(profile) if profile else {}
    data = merge(data, {k: v for k, v in fields.items() if v is not None})
    for text in overrides:
        keys, value = parse_override(text)
        data = merge(data, nest(keys, value))
    return from_dict(cls, data)
