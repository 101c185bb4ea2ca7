"""The evaluation pass: one streaming loop over a loader computing every protocol
(:data:`PROTOCOLS`) that the data allows, for one or more explainers.

Keys of the result: recognition (``acc``, ``acc_top5``, ``acc_per_class``; ``mAP``, ``f1_macro``,
``f1_per_class`` and ``acc`` = exact match for multi-label
data), then per explainer: localisation (``energy``, ``energy_uniform_baseline``,
``energy_small_objects``, ``pointing_game``, ``pointing_game_class_mean``, ``mask_iou@0.3``,
``mask_iou@0.5``), faithfulness (``insertion``, ``deletion``, ``ins_minus_del``, ``average_drop``,
``increase_in_confidence``, ``average_drop_top15``, ``increase_in_confidence_top15``), the model's
own explanation consistency (``consistency_E``, ``adv_flip_rate``) and ``equivariance``; then
``fgsm@k/255`` / ``pgd10@k/255`` robustness. Multi-label data gets ``mAP`` and localisation with one
heatmap per image and positive class, scored against that class's boxes. Keys of the first
explainer carry no prefix; those of further explainers are prefixed ``<explainer>/``.

Cost per batch and explainer: the clean image is explained once (by the consistency pass, whose
logits also give the accuracy); every other protocol reuses that heatmap. The faithfulness
protocol's forwards (:mod:`consistcam.evaluation.faithfulness`: insertion/deletion curves, 2 x
steps forwards per image, and the masked confidences) run batched on a BatchNorm-folded,
channels-last copy of the model (:func:`consistcam.evaluation.forward.forward_model`; equal up to
float rounding); the consistency pass, whose attack follows gradient signs, runs on the model
itself. The metrics are torchmetrics ``MetricCollection``s of :mod:`consistcam.metrics` leaves,
fed tensors only.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MultilabelAveragePrecision,
    MultilabelExactMatch,
    MultilabelF1Score,
)

from consistcam.consistency import ConsistencyConfig, explanation_consistency, unpack_batch
from consistcam.data.masks import mask_from_boxes
from consistcam.evaluation.equivariance import heatmap_equivariance
from consistcam.evaluation.examples import RANKINGS, ExtremeExamples
from consistcam.evaluation.faithfulness import insertion_deletion_curves, masked_probability
from consistcam.evaluation.forward import forward_model
from consistcam.evaluation.robustness import attack_images
from consistcam.explain import explain
from consistcam.metrics import (
    DEFAULT_EPSILONS,
    AdversarialAccuracy,
    ConfidenceChange,
    EnergyPointingGame,
    InsertionDeletion,
    MaskIoU,
    MeanMetric,
    PointingGame,
    energy_inside,
)
from consistcam.models.state import preserved_state
from consistcam.utils import model_device, progress_bar

PROTOCOLS = ("localization", "faithfulness", "consistency", "equivariance", "robustness")
# One random stream per protocol, seeded seed + offset, so no result depends on which other
# protocols or explainers run (every explainer sees the same attack starts and the same crops).
STREAM_OFFSETS = {"consistency": 0, "equivariance": 1, "robustness": 2}


def stream_seeds(seed: int) -> dict[str, int]:
    """The seed of each protocol's random stream (recorded with the results)."""
    return {name: seed + offset for name, offset in STREAM_OFFSETS.items()}


def object_masks(images: Tensor, boxes, masks: Tensor | None) -> Tensor | None:
    """The ground-truth object mask of a batch: the pixel mask if given, else the union of boxes."""
    if masks is not None:
        return (masks > 0.5).float()
    if boxes is not None:
        return mask_from_boxes(boxes, images.shape[-2:], images.device)
    return None


IOU_THRESHOLDS = {"mask_iou_30": 0.3, "mask_iou_50": 0.5}  # a metric's name holds no dot: mask_iou@0.3 in the result
IOU_KEYS = {name: f"mask_iou@{t}" for name, t in IOU_THRESHOLDS.items()}


def _collection(metrics: dict[str, Metric]) -> MetricCollection:
    """The metrics as a MetricCollection in the order given (the order of the results and of the
    report's rows; a dict given at once would be sorted by name), without compute groups."""
    collection = MetricCollection([], compute_groups=False)
    for name, metric in metrics.items():
        collection.add_metrics({name: metric})
    return collection


