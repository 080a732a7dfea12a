"""MobileNetV2 (Sandler et al., 2018), defined here because torchvision does not import beside our torch pin.

``cifar`` keeps the first strides at 1 (the usual CIFAR adaptation, 32x32 inputs); ``imagenet`` is the
paper's network for 224x224 inputs.
"""

from __future__ import annotations

from torch import Tensor, nn

# (expansion t, output channels c, repeats n, first stride s), from Table 2 of the paper.
_IMAGENET_CONFIG = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                    (6, 160, 3, 2), (6, 320, 1, 1)]
_CIFAR_CONFIG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                 (6, 160, 3, 2), (6, 320, 1, 1)]


def _conv_bn_relu(inp: int, out: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise, 1x1 linear projection; residual when shapes allow."""

    def __init__(self, inp: int, out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inp * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn_relu(inp, hidden, 1, 1))
        layers += [
            _conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out, 1, bias=False),
            nn.BatchNorm2d(out),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and inp == out

    def forward(self, x: Tensor) -> Tensor:
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0) for CIFAR-size or ImageNet-size inputs."""

    def __init__(self, num_classes: int = 10, variant: str = "cifar") -> None:
        super().__init__()
        if variant not in ("cifar", "imagenet"):
            raise ValueError(f"unknown MobileNetV2 variant {variant!r} (expected 'cifar' or 'imagenet')")
        config = _CIFAR_CONFIG if variant == "cifar" else _IMAGENET_CONFIG
        layers: list[nn.Module] = [_conv_bn_relu(3, 32, 3, 1 if variant == "cifar" else 2)]
        inp = 32
        for t, c, n, s in config:
            for i in range(n):
                layers.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                inp = c
        layers.append(_conv_bn_relu(inp, 1280, 1, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.pool(self.features(x))
        return self.classifier(out.view(out.size(0), -1))
