"""The bad-input matrix: every case exits non-zero (or skips as documented) with a message that
names the offending option, file or value, never a traceback, and never changes an existing run."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from consistcam.cli import main
from tests.data.test_data import _write_tiny

RUN_ARGS = ["--data", "demo:n=32,n_test=16,size=16", "--epochs", "1", "--batch-size", "16", "--quiet"]


class Marker:
    """A pickle that would create a file when unpickled: proves a loader never unpickles."""

    path = ""

    def __reduce__(self):
        return (Path(self.path).touch, ())


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad_inputs")
    run = root / "run"
    assert main(["train", *RUN_ARGS, "--out", str(run)]) == 0
    partial = root / "partial"
    assert main(["train", *RUN_ARGS, "--out", str(partial), "--epochs", "2", "--quiet"]) == 0
    (partial / "status.json").write_text('{"state": "running", "epochs": 3}')  # as if killed
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(root / "ok.png")
    (root / "notimage.png").write_text("hello")
    (root / "malformed.yaml").write_text("epochs: [1\n")
    (root / "list.yaml").write_text("- 1\n- 2\n")
    (root / "dup.yaml").write_text("lr: 0.1\nepochs: 1\nlr: 0.01\n")
    tin = root / "tin"
    tin.mkdir()
    _write_tiny(tin, bad_line="n002_9.JPEG\tnan\t1\t3\t4")
    dup = root / "dup"
    dup.mkdir()
    _write_tiny(dup)
    (dup / "wnids.txt").write_text("n001\nn002\nn001\n")
    for split, names in (("train", "ab"), ("val", "ac")):  # issue 25: val "c" was scored as "b"
        for name in names:
            (root / "ab_ac" / split / name).mkdir(parents=True)
            Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(root / "ab_ac" / split / name / "0.png")
    for name in ("disk", "ring", "cross", "square"):  # the demo run's four classes, other names and order
        (root / "four" / "val" / name).mkdir(parents=True)
        Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(root / "four" / "val" / name / "0.png")
    marker = root / "unpickled"
    Marker.path = str(marker)
    torch.save({"state": Marker()}, root / "model.pt")
    return {"root": root, "run": run, "partial": partial, "tin": tin, "dup": dup, "marker": marker}


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# (argv with {run}, {root}, ... placeholders, expected fragment of the message)
CASES = [
    (["train", "--lr", "nan"], "lr: must be a finite number, got 'nan'"),
    (["train", "--lr", "-1"], "lr: must be > 0.0, got -1"),
    (["train", "--epochs", "0"], "epochs: must be >= 1, got 0"),
    (["train", "--epochs", "2.5"], "epochs: expected an integer, got 2.5"),
    (["train", "--method", "ecl", "--set", "ecl.consistency.eps=-0.1"], "ecl.consistency.eps: must be >= 0.0"),
    (["train", "--method", "ecl", "--set", "ecl.consistency.attack=pdg"], "did you mean pgd"),
    (["train", "--set", "ecl.warmpu=1"], "unknown option 'ecl.warmpu'; did you mean warmup"),
    (["train", "--set", "epochz=3"], "unknown option 'epochz'; did you mean epochs"),
    (["train", "--set", "epochs"], "--set expects KEY=VALUE, got 'epochs'"),
    (["train", "--method", "nope"], "method: unknown training method"),
    (["train", "--arch", "resnet5O"], "arch: unknown model (did you mean resnet50"),
    (["train", "--image-size", "0"], "image_size: must be >= 1, got 0"),
    (["train", "--label-smoothing", "2"], "label_smoothing: must be < 1.0, got 2"),
    (["train", "--workers", "-1"], "workers: must be >= 0, got -1"),
    (["train", "--device", "foo"], "device: expected auto, cpu, cuda, cuda:N or mps, got 'foo'"),
    (["train", "--device", "cuda:3"], "device: 'cuda:3' requested but"),
    (["train", "--data", "demo:rho=nan"], "demo option rho must be in [0, 1], got nan"),
    (["train", "--data", "demo:n=-5"], "demo option n must be >= 1, got -5"),
    (["train", "--data", "demo:colour=red"], "bad demo option 'colour=red'"),
    (["train", "--data", "nope:x"], "data: unknown data set"),
    (["train", "--data", "tinyimagenet:{root}/missing"], "missing/wnids.txt: not found"),
    (["train", "--data", "tinyimagenet:{tin}", "--image-size", "16"], "n002_boxes.txt:4: expected four integer"),
    (["train", "--data", "tinyimagenet:{dup}"], "wnids.txt:3: class id 'n001' appears twice"),
    (["train", "--config", "{root}/malformed.yaml"], "malformed.yaml: not valid YAML"),
    (["train", "--config", "{root}/list.yaml"], "list.yaml: expected a mapping of options, got list"),
    (["train", "--config", "{root}/dup.yaml"], "dup.yaml: not valid YAML (duplicate key 'lr' (first on line 1)"),
    (["train", "--keep-checkpoints", "every=0"], "keep_checkpoints: every=N needs N >= 1, got 'every=0'"),
    (["train", "--method", "ecl", "--set", "ecl.consistency.explainer_options.bogus=1"],
     "ecl.consistency.explainer_options: unknown explainer option 'bogus'"),
    # issue 25: a bad layer used to fail at the first scoring pass (or never, with warm-up >= epochs)
    (["train", *RUN_ARGS, "--method", "ecl", "--set", "ecl.warmup=5", "--set", "ecl.consistency.layer=model.nope",
      "--out", "{root}/layer_run"], "ecl.consistency.layer: Normalize has no layer 'model.nope'"),
    (["train", "--config", "{root}"], "config file {root}: a folder, not a YAML file"),
    (["explain", "{run}", "{root}/ok.png", "--out", "{root}/ok.png"],
     "--out {root}/ok.png: cannot create the folder: exists and is not a folder"),
    (["train", "--config", "{root}/missing.yaml"], "config file {root}/missing.yaml not found"),
    (["train", "--out", "{run}"], "{run} already holds a complete run; use --resume"),
    (["train", "--resume", "{run}", "--lr", "0.5"], "config differs from the checkpoint's in ['lr']"),
    (["train", "--resume", "{root}/nothing"], "cannot resume: {root}/nothing/config.yaml not found"),
    (["evaluate", "{root}/nothing"], "checkpoint {root}/nothing not found"),
    (["evaluate", "{run}", "--explainer", "gradcm"],
     "explainers: 'gradcm': unknown explainer (did you mean gradcam"),
    (["evaluate", "{run}", "--subset", "-1"], "subset: must be >= 1, got -1"),
    (["evaluate", "{run}", "--batch-size", "0"], "batch_size: must be >= 1, got 0"),
    (["evaluate", "{run}", "--set", "consistency.stpes=3"], "unknown option 'consistency.stpes'; did you mean steps"),
    (["evaluate", "{run}", "--protocols", "localisation"], "unknown protocol(s) ['localisation']"),
    (["evaluate", "{partial}"], "is not complete (training was interrupted)"),
    (["evaluate", "{root}/model.pt", "--data", "demo"], "model.pt: not a readable safetensors checkpoint"),
    (["train", "--data", "imagefolder:{root}/ab_ac", "--image-size", "16"],
     "class names differ: imagefolder:{root}/ab_ac split 'train' has ['a', 'b'], split 'val' has ['a', 'c']"),
    (["evaluate", "{run}", "--data", "imagefolder:{root}/four"], "split 'val' has ['cross', 'disk', 'ring', 'square']"),
    (["explain", "{run}", "{root}/missing.png"], "missing.png: file not found"),
    (["explain", "{run}", "{root}/notimage.png"], "notimage.png: unreadable or truncated image"),
    (["explain", "{run}", "{root}/ok.png", "--explainer", "nope"], "unknown explainer 'nope'"),
    (["explain", "{run}", "{root}/ok.png", "--target", "9"], "--target 9: the model has 4 classes"),
    (["report", "{root}/nothing", "--out", "{root}/r.html"], "nothing"),
]
ARGPARSE_CASES = [
    (["explain", "{run}", "{root}/ok.png", "--target", "-2"], "--target: must be >= 0, got -2"),
    (["list", "everything"], "invalid choice: 'everything'"),
]


def _fill(argv: list[str], world: dict[str, Path]) -> list[str]:
    return [a.format(**{k: str(v) for k, v in world.items()}) for a in argv]


@pytest.mark.parametrize(("argv", "message"), CASES, ids=[" ".join(c[0][:3]) for c in CASES])
def test_bad_input_is_a_clear_error_and_changes_no_run(world, capsys, argv, message):
    before = {name: _digest(world[name]) for name in ("run", "partial")}
    code = main(_fill(argv, world) + (["--quiet"] if argv[0] in ("train", "evaluate") else []))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert message.format(**{k: str(v) for k, v in world.items()}) in err, err
    assert {name: _digest(world[name]) for name in ("run", "partial")} == before
    assert not world["marker"].exists(), "a pickle was unpickled"


@pytest.mark.parametrize(("argv", "message"), ARGPARSE_CASES, ids=[" ".join(c[0][:3]) for c in ARGPARSE_CASES])
def test_bad_flag_values_are_rejected_by_the_parser(world, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(_fill(argv, world))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_pickle_checkpoints_are_refused_without_running_code(world):
    from consistcam.train import load_checkpoint, load_model

    with pytest.raises(ValueError, match="not a readable safetensors checkpoint"):
        load_model(world["root"] / "model.pt")
    with pytest.raises(ValueError, match="not a readable safetensors checkpoint"):
        load_checkpoint(world["root"] / "model.pt", torch.nn.Linear(1, 1))
    assert not world["marker"].exists()
    assert pickle  # the marker above really is a pickle payload (torch.save pickles)


def test_skip_bad_is_the_documented_skip_and_evaluate_follows_the_run(world, capsys, tmp_path):
    data = tmp_path / "tin"
    data.mkdir()
    _write_tiny(data, bad_line="n002_9.JPEG\tnan\t1\t3\t4")
    ann = data / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text() + "val_0.JPEG\tn999\t0\t0\t15\t15\n")  # a bad val line too
    out = tmp_path / "skipping"
    assert main(["train", "--data", f"tinyimagenet:{data}", "--image-size", "16", "--epochs", "1",
                 "--batch-size", "4", "--skip-bad", "--out", str(out), "--quiet"]) == 0
    assert "skipped 2 bad entries (2 annotations)" in capsys.readouterr().err
    assert (out / "skipped.txt").read_text().count("\tannotation\t") == 2
    quick = ["--protocols", "localization", "--no-background", "--no-report", "--quiet"]
    assert main(["evaluate", str(out), *quick, "--no-skip-bad"]) == 2
    assert f"{ann}:2: class id 'n999' is not in wnids.txt" in capsys.readouterr().err
    assert main(["evaluate", str(out), *quick]) == 0  # skip_bad as the run was trained
    assert main(["evaluate", str(out), "--protocols", "localization", "--no-background", "--quiet"]) == 0
    html = (out / "eval" / "report.html").read_text()
    assert "entries skipped by --skip-bad" in html and "annotation" in html  # counts shown in the report


def test_explain_skip_bad_skips_unreadable_files(world, capsys, tmp_path):
    out = tmp_path / "overlays"
    argv = ["explain", str(world["run"]), str(world["root"] / "notimage.png"), str(world["root"] / "ok.png"),
            "--out", str(out)]
    assert main(argv + ["--skip-bad"]) == 0
    err = capsys.readouterr().err
    assert "notimage.png: unreadable" in err and "skipped 1 unreadable image" in err
    assert [p.name for p in out.iterdir()] == ["ok_gradcam.png"]


def test_explain_images_sharing_a_name_get_one_overlay_each(world, tmp_path, capsys):
    for folder, value in (("dirA", 0), ("dirB", 255)):  # issue 25: both were written to same_gradcam.png
        (tmp_path / folder).mkdir()
        Image.fromarray(np.full((16, 16, 3), value, dtype=np.uint8)).save(tmp_path / folder / "same.png")
    out = tmp_path / "overlays"
    assert main(["explain", str(world["run"]), str(tmp_path / "dirA" / "same.png"), str(tmp_path / "dirB" / "same.png"),
                 str(world["root"] / "ok.png"), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["ok_gradcam.png", "same_1_gradcam.png", "same_2_gradcam.png"]
    printed = capsys.readouterr().out
    assert "dirA/same.png" in printed and "same_1_gradcam.png" in printed.split("dirB")[0]


@pytest.mark.parametrize("name,argv", [
    ("checkpoint.safetensors", ["train", "--resume", "{copy}", "--quiet"]),
    ("model.safetensors", ["evaluate", "{copy}", "--allow-incomplete", "--quiet", "--no-report"]),
])
def test_bit_flips_in_tensors_are_refused_on_load(world, tmp_path, capsys, name, argv):
    """Issue 25: a flipped bit inside a checkpoint's tensors used to pass resume and evaluate silently."""
    import shutil

    copy = Path(shutil.copytree(world["partial"], tmp_path / "copy"))
    data = bytearray((copy / name).read_bytes())
    data[-3] ^= 0x10  # inside the last tensor's bytes: the header still parses
    (copy / name).write_bytes(bytes(data))
    before = _digest(copy)
    assert main([a.format(copy=copy) for a in argv]) == 2
    err = capsys.readouterr().err
    assert f"{copy / name}: the tensors do not match the content hash stored with them" in err, err
    assert "Traceback" not in err and _digest(copy) == before


