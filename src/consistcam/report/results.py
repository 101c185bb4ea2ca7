"""Reading back the files ``consistcam evaluate`` (and the trainer, ``fool``, ``diagnose``) wrote, for
the report; their names are :mod:`consistcam.run.layout`'s.

An evaluation folder (``RUN/eval`` by default) holds ``metrics.json`` (``meta``: command, data,
explainers, protocols, seeds, classes, run folder and the per-split file names; ``splits``: every
metric per split), ``per_sample_<split>.safetensors`` (id, label, pred, E, S, P, flipped, energy,
energy_gain as far as the protocols and data give them) and ``examples_<split>.safetensors`` (the
best and worst examples by each ranking key: ``<key>/<best|worst>/<field>``). The report reads
only these files: it never needs the model or the data.

Every reader here turns a damaged file (truncated, not JSON, not safetensors, missing fields) into a
:class:`ValueError` that names the file and how to rebuild it, instead of a parser's traceback.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from consistcam.run.layout import (
    DIAGNOSIS_DIR,
    DIAGNOSIS_FILE,
    EPOCH_FILES,
    EVAL_DIR,
    EVAL_METRICS_FILE,
    FOOL_EXAMPLES_FILE,
    FOOL_FILE,
    MODEL_FILE,
    SKIPPED_FILE,
    TRAIN_METRICS_FILE,
)
from consistcam.run.status import method_dir


def _redo(folder: Path | None) -> str:
    return f"re-run `consistcam evaluate {folder or 'RUN'}`"


def load_tensors(path: Path, fix: str, required: tuple[str, ...] = ()) -> dict[str, Tensor]:
    """A safetensors file, or a ValueError naming it and ``fix`` (what rebuilds it)."""
    from safetensors import SafetensorError

    from consistcam.utils import IntegrityError, load_tensor_file

    try:
        tensors, _ = load_tensor_file(path)
    except IntegrityError as err:
        raise ValueError(f"{err}; {fix}") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err}); it is damaged or truncated: "
                         f"{fix}") from None
    missing = [k for k in required if k not in tensors]
    if missing:
        raise ValueError(f"{path}: has no {', '.join(missing)}; {fix}")
    return tensors


def read_history(run_dir: Path) -> list[dict]:
    """The per-epoch records of a run folder's metrics.jsonl (empty if it has none)."""
    path = Path(run_dir) / TRAIN_METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            raise ValueError(f"{path}:{number}: not a JSON epoch record (the trainer writes one per line, with "
                             "'epoch'); the run was interrupted while writing it or the file was edited: delete or "
                             "fix that line (only the training curves come from this file, not the model)")
        records.append(record)
    return records


def read_rounds(run_dir: Path) -> list[tuple[str, dict[str, Tensor]]]:
    """(file stem, {"E", "weights"}) of every scoring round the run's method saved (ECL: one
    ``epoch_XXX.safetensors`` per round in its folder, :func:`consistcam.run.status.method_dir`), in order."""
    fix = f"delete it (the report then leaves that round out) or re-train {run_dir}"
    folder = method_dir(run_dir)
    rounds = []
    for path in sorted(folder.glob(EPOCH_FILES)) if folder is not None else ():
        tensors = load_tensors(path, fix, required=("E", "weights"))
        rounds.append((path.stem, {k: tensors[k] for k in ("E", "weights")}))
    return rounds


