"""A tiny name -> implementation registry (timm-style: unknown names list the known ones), optionally
extended by third-party packages through an ``importlib.metadata`` entry-point group."""

from __future__ import annotations

import fnmatch
import importlib.metadata
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class EntryPointError(ValueError):
    """A plug-in's entry point could not be loaded or does not name the right kind of object."""


def entry_points(group: str) -> list[importlib.metadata.EntryPoint]:
    """The installed entry points of ``group`` (a seam: tests replace it)."""
    return list(importlib.metadata.entry_points(group=group))


class Registry(Generic[T]):
    """Maps names (and aliases) to registered objects; lookups are case-insensitive.

    With ``entry_point_group``, the installed entry points of that group (name -> ``module:object``)
    are loaded on the first lookup, not at import: a slow or broken plug-in costs nothing until
    the registry is read. ``accept(name, obj)`` checks and prepares a loaded object (raising
    TypeError with the reason when it is not the right kind).
    """

    def __init__(self, kind: str, entry_point_group: str | None = None,
                 accept: Callable[[str, Any], T] | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._accept = accept
        self._plugins_loaded = entry_point_group is None
        self._items: dict[str, T] = {}
        self._canonical: dict[str, str] = {}

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            self.add(name, obj, *aliases)
            return obj

        return deco

    def add(self, name: str, obj: T, *aliases: str) -> None:
        key = name.lower()
        if key in self._canonical:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[key] = obj
        for alias in (key, *(a.lower() for a in aliases)):
            self._canonical[alias] = key

    def _load_plugins(self) -> None:
        """Register every entry point of the group once; a failure names the entry point and is
        raised again on the next lookup (nothing half-loaded is kept silently)."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True  # a plug-in module that reads the registry while importing must not recurse
        try:
            for ep in entry_points(self.entry_point_group):
                where = f"entry point {ep.name!r} = {ep.value!r} (group {self.entry_point_group})"
                try:
                    obj = ep.load()
                except Exception as err:
                    raise EntryPointError(f"{where} failed to load: {type(err).__name__}: {err}") from err
                key = self._canonical.get(ep.name.lower())
                if key is not None:
                    if self._items[key] is obj:  # its module registered it under that name already
                        continue
                    raise EntryPointError(f"{where}: {self.kind} {ep.name!r} is already registered")
                if self._accept is not None:
                    try:
                        obj = self._accept(ep.name, obj)
                    except TypeError as err:
                        raise EntryPointError(f"{where}: {err}") from err
                self.add(ep.name, obj)
        except BaseException:
            self._plugins_loaded = False
            raise

    def get(self, name: str) -> T:
        self._load_plugins()
        key = self._canonical.get(str(name).lower())
        if key is None:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._items[key]

    def canonical(self, name: str) -> str:
        self.get(name)
        return self._canonical[str(name).lower()]

    def names(self, pattern: str = "*") -> list[str]:
        self._load_plugins()
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: str) -> bool:
        self._load_plugins()
        return str(name).lower() in self._canonical
