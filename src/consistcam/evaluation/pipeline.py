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


class _Recognition:
    """Recognition metrics: top-1, top-5 and per-class accuracy of single-label batches (fed the
    explained forward's logits, so recognition costs no forward of its own), mAP, F1 per class and
    exact match of multi-hot ones (fed a plain forward's). A pass with any multi-hot batch reports
    the multi-label metrics."""

    def __init__(self, num_classes: int, device: torch.device) -> None:
        # no argument validation: it syncs with the host on every update, and the labels were checked
        # by the explained forward (their range) and the logits are the model's
        self.top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro", validate_args=False).to(device)
        self.top5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro",
                                       validate_args=False).to(device)
        self.per_class = MulticlassAccuracy(num_classes, average="none", validate_args=False).to(device)
        self.mean_ap = MultilabelAveragePrecision(num_classes, average="macro").to(device)
        self.f1 = MultilabelF1Score(num_classes, average="none").to(device)  # per class, at probability 0.5
        self.exact = MultilabelExactMatch(num_classes).to(device)  # every class of the image right
        self.multilabel = False

    def update(self, logits: Tensor, labels: Tensor) -> None:
        if labels.dim() == 2:
            self.multilabel = True
            for metric in (self.mean_ap, self.f1, self.exact):
                metric.update(logits, labels.long())
        else:
            for metric in (self.top1, self.top5, self.per_class):
                metric.update(logits, labels)

    def results(self) -> dict:
        if self.multilabel:
            per_class_f1 = self.f1.compute()
            return {"mAP": self.mean_ap.compute().item(), "acc": self.exact.compute().item(),
                    "f1_macro": per_class_f1.mean().item(),
                    "f1_per_class": [round(v, 4) for v in per_class_f1.tolist()]}
        return {"acc": self.top1.compute().item(), "acc_top5": self.top5.compute().item(),
                "acc_per_class": [round(v, 4) for v in self.per_class.compute().tolist()]}


@dataclasses.dataclass
class _ExplainerPass:
    """One explainer's share of the pass. Each explainer has its own generators, seeded alike, so
    its results do not depend on which other explainers run."""

    config: ConsistencyConfig  # the scorer, with this explainer
    metrics: MetricCollection  # :func:`protocol_metrics`
    generator: torch.Generator  # the consistency pass's attack starts
    equivariance_generator: torch.Generator  # the equivariance protocol's transforms
    localization: MetricCollection | None = None  # :func:`localization_metrics`, made at the first object masks


def _explainer_passes(base_cfg: ConsistencyConfig, explainers: list[str], protocols: set[str],
                      device: torch.device) -> list[_ExplainerPass]:
    """One :class:`_ExplainerPass` per explainer; without the consistency protocol the scorer runs
    no attack (the pass then only makes the heatmaps)."""
    seeds = stream_seeds(base_cfg.seed)
    passes = []
    for name in explainers:
        cfg = dataclasses.replace(base_cfg, explainer=name)
        if "consistency" not in protocols:
            cfg = dataclasses.replace(cfg, attack="none")  # heatmaps only, no attack cost
        passes.append(_ExplainerPass(cfg, protocol_metrics(protocols).to(device),
                                     torch.Generator(device=device).manual_seed(seeds["consistency"]),
                                     torch.Generator(device=device).manual_seed(seeds["equivariance"])))
    return passes


def _multilabel_batch(model: nn.Module, images: Tensor, labels: Tensor, boxes, box_labels,
                      recognition: _Recognition, passes: list[_ExplainerPass], protocols: set[str],
                      num_classes: int, tolerance: int | None) -> None:
    """A multi-hot batch: mAP from a plain forward, and localisation per (image, positive class)
    where the boxes carry their classes; the other protocols do not apply to multi-label data."""
    with torch.no_grad():
        logits = model(images)
    recognition.update(logits, labels)
    if "localization" in protocols and boxes is not None and box_labels is not None:
        heat, gt, classes = _multilabel_maps(model, images, labels, boxes, box_labels, [p.config for p in passes])
        for state, maps in zip(passes, heat):
            state.localization = _localize(state.localization, maps, gt, classes, num_classes, tolerance)


