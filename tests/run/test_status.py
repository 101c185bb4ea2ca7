"""The life cycle of a run folder (running / complete), what --overwrite may remove, metrics.jsonl,
where the training method's own files are."""

from __future__ import annotations

import json

import pytest

from consistcam.run.layout import CHECKPOINT_FILE, CONFIG_FILE, ECL_DIR, MODEL_FILE, STATUS_FILE, TRAIN_METRICS_FILE
from consistcam.run.status import (
    METHOD_DIR_KEY,
    RunFolderError,
    discard_unstarted_run,
    is_run_folder,
    method_dir,
    prepare_new_run,
    read_metrics,
    read_status,
    remove_stale_temporaries,
    require_complete,
    tensor_file_digests,
    write_metrics,
    write_status,
)


def test_status_marker_life_cycle(tmp_path):
    assert read_status(tmp_path) == {"state": "missing"}
    (tmp_path / CHECKPOINT_FILE).write_text("x")
    assert read_status(tmp_path) == {"state": "running"}  # a checkpoint without a marker (before 0.2)
    write_status(tmp_path, "running", epochs=3)
    with pytest.raises(RunFolderError, match="is not complete"):
        require_complete(tmp_path)
    require_complete(tmp_path, allow_incomplete=True)
    write_status(tmp_path, "complete", epochs=3, sha256=tensor_file_digests(tmp_path))
    status = read_status(tmp_path)
    assert status["state"] == "complete" and status["epochs"] == 3 and list(status["sha256"]) == [CHECKPOINT_FILE]
    require_complete(tmp_path)
    require_complete(tmp_path / "bare")  # no marker and no checkpoint: nothing to check


def test_a_damaged_marker_is_an_error_naming_it(tmp_path):
    (tmp_path / STATUS_FILE).write_text("{not json")
    with pytest.raises(RunFolderError, match=f"{tmp_path / STATUS_FILE}: corrupt run marker"):
        read_status(tmp_path)
    (tmp_path / STATUS_FILE).write_text('{"state": "done"}')
    with pytest.raises(RunFolderError, match="not a consistcam run marker"):
        read_status(tmp_path)
    assert not is_run_folder(tmp_path)


def test_is_run_folder(tmp_path):
    assert not is_run_folder(tmp_path)
    (tmp_path / CONFIG_FILE).write_text("data: demo\n")
    assert not is_run_folder(tmp_path)
    (tmp_path / MODEL_FILE).write_text("x")
    assert is_run_folder(tmp_path)  # a config with a model (a run without its marker)


def test_overwrite_never_removes_a_file_consistcam_did_not_write(tmp_path):
    run = tmp_path / "run"  # a run folder (its files), then with a foreign file at the top and inside eval/
    for name in (STATUS_FILE, CONFIG_FILE, MODEL_FILE, "eval/metrics.json", "tb/events.out.tfevents.1.host",
                 "consistency/epoch_000.safetensors", "checkpoints/epoch_000.safetensors", f".{MODEL_FILE}.x.tmp",
                 "diagnosis/diagnosis.json", "diagnosis/diagnosis.md", "diagnosis/diagnosis.png"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text('{"state": "complete"}' if name == STATUS_FILE else "x")
    with pytest.raises(RunFolderError, match="already holds a complete run; use --resume"):
        prepare_new_run(run)
    for foreign in ("notes.txt", "eval/notes.txt", "diagnosis/notes.txt"):
        (run / foreign).write_text("precious\n")
        with pytest.raises(RunFolderError, match=f"holds files consistcam did not write \\({foreign}\\)"):
            prepare_new_run(run, overwrite=True)
        assert (run / foreign).read_text() == "precious\n" and (run / MODEL_FILE).is_file()
        (run / foreign).unlink()
    prepare_new_run(run, overwrite=True)  # only its own files: replaced
    assert not run.exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("precious\n")
    with pytest.raises(RunFolderError, match="is not a consistcam run folder"):
        prepare_new_run(other, overwrite=True)
    assert (other / "notes.txt").is_file()


def test_the_method_folder_is_the_recorded_one_or_the_builtin_one_of_an_older_run(tmp_path):
    assert method_dir(tmp_path) is None
    (tmp_path / ECL_DIR).mkdir()  # a run trained before status.json recorded the folder
    write_status(tmp_path, "complete")
    assert method_dir(tmp_path) == tmp_path / ECL_DIR
    write_status(tmp_path, "complete", **{METHOD_DIR_KEY: "mine"})
    assert method_dir(tmp_path) == tmp_path / "mine"
    for recorded in (None, "../elsewhere", "eval", 3):  # none, or nothing a method may name
        write_status(tmp_path, "complete", **{METHOD_DIR_KEY: recorded})
        assert method_dir(tmp_path) is None


def test_overwrite_removes_the_recorded_method_folder_with_the_run(tmp_path):
    run = tmp_path / "run"
    for name in (CONFIG_FILE, MODEL_FILE, "mine/epoch_000.safetensors"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("x")
    write_status(run, "complete")
    with pytest.raises(RunFolderError, match="did not write \\(mine\\)"):  # not recorded: not the run's
        prepare_new_run(run, overwrite=True)
    write_status(run, "complete", **{METHOD_DIR_KEY: "mine"})
    prepare_new_run(run, overwrite=True)
    assert not run.exists()


def test_an_unstarted_run_is_discarded_but_foreign_files_stay(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write_status(run, "running", epochs=1)
    (run / CONFIG_FILE).write_text("data: demo\n")
    (run / "notes.txt").write_text("precious\n")
    discard_unstarted_run(run)
    assert [p.name for p in run.iterdir()] == ["notes.txt"]
    (run / "notes.txt").unlink()
    write_status(run, "running", epochs=1)
    discard_unstarted_run(run)
    assert not run.exists()
    started = tmp_path / "started"
    started.mkdir()
    (started / CHECKPOINT_FILE).write_text("x")  # a checkpoint: resume continues it, nothing goes
    discard_unstarted_run(started)
    assert (started / CHECKPOINT_FILE).is_file()


def test_metrics_round_trip_and_a_torn_last_line(tmp_path):
    write_metrics(tmp_path, [{"epoch": 0, "loss": 1.0}, {"epoch": 1, "loss": 0.5}])
    assert read_metrics(tmp_path) == read_metrics(tmp_path / TRAIN_METRICS_FILE) == [{"epoch": 0, "loss": 1.0},
                                                                               {"epoch": 1, "loss": 0.5}]
    with open(tmp_path / TRAIN_METRICS_FILE, "a") as f:
        f.write('{"epoch": 2, "lo')
    with pytest.warns(RuntimeWarning, match=f"{TRAIN_METRICS_FILE}:3: dropping a torn last line"):
        assert len(read_metrics(tmp_path)) == 2
    (tmp_path / TRAIN_METRICS_FILE).write_text('{"epoch": 0\n' + json.dumps({"epoch": 1}) + "\n")
    with pytest.raises(RunFolderError, match=f"{TRAIN_METRICS_FILE}:1: corrupt metrics record"):
        read_metrics(tmp_path)
    assert read_metrics(tmp_path / "none") == []


def test_stale_temporaries_are_removed(tmp_path):
    (tmp_path / f".{MODEL_FILE}.abc.tmp").write_text("x")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / ".metrics.json.abc.tmp").write_text("x")
    (tmp_path / MODEL_FILE).write_text("x")
    assert len(remove_stale_temporaries(tmp_path)) == 2
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [MODEL_FILE]