OUT_COMMANDS = {  # every command that creates an output folder, with that folder as {out}
    "train": ["train", *RUN_ARGS, "--out", "{out}"],
    "evaluate": ["evaluate", "{run}", "--out", "{out}", "--quiet"],
    "explain": ["explain", "{run}", "{root}/ok.png", "--out", "{out}", "--quiet"],
    "fool": ["fool", "{run}", "--out", "{out}", "--quiet"],
    "vae train": ["vae", "train", "--data", "demo:n=32,n_test=16,size=16", "--epochs", "1", "--out", "{out}",
                  "--quiet"],
    "sweep": ["sweep", "--grid", "lr=0.1,0.2", "--seeds", "0", "--out", "{out}", "--quiet"],
}


@pytest.mark.parametrize("blocked", ["file_in_path", "read_only_parent"])
@pytest.mark.parametrize("command", sorted(OUT_COMMANDS))
def test_an_output_folder_that_cannot_be_made_is_one_clear_error(world, tmp_path, capsys, monkeypatch, command,
                                                                 blocked):
    """A file where a folder should be, or a parent that cannot be written (simulated: the tests may run as
    root, who may write anywhere): one error naming the path and the reason, exit 2, nothing changed."""
    (tmp_path / "afile.txt").write_text("x")
    parent = tmp_path / ("afile.txt" if blocked == "file_in_path" else "locked")
    out = parent / "sub"
    if blocked == "read_only_parent":
        parent.mkdir()
        real_mkdir = Path.mkdir

        def mkdir(self, *args, **kwargs):
            if self == out or parent in self.parents and self != parent:
                raise PermissionError(13, "Permission denied", str(self))
            return real_mkdir(self, *args, **kwargs)

        monkeypatch.setattr(Path, "mkdir", mkdir)
        monkeypatch.setattr("os.access", lambda path, mode, **kw: Path(path) != parent)
    before = {name: _digest(world[name]) for name in ("run", "partial")} | {"tmp": _digest(tmp_path)}
    dirs = sorted(str(p) for p in tmp_path.rglob("*"))
    code = main(_fill(OUT_COMMANDS[command], {**world, "out": out}))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    reason = "afile.txt is a file, not a folder" if blocked == "file_in_path" else "permission denied in"
    assert f"{out}: cannot create the folder" in err and reason in err, err
    assert ({name: _digest(world[name]) for name in ("run", "partial")} | {"tmp": _digest(tmp_path)}) == before
    assert sorted(str(p) for p in tmp_path.rglob("*")) == dirs


