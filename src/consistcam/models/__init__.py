"""Model factory: ``create(name, num_classes, pretrained=False, small_input=False)``."""

from consistcam.models.factory import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MODELS,
    Normalize,
    SmallResNet,
    classifier_head,
    create,
    list_models,
    model_recipe,
)
from consistcam.models.state import preserved_state

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "MODELS", "Normalize", "SmallResNet", "classifier_head", "create",
           "list_models", "model_recipe", "preserved_state"]
