"""The package's layers: what each part may import, checked three ways.

1. **Imports in a clean process.** All modules of each part (sub-package or top-level module) are
   imported in a process that has loaded no consistcam module before, and every ``consistcam`` part
   that came with them must sit at the same or a lower layer of :data:`LAYERS`. This sees every route
   taken at import time, ``importlib`` and ``__getattr__`` ones included. The root
   ``consistcam/__init__.py`` re-exports the public API (attack, consistency, explain, models), so a stub
   ``consistcam`` package with the real ``__path__`` stands in for it there; the root is checked on its own.
2. **Import statements.** The same rule on the source's imports, which also sees those inside
   functions (they run only when called).
3. **No cycles.** The import graph read from the source (module-level and function-level imports,
   ``importlib.import_module`` of a literal consistcam module name, and ``if TYPE_CHECKING:`` blocks:
   a type-only import is still a dependency a reader and a type checker follow) has no cycle between
   parts, nor between modules apart from a package's ``__init__`` importing its own submodules."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

import consistcam

SRC = Path(consistcam.__file__).resolve().parent

# Bottom to top. A part may import parts of its own layer or of lower layers, never higher ones.
# A name whose module does not exist (yet) is skipped.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("utils", "config", "_registry"),  # no consistcam imports below them
    ("data", "models"),
    ("run", "metrics", "explain"),  # run: device and run folders (config, utils, models)
    ("arguments", "attack", "report"),  # arguments: shared CLI options (config, run); report/ only reads files
    ("consistency",),
    ("train", "lightning"),  # lightning: the ECL callback (the optional extra), beside the trainer
    ("evaluation",),
    ("fool", "influence", "sweep", "diagnosis", "demo"),
    ("vae",),  # TracIn of VAEs reuses influence/
    ("cli",),  # (``__main__`` only calls cli.main: importing it would run the command)
)
LAYER = {name: rank for rank, names in enumerate(LAYERS) for name in names}
# What ``import consistcam`` (the public API of the root package) may load.
ROOT_LAYER = LAYER["consistency"]


def part(module: str) -> str:
    """The sub-package or top-level module of a dotted module name: consistcam.train.config -> train."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def parts_in_source() -> list[str]:
    found = [p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").is_file()]
    found += [p.stem for p in SRC.glob("*.py") if p.stem not in ("__init__", "__main__")]
    return sorted(found)


def test_every_part_has_a_layer():
    missing = [p for p in parts_in_source() if p not in LAYER]
    assert not missing, f"add {missing} to LAYERS in tests/test_layering.py"


# -- 1. imports in a clean process ----------------------------------------------------------------

# Third-party packages the library imports, loaded once by the parent interpreter before it forks one
# child per part: a child starts with no consistcam module loaded, as a new process would, without
# paying for the torch import again (a fresh process per part took minutes on a loaded 2-core CI box).
PRELOAD = ("numpy", "torch", "torch.nn.functional", "torchvision", "torchvision.transforms.v2", "torchmetrics",
           "yaml", "safetensors.torch", "PIL.Image", "tqdm", "matplotlib.figure")

_PROBE = r"""
import importlib, json, os, sys, traceback, types

def probe(modules, stub):
    if stub:  # the root package's public API would load attack, consistency, explain and models
        root = types.ModuleType("consistcam")
        root.__path__ = [SRC]
        sys.modules["consistcam"] = root
    try:
        for module in modules:
            importlib.import_module(module)
    except BaseException:
        return {"error": traceback.format_exc()}
    return sorted(m for m in sys.modules if m.startswith("consistcam"))

SRC, jobs = sys.argv[1], json.loads(sys.argv[2])
for name in json.loads(sys.argv[3]):
    try:
        importlib.import_module(name)
    except ImportError:
        pass
assert not [m for m in sys.modules if m.startswith("consistcam")], "a preloaded package imported consistcam"
results = []
for modules, stub in jobs:
    if len(jobs) == 1:  # one part: probe here
        results.append(probe(modules, stub))
        break
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        with os.fdopen(write, "w") as f:
            json.dump(probe(modules, stub), f)
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        results.append(json.loads(f.read() or '{"error": "the child died"}'))
    os.waitpid(pid, 0)
print(json.dumps(results))
"""


def loaded_by(jobs: list[tuple[list[str], bool]]) -> list[list[str]]:
    """For each (modules, stub) the consistcam modules loaded by importing ``modules`` (and nothing else
    of consistcam before them), the root package replaced by a stub where ``stub``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC.parent), os.environ.get("PYTHONPATH", "")])}
    env.setdefault("OMP_NUM_THREADS", "1")
    results = []
    for batch in [jobs] if hasattr(os, "fork") else [[job] for job in jobs]:  # no fork: a process per part
        args = [sys.executable, "-c", _PROBE, str(SRC), json.dumps(batch), json.dumps(PRELOAD)]
        done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        results += json.loads(done.stdout.splitlines()[-1])
    for (modules, _), result in zip(jobs, results):
        assert isinstance(result, list), f"importing {modules} failed:\n{result['error']}"
    return results


@pytest.fixture(scope="module")
def loaded() -> dict[str, list[str]]:
    """part -> consistcam modules loaded by importing all its modules (and no other part's first);
    "" -> those of ``import consistcam``."""
    modules = defaultdict(list)
    for name in sorted(module_files()):
        modules[part(name)].append(name)
    names = [p for p in parts_in_source() if p in LAYER]
    jobs = [(modules[p], True) for p in names] + [(["consistcam"], False)]
    return dict(zip(names + [""], loaded_by(jobs)))


def upward(name: str, modules: list[str], rank: int) -> dict[str, list[str]]:
    """Loaded parts above ``rank``, each with the modules of it that were loaded."""
    found = defaultdict(list)
    for m in modules:
        p = part(m)
        if p and p != name and LAYER.get(p, len(LAYERS)) > rank:
            found[p].append(m)
    return dict(found)


@pytest.mark.parametrize("name", [n for names in LAYERS for n in names])
def test_importing_a_part_loads_no_higher_layer(name, loaded):
    if name not in loaded:
        pytest.skip(f"consistcam.{name} does not exist (yet)")
    bad = upward(name, loaded[name], LAYER[name])
    assert not bad, f"importing consistcam.{name} (layer {LAYER[name]}) loads higher layers: {bad}"


def test_the_root_package_loads_only_the_public_api(loaded):
    bad = upward("", loaded[""], ROOT_LAYER)
    assert not bad, f"import consistcam loads parts above consistency: {bad}"


# -- 2. and 3.: the source's import graph ---------------------------------------------------------


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    names = list(rel.parts)
    return ".".join(names[:-1] if names[-1] == "__init__" else names)


def _imports(tree: ast.AST, name: str, is_package: bool, known: set[str]) -> set[str]:
    """consistcam modules ``name``'s source imports, anywhere (``if TYPE_CHECKING:`` blocks included).
    ``from a import b`` counts as importing ``a.b`` when that is a module, else ``a``."""
    uses_importlib = False
    out: set[str] = set()
    strings: set[str] = set()
    todo = [tree]
    while todo:
        node = todo.pop()
        todo.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
            uses_importlib |= any(a.name == "importlib" for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            uses_importlib |= module == "importlib"
            for a in node.names:
                out.add(f"{module}.{a.name}" if f"{module}.{a.name}" in known else module)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in known:
            strings.add(node.value)
    if uses_importlib:
        out |= strings
    return {m for m in out if m in known and m != name}


def module_files() -> dict[str, Path]:
    """Dotted name -> source file of every consistcam module but ``__main__`` (importing it runs the CLI)."""
    files = {module_name(p): p for p in SRC.rglob("*.py")}
    files.pop("consistcam.__main__")
    return files


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    return {name: _imports(ast.parse(path.read_text()), name, path.name == "__init__.py", known)
            for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None."""
    colour: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if colour.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in colour and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        colour[node] = 2
        return None

    for node in sorted(graph):
        if node not in colour and (cycle := visit(node)):
            return cycle
    return None


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """Cycles of ``graph``, each as "a -> b -> a", until cutting one edge of each leaves none."""
    graph = {node: set(targets) for node, targets in graph.items()}
    found = []
    while (cycle := find_cycle(graph)) and len(found) < 20:
        found.append(" -> ".join(cycle))
        graph[cycle[-2]].discard(cycle[-1])
    return found


def test_cycles_are_named():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}) == ["a -> b -> a", "c -> d -> c"]


