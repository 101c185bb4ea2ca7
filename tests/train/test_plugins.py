"""Strategies are plug-ins: third-party ones arrive through an entry-point group, and no built-in
strategy module imports another (shared helpers live in ``_shared.py`` / ``crops.py``)."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
from pathlib import Path

import pytest

from consistcam._registry import EntryPointError
from consistcam.cli import main
from consistcam.report import read_rounds
from consistcam.run.status import prepare_new_run, read_status
from consistcam.train.methods import METHODS
from consistcam.train.methods.base import ENTRY_POINT_GROUP

METHOD_DIR = Path(__file__).parents[2] / "src" / "consistcam" / "train" / "methods"
HELPERS = {"base", "_shared", "crops", "groups"}  # modules that register no method


def _installed(monkeypatch, **targets: str) -> None:
    """Pretend an installed package declares ``[project.entry-points."consistcam.strategies"]`` name = target;
    the registry reads the group again, into copies restored after the test."""
    real = importlib.metadata.entry_points

    def entry_points(**params):
        if params.get("group") == ENTRY_POINT_GROUP:
            return importlib.metadata.EntryPoints(importlib.metadata.EntryPoint(name, value, ENTRY_POINT_GROUP)
                                                  for name, value in targets.items())
        return real(**params)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))
    monkeypatch.setattr(METHODS, "_canonical", dict(METHODS._canonical))
    monkeypatch.setattr(METHODS, "_plugins_loaded", False)


def test_an_entry_point_strategy_is_listed_and_trains_through_the_cli(monkeypatch, tmp_path, capsys):
    _installed(monkeypatch, scaled_erm="tests.train.plugin_strategy:ScaledERM")
    assert main(["list", "methods"]) == 0
    assert "scaled_erm" in capsys.readouterr().out.split()
    run = tmp_path / "run"
    assert main(["train", "--method", "scaled_erm", "--set", "scaled_erm.factor=2", "--data", "demo:n=32,size=16",
                 "--arch", "cc_resnet10", "--epochs", "1", "--batch-size", "16", "--out", str(run), "--quiet"]) == 0
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert record["train/factor"] == 2.0
    assert "scaled_erm:" in (run / "config.yaml").read_text()
    assert (run / "model.safetensors").is_file()
    # its own folder: recorded in status.json, shown by the report, removed with the run by --overwrite
    assert read_status(run)["method_dir"] == "scaled_erm"
    assert [stem for stem, _ in read_rounds(run)] == ["epoch_000"]
    prepare_new_run(run, overwrite=True)
    assert not run.exists()


@pytest.mark.parametrize(("target", "message"), [
    ("tests.train.no_such_module:Method", "failed to load: ModuleNotFoundError"),
    ("tests.train.plugin_strategy:NOT_A_STRATEGY", "is not a subclass of consistcam.train.methods.Method"),
    ("tests.train.plugin_strategy:ScaledERMConfig", "is not a subclass"),
    ("tests.train.plugin_strategy:ClashingERM", "output_dir: 'eval' is a run folder's own file or folder"),
])
def test_a_broken_entry_point_is_named_in_the_error(monkeypatch, capsys, target, message):
    _installed(monkeypatch, broken=target)
    with pytest.raises(EntryPointError, match=f"entry point 'broken' = '{target}' .*{message}"):
        METHODS.names()
    with pytest.raises(EntryPointError, match="entry point 'broken'"):  # again on the next lookup, not forgotten
        METHODS.get("erm")
    assert main(["list", "methods"]) == 2
    assert f"error: entry point 'broken' = '{target}'" in capsys.readouterr().err


def test_an_entry_point_may_not_take_a_built_in_name(monkeypatch):
    _installed(monkeypatch, ecl="tests.train.plugin_strategy:ScaledERM")
    with pytest.raises(EntryPointError, match="training method 'ecl' is already registered"):
        METHODS.names()


def test_no_strategy_module_imports_another():
    modules = {p.stem for p in METHOD_DIR.glob("*.py") if p.stem != "__init__"}
    strategies = modules - HELPERS
    assert {"erm", "ecl", "excon", "lico", "cgc", "edda", "sgt"} <= strategies
    for name in sorted(modules):
        source = (METHOD_DIR / f"{name}.py").read_text()
        assert bool(re.search(r"^@register_method\(", source, re.M)) == (name in strategies), name
        imported = set()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and node.module:
                module = node.module
                if node.level:  # relative: from .x import y, from . import x
                    imported |= {module} if module else {a.name for a in node.names}
                elif module.startswith("consistcam.train.methods"):
                    rest = module.removeprefix("consistcam.train.methods").lstrip(".")
                    imported |= {rest.split(".")[0]} if rest else {a.name for a in node.names}
            elif isinstance(node, ast.Import):
                imported |= {a.name.removeprefix("consistcam.train.methods.").split(".")[0]
                             for a in node.names if a.name.startswith("consistcam.train.methods.")}
        assert not imported & strategies, f"{name}.py imports the strategy module(s) {sorted(imported & strategies)}"
