"""A frozen inference copy of a model for the scoring pass: BatchNorm folded, channels-last.

The scoring pass runs the model in eval mode only (five forwards and three input gradients per
image with the preset's 3 PGD steps), so eval-mode BatchNorm is a fixed per-channel affine map
and can be folded into the convolution in front of it: the same function, one op fewer per layer
forward and backward. Channels-last is the layout oneDNN prefers on the CPU. Both change only the
floating-point rounding (tests/consistency/test_inference.py states the tolerance); the copy is made
once per scoring round, so the training model is never touched.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrize
from torch.nn.utils.fusion import fuse_conv_bn_eval


def foldable_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, batchnorm) module names where the BatchNorm reads only that convolution's output and
    the convolution's output goes nowhere else, found by tracing the forward with torch.fx.

    Module order is not data flow, so pairs are only taken from the traced graph; a model fx cannot
    trace (data-dependent control flow) has no foldable pairs and is scored unfolded.
    """
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - any tracing failure just means "do not fold"
        return []
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.Conv2d):
            continue
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module" or users[0].args[:1] != (node,):
            continue
        conv, bn = modules[node.target], modules.get(users[0].target)
        if (
            isinstance(bn, _BatchNorm)
            and bn.track_running_stats
            and bn.running_mean is not None
            and bn.num_features == conv.out_channels
            and len(users[0].args) == 1
            and not users[0].kwargs
            and calls[node.target] == 1
            and calls[users[0].target] == 1
            and not parametrize.is_parametrized(conv)
        ):
            pairs.append((node.target, users[0].target))
    return pairs


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def inference_copy(model: nn.Module, *, fold_batchnorm: bool = True, channels_last: bool = True,
                   keep: str | None = None) -> nn.Module:
    """A deep copy in eval mode with frozen parameters, eval-mode BatchNorms folded into their
    convolutions (``fold_batchnorm``) and 4-D weights in channels-last layout (``channels_last``).

    ``keep`` names a module whose output must stay what it is in ``model`` (the explained layer):
    if it is a convolution it is not folded (its output is the pre-BatchNorm map). Module names
    are kept (a folded BatchNorm becomes an ``nn.Identity`` of the same name), so layers found by
    name on the model are found on the copy.
    """
    clone = copy.deepcopy(model).eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    if fold_batchnorm:
        for conv_name, bn_name in foldable_pairs(clone):
            if conv_name == keep:
                continue
            conv, bn = clone.get_submodule(conv_name), clone.get_submodule(bn_name)
            _set(clone, conv_name, fuse_conv_bn_eval(conv, bn))
            _set(clone, bn_name, nn.Identity())
        for p in clone.parameters():
            p.requires_grad_(False)
    if channels_last:
        clone = clone.to(memory_format=torch.channels_last)
    return clone
