"""Every repository file that the package's docstrings, comments and messages point to exists.

A reference such as ``docs/methods.md`` or ``tests/consistency/test_inference.py`` in src/ sends the
reader somewhere; a renamed or never-written file leaves them at a dead end (issue 34 found four).
"""

from __future__ import annotations

import re
from pathlib import Path

import consistcam

SRC = Path(consistcam.__file__).resolve().parent
ROOT = SRC.parent.parent
# a path inside this repository: under one of its top folders (not ../shared/docs/..., not runs/x)
REFERENCE = re.compile(r"(?<![\w./-])(?:(?:docs|scripts|tests|configs|examples|benchmarks)/[\w.-]+(?:/[\w.-]+)*"
                       r"|README\.md)")


def references(text: str) -> list[str]:
    return [m.group(0).rstrip(".") for m in REFERENCE.finditer(text)]


def test_the_pattern_finds_repository_paths_only():
    text = ("see docs/methods.md. and tests/consistency (the folder); README.md's table; not ../shared/docs/method.md, "
            "runs/x/docs/a.md or configs_x/y")
    assert references(text) == ["docs/methods.md", "tests/consistency", "README.md"]


def test_every_repository_path_named_in_the_package_exists():
    assert (ROOT / "docs").is_dir(), f"{ROOT} is not the repository (the package is not run from its checkout)"
    missing = [f"{path.relative_to(ROOT)}:{n}: {ref}" for path in sorted(SRC.rglob("*.py"))
               for n, line in enumerate(path.read_text().splitlines(), 1) for ref in references(line)
               if not (ROOT / ref).exists()]
    assert not missing, "references to files that do not exist:\n" + "\n".join(missing)
