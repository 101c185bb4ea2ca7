"""Fooling interpretations by adversarial model manipulation (Heo, Joo, Moon, NeurIPS 2019): a
stress test of how far a model's explanations can be changed while its accuracy is kept.

``fool_run(RUN, OUT, FoolConfig(kind=...))`` is what ``consistcam fool`` runs; the losses, the
fine-tuning loop and the metrics (fooling success rate, Spearman rank correlation) are usable alone.
"""

from consistcam.fool.finetune import KINDS, FoolConfig, fool_model, fooling_loss, frozen_copy, measure_fooling
from consistcam.fool.losses import (
    REGIONS,
    active_loss,
    center_mass_distance,
    center_mass_loss,
    center_of_mass,
    location_loss,
    location_target,
    topk_indices,
    topk_loss,
)
from consistcam.fool.maps import GRADIENT, fool_explainers, fool_maps, input_gradient
from consistcam.fool.metrics import FSR_RANGES, average_ranks, fooling_success, fooling_success_rate, spearman
from consistcam.fool.run import fool_run
from consistcam.run.layout import FOOL_EXAMPLES_FILE, FOOL_FILE  # the files fool_run writes

__all__ = [
    "FOOL_EXAMPLES_FILE",
    "FOOL_FILE",
    "FSR_RANGES",
    "GRADIENT",
    "KINDS",
    "REGIONS",
    "FoolConfig",
    "active_loss",
    "average_ranks",
    "center_mass_distance",
    "center_mass_loss",
    "center_of_mass",
    "fool_explainers",
    "fool_maps",
    "fool_model",
    "fool_run",
    "fooling_loss",
    "fooling_success",
    "fooling_success_rate",
    "frozen_copy",
    "input_gradient",
    "location_loss",
    "location_target",
    "measure_fooling",
    "spearman",
    "topk_indices",
    "topk_loss",
]