def localization_metrics(side: int, num_classes: int, tolerance: int | None = None) -> MetricCollection:
    """Energy in the object (with its uniform baseline), pointing game (per class too; tolerance 15 px
    at 224 px unless given, scaled to heatmaps of ``side`` pixels) and mask IoU at 0.3 and 0.5,
    updated with ``(heatmaps, object masks, labels=classes)``."""
    tolerance = tolerance if tolerance is not None else round(15 * side / 224)
    return _collection({"energy": EnergyPointingGame(), "pointing": PointingGame(tolerance, num_classes),
                        **{name: MaskIoU(t) for name, t in IOU_THRESHOLDS.items()}})


def protocol_metrics(protocols: set[str]) -> MetricCollection:
    """One explainer's faithfulness, consistency and equivariance metrics, each named as (or
    returning the keys of) its result; localisation is :func:`localization_metrics`, made at the
    first batch with object masks."""
    metrics: dict[str, Metric] = {}
    if "faithfulness" in protocols:
        metrics.update(insertion_deletion=InsertionDeletion(), confidence=ConfidenceChange(),
                       confidence_top15=ConfidenceChange(suffix="_top15"))
    if "consistency" in protocols:
        metrics.update(consistency_E=MeanMetric(), adv_flip_rate=MeanMetric())
    if "equivariance" in protocols:
        metrics["equivariance"] = MeanMetric()
    return _collection(metrics)


def _update_faithfulness(metrics: MetricCollection, forward: nn.Module, images: Tensor, heatmaps: Tensor,
                        classes: Tensor, clean_logits: Tensor, steps: int) -> None:
    """The faithfulness forwards of one batch (:mod:`consistcam.evaluation.faithfulness`, on
    ``forward``, the folded copy) into :func:`protocol_metrics`; the clean class probability is
    that of ``clean_logits`` (the explained forward's)."""
    clean = clean_logits.float().softmax(1).gather(1, classes[:, None]).squeeze(1)
    metrics["insertion_deletion"].update(*insertion_deletion_curves(forward, images, heatmaps, classes, steps))
    metrics["confidence"].update(clean, masked_probability(forward, images, heatmaps, classes))
    metrics["confidence_top15"].update(clean, masked_probability(forward, images, heatmaps, classes, top_fraction=0.15))


def _update_protocols(metrics: MetricCollection, forward: nn.Module | None, images: Tensor, classes: Tensor,
                      out: dict[str, Tensor], equivariance: Tensor | None, faithfulness_steps: int) -> None:
    """One explainer's batch into its :func:`protocol_metrics`: ``out`` is the consistency pass
    (heatmaps of ``classes``, the explained classes; E; flips; the clean logits)."""
    if "consistency_E" in metrics:
        metrics["consistency_E"].update(out["E"])
        metrics["adv_flip_rate"].update(out["flipped"].float())
    if "insertion_deletion" in metrics:
        _update_faithfulness(metrics, forward, images, out["heatmap"], classes, out["logits"], faithfulness_steps)
    if equivariance is not None:
        metrics["equivariance"].update(equivariance)


def _localize(metrics: MetricCollection | None, heatmaps: Tensor, gt: Tensor, classes: Tensor, num_classes: int,
              tolerance: int | None) -> MetricCollection:
    """``metrics`` (:func:`localization_metrics`, made at the first call) updated with one batch."""
    if metrics is None:
        metrics = localization_metrics(heatmaps.shape[-1], num_classes, tolerance).to(heatmaps.device)
    metrics.update(heatmaps, gt, labels=classes)
    return metrics


def _results(explainers: list[str], *collections: list[MetricCollection | None]) -> dict[str, float]:
    """Every explainer's results as floats: ``collections`` are lists with one collection per
    explainer (None: never made), computed in order; keys of the first explainer unprefixed."""
    res = {}
    for i, name in enumerate(explainers):
        prefix = "" if name == explainers[0] else f"{name}/"
        for metrics in (c[i] for c in collections if c[i] is not None):
            res.update({prefix + IOU_KEYS.get(k, k): v.item() for k, v in metrics.compute().items()})
    return res


def _multilabel_maps(model, images, labels, boxes, box_labels, configs):
    """One heatmap per (image, positive class), against the union of that class's boxes."""
    targets = [torch.nonzero(row).flatten().tolist() for row in labels]
    pairs = [(i, c) for i, cs in enumerate(targets) for c in cs]
    if not pairs:
        return [torch.zeros(0, 1, *images.shape[-2:], device=images.device)] * len(configs), \
            torch.zeros(0, 1, *images.shape[-2:], device=images.device), torch.zeros(0, dtype=torch.long)
    class_boxes = [boxes[i][torch.as_tensor(box_labels[i]) == c] for i, c in pairs]
    gt = mask_from_boxes(class_boxes, images.shape[-2:], images.device)
    classes = torch.tensor([c for _, c in pairs], device=images.device)
    heat = [torch.cat(explain(model, images, targets, explainer=cfg.explainer, layer=cfg.layer,
                              **cfg.explainer_options)) for cfg in configs]
    return heat, gt, classes


