"""Typed, frozen, nested dataclass configs: built from YAML, overridden with `key=value`, written back out.

Each module owns a frozen dataclass for its own settings, beside the class it configures (`FieldConfig` in
field.py, ...); the top-level `Config` in run/config.py only composes them. This file is the generic
machinery:

- `from_dict` builds a config from plain data (parsed YAML) and checks every value against its annotation;
- `apply_overrides` applies command-line `key.sub=value` strings;
- `merge_dicts` and `load_yaml_overrides` let a preset hold only what it changes;
- `to_dict` and `dump_yaml` write the resolved config next to a run's outputs, in a form `from_dict` reads
  back.

An unknown key is an error that suggests the closest valid key, so a typo never silently falls back to a
default. Checks on values (steps > 0, ...) live in each dataclass's `__post_init__`; a `ValueError` raised
there becomes a `UserError` naming the config section it came from.

Supported annotations: bool, int, float (an int is accepted), str, Literal[...], `X | None`, unions of these,
tuple[X, ...], tuple[X, Y, ...], list[X] of scalars, and nested dataclasses (also `Section | None`).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from dreamfusion import __version__
from dreamfusion.errors import SettingsError, UserError

T = TypeVar("T")

# PyYAML implements YAML 1.1, which reads `1e-3` (no dot) as the string "1e-3". Learning rates are written
# that way, so both our loader and our dumper also resolve YAML 1.2 style exponent floats.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


class _Loader(yaml.SafeLoader):
    pass


class _Dumper(yaml.SafeDumper):
    pass


# add_implicit_resolver copies the resolver table into the subclass, so plain yaml.safe_load is unaffected.
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))
_Dumper.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))

# Block style for sections, flow style for lists (`mode_probs: [0.2, 0.3, 0.5]`) so a dumped config reads
# like a hand-written one.
_Dumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
)


class _Mismatch(Exception):
    """A value does not fit an annotation; caught where the dotted key is known and reported from there."""


# ----------------------------------------------------------------------------------------------------------
# Reading a dataclass's shape


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _union_args(tp: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return typing.get_args(tp)
    return None


@functools.cache
def _fields(cls: type) -> tuple[tuple[str, Any], ...]:
    """(name, annotation) of every constructor field; get_type_hints resolves postponed annotations."""
    hints = typing.get_type_hints(cls)
    return tuple((f.name, hints[f.name]) for f in dataclasses.fields(cls) if f.init)


def _section_type(tp: Any) -> type | None:
    """The dataclass a field holds (as `Section` or `Section | None`), or None when the field is a leaf."""
    if _is_dataclass_type(tp):
        return tp
    args = _union_args(tp)
    if args is not None:
        classes = [arg for arg in args if _is_dataclass_type(arg)]
        if len(classes) == 1 and all(arg is classes[0] or arg is type(None) for arg in args):
            return classes[0]
    return None


def _key_types(cls: type, prefix: str = "") -> dict[str, Any]:
    """Every dotted key, sections included, mapped to its annotation, in field order."""
    keys: dict[str, Any] = {}
    for name, tp in _fields(cls):
        key = prefix + name
        keys[key] = tp
        section = _section_type(tp)
        if section is not None:
            keys.update(_key_types(section, key + "."))
    return keys


def dotted_keys(cls: type) -> list[str]:
    """Every leaf key of a config dataclass in field order, e.g. ["train.steps", "optim.lr_grid", ...]."""
    return [key for key, tp in _key_types(cls).items() if _section_type(tp) is None]


# ----------------------------------------------------------------------------------------------------------
# Error messages (one line each)


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return f"a {tp.__name__} section" if _is_dataclass_type(tp) else tp.__name__
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(option) for option in args)
    if _union_args(tp) is not None:
        return " | ".join(_type_name(arg) for arg in args)
    if origin is list or (origin is tuple and len(args) == 2 and args[1] is Ellipsis):
        return f"a list of {_type_name(args[0])}"
    if origin is tuple:
        return f"a list of {len(args)} values [{', '.join(_type_name(arg) for arg in args)}]"
    return repr(tp)


def _mismatch_message(key: str, tp: Any, value: Any) -> str:
    if typing.get_origin(tp) is Literal:
        options = typing.get_args(tp)
        message = f"config key {key!r} must be one of {', '.join(map(repr, options))}, got {_show(value)}"
        close = difflib.get_close_matches(str(value), [str(option) for option in options], n=1)
        return message + (f"; did you mean {close[0]!r}?" if close else "")
    return f"config key {key!r} expects {_type_name(tp)}, got {_show(value)}"


def _unknown_key_message(key: str, key_types: Mapping[str, Any], section: str) -> str:
    """Suggest the closest valid key: first within `section` (the deepest known section holding `key`), then
    a key with a similar last name anywhere else (a key is often put in the wrong section).

    Names are compared without the section prefix they share; with it, any two keys in a section look alike.
    """
    prefix = f"{section}." if section else ""
    inside = [k for k in key_types if k.startswith(prefix)]
    close = difflib.get_close_matches(key[len(prefix) :], [k[len(prefix) :] for k in inside], n=1)
    if close:
        return f"unknown config key {key!r}; did you mean {prefix + close[0]!r}?"
    last_names = {k: k.rpartition(".")[2] for k in key_types}
    close = difflib.get_close_matches(key.rpartition(".")[2], list(last_names.values()), n=1, cutoff=0.8)
    if close:
        elsewhere = next(k for k, name in last_names.items() if name == close[0])
        return f"unknown config key {key!r}; did you mean {elsewhere!r}?"
    children = [k[len(prefix) :] for k in inside if "." not in k[len(prefix) :]]
    where = f"in {section!r}" if section else "at the top level"
    return f"unknown config key {key!r}; valid keys {where}: {', '.join(children)}"


# ----------------------------------------------------------------------------------------------------------
# Plain data -> dataclass


def from_dict(cls: type[T], data: Mapping[str, Any], path: str = "") -> T:
    """Build the (nested) dataclass `cls` from plain data, e.g. parsed YAML. Missing keys take the defaults.

    `path` is the dotted position of `cls` inside a larger config, used in error messages.
    Raises UserError for an unknown key (suggesting the closest one), a value of the wrong type, a missing
    required key, or a value rejected by a dataclass's `__post_init__`.
    """
    if not _is_dataclass_type(cls):
        raise TypeError(f"from_dict needs a dataclass type, got {cls!r}")
    return _build(cls, data, path, _key_types(cls, f"{path}." if path else ""))


def _build(cls: type[T], data: Any, path: str, key_types: Mapping[str, Any]) -> T:
    if not isinstance(data, Mapping):
        where = f"config section {path!r}" if path else "the config"
        raise SettingsError(f"{where} must be a mapping of keys, got {_show(data)}")
    field_types = dict(_fields(cls))
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = _join(path, name)
        if not isinstance(name, str) or name not in field_types:
            raise SettingsError(_unknown_key_message(key, key_types, path))
        try:
            kwargs[name] = _convert(field_types[name], value, key, key_types)
        except _Mismatch:
            raise SettingsError(_mismatch_message(key, field_types[name], value)) from None
    for field in dataclasses.fields(cls):
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        if field.init and required and field.name not in kwargs:
            raise SettingsError(f"missing config key {_join(path, field.name)!r}")
    try:
        return cls(**kwargs)
    except (ValueError, UserError) as exc:
        # __post_init__ does not know where its dataclass sits in the config; the section name does.
        where = f"invalid config section {path!r}" if path else "invalid config"
        raise SettingsError(f"{where}: {exc}") from exc


def _convert(tp: Any, value: Any, key: str, key_types: Mapping[str, Any]) -> Any:
    """`value` as annotation `tp` wants it; raises _Mismatch if it does not fit (bool is never an int)."""
    if tp is Any:
        return value
    if tp is type(None) or tp is bool or tp is str:
        if type(value) is tp:
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _Mismatch
    if _is_dataclass_type(tp):
        if isinstance(value, Mapping):
            return _build(tp, value, key, key_types)
        raise _Mismatch
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        for option in args:
            if value == option and type(value) is type(option):
                return option
        raise _Mismatch
    if _union_args(tp) is not None:
        for arm in args:
            try:
                return _convert(arm, value, key, key_types)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        if origin is list or (len(args) == 2 and args[1] is Ellipsis):
            items = [_convert(args[0], item, key, key_types) for item in value]
        elif len(value) == len(args):
            items = [_convert(arm, item, key, key_types) for arm, item in zip(args, value, strict=True)]
        else:
            raise _Mismatch
        return tuple(items) if origin is tuple else items
    raise TypeError(f"config key {key!r} has annotation {tp!r}, which config.py does not support")


# ----------------------------------------------------------------------------------------------------------
# Dataclass -> plain data


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain nested dicts, lists and scalars (tuples become lists) in field order; from_dict reads it back."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"to_dict needs a dataclass instance, got {obj!r}")
    return {field.name: _plain(getattr(obj, field.name)) for field in dataclasses.fields(obj) if field.init}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


# ----------------------------------------------------------------------------------------------------------
# Overrides, presets, YAML


def apply_overrides(obj: T, overrides: Sequence[str]) -> T:
    """A copy of config `obj` with dotted `key.sub=value` overrides applied, validated like `from_dict`.

    Values are YAML: `train.steps=200`, `guidance.model=null`, `shading.mode_probs=[0.2,0.3,0.5]`. A key that
    holds a string takes the text as written when YAML would read it as something else (`prompt=yes`,
    `prompt=a photo: a cat`). An empty value is the empty string; write `null` for None. Setting a section to
    a mapping (`optim={lr_grid: 0.01}`) merges into it.
    """
    if isinstance(overrides, str):
        raise TypeError("apply_overrides takes a sequence of 'key=value' strings, not one string")
    cls = type(obj)
    key_types = _key_types(cls)
    data = to_dict(obj)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SettingsError(f"override {item!r} is not key=value (for example train.steps=200)")
        if key not in key_types:
            section = key.rpartition(".")[0]
            while section and section not in key_types:
                section = section.rpartition(".")[0]
            raise SettingsError(_unknown_key_message(key, key_types, section))
        _set(data, key.split("."), _parse_override_value(text.strip(), key_types[key]))
    return from_dict(cls, data)


def _parse_override_value(text: str, tp: Any) -> Any:
    try:
        value = yaml.load(text, Loader=_Loader) if text else ""
    except yaml.YAMLError:
        value = text
    if _fits(tp, value) or not _fits(tp, text):
        return value
    return text


def _fits(tp: Any, value: Any) -> bool:
    try:
        _convert(tp, value, "", {})
    except (_Mismatch, UserError):
        return False
    return True


def _set(data: dict[str, Any], parts: list[str], value: Any) -> None:
    for part in parts[:-1]:
        # An optional section that is currently None gets its defaults filled in by from_dict.
        if data.get(part) is None:
            data[part] = {}
        data = data[part]
    last = parts[-1]
    if isinstance(value, Mapping) and isinstance(data.get(last), Mapping):
        data[last] = merge_dicts(data[last], value)
    else:
        data[last] = value


def merge_dicts(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else in `override` replaces. Inputs stay unchanged."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_dicts(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_yaml_overrides(source: Path | str) -> dict[str, Any]:
    """Parse a YAML mapping of (partial, nested) config keys. A `Path` is read from disk; a `str` is YAML.

    An empty document is an empty mapping. Unreadable files, invalid YAML and a top level that is not a
    mapping are UserErrors; the keys themselves are checked later by `from_dict`.
    """
    if isinstance(source, Path):
        name = str(source)
        try:
            text = source.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise SettingsError(f"cannot read config file {name!r}: {reason}") from exc
    else:
        name, text = "<config text>", source
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise SettingsError(f"invalid YAML in {name!r}: {_yaml_problem(exc)}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(
            f"{name!r} must hold a mapping of config keys at the top level, got {_show(data)}"
        )
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{exc.problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(exc).split())


def dump_yaml(obj: Any, header: str | None = None) -> str:
    """The config as YAML in dataclass field order after a one-line `#` comment; from_dict reads it back."""
    title = header or f"dreamfusion {__version__}: resolved {type(obj).__name__}, every key, in field order"
    if "\n" in title:
        raise ValueError("dump_yaml header must be one line")
    body = yaml.dump(to_dict(obj), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1 << 30)
    return f"# {title}\n{body}"
