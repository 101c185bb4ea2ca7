"""Every file and folder name a run holds is spelled in ``consistcam.run.layout`` only.

The names come from the layout module itself (its ``*_FILE``, ``*_DIR`` and ``*_FILES`` constants and
the per-split file names), so a name added there is checked here from then on. The rest of the
package is read with :mod:`ast`: docstrings are prose for the reader and comments are not in the
tree, every other string constant and f-string is checked. A name with a suffix (``metrics.json``,
``epoch_*.safetensors``) is refused anywhere, also in help texts and messages (they would go stale
when the name changes: they are f-strings of the constants). A bare folder name (``eval``, ``tb``,
``consistency``) is refused only where it is a path: the operand of ``/``, an argument of
``Path``/``joinpath``/``glob``, a part of ``RUN/NAME`` or of a path to a file (``NAME/x.json``).
The same words elsewhere name other things (the ``eval`` mode of a pass, the ``consistency``
protocol, the ``jtt/errors`` log key, the ``influence`` command), so no allow-list is needed.
"""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

import consistcam
from consistcam.run import layout

SRC = Path(consistcam.__file__).resolve().parent
OWNER = SRC / "run"

# the names issue 34 found spelled outside run/: the layout must keep naming them
ISSUE_NAMES = {"metrics.json", "metrics.jsonl", "eval", "tb", "consistency", "skipped.txt", "status.json",
               "config.yaml", "model.safetensors", "checkpoint.safetensors", "per_sample_*.safetensors",
               "examples_*.safetensors", "epoch_*.safetensors", "diagnosis", "diagnosis.json", "fool.json",
               "fool_examples.safetensors", "jtt", "error_set.safetensors", "report.html", "sweep_evaluate.json",
               "influence", "influence.safetensors", "influence.html", "checkpoints"}
_PATH_CALLS = {"Path", "PurePath", "joinpath", "glob", "rglob", "with_name"}


def layout_names() -> set[str]:
    """The file and folder names (``*`` where a split or an epoch goes) that run/layout.py defines."""
    names = {v for k, v in vars(layout).items()
             if k.isupper() and isinstance(v, str) and k.endswith(("_FILE", "_DIR", "_FILES"))}
    return names | {layout.per_sample_file("*"), layout.examples_file("*")}


def _text(node: ast.AST) -> str:
    """A string constant, or an f-string with ``*`` for each formatted value."""
    if isinstance(node, ast.Constant):
        return node.value
    return "".join(v.value if isinstance(v, ast.Constant) else "*" for v in node.values)


def _is_file(part: str, files: set[str]) -> bool:
    return any(fnmatch.fnmatchcase(part, f) for f in files) or bool(re.fullmatch(r"[\w*-]+\.\w+", part))


def names_in(text: str, names: set[str], path_context: bool = False) -> list[str]:
    """The run names ``text`` spells as a file or a path (see the module docstring)."""
    files = {n for n in names if "." in n}
    folders = names - files
    text = re.sub(r"\{[^}]*\}|<[^>]*>", "*", text)
    if path_context and text in folders:
        return [text]
    found = []
    for token in re.findall(r"[\w.*/-]+", text):
        parts = token.strip(".").split("/")
        path = len(parts) > 1 and (parts[0] in ("RUN", "*") or _is_file(parts[-1], files))
        found += [p for p in parts if any(fnmatch.fnmatchcase(p, f) for f in files) or (path and p in folders)]
    return found


def _docstrings(tree: ast.AST) -> set[int]:
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {id(n.body[0].value) for n in ast.walk(tree) if isinstance(n, kinds) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}


def _in_path_context(node: ast.AST, parent: ast.AST | None) -> bool:
    if isinstance(parent, ast.BinOp) and isinstance(parent.op, ast.Div):
        return True
    if isinstance(parent, ast.Call) and node in parent.args:
        func = parent.func
        return (func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")) in _PATH_CALLS
    return False


def spelled_names(source: str, names: set[str]) -> list[tuple[int, str, str]]:
    """(line, name, string) of every run name spelled in ``source`` outside its docstrings."""
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    parents = {id(c): n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}
    found = []
    for node in ast.walk(tree):
        parent = parents.get(id(node))
        is_string = isinstance(node, ast.Constant) and isinstance(node.value, str)
        if not (isinstance(node, ast.JoinedStr) or is_string) or isinstance(parent, ast.JoinedStr):
            continue
        if id(node) not in docstrings:
            text = _text(node)
            found += [(node.lineno, n, text) for n in names_in(text, names, _in_path_context(node, parent))]
    return sorted(found, key=lambda hit: hit[0])  # stable: a string's names in their order


def test_the_layout_names_every_file_and_folder_the_issue_found():
    missing = ISSUE_NAMES - layout_names()
    assert not missing, f"run/layout.py no longer names {sorted(missing)}"


def test_no_run_file_name_is_spelled_outside_run():
    names = layout_names()
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if OWNER in path.parents:
            continue
        for line, name, text in spelled_names(path.read_text(), names):
            found.append(f"{path.relative_to(SRC.parent)}:{line}: {name!r} in {text[:60]!r}")
    assert not found, ("run file names spelled outside consistcam/run (use the constants of "
                       "consistcam.run.layout):\n" + "\n".join(found))


def test_the_check_sees_paths_and_leaves_prose_docstrings_and_other_words_alone():
    bad = '''
METRICS_FILE = "metrics.json"
out_dir = run_dir / "eval"
ctx.save_tensors(f"consistency/epoch_{epoch:03d}.safetensors", fields)
writer = SummaryWriter(str(trainer.run_dir / "tb"))
p.add_argument("--out", help="output folder (default: RUN/influence)")
ERROR_SET_FILE = "jtt/error_set.safetensors"
name = f"per_sample_{split}.safetensors"
'''
    assert [(line, name) for line, name, _ in spelled_names(bad, layout_names())] == [
        (2, "metrics.json"), (3, "eval"), (4, "consistency"), (4, "epoch_*.safetensors"), (5, "tb"),
        (6, "influence"), (7, "jtt"), (7, "error_set.safetensors"), (8, "per_sample_*.safetensors")]
    good = '''
"""A docstring may name metrics.json and RUN/eval: it is prose for the reader."""
def f():
    """So may a function's: consistency/epoch_XXX.safetensors."""
    mode = "eval"  # the saliency pass's mode, not a folder (and a comment: model.safetensors)
    logs = {"jtt/errors": 1, f"consistency/{k}": 2, "eval/acc": 3}
    protocols = ("localization", "consistency")
    return sub.add_parser("influence", help="tests/consistency agrees within 0.03")
'''
    assert spelled_names(good, layout_names()) == []


def test_the_builtin_method_folders_are_the_methods_own():
    from consistcam.train.methods import METHODS

    assert all(METHODS.get(name).output_dir == folder for name, folder in layout.BUILTIN_METHOD_DIRS.items())
    builtin = [n for n in METHODS.names() if METHODS.get(n).__module__.startswith("consistcam.")]
    assert {n for n in builtin if METHODS.get(n).output_dir is not None} == set(layout.BUILTIN_METHOD_DIRS)