class _SampleRecorder:
    """Per-sample values and the best/worst examples of the first explainer."""

    def __init__(self, per_sample: bool, examples: int, protocols: set[str]) -> None:
        self.per_sample, self.protocols = per_sample, protocols
        self.values: dict[str, list[Tensor]] = {}
        self.extremes = {key: ExtremeExamples(examples) for key in RANKINGS} if examples else {}

    def update(self, images: Tensor, labels: Tensor, ids: Tensor, out: dict, gt: Tensor | None) -> None:
        if not (self.per_sample or self.extremes):
            return
        row = {"id": ids, "label": labels, "pred": out["pred"]}
        if "consistency" in self.protocols:
            row.update(E=out["E"], S=out["S"], P=out["P"], flipped=out["flipped"])
        if gt is not None:
            energy = energy_inside(out["heatmap"], gt).float()
            row.update(energy=energy, energy_gain=energy - gt.flatten(1).mean(1))
        if self.per_sample:
            for key, value in row.items():
                self.values.setdefault(key, []).append(value.detach())
        tensors = {"image": images, "heatmap": out["heatmap"]}
        if "consistency" in self.protocols:
            tensors.update(adversarial=out["adversarial"], heatmap_adv=out["heatmap_adv"])
        tensors.update({k: row[k] for k in ("label", "pred", "E", "energy", "energy_gain") if k in row})
        for key, collector in self.extremes.items():
            if key in row:
                collector.update(row[key], ids, tensors)

    def results(self) -> dict[str, dict[str, Tensor]]:
        out = {}
        if self.per_sample:
            out["per_sample"] = {k: torch.cat(v).cpu() for k, v in self.values.items()}
        if self.extremes:
            out["examples"] = {k: v for key, c in self.extremes.items() for k, v in c.tensors(key).items()}
        return out


