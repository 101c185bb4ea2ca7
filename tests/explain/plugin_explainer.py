"""A third-party explainer, as a package of its own would ship it: a function decorated with
``register_explainer``, named by the entry point ``[project.entry-points."consistcam.explainers"]
activation_cam = "my_package.cams:activation_cam"`` (tests/explain/test_register.py installs it)."""

from torch import Tensor

from consistcam.explain import CAMContext, register_explainer


@register_explainer("activation_cam", needs_gradients=False, options=("power",))
def activation_cam(ctx: CAMContext) -> Tensor:
    """The channel mean of the activations raised to ``power`` (default 1): no gradients needed."""
    return ctx.activations.clamp_min(0).pow(float(ctx.options.get("power", 1))).mean(1)


def undecorated_cam(ctx: CAMContext) -> Tensor:  # an entry point may not name this: it declares nothing
    return ctx.activations.mean(1)
