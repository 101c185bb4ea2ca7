"""Context managers that make explaining and attacking side-effect free.

Explaining must not change the model: hooks are removed even when the body raises, train/eval
flags and ``requires_grad`` flags are restored, and BatchNorm running statistics touched by a
forward pass in train mode are put back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


@contextlib.contextmanager
def preserved_state(
    model: nn.Module, *, freeze_params: bool = False, eval_mode: bool = False
) -> Iterator[nn.Module]:
    """Restore modes, ``requires_grad`` flags and BatchNorm buffers on exit.

    ``freeze_params`` turns off parameter gradients inside the block, so autograd computes only
    the gradients that are asked for (activations or inputs) and never fills ``.grad``.
    ``eval_mode`` switches the model to eval mode inside the block.
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    # Saved BN buffers are re-bound on exit, not copied back: an in-place copy would bump the
    # version of tensors that a differentiable caller's autograd graph still holds.
    bn_buffers: list[tuple[nn.Module, str, Tensor]] = []
    if not eval_mode:
        for m in model.modules():
            if isinstance(m, _BatchNorm) and m.training and m.track_running_stats:
                bn_buffers.extend(
                    (m, name, getattr(m, name).detach().clone())
                    for name in ("running_mean", "running_var", "num_batches_tracked")
                    if getattr(m, name) is not None
                )
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
        for m, name, saved in bn_buffers:
            setattr(m, name, saved)


class ActivationCapture:
    """Holds the output of one layer from the last forward pass inside :func:`capture`."""

    def __init__(self) -> None:
        self.activation: Tensor | None = None


@contextlib.contextmanager
def capture(layer: nn.Module) -> Iterator[ActivationCapture]:
    """Capture ``layer``'s output so gradients can be taken with respect to it.

    The hook hands the rest of the network a *clone* of the output, so an in-place op after the
    layer (``ReLU(inplace=True)``) cannot overwrite the captured tensor. When nothing upstream
    requires grad (frozen parameters), the captured tensor becomes a leaf that does, so
    ``autograd.grad`` only has to traverse the network's head.
    """
    holder = ActivationCapture()

    def hook(_module: nn.Module, _inputs: object, output: object) -> Tensor:
        if not isinstance(output, Tensor):
            raise TypeError(
                f"target layer {type(layer).__name__} returns {type(output).__name__}, not a tensor; "
                "choose a layer whose output is a (N, C, H, W) feature map"
            )
        act = output if output.requires_grad else output.detach().requires_grad_(True)
        holder.activation = act
        return act.clone()

    handle = layer.register_forward_hook(hook)
    try:
        yield holder
    finally:
        handle.remove()