def evaluate_model(
    model: nn.Module,
    loader,
    num_classes: int,
    explainer: str | list[str] = "gradcam",
    consistency: ConsistencyConfig | None = None,
    protocols: tuple[str, ...] | None = ("localization", "consistency"),
    pointing_tolerance: int | None = None,
    faithfulness_steps: int = 16,
    epsilons: tuple[float, ...] = DEFAULT_EPSILONS,
    progress: bool = False,
    device=None,
    max_batches: int | None = None,
    per_sample: bool = False,
    examples: int = 0,
) -> dict:
    """Evaluate ``model`` on ``loader`` (batches from :func:`consistcam.data.collate`).

    ``protocols``: any of :data:`PROTOCOLS` (``None`` = all); recognition is always computed.
    ``explainer``: one name or a list (the first is unprefixed in the result). ``consistency``
    sets the scorer of E (its explainer is replaced by each explainer in turn; its seed seeds the
    streams of :func:`stream_seeds`). Heatmaps are for the ground-truth class (the class the
    scorer explains) and come from the consistency pass. Of the first explainer, ``per_sample``
    adds ``result['per_sample']``: CPU tensors id, label, pred, (E, S, P, flipped with the
    consistency protocol), (energy and energy gain = energy minus the object's area fraction, the
    uniform heatmap's score, with object locations); ``examples=k`` adds ``result['examples']``,
    the k best and worst samples by each key of :data:`RANKINGS` with their image, heatmap,
    attacked image and its heatmap, as ``{"<key>/<best|worst>/<field>": tensor}``.
    """
    protocols = set(PROTOCOLS if protocols is None else protocols)
    unknown = protocols - set(PROTOCOLS)
    if unknown:
        raise ValueError(f"unknown protocol(s) {sorted(unknown)}; known: {', '.join(PROTOCOLS)}")
    explainers = [explainer] if isinstance(explainer, str) else list(explainer)
    device = torch.device(device) if device is not None else model_device(model)
    base_cfg = consistency or ConsistencyConfig(explainer=explainers[0])
    configs = [dataclasses.replace(base_cfg, explainer=e) for e in explainers]
    if "consistency" not in protocols:
        configs = [dataclasses.replace(c, attack="none") for c in configs]  # heatmaps only, no attack cost
    # no argument validation: it syncs with the host on every update, and the labels were checked
    # by the explained forward (their range) and the logits are the model's
    top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro", validate_args=False).to(device)
    top5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro", validate_args=False).to(device)
    per_class = MulticlassAccuracy(num_classes, average="none", validate_args=False).to(device)
    mean_ap = MultilabelAveragePrecision(num_classes, average="macro").to(device)
    f1 = MultilabelF1Score(num_classes, average="none").to(device)  # per class, at probability 0.5
    exact = MultilabelExactMatch(num_classes).to(device)  # every class of the image right
    robust = AdversarialAccuracy(epsilons=epsilons).to(device) if "robustness" in protocols else None
    per_expl = [protocol_metrics(protocols).to(device) for _ in explainers]
    localization: list[MetricCollection | None] = [None] * len(explainers)  # made at the first object masks
    seeds = stream_seeds(base_cfg.seed)

    def streams(name: str) -> list[torch.Generator]:
        return [torch.Generator(device=device).manual_seed(seeds[name]) for _ in explainers]

    generators, equi_generators = streams("consistency"), streams("equivariance")
    attack_generator = torch.Generator(device=device).manual_seed(seeds["robustness"])
    recorder = _SampleRecorder(per_sample, examples, protocols)
    multilabel = False
    forward = None  # the folded copy for the faithfulness protocol, made from the first batch
    with preserved_state(model, eval_mode=True):
        for b, batch in enumerate(progress_bar(loader, desc="evaluate", enabled=progress)):
            if max_batches is not None and b >= max_batches:
                break
            images, labels, ids, boxes, masks = unpack_batch(batch, device)
            if labels.dim() == 2:  # multi-hot: mAP, and localisation per (image, positive class)
                multilabel = True
                with torch.no_grad():
                    logits = model(images)
                for metric in (mean_ap, f1, exact):
                    metric.update(logits, labels.long())
                if "localization" in protocols and boxes is not None and batch.get("box_labels") is not None:
                    heat, gt, classes = _multilabel_maps(model, images, labels, boxes, batch["box_labels"], configs)
                    for k, maps in enumerate(heat):
                        localization[k] = _localize(localization[k], maps, gt, classes, num_classes, pointing_tolerance)
                continue
            gt = object_masks(images, boxes, masks)
            if forward is None and "faithfulness" in protocols:
                forward = forward_model(model, images)
            for k, (cfg, metrics, generator, equi_generator) in enumerate(
                    zip(configs, per_expl, generators, equi_generators)):
                with torch.no_grad():
                    out = explanation_consistency(model, images, labels, cfg, boxes=boxes, masks=masks,
                                                  generator=generator, return_images=True)
                if k == 0:
                    for metric in (top1, top5, per_class):
                        metric.update(out["logits"], labels)
                    recorder.update(images, labels, ids, out, gt)
                equi = None
                explained = labels if cfg.target == "label" else out["pred"]  # the class the maps are for
                if "equivariance" in protocols:  # the clean map of the consistency pass: x is explained once
                    equi = heatmap_equivariance(model, images, explained, cfg.explainer, cfg.layer,
                                                generator=equi_generator, heatmaps=out["heatmap"],
                                                **cfg.explainer_options)
                if gt is not None and "localization" in protocols:
                    localization[k] = _localize(localization[k], out["heatmap"], gt, explained, num_classes,
                                                pointing_tolerance)
                _update_protocols(metrics, forward, images, explained, out, equi, faithfulness_steps)
            if robust is not None:
                predictions = {}
                for attack, eps in robust.keys:
                    adv = attack_images(model, images, labels, attack, eps, attack_generator)
                    with torch.no_grad():
                        predictions[(attack, eps)] = model(adv).argmax(1)
                robust.update(predictions, labels)
    if multilabel:
        per_class_f1 = f1.compute()
        result = {"mAP": mean_ap.compute().item(), "acc": exact.compute().item(),
                  "f1_macro": per_class_f1.mean().item(), "f1_per_class": [round(v, 4) for v in per_class_f1.tolist()]}
        return {**result, **_results(explainers, localization)}
    result: dict = {"acc": top1.compute().item(), "acc_top5": top5.compute().item(),
                    "acc_per_class": [round(v, 4) for v in per_class.compute().tolist()]}
    result.update(_results(explainers, localization, per_expl))
    if robust is not None:
        result.update({k: v.item() for k, v in robust.compute().items()})
    result.update(recorder.results())
    return result
