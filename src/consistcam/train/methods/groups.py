"""Group labels for the group-robustness baselines (``groupdro``, ``reweight_groups``).

A group is a (class, attribute) cell, as in Sagawa et al. (ICLR 2020). The attribute comes from the
background group each sample of the demo and shortcut data sets carries (``sample["group"]``):

* ``class_alignment`` (default): the attribute is whether the background agrees with the class
  (:func:`consistcam.metrics.groups.alignment`), 2 cells per class: the cells the evaluation's
  worst-group accuracy is taken over, so the method optimises what is reported.
* ``class_background``: the attribute is the background group itself, C x C cells (Waterbirds'
  (bird, place) cells when C = 2; with C = 10 most cells hold a handful of images).

Using them is an *oracle*: the methods read annotations that ECL, CGC and JTT never see.
"""

from __future__ import annotations

import torch
from torch import Tensor

from consistcam.metrics.groups import alignment
from consistcam.train.methods.base import MethodContext

GROUPINGS = ("class_alignment", "class_background")


def num_groups(num_classes: int, grouping: str) -> int:
    if grouping not in GROUPINGS:
        raise ValueError(f"grouping must be one of {', '.join(GROUPINGS)}, got {grouping!r}")
    return num_classes * (2 if grouping == "class_alignment" else num_classes)


def group_index(labels: Tensor, backgrounds: Tensor, num_classes: int, grouping: str) -> Tensor:
    """The cell of each sample: ``2 * label + conflicting`` or ``num_classes * label + background``."""
    num_groups(num_classes, grouping)  # checks the name
    if grouping == "class_alignment":
        return 2 * labels.long() + alignment(labels, backgrounds)
    return num_classes * labels.long() + backgrounds.long()


def conflicting_groups(num_classes: int, grouping: str) -> Tensor:
    """(G,) bool: the cells whose background is not their class (the minority of a shortcut set)."""
    cells = torch.arange(num_groups(num_classes, grouping))
    if grouping == "class_alignment":
        return cells % 2 == 1
    return cells // num_classes != cells % num_classes


def training_groups(ctx: MethodContext, method: str, grouping: str,
                    batch_size: int = 250) -> tuple[Tensor, int]:
    """(group of every sample id on ``ctx.device``, -1 for ids not trained on; number of classes),
    from one pass over the un-augmented training set (shards gathered under DDP)."""
    ids, labels, backgrounds = [], [], []
    for batch in ctx.scoring_loader(batch_size):
        if "group" not in batch:
            raise ValueError(f"{method} needs the background group of every training image (an oracle annotation: "
                             "the demo and shortcut data sets carry it); this training data has none")
        ids.append(batch["id"])
        labels.append(batch["label"])
        backgrounds.append(batch["group"])
    ids, labels, backgrounds = (ctx.gather(torch.cat(t).to(ctx.device)) for t in (ids, labels, backgrounds))
    num_classes = max(len(ctx.classes), int(labels.max()) + 1, int(backgrounds.max()) + 1)
    table = torch.full((ctx.num_samples,), -1, dtype=torch.long, device=ctx.device)
    table[ids] = group_index(labels, backgrounds, num_classes, grouping)
    return table, num_classes


def group_counts(table: Tensor, groups: int) -> Tensor:
    """Training samples per cell (float, on the table's device); ids not trained on are left out."""
    return torch.bincount(table[table >= 0], minlength=groups).float()


def inverse_frequency_weights(table: Tensor, groups: int) -> Tensor:
    """Per-sample weights N / (G' · n_g) from the group of each id (-1: not trained, weight 0): every
    non-empty cell carries the same total weight, and the mean over trained samples is 1."""
    counts = group_counts(table, groups)
    trained = table >= 0
    per_group = trained.sum() / ((counts > 0).sum() * counts.clamp_min(1))
    return per_group[table.clamp_min(0)] * trained
