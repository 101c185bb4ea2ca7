"""The life cycle of a run folder: ``running`` until the last epoch's files are on disk, then
``complete`` — a marker written last and atomically, so a kill at any moment leaves a folder that
``--resume`` completes and that ``evaluate`` can tell apart from a finished run.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from pathlib import Path

from consistcam.run.layout import (
    BUILTIN_METHOD_DIRS,
    CHECKPOINT_FILE,
    CONFIG_FILE,
    DIAGNOSIS_DIR,
    EVAL_DIR,
    FOOL_EXAMPLES_FILE,
    FOOL_FILE,
    INFLUENCE_DIR,
    KEPT_DIR,
    MODEL_FILE,
    REPORT_FILE,
    SKIPPED_FILE,
    STATUS_FILE,
    TENSORBOARD_DIR,
    TRAIN_METRICS_FILE,
)
from consistcam.utils import atomic_write


class RunFolderError(ValueError):
    """A run folder in a state the command cannot work with; the message says what to do."""


def read_status(run_dir: str | Path) -> dict:
    """``{"state": "running" | "complete", ...}``; a folder without the marker but with a checkpoint
    (written before 0.2) counts as running; no checkpoint either: ``{"state": "missing"}``."""
    run_dir = Path(run_dir)
    path = run_dir / STATUS_FILE
    if path.is_file():
        try:
            status = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise RunFolderError(f"{path}: corrupt run marker ({err}); delete it and resume the run") from None
        if not isinstance(status, dict) or status.get("state") not in ("running", "complete"):
            raise RunFolderError(f"{path}: not a consistcam run marker; delete it and resume the run")
        return status
    if (run_dir / CHECKPOINT_FILE).is_file():
        return {"state": "running"}
    return {"state": "missing"}


def write_status(run_dir: Path, state: str, **info) -> None:
    status = {"state": state, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
    atomic_write(run_dir / STATUS_FILE, lambda tmp: Path(tmp).write_text(json.dumps(status, indent=2) + "\n"))


def tensor_file_digests(run_dir: Path) -> dict[str, str]:
    """sha256 of the run's final tensor files, recorded in the complete marker: two runs of one command
    on the CPU have equal digests (the files are byte-identical), so comparing them checks reproducibility.
    Each file also carries a hash of its tensors, checked on every load (consistcam.utils.load_tensor_file)."""
    import hashlib

    names = (MODEL_FILE, CHECKPOINT_FILE)
    return {n: hashlib.sha256((run_dir / n).read_bytes()).hexdigest() for n in names if (run_dir / n).is_file()}


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete the temporary files of atomic writes that a killed process left behind."""
    stale = [p for p in run_dir.rglob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


# What a run folder holds that consistcam wrote: top-level files, and folders whose files have these
# suffixes (kept checkpoints, TensorBoard events, evaluation and influence outputs), besides the
# training method's folder (METHOD_FILES: what MethodContext.save_tensors writes).
RUN_FILES = frozenset({STATUS_FILE, CONFIG_FILE, CHECKPOINT_FILE, MODEL_FILE, TRAIN_METRICS_FILE, SKIPPED_FILE,
                       FOOL_FILE, FOOL_EXAMPLES_FILE, REPORT_FILE})
RUN_FOLDERS = {KEPT_DIR: (".safetensors",), TENSORBOARD_DIR: ("events.out.tfevents.",),
               EVAL_DIR: (".safetensors", ".json", ".html", ".png"),
               INFLUENCE_DIR: (".safetensors", ".json", ".html", ".png"), DIAGNOSIS_DIR: (".json", ".md", ".png")}
METHOD_FILES = (".safetensors",)
METHOD_DIR_KEY = "method_dir"  # in status.json: the folder of the training method's own files, or null


def method_dir_problem(name: object) -> str | None:
    """What is wrong with ``name`` as the folder of a training method's files (None if nothing): it
    must be a plain folder name that is none of the run's own files and folders."""
    if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name or "\\" in name:
        return f"{name!r} is not a plain folder name"
    if name in RUN_FILES or name in RUN_FOLDERS:
        return f"{name!r} is a run folder's own file or folder"
    return None


def method_dir(run_dir: str | Path) -> Path | None:
    """The folder of the run's training method's own files (``Method.output_dir``: ECL's scoring
    rounds, JTT's error set) as status.json records it; for a run without that record (trained
    before the trainer wrote it), the built-in method's folder it holds
    (:data:`~consistcam.run.layout.BUILTIN_METHOD_DIRS`). None when the method writes none."""
    run_dir = Path(run_dir)
    try:
        status = read_status(run_dir)
    except RunFolderError:
        status = {}
    if METHOD_DIR_KEY not in status:
        return next((run_dir / d for d in BUILTIN_METHOD_DIRS.values() if (run_dir / d).is_dir()), None)
    name = status[METHOD_DIR_KEY]
    return run_dir / name if name is not None and method_dir_problem(name) is None else None


def _is_temporary(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".tmp")


def _foreign_files(run_dir: Path) -> list[Path]:
    """Files and folders under ``run_dir`` that consistcam did not write (by name)."""
    own = method_dir(run_dir)
    folders = {**dict.fromkeys(BUILTIN_METHOD_DIRS.values(), METHOD_FILES),
               **({own.name: METHOD_FILES} if own is not None else {}), **RUN_FOLDERS}
    foreign = []
    for p in sorted(run_dir.iterdir()):
        if _is_temporary(p) or (p.name in RUN_FILES and p.is_file()):
            continue
        if p.name not in folders or not p.is_dir() or p.is_symlink():
            foreign.append(p)
            continue
        marks = folders[p.name]
        foreign += [q for q in sorted(p.rglob("*")) if not q.is_dir() or q.is_symlink()
                    if not _is_temporary(q) and not any(q.name.endswith(m) or q.name.startswith(m) for m in marks)]
    return foreign


def discard_unstarted_run(run_dir: Path) -> None:
    """After an error before the first checkpoint (an exception, not a kill): remove what this start
    wrote, so the folder is not left ``running`` with nothing to resume; files consistcam did not
    write stay, and so does the folder when they do."""
    if (run_dir / CHECKPOINT_FILE).is_file() or not run_dir.is_dir():
        return
    foreign = set(_foreign_files(run_dir))
    for p in sorted(run_dir.iterdir()):
        if p in foreign:
            continue
        if p.is_dir() and not p.is_symlink():
            if not any(q in foreign for q in p.rglob("*")):
                shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    if not any(run_dir.iterdir()):
        run_dir.rmdir()


def is_run_folder(run_dir: Path) -> bool:
    """A folder consistcam trained into: a valid run marker, or a config with a checkpoint or model."""
    try:
        state = read_status(run_dir)["state"] if run_dir.is_dir() else "missing"
    except RunFolderError:
        return False
    return state != "missing" or ((run_dir / CONFIG_FILE).is_file() and (run_dir / MODEL_FILE).is_file())


def prepare_new_run(run_dir: Path, overwrite: bool = False, resumable: bool = True) -> None:
    """Refuse to train into a folder that already holds something (unless ``overwrite``). ``overwrite``
    removes only a recognised run folder's own files, and refuses a folder holding anything else:
    it never deletes a file consistcam did not write. ``resumable=False``: the command has no
    ``--resume`` (``fool``, ``vae train``), so the refusal does not suggest it."""
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise RunFolderError(f"{run_dir} exists and is not a folder")
    if all(_is_temporary(p) for p in run_dir.iterdir()):
        remove_stale_temporaries(run_dir)  # only what a killed start left behind
        return
    if not overwrite:
        state = read_status(run_dir)["state"]
        what = f"a {state} run" if state != "missing" else "files"
        advice = (f"use --resume {run_dir} to continue it or --overwrite to replace it" if resumable
                  else "use --overwrite to replace it or choose another --out")
        raise RunFolderError(f"{run_dir} already holds {what}; {advice}")
    if not is_run_folder(run_dir):
        raise RunFolderError(f"--overwrite: {run_dir} is not a consistcam run folder (no {STATUS_FILE}, or "
                             f"{CONFIG_FILE} with {MODEL_FILE}); nothing was removed: choose another --out")
    foreign = _foreign_files(run_dir)
    if foreign:
        names = ", ".join(str(p.relative_to(run_dir)) for p in foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise RunFolderError(f"--overwrite: {run_dir} holds files consistcam did not write ({names}); nothing was "
                             "removed: move them away or choose another --out")
    shutil.rmtree(run_dir)


def require_complete(run_dir: str | Path, allow_incomplete: bool = False) -> None:
    """For ``evaluate``/``explain``/``report``: an unfinished run is an error unless allowed."""
    run_dir = Path(run_dir)
    if not (run_dir / STATUS_FILE).is_file() and not (run_dir / CHECKPOINT_FILE).is_file():
        return  # a bare model file or folder: nothing to check
    if read_status(run_dir)["state"] != "complete" and not allow_incomplete:
        raise RunFolderError(f"{run_dir} is not complete (training was interrupted); finish it with "
                             f"`consistcam train --resume {run_dir}` or pass --allow-incomplete")


def write_metrics(run_dir: str | Path, records: list[dict]) -> None:
    """Rewrite ``RUN/metrics.jsonl`` atomically with ``records`` (one JSON object a line)."""
    text = "".join(json.dumps(r) + "\n" for r in records)
    atomic_write(Path(run_dir) / TRAIN_METRICS_FILE, lambda tmp: Path(tmp).write_text(text))


def read_metrics(path: str | Path) -> list[dict]:
    """Records of a run's metrics.jsonl (``path``: the run folder or the file). A torn last line (a
    kill mid-write) is dropped with a warning; a bad line elsewhere is an error naming the file and line."""
    path = Path(path)
    if path.is_dir():
        path = path / TRAIN_METRICS_FILE
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:
            if n == len(lines):
                warnings.warn(f"{path}:{n}: dropping a torn last line ({err})", RuntimeWarning, stacklevel=2)
                break
            raise RunFolderError(f"{path}:{n}: corrupt metrics record ({err}); fix or delete that line") from None
        records.append(record)
    return records
