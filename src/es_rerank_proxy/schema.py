"""Build frozen typed config from plain data; every error names its key path.

Generic over any tree of frozen dataclasses: field types drive validation, `metadata={"min": ..., "max": ...}`
bounds numbers, and strings that came from the environment may be parsed as numbers and booleans.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

from .errors import ConfigError


def build(cls: Any, data: Any, path: str) -> Any:
    """Validate the mapping `data` against dataclass `cls` and construct it; `path` prefixes every error."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or '(top level)'}: expected a mapping, got {describe(data)}")
    hints = _resolved_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in data if k not in fields)
    if unknown:
        where = f"{path}.{unknown[0]}" if path else unknown[0]
        raise ConfigError(f"{where}: unknown key (known keys: {', '.join(fields)})")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        key_path = f"{path}.{name}" if path else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{key_path}: required key is missing")
            continue
        values[name] = _convert(hints[name], data[name], key_path, f.metadata)
    return cls(**values)


def describe(value: Any) -> str:
    """How an error message shows a bad value."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(str(value) if isinstance(value, _EnvString) else value)


# --- environment ------------------------------------------------------------------------------------


def apply_environment(raw: dict[str, Any], environ: Mapping[str, str], root: Any, prefix: str) -> None:
    """`<prefix><SECTION>_<KEY>` (nested: `<SECTION>_<SUB>_<KEY>`) overrides a scalar key (for containers)."""
    for section in dataclasses.fields(root):
        _apply_section(raw, environ, _resolved_hints(root)[section.name], [section.name], prefix)


def _apply_section(
    raw: dict[str, Any], environ: Mapping[str, str], section_type: Any, path: list[str], prefix: str
) -> None:
    for key in dataclasses.fields(section_type):
        hint = _resolved_hints(section_type)[key.name]
        if dataclasses.is_dataclass(hint):
            # Nested sections too (`ubi.elasticsearch.api_key`): a secret belongs in the environment.
            _apply_section(raw, environ, hint, [*path, key.name], prefix)
            continue
        name = (prefix + "_".join([*path, key.name])).upper()
        if name in environ:
            value: Any = environ[name]
            if typing.get_origin(hint) is tuple:
                value = [part.strip() for part in value.split(",") if part.strip()]
            set_path(raw, [*path, key.name], value, from_env=name)


def set_path(raw: dict[str, Any], keys: list[str], value: Any, from_env: str | None = None) -> None:
    """Put `value` at the nested key path `keys` of `raw`, creating mappings on the way."""
    node = raw
    for depth, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            where = ".".join(keys[: depth + 1])
            raise ConfigError(f"{where}: expected a mapping, got {describe(child)}")
        node = child
    node[keys[-1]] = _EnvString(value) if from_env is not None and isinstance(value, str) else value


class _EnvString(str):
    """A string that came from the environment, so numbers and booleans may be parsed from it."""

    __slots__ = ()


# --- validation -------------------------------------------------------------------------------------


@functools.cache
def _resolved_hints(cls: Any) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(hint: Any, value: Any, path: str, meta: Mapping[str, Any]) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return build(typing.cast(type, hint), value, path)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            allowed = " | ".join(str(c) for c in choices)
            raise ConfigError(f"{path}: expected one of {allowed}, got {describe(value)}")
        return value
    if origin is tuple:
        item_type = typing.get_args(hint)[0]
        items = [value] if isinstance(value, str) and item_type is str else value
        if not isinstance(items, list | tuple):
            raise ConfigError(f"{path}: expected a list, got {describe(value)}")
        return tuple(_convert(item_type, item, f"{path}[{i}]", meta) for i, item in enumerate(items))
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"unsupported config type at {path}: {hint}")  # pragma: no cover
    if hint is bool:
        if isinstance(value, _EnvString) and value.lower() in (
            "true",
            "1",
            "yes",
            "on",
            "false",
            "0",
            "no",
            "off",
        ):
            return value.lower() in ("true", "1", "yes", "on")
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {describe(value)}")
        return value
    if hint is int or hint is float:
        return _number(hint, value, path, meta)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {describe(value)}")
        return str(value)
    raise TypeError(f"unsupported config type at {path}: {hint}")  # pragma: no cover


def _number(hint: type, value: Any, path: str, meta: Mapping[str, Any]) -> int | float:
    low, high = meta.get("min"), meta.get("max")
    kind = "a whole number" if hint is int else "a number"
    bounds = ""
    if low is not None and high is not None:
        bounds = f" from {low:g} to {high:g}"
    elif low is not None:
        bounds = f" >= {low:g}"
    expected = f"{path}: expected {kind}{bounds}, got {describe(value)}"
    if isinstance(value, _EnvString):
        try:
            value = int(value) if hint is int else float(value)
        except ValueError:
            raise ConfigError(expected) from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(expected)
    if hint is int and not (isinstance(value, int) or float(value).is_integer()):
        raise ConfigError(expected)
    number: int | float = int(value) if hint is int else float(value)
    if number != number or number in (float("inf"), float("-inf")):
        raise ConfigError(expected)
    if (low is not None and number < low) or (high is not None and number > high):
        raise ConfigError(expected)
    return number
