"""``erm``: plain empirical risk minimisation, the baseline every method is compared with."""

from __future__ import annotations

from consistcam.train.strategies.base import Strategy, register_strategy


@register_strategy("erm")
class ERM(Strategy):
    """Every sample has weight 1; the loss is the task's base loss."""
