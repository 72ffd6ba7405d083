"""The one reader of configs: plain dicts (from YAML, TOML, JSON or ``a.b.0.c=value`` overrides) into typed, frozen
dataclasses, and back.

:func:`parse` walks a dataclass's type hints, so every field is checked where it is read: an unknown field, a value
of the wrong type or outside a ``Literal`` raises ``ValueError`` naming the field by its dotted path and what is
allowed. Numbers written as strings (YAML reads ``1e-4`` as a string) are read as numbers; lists become tuples.
Model configs (:mod:`openwan.configs`) and training configs (:mod:`openwan.train.config`) use it alike.

This module imports nothing of openwan.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

C = TypeVar("C")


def parse(cls: type[C], data: Any, path: str = "", aliases: Mapping[str, str] | None = None,
          ignore: Sequence[str] = ()) -> C:
    """``cls(**data)`` with every value checked and coerced to its field's type. ``path`` is the dotted name of
    ``data`` inside a larger config (used in errors); ``aliases`` maps other spellings to field names; keys in
    ``ignore`` are dropped (metadata a file carries beside the fields)."""
    where = path or cls.__name__
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must be a mapping of fields ({', '.join(f.name for f in fields(cls))}); "
                         f"got {data!r}.")
    hints = typing.get_type_hints(cls)
    allowed = [f.name for f in fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key in ignore:
            continue
        key = (aliases or {}).get(key, key)
        name = f"{path}.{key}" if path else str(key)
        if key not in allowed:
            raise ValueError(f"unknown config field {name!r}; {where} has: {', '.join(allowed)}.")
        kwargs[key] = coerce(hints[key], value, name)
    return cls(**kwargs)


def coerce(tp: Any, value: Any, name: str) -> Any:
    """``value`` as type ``tp`` (a scalar, ``Literal``, tuple, union or dataclass); ValueError names ``name``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options:
            try:
                return coerce(option, value, name)
            except ValueError:
                if len(options) == 1 and is_dataclass(option) and isinstance(value, Mapping):
                    raise  # a section with one bad field: name that field, not the section
                continue
        raise ValueError(f"config field {name} must be {' or '.join(describe(o) for o in options)}"
                         f"{' or null' if type(None) in args else ''}; got {value!r}.")
    if origin is Literal:
        if value not in args:
            raise ValueError(f"config field {name} must be one of: {', '.join(map(str, args))}; got {value!r}.")
        return value
    if origin is tuple:
        return _coerce_tuple(args, value, name)
    if is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return parse(tp, value, name)
    return _coerce_scalar(tp, value, name)


def _coerce_tuple(args: tuple, value: Any, name: str) -> tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"config field {name} must be {describe(tuple[args])}; got {value!r}.")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(coerce(args[0], v, f"{name}.{i}") for i, v in enumerate(value))
    if len(value) != len(args):
        raise ValueError(f"config field {name} must be {describe(tuple[args])}; got {value!r}.")
    return tuple(coerce(a, v, f"{name}.{i}") for i, (a, v) in enumerate(zip(args, value)))


def _coerce_scalar(tp: Any, value: Any, name: str) -> Any:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif tp is float:
        if number:
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if number:
            return str(value)
    else:
        raise TypeError(f"unsupported config type {tp!r}")  # internal: a field type coerce does not know
    raise ValueError(f"config field {name} must be {describe(tp)}; got {value!r}.")


def describe(tp: Any) -> str:
    """What a value of type ``tp`` looks like in a config file, for error messages."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of: " + ", ".join(map(str, args))
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {describe(args[0])} values"
        return f"a list of {len(args)} values ({', '.join(describe(a) for a in args)})"
    if is_dataclass(tp):
        return f"a section with fields {', '.join(f.name for f in fields(tp))}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def check(ok: bool, name: str, allowed: str, value: Any) -> None:
    """A range check after parsing: ValueError ``config field NAME must be ALLOWED; got VALUE``."""
    if not ok:
        raise ValueError(f"config field {name} must be {allowed}; got {value!r}.")


def to_plain(value: Any) -> Any:
    """Dataclasses -> dicts, tuples -> lists (what YAML / JSON write)."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------ files, overrides


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping at the top of a YAML (.yaml/.yml) or TOML (.toml) file; ValueError for a missing, unreadable or
    malformed one."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist; give a .yaml or .toml config.")
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ValueError(f"{path} is not valid YAML ({str(err).splitlines()[0]}); fix the syntax.") from None
    elif path.suffix.lower() == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{path} is not valid TOML ({err}); fix the syntax.") from None
    else:
        raise ValueError(f"config file {path} has an unknown suffix; use .yaml, .yml or .toml.")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of config fields and sections at the top.")
    return data


def write_yaml(data: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True)


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``stages.0.steps=10`` style assignments on a nested dict; values are parsed as YAML (``[1, 2]``, ``null``)."""
    data = _copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} is not of the form field.path=value (e.g. optim.lr=1e-4).")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        _assign(data, key.strip().split("."), value, key.strip())
    return data


def _assign(node: Any, parts: list[str], value: Any, key: str) -> None:
    head, rest = parts[0], parts[1:]
    if isinstance(node, list):
        if not head.isdigit() or int(head) > len(node):
            raise ValueError(f"override {key}: {head!r} is not an index of a list of {len(node)} (use 0..{len(node)}).")
        index = int(head)
        if index == len(node):  # one past the end appends a new entry (a new stage)
            node.append({})
        if not rest:
            node[index] = value
            return
        if not isinstance(node[index], (dict, list)):
            node[index] = {}
        _assign(node[index], rest, value, key)
        return
    if not isinstance(node, dict):
        raise ValueError(f"override {key}: cannot set a field inside a value that is not a section.")
    if not rest:
        node[head] = value
        return
    if not isinstance(node.get(head), (dict, list)):
        node[head] = {}  # e.g. lora.rank=8 when lora was null: turn the section on with its defaults
    _assign(node[head], rest, value, key)


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_copy(v) for v in value]
    return value


__all__ = ["apply_overrides", "check", "coerce", "describe", "parse", "read_config_file", "to_plain", "write_yaml"]
