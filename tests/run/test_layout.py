"""The run-folder layout: one owner of the file names, config reading, the "same run?" comparison."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import consistcam
from consistcam.config import ConfigError
from consistcam.run.layout import (
    CONFIG_FILE,
    MODEL_FILE,
    RUN_LOCAL_KEYS,
    config_differences,
    read_config,
    run_folder,
    run_option,
    write_config,
)


def test_run_folder_of_a_folder_or_a_file_inside_it(tmp_path):
    (tmp_path / MODEL_FILE).write_text("x")
    assert run_folder(tmp_path) == tmp_path
    assert run_folder(tmp_path / MODEL_FILE) == tmp_path
    assert run_folder(tmp_path / "new") == tmp_path / "new"  # not there yet: a folder, not its parent


def test_read_config_round_trip_and_options(tmp_path):
    write_config(tmp_path, {"data": "demo", "epochs": 3, "skip_bad": True})
    assert list(read_config(tmp_path)) == ["data", "epochs", "skip_bad"]  # written in the order given
    (tmp_path / MODEL_FILE).write_text("x")
    assert read_config(tmp_path / MODEL_FILE)["epochs"] == 3  # a file inside the run names its run
    assert run_option(tmp_path, "skip_bad") is True
    assert run_option(tmp_path, "subset", 7) == 7
    assert run_option(tmp_path / "elsewhere", "skip_bad", False) is False  # no config: the default


def test_read_config_errors_name_the_file(tmp_path):
    path = tmp_path / CONFIG_FILE
    with pytest.raises(FileNotFoundError, match=f"{path} not found: is it a run folder"):
        read_config(tmp_path, hint="is it a run folder?")
    assert read_config(tmp_path, missing_ok=True) == {}
    path.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match=f"{path}: not valid YAML"):
        read_config(tmp_path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match=f"{path}: expected a mapping of options, got list"):
        read_config(tmp_path)
    path.write_text("")
    assert read_config(tmp_path) == {}


def test_config_differences_one_ignore_list():
    saved = {"data": "demo", "epochs": 5, "lr": 0.1, "out": "a", "workers": 0, "device": "cpu"}
    mine = {"data": "demo", "epochs": 8, "lr": 0.2, "out": "b", "workers": 4, "device": "cuda"}
    assert set(RUN_LOCAL_KEYS) == {"out", "workers", "device"}
    assert config_differences(saved, mine) == ["epochs", "lr"]  # the sweep: other epochs, another run
    assert config_differences(saved, mine, ignore_epochs=True) == ["lr"]  # resume: extending is allowed
    assert config_differences(saved, {**saved, "new_option": 1}) == ["new_option"]  # keys of either side count
    assert config_differences(saved, dict(saved)) == []


def test_the_trainer_and_the_sweep_share_the_comparison():
    """Neither spells its own ignore list any more (issue 23: they had two)."""
    root = Path(consistcam.__file__).parent
    for name in ("train/trainer.py", "sweep/runner.py"):
        text = (root / name).read_text()
        assert "config_differences(" in text and '"workers", "device"' not in text, name


def _imports(package: str) -> set[str]:
    found = set()
    for path in (Path(consistcam.__file__).parent / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
    return found


def test_run_sits_below_the_commands():
    """run/ may import only config, utils and models of consistcam (train/, evaluation/, ... import it)."""
    allowed = ("consistcam.run", "consistcam.config", "consistcam.utils", "consistcam.models")
    bad = {m for m in _imports("run") if m.startswith("consistcam") and not m.startswith(allowed)}
    assert not bad, bad


def test_file_names_are_spelled_only_in_run():
    names = ('"config.yaml"', '"model.safetensors"', '"metrics.jsonl"', '"checkpoint.safetensors"', '"status.json"')
    root = Path(consistcam.__file__).parent
    spelled = {str(p.relative_to(root)) for p in root.rglob("*.py") if any(n in p.read_text() for n in names)}
    assert spelled == {"run/layout.py"}, spelled
