"""The model the forward-only protocols run on (faithfulness, background reliance).

Those protocols only read class probabilities (insertion/deletion alone costs 2 x steps forwards
per image), so they run on the scoring pass's inference copy (BatchNorm folded into its
convolutions, channels-last weights), fed channels-last images: the same function up to float
rounding, about 1.5x faster on the CPU (docs/benchmarks.md). The consistency pass, whose attack
follows gradient signs, keeps the model as it is.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from consistcam.consistency.inference import inference_copy


class ChannelsLastInput(nn.Module):
    """``inner`` on its (N, C, H, W) input in channels-last layout (the layout of its weights)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x)


def forward_model(model: nn.Module, example: Tensor) -> nn.Module:
    """A frozen, folded, channels-last eval copy of ``model`` for forward-only passes, or ``model``
    itself when it cannot be copied or the copy fails on ``example`` (e.g. a model that ``view``s
    its feature maps, which channels-last layout breaks). ``model`` is not touched."""
    try:
        fast = ChannelsLastInput(inference_copy(model))
        with torch.inference_mode():
            fast(example[:1])
    except (TypeError, RuntimeError, copy.Error):
        return model
    return fast