def _score_explainer(model: nn.Module, state: _ExplainerPass, forward: nn.Module | None, images: Tensor,
                     labels: Tensor, gt: Tensor | None, out: dict[str, Tensor], protocols: set[str],
                     num_classes: int, tolerance: int | None, faithfulness_steps: int) -> None:
    """One explainer's protocols on a single-label batch, all from the clean heatmap of its
    consistency pass ``out`` (so the clean image is explained once)."""
    cfg = state.config
    explained = labels if cfg.target == "label" else out["pred"]  # the class the maps are for
    equi = None
    if "equivariance" in protocols:
        equi = heatmap_equivariance(model, images, explained, cfg.explainer, cfg.layer,
                                    generator=state.equivariance_generator, heatmaps=out["heatmap"],
                                    **cfg.explainer_options)
    if gt is not None and "localization" in protocols:
        state.localization = _localize(state.localization, out["heatmap"], gt, explained, num_classes, tolerance)
    _update_protocols(state.metrics, forward, images, explained, out, equi, faithfulness_steps)


def _attack_batch(model: nn.Module, images: Tensor, labels: Tensor, robust: AdversarialAccuracy,
                  generator: torch.Generator) -> None:
    """The robustness protocol on one batch: the model's predictions on each full-image attack of
    :class:`AdversarialAccuracy`'s (attack, epsilon) grid."""
    predictions = {}
    for attack, eps in robust.keys:
        adv = attack_images(model, images, labels, attack, eps, generator)
        with torch.no_grad():
            predictions[(attack, eps)] = model(adv).argmax(1)
    robust.update(predictions, labels)


def _checked_protocols(protocols: tuple[str, ...] | None) -> set[str]:
    """The protocols to run (``None``: all), an unknown name refused before any work."""
    protocols = set(PROTOCOLS if protocols is None else protocols)
    unknown = protocols - set(PROTOCOLS)
    if unknown:
        raise ValueError(f"unknown protocol(s) {sorted(unknown)}; known: {', '.join(PROTOCOLS)}")
    return protocols


def _pass_results(explainers: list[str], recognition: _Recognition, passes: list[_ExplainerPass],
                  robust: AdversarialAccuracy | None, recorder: _SampleRecorder) -> dict:
    """The result in its documented key order: recognition, each explainer's localisation and
    protocols, robustness, then the recorder's tensors; multi-label data has recognition and
    localisation only."""
    localization = [p.localization for p in passes]
    if recognition.multilabel:
        return {**recognition.results(), **_results(explainers, localization)}
    result = recognition.results()
    result.update(_results(explainers, localization, [p.metrics for p in passes]))
    if robust is not None:
        result.update({k: v.item() for k, v in robust.compute().items()})
    result.update(recorder.results())
    return result


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
    protocols = _checked_protocols(protocols)
    explainers = [explainer] if isinstance(explainer, str) else list(explainer)
    device = torch.device(device) if device is not None else model_device(model)
    base_cfg = consistency or ConsistencyConfig(explainer=explainers[0])
    passes = _explainer_passes(base_cfg, explainers, protocols, device)
    recognition = _Recognition(num_classes, device)
    robust = AdversarialAccuracy(epsilons=epsilons).to(device) if "robustness" in protocols else None
    attack_generator = torch.Generator(device=device).manual_seed(stream_seeds(base_cfg.seed)["robustness"])
    recorder = _SampleRecorder(per_sample, examples, protocols)
    forward = None  # the folded copy for the faithfulness protocol, made from the first batch
    with preserved_state(model, eval_mode=True):
        for b, batch in enumerate(progress_bar(loader, desc="evaluate", enabled=progress)):
            if max_batches is not None and b >= max_batches:
                break
            images, labels, ids, boxes, masks = unpack_batch(batch, device)
            if labels.dim() == 2:  # multi-hot: mAP, and localisation per (image, positive class)
                _multilabel_batch(model, images, labels, boxes, batch.get("box_labels"), recognition, passes,
                                  protocols, num_classes, pointing_tolerance)
                continue
            gt = object_masks(images, boxes, masks)
            if forward is None and "faithfulness" in protocols:
                forward = forward_model(model, images)
            for k, state in enumerate(passes):
                with torch.no_grad():
                    out = explanation_consistency(model, images, labels, state.config, boxes=boxes, masks=masks,
                                                  generator=state.generator, return_images=True)
                if k == 0:
                    recognition.update(out["logits"], labels)
                    recorder.update(images, labels, ids, out, gt)
                _score_explainer(model, state, forward, images, labels, gt, out, protocols, num_classes,
                                 pointing_tolerance, faithfulness_steps)
            if robust is not None:
                _attack_batch(model, images, labels, robust, attack_generator)
    return _pass_results(explainers, recognition, passes, robust, recorder)
