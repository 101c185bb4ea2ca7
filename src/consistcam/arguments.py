"""Command-line arguments built from the config dataclasses: one builder below every package.

Every sub-command declares its options here or through :func:`add_config_options`, so a default, a
help text and a range are written once, in the config dataclass (:func:`consistcam.config.option`),
and the flag, the Python API and a config file cannot drift apart. This module imports only
:mod:`consistcam.config`, :mod:`consistcam.run.device` (the one device rule), the standard library
and YAML, so any package's ``cli.py`` may use it without importing the top-level command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import yaml

from consistcam.config import ConfigError, option_help
from consistcam.run.device import DEVICE_HELP

__all__ = ["DEVICE_HELP", "Formatter", "add_config_options", "add_device", "add_quiet", "check_output_folder",
           "config_overrides", "int_at_least", "parse_set", "yaml_value"]


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Every option shows its default (unless its help already does); epilogs keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = (action.help or "").replace("%", "%%")  # help texts are plain text, argparse formats with %
        if "default" not in text and action.default not in (None, False, argparse.SUPPRESS) and action.option_strings:
            text += " (default: %(default)s)"
        return text


def yaml_value(text: str) -> Any:
    """Flag values are parsed like YAML values (``null`` is None, ``[1, 2]`` a list); the config
    then coerces (``1e-3``, a string to YAML 1.1, becomes a number), checks the type and range, and
    names the option on error."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def check_output_folder(path: str | Path, flag: str = "--out") -> Path:
    """Refuse, before anything is read or written, an output folder that cannot be created: a file where
    one of its folders should be, or a first existing ancestor that cannot be written. Creates nothing
    (a command that fails later must not leave an empty folder behind)."""
    path = Path(path)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        what = "exists and is not a folder" if existing == path else f"{existing} is a file, not a folder"
        raise ValueError(f"{flag} {path}: cannot create the folder: {what}")
    if existing is not None and existing != path and not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: cannot create the folder: permission denied in {existing}")
    return path


def int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """argparse type: an integer >= ``low`` (``--top -1`` is an error, not an empty ranking) and
    <= ``high`` when given (``--size 100000`` is an error, not a 120 GB allocation)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}" if high is None else f"integer in [{low}, {high}]"
    return parse


def parse_set(items: list[str] | None) -> dict:
    """``--set key=value`` (values parsed as YAML); dotted keys nest: ``ecl.consistency.steps=3``."""
    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        parsed = yaml_value(value)
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r} conflicts with an earlier --set of {part!r}")
        node[leaf] = parsed
    return out


def add_device(parser: argparse.ArgumentParser, default: str = "auto", dest: str = "device") -> None:
    """``--device``, with the one help text of every command (the rule of :mod:`consistcam.run.device`).
    ``default=argparse.SUPPRESS``: no attribute unless given (a config field's default then holds)."""
    parser.add_argument("--device", dest=dest, default=default, metavar="DEVICE",
                        help=DEVICE_HELP if default is not argparse.SUPPRESS else f"{DEVICE_HELP} (default: auto)")


def add_quiet(parser: argparse.ArgumentParser, help: str = "no progress bars") -> None:  # noqa: A002
    """``--quiet``: every long-running command shows progress unless told not to."""
    parser.add_argument("--quiet", action="store_true", help=help)


def _is_bool(hint: Any) -> bool:
    return hint is bool or (typing.get_origin(hint) in (typing.Union, types.UnionType)
                            and set(typing.get_args(hint)) == {bool, type(None)})


def _is_nested(f: dataclasses.Field, hint: Any) -> bool:
    """A field that holds a config of its own (set through ``--set NAME.KEY=VALUE``)."""
    return dataclasses.is_dataclass(hint) or (
        f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory))


def _fields(cls: type, skip: Collection[str]) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)
            if f.init and f.name not in skip and not _is_nested(f, hints[f.name])]


def add_config_options(parser: argparse.ArgumentParser, cls: type, *, dest_prefix: str = "", flag_prefix: str = "",
                       help_prefix: str = "", skip: Collection[str] = (),
                       lists: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """One flag per option of the config dataclass ``cls``: ``--flag-prefixNAME`` stored in
    ``dest_prefix + NAME`` only when given (so :func:`config_overrides` sees what was given, ``--NAME
    null`` included, and the defaults stay in the dataclass). Booleans get ``--NAME/--no-NAME``;
    other values are parsed as YAML and checked by the dataclass, which names the option on error.
    Nested configs are left to ``--set``. ``lists``: argparse keywords per field for values with
    several parts (``nargs``, ``action="append"``, ``type``), where ``flag`` renames the flag
    (``explainers`` -> ``--explainer``).
    """
    lists = lists or {}
    for f, hint in _fields(cls, skip):
        flag = "--" + f"{flag_prefix}{f.name}".replace("_", "-")
        dest = dest_prefix + f.name
        if f.name == "device" and not flag_prefix:
            add_device(parser, default=argparse.SUPPRESS, dest=dest)  # the one device help of every command
            continue
        help_text = help_prefix + option_help(cls, f.name)
        if f.default is None:  # the help says what None means
            help_text = help_text.removesuffix(" (default: None)")
        if f.name in lists:
            kwargs = dict(lists[f.name])
            flag = kwargs.pop("flag", flag)
            kwargs.setdefault("metavar", f.name.upper())
            kwargs.setdefault("help", help_text)
            parser.add_argument(flag, dest=dest, default=argparse.SUPPRESS, **kwargs)
        elif _is_bool(hint):
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_text)
        else:
            parser.add_argument(flag, dest=dest, type=yaml_value, default=argparse.SUPPRESS, metavar=f.name.upper(),
                                help=help_text)


def config_overrides(args: argparse.Namespace, cls: type, *, dest_prefix: str = "",
                     skip: Collection[str] = ()) -> dict[str, Any]:
    """The options of ``cls`` given on the command line (flags added by :func:`add_config_options`)."""
    return {f.name: getattr(args, dest_prefix + f.name) for f, _ in _fields(cls, skip)
            if hasattr(args, dest_prefix + f.name)}
