"""``EvaluationConfig``: every option of ``evaluate_run`` and ``consistcam evaluate``, defaults written once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from consistcam.config import from_dict, option, registered, validate
from consistcam.consistency import ConsistencyConfig
from consistcam.evaluation.pipeline import PROTOCOLS
from consistcam.explain import EXPLAINERS
from consistcam.run.layout import EVAL_METRICS_FILE


def _explainers_check(value: tuple) -> str | None:
    if not value:
        return "expected at least one explainer"
    for name in value:
        problem = registered(EXPLAINERS)(name)
        if problem:
            return f"{name!r}: {problem}"
    return None


def _protocols_check(value: tuple) -> str | None:
    unknown = sorted(set(value) - set(PROTOCOLS))
    return f"unknown protocol(s) {unknown}; known: {', '.join(PROTOCOLS)}" if unknown else None


@dataclass
class EvaluationConfig:
    """What an evaluation computes; where it reads and writes (run, data, splits, out) is not part of it."""

    explainers: tuple[str, ...] = option(("gradcam",), f"explainer(s); the first is unprefixed in {EVAL_METRICS_FILE}",
                                         check=_explainers_check)
    protocols: tuple[str, ...] = option(PROTOCOLS, "evaluation protocols", check=_protocols_check)
    background: bool = option(True, "background-reliance variants (computed when the data has boxes or masks)")
    faithfulness_steps: int = option(16, "insertion/deletion steps", ge=1)
    subset: int | None = option(None, "first N images of each split only (quick look)", ge=1)
    batch_size: int = option(200, "evaluation batch size", ge=1)
    workers: int = option(0, "data loader worker processes", ge=0)
    seed: int = option(0, "seed of attacks, crops and background partners")
    device: str = option("auto", "device: auto (the run's device if it exists here), cpu, cuda, cuda:N or mps")
    skip_bad: bool | None = option(None, "skip unreadable images and bad annotations (default: what the run "
                                         "was trained with)")
    examples: int = option(4, "best and worst samples saved per ranking for the report", ge=0)
    consistency: ConsistencyConfig = option(
        help="scorer of the consistency protocol (its explainer and seed are the evaluation's): "
             "--set consistency.steps=3", default_factory=ConsistencyConfig)

    def __post_init__(self) -> None:
        if isinstance(self.explainers, str):  # evaluate_run(run, explainers="layercam")
            self.explainers = (self.explainers,)
        validate(self)

    @classmethod
    def from_dict(cls, d: Mapping | None) -> EvaluationConfig:
        return from_dict(cls, d)
