"""Reports from hostile or damaged saved files: every user-controlled string is escaped, nothing is
written outside the report's folder, and a damaged file is a ValueError naming it and the fix."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from consistcam.evaluation import evaluate_run
from consistcam.report import compare_runs, read_evaluation, render_evaluation
from tests.evaluation.runs import QUICK, make_run

EVIL = "<script>alert(1)</script>"
RUN_NAME = "<script>alert(1)<\\script> \"q\" 'q' .. $x_{$"  # a folder name cannot hold '/'
CLASSES = [EVIL, "a\"b'c", "../../etc/passwd", "$x_{$"]
SPLIT = f"test {EVIL} ../"


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def _history(run: Path, lines: list[str]) -> None:
    (run / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))


def _round(run: Path, epoch: int = 2, **tensors: torch.Tensor) -> Path:
    g = torch.Generator().manual_seed(epoch)
    tensors = tensors or {"E": torch.rand(20, generator=g), "weights": torch.rand(20, generator=g) * 2}
    path = run / "consistency" / f"epoch_{epoch:03d}.safetensors"
    path.parent.mkdir(exist_ok=True)
    save_file(tensors, str(path))
    return path


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    """An evaluated run whose folder, classes, command, split and a metric name are hostile strings,
    with training curves and one ECL round, so every section of the report is rendered."""
    run = make_run(tmp_path_factory.mktemp("hostile")).rename(tmp_path_factory.getbasetemp() / RUN_NAME)
    evaluate_run(run, command=f"consistcam evaluate '{EVIL}' ../../x \"q\"", report=False, **QUICK)
    doc = json.loads((run / "eval" / "metrics.json").read_text())
    doc["meta"]["classes"] = CLASSES
    doc["meta"]["files"] = {SPLIT: doc["meta"]["files"].pop("test")}
    doc["splits"] = {SPLIT: {**doc["splits"].pop("test"), EVIL: 0.5}}
    (run / "eval" / "metrics.json").write_text(json.dumps(doc))
    _history(run, [json.dumps({"epoch": e, "train/loss": 1.0 / e, "val/acc": 0.5, EVIL: 1}) for e in (1, 2)])
    _round(run)
    return run


def _assert_escaped(text: str) -> None:
    assert "<script" not in text.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_report_escapes_every_user_string_and_writes_only_itself(hostile):
    root = hostile.parent
    before = _files(root)
    path = render_evaluation(hostile / "eval")
    assert path == hostile / "eval" / "report.html"
    assert _files(root) - before == {path} and before <= _files(root)
    text = path.read_text()
    _assert_escaped(text)
    assert "a&quot;b&#x27;c" in text and "../../etc/passwd" in text  # class names, shown as text
    assert "&lt;script&gt;alert(1)&lt;\\script&gt; &quot;q&quot; &#x27;q&#x27;" in text  # the run name
    assert f"<h2>{SPLIT.replace('<', '&lt;').replace('>', '&gt;')}: best" in text  # the split name
    assert text.count("data:image/png;base64,") == 1 + 4 + 2  # E histogram, grids, curves, ECL round


def test_comparison_escapes_its_title_and_run_names(hostile, tmp_path):
    before = _files(hostile.parent) | _files(tmp_path)
    path = compare_runs([hostile], tmp_path / "cmp" / "side.html", title=EVIL)
    assert (_files(hostile.parent) | _files(tmp_path)) - before == {path}
    text = path.read_text()
    _assert_escaped(text)
    assert f"<title>{EVIL.replace('<', '&lt;').replace('>', '&gt;')}</title>" in text


@pytest.fixture
def run(hostile, tmp_path) -> Path:
    """A private copy of the hostile run (plain name) to damage."""
    return Path(shutil.copytree(hostile, tmp_path / "runs" / "damaged"))


def _truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _render_fails(run: Path, path: Path, fix: str) -> None:
    """Rendering raises a plain ValueError (not json's or safetensors' own, no chained traceback) that
    names the damaged ``path`` and ``fix``."""
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}.*{fix}") as info:
        render_evaluation(run / "eval")
    assert type(info.value) is ValueError and info.value.__cause__ is None


EVALUATE_AGAIN = r"re-run `consistcam evaluate .*damaged`"


@pytest.mark.parametrize("content", ["truncated", "not json", "no splits", "escaping file name"])
def test_damaged_metrics_json(run, content):
    path = run / "eval" / "metrics.json"
    if content == "truncated":
        _truncate(path)
    elif content == "not json":
        path.write_bytes(b"\x00\xff garbage")
    elif content == "no splits":
        path.write_text("[1, 2]")
    else:
        doc = json.loads(path.read_text())
        doc["meta"]["files"][SPLIT]["examples"] = "../../../outside.safetensors"
        path.write_text(json.dumps(doc))
    _render_fails(run, path, EVALUATE_AGAIN)


@pytest.mark.parametrize("kind", ["per_sample", "examples"])
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_saved_tensors(run, kind, damage):
    name = read_evaluation(run).meta["files"][SPLIT][kind]
    path = run / "eval" / name
    if damage == "truncated":
        _truncate(path)
    else:
        path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\": 1}")
    _render_fails(run, path, EVALUATE_AGAIN)


def test_examples_with_foreign_entries(run):
    path = run / "eval" / read_evaluation(run).meta["files"][SPLIT]["examples"]
    save_file({"E/best/image": torch.zeros(1, 3, 4, 4)}, str(path))  # no id or value
    _render_fails(run, path, "lack id, value")
    save_file({"oops": torch.zeros(1)}, str(path))
    _render_fails(run, path, "not <key>/<side>/<field>")


@pytest.mark.parametrize("damage", ["truncated", "no weights"])
def test_damaged_consistency_round(run, damage):
    path = _truncate(_round(run, 4)) if damage == "truncated" else _round(run, 4, E=torch.rand(5))
    _render_fails(run, path, "delete it .* or re-train")


@pytest.mark.parametrize("line", ['{"epoch": 3, "train/lo', "[1, 2]", '{"train/loss": 1.0}'])
def test_damaged_training_log(run, line):
    path = run / "metrics.jsonl"
    _history(run, ['{"epoch": 1, "train/loss": 1.0}', "", line])
    _render_fails(run, path, r":3: not a JSON epoch record.*delete or fix that line")
    _history(run, ['{"epoch": 1, "train/loss": 1.0}', ""])  # the fix the message gives works (issue 25:
    render_evaluation(run / "eval")  # it used to suggest `train --resume`, which fails on such a line)


def test_comparison_leaves_out_a_broken_run_and_names_the_file(hostile, tmp_path):
    good = Path(shutil.copytree(hostile, tmp_path / "good"))
    bad = Path(shutil.copytree(hostile, tmp_path / "bad"))
    per_sample = _truncate(bad / "eval" / read_evaluation(bad).meta["files"][SPLIT]["per_sample"])
    with pytest.warns(UserWarning, match=rf"leaving out {re.escape(str(bad))}: {re.escape(str(per_sample))}: not a "):
        path = compare_runs([good, bad], tmp_path / "cmp.html")
    text = path.read_text()
    assert "<th>good/" in text and "bad/" not in text
    _history(good, ['{"epoch": 1, "train/lo'])  # a torn line
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match=r"no run could be read:\n.*good.*metrics.jsonl.*\n.*bad.*per_sample"):
            compare_runs([good, bad], tmp_path / "none.html")
    assert len(caught) == 2
    assert not (tmp_path / "none.html").exists()


def test_report_command_names_a_left_out_run_in_one_line(hostile, tmp_path, capsys):
    """Not Python's warning format (source file path, line, category) on the command line."""
    from consistcam.cli import main

    (tmp_path / "not_a_run").mkdir()
    (tmp_path / "not_a_run" / "metrics.json").write_text("{}")  # damaged: left out with a warning
    assert main(["report", str(hostile), str(tmp_path / "not_a_run"), "--out", str(tmp_path / "cmp.html")]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"warning: leaving out {tmp_path / 'not_a_run'}: ") and err.count("\n") == 1, err
    assert "UserWarning" not in err and ".py:" not in err
