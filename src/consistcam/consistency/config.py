"""``ConsistencyConfig``: every choice of the consistency scorer, validated when it is built."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from consistcam.consistency.similarity import PREDICTION_CONSISTENCIES, SIMILARITIES
from consistcam.explain import METHODS

ATTACKS = ("pgd", "fgsm", "noise", "none")


@dataclass
class ConsistencyConfig:
    """Every choice of the scoring pass; defaults are those of docs/method.md."""

    explainer: str = "gradcam"
    layer: str | None = None
    target: str = "label"  # or "prediction"
    mask: str = "heatmap"  # heatmap | gt | boxes | mask | none
    tau: float = 0.5
    top_q: float | None = None
    dilation: int = 0
    attack: str = "pgd"  # pgd | fgsm | noise | none
    norm: str = "linf"
    eps: float = 8 / 255
    alpha: float = 2 / 255
    steps: int = 5
    random_start: bool = True
    objective: str = "ce"  # or "explanation"
    similarity: str = "cosine"
    prediction: str = "js"
    lam: float = 0.5
    weight_floor: float = 0.0
    weight_power: float = 1.0
    weight_ema: float = 0.0
    seed: int = 0
    explainer_options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        METHODS.get(self.explainer)
        SIMILARITIES.get(self.similarity)
        PREDICTION_CONSISTENCIES.get(self.prediction)
        if self.target not in ("label", "prediction"):
            raise ValueError(f"consistency target must be 'label' or 'prediction', got {self.target!r}")
        if self.attack not in ATTACKS:
            raise ValueError(f"unknown attack {self.attack!r}; known: {', '.join(ATTACKS)}")
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1], got {self.lam}")

    @classmethod
    def from_dict(cls, d: Mapping | None) -> ConsistencyConfig:
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown consistency option(s) {unknown}; known: {sorted(known)}")
        return cls(**d)