@dataclass
class SavedEvaluation:
    """One evaluation folder as written by :func:`consistcam.evaluation.evaluate_run`."""

    eval_dir: Path
    meta: dict
    splits: dict[str, dict]

    def _file(self, split: str, kind: str) -> Path | None:
        name = self.meta.get("files", {}).get(split, {}).get(kind)
        if name and "sha256" in self.meta and not (self.eval_dir / name).is_file():
            raise ValueError(f"{self.eval_dir / name}: missing, but {EVAL_METRICS_FILE} lists it; "
                             f"{_redo(self.run_dir)}")
        return self.eval_dir / name if name and (self.eval_dir / name).is_file() else None

    def _load(self, split: str, kind: str) -> tuple[Path | None, dict[str, Tensor]]:
        path = self._file(split, kind)
        return path, load_tensors(path, _redo(self.run_dir)) if path else {}

    def _verify(self, path: Path | None) -> None:
        """The file is the one metrics.json was written with (its manifest, evaluations since 0.x):
        a mix of two evaluations (one killed half-way) is refused, not rendered."""
        expected = self.meta.get("sha256", {}).get(path.name) if path is not None else None
        if expected is None and path is not None and "sha256" in self.meta:
            raise ValueError(f"{path}: not in the sha256 manifest of {self.eval_dir / EVAL_METRICS_FILE}; "
                             f"{_redo(self.run_dir)}")
        if expected is not None and hashlib.sha256(path.read_bytes()).hexdigest() != expected:
            raise ValueError(f"{path}: belongs to another evaluation than {self.eval_dir / EVAL_METRICS_FILE} (sha256 "
                             f"differs: an evaluation was interrupted while writing, or the file was changed); "
                             f"{_redo(self.run_dir)}")

    def per_sample(self, split: str) -> dict[str, Tensor]:
        path, tensors = self._load(split, "per_sample")
        bad = [k for k, t in tensors.items() if t.dim() != 1]
        if bad:
            raise ValueError(f"{path}: per-sample values {bad} are not 1-D; {_redo(self.run_dir)}")
        self._verify(path)
        return tensors

    def examples(self, split: str) -> dict[str, Tensor]:
        """Flat ``{"<key>/<side>/<field>": tensor}`` (empty if none were saved)."""
        path, tensors = self._load(split, "examples")
        groups: dict[str, set[str]] = {}
        for name in tensors:
            key, _, field = name.rpartition("/")
            if key.count("/") != 1:
                raise ValueError(f"{path}: entry {name!r} is not <key>/<side>/<field>; {_redo(self.run_dir)}")
            groups.setdefault(key, set()).add(field)
        for key, fields in groups.items():
            missing = {"id", "value", "image"} - fields
            if missing:
                raise ValueError(f"{path}: examples {key!r} lack {', '.join(sorted(missing))}; {_redo(self.run_dir)}")
        self._verify(path)
        return tensors

    @property
    def run_dir(self) -> Path | None:
        """The run folder (training curves, ECL rounds): the parent of ``eval/`` or the one recorded."""
        recorded = [Path(self.meta["run"])] if self.meta.get("run") else []
        for candidate in (self.eval_dir.parent, *recorded):
            if any((candidate / f).exists() for f in (TRAIN_METRICS_FILE, MODEL_FILE)):
                return candidate
        return None

    @property
    def name(self) -> str:
        return (self.run_dir or self.eval_dir).name


def _check_meta(meta: object) -> str | None:
    """What is wrong with metrics.json's ``meta`` (None if nothing): the report reads file names from
    it, so they must be plain names inside the evaluation folder."""
    if not isinstance(meta, dict):
        return "'meta' is not an object"
    if not isinstance(meta.get("command", ""), str):
        return "'meta.command' is not a string"
    classes = meta.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        return "'meta.classes' is not a list of class names"
    files = meta.get("files", {})
    if not isinstance(files, dict) or not all(isinstance(f, dict) for f in files.values()):
        return "'meta.files' is not {split: {kind: file name}}"
    for split, kinds in files.items():
        for name in kinds.values():
            if name is not None and (not isinstance(name, str) or Path(name).name != name or name in ("", ".", "..")):
                return f"'meta.files.{split}' names {name!r}, not a file in the evaluation folder"
    digests = meta.get("sha256", {})
    if not isinstance(digests, dict) or not all(isinstance(v, str) for v in digests.values()):
        return "'meta.sha256' is not {file name: sha256}"
    return None


