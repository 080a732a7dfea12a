"""Built-in models: defined in the project, no downloads, each with its input shape and data set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..errors import UserError
from .mobilenetv2 import MobileNetV2
from .resnet import ResNet18
from .small import MLP, DigitsCNN


@dataclass(frozen=True)
class BuiltinModel:
    """A named model factory with the input shape (batch 1) it is built for."""

    name: str
    factory: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    description: str


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    m.name: m
    for m in [
        BuiltinModel("digits-cnn", DigitsCNN, (1, 1, 8, 8), "4-conv CNN for 8x8 scikit-learn digits"),
        BuiltinModel("mlp", MLP, (1, 64), "MLP 64-256-256-10 over flattened digits (FFN-like)"),
        BuiltinModel("resnet18", ResNet18, (1, 3, 32, 32), "ResNet-18, CIFAR-size 32x32 input"),
        BuiltinModel("resnet18-224", lambda: ResNet18(stem="imagenet"), (1, 3, 224, 224),
                     "ResNet-18, ImageNet-size 224x224 input"),
        BuiltinModel("mobilenetv2", MobileNetV2, (1, 3, 32, 32), "MobileNetV2, CIFAR-size 32x32 input"),
        BuiltinModel("mobilenetv2-224", lambda: MobileNetV2(variant="imagenet"), (1, 3, 224, 224),
                     "MobileNetV2, ImageNet-size 224x224 input"),
    ]
}


def get_builtin(name: str) -> BuiltinModel:
    """Look a built-in model up by name, with an error that lists the valid names."""
    try:
        return BUILTIN_MODELS[name]
    except KeyError:
        raise UserError(
            f"unknown built-in model {name!r} (choose from {', '.join(BUILTIN_MODELS)})"
        ) from None


__all__ = ["BUILTIN_MODELS", "BuiltinModel", "DigitsCNN", "MLP", "MobileNetV2", "ResNet18", "get_builtin"]
