"""ResNet feature extractors of the handwriting models (writer-htr.md §4.2–§4.4), written here because
torchvision is not a dependency.

* ResNet18/34 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016) in torchvision's
  layout and parameter names (``conv1``, ``bn1``, ``layer1.0.conv1`` ...), with a 1-channel ``conv1`` and
  no average pool or fc: `(B, 1, H, W)` → `(B, 8c, ⌈H/32⌉, ⌈W/32⌉)`.
* ResNet31-HTR, the backbone of SAR (Li et al., "Show, Attend and Read", AAAI 2019) as ported in MMOCR's
  ``ResNet31OCR``: two stem convs, then four stages of BasicBlocks, each closed by a 3×3 conv → BN → ReLU,
  with 2×2, 2×2 and (2, 1) max pools (ceil mode): `(B, 1, H, W)` → `(B, 8c, ⌈H/8⌉, ⌈W/4⌉)`.

Every layer rounds up, so the feature map of an image of H × W pixels is exactly
``(ceil(H / s_h), ceil(W / s_w))`` (``BackboneConfig.stride``), and feature cell (i, j) of a padded
batch is real when pixel (i·s_h, j·s_w) is: :func:`feature_mask` subsamples the pixel mask.

Every normalisation is a plain ``nn.BatchNorm2d``, so writer-code hook B (conditional BatchNorm, §8.3)
can replace them module by module. Convolutions followed by BatchNorm carry no bias (it would be
redundant); MMOCR's stage convs have one, so the ResNet31 count differs from MMOCR's by a few thousand.

Legend: B images, c = ``base_channels``.
"""

from __future__ import annotations

from torch import Tensor, nn

from .config import BackboneConfig

__all__ = ["BasicBlock", "ResNet", "ResNet31", "build_backbone", "feature_mask"]


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 conv → BN layers with an identity (or 1×1 conv → BN) shortcut, then ReLU.

    Args:
        in_channels: input width.
        out_channels: output width.
        stride: of the first conv and of the shortcut.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
            self.downsample = nn.Sequential(shortcut, nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


def _stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [BasicBlock(in_channels, out_channels, stride)]
    layers += [BasicBlock(out_channels, out_channels) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet(nn.Module):
    """ResNet18 (blocks 2, 2, 2, 2) or ResNet34 (3, 4, 6, 3), torchvision layout, 1 input channel.

    Args:
        blocks: BasicBlocks per stage.
        channels: the four stage widths (64, 128, 256, 512 at standard width).
    """

    stride = (32, 32)

    def __init__(self, blocks: tuple[int, int, int, int], channels: tuple[int, ...]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = _stage(channels[0], channels[0], blocks[0], 1)
        self.layer2 = _stage(channels[0], channels[1], blocks[1], 2)
        self.layer3 = _stage(channels[1], channels[2], blocks[2], 2)
        self.layer4 = _stage(channels[2], channels[3], blocks[3], 2)

    def forward(self, x: Tensor) -> Tensor:
        """`(B, 1, H, W)` → `(B, 8c, ⌈H/32⌉, ⌈W/32⌉)`."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, c, ⌈H/4⌉, ⌈W/4⌉)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(_conv3x3(in_channels, out_channels), nn.BatchNorm2d(out_channels),
                         nn.ReLU(inplace=True))


class ResNet31(nn.Module):
    """ResNet31-HTR (§4.4): stem of two convs, stages of [1, 2, 5, 3] BasicBlocks, each closed by a conv.

    Args:
        channels: the seven widths (64, 128, 256, 256, 512, 512, 512 at standard width).
    """

    stride = (8, 4)
    blocks = (1, 2, 5, 3)
    pools = ((2, 2), (2, 2), (2, 1), None)  # before each stage; ceil mode, so odd sizes round up

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv_bn_relu(1, channels[0]), _conv_bn_relu(channels[0], channels[1]))
        stages = []
        for i, (blocks, pool) in enumerate(zip(self.blocks, self.pools, strict=True)):
            in_channels, out_channels = channels[i + 1], channels[i + 2]
            layers = [nn.MaxPool2d(pool, stride=pool, ceil_mode=True)] if pool else []
            layers.append(_stage(in_channels, out_channels, blocks, 1))
            layers.append(_conv_bn_relu(out_channels, out_channels))
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)

    def forward(self, x: Tensor) -> Tensor:
        """`(B, 1, H, W)` → `(B, 8c, ⌈H/8⌉, ⌈W/4⌉)`."""
        return self.stages(self.stem(x))


def _init_weights(module: nn.Module) -> None:
    """torchvision's ResNet initialisation: Kaiming-normal convs (fan-out), BN γ = 1, β = 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build_backbone(cfg: BackboneConfig) -> nn.Module:
    """The ResNet of ``cfg``, initialised; its ``stride`` attribute matches ``cfg.stride``."""
    if cfg.arch == "resnet31":
        net: nn.Module = ResNet31(cfg.channels)
    else:
        net = ResNet((2, 2, 2, 2) if cfg.arch == "resnet18" else (3, 4, 6, 3), cfg.channels)
    _init_weights(net)
    return net


def feature_mask(mask: Tensor, stride: tuple[int, int]) -> Tensor:
    """The padding mask of the feature map: `(B, H, W)` → `(B, ⌈H/s_h⌉, ⌈W/s_w⌉)`, True on padding.

    Exact for bottom/right padding: the valid cells of an image of h × w pixels are the first
    ⌈h/s_h⌉ × ⌈w/s_w⌉, which is what the backbone gives that image on its own.
    """
    return mask[:, :: stride[0], :: stride[1]]
