"""regionmir.resnet against torchvision: the same names, shapes and outputs, and no torchvision import."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from torch import nn
from torchvision import models

from regionmir import resnet
from regionmir.encoder import BACKBONES, EncoderConfig, RegionEncoder, list_presets, load_preset

#: (backbone, width, crop_size): every backbone, the narrow resnet10s, both stems (max-pool kept above 128 px).
CONFIGS = [
    ("resnet10", 64, 96),
    ("resnet10", 32, 32),
    ("resnet10", 16, 136),
    ("resnet18", 64, 96),
    ("resnet18", 64, 136),
    ("resnet34", 64, 96),
    ("resnet50", 64, 96),
    ("resnet50", 64, 136),
]


def _torchvision_resnet10(width: int) -> models.ResNet:
    """What encoder.resnet10 built before regionmir.resnet: torchvision's ResNet, stages rebuilt narrower."""
    net = models.ResNet(models.resnet.BasicBlock, [1, 1, 1, 1])
    if width == 64:
        return net
    net.inplanes = width
    net.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = nn.BatchNorm2d(width)
    net.layer1 = net._make_layer(models.resnet.BasicBlock, width, 1)
    net.layer2 = net._make_layer(models.resnet.BasicBlock, width * 2, 1, stride=2)
    net.layer3 = net._make_layer(models.resnet.BasicBlock, width * 4, 1, stride=2)
    net.layer4 = net._make_layer(models.resnet.BasicBlock, width * 8, 1, stride=2)
    net.fc = nn.Linear(width * 8, net.fc.out_features)
    return net


def _torchvision_backbone(config: EncoderConfig) -> nn.Module:
    """RegionEncoder.backbone as the old encoder built it from torchvision."""
    if config.backbone == "resnet10":
        net = _torchvision_resnet10(config.width)
    else:
        net = getattr(models, config.backbone)(weights=None)
    net.conv1 = nn.Conv2d(config.in_channels, config.width, kernel_size=7, stride=2, padding=3, bias=False)
    if not config.keeps_stem_maxpool:
        net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net


def _randomise(net: nn.Module, seed: int) -> None:
    """Non-trivial values in every parameter and BatchNorm buffer, so that a mix-up cannot pass."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if name.endswith("num_batches_tracked"):
                tensor.fill_(7)
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.2)


def _shapes(state: dict[str, torch.Tensor]) -> list[tuple[str, tuple[int, ...]]]:
    return [(name, tuple(tensor.shape)) for name, tensor in state.items()]


def test_the_configs_cover_every_backbone_and_preset():
    assert {backbone for backbone, _, _ in CONFIGS} == set(BACKBONES)
    for name in list_presets():
        config = load_preset(name)
        assert (config.backbone, config.width) in {(b, w) for b, w, _ in CONFIGS}, name


@pytest.mark.parametrize("backbone, width, crop_size", CONFIGS)
def test_backbone_has_torchvision_names_shapes_and_outputs(backbone, width, crop_size):
    config = EncoderConfig(backbone=backbone, width=width, crop_size=crop_size)
    theirs = _torchvision_backbone(config)
    ours = RegionEncoder(config).backbone
    assert _shapes(ours.state_dict()) == _shapes(theirs.state_dict())
    _randomise(theirs, seed=1)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, config.in_channels, crop_size, crop_size, generator=torch.Generator().manual_seed(2))
    theirs.eval()
    ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))
    # train mode: batch statistics in the forward pass, the same running-statistics updates
    theirs.train()
    ours.train()
    torch.testing.assert_close(ours(x), theirs(x))
    torch.testing.assert_close(ours.state_dict(), theirs.state_dict())


@pytest.mark.parametrize("preset", list_presets())
def test_an_old_torchvision_encoder_checkpoint_loads_strictly(preset):
    config = load_preset(preset)
    ours = RegionEncoder(config).eval()
    old_backbone = _torchvision_backbone(config)
    _randomise(old_backbone, seed=3)
    heads = {name: tensor for name, tensor in ours.state_dict().items() if not name.startswith("backbone.")}
    old_checkpoint = {**{f"backbone.{name}": t for name, t in old_backbone.state_dict().items()}, **heads}
    assert sorted(old_checkpoint) == sorted(ours.state_dict())
    ours.load_state_dict(old_checkpoint, strict=True)
    x = torch.rand(2, config.in_channels, config.crop_size, config.crop_size)
    with torch.no_grad():
        torch.testing.assert_close(ours.features(x), old_backbone.eval()((x - 0.5) / 0.25))


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (resnet.resnet18, models.resnet18),
        (resnet.resnet34, models.resnet34),
        (resnet.resnet50, models.resnet50),
    ],
    ids=["resnet18", "resnet34", "resnet50"],
)
def test_stock_constructors_match_torchvision_with_their_fc(ours, theirs):
    mine, stock = ours(num_classes=10), theirs(weights=None, num_classes=10)
    assert _shapes(mine.state_dict()) == _shapes(stock.state_dict())
    _randomise(stock, seed=4)
    mine.load_state_dict(stock.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(mine.eval()(x), stock.eval()(x))


@torch.no_grad()
def test_initialisation_is_torchvisions():
    torch.manual_seed(0)
    net = resnet.resnet50(num_classes=10)
    for name, module in net.named_modules():
        if isinstance(module, nn.Conv2d):
            fan_out = module.out_channels * module.kernel_size[0] * module.kernel_size[1]
            std = float(module.weight.std())
            assert abs(std / math.sqrt(2 / fan_out) - 1) < 0.15, name  # kaiming_normal_, fan_out, relu
            assert abs(float(module.weight.mean())) < 0.2 * math.sqrt(2 / fan_out), name
        elif isinstance(module, nn.BatchNorm2d):
            assert bool((module.weight == 1).all() and (module.bias == 0).all()), name
    bound = 1 / math.sqrt(net.fc.in_features)  # PyTorch's default Linear init: U(-1/√in, 1/√in)
    assert 0.9 * bound < float(net.fc.weight.abs().max()) <= bound
    zeroed = resnet.resnet50(zero_init_residual=True)
    assert all(
        float(block.bn3.weight.abs().sum()) == 0 for block in zeroed.modules() if isinstance(block, resnet.Bottleneck)
    )
    basic = resnet.resnet10(width=32, zero_init_residual=True)
    assert all(
        float(block.bn2.weight.abs().sum()) == 0 for block in basic.modules() if isinstance(block, resnet.BasicBlock)
    )
    assert all(float(block.bn1.weight.min()) == 1 for block in basic.modules() if isinstance(block, resnet.BasicBlock))


def test_no_pretrained_weights():
    for constructor in BACKBONES.values():
        with pytest.raises(ValueError, match="no pretrained weights"):
            constructor(weights="DEFAULT")


def test_importing_the_encoder_leaves_torchvision_and_dynamo_out():
    code = (
        "import sys, regionmir.encoder; print(sorted(m for m in ('torchvision', 'torch._dynamo') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
