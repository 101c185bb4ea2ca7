"""What each metric of a report means, in one line, and which direction is better.

Looked up by the metric's name as ``evaluate`` writes it: an explainer prefix (``gradcam++/energy``)
and an attack budget (``pgd10@4/255``) are matched by the base name, so a new explainer or budget
needs no entry here. A metric without an entry is shown without a description, never dropped.
"""

from __future__ import annotations

# base name -> (meaning, better): better is "higher", "lower" or "" (a count or a reference value)
METRICS: dict[str, tuple[str, str]] = {
    "acc": ("top-1 accuracy on the split", "higher"),
    "acc_top5": ("top-5 accuracy", "higher"),
    "mAP": ("mean average precision over classes (multi-label)", "higher"),
    "group_acc": ("accuracy per group of the data (demo: background agrees with the class or not)", "higher"),
    "worst_group_acc": ("accuracy of the worst group: what a shortcut costs", "higher"),
    "group_count": ("images per group", ""),
    "energy": ("share of the heatmap's energy inside the object (energy pointing game)", "higher"),
    "energy_uniform_baseline": ("the energy a uniform heatmap would get (object area): the chance level", ""),
    "energy_small_objects": ("energy inside the object, small objects only", "higher"),
    "n_small_objects": ("number of small objects", ""),
    "pointing_game": ("share of heatmaps whose maximum lies on the object", "higher"),
    "pointing_game_class_mean": ("pointing game averaged per class", "higher"),
    "mask_iou": ("IoU of the thresholded heatmap with the object mask", "higher"),
    "insertion": ("area under the class probability as the most salient pixels are inserted", "higher"),
    "deletion": ("area under the class probability as the most salient pixels are deleted", "lower"),
    "ins_minus_del": ("insertion minus deletion", "higher"),
    "average_drop": ("relative drop of the class confidence when only the explained region is kept", "lower"),
    "increase_in_confidence": ("share of images whose confidence rises on the explained region alone", "higher"),
    "average_drop_top15": ("average drop keeping the top 15 % of the heatmap", "lower"),
    "increase_in_confidence_top15": ("increase in confidence keeping the top 15 % of the heatmap", "higher"),
    "consistency_E": ("explanation consistency E under a background-only attack (λ·S + (1−λ)·P)", "higher"),
    "adv_flip_rate": ("share of predictions flipped by the background-only attack", "lower"),
    "equivariance": ("similarity of the heatmap of a flipped/cropped image to the moved heatmap", "higher"),
    "bg_gap": ("accuracy on mixed_same minus mixed_rand (ImageNet-9 BG-gap): reliance on the background",
               "lower"),
    "bg/original": ("accuracy on the original images (ImageNet-9 variants)", "higher"),
    "bg/only_fg": ("accuracy with the background removed", "higher"),
    "bg/no_fg": ("accuracy with the object removed: high means the background alone decides", "lower"),
    "bg/mixed_same": ("accuracy with a background of the same class", "higher"),
    "bg/mixed_rand": ("accuracy with a random background", "higher"),
    "bg/mixed_next": ("accuracy with the next class's background", "higher"),
    "fgsm": ("accuracy under a full-image FGSM attack of that budget", "higher"),
    "pgd10": ("accuracy under a full-image 10-step PGD attack of that budget", "higher"),
    # fooling (fool.json)
    "fsr": ("fooling success rate: share of test images whose test loss is inside the paper's range", "lower"),
    "fsr_before": ("the same threshold on the unfooled maps: the FSR without any fooling", ""),
    "rank_corr": ("Spearman rank correlation of the original and the fooled map (mean over images)", "higher"),
    "rank_corr_std": ("its standard deviation over images", ""),
    "rank_corr_swap": ("active fooling: Spearman of the fooled map of class a with the original of class b",
                       "lower"),
    "test_loss": ("the fooling loss on the test images", ""),
    "acc_before": ("accuracy of the model before fooling", "higher"),
    "acc_after": ("accuracy after fooling: what the manipulation cost", "higher"),
}

ARROWS = {"higher": "↑", "lower": "↓", "": ""}


def base_name(metric: str) -> str:
    """``gradcam++/energy`` -> ``energy``; ``pgd10@4/255`` -> ``pgd10``; ``mask_iou@0.5`` -> ``mask_iou``;
    ``bg/only_fg`` stays (its prefix is part of the name)."""
    if metric in METRICS:
        return metric
    name = metric.split("@", 1)[0]
    if name in METRICS:
        return name
    tail = metric.split("/", 1)[1] if "/" in metric else metric
    return base_name(tail) if tail != metric else name


def describe(metric: str) -> tuple[str, str] | None:
    """(meaning, better) of a metric, None if unknown; an explainer prefix is named in the meaning."""
    base = base_name(metric)
    if base not in METRICS:
        return None
    meaning, better = METRICS[base]
    prefix = metric.split("/", 1)[0] if "/" in metric and not metric.startswith("bg/") and base != metric else ""
    if prefix and not metric.split("@", 1)[0].startswith(("fgsm", "pgd10")):
        meaning = f"{meaning} ({prefix} heatmaps)"
    return meaning, better


def is_better(metric: str, new: float, old: float) -> bool | None:
    """Whether ``new`` is better than ``old`` for this metric (None: no direction or equal)."""
    info = describe(metric)
    if info is None or not info[1] or new == old:
        return None
    return (new > old) == (info[1] == "higher")
