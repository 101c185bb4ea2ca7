"""Sweep members: the grid (cartesian product of option values), explicit arms, seeds, shards.

A member is one training run: an *arm* (a set of option overrides on top of the base config) and a
seed. Keys are training options exactly as ``consistcam train --set`` accepts them (dotted for a
method's options: ``ecl.consistency.steps``). The member list is a pure function of the grid, the
arms and the seeds, so every process of a sharded sweep derives the same list and the same folder
names without talking to the others.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from consistcam.config import ConfigError

Assignment = tuple[str, Any]
RESERVED = {"seed": "--seeds", "out": "--out"}  # set per member by the sweep itself
_SAFE = re.compile(r"[^A-Za-z0-9._=+-]")
MAX_SLUG = 100


def _value(text: str) -> Any:
    """A value parsed like ``--set`` values (YAML: ``3`` is an int, ``null`` None, ``pgd`` a string)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets, braces and quotes (``[0.08, 1.0],[0.2, 1.0]`` is two values)."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _check_key(key: str, where: str) -> str:
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"{where}: expected KEY=VALUE with a (dotted) option name, got key {key!r}")
    if key in RESERVED:
        raise ConfigError(f"{where}: {key!r} is set by the sweep; use {RESERVED[key]}")
    return key


def parse_grid_item(item: str) -> tuple[str, list[Any]]:
    """``key=v1,v2`` -> (key, [v1, v2]). A YAML list (``key=[a, b]``) also gives its elements, so
    values that contain commas can be written ``data=["demo:n=96,size=16", "demo:n=96,size=32"]``."""
    key, sep, text = item.partition("=")
    if not sep:
        raise ConfigError(f"--grid expects KEY=V1,V2,..., got {item!r}")
    key = _check_key(key, f"--grid {item!r}")
    if not text.strip():
        raise ConfigError(f"--grid {item!r}: no values after '='")
    parsed = _value(text) if text.strip().startswith("[") else None
    values = parsed if isinstance(parsed, list) else [_value(p.strip()) for p in _split_top_level(text)]
    if not values or any(v is None and not p.strip() for v, p in zip(values, _split_top_level(text))):
        raise ConfigError(f"--grid {item!r}: an empty value (two commas in a row or a trailing comma)")
    canon = [json.dumps(v, sort_keys=True, default=str) for v in values]
    if len(set(canon)) != len(canon):
        raise ConfigError(f"--grid {item!r}: a value is listed twice")
    return key, values


def parse_assignments(text: str, flag: str = "--arm") -> list[Assignment]:
    """``"method=ecl ecl.update_every=1"`` (shell words) -> [("method", "ecl"), ("ecl.update_every", 1)]."""
    out: list[Assignment] = []
    try:
        words = shlex.split(text)
    except ValueError as err:
        raise ConfigError(f"{flag} {text!r}: {err}") from None
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise ConfigError(f"{flag} {text!r}: expected KEY=VALUE words, got {word!r}")
        key = _check_key(key, f"{flag} {text!r}")
        if key in dict(out):
            raise ConfigError(f"{flag} {text!r}: {key!r} is given twice")
        out.append((key, _value(value)))
    return out


def nest(pairs: Sequence[Assignment]) -> dict:
    """Dotted keys to nested mappings: ``[("ecl.consistency.steps", 3)]`` -> ``{"ecl": {"consistency": {...}}}``."""
    out: dict = {}
    for key, value in pairs:
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: conflicts with the option {part!r} set to a value")
        if isinstance(node.get(leaf), dict):
            raise ConfigError(f"{key}: conflicts with the options set under it")
        node[leaf] = value
    return out


def format_value(value: Any) -> str:
    """How a value appears in an arm's name (strings bare, everything else as JSON)."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


@dataclass(frozen=True)
class Arm:
    """One combination of overrides; its name is ``key=value`` pairs joined by commas (``base`` for none)."""

    overrides: tuple[Assignment, ...]

    @property
    def name(self) -> str:
        return ",".join(f"{k}={format_value(v)}" for k, v in self.overrides) or "base"

    def nested(self) -> dict:
        return nest(self.overrides)

    def matches(self, selection: Sequence[Assignment]) -> bool:
        """Every pair of ``selection`` is one of this arm's overrides (values compared after parsing)."""
        own = dict(self.overrides)
        return all(k in own and own[k] == v for k, v in selection)


