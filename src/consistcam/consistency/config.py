"""The options of explanation consistency, in three parts, each validated when it is built:

* :class:`ConsistencyConfig`, the scorer: how E is computed (explainer, foreground, attack, S, P, lam);
  evaluation's consistency protocol and ECL both use it;
* :class:`WeightConfig`, ECL's training weights v from the scores (tempering, scheme, EMA);
* :class:`ExecutionConfig`, how a scoring pass runs (a BatchNorm-folded, channels-last copy, bf16
  autocast): the same E up to float rounding.

In a training config they sit under ``ecl.consistency``, ``ecl.weights`` and ``ecl.execution``
(:class:`~consistcam.consistency.ecl.ECLConfig`, which maps the keys they had when all three were
``ecl.consistency``, e.g. ``ecl.consistency.weight_power`` -> ``ecl.weights.power``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from consistcam.config import ConfigError, from_dict, option, registered, validate
from consistcam.consistency.similarity import PREDICTION_CONSISTENCIES, SIMILARITIES
from consistcam.consistency.weights import WEIGHT_SCHEMES
from consistcam.explain import EXPLAINERS, check_explainer_options

ATTACKS = ("pgd", "fgsm", "noise", "none")
MASKS = ("heatmap", "gt", "boxes", "mask", "none")


@dataclass
class ConsistencyConfig:
    """The scorer: every choice of how E is computed; README.md's table of ``ecl.consistency.*`` options
    gives the defaults and the alternatives."""

    explainer: str = option("gradcam", "explainer of h and h_adv", check=registered(EXPLAINERS))
    layer: str | None = option(None, "target layer (dotted name); default: the last spatial stage")
    target: str = option("label", "class explained (and attacked): the label or the prediction",
                         choices=("label", "prediction"))
    mask: str = option("heatmap", "source of the foreground the attack must not touch", choices=MASKS)
    tau: float = option(0.5, "foreground = heatmap >= tau", ge=0.0, le=1.0)
    top_q: float | None = option(None, "foreground = the top_q fraction of heatmap pixels (instead of tau)",
                                 gt=0.0, le=1.0)
    dilation: int = option(0, "grow the foreground by this many pixels", ge=0)
    attack: str = option("pgd", "background perturbation", choices=ATTACKS)
    norm: str = option("linf", "attack norm", choices=("linf", "l2"))
    eps: float = option(8 / 255, "attack budget (pixels in [0, 1])", ge=0.0)
    alpha: float = option(2 / 255, "PGD step size", gt=0.0)
    steps: int = option(5, "PGD steps", ge=1)
    random_start: bool = option(True, "PGD starts at a random point of the eps-ball")
    objective: str = option("ce", "attack objective: cross-entropy or explanation shift (1 - cos)",
                            choices=("ce", "explanation"))
    similarity: str = option("cosine", "heatmap similarity S", check=registered(SIMILARITIES))
    prediction: str = option("js", "prediction consistency P", check=registered(PREDICTION_CONSISTENCIES))
    lam: float = option(0.5, "E = lam * S + (1 - lam) * P", ge=0.0, le=1.0)
    seed: int = option(0, "seed of the attack's random start")
    explainer_options: dict = option(help="extra options of the explainer (e.g. steps, batch_size)",
                                     default_factory=dict)

    def __post_init__(self) -> None:
        validate(self)
        try:  # a typo in an explainer option fails here, not at the first scoring pass
            check_explainer_options(self.explainer_options)
        except ValueError as err:
            raise ConfigError(f"explainer_options: {err}") from None

    @classmethod
    def from_dict(cls, d: Mapping | None, where: str = "consistency") -> ConsistencyConfig:
        return from_dict(cls, d, where)


@dataclass
class WeightConfig:
    """ECL's training weights v from the scores E (:func:`~consistcam.consistency.consistency_weights`)."""

    # tempered by default: the literal v = 1 - E (power 1, floor 0) lost accuracy against these values
    # on the shortcut benchmark's val split and energy on the demo's (docs/results.md, ECL ablations)
    floor: float = option(0.5, "v = floor + (1 - floor) * v (0 with power 1: the paper's literal v = 1 - E)",
                          ge=0.0, lt=1.0)
    power: float = option(0.5, "v proportional to (1 - E) ** power", gt=0.0)
    scheme: str = option("value", "v from the value of 1 - E, or from its rank over the data set "
                         "(rank: only the order of E matters)", choices=WEIGHT_SCHEMES)
    ema: float = option(0.0, "EMA of v over scoring rounds (0 = none)", ge=0.0, lt=1.0)

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class ExecutionConfig:
    """How a scoring pass (score_dataset) runs: none of these changes E beyond float rounding."""

    fold_batchnorm: bool = option(True, "run a copy of the model with eval-mode BatchNorm folded into the "
                                  "convolutions (same function up to float rounding)")
    channels_last: bool = option(True, "channels-last layout for the copy and the images (faster convolutions "
                                 "on the CPU; float rounding only)")
    amp: str = option("auto", "bfloat16 autocast of the explained forwards and the attack; auto = on CUDA only "
                      "(on the CPU bf16 is slower); E and v stay float32 (tests/consistency: v agrees with fp32 "
                      "within 0.03)", choices=("auto", "bf16", "off"))

    def __post_init__(self) -> None:
        validate(self)
