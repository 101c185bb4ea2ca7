"""``preserved_state``: the one context manager that makes explaining and attacking side-effect free.

Explaining, attacking and evaluating must not change the model a user (or a training loop) holds:
each module's own train/eval flag, every parameter's ``requires_grad`` flag and the BatchNorm
running statistics are put back on exit, also when the body raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["preserved_state"]


@contextlib.contextmanager
def preserved_state(
    model: nn.Module, *, freeze_params: bool = False, eval_mode: bool = False
) -> Iterator[nn.Module]:
    """Restore per-module modes, ``requires_grad`` flags and BatchNorm buffers on exit.

    ``eval_mode`` switches the whole model to eval mode inside the block; on exit every module
    gets back its *own* flag (a model with frozen, eval-mode sub-modules stays that way).
    ``freeze_params`` turns off parameter gradients inside the block, so autograd computes only
    the gradients that are asked for (activations or inputs) and never fills ``.grad``.

    BatchNorm buffers updated by a forward in train mode are copied back *in place*: the module
    keeps the very tensor objects it had, so DDP's buffer broadcast and anyone holding a reference
    see the restored values. The copy goes through ``.data`` so it does not bump the autograd
    version counter of a buffer that a differentiable caller's graph still holds (train-mode batch
    norm reads only the batch statistics in its backward).
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    bn_buffers: list[tuple[Tensor, Tensor]] = []
    if not eval_mode:
        for m in model.modules():
            if isinstance(m, _BatchNorm) and m.training and m.track_running_stats:
                for name in ("running_mean", "running_var", "num_batches_tracked"):
                    buf = getattr(m, name)
                    if buf is not None:
                        bn_buffers.append((buf, buf.detach().clone()))
    try:
        if eval_mode:
            model.eval()
        if freeze_params:
            for p, _ in flags:
                p.requires_grad_(False)
        yield model
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in flags:
            p.requires_grad_(flag)
        with torch.no_grad():
            for buf, saved in bn_buffers:
                buf.data.copy_(saved)
