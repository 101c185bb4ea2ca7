"""``erm``: plain empirical risk minimisation, the baseline every method is compared with."""

from __future__ import annotations

from consistcam.train.methods.base import Method, register_method


@register_method("erm")
class ERM(Method):
    """Every sample has weight 1; the loss is the task's base loss."""
