"""ResNet backbones in plain ``torch.nn``, interchangeable with torchvision's (He et al. 2016).

The encoder needs four residual networks and nothing else from torchvision; importing torchvision
costs every process that holds the encoder torch._dynamo, sympy and triton (~2.5 s, ~1,100 modules
and ~160 MB), because its ops import the compiler. These networks are the same architecture as
torchvision's ``ResNet`` with ``weights=None`` — the v1.5 bottleneck (stride on the 3×3 conv), the
same modules under the same attribute names, registered in the same order — so their state dicts
have torchvision's parameter and buffer names and shapes: a checkpoint written from either loads
into the other with ``strict=True`` and computes the same outputs. Initialisation follows
torchvision's ResNet: convolutions ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``,
BatchNorm weight 1 and bias 0, optionally the last BatchNorm of each residual branch zeroed
(``zero_init_residual``), ``fc`` PyTorch's default Linear init.

Two additions torchvision lacks: ``in_channels`` (the stem's input channels; 1 for radiographs)
and ``width`` (channels of the first stage, 64 in the stock layout). ``num_classes=None`` builds
``fc`` as ``nn.Identity`` (a feature extractor). Grouped and dilated convolutions and other norm
layers are left out: nothing here uses them. No pretrained weights exist (``weights`` must be
``None``).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet10", "resnet18", "resnet34", "resnet50"]


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 convolutions and a shortcut (ResNet-10/18/34): ``(B, inplanes, H, W) → (B, planes, H/s, W/s)``.

    Attributes: ``conv1``/``bn1`` (3×3, stride ``s``), ``conv2``/``bn2`` (3×3), ``downsample``
    (1×1 conv + BatchNorm on the shortcut when the shape changes, else ``None``).
    """

    #: Output channels per ``planes``.
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += shortcut
        return self.relu(out)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (stride ``s``), 1×1 expand, and a shortcut (ResNet-50):
    ``(B, inplanes, H, W) → (B, 4 · planes, H/s, W/s)``.

    The stride sits on the 3×3 convolution ("ResNet v1.5", as torchvision). Attributes:
    ``conv1``/``bn1``, ``conv2``/``bn2``, ``conv3``/``bn3``, ``downsample`` (as in :class:`BasicBlock`).
    """

    #: Output channels per ``planes``.
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += shortcut
        return self.relu(out)


class ResNet(nn.Module):
    """A ResNet: stem, four stages, global average pool, ``fc``.

    ``(B, in_channels, H, W) → (B, num_classes)``, or ``(B, feature_dim)`` when ``num_classes`` is
    ``None``.

    Attributes:
        conv1, bn1, relu, maxpool: the stem — 7×7 stride-2 conv to ``width`` channels, BatchNorm,
            ReLU, 3×3 stride-2 max-pool (a caller may replace ``maxpool`` with ``nn.Identity``).
        layer1 … layer4: ``nn.Sequential`` of ``layers[i]`` blocks with ``width · 2**i`` planes;
            stages 2–4 halve the resolution in their first block.
        avgpool: ``AdaptiveAvgPool2d(1)``.
        fc: Linear ``feature_dim → num_classes``, or ``nn.Identity``.
        feature_dim: channels of the pooled features (``8 · width · block.expansion``: 512 or 2048
            at width 64).
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: list[int],
        num_classes: int | None = 1000,
        zero_init_residual: bool = False,
        in_channels: int = 3,
        width: int = 64,
    ):
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"ResNet needs four stages, got layers={layers!r}")
        self.inplanes = width
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.feature_dim = width * 8 * block.expansion
        self.fc = nn.Identity() if num_classes is None else nn.Linear(self.feature_dim, num_classes)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)
        if zero_init_residual:
            # Each residual branch starts at zero, so each block starts as the identity (Goyal et al. 2017).
            for module in self.modules():
                if isinstance(module, Bottleneck):
                    nn.init.constant_(module.bn3.weight, 0)
                elif isinstance(module, BasicBlock):
                    nn.init.constant_(module.bn2.weight, 0)

    def _make_layer(
        self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        stage = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        stage.extend(block(self.inplanes, planes) for _ in range(1, blocks))
        return nn.Sequential(*stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _no_weights(name: str, weights) -> None:
    if weights is not None:
        raise ValueError(f"{name} has no pretrained weights (weights must be None)")


def resnet10(weights=None, width: int = 64, **kwargs) -> ResNet:
    """One BasicBlock per stage (ResNet-18 halved in depth), ``width`` channels in the first stage
    (``width``, 2×, 4×, 8× in the four stages; 64 is the stock layout). The CPU preset uses width
    32: a quarter of the FLOPs, ~4× the crops per second on a 2-core laptop, where the stock
    ResNet-18 trains at only a few dozen crops per second. Parameter names are torchvision's
    (``models.ResNet(BasicBlock, [1, 1, 1, 1])``), whatever the width."""
    _no_weights("resnet10", weights)
    return ResNet(BasicBlock, [1, 1, 1, 1], width=width, **kwargs)


def resnet18(weights=None, **kwargs) -> ResNet:
    """ResNet-18: BasicBlocks ``[2, 2, 2, 2]``, torchvision's ``resnet18`` layout."""
    _no_weights("resnet18", weights)
    return ResNet(BasicBlock, [2, 2, 2, 2], **kwargs)


def resnet34(weights=None, **kwargs) -> ResNet:
    """ResNet-34: BasicBlocks ``[3, 4, 6, 3]``, torchvision's ``resnet34`` layout."""
    _no_weights("resnet34", weights)
    return ResNet(BasicBlock, [3, 4, 6, 3], **kwargs)


def resnet50(weights=None, **kwargs) -> ResNet:
    """ResNet-50: Bottlenecks ``[3, 4, 6, 3]`` (v1.5), torchvision's ``resnet50`` layout."""
    _no_weights("resnet50", weights)
    return ResNet(Bottleneck, [3, 4, 6, 3], **kwargs)