@dataclass(frozen=True)
class Member:
    arm: Arm
    seed: int
    folder: str  # the run folder's name under the sweep's --out: stable across invocations and shards

    @property
    def name(self) -> str:
        return self.folder


def _inert(key: str, method: str, methods: Sequence[str]) -> bool:
    """A key of another method's section changes nothing for this arm (TrainConfig drops it)."""
    head = key.split(".", 1)[0]
    return head in methods and head != method


def expand_arms(grid: Sequence[tuple[str, Sequence[Any]]] = (), arms: Sequence[Sequence[Assignment]] = (),
                base_method: str = "erm", methods: Sequence[str] = ()) -> list[Arm]:
    """Every explicit arm (or one empty arm) times the cartesian product of the grid, first key slowest.

    Keys of a method's section are dropped from arms that train another method (``method=erm,ecl`` x
    ``ecl.consistency.steps=1,3`` gives one erm arm, not two identical ones); the resulting duplicates
    are merged, keeping the first occurrence's position."""
    keys = [k for k, _ in grid]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"--grid: key {next(k for k in keys if keys.count(k) > 1)!r} is given twice")
    out: list[Arm] = []
    seen: set[str] = set()
    for explicit in arms or [[]]:
        clash = [k for k, _ in explicit if k in keys]
        if clash:
            raise ConfigError(f"--arm and --grid both set {clash[0]!r}")
        for combo in itertools.product(*[values for _, values in grid]):
            pairs = [*explicit, *zip(keys, combo)]
            method = dict(pairs).get("method", base_method)
            pairs = [(k, v) for k, v in pairs if not _inert(k, str(method), methods)]
            nest(pairs)  # conflicting keys (a.b and a.b.c) are an error here, not mid-sweep
            arm = Arm(tuple(pairs))
            if arm.name not in seen:
                seen.add(arm.name)
                out.append(arm)
    return out


def slug(name: str) -> str:
    """A file-system-safe folder name for an arm name; long names end in a hash of the full name."""
    text = _SAFE.sub("_", name.replace(",", "__"))
    if len(text) > MAX_SLUG:
        text = text[:MAX_SLUG - 9] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return text


def members(arms: Sequence[Arm], seeds: Sequence[int]) -> list[Member]:
    """Arm-major list of (arm, seed) members with unique folder names ``<slug>_s<seed>``."""
    if not seeds:
        raise ConfigError("--seeds: give at least one seed")
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise ConfigError(f"--seeds: expected distinct non-negative integers, got {list(seeds)}")
    slugs = [slug(a.name) for a in arms]
    for i, s in enumerate(slugs):  # two names that differ only in unsafe characters
        if slugs.count(s) > 1:
            slugs[i] = s[:MAX_SLUG - 9] + "-" + hashlib.sha1(arms[i].name.encode()).hexdigest()[:8]
    return [Member(arm, seed, f"{s}_s{seed}") for arm, s in zip(arms, slugs) for seed in seeds]


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` with 0 <= i < n."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m or int(m[2]) < 1 or int(m[1]) >= int(m[2]):
        raise ConfigError(f"--shard: expected I/N with 0 <= I < N (e.g. 0/4), got {text!r}")
    return int(m[1]), int(m[2])


def shard(items: Sequence[Member], index: int, count: int) -> list[Member]:
    """Round-robin split: member k goes to shard k mod count, so shards get a mix of arms and seeds
    and their union is every member exactly once."""
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"--shard: expected 0 <= index < count, got {index}/{count}")
    return [m for k, m in enumerate(items) if k % count == index]


def select_arm(arms: Sequence[Arm], selection: str | None, base_method: str) -> Arm | None:
    """The baseline arm: ``selection`` is an arm's name or ``key=value`` words that exactly one arm
    matches; without one, the arm that trains erm, if there is exactly one (else None)."""
    if selection:
        by_name = [a for a in arms if a.name == selection]
        if by_name:
            return by_name[0]
        pairs = parse_assignments(selection, "--baseline")
        found = [a for a in arms if a.matches(pairs)]
        if len(found) != 1:
            listed = "; ".join(a.name for a in (found or arms))
            raise ConfigError(f"--baseline {selection!r} matches {len(found)} arms (need exactly one): {listed}")
        return found[0]
    erm = [a for a in arms if dict(a.overrides).get("method", base_method) == "erm"]
    return erm[0] if len(erm) == 1 else None
