"""The one input check behind ``explain``, the masked attacks and ``explanation_consistency``.

Wrong inputs rarely crash these functions: 0-255 images make the [0, 1] clamp swallow the attack,
ImageNet-normalised images are normalised twice, Normalize's 3-channel mean silently broadcasts a grey image.
The results look plausible and are wrong, so every public call checks its inputs once, on the
device, with a single host synchronisation; the calls made inside (every PGD step, the second
explanation of the consistency score) reuse the result and check nothing again.

dtype policy: images must be floating point *in the model's parameter dtype* (under autocast any
floating dtype). float64 images for a float32 model are an error, not a silent cast: the masked
attacks promise x_adv == x exactly on the foreground of the tensor the caller passed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from consistcam.explain.targets import Targets

_NORMALISE_INSIDE = "normalisation belongs inside the model (wrap it in consistcam.models.Normalize)"


class InputError(ValueError, TypeError):
    """A bad argument to explain / attack / consistency; both a ValueError and a TypeError, so code
    (and the command line) catching either keeps working whichever kind of mistake it is."""


@dataclass(frozen=True)
class CheckedInputs:
    """Images and class ids that passed :func:`check_inputs`.

    ``targets`` is an (N,) int64 tensor of class ids on the images' device when ids were given, else
    as given (``None`` or callables). ``id_range`` is the ids' (min, max) on the host, known before
    the model ran; :meth:`check_classes` compares it with the logits' class count after the first
    forward, so the class range costs no second sync. ``counts`` is set for multi-label targets:
    the number of classes per image, ``targets`` then holds them flattened.
    """

    images: Tensor
    targets: Targets = None
    id_range: tuple[int, int] | None = None
    name: str = "targets"
    counts: list[int] | None = None

    def replace(self, **changes) -> CheckedInputs:
        return dataclasses.replace(self, **changes)

    def check_classes(self, num_classes: int) -> None:
        """Raise if a class id is outside the model's ``num_classes`` (host values only, no sync)."""
        if self.id_range is None:
            return
        lo, hi = self.id_range
        if lo < 0 or hi >= num_classes:
            raise InputError(f"{self.name} must lie in [0, {num_classes}) (the model has {num_classes} classes), "
                             f"got {lo if lo < 0 else hi}; pass class indices of this model")


def is_multilabel(targets: Targets) -> bool:
    """A sequence of N sequences of class ids (one map per image and class); not a list of callables."""
    return (
        isinstance(targets, Sequence)
        and not isinstance(targets, str)
        and len(targets) > 0
        and all((isinstance(t, Sequence) and not isinstance(t, str)) or (isinstance(t, Tensor) and t.dim() == 1)
                for t in targets)
    )


def _is_ids(targets: Targets) -> bool:
    """Anything but ``None`` and callables is meant as class ids; the callables go to ``resolve_targets``."""
    if targets is None or callable(targets):
        return False
    return not (isinstance(targets, Sequence) and not isinstance(targets, str) and any(callable(t) for t in targets))


def _as_ids(targets: Targets, name: str, device: torch.device) -> Tensor:
    try:
        t = torch.as_tensor(targets, device=device)
    except (TypeError, ValueError, RuntimeError):
        got = type(targets).__name__
        raise InputError(f"{name} must be None, an int, one class id per image, a callable on the (N, C) logits "
                         f"or one callable per image; got {got}") from None
    if t.numel() == 0 and not isinstance(targets, Tensor):
        t = t.long()  # torch.as_tensor([]) is float32
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise InputError(f"{name} must be integer class ids, got dtype {t.dtype}; pass class indices "
                         f"(e.g. {name}.long() for whole numbers, {name}.argmax(1) for one-hot rows)")
    return t


def _flat_multilabel(targets: Sequence, n: int, name: str, device: torch.device) -> tuple[Tensor, list[int]]:
    if len(targets) != n:
        raise InputError(f"got {len(targets)} {name} lists for {n} images (one list of class ids per image)")
    parts = [_as_ids(t, name, device).reshape(-1) for t in targets]
    return torch.cat(parts).long(), [p.numel() for p in parts]


def expected_channels(model: nn.Module) -> tuple[str, int] | None:
    """(name, channels) the model takes, from the ``Normalize`` wrapper every model of
    :func:`consistcam.models.create` has (its per-channel mean would silently broadcast a 1-channel
    image to RGB). Other models are not guessed at: the first convolution need not see the raw input
    (a model may add coordinate channels or a learned stem first), so the check is skipped for them."""
    from consistcam.models.factory import Normalize

    for name, m in model.named_modules():
        if isinstance(m, Normalize):
            return (name or "Normalize", int(m.mean.shape[1]))
    return None


