"""Typed options on nested dataclasses: values from YAML or `--set` checked against type hints.

Every error is a one-line ConfigError naming the dotted key, with the closest valid key
suggested for a typo, so a bad config never ends in a traceback.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

import yaml

from ospo_mlx.errors import ConfigError


def coerce(value: Any, hint: Any, key: str) -> Any:
    """Check/convert `value` to the type `hint`; raise ConfigError naming `key`."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {coerce(k, args[0], key): coerce(v, args[1], key) for k, v in value.items()}
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(coerce(v, args[0], key) for v in value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(coerce(v, a, key) for v, a in zip(value, args, strict=True))
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [coerce(v, args[0], key) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "yes", "no", "1", "0"}:
            return value.lower() in {"true", "yes", "1"}
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            as_float = float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
        if not as_float.is_integer():
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(as_float)
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if hint is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported option type {hint}")


def _unknown_key(key: str, valid: list[str], prefix: str, moved: Mapping[str, str]) -> ConfigError:
    if f"{prefix}{key}" in moved:
        new = moved[f"{prefix}{key}"]
        return ConfigError(f"config key '{prefix}{key}' moved to '{new}'; set it there")
    full = [f"{prefix}{v}" for v in valid]
    close = difflib.get_close_matches(f"{prefix}{key}", full, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(full)}"
    return ConfigError(f"unknown config key '{prefix}{key}'{hint}")


def apply_options(
    obj: Any, values: dict[str, Any], prefix: str = "", moved: Mapping[str, str] | None = None
) -> None:
    """Set the (nested) `values` on dataclass `obj`, validating keys and types.

    `moved` maps dotted keys that were renamed to their new place, for a pointed message.
    """
    hints = typing.get_type_hints(type(obj))
    for key, value in values.items():
        if key not in hints:
            raise _unknown_key(str(key), list(hints), prefix, moved or {})
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{key}: expected a mapping of options, got {value!r}")
            apply_options(current, value, f"{prefix}{key}.", moved)
        else:
            setattr(obj, key, coerce(value, hints[key], f"{prefix}{key}"))


def parse_override(text: str) -> tuple[list[str], Any]:
    """'optim.steps=5' -> (['optim', 'steps'], 5); the value is read as YAML (null, true, 1e-4, [a, b])."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set optim.steps=5")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return [p for p in key.strip().split(".") if p], value


def nest(path: list[str], value: Any) -> dict[str, Any]:
    """(['optim', 'steps'], 5) -> {'optim': {'steps': 5}}."""
    out: dict[str, Any] = value
    for part in reversed(path):
        out = {part: out}
    return out