def test_explain_names_an_image_too_small_before_writing_any_overlay(world, tmp_path, capsys):
    Image.fromarray(np.zeros((1, 1, 3), dtype=np.uint8)).save(tmp_path / "tiny.png")
    out = tmp_path / "overlays"
    ok = str(world["root"] / "ok.png")
    assert main(["explain", str(world["run"]), ok, ok, str(tmp_path / "tiny.png"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'tiny.png'}: 1x1 pixels is too small for this model to explain" in err, err
    assert "Normalize" not in err and "layer=" not in err
    assert not out.exists()  # nothing written, not even the folder
    assert main(["explain", str(world["run"]), ok, "--size", "1", "--out", str(out)]) == 2
    assert f"{ok}: 1x1 pixels after --size is too small" in capsys.readouterr().err
    assert main(["explain", str(world["run"]), ok, str(world["root"] / "notimage.png"), "--out", str(out)]) == 2
    assert "notimage.png: unreadable" in capsys.readouterr().err and not out.exists()


def test_a_failed_explain_leaves_no_empty_folder(world, tmp_path, capsys, monkeypatch):
    def fail(*args, **kwargs):
        raise ValueError("disk full (simulated)")

    monkeypatch.setattr("consistcam.report.save_overlay", fail)
    out = tmp_path / "overlays"
    assert main(["explain", str(world["run"]), str(world["root"] / "ok.png"), "--out", str(out)]) == 2
    assert "disk full (simulated)" in capsys.readouterr().err and not out.exists()
    (out / "kept").mkdir(parents=True)  # a folder that was there before is left as it was
    assert main(["explain", str(world["run"]), str(world["root"] / "ok.png"), "--out", str(out)]) == 2
    assert [p.name for p in out.iterdir()] == ["kept"]


@pytest.mark.parametrize("command", ["fool", "vae train"])
def test_commands_without_resume_do_not_advise_it(world, tmp_path, capsys, command):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(_fill(OUT_COMMANDS[command], {**world, "out": tmp_path})) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path} already holds files; use --overwrite to replace it or choose another --out" in err, err
    assert "--resume" not in err and (tmp_path / "notes.txt").read_text() == "mine"
