"""A tiny name -> implementation registry (timm-style: unknown names list the known ones)."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names (and aliases) to registered objects; lookups are case-insensitive."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
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

    def get(self, name: str) -> T:
        key = self._canonical.get(str(name).lower())
        if key is None:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._items[key]

    def canonical(self, name: str) -> str:
        self.get(name)
        return self._canonical[str(name).lower()]

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: str) -> bool:
        return str(name).lower() in self._canonical