def test_the_graph_sees_every_kind_of_import(tmp_path):
    known = {"consistcam.x", "consistcam.x.a", "consistcam.x.b", "consistcam.y", "consistcam.z"}
    source = ("import importlib\nfrom typing import TYPE_CHECKING\nfrom . import a\nfrom .b import f\n"
              "if TYPE_CHECKING:\n    import consistcam.z\n"
              "def g():\n    from consistcam import y\n    importlib.import_module('consistcam.z')\n")
    assert _imports(ast.parse(source), "consistcam.x", True, known) == {
        "consistcam.x.a", "consistcam.x.b", "consistcam.y", "consistcam.z"}
    assert _imports(ast.parse("if TYPE_CHECKING:\n    import consistcam.y\n"), "consistcam.x", True, known) == {
        "consistcam.y"}


def test_no_import_statement_reaches_a_higher_layer():
    """The same rule on the source, which also sees imports inside functions (run only when called)."""
    graph = import_graph()
    bad = sorted(f"{name} -> {t}" for name, targets in graph.items() for t in targets
                 if part(name) and part(t) and LAYER.get(part(t), 0) > LAYER.get(part(name), 0))
    assert not bad, "imports of a higher layer:\n" + "\n".join(bad)


def test_no_import_cycle_between_parts():
    graph: dict[str, set[str]] = defaultdict(set)
    for name, targets in import_graph().items():
        graph[part(name)].update(part(t) for t in targets if part(t) != part(name))
    graph.pop("", None)  # the root package re-exports the public API
    for targets in graph.values():
        targets.discard("")
    found = cycles(graph)
    assert not found, "import cycles between parts of consistcam:\n" + "\n".join(found)


def test_no_import_cycle_between_modules():
    """A package's ``__init__`` importing its own submodules (re-exports) is not counted: every
    submodule import runs it first anyway."""
    graph = {name: {t for t in targets if not t.startswith(name + ".")} for name, targets in import_graph().items()}
    found = cycles(graph)
    assert not found, "import cycles between consistcam modules:\n" + "\n".join(found)
