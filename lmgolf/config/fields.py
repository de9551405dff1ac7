"""Typed dataclasses from JSON values: each value checked against its field's annotation, with the
field's dotted name in the error."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing

from lmgolf.errors import LmgolfError


def parse_value(raw: str):
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def field_types(cls) -> dict[str, object]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def build(cls, values: dict, source: str):
    if not isinstance(values, dict):
        raise LmgolfError(f"{source}: expected a JSON object")
    types_ = field_types(cls)
    kwargs = {}
    for name, value in values.items():
        if name not in types_:
            raise LmgolfError(f"{source}: unknown config key {name!r} (known: {', '.join(types_)})")
        kwargs[name] = coerce(value, types_[name], f"{source}.{name}")
    return cls(**kwargs)


def coerce(value, annotation, where: str):
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    if value is None and type(None) in options:
        return None
    for kind in options:
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value if isinstance(value, float) else 0 if abs(value) < 1e300 else math.inf):
                raise LmgolfError(f"{where}: must be a finite number, got {value}")
            return float(value)
        if kind is str and isinstance(value, str):
            return value
        container, args = typing.get_origin(kind), typing.get_args(kind)
        if container is tuple and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        if container is dict and isinstance(value, dict):
            return {str(k): coerce(v, args[1], f"{where}[{k!r}]") for k, v in value.items()}
    names = " or ".join("null" if k is type(None) else getattr(k, "__name__", str(k)) for k in options)
    raise LmgolfError(f"{where}: expected {names}, got {value!r}")