def _check_layout(model: nn.Module | None, images: Tensor) -> None:
    """Everything known from metadata alone: type, rank, dtype, channel count. No sync."""
    if not isinstance(images, Tensor):
        hint = " (convert with torch.from_numpy(array).permute(0, 3, 1, 2).float() / 255)" if hasattr(
            images, "__array__") else ""
        raise InputError(f"images must be a torch.Tensor (N, C, H, W) in [0, 1], got {type(images).__name__}{hint}")
    if images.dim() != 4:
        hint = "; add the batch dimension with images[None]" if images.dim() == 3 else ""
        raise InputError(f"images must be a (N, C, H, W) tensor, got shape {tuple(images.shape)}{hint}")
    if images.numel() == 0:
        raise InputError(f"images is empty: shape {tuple(images.shape)}")
    dtype = images.dtype
    if dtype == torch.bool:
        raise InputError("images has dtype torch.bool; pass float images in [0, 1] (e.g. images.float())")
    if not dtype.is_floating_point:
        raise InputError(f"images has integer dtype {dtype}; convert to float in [0, 1], e.g. images.float() / 255")
    if model is None:
        return
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    if param is not None and param.dtype != dtype and not torch.is_autocast_enabled(images.device.type):
        raise InputError(f"images has dtype {dtype} but the model's parameters are {param.dtype}; cast with "
                         f"images.to({param.dtype}) (consistcam does not cast silently: the attacks keep the "
                         f"foreground of the tensor you pass exactly)")
    stem = expected_channels(model)
    if stem is not None and stem[1] != images.shape[1]:
        name, want = stem
        c = images.shape[1]
        hint = {(1, 3): "repeat grey images to RGB with images.expand(-1, 3, -1, -1)",
                (4, 3): "drop the alpha channel with images[:, :3]"}.get((c, want), f"pass {want}-channel images")
        raise InputError(f"images have {c} channel{'s' * (c != 1)} but the model ({name}) takes {want}: {hint}")


def _range_error(images: Tensor) -> InputError:
    """Why images failed the [0, 1] test (error path only: syncs freely)."""
    finite = torch.isfinite(images)
    if not bool(finite.all()):
        bad = ~finite
        first = int(bad.flatten(1).any(1).nonzero()[0])
        return InputError(f"images contains {int(bad.sum())} NaN/Inf values (first in image {first}); "
                          "fix or drop those images before explaining or attacking them")
    lo, hi = (float(v) for v in images.aminmax())
    if lo < 0:
        hint = "negative values look like mean/std-normalised inputs: pass the [0, 1] images"
    elif hi <= 255:
        hint = "values above 1 look like 0-255 pixels: divide by 255"
    else:
        hint = "rescale them to [0, 1]"
    return InputError(f"images must lie in [0, 1], got min {lo:.4g} max {hi:.4g}; {hint}; {_NORMALISE_INSIDE}")


def check_inputs(model: nn.Module | None, images: Tensor | CheckedInputs, targets: Targets = None, *,
                 name: str = "targets", ids_only: bool = False) -> CheckedInputs:
    """Validate images (and class-id targets) for ``model``; one host sync, on the images' device.

    Checks: a float (N, C, H, W) tensor in the model's parameter dtype, with the channel count of the
    model's Normalize wrapper, values finite and in [0, 1]; targets as N integer class ids of any
    integer dtype (returned as int64), or N lists of ids (multi-label), or passed through unchecked
    when ``None`` or callables (``ids_only``: only one class id per image is accepted, as attacks and
    the consistency score need). ``model=None`` (the noise ablation) skips the model-dependent checks.
    Raises :class:`InputError` naming the argument, what was wrong and what to do.

    ``images`` that are already :class:`CheckedInputs` (with their targets inside) are returned as
    they are: that is how the calls inside an attack or a consistency score skip a second check.
    """
    if isinstance(images, CheckedInputs):
        if targets is not None:
            raise InputError(f"{name} must be None with CheckedInputs: they carry their own targets")
        return images
    _check_layout(model, images)
    n, device = images.shape[0], images.device
    ids, counts = None, None
    if ids_only and (not _is_ids(targets) or is_multilabel(targets)):
        raise InputError(f"{name} must be {n} integer class ids (one per image), got {type(targets).__name__}")
    if is_multilabel(targets):
        ids, counts = _flat_multilabel(targets, n, name, device)
    elif _is_ids(targets):
        ids = _as_ids(targets, name, device)
        if ids.dim() == 0:
            ids = ids.expand(n)
        if ids.dim() != 1 or ids.numel() != n:
            hint = f"; for one-hot rows pass {name}.argmax(1)" if ids.dim() == 2 else ""
            raise InputError(f"{name} must be {n} integer class ids (one per image), got shape "
                             f"{tuple(ids.shape)}{hint}")
        ids = ids.long()
    lo, hi = images.aminmax()
    ok = (lo >= 0) & (hi <= 1)  # False for NaN and Inf too: aminmax propagates NaN
    if ids is not None and ids.numel():
        id_lo, id_hi = ids.aminmax()
        code = torch.where(ok, torch.where(id_lo >= 0, id_hi, -2), -1)  # id_hi >= 0 when all is well
    else:
        code = ok.long() - 1
    code = int(code.item())  # the one host sync of the call
    if code == -1:
        raise _range_error(images)
    id_range = None
    if ids is not None and ids.numel():
        id_range = (int(ids.min()), int(ids.max())) if code == -2 else (0, code)  # -2: error path, reported later
    return CheckedInputs(images, ids if ids is not None else targets, id_range, name, counts)
