"""Typed, validated option dataclasses: the one mechanism behind every config of the project.

A config is a dataclass whose fields are declared with :func:`option` (default, help text, range,
choices). :func:`validate` checks a built instance (types coerced the way YAML and command-line
users expect, ranges, choices, finite numbers); :func:`from_dict` builds one from a mapping, with
unknown keys reported together with their near matches. Errors are :class:`ConfigError` and name
the option by its dotted path (``ecl.consistency.eps``) and the offending value, so a bad config
fails within seconds, before any data is read or any epoch runs. A config class that renamed or
moved an option lists the former paths in ``RENAMED`` (:func:`upgrade`): configs written before
(a run's config.yaml, read again by ``--resume`` and ``evaluate``) still load.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["ConfigError", "from_dict", "option", "option_help", "registered", "to_dict", "upgrade", "validate"]


class ConfigError(ValueError):
    """A bad option value or an unknown option; the message names the option."""


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses a key given twice in one mapping (plain YAML keeps the last
    silently, so ``lr: 0.1`` ... ``lr: 0.01`` would train with a value the author did not see)."""
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return loader.construct_mapping(node, deep)

    _Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",  # noqa: A002  (the name argparse users know)
    *,
    default_factory: Callable[[], Any] | None = None,
    choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    check: Callable[[Any], str | None] | None = None,
) -> Any:
    """A dataclass field with help text and constraints.

    ``choices`` may be a callable (a registry's ``names``) so plug-ins registered later count.
    ``check`` returns an error message (without the option name) or None.
    """
    meta = {"help": help, "choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt, "check": check}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def option_help(cls: type, name: str) -> str:
    """The help text of a field, with its default (for command-line help)."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    text = f.metadata.get("help", "")
    choices = _choices(f)
    if choices:
        text += f" (one of: {', '.join(map(str, choices))})"
    if f.default is not dataclasses.MISSING:
        shown = f"{f.default:.4g}" if isinstance(f.default, float) else f.default
        text += f" (default: {shown})"
    return text


def _choices(f: dataclasses.Field) -> list | None:
    choices = f.metadata.get("choices")
    if callable(choices):
        choices = choices()
    return list(choices) if choices is not None else None


_YAML_BOOLS = {True: ("true", "yes", "on"), False: ("false", "no", "off")}  # YAML 1.1, case-insensitive


def _yaml_bool_choice(f: dataclasses.Field, value: Any) -> Any:
    """The choice a YAML boolean stands for: YAML 1.1 reads ``off``/``on``/``yes``/``no`` as booleans, so
    ``preload: off`` in a file or ``--preload off`` arrives as False. An option whose choices hold exactly
    one word YAML reads as that boolean gets the word back; any other value is returned unchanged."""
    if not isinstance(value, bool):
        return value
    words = [c for c in _choices(f) or () if isinstance(c, str) and c.lower() in _YAML_BOOLS[value]]
    return words[0] if len(words) == 1 else value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fmt(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Coerce ``value`` to ``hint`` where users expect it (``"1e-3"`` -> 0.001, ``3`` -> 3.0)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {_fmt(value)} is not a valid value")
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping of options, got {_fmt(value)}")
        return from_dict(hint, value, where)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"{where}: expected true or false, got {_fmt(value)}")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {_fmt(value)}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {_fmt(value)}")
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {_fmt(value)}")
        if isinstance(value, (int, float)):
            out = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                out = float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {_fmt(value)}") from None
        else:
            raise ConfigError(f"{where}: expected a number, got {_fmt(value)}")
        if not math.isfinite(out):
            raise ConfigError(f"{where}: must be a finite number, got {_fmt(value)}")
        return out
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {_fmt(value)}")
    if origin in (dict, Mapping) or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {_fmt(value)}")
        return dict(value)
    if origin in (tuple, list, Sequence) or hint in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ConfigError(f"{where}: expected a list, got {_fmt(value)}")
        args = typing.get_args(hint)
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or hint is tuple else items
    return value


def _check_constraints(f: dataclasses.Field, value: Any, where: str) -> None:
    if value is None:
        return
    choices = _choices(f)
    if choices is not None and value not in choices:
        near = difflib.get_close_matches(str(value), [str(c) for c in choices], n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise ConfigError(f"{where}: {_fmt(value)} is not one of {', '.join(map(str, choices))}{hint}")
    m = f.metadata
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        for key, ok, words in (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                               ("le", lambda v, b: v <= b, "<="), ("lt", lambda v, b: v < b, "<")):
            bound = m.get(key)
            if bound is not None and not ok(value, bound):
                raise ConfigError(f"{where}: must be {words} {bound}, got {value}")
    check = m.get("check")
    if check is not None:
        problem = check(value)
        if problem:
            raise ConfigError(f"{where}: {problem}, got {_fmt(value)}")


def validate(obj: Any, where: str = "") -> None:
    """Coerce every field of the dataclass ``obj`` in place and check its constraints.

    Call it from ``__post_init__``: direct construction is then as safe as :func:`from_dict`.
    """
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        path = f"{where}.{f.name}" if where else f.name
        value = _coerce(_yaml_bool_choice(f, getattr(obj, f.name)), hints[f.name], path)
        _check_constraints(f, value, path)
        object.__setattr__(obj, f.name, value)


_ABSENT = object()


def _take(data: dict, path: Sequence[str]) -> Any:
    """Remove and return the value at ``path`` (the mappings on the way are copied, so the caller's
    are untouched), or ``_ABSENT``."""
    head, *rest = path
    if head not in data:
        return _ABSENT
    if not rest:
        return data.pop(head)
    if not isinstance(data[head], Mapping):
        return _ABSENT
    data[head] = dict(data[head])
    return _take(data[head], rest)


def _put(data: dict, path: Sequence[str], value: Any, clash: str) -> None:
    """Set ``path`` to ``value`` (copying the mappings on the way); a different value already there
    is the ConfigError ``clash``."""
    head, *rest = path
    if not rest:
        if head in data and data[head] != value:
            raise ConfigError(clash)
        data[head] = value
        return
    child = data.get(head, {})
    if not isinstance(child, Mapping):
        raise ConfigError(clash)
    data[head] = dict(child)
    _put(data[head], rest, value, clash)


def upgrade(cls: type, data: Mapping[str, Any] | None, where: str = "") -> dict[str, Any]:
    """``data`` with the options that ``cls`` renamed or moved under their current names.

    ``cls.RENAMED`` (a class attribute) maps each former dotted path to the current one, relative to
    ``cls`` (ECL's ``{"consistency.weight_power": "weights.power"}``). Former names are mapped
    silently, so every config written before the change loads as it did; one option given under
    both names with different values is an error. ``data`` itself is not modified."""
    out = dict(data or {})
    for old, new in getattr(cls, "RENAMED", {}).items():
        value = _take(out, old.split("."))
        if value is not _ABSENT:
            path = f"{where}." if where else ""
            _put(out, new.split("."), value, f"{path}{old} (the former name of {path}{new}) and {path}{new} are "
                                             f"both given, with different values; give only {path}{new}")
    return out


def from_dict(cls: type[T], data: Mapping[str, Any] | None, where: str = "") -> T:
    """Build ``cls`` from a mapping; unknown keys are an error naming them and their near matches.
    Options renamed since a config was written are moved to their current names first (:func:`upgrade`)."""
    data = upgrade(cls, data, where)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = [k for k in data if k not in names]
    if unknown:
        key = unknown[0]
        near = difflib.get_close_matches(str(key), names, n=3, cutoff=0.5)
        path = f"{where}.{key}" if where else str(key)
        hint = f"did you mean {', '.join(near)}?" if near else f"known: {', '.join(names)}"
        raise ConfigError(f"unknown option {path!r}; {hint}")
    hints, fields = _hints(cls), {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in data.items():
        path = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(_yaml_bool_choice(fields[name], value), hints[name], path)
    try:
        obj = cls(**kwargs)
        validate(obj)  # also for config classes that do not validate in __post_init__
        return obj
    except ConfigError as err:
        if where and not str(err).startswith(where):
            raise ConfigError(f"{where}.{err}") from None
        raise


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain nested dict (tuples become lists) that YAML and JSON can store."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(obj)


def registered(registry: Any) -> Callable[[Any], str | None]:
    """A ``check`` for names looked up in a :class:`~consistcam._registry.Registry` (aliases allowed)."""

    def check(value: Any) -> str | None:
        if value in registry:
            return None
        near = difflib.get_close_matches(str(value).lower(), registry.names(), n=3)
        hint = f"did you mean {', '.join(near)}?" if near else f"known: {', '.join(registry.names())}"
        return f"unknown {registry.kind} ({hint})"

    return check
