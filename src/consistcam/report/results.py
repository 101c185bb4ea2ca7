"""The files ``consistcam evaluate`` writes, and reading them back for the report.

An evaluation folder (``RUN/eval`` by default) holds ``metrics.json`` (``meta``: command, data,
explainers, protocols, seeds, classes, run folder and the per-split file names; ``splits``: every
metric per split), ``per_sample_<split>.safetensors`` (id, label, pred, E, S, P, flipped, energy,
energy_gain as far as the protocols and data give them) and ``examples_<split>.safetensors`` (the
best and worst examples by each ranking key: ``<key>/<best|worst>/<field>``). The report reads
only these files: it never needs the model or the data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

METRICS_FILE = "metrics.json"


def per_sample_file(split: str) -> str:
    return f"per_sample_{split}.safetensors"


def examples_file(split: str) -> str:
    return f"examples_{split}.safetensors"


def _load(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


@dataclass
class SavedEvaluation:
    """One evaluation folder as written by :func:`consistcam.evaluation.evaluate_run`."""

    eval_dir: Path
    meta: dict
    splits: dict[str, dict]

    def _file(self, split: str, kind: str) -> Path | None:
        name = self.meta.get("files", {}).get(split, {}).get(kind)
        return self.eval_dir / name if name and (self.eval_dir / name).is_file() else None

    def per_sample(self, split: str) -> dict[str, Tensor]:
        path = self._file(split, "per_sample")
        return _load(path) if path else {}

    def examples(self, split: str) -> dict[str, Tensor]:
        """Flat ``{"<key>/<side>/<field>": tensor}`` (empty if none were saved)."""
        path = self._file(split, "examples")
        return _load(path) if path else {}

    @property
    def run_dir(self) -> Path | None:
        """The run folder (training curves, ECL rounds): the parent of ``eval/`` or the one recorded."""
        recorded = [Path(self.meta["run"])] if self.meta.get("run") else []
        for candidate in (self.eval_dir.parent, *recorded):
            if any((candidate / f).exists() for f in ("metrics.jsonl", "model.safetensors")):
                return candidate
        return None

    @property
    def name(self) -> str:
        return (self.run_dir or self.eval_dir).name


def read_evaluation(path: str | Path) -> SavedEvaluation:
    """``path``: an evaluation folder, a run folder holding ``eval/``, or a ``metrics.json`` file."""
    path = Path(path)
    if path.is_dir() and not (path / METRICS_FILE).is_file():
        path = path / "eval"
    metrics = path if path.is_file() else path / METRICS_FILE
    if not metrics.is_file():
        raise FileNotFoundError(f"{metrics}: no {METRICS_FILE} (run `consistcam evaluate` first)")
    doc = json.loads(metrics.read_text())
    return SavedEvaluation(metrics.parent, doc.get("meta", {}), doc["splits"])
