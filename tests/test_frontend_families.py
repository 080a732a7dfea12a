"""The TorchScript route handles the standard CNN families and an FFN, traced and scripted.

Each family is a tiny model with the family's distinctive ops (channel shuffle, dense concatenation,
inception branches, grouped convs, squeeze-excitation, SiLU/GELU/LayerNorm), BatchNorm-calibrated.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from torch import Tensor, nn
from tvm import relax

from tvm_unify.testing import assert_matches, torch_reference
from tvm_unify.models.calibration import calibrate_batchnorm
from tvm_unify.pipeline import build
from tvm_unify.frontend import import_torchscript
from tvm_unify.targets import load_target
from tvm_unify.torchscript import save_torchscript


def conv_bn(i: int, o: int, k: int = 3, s: int = 1, g: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(o), nn.ReLU())


class Head(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, 10)

    def forward(self, x: Tensor) -> Tensor:
        out = self.pool(x)
        return self.fc(out.view(out.size(0), -1))


class VGG(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Sequential(conv_bn(3, 16), conv_bn(16, 16), nn.MaxPool2d(2), conv_bn(16, 32), nn.MaxPool2d(2))
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(32 * 8 * 8, 64), nn.ReLU(), nn.Dropout(), nn.Linear(64, 10))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.f(x))


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: split, branch, concat, channel shuffle (view/transpose)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        h = c // 2
        self.branch = nn.Sequential(conv_bn(h, h, 1), nn.Conv2d(h, h, 3, 1, 1, groups=h, bias=False),
                                    nn.BatchNorm2d(h), conv_bn(h, h, 1))

    def forward(self, x: Tensor) -> Tensor:
        a, b = x.chunk(2, dim=1)
        out = torch.cat([a, self.branch(b)], 1)
        n, c, hh, ww = out.size()
        return out.view(n, 2, c // 2, hh, ww).transpose(1, 2).contiguous().view(n, c, hh, ww)


class ShuffleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(3, 16), ShuffleUnit(16), ShuffleUnit(16))
        self.head = Head(16)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class DenseLayer(nn.Module):
    def __init__(self, c: int, growth: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, growth, 3, 1, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.conv(x)], 1)


class DenseNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), DenseLayer(16, 8), DenseLayer(24, 8),
                                  nn.BatchNorm2d(32), nn.ReLU(), nn.AvgPool2d(2))
        self.head = Head(32)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class Inception(nn.Module):
    """GoogLeNet inception block: four branches concatenated."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.b1 = conv_bn(c, 8, 1)
        self.b2 = nn.Sequential(conv_bn(c, 8, 1), conv_bn(8, 8, 3))
        self.b3 = nn.Sequential(conv_bn(c, 4, 1), conv_bn(4, 8, 5))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(c, 8, 1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


class GoogLeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(3, 16), Inception(16), nn.MaxPool2d(3, 2, 1), Inception(32))
        self.head = Head(32)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, r: int = 4) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c // r, 1), nn.SiLU(),
                                nn.Conv2d(c // r, c, 1), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.fc(x)


class RegNetBlock(nn.Module):
    """RegNetY block: 1x1, grouped 3x3, SE, 1x1, residual."""

    def __init__(self, c: int, groups: int) -> None:
        super().__init__()
        self.f = nn.Sequential(conv_bn(c, c, 1), conv_bn(c, c, 3, g=groups), SqueezeExcite(c),
                               nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x + self.f(x))


class RegNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(3, 32, s=2), RegNetBlock(32, 4), RegNetBlock(32, 4))
        self.head = Head(32)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class MBConv(nn.Module):
    """EfficientNet MBConv: expand, depthwise, SE, project, SiLU activations."""

    def __init__(self, c: int) -> None:
        super().__init__()
        h = c * 4
        self.f = nn.Sequential(nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.SiLU(),
                               nn.Conv2d(h, h, 3, 1, 1, groups=h, bias=False), nn.BatchNorm2d(h), nn.SiLU(),
                               SqueezeExcite(h), nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.f(x)


class EfficientNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(3, 16, s=2), MBConv(16), MBConv(16))
        self.head = Head(16)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class FFN(nn.Module):
    """Transformer feed-forward block over a sequence: LayerNorm, Linear, GELU, Linear, residual."""

    def __init__(self, d: int = 32, hidden: int = 128) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.up = nn.Linear(d, hidden)
        self.down = nn.Linear(hidden, d)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.down(torch.nn.functional.gelu(self.up(self.norm(x))))


IMAGE = (1, 3, 32, 32)
FAMILIES = [("vgg", VGG, IMAGE), ("shufflenetv2", ShuffleNet, IMAGE), ("densenet", DenseNet, IMAGE),
            ("googlenet", GoogLeNet, IMAGE), ("regnet", RegNet, IMAGE), ("efficientnet", EfficientNet, IMAGE),
            ("ffn", FFN, (1, 16, 32))]


@pytest.mark.parametrize("scripted", [False, True], ids=["traced", "scripted"])
@pytest.mark.parametrize("name, factory, shape", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_family_imports_and_matches(name, factory, shape, scripted, tmp_path):
    torch.manual_seed(0)
    model = calibrate_batchnorm(factory(), shape)
    if scripted:
        model = torch.jit.script(model)
    path = tmp_path / f"{name}.pt"
    save_torchscript(model, path, shape)
    imported = import_torchscript(path)
    vm = relax.VirtualMachine(build(imported.mod, load_target("host")), tvm.cpu())
    x = np.random.default_rng(2).standard_normal(shape).astype("float32")
    assert_matches(vm["main"](tvm.runtime.tensor(x)).numpy(), torch_reference(imported, x))