def read_evaluation(path: str | Path) -> SavedEvaluation:
    """``path``: an evaluation folder, a run folder holding ``eval/``, or a ``metrics.json`` file."""
    path = Path(path)
    if path.is_dir() and not (path / EVAL_METRICS_FILE).is_file():
        path = path / EVAL_DIR
    metrics = path if path.is_file() else path / EVAL_METRICS_FILE
    if not metrics.is_file():
        raise FileNotFoundError(f"{metrics}: no {EVAL_METRICS_FILE} (run `consistcam evaluate` first)")
    fix = _redo(metrics.parent.parent if metrics.parent.name == EVAL_DIR else None)
    try:
        doc = json.loads(metrics.read_text(errors="replace"))
    except ValueError as err:
        raise ValueError(f"{metrics}: not valid JSON ({err}); the file is damaged or truncated: {fix}") from None
    splits = doc.get("splits") if isinstance(doc, dict) else None
    if not isinstance(splits, dict) or not all(isinstance(r, dict) for r in splits.values()):
        raise ValueError(f"{metrics}: no 'splits' object of metrics per split; {fix}")
    problem = _check_meta(doc.get("meta", {}))
    if problem:
        raise ValueError(f"{metrics}: {problem}; {fix}")
    return SavedEvaluation(metrics.parent, doc.get("meta", {}), splits)


def skipped_counts(run_dir: Path) -> dict[str, dict[str, int]]:
    """Entries a run skipped under ``--skip-bad`` (RUN/skipped.txt), counted per split and kind."""
    path = Path(run_dir) / SKIPPED_FILE
    counts: dict[str, dict[str, int]] = {}
    if not path.is_file():
        return counts
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        split, kind = parts[0], (parts[1] if len(parts) >= 4 else "image")  # 3 columns: written before kinds
        counts.setdefault(split, {})[kind] = counts.setdefault(split, {}).get(kind, 0) + 1
    return counts


def _load_json(path: Path, fix: str) -> object:
    """A JSON file, or a ValueError naming it and ``fix`` (what rebuilds it)."""
    try:
        return json.loads(path.read_text(errors="replace"))
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); the file is damaged or truncated: {fix}") from None


def read_fooling(run_dir: Path) -> tuple[dict, dict[str, Tensor]] | None:
    """``fool.json`` and its example maps of a run written by ``consistcam fool`` (None for a run
    that was not fooled); a damaged file is a ValueError naming it."""
    path = Path(run_dir) / FOOL_FILE
    if not path.is_file():
        return None
    fix = f"re-run `consistcam fool SOURCE --out {run_dir} --overwrite`"
    doc = _load_json(path, fix)
    if not isinstance(doc, dict) or not isinstance(doc.get("explainers"), dict) or not all(
            isinstance(v, dict) for v in doc["explainers"].values()):
        raise ValueError(f"{path}: no 'explainers' object of fooling metrics per explainer; {fix}")
    examples: dict[str, Tensor] = {}
    if (Path(run_dir) / FOOL_EXAMPLES_FILE).is_file():
        examples = load_tensors(Path(run_dir) / FOOL_EXAMPLES_FILE, fix, required=("image", "original", "fooled"))
    return doc, examples


def read_diagnosis(run_dir: Path) -> dict | None:
    """``RUN/diagnosis/diagnosis.json`` of ``consistcam diagnose`` (None for a run not diagnosed); a
    damaged file is a ValueError naming it."""
    path = Path(run_dir) / DIAGNOSIS_DIR / DIAGNOSIS_FILE
    if not path.is_file():
        return None
    fix = f"re-run `consistcam diagnose {run_dir}`"
    doc = _load_json(path, fix)
    rows = doc.get("rows") if isinstance(doc, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and {"source", "epoch"} <= set(r) for r in rows):
        raise ValueError(f"{path}: no 'rows' list of (source, epoch, metrics); {fix}")
    return doc
