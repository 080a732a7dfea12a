"""Layer policy and spec validation: sensible defaults, one-line errors for bad specs."""

from __future__ import annotations

import pytest
from torch import nn

from tvm_unify.errors import UserError
from tvm_unify.models import DigitsCNN, MobileNetV2
from tvm_unify.unify.spec import LayerSpec, UnifyConfig, parse_block, parse_layer_override, plan_layers, resolve_specs


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_default_policy_keeps_first_last_dense_and_skips_depthwise():
    model = MobileNetV2()
    chosen = resolve_specs(model, UnifyConfig())
    assert "features.0.0" not in chosen and "classifier" not in chosen
    depthwise = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1]
    assert depthwise and not set(depthwise) & set(chosen)
    assert "features.1.conv.1" in chosen  # a 1x1 projection conv
    assert len(chosen) == 34  # 52 convs/linears - 17 depthwise - first - last


def test_filter_fn_overrides_and_layer_override_adds():
    model = DigitsCNN()
    only_last_conv = resolve_specs(model, UnifyConfig(), filter_fn=lambda m, name: name == "features.10")
    assert list(only_last_conv) == ["features.10"]
    cfg = UnifyConfig(skip=("features.3",), layers={"classifier": LayerSpec(block=(2, 4), sparsity=0.5)})
    chosen = resolve_specs(model, cfg)
    assert list(chosen) == ["features.7", "features.10", "classifier"]
    assert chosen["classifier"][1].block == (2, 4) and chosen["classifier"][1].sparsity == 0.5


@pytest.mark.parametrize("kwargs, needle", [
    ({"sparsity": 1.0}, "sparsity must be in [0, 1)"),
    ({"sparsity": -0.1}, "sparsity must be in [0, 1)"),
    ({"unified": 1.5}, "unified fraction"),
    ({"layout": "diagonal"}, "unknown layout"),
    ({"block": (0, 4)}, "bad block shape"),
])
def test_bad_config(kwargs, needle):
    with pytest.raises(UserError) as excinfo:
        UnifyConfig(**kwargs)
    assert needle in _one_line(excinfo)


def test_block_not_dividing_names_the_layer():
    with pytest.raises(UserError) as excinfo:
        resolve_specs(DigitsCNN(), UnifyConfig(block=(1, 5)))
    message = _one_line(excinfo)
    assert "features.3" in message and "does not divide" in message
    # The flattened layout accepts it when in*kh*kw divides: 32*9 = 288 is not a multiple of 5 either...
    with pytest.raises(UserError):
        resolve_specs(DigitsCNN(), UnifyConfig(block=(1, 5), layout="flat"))
    # ...but 1x6 only divides the flattened axis (32 % 6 != 0, 288 % 6 == 0).
    assert len(resolve_specs(DigitsCNN(), UnifyConfig(block=(1, 6), layout="flat"))) == 3


@pytest.mark.parametrize("cfg", [UnifyConfig(skip=("features.99",)), UnifyConfig(layers={"nope": LayerSpec(sparsity=0.5)})])
def test_unknown_layer(cfg):
    with pytest.raises(UserError) as excinfo:
        resolve_specs(DigitsCNN(), cfg)
    assert "unknown layer" in _one_line(excinfo) and "features.3" in str(excinfo.value)


def test_parsers():
    assert parse_block("4x4") == (4, 4) and parse_block(" 1X8 ") == (1, 8)
    for bad in ["4", "4x", "ax4", "0x4", "1x4x4"]:
        with pytest.raises(UserError):
            parse_block(bad)
    assert parse_layer_override("a.b:block=2x4,sparsity=0.5") == ("a.b", {"block": (2, 4), "sparsity": 0.5})
    for bad in ["a.b", "a.b:sparsity", "a.b:sparsity=x", ":sparsity=0.5"]:
        with pytest.raises(UserError):
            parse_layer_override(bad)
    with pytest.raises(UserError, match="unknown spec field"):
        parse_layer_override("features.3:colour=red")
    with pytest.raises(UserError, match="expected a LayerSpec"):
        UnifyConfig(layers={"features.3": {"sparsity": 0.5}})


class LeNet(nn.Module):
    """LeNet-5's convs: conv2 has 6 input channels, which a 1x4 block does not divide."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)


def test_default_policy_keeps_a_layer_the_block_does_not_divide_dense_and_says_why():
    plan = plan_layers(LeNet(), UnifyConfig(block=(1, 4)))
    assert list(plan.constrained) == ["fc1", "fc2"]
    assert list(plan.dense) == ["conv2"] and "does not divide" in plan.dense["conv2"]
    assert "6 input channels" in plan.dense["conv2"]


def test_a_block_asked_for_by_name_still_errors():
    with pytest.raises(UserError) as excinfo:
        plan_layers(LeNet(), UnifyConfig(layers={"conv2": LayerSpec(block=(1, 4))}))
    assert "conv2" in _one_line(excinfo) and "does not divide" in str(excinfo.value)
