"""Activation capture for explainers: a forward hook that is always removed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import Tensor, nn


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
