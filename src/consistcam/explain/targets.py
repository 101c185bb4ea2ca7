"""What a heatmap explains: class ids or callables on the logits, as one batched score function.

Every method differentiates (or, for Score-CAM, evaluates) one scalar per image. Turning all target
forms into a :class:`TargetScore` lets each method support every form without special cases.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

ScoreFn = Callable[[Tensor], Tensor]
Targets = int | Tensor | Sequence[int] | Sequence[Sequence[int]] | ScoreFn | Sequence[ScoreFn] | None


class TargetScore:
    """One score per logits row, from exactly one of: class ids (N,), a callable mapping (M, C) logits
    to (M,) scores, or N callables each mapping one image's (C,) logits to a scalar
    (pytorch-grad-cam's ``ClassifierOutputTarget`` is such a callable).

    ``score(logits, start)`` scores rows that belong to images ``start, start + 1, ...``, so a method
    that streams its forward passes in chunks (Score-CAM) keeps the right target per row.
    """

    def __init__(self, ids: Tensor | None = None, fn: ScoreFn | None = None,
                 fns: Sequence[ScoreFn] | None = None) -> None:
        if sum(x is not None for x in (ids, fn, fns)) != 1:
            raise ValueError("TargetScore needs exactly one of ids, fn, fns")
        self.ids, self.fn, self.fns = ids, fn, None if fns is None else list(fns)

    def __call__(self, logits: Tensor, start: int = 0) -> Tensor:
        m = logits.shape[0]
        if self.ids is not None:
            return logits.gather(1, self.ids[start : start + m, None]).squeeze(1)
        if self.fn is not None:
            out = self.fn(logits)
            if not isinstance(out, Tensor) or out.shape != (m,):
                got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(f"targets callable must map the ({m}, C) logits to {m} scores, got {got}")
            return out
        scores = []
        for f, row in zip(self.fns[start : start + m], logits):
            s = f(row)
            if not isinstance(s, Tensor) or s.numel() != 1:
                got = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
                raise ValueError(f"each targets callable must map one image's (C,) logits to a scalar, got {got}")
            scores.append(s.reshape(()))
        return torch.stack(scores)

    def repeat_interleave(self, k: int) -> TargetScore:
        """The same targets for ``k`` consecutive rows per image (Score-CAM's N·K masked images)."""
        if self.ids is not None:
            return TargetScore(ids=self.ids.repeat_interleave(k))
        if self.fn is not None:
            return self
        return TargetScore(fns=[f for f in self.fns for _ in range(k)])


def _describe(targets: object) -> str:
    return f"tensor of shape {tuple(targets.shape)}" if isinstance(targets, Tensor) else type(targets).__name__


def _class_ids(targets: int | Tensor | Sequence[int], n: int, num_classes: int, device: torch.device) -> Tensor:
    try:
        t = torch.as_tensor(targets, device=device)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(
            f"targets must be None, an int, {n} class ids, a callable on the (N, C) logits or {n} callables on "
            f"one image's logits; got {_describe(targets)}"
        ) from None
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"targets must be integer class ids, got dtype {t.dtype}")
    if t.dim() == 0:
        t = t.expand(n)
    if t.dim() != 1 or t.numel() != n:
        raise ValueError(f"targets must be {n} integer class ids (one per image), got shape {tuple(t.shape)}")
    t = t.long()
    if n:
        lo, hi = t.aminmax()
        if bool((lo < 0) | (hi >= num_classes)):  # one host sync per call
            raise ValueError(f"targets must lie in [0, {num_classes}), got min {lo.item()} max {hi.item()}")
    return t


def _is_callable_list(targets: object) -> bool:
    return isinstance(targets, Sequence) and not isinstance(targets, str) and any(callable(t) for t in targets)


def resolve_targets(targets: Targets, logits: Tensor) -> TargetScore:
    """Validate ``targets`` against the (N, C) logits of the explained forward pass; ``None`` = prediction."""
    n, num_classes = logits.shape
    if targets is None:
        return TargetScore(ids=logits.detach().argmax(1))
    if callable(targets) and not isinstance(targets, Tensor):
        return TargetScore(fn=targets)
    if _is_callable_list(targets):
        bad = [type(t).__name__ for t in targets if not callable(t)]
        if bad:
            raise TypeError(f"targets mixes callables with non-callables ({', '.join(sorted(set(bad)))})")
        if len(targets) != n:
            raise ValueError(f"got {len(targets)} targets callables for {n} images (one per image)")
        return TargetScore(fns=targets)
    if isinstance(targets, str):
        raise TypeError(f"targets must be class ids or callables, not the string {targets!r}")
    return TargetScore(ids=_class_ids(targets, n, num_classes, logits.device))
